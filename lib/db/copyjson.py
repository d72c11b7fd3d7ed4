"""Rows as JSON without parsing their values or a dict per row: PostgreSQL's text turned into JSON in bulk.

json_stream takes, unparsed, the text PostgreSQL writes of the values whose text is nearly JSON already
(integers, booleans, strings, timestamps), and fetches the rows in batches on a helper thread. RowsJson
writes a whole batch with a few operations per column and one format: the very bytes dumps_bytes writes
for the same rows as dicts. A column whose batch holds a NULL or an unusual value, and a column of any
other type, is written the generic way for that batch: psycopg2's value through dumps_bytes.
"""
import queue
import re
import threading
from contextlib import suppress
from itertools import chain, count

import orjson
import psycopg2.extensions
from psycopg2 import sql

from lib.db.cancel import cancel_running_query
from lib.db.types import cast_timestamp, cast_timestamptz, taking_turns
from lib.errors import ApiError
from lib.jsonenc import dumps_bytes

INTEGER_OIDS = frozenset({20, 21, 23})
BOOLEAN_OID = 16
TIMESTAMP_OID = 1114
TIMESTAMPTZ_OID = 1184
# The types psycopg2 reads as str.
TEXT_OIDS = frozenset(psycopg2.extensions.BYTES.values)
# The types whose text the fast columns take as it comes, as bytes, instead of psycopg2's values.
RAW_OIDS = INTEGER_OIDS | TEXT_OIDS | {BOOLEAN_OID, TIMESTAMP_OID, TIMESTAMPTZ_OID}
# Each stream's server-side cursor has a name of its own, so that streams may be open on one connection at once
# (one read inside another's rows).
CURSOR_NUMBERS = count(1)
# One token of SQL as PostgreSQL's lexer reads it (src/backend/parser/scan.l), enough to tell where a statement's
# last token ends: comments (-- to a line's end, \n or \r), spaces (its five) and semicolons, quoted strings (E''
# with backslash escapes), quoted names, names (a $ inside one, any character past ASCII), the opening of a dollar
# quote or a block comment, and anything else one character at a time. An unterminated quote ends with the text.
# {quoted} is a plain '' string: backslashes are escapes in it too where standard_conforming_strings is off.
SQL_TOKEN_PATTERN = r'''(?P<line>--[^\n\r]*)|(?P<block>/\*)|(?P<space>[ \t\n\r\f;]+)
    |(?P<escaped>[eE]'(?:[^'\\]|\\.|'')*(?:'|$))|(?P<quoted>{quoted})|(?P<name>"(?:[^"]|"")*(?:"|$))
    |(?P<dollar>\$(?:[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9\x80-\U0010ffff]*)?\$)
    |(?P<word>[A-Za-z_\x80-\U0010ffff][A-Za-z_0-9$\x80-\U0010ffff]*|[0-9]+)|(?P<other>.)'''
SQL_TOKEN = {backslashes: re.compile(SQL_TOKEN_PATTERN.replace('{quoted}', quoted), re.VERBOSE | re.DOTALL)
             for backslashes, quoted in ((False, r"'(?:[^']|'')*(?:'|$)"), (True, r"'(?:[^'\\]|\\.|'')*(?:'|$)"))}
BLOCK_COMMENT_MARK = re.compile(r'/\*|\*/')

NULL = b'null'
# A boolean cast to text reads true or false: its JSON already.
BOOLEANS = {b'true': b'true', b'false': b'false', None: NULL}

# PostgreSQL text never holds NUL; orjson writes it \u0000, which then marks where each text ends.
TEXT_SEPARATOR = b'\x00'
ESCAPED_SEPARATOR = b'\\u0000'
# 'YYYY-MM-DD HH:MM:SS.ffffff': PostgreSQL drops the fraction's trailing zeros, orjson writes six digits.
STAMP_WIDTH = 26
# Spaces and '+' become zeros; a character that no finite stamp of a four-digit year holds becomes '!'.
STAMP_CHARACTERS = b'0123456789-:.'
TO_ZEROS = bytes(byte if byte in STAMP_CHARACTERS else ord('0') if byte in b' +' else ord('!') for byte in range(256))


