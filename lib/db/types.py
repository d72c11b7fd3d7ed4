"""How PostgreSQL's values become Python values: exactly, for every built-in type (docs/contract.md section 5).

psycopg2 reads most types well. Where it changes a value in silence or fails, a typecaster registered on
each connection reads it instead. register_types does it, and the pool runs it on each new connection
after the configure callback (with_types), so a custom configure cannot lose it:

- dates and timestamps Python cannot hold (±infinity, BC, years past 9999), and time 24:00:00, come as
  PgText: PostgreSQL's own text, in the form to_jsonb writes it. Ordinary ones stay date and datetime.
- interval: a timedelta of exactly EXTRACT(epoch FROM value) seconds (a month is 30 days, a year 365.25,
  as PostgreSQL counts them); one past timedelta's range comes as that many seconds, an ExactNumber.
- json and jsonb: parsed with their numbers exact (lib.jsonenc.loads_exact).
- int2vector and oidvector: lists of their integers; psycopg2 reads them as one string, and their arrays not at all.
- ranges and multiranges: PostgreSQL's text, "[1,10)", as to_jsonb writes them.
- composite types (CREATE TYPE ... AS, and every table's row type): a dict of the fields, each read as
  its own type is, as to_jsonb writes an object. Anonymous records (ROW(1, 'a')) stay PostgreSQL's text:
  their fields' names and types are known to the server only.
- arrays of every type psycopg2 does not know (money[], inet[] of a domain, enum[], composites, ...): lists; and
  every array with lower bounds other than 1 in several dimensions, which psycopg2 cannot read: its elements.

Parameters: a dict adapts to JSON (for json and jsonb columns); a list stays an ARRAY. A str psycopg2
cannot send (a NUL character, a lone surrogate, a character the connection's encoding lacks) fails while it
is adapted, as RefusedValue, a 422: the value is at fault, not the server.
"""
import contextlib
import datetime
import decimal
import enum
import ipaddress
import math
import re
import uuid

import psycopg2.extensions
import psycopg2.extras

from lib.errors import ApiError, Unprocessable, database_unavailable, translates
from lib.jsonenc import PlainDigitsBudget, dumps_bytes, inet_text, loads_exact, orjson_ready, seconds_of

DATE, TIME, TIMETZ, TIMESTAMP, TIMESTAMPTZ, INTERVAL, JSON, JSONB = 1082, 1083, 1266, 1114, 1184, 1186, 114, 3802
# The catalogs' vectors (pg_index.indkey, pg_proc.proargtypes): integers separated by spaces, which psycopg2 reads as
# one string, and whose arrays it reads as int[], failing.
INT2VECTOR, OIDVECTOR = 22, 30
# The built-in ranges, which psycopg2.extras reads as Range objects that no JSON encoder knows.
BUILTIN_RANGES = (3904, 3906, 3908, 3910, 3912, 3926)
# The built-in multiranges (PostgreSQL 14 and later) and the anonymous record, which psycopg2 reads as plain text.
BUILTIN_MULTIRANGES, RECORD = (4451, 4532, 4533, 4534, 4535, 4536), 2249
# Each domain's base type, through domains over domains: a domain's values are read as its base's.
DOMAIN_BASES = '''
    WITH RECURSIVE chain (oid, base) AS (
        SELECT oid, typbasetype FROM pg_type WHERE typtype = 'd'
        UNION ALL
        SELECT chain.oid, t.typbasetype FROM chain JOIN pg_type t ON t.oid = chain.base AND t.typtype = 'd'),
    domain_base (oid, base) AS (
        SELECT chain.oid, chain.base FROM chain JOIN pg_type t ON t.oid = chain.base AND t.typtype <> 'd')'''
ARRAYS_OF_TYPES = DOMAIN_BASES + '''
    SELECT t.typarray, t.typname, base.oid, base.typtype, t.typdelim
    FROM pg_type t LEFT JOIN domain_base ON domain_base.oid = t.oid
    JOIN pg_type base ON base.oid = coalesce(domain_base.base, t.oid)
    WHERE t.typarray <> 0'''
