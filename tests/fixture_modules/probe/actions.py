"""Probe actions: each one makes the framework show one behaviour for the tests."""
import collections
import datetime
import decimal
import math
import os
import types

import gevent
from flask import Response, abort
from marshmallow import INCLUDE, Schema, fields, pre_load, validate
from psycopg2 import sql

from lib.db import DEFAULT, Db, transactional
from lib.db.migrate import MIGRATION_TABLE
from lib.decorators import inject_conn, inject_db, use_schema
from lib.errors import ApiError, Conflict, NotFound, Unprocessable
from lib.fields import base64_bytes

# Each case runs real SQL that makes PostgreSQL raise that SQLSTATE.
SQLSTATE_CASES = {
    'unique': "INSERT INTO probe.things (code) VALUES ('dup'), ('dup')",
    'foreign_key': 'INSERT INTO probe.things (parent_id) VALUES (-1)',
    'not_null': 'INSERT INTO probe.things (label) VALUES (NULL)',
    'check': 'INSERT INTO probe.things (quantity) VALUES (-5)',
    # A domain's constraints are checked where a value becomes the domain's type: no column is known there.
    'domain_check': 'CREATE DOMAIN probe.positive_case AS int CONSTRAINT positive_case_above_zero CHECK (VALUE > 0); '
                    'SELECT (-5)::probe.positive_case',
    'domain_not_null': 'CREATE DOMAIN probe.needed_case AS int NOT NULL; SELECT NULL::probe.needed_case',
    'data': 'SELECT 1 / 0',
    'bad_input': "SELECT 'abc'::int",
    'raise': "SELECT probe.refuse('Stock is frozen for audit.')",
    'raise_with_detail_and_hint': "DO $$ BEGIN RAISE EXCEPTION 'Stock is frozen.' USING DETAIL = 'Audit 7 runs "
                                  "until Friday.', HINT = 'Try again on Monday.'; END $$",
    'no_data_found_with_hint': "DO $$ BEGIN RAISE no_data_found USING MESSAGE = 'No such order.', "
                               "HINT = 'Orders older than a year are archived.'; END $$",
    'privilege': 'SET LOCAL ROLE dbapi_probe_nobody; SELECT * FROM probe.things',
    'timeout': "SET LOCAL statement_timeout = '50ms'; SELECT pg_sleep(2)",
    'serialization': "SELECT nextval('probe.attempts'); DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
    'deadlock': "SELECT nextval('probe.attempts'); DO $$ BEGIN RAISE EXCEPTION 'deadlock' USING ERRCODE = '40P01'; END $$",
    'exclusion': "INSERT INTO probe.bookings (during) VALUES ('[1,5)'), ('[3,8)')",
    # Checked at the commit, which raises it without a cursor.
    'deferred_foreign_key': 'INSERT INTO probe.children (id, parent_id) VALUES (1, -1)',
    # A key of 9,600 characters that do not compress: past what a btree index entry holds.
    'too_long_for_index': "INSERT INTO probe.keys SELECT string_agg(md5(random()::text), '') FROM generate_series(1, 300)",
    'no_data_found': 'DO $$ DECLARE found int; BEGIN SELECT 1 INTO STRICT found WHERE false; END $$',
    'read_only': 'SET TRANSACTION READ ONLY; INSERT INTO probe.parents VALUES (1)',
    'restrict': "DO $$ BEGIN RAISE EXCEPTION 'restricted' USING ERRCODE = '23001', "
                "CONSTRAINT = 'things_parent_id_fkey', TABLE = 'things', SCHEMA = 'probe'; END $$",
    'twice_in_one_upsert': 'INSERT INTO probe.parents VALUES (1), (1) ON CONFLICT (id) DO UPDATE SET id = EXCLUDED.id',
    'check_option': 'INSERT INTO probe.few_things (quantity) VALUES (20)',
    'too_deep_for_the_server': "SELECT (repeat('[', 100000) || repeat(']', 100000))::jsonb",
    'too_many_arguments': f"SELECT json_build_object({', '.join(['1'] * 120)})",
    # A server short of disk or memory; raised here, as a real one would need the server starved.
    'disk_full': "DO $$ BEGIN RAISE EXCEPTION 'full' USING ERRCODE = '53100'; END $$",
    'out_of_memory': "DO $$ BEGIN RAISE EXCEPTION 'no memory' USING ERRCODE = '53200'; END $$",
    'syntax': 'SELEC 1',
    'sequence_exhausted': "CREATE TEMP SEQUENCE spent MAXVALUE 2; SELECT nextval('spent'), nextval('spent'), nextval('spent')",
    'undefined_table': 'SELECT * FROM probe.no_such_table',
    # What a server that is going away or full says; raised here, as a real one would need the server stopped.
    'connection_failure': "DO $$ BEGIN RAISE EXCEPTION 'lost' USING ERRCODE = '08006'; END $$",
    'too_many_connections': "DO $$ BEGIN RAISE EXCEPTION 'full' USING ERRCODE = '53300'; END $$",
    'admin_shutdown': "DO $$ BEGIN RAISE EXCEPTION 'stopping' USING ERRCODE = '57P01'; END $$",
    'crash_shutdown': "DO $$ BEGIN RAISE EXCEPTION 'crashed' USING ERRCODE = '57P02'; END $$",
    'cannot_connect_now': "DO $$ BEGIN RAISE EXCEPTION 'starting' USING ERRCODE = '57P03'; END $$",
}