def escaped_texts(values):
    """Return UTF-8 texts escaped as orjson escapes them, unquoted; None when one is NULL."""
    try:
        joined = TEXT_SEPARATOR.join(values)
    except TypeError:
        return None
    escaped = orjson.dumps(joined.decode())
    if len(escaped) == len(joined) + 2 + (len(ESCAPED_SEPARATOR) - 1) * (len(values) - 1):
        return values  # nothing but the separators needed escaping
    texts = escaped[1:-1].split(ESCAPED_SEPARATOR)
    # A text holding a backslash then 'u0000' splits once more: that batch goes the generic way.
    return texts if len(texts) == len(values) else None


def stamp_slots(values, stride):
    """Return the stamps left in slots of stride bytes, spaces and '+' made zeros; None for NULL, infinity,
    BC or a year past 9999."""
    count = len(values)
    try:
        slots = (b'%%-%ds' % stride * count) % tuple(values)
    except TypeError:
        return None
    # Every slot ends with a space and has the year's '-' fifth: no stamp is too long, no year has five digits.
    if len(slots) != stride * count or slots[stride - 1::stride] != b' ' * count or slots[4::stride] != b'-' * count:
        return None
    slots = bytearray(slots.translate(TO_ZEROS))
    return None if b'!' in slots else slots


def all_end_with(values, ending):
    """Tell whether every one of values (bytes, none NULL) ends with ending: a timestamptz written in UTC ends with
    +00, one written in another TimeZone (a request's) does not, and its offset would not fit the slots."""
    return (b'\n'.join(values) + b'\n').count(ending + b'\n') == len(values)


def padded_stamps(values, offset):
    """Return ISO timestamps as orjson writes them, unquoted, or None when stamp_slots cannot hold them.

    offset ends each stamp: b'+00' for timestamptz in UTC, b'' for timestamp. The fraction's missing
    digits are zeros already; the date's 'T', the offset and a newline take their fixed places in each slot.
    """
    stride, count = STAMP_WIDTH + len(offset) + 1, len(values)
    stamps = stamp_slots(values, stride)
    if stamps is None or offset and not all_end_with(values, offset):
        return None
    stamps[10::stride] = b'T' * count
    for place, character in enumerate(offset + b'\n', STAMP_WIDTH):
        stamps[place::stride] = bytes([character]) * count
    if stamps[19::stride] != b'.' * count:
        # Whole seconds: orjson writes no fraction at all.
        after_seconds = stamps[STAMP_WIDTH:STAMP_WIDTH + 1]
        stamps = stamps.replace(b'0000000' + after_seconds, after_seconds)
    stamps = bytes(stamps).split(b'\n')
    stamps.pop()
    return stamps


class Column:
    """A column of any type, written value by value as psycopg2 reads it."""

    opening = closing = b''

    def __init__(self, key):
        self.key = orjson.dumps(key)

    def fast(self, values):
        """Return the JSON of values without the opening and closing, or None when this batch cannot."""
        return None

    def value(self, raw):
        """Return the Python value psycopg2 would give for raw."""
        return raw

    def write(self, values):
        """Return the JSON of values and whether it still needs the opening and closing."""
        written = self.fast(values)
        if written is not None:
            return written, True
        return [written_in_a_row(None if raw is None else self.value(raw)) for raw in values], False


def written_in_a_row(value):
    """Return value's JSON, refused (TooDeepToWrite) as deep as in the rows the other readers write, two levels down
    ([{"key": value}]): orjson's depth limit counts the answer's levels, and all three must write the same bytes."""
    if not isinstance(value, (list, dict)):
        return dumps_bytes(value)
    return dumps_bytes([[value]])[2:-2]


class Integer(Column):
    """Integers: PostgreSQL's text of them is their JSON."""

    def fast(self, values):
        """Keep the values, with null for NULL."""
        return values if None not in values else [NULL if raw is None else raw for raw in values]


class Boolean(Column):
    """Booleans: PostgreSQL writes t and f."""

    def fast(self, values):
        """Spell the values out."""
        return list(map(BOOLEANS.__getitem__, values))


class Text(Column):
    """Strings: quoted and escaped as orjson does."""

    opening = closing = b'"'

    def __init__(self, key, codec):
        super().__init__(key)
        self.codec = codec

    def fast(self, values):
        """Escape the batch's texts at once; only UTF-8 bytes are JSON text as they come."""
        return escaped_texts(values) if self.codec == 'utf_8' else None

    def value(self, raw):
        """Decode the text."""
        return raw.decode(self.codec)