# Every composite type's fields in order (oid 0), or one type's: names, and types with domains made their base.
COMPOSITE_FIELDS = DOMAIN_BASES + '''
    SELECT t.oid,
           coalesce(array_agg(a.attname::text ORDER BY a.attnum) FILTER (WHERE a.attnum IS NOT NULL), '{}'),
           coalesce(array_agg(coalesce(domain_base.base, a.atttypid)::int8 ORDER BY a.attnum)
                    FILTER (WHERE a.attnum IS NOT NULL), '{}')
    FROM pg_type t
    LEFT JOIN pg_attribute a ON a.attrelid = t.typrelid AND a.attnum > 0 AND NOT a.attisdropped
    LEFT JOIN domain_base ON domain_base.oid = a.atttypid
    WHERE t.typtype = 'c' AND %(oid)s IN (0, t.oid)
    GROUP BY t.oid'''

# The session settings whose texts the typecasters read; with_types sets them after any configure.
READING_STYLES = {'DateStyle': 'ISO, MDY', 'IntervalStyle': 'postgres'}
SET_READING_STYLES = '; '.join(f"SET {name} = '{value}'" for name, value in READING_STYLES.items())

SECONDS_PER_DAY, DAYS_PER_MONTH, SECONDS_PER_YEAR = 86400, 30, 31557600  # PostgreSQL's year: 365.25 days
INTERVAL_UNITS = re.compile(r'([+-]?\d+) (year|mon|day)s?')
INTERVAL_TIME = re.compile(r'([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?$')
# A whole interval in IntervalStyle postgres: '-1 years +2 mons 3 days -04:05:06.5'.
POSTGRES_INTERVAL = re.compile(r'(?:[+-]?\d+ (?:year|mon|day)s? ?)*(?:[+-]?\d+:\d\d:\d\d(?:\.\d{1,6})?)?')
# The start of a date or timestamp as DateStyle ISO writes it: a year of four digits or more, or ±infinity.
ISO_STAMP = re.compile(r'\d{4,}-\d\d-\d\d|-?infinity$')
# The offset at the end of a stamp: PostgreSQL's text writes +02 where its JSON writes +02:00.
SHORT_OFFSET = re.compile(r'([+-]\d\d)((?::\d\d)*)( BC)?$')
# One field of a composite value's text, '(1,"a b",)', and the comma or parenthesis after it: quoted (its " and \
# doubled), bare, or nothing for NULL.
RECORD_FIELD = re.compile(r'(?:"((?:[^"]|"")*)"|([^",)]*))[,)]')
DOUBLED = re.compile(r'(["\\])\1')
# A quoted array element, and the backslash escapes in it.
QUOTED_ELEMENT = re.compile(r'"(?:[^"\\]|\\.)*"')
BACKSLASHED = re.compile(r'\\(.)')
# The dimensions PostgreSQL writes in front of an array with a lower bound other than 1: '[0:1][1:2]='.
ARRAY_BOUNDS = re.compile(r'(?:\[-?\d+:-?\d+\])+=')


class PgText(str):
    """PostgreSQL's own text of a value no Python type holds exactly; JSON writes it as a string."""


def is_ordinary_stamp(text):
    """Tell whether a date or timestamp text is one Python's date and datetime hold: a four-digit year AD."""
    return text[4:5] == '-' and not text.endswith(' BC')


def iso_text(text):
    """Return a date or timestamp text that is not ordinary (is_ordinary_stamp) when DateStyle ISO wrote it; one a
    request wrote in another DateStyle is UnreadableValue: fail rather than misread "04/03/2026"."""
    if not ISO_STAMP.match(text):
        raise UnreadableValue('a date or timestamp in another DateStyle than ISO (a request changed DateStyle)')
    return text