def echo(**body):
    """Return the body as given."""
    return body


@inject_db(DEFAULT)
def echo_in_a_transaction(db, **body):
    """Return the body as given, from an action that takes any key and is given a Db."""
    return body


class AnyKeys(Schema):
    """A schema that lets unknown keys through to the action."""

    class Meta:
        unknown = INCLUDE

    name = fields.String()


@use_schema(AnyKeys)
@inject_db(DEFAULT)
def echo_any_keys_in_a_transaction(db, **body):
    """Return the body as its schema loaded it, from an action that takes any key and is given a Db."""
    return body


class Enveloped(Schema):
    """A schema that lets unknown keys through, of a body its pre_load hook takes out of an envelope."""

    class Meta:
        unknown = INCLUDE

    name = fields.String(required=True)

    @pre_load
    def open_envelope(self, body, **kwargs):
        """Take the body out of {"data": {...}}."""
        return body.get('data', body)


@use_schema(Enveloped)
@inject_db(DEFAULT)
def enveloped_any_keys(db, name, **extra):
    """Return the name and the keys that came through unvalidated."""
    return {'name': name, 'extra': extra}


@use_schema(Enveloped)
@inject_db(DEFAULT)
def enveloped_own_keys(db, note=None, /, *, name, label=None):
    """Return what it was given, from an action that takes only its own keys (note only by position)."""
    return {'name': name, 'note': note, 'label': label}


def greet(name, greeting='hello'):
    """Greet name; validated against this signature, not a schema."""
    return f'{greeting} {name}'


class Item(Schema):
    """One item of a list body."""

    sku = fields.String(required=True)
    count = fields.Integer(required=True, strict=True)


@use_schema(Item(many=True))
def items(items):
    """Count a list body validated with a many=True schema."""
    return {'count': len(items), 'skus': [item['sku'] for item in items]}


class Case(Schema):
    """The name of a SQLSTATE case."""

    case = fields.String(required=True)


@use_schema(Case)
@inject_conn(DEFAULT)
def sqlstate(conn, case):
    """Run the SQL of one case, which fails in PostgreSQL."""
    with conn.cursor() as cursor:
        cursor.execute(SQLSTATE_CASES[case])
    return 'unreachable'


@inject_conn(DEFAULT)
def flaky(conn):
    """Fail with a serialization failure on every odd attempt, so one retry succeeds."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT nextval('probe.attempts')")
        attempt = cursor.fetchone()['nextval']
        if attempt % 2 == 1:
            cursor.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
    return {'attempt': attempt}


@inject_db(DEFAULT)
def probe_values(db):
    """Return one value of each PostgreSQL type of the contract's JSON table."""
    return db.fetch_one("""
        SELECT '2026-11-21 20:54:17.123456+00'::timestamptz AS timestamptz,
               '2026-11-21 20:54:17.123456'::timestamp AS timestamp,
               '2026-11-21'::date AS date, '20:54:17'::time AS time,
               10.50::numeric(10, 2) AS numeric, '0.1'::numeric AS small_numeric,
               'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'::uuid AS uuid,
               '\\x00ff10'::bytea AS bytea, interval '1 day 2 seconds' AS interval,
               '{"a": [1, null, "x"]}'::jsonb AS jsonb, '[1, 2]'::json AS json,
               'NaN'::float8 AS nan, 'Infinity'::float8 AS infinity, '-Infinity'::float8 AS minus_infinity,
               ARRAY[1, 2, 3] AS int_array, 9223372036854775807::bigint AS bigint, 'é ✓'::text AS text""")