class Timestamp(Column):
    """timestamp: PostgreSQL's ISO text, its fraction padded to orjson's six digits."""

    opening = closing = b'"'
    offset = b''
    parse = staticmethod(cast_timestamp)

    def __init__(self, key, cursor):
        super().__init__(key)
        self.cursor = cursor

    def fast(self, values):
        """Pad the batch's stamps at once."""
        return padded_stamps(values, self.offset)

    def value(self, raw):
        """Parse the stamp as every connection does (lib/db/types.py): infinity, BC and years past 9999 as text."""
        return self.parse(raw.decode(), self.cursor)


class TimestampTz(Timestamp):
    """timestamptz: fast in UTC (the pool's TimeZone), where PostgreSQL writes '+00' and orjson '+00:00'."""

    offset = b'+00'
    closing = b':00"'
    parse = staticmethod(cast_timestamptz)


def column_of(key, oid, cursor):
    """Return the Column for a result column named key of type oid, described on cursor."""
    if oid in INTEGER_OIDS:
        return Integer(key)
    if oid == BOOLEAN_OID:
        return Boolean(key)
    if oid in TEXT_OIDS:
        return Text(key, psycopg2.extensions.encodings[cursor.connection.encoding])
    if oid == TIMESTAMP_OID:
        return Timestamp(key, cursor)
    if oid == TIMESTAMPTZ_OID:
        return TimestampTz(key, cursor)
    return Column(key)


def plan(cursor, query):
    """Describe query (its parameters in) on cursor; return the query to declare and the RowsJson of its rows."""
    # Each wrapping of the query ends it on a line of its own: a trailing -- comment stays a comment.
    cursor.execute(sql.SQL('SELECT * FROM ({}\n) AS described LIMIT 0').format(query))
    last_of = {column.name: index for index, column in enumerate(cursor.description)}
    type_codes = [column.type_code for column in cursor.description]
    columns = [column_of(key, type_codes[index], cursor) for key, index in last_of.items()]
    return kept_columns_as_text(query, type_codes, list(last_of.values())), RowsJson(columns)


def kept_columns_as_text(query, type_codes, kept):
    """Return a SELECT of query's kept columns, those whose text is written as it comes cast to text.

    A text column reaches this process as bytes (psycopg2's BYTES typecaster, registered on the cursor).
    As in a dict per row, a repeated column name keeps its first place and its last value.
    """
    if not type_codes:
        return query
    aliases = [sql.Identifier(f'c{index}') for index in range(len(type_codes))]
    cast = RAW_OIDS - TEXT_OIDS
    selected = [sql.SQL('{}::text').format(aliases[index]) if type_codes[index] in cast else aliases[index]
                for index in kept]
    return sql.SQL('SELECT {} FROM ({}\n) AS source ({})').format(
        sql.SQL(', ').join(selected), query, sql.SQL(', ').join(aliases))


class RowsJson:
    """Write batches of rows (tuples of the planned SELECT) as JSON objects separated by commas."""

    def __init__(self, columns):
        self.columns = columns
        self.templates = {}

    def __call__(self, rows):
        """Return rows as JSON objects separated by commas, without the array's brackets."""
        width = len(self.columns)
        values = list(chain.from_iterable(rows))
        wrapped = []
        for index, column in enumerate(self.columns):
            column_values = values[index::width]
            written, wraps = column.write(column_values)
            if written is not column_values:
                values[index::width] = written
            wrapped.append(wraps)
        return b','.join([self.template(tuple(wrapped))] * len(rows)) % tuple(values)

    def template(self, wrapped):
        """Return the %-template of one row, given which columns are written without quotes of their own."""
        if wrapped not in self.templates:
            fields = [b'%s:%s%%s%s' % (column.key.replace(b'%', b'%%'), column.opening, column.closing)
                      if wraps else column.key.replace(b'%', b'%%') + b':%s'
                      for column, wraps in zip(self.columns, wrapped)]
            self.templates[wrapped] = b'{' + b','.join(fields) + b'}'
        return self.templates[wrapped]


END = object()


def new_cursor_name(kind):
    """Return a server-side cursor name no other stream of this process has: dbapi_<kind>_<n>."""
    return f'dbapi_{kind}_{next(CURSOR_NUMBERS)}'