def json_stamp(text, with_offset):
    """Return a timestamp's text as to_jsonb writes it: "10000-01-01T00:00:00+00:00", "0044-03-15T12:00:00 BC"."""
    if iso_text(text).endswith('infinity'):
        return PgText(text)
    text = text.replace(' ', 'T', 1)
    if with_offset:
        text = SHORT_OFFSET.sub(lambda match: match[1] + (match[2] or ':00') + (match[3] or ''), text)
    return PgText(text)


def cast_date(text, cursor):
    """Read a date: a datetime.date, or PgText for ±infinity, BC and years past 9999."""
    if text is None or not is_ordinary_stamp(text):
        return None if text is None else PgText(iso_text(text))
    return psycopg2.extensions.DATE(text, cursor)


def cast_timestamp(text, cursor):
    """Read a timestamp: a datetime, or PgText for ±infinity, BC and years past 9999."""
    if text is None or not is_ordinary_stamp(text):
        return None if text is None else json_stamp(text, with_offset=False)
    return psycopg2.extensions.PYDATETIME(text, cursor)


def cast_timestamptz(text, cursor):
    """Read a timestamptz: an aware datetime, or PgText for ±infinity, BC, years past 9999 and an offset with
    seconds (local mean time before 1900-1970 in many zones, "-00:44:30"), which psycopg2 and orjson would round
    to minutes, moving the instant."""
    if text is None or not is_ordinary_stamp(text) or text.count(':') > 3:
        return None if text is None else json_stamp(text, with_offset=True)
    return psycopg2.extensions.PYDATETIMETZ(text, cursor)


def cast_time(text, cursor):
    """Read a time, with or without a time zone: a datetime.time, or PgText for 24:00:00, which Python lacks."""
    if text is None or not text.startswith('24:'):
        return psycopg2.extensions.PYTIME(text, cursor)
    return PgText(SHORT_OFFSET.sub(lambda match: match[1] + (match[2] or ':00'), text) if len(text) > 8 else text)


def interval_microseconds(text):
    """Return EXTRACT(epoch FROM interval) in microseconds, from the interval's text in the postgres style."""
    months = days = 0
    for amount, unit in INTERVAL_UNITS.findall(text):
        if unit == 'day':
            days += int(amount)
        else:
            months += int(amount) * (12 if unit == 'year' else 1)
    years = abs(months) // 12 * (1 if months >= 0 else -1)  # PostgreSQL divides toward zero
    seconds = years * SECONDS_PER_YEAR + ((months - years * 12) * DAYS_PER_MONTH + days) * SECONDS_PER_DAY
    time = INTERVAL_TIME.search(text)
    if time:
        sign, hours, minutes, whole, fraction = time.groups()
        clock = (int(hours) * 3600 + int(minutes) * 60 + int(whole)) * 1_000_000 + int((fraction or '').ljust(6, '0'))
        return seconds * 1_000_000 + (-clock if sign == '-' else clock)
    return seconds * 1_000_000


def cast_interval(text, cursor):
    """Read an interval as a timedelta of its exact seconds; past timedelta's range, as an ExactNumber of seconds."""
    if text is None:
        return None
    if not POSTGRES_INTERVAL.fullmatch(text):  # a request changed IntervalStyle: fail rather than misread
        raise UnreadableValue('an interval in another IntervalStyle than postgres (a request changed IntervalStyle)')
    microseconds = interval_microseconds(text)
    try:
        return datetime.timedelta(microseconds=microseconds)
    except OverflowError:
        return seconds_of(microseconds)


def cast_json(text, cursor):
    """Read json or jsonb with every number exact, however large; UnreadableValue for json text that is no Unicode
    (a lone surrogate escape, "\\ud800", which the json type keeps and to_jsonb refuses) or nests deeper than
    Python reads."""
    if text is None:
        return None
    try:
        return loads_exact(text, bounded=False, plain_digits=json_budget(cursor.connection))
    except ValueError as exc:
        raise UnreadableValue(f'a json value dbapi cannot read: {exc}') from None