def python_values():
    """Return Python values the contract's JSON table covers beyond the database's."""
    point = collections.namedtuple('Point', 'x y')
    return {'set': {3}, 'tuple': (1, 'a'), 'nan': math.nan, 'inf': math.inf, 'huge': 2**70,
            'bytes': b'\x00\xff', 'nested': {'nan': [math.nan]}, 'range': range(3), 'keys': {'a': 1}.keys(),
            'items': {'a': 1}.items(), 'deque': collections.deque([1, 2]), 'point': point(1, 2),
            'mapping': types.MappingProxyType({'k': range(2**70, 2**70 + 1)})}


# Objects whose keys are no str: each written as its name, or two written as one name.
KEYED = {'distinct': {1: 'a', 2.5: 'b', None: 2, datetime.date(2026, 11, 21): 3, 2**70: 4, decimal.Decimal('3.10'): 5,
                      b'\x00\xff': 6},
         'int': {1: 'a', '1': 'b'}, 'bool': {'true': 1, True: 2}, 'none': {None: 1, 'null': 2},
         'decimal': {'2.50': 1, decimal.Decimal('2.50'): 2},
         'nested': {'rows': [{'k': {2: 'x', '2': 'y'}}]}, 'big': {2**70: 'a', str(2**70): 'b'},
         'tuple': {(1,): 'a'}, 'frozenset': {frozenset({1}): 'a'}}


def keyed(kind):
    """Answer KEYED[kind]: an object whose keys are no str."""
    return KEYED[kind]


def crash():
    """Raise an unexpected error whose message holds things a 500 must never show."""
    raise RuntimeError('boom: password=hunter2 host=db.internal SELECT secret FROM vault')


def missing():
    """Raise NotFound with a detail."""
    raise NotFound('No such probe.')


class Failure(Schema):
    """The status of the ApiError to raise."""

    status = fields.Integer(required=True, strict=True)


@use_schema(Failure)
def fail_with(status):
    """Raise an ApiError with the given status."""
    if status == 409:
        raise Conflict('Already there.')
    error = ApiError('Failed on purpose.')
    error.status = status
    raise error


def with_status():
    """Return (value, status)."""
    return {'accepted': True}, 202


class Raw(Schema):
    """Bytes, as base64 text."""

    raw = base64_bytes(required=True)


@use_schema(Raw)
@inject_db(DEFAULT)
def bytea_round_trip(db, raw):
    """Send the bytes to PostgreSQL as bytea and return what it holds, and its length in bytes."""
    return db.fetch_one('SELECT %(raw)s::bytea AS raw, octet_length(%(raw)s::bytea) AS length', {'raw': raw})


def given_status(code, value=None, streamed=False):
    """Return (value, code): any status the caller names; with streamed, value's items as a generator."""
    return (item for item in value) if streamed else value, code


@inject_conn(DEFAULT, named=False)
def made_response(conn, code):
    """Return (Response, code): a flask Response the action made, whose body reads from the database as it is sent."""
    def body():
        with conn.cursor() as cursor:
            cursor.execute("SELECT 'made'")
            yield cursor.fetchone()[0]
    return Response(body(), mimetype='text/plain'), code


def yields_a_row(row):
    """Return a flask Response whose body's generator yields row (a list), which no server can write, after its first
    byte."""
    return Response(iter([b'[', row, b']']), mimetype='application/json')


def counted(count, missing_at=None):
    """Return a plain generator (no connection) of the numbers 0 to count - 1; it raises NotFound at missing_at."""
    def numbers():
        for number in range(count):
            if number == missing_at:
                raise NotFound(f'No number {number}.')
            yield number
    return numbers()


def nothing_to_iterate():
    """Return an empty iterator that is no generator."""
    return iter(())


class Size(Schema):
    """A body size in bytes."""

    size = fields.Integer(required=True, strict=True)


@use_schema(Size)
def sized(size):
    """Return a JSON string of about size bytes."""
    return 'x' * size


class Chunks(Schema):
    """How many chunks of 64 KiB to stream."""

    chunks = fields.Integer(required=True, strict=True)