# How long a reader whose batch's cursor was closed waits for the helper thread to end with the failure that closed
# it: the connection is closed, so the helper's FETCH has failed already, or will at once.
FAILURE_AHEAD_WAIT_SECONDS = 1


# The savepoint each FETCH of a Prefetcher runs after.
PREFETCH_SAVEPOINT = sql.Identifier('dbapi_prefetch')


class Prefetcher:
    """Fetch a declared cursor's batches on a helper thread, so PostgreSQL computes one while this thread
    reads and converts the one before.

    psycopg2 releases the GIL for the whole of a FETCH and builds the rows' tuples only when asked, so
    the helper runs each FETCH on one of two client cursors and leaves the tuples to the reader. At most
    two batches are in memory, which keeps it flat. Leaving the with block ends the helper thread.
    """

    def __init__(self, cursors, cursor_name, batch_size):
        fetch = sql.SQL('FETCH FORWARD {} FROM {}').format(sql.Literal(batch_size), sql.Identifier(cursor_name))
        # Each FETCH runs after a savepoint, in the same query string (no round trip more), the one before released:
        # a FETCH running ahead that a reader's early stop cancels fails the transaction, which the stop rolls back to
        # that savepoint, so the action goes on and commits (a CI emulation: the commit of a transaction a statement
        # failed in is refused now, and it had been a silent rollback).
        self.fetch = sql.SQL('SAVEPOINT {}; ').format(PREFETCH_SAVEPOINT) + fetch
        self.later_fetch = sql.SQL('RELEASE SAVEPOINT {0}; SAVEPOINT {0}; ').format(PREFETCH_SAVEPOINT) + fetch
        self.batch_size = batch_size
        self.free, self.fetched = queue.Queue(), queue.Queue()
        for cursor in cursors:
            self.free.put(cursor)
        self.connection = cursors[0].connection
        self.lock = threading.Lock()
        self.fetching = self.stopping = self.ended = False
        self.thread = threading.Thread(target=self.fetch_all, name='dbapi-prefetch', daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stop()

    def fetch_all(self):
        """Run FETCH on each cursor that comes free, until the last batch, a failure or the stop."""
        try:
            while (cursor := self.next_cursor()) is not None:
                with taking_turns(self.connection):
                    cursor.execute(self.fetch)
                self.fetch = self.later_fetch
                self.fetching = False
                self.fetched.put(cursor)
                if cursor.rowcount < self.batch_size:
                    self.fetched.put(END)
                    return
        except Exception as exc:  # raised again in the reading thread
            self.fetching = False
            self.fetched.put(exc)

    def next_cursor(self):
        """Wait for a free cursor; return it, or None once stopping."""
        cursor = self.free.get()
        with self.lock:
            self.fetching = cursor is not None and not self.stopping
            return cursor if self.fetching else None

    def __iter__(self):
        """Yield the batches as lists of tuples. A failed FETCH of the helper is raised as it is, also when psycopg2
        closed the connection with it (the server ended the session) before a batch fetched ahead was read: that
        batch's cursor is closed then, and `cursor already closed` hid the failure (trial AP)."""
        while (cursor := self.fetched.get()) is not END:
            if isinstance(cursor, Exception):
                raise cursor
            try:
                rows = cursor.fetchall()
            except psycopg2.InterfaceError:
                if (failure := self.failure_ahead()) is None:
                    raise
                raise failure from None
            self.free.put(cursor)
            if rows:
                yield rows
        self.ended = True

    def failure_ahead(self):
        """Return the error the helper's FETCH ended with, once the helper thread has ended (within
        FAILURE_AHEAD_WAIT_SECONDS), or None."""
        self.thread.join(FAILURE_AHEAD_WAIT_SECONDS)
        while not self.fetched.empty():
            if isinstance(item := self.fetched.get_nowait(), Exception):
                return item
        return None

    def stop(self):
        """End the helper thread, cancelling the FETCH it may be running for a reader that stopped early."""
        with self.lock:
            self.stopping = True
            cancel = self.fetching and not self.ended
        self.free.put(None)
        if cancel:
            cancel_running_query(self.connection)
        self.thread.join()
        if cancel and self.connection.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INERROR:
            # refused (an ApiError) once the request is over: its transaction is rolled back whole then
            with suppress(psycopg2.Error, ApiError):
                self.connection.cursor().execute(sql.SQL('ROLLBACK TO SAVEPOINT {}').format(PREFETCH_SAVEPOINT))


def text_cursor(conn):
    """Return a client cursor on conn that gives the raw text of the types RowsJson writes fast, as bytes."""
    cursor = conn.cursor(cursor_factory=psycopg2.extensions.cursor)
    # psycopg2's BYTES typecaster hands over text as it came, undecoded; kept_columns_as_text made the
    # other columns written fast text too.
    psycopg2.extensions.register_type(psycopg2.extensions.BYTES, cursor)
    return cursor


def json_batches(conn, cursor_name, rows_json, batch_size):
    """Yield each batch of the declared cursor as a list holding one JSON fragment, for json_array_chunks; the cursor
    is closed after the last, as Db.stream's is: a failure then (the server ended the session after the last batch
    was fetched) is the stream's, where it was swallowed and the commit's `connection already closed` was logged in
    its place (trial AR)."""
    close = sql.SQL('CLOSE {}').format(sql.Identifier(cursor_name))
    try:
        with Prefetcher([text_cursor(conn), text_cursor(conn)], cursor_name, batch_size) as batches:
            for rows in batches:
                yield [orjson.Fragment(rows_json(rows))]
    except BaseException:
        # The cursor's resources go now, not at the transaction's end; fails harmlessly after a failure, and is
        # refused (lib/db/guard.py: an ApiError, not psycopg2's) once the request is over: its client gone, its
        # deadline past, its worker stopping. The transaction's end frees the cursor then.
        with suppress(psycopg2.Error, ApiError):
            conn.cursor().execute(close)
        raise
    conn.cursor().execute(close)


def without_statement_end(query, backslash_escapes=False):
    """Return query up to the end of its statement: without the semicolons, spaces and comments after its last token.
    A statement's end, which Db.stream's DECLARE takes, cannot stand inside the SELECT that plan wraps around it.
    backslash_escapes: the session reads a backslash in a '' string as an escape (standard_conforming_strings off)."""
    tokens = SQL_TOKEN[backslash_escapes]
    end = position = 0
    while position < len(query):
        token = tokens.match(query, position)
        kind, position = token.lastgroup, token.end()
        if kind == 'dollar':  # $tag$ ... $tag$: up to the same tag, or the text's end
            closing = query.find(token.group(), position)
            position = len(query) if closing < 0 else closing + len(token.group())
        elif kind == 'block':  # /* ... */, nested as PostgreSQL nests them; unterminated, the text's end is no end
            position, closed = block_comment_end(query, position)
            kind = kind if closed else 'other'
        if kind not in ('space', 'line', 'block'):
            end = position
    return query[:end]


def block_comment_end(query, position):
    """Return (the index after the */ that closes the block comment opened just before position, nested ones
    included, True), or (the text's end, False) when none does."""
    depth = 1
    for mark in BLOCK_COMMENT_MARK.finditer(query, position):
        depth += 1 if mark.group() == '/*' else -1
        if depth == 0:
            return mark.end(), True
    return len(query), False


def json_stream(conn, query, params=None, batch_size=2000):
    """Declare query on conn; return the generator of its rows as JSON batches (see Db.stream_json)."""
    # The query runs in the request's session as it is, as Db.stream's does: its TimeZone and DateStyle shape the
    # query's own arithmetic and literals. Stamps in the pool's settings (UTC, ISO) take the fast way; others,
    # value by value, psycopg2's casters (which refuse another DateStyle).
    cursor = conn.cursor(cursor_factory=psycopg2.extensions.cursor)
    # The statement as psycopg2 sends it, its parameters in (as Db.stream's): what ends it is then cut off.
    text = cursor.mogrify(query, params).decode(psycopg2.extensions.encodings[conn.encoding])
    backslashes = conn.info.parameter_status('standard_conforming_strings') == 'off'
    query = sql.SQL(without_statement_end(text, backslashes))
    select, rows_json = plan(cursor, query)
    cursor_name = new_cursor_name('stream_json')
    cursor.execute(sql.SQL('DECLARE {} NO SCROLL CURSOR FOR {}').format(sql.Identifier(cursor_name), select))
    return json_batches(conn, cursor_name, rows_json, batch_size)