def json_budget(conn):
    """Return the PlainDigitsBudget (lib.jsonenc) that the json values conn reads share until its lease ends: a
    PooledConnection's json_budget (lib/db/session.py), made on the first; a value of another connection's, its own."""
    if not hasattr(conn, 'json_budget'):
        return PlainDigitsBudget()
    if conn.json_budget is None:
        conn.json_budget = PlainDigitsBudget()
    return conn.json_budget


def cast_vector(text, cursor):
    """Read an int2vector or oidvector, '1 2 3', as the list of its integers, as to_jsonb writes an int2vector (an
    oidvector's oids are numbers, as an oid is: docs/contract.md)."""
    return None if text is None else [int(number) for number in text.split()]


def cast_text(text, cursor):
    """Read a value as PostgreSQL's text of it (ranges, multiranges, anonymous records); UnreadableValue when the
    session writes dates or intervals in another style than dbapi reads, as PostgreSQL reported it before this
    result came: that text would pass them on in it."""
    if text is None:
        return None
    if cursor is not None:
        check_reading_styles(cursor.connection)
    return PgText(text)


CASTERS = {DATE: cast_date, TIMESTAMP: cast_timestamp, TIMESTAMPTZ: cast_timestamptz, TIME: cast_time,
           TIMETZ: cast_time, INTERVAL: cast_interval, JSON: cast_json, JSONB: cast_json, INT2VECTOR: cast_vector,
           OIDVECTOR: cast_vector,
           **{oid: cast_text for oid in (*BUILTIN_RANGES, *BUILTIN_MULTIRANGES, RECORD)}}
TYPECASTERS = {oid: psycopg2.extensions.new_type((oid,), f'DBAPI_{oid}', cast) for oid, cast in CASTERS.items()}


def record_fields(text):
    """Split a composite value's text, '(1,"a b",)', into its fields' texts, None for NULL."""
    return [(unquoted or None) if quoted is None else DOUBLED.sub(r'\1', quoted)
            for quoted, unquoted in (match.groups() for match in RECORD_FIELD.finditer(text, 1))]


class Composite:
    """One composite type of a connection's database: reads its values as dicts, each field read as its type is.

    A field is read by the typecaster register_types put on the connection for its type (casters), else by
    psycopg2's: not through the fetching cursor, whose own typecasters may differ (lib/db/copyjson.py's read
    text as bytes). The fields are the catalog's as the connection's current use (a lease: PooledConnection.uses)
    first reads a value of the type: a field renamed or retyped since an earlier use (ALTER TYPE, ALTER TABLE)
    is read as it is now, at the cost of one catalog query per type and use. A value with another number of fields
    (altered within the use) makes it read them again, once.
    """

    def __init__(self, oid, names, field_types, casters):
        self.oid, self.names, self.field_types, self.casters = oid, names, field_types, casters
        self.typecaster = psycopg2.extensions.new_type((oid,), f'DBAPI_COMPOSITE_{oid}', self.cast)
        self.read_in_use = 0  # the connection's use whose catalog the fields are; 0: the connection's setup

    def cast(self, text, cursor):
        """Read one value as {field: value}, the object to_jsonb writes."""
        if text is None:
            return None
        use = getattr(cursor.connection, 'uses', 0)
        if use != self.read_in_use:
            self.read_fields_again(cursor.connection)
            self.read_in_use = use
        fields = self.fields_of(text)
        if len(fields) != len(self.names):
            self.read_fields_again(cursor.connection)
            fields = self.fields_of(text)
            if len(fields) != len(self.names):
                raise psycopg2.DataError(f'A value of composite type {self.oid} does not have its {len(self.names)} '
                                         f'fields: {text[:200]}')
        return {name: None if field is None else self.caster_of(field_type)(field, cursor)
                for name, field_type, field in zip(self.names, self.field_types, fields)}

    def caster_of(self, oid):
        """Return the typecaster of a field's type, as the connection reads a column of that type."""
        return self.casters.get(oid) or psycopg2.extensions.string_types.get(oid, psycopg2.STRING)

    def fields_of(self, text):
        """Return the fields' texts of a value: '()' is one NULL field, or none for a type without fields."""
        return [] if text == '()' and not self.names else record_fields(text)

    def read_fields_again(self, conn):
        """Read the type's fields from the catalog as they are now (in turn with a stream's helper thread, which may
        be fetching on the same connection)."""
        with taking_turns(conn), conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
            cursor.execute(COMPOSITE_FIELDS, {'oid': self.oid})
            row = cursor.fetchone()
        if row is not None:
            _, self.names, self.field_types = row