@use_schema(Chunks)
def chunked(chunks):
    """Stream chunks of 64 KiB from a plain generator, holding no connection: a Response the action makes itself."""
    return Response((b' ' * 65536 for _ in range(chunks)), mimetype='application/json')


class Hold(Schema):
    """How long to hold a connection."""

    seconds = fields.Float(required=True)


@use_schema(Hold)
@inject_conn(DEFAULT)
def hold(conn, seconds):
    """Keep a pooled connection busy for a while."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT pg_sleep(%s)', (seconds,))
    return {'held': seconds}


class HoldMany(Schema):
    """How long each of several statements of one transaction holds its connection."""

    seconds = fields.Float(required=True)
    count = fields.Integer(required=True)


@use_schema(HoldMany)
@inject_conn(DEFAULT)
def hold_many(conn, seconds, count):
    """Run count statements of pg_sleep(seconds) in one transaction."""
    with conn.cursor() as cursor:
        for _ in range(count):
            cursor.execute('SELECT pg_sleep(%s)', (seconds,))
    return {'held': seconds * count}


class OwnBaseException(BaseException):
    """A module's own exception class that derives from BaseException, not Exception."""


def system_exit(now=False, kind='exit', later=False):
    """Raise a BaseException that is no Exception when asked (now), or, later, at the second item of the stream it
    returns: SystemExit as a module's stray sys.exit() would, a gevent.Timeout the action lets escape, a
    KeyboardInterrupt, or one of its own."""
    if later:
        return exits_after_an_item(kind)
    if not now:
        return {'exited': False}
    leave(kind)


def exits_after_an_item(kind):
    """Yield one item, then leave (kind)."""
    yield {'item': 1}
    leave(kind)


def leave(kind):
    """Raise the BaseException of kind (system_exit)."""
    if kind == 'timeout':
        with gevent.Timeout(0.01):
            gevent.sleep(1)
    if kind == 'own':
        raise OwnBaseException('raised on purpose')
    if kind == 'interrupt':
        raise KeyboardInterrupt('raised on purpose')
    if kind == 'answer':  # no BaseException: an answer raised, which Flask would send as it is
        abort(Response('{"ok": true}', status=200, mimetype='application/json'))
    raise SystemExit(3)


def pid():
    """Return the serving process id."""
    return {'pid': os.getpid()}


class Pair(Schema):
    """Two integers."""

    a = fields.Integer(required=True, strict=True)
    b = fields.Integer(required=True, strict=True)


@use_schema(Pair)
@inject_db(DEFAULT)
def add(db, a, b):
    """Add two numbers in a stored function through Db.call."""
    return db.call('probe.add', a, b)


@inject_conn(DEFAULT, named=False)
def raw_rows(conn):
    """Return raw cursor rows of a connection injected with named=False (tuples)."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT 1 AS one, 2 AS two')
        return cursor.fetchall()


@inject_conn(DEFAULT)
def generated(conn):
    """Stream rows one by one from a plain generator that keeps using the connection."""
    def rows():
        with conn.cursor() as cursor:
            for number in range(3):
                cursor.execute('SELECT %s AS n', (number,))
                yield cursor.fetchone()
    return rows()


class Registration(Schema):
    """An email and a name, both required."""

    email = fields.Email(required=True)
    name = fields.String(required=True)


@use_schema(Registration)
def register(email, name):
    """Return a body validated by a schema with an email field."""
    return {'email': email, 'name': name}


class NewThing(Schema):
    """A thing to insert: a unique code and a quantity."""

    code = fields.String(required=True)
    quantity = fields.Integer(load_default=0, strict=True)


@use_schema(NewThing)
@inject_db(DEFAULT)
def create_thing(db, code, quantity):
    """Insert a thing; a taken code is a 409 from PostgreSQL's unique constraint."""
    return db.insert('probe.things', {'code': code, 'quantity': quantity}), 201


@use_schema(NewThing)
@inject_db(DEFAULT)
def create_unencodable(db, code, quantity):
    """Insert a thing, then answer a value JSON cannot encode: the insert must not be committed."""
    db.insert('probe.things', {'code': code, 'quantity': quantity})
    return {'thing': object()}