def taking_turns(conn):
    """Return a context that runs a query on conn while no other thread runs one there (a PooledConnection's
    query_turn; psycopg2 under gevent refuses a second query while one is underway)."""
    return getattr(conn, 'query_turn', None) or contextlib.nullcontext()


def read_composites(conn, casters):
    """Return {oid: Composite} of every composite type of conn's database, reading fields with casters."""
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
        cursor.execute(COMPOSITE_FIELDS, {'oid': 0})
        return {oid: Composite(oid, names, field_types, casters) for oid, names, field_types in cursor.fetchall()}


def delimited_array_caster(delimiter):
    """Return the typecaster function of an array, in any dimension, of a type whose elements are delimited by
    another character than ',' (box[]: ';'; a user-defined type's typdelim), which psycopg2 cannot split: lists of
    each element's text, None for NULL."""
    def cast(text, cursor):
        return None if text is None else delimited_array(text, 0, delimiter)[0]
    return cast


def delimited_array(text, start, delimiter):
    """Return (the array at text[start], which is '{', as lists of PgText and None, the index after its '}')."""
    items, index = [], start + 1
    while text[index] != '}':
        if text[index] == '{':
            item, index = delimited_array(text, index, delimiter)
        elif text[index] == '"':  # quoted, its " and \ escaped with a backslash
            end = QUOTED_ELEMENT.match(text, index).end()
            item, index = PgText(BACKSLASHED.sub(r'\1', text[index + 1:end - 1])), end
        else:
            end = min(position for position in (text.find(delimiter, index), text.find('}', index)) if position >= 0)
            item, index = (None if text[index:end] == 'NULL' else PgText(text[index:end])), end
        items.append(item)
        index += text[index] == delimiter
    return items, index + 1


def element_caster(base_oid, base_kind, casters):
    """Return the typecaster of an array's elements: ours (casters), psycopg2's, or the text for a range or
    unknown type."""
    if base_oid in casters:
        return casters[base_oid]
    if base_kind in ('r', 'm'):
        return psycopg2.STRING
    return psycopg2.extensions.string_types.get(base_oid, psycopg2.STRING)


def needs_array_caster(array_oid, base_oid, casters):
    """Tell whether psycopg2 would read an array wrong: as text when it does not know it, or element by element
    with its own caster where ours (casters) differs."""
    return array_oid not in psycopg2.extensions.string_types or base_oid in casters


def array_caster(array_oid, name, base_oid, base_kind, delimiter, casters):
    """Return the typecaster of one array type: ours where psycopg2 would read it wrong (needs_array_caster), else
    psycopg2's own; either reads lower bounds (without_bounds)."""
    if delimiter != ',':
        caster = psycopg2.extensions.new_type((array_oid,), f'DBAPI_{name}_ARRAY', delimited_array_caster(delimiter))
    elif needs_array_caster(array_oid, base_oid, casters):
        caster = psycopg2.extensions.new_array_type((array_oid,), f'DBAPI_{name}_ARRAY',
                                                    element_caster(base_oid, base_kind, casters))
    else:
        caster = psycopg2.extensions.string_types[array_oid]
    return psycopg2.extensions.new_type((array_oid,), f'DBAPI_{name}_ARRAY_BOUNDS', without_bounds(caster))


def without_bounds(caster):
    """Return a typecaster function that reads an array with lower bounds other than 1 as caster reads one without:
    its elements, the bounds dropped, as to_jsonb writes it. PostgreSQL writes such bounds in front of the array,
    '[0:1][1:2]={{1,2},{3,4}}', and psycopg2 reads them in one dimension only."""
    def cast(text, cursor):
        if text is not None and text.startswith('['):
            text = text[ARRAY_BOUNDS.match(text).end():]
        return caster(text, cursor)
    return cast


def register_types(conn):
    """Teach conn how to read every type exactly: our casters, every composite and every array type the catalog
    lists."""
    casters = dict(TYPECASTERS)  # {oid: typecaster} of what conn reads otherwise than psycopg2 would
    casters.update((oid, composite.typecaster) for oid, composite in read_composites(conn, casters).items())
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
        cursor.execute(ARRAYS_OF_TYPES)
        arrays = cursor.fetchall()
    for array_oid, name, base_oid, base_kind, delimiter in arrays:
        casters[array_oid] = array_caster(array_oid, name, base_oid, base_kind, delimiter, casters)
    for typecaster in casters.values():
        psycopg2.extensions.register_type(typecaster, conn)


class SessionSetupFailed(RuntimeError):
    """The setup of a new connection (DB_CONFIGURE's configure) failed on a statement PostgreSQL refused: the
    server's fault, a 500, not the request's (its SQLSTATE would have made it a 409 or a 422 naming configure's SQL)."""


def with_types(configure):
    """Return the pool's setup of a new connection: configure(conn), in autocommit (a transaction it leaves open is
    committed: what it did stays), then the reading styles and register_types. A statement of configure's that
    PostgreSQL refuses is SessionSetupFailed; one the database's state ended (database_unavailable) stays itself."""
    def configure_with_types(conn):
        conn.autocommit = True  # each SET of configure's takes effect at once, as a configure written without it meant
        try:
            configure(conn)
        except psycopg2.Error as exc:
            if database_unavailable(exc):
                raise
            code = f' (SQLSTATE {exc.pgcode})' if exc.pgcode else ''
            raise SessionSetupFailed('the setup of a new connection (DB_CONFIGURE) failed: '
                                     f'{exc.diag.message_primary or str(exc).strip()}{code}') from exc
        if conn.get_transaction_status() != psycopg2.extensions.TRANSACTION_STATUS_IDLE:
            conn.commit()
        conn.autocommit = True  # the settings outlive this setup; each lease sets autocommit anyway
        with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
            cursor.execute(SET_READING_STYLES)
        register_types(conn)
    return configure_with_types


def json_parameter(value):
    """Adapt value (a dict by default; any value an action wraps) as JSON text, written by the one JSON encoder, for a
    json or jsonb column: exact numbers stay exact, where psycopg2.extras.Json's json.dumps refuses them."""
    return psycopg2.extras.Json(value, dumps=json_text)


def json_text(document):
    """Return document as JSON text; RefusedValue when a string in it cannot be UTF-8 (a lone surrogate), as a str
    parameter's (CheckedText). Any other value JSON cannot write stays the action's fault (TypeError)."""
    try:
        return dumps_bytes(document).decode()
    except TypeError as exc:
        if (fault := document_text_fault(document)) is not None:
            raise RefusedValue(fault) from exc
        raise


def document_text_fault(document):
    """Return why a string in document cannot be UTF-8, or None: looked for in every container the encoder writes
    (a set, a tuple, a Mapping, a deque: lib/jsonenc.py's orjson_ready makes them dicts and lists), or None when
    the encoder cannot write the document for another reason."""
    try:
        ready = orjson_ready(document)
    except TypeError:
        return None
    return text_fault(ready)