@use_schema(NewThing)
@inject_conn(DEFAULT)
def create_nested(conn, code, quantity):
    """Insert a thing in the action's own transaction, then open a transaction of its own inside it."""
    Db(conn).insert('probe.things', {'code': code, 'quantity': quantity})
    with transactional(conn) as db:
        db.insert('probe.things', {'code': f'{code}-inner', 'quantity': quantity})
    return {'created': True}


class ThingId(Schema):
    """The id of a thing."""

    id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


@use_schema(ThingId)
@inject_db(DEFAULT)
def get_thing(db, id):
    """Return one thing, or 404."""
    row = db.fetch_one('SELECT * FROM probe.things WHERE id = %(id)s', {'id': id})
    if row is None:
        raise NotFound(f'No thing has id {id}.')
    return row


@inject_conn(DEFAULT)
def export_things(conn):
    """Stream every thing as one JSON array from a server-side cursor."""
    return Db(conn).stream_json('SELECT * FROM probe.things ORDER BY id')


class Move(Schema):
    """A quantity to move from one thing to another."""

    from_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    to_id = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))
    amount = fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


MOVE_SQL = 'UPDATE probe.things SET quantity = quantity + %(change)s WHERE id = %(id)s RETURNING id, quantity'


@use_schema(Move)
@inject_db(DEFAULT)
def move(db, from_id, to_id, amount):
    """Move quantity between two things in one transaction, rows locked in id order; a shortfall is a 422."""
    if from_id == to_id:
        raise Unprocessable('A thing cannot give to itself.')
    locked = db.fetch_all('SELECT id FROM probe.things WHERE id = ANY(%(ids)s) ORDER BY id FOR UPDATE',
                          {'ids': [from_id, to_id]})
    if len(locked) != 2:
        raise NotFound('No such thing.')
    source = db.fetch_one(MOVE_SQL, {'change': -amount, 'id': from_id})
    return {'from': source, 'to': db.fetch_one(MOVE_SQL, {'change': amount, 'id': to_id})}


@inject_db(DEFAULT)
def migrations(db):
    """Return the ids of the migrations applied to the database, in order."""
    query = sql.SQL('SELECT migration_id FROM {} ORDER BY migration_id').format(sql.Identifier(MIGRATION_TABLE))
    return [row['migration_id'] for row in db.fetch_all(query)]


# Not 1 / 0 itself: PostgreSQL would fold that constant and fail when the query is planned, before any row.
FAILS_AT_THE_FIRST_ROW = 'SELECT 1 / (n - 1) AS inverse FROM generate_series(1, 3) AS n'
# jsonb nesting 300 levels: PostgreSQL sends it, orjson writes 254 levels at most.
TOO_DEEP_TO_WRITE = "SELECT (repeat('[', 300) || '1' || repeat(']', 300))::jsonb AS v FROM generate_series(1, 3)"


FAILING_STREAMS = {'division': FAILS_AT_THE_FIRST_ROW, 'depth': TOO_DEEP_TO_WRITE}


@inject_conn(DEFAULT)
def failing_stream(conn, kind, failure='division'):
    """Stream, with Db.stream or Db.stream_json (kind), a query whose first row divides by zero or nests too deep to
    write (failure)."""
    return streamer(conn, kind)(FAILING_STREAMS[failure])


@inject_conn(DEFAULT)
def counted_stream(conn, kind, count, batch_size, date_style=None):
    """Stream, with Db.stream or Db.stream_json (kind), the numbers 1 to count in batches of batch_size; in the
    request's DateStyle when date_style is given."""
    if date_style is not None:
        with conn.cursor() as cursor:
            cursor.execute('SET LOCAL DateStyle = %s', [date_style])
    return streamer(conn, kind)('SELECT n FROM generate_series(1, %s) AS n', [count], batch_size=batch_size)


@inject_conn(DEFAULT, autocommit=True)
def autocommit_stream(conn, kind, code, count):
    """Write a thing of code in autocommit, then stream, with Db.stream or Db.stream_json (kind), the numbers 1 to
    count."""
    with conn.cursor() as cursor:
        cursor.execute('INSERT INTO probe.things (code) VALUES (%s)', [code])
    return streamer(conn, kind)('SELECT n FROM generate_series(1, %s) AS n', [count], batch_size=2)


def streamer(conn, kind):
    """Return Db.stream or Db.stream_json (kind: 'stream', 'stream_json') on conn."""
    return {'stream': Db(conn).stream, 'stream_json': Db(conn).stream_json}[kind]