def text_fault(value):
    """Return why a string in value (dicts and lists of strings and leaves; a key or a value, at any depth) cannot
    be UTF-8, or None."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError as exc:
            return str(exc)
        return None
    items = (*value, *value.values()) if isinstance(value, dict) else value if isinstance(value, list) else ()
    return next((fault for item in items if (fault := text_fault(item)) is not None), None)


def uuid_parameter(value):
    """Adapt a uuid.UUID (marshmallow's UUID field loads one) as a uuid literal; its text is hex digits and dashes."""
    return psycopg2.extensions.AsIs(f"'{value}'::uuid")


def enum_parameter(member):
    """Adapt an enum member (marshmallow's Enum field loads one) as its value, the value a response writes for it."""
    return psycopg2.extensions.adapt(member.value)


def int_parameter(value):
    """Adapt an int as psycopg2 does, a negative one in parentheses. SQL's `::` binds tighter than unary minus
    (PostgreSQL's operator precedence table), so psycopg2's ` -5::money` is -(5::money), an operator money lacks, and
    ` -32768::int2` casts 32768, out of range: `(-5)::money` casts the number sent."""
    return psycopg2.extensions.AsIs('(%d)' % value) if value < 0 else psycopg2.extensions.Int(value)


def float_parameter(value):
    """Adapt a float as psycopg2 does (NaN and the infinities quoted), a negative one in parentheses (int_parameter).
    Its literal is a numeric constant, as psycopg2's is, so that numeric's functions and casts take it: -0.0 arrives
    as 0, numeric having no negative zero ('-0'::float8 would keep it, and fail round(x, 2) and ::money)."""
    if math.isfinite(value) and math.copysign(1, value) < 0:
        return psycopg2.extensions.AsIs(f'({float.__repr__(value)})')
    return psycopg2.extensions.Float(value)


# numeric's own non-finite values (PostgreSQL 14 and later), which psycopg2's adapter sends all as 'NaN'.
NON_FINITE_NUMERIC = {'NaN': "'NaN'::numeric", 'Infinity': "'Infinity'::numeric", '-Infinity': "'-Infinity'::numeric"}


def decimal_parameter(value):
    """Adapt a Decimal (an ExactNumber too) as the numeric literal of its text, a negative one in parentheses
    (int_parameter), and one of digits alone (`10`, which PostgreSQL reads as an integer constant) cast to numeric:
    `%(amount)s / 3` divided 10 as an integer and 10.00 as a numeric (trial BD). NaN and the infinities go as
    numeric's own, where psycopg2 sent every one as NaN."""
    if not value.is_finite():
        return psycopg2.extensions.AsIs(NON_FINITE_NUMERIC['NaN' if value.is_nan() else decimal.Decimal.__str__(value)])
    text = decimal.Decimal.__str__(value)
    literal = f'({text})' if value.is_signed() else text
    return psycopg2.extensions.AsIs(literal if '.' in text or 'E' in text else f'{literal}::numeric')


def ip_parameter(value):
    """Adapt an ipaddress address, interface or network (marshmallow's IP, IPInterface and IPv4... fields load one) as
    its text, a string literal as a str is, which an inet or cidr column, or a text one, takes (trial BU: psycopg2
    "can't adapt type 'IPv4Address'", a 500)."""
    return psycopg2.extensions.adapt(inet_text(value))


# ipaddress's interface classes are subclasses of its address classes: psycopg2 finds their adapter through the MRO.
for ip_type in (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network):
    psycopg2.extensions.register_adapter(ip_type, ip_parameter)
psycopg2.extensions.register_adapter(dict, json_parameter)
psycopg2.extensions.register_adapter(uuid.UUID, uuid_parameter)
psycopg2.extensions.register_adapter(enum.Enum, enum_parameter)
psycopg2.extensions.register_adapter(int, int_parameter)
psycopg2.extensions.register_adapter(float, float_parameter)
psycopg2.extensions.register_adapter(decimal.Decimal, decimal_parameter)


def check_reading_styles(conn):
    """Raise UnreadableValue when conn's session writes dates or intervals in another style than the typecasters read
    (DateStyle's output part ISO, IntervalStyle postgres), as PostgreSQL last reported them (both are GUC_REPORT
    settings): a request that changed either may have read misread values, ranges and records among them. A style
    never reported (a pooler that does not pass it on) is taken for the one set; SessionEncodingChanged when the
    session's client_encoding is not the one psycopg2 decodes (check_client_encoding)."""
    check_client_encoding(conn)
    if (conn.info.parameter_status('DateStyle') or 'ISO').partition(',')[0] != 'ISO':
        raise UnreadableValue('values read after a request changed DateStyle (dbapi reads ISO)')
    if (conn.info.parameter_status('IntervalStyle') or 'postgres') != 'postgres':
        raise UnreadableValue('values read after a request changed IntervalStyle (dbapi reads postgres)')


def check_client_encoding(conn):
    """Raise SessionEncodingChanged when the session's client_encoding, as PostgreSQL last reported it (a GUC_REPORT
    setting; None, never reported, is taken for psycopg2's), is not conn.encoding, the one psycopg2 encodes what it
    sends in and decodes what it reads: an action's SQL `SET LOCAL client_encoding`, which psycopg2 does not see,
    made the text sent after it stored garbled and the text read misread (`Zoë` stored as `ZoÃ«`; trial AF)."""
    reported = conn.info.parameter_status('client_encoding')
    if reported is not None and reported != conn.encoding and python_codec(reported) != python_codec(conn.encoding):
        raise SessionEncodingChanged(f'client_encoding was set to {reported} in SQL, while psycopg2 sends and reads '
                                     f'{conn.encoding}: connection.set_client_encoding, in an autocommit=True '
                                     'action, changes both')


def python_codec(name):
    """Return the Python codec of a PostgreSQL encoding's name by psycopg2's own table (psycopg2.extensions.encodings),
    else the name: PostgreSQL reports `EUC_JP` and `LATIN1`, which psycopg2's set_client_encoding keeps as `EUCJP`
    and `ISO88591` (trial AH)."""
    return psycopg2.extensions.encodings.get(name, name)


class SessionEncodingChanged(psycopg2.DataError):
    """A request's session encodes text otherwise than psycopg2 does (check_client_encoding): raised before a
    statement is sent and after one is read, so that nothing is stored garbled or misread; its message names the
    two encodings, never a value."""


@translates(SessionEncodingChanged)
def from_session_encoding_changed(exc):
    """An action that set client_encoding in SQL is a 500 that says why: the action must change."""
    return ApiError(f'The action changed how text is encoded mid-request: {exc}. Nothing was sent or read after it.')


class UnreadableValue(psycopg2.DataError):
    """A value PostgreSQL sent that dbapi cannot pass on exactly, raised by a typecaster: its message names the
    kind, never the value."""


@translates(UnreadableValue)
def from_unreadable_value(exc):
    """A value dbapi cannot pass on exactly is a 500 that says why: the action, or the data stored, must change."""
    return ApiError(f'A value the database sent cannot be passed on exactly: {exc}.')


class RefusedValue(ValueError):
    """A parameter psycopg2 cannot send: raised while adapting it, so about the value, never the action's code."""


class CheckedText:
    """psycopg2's own adapter of a str, QuotedString, whose failures are raised as RefusedValue.

    The failures are a NUL character (PostgreSQL's text cannot hold one), a lone surrogate, and a character
    the connection's encoding lacks. A ValueError raised anywhere else stays a server fault.
    """

    def __init__(self, value):
        self.quoted = psycopg2.extensions.QuotedString(value)

    def prepare(self, conn):
        """Learn the connection's encoding, as QuotedString does."""
        self.quoted.prepare(conn)

    def getquoted(self):
        """Return the quoted SQL literal; RefusedValue when the value cannot be one."""
        try:
            return self.quoted.getquoted()
        except ValueError as exc:  # UnicodeEncodeError is one
            raise RefusedValue(str(exc)) from exc


psycopg2.extensions.register_adapter(str, CheckedText)


@translates(RefusedValue)
def from_refused_value(exc):
    """A parameter psycopg2 cannot send, whoever built it from the client's input, is a 422."""
    return Unprocessable(f'A value cannot be sent to the database: {exc}')
