"""Exact data both ways (docs/contract.md section 5): every PostgreSQL type becomes the JSON to_jsonb writes, or
the documented exception, on the buffered path, Db.stream and Db.stream_json; bodies keep numbers exact."""
import base64
import collections
import json
import datetime
import math
import decimal
import enum
import ipaddress
import re
import subprocess
import sys
import time
import timeit
import traceback
import types
import uuid

import orjson
import marshmallow
import psycopg2
import psycopg2.extras
import psycopg2.sql
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies

from lib.db import DEFAULT, Db, connection, json_parameter
from lib.db.session import note_action
from lib.db.types import RefusedValue, SessionEncodingChanged, UnreadableValue
from lib.decorators import inject_db
from lib.errors import ApiError, as_api_error
from lib.fields import exact_decimal
from lib.jsonenc import (PLAIN_DIGITS_PER_BODY, BoundedNumbers, ExactNumber, RawJson, TooDeepToWrite, dumps_bytes,
                         json_array_chunks, loads_exact)
from settings import BASE_DIR
from tests.helpers import Caller, assert_problem, run_sql

# Edge values of every type the catalog lists (min, max, infinity, empty, BC, huge), as SQL literals' text.
SAMPLES = {
    '"char"': ['a', ''], 'aclitem': ['postgres=arwdDxt/postgres'],
    'bigint': ['-9223372036854775808', '9223372036854775807', '0'], 'integer': ['-2147483648', '2147483647'],
    'smallint': ['-32768', '32767'], 'oid': ['0', '4294967295'],
    'int2vector': ['1 2 3', '', '-32768 32767'], 'oidvector': ['0 4294967295', ''], 'boolean': ['true', 'false'],
    'bit': ['1'], 'bit varying': ['', '10101'], 'box': ['(1,1),(0,0)'], 'bytea': ['\\x', '\\x00ff7f'],
    'character': ['x'], 'character varying': ['', 'é "q" \\ \t'], 'text': ['', 'é "q" \\ \t 😀'], 'name': ['n'],
    'cid': ['0'], 'xid': ['4294967295'], 'xid8': ['18446744073709551615'], 'tid': ['(0,1)'],
    'cidr': ['10.0.0.0/8', '::/0'], 'inet': ['192.168.0.1/24', '::1'], 'macaddr': ['08:00:2b:01:02:03'],
    'macaddr8': ['08:00:2b:01:02:03:04:05'], 'circle': ['<(0,0),1>'], 'line': ['{1,-1,0}'], 'lseg': ['[(0,0),(1,1)]'],
    'path': ['[(0,0),(1,1)]', '((0,0),(1,1))'], 'point': ['(1.5,-2)'], 'polygon': ['((0,0),(1,1),(1,0))'],
    'date': ['2026-11-21', '0001-01-01', '0001-01-01 BC', '4713-01-01 BC', '10000-06-23', '5874897-12-31',
             'infinity', '-infinity'],
    'timestamp without time zone': ['2026-11-21 20:54:17.123456', '2026-11-21 20:54:17.12', '0044-03-15 12:00 BC',
                                    '10000-01-01', '294276-12-31 23:59:59.999999', 'infinity', '-infinity'],
    'timestamp with time zone': ['2026-11-21 20:54:17.5+05:30', '1900-01-01 00:00+00:19:32', '0044-03-15 12:00 BC',
                                 '10000-01-01 00:00+00', 'infinity', '-infinity'],
    # A fraction of .01-.099999 s: orjson wrote .05 as .50000 (trial R).
    'time without time zone': ['00:00', '12:30:00.5', '23:59:59.999999', '24:00:00', '12:30:00.05', '00:00:00.012345'],
    'time with time zone': ['12:30:00+02', '12:30:00+02:30:15', '00:00-15:59', '24:00:00+02', '12:30:00.05+02'],
    'interval': ['0', '1 year 2 mons 3 days 04:05:06.5', '-1 years -2 mons +3 days -04:05:06.5', '00:00:00.000001',
                 '-178000000 years', '178000000 years', '2562047788 hours 54.775807 seconds', '1 mon', '-1 mon -1 day'],
    'numeric': ['0', '0.0000001', '10.50', '-1e-20', '1e400', '123456789012345678901234567890.123', 'NaN',
                'Infinity', '-Infinity'],
    'real': ['1.1', '3.4028235e38', '-1e-45', 'NaN', 'Infinity', '-Infinity'],
    'double precision': ['0.1', '1.7976931348623157e308', '5e-324', 'NaN', 'Infinity', '-Infinity'],
    'money': ['0', '-92233720368547758.08', '92233720368547758.07'],
    'json': ['{"n": 0.1000000000000000000001, "b": 123456789012345678901234567890, "e": 1e400}', '[]', 'null',
             '"\\u00e9"', '{"a": 1, "a": 2}'],
    'jsonb': ['{"n": 0.1000000000000000000001, "b": 123456789012345678901234567890, "e": 1e400}', '[1.0, -0]',
              '"x"', 'true', '{}'],
    'jsonpath': ['$.a[*] ? (@ > 1)'], 'pg_lsn': ['16/B374D848'], 'pg_snapshot': ['10:20:10,14,15'],
    'txid_snapshot': ['10:20:10,14,15'], 'refcursor': ['c'], 'tsquery': ["'a' & !'b'"], 'tsvector': ['a:1 b'],
    'uuid': ['a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'],
    'regclass': ['pg_class'], 'regcollation': ['"C"'], 'regconfig': ['english'], 'regdictionary': ['simple'],
    'regnamespace': ['pg_catalog'], 'regoper': ['||/'], 'regoperator': ['+(integer,integer)'], 'regproc': ['now'],
    'regprocedure': ['abs(integer)'], 'regrole': ['postgres'], 'regtype': ['integer'],
    'int4range': ['[1,10)', 'empty', '(,5]', '[-2147483648,)'], 'int8range': ['[1,9223372036854775807)'],
    'numrange': ['[0.1000000000000000000001,1e30)'], 'daterange': ['[-infinity,2026-11-21)', '[10000-01-01,)'],
    'tsrange': ['["2026-11-21 20:54:17.5",infinity)'], 'tstzrange': ['["0044-03-15 12:00 BC",)'],
    'int4multirange': ['{[1,3),[5,7)}', '{}'], 'int8multirange': ['{[1,2)}'], 'nummultirange': ['{[1.5,2)}'],
    'datemultirange': ['{[2026-01-01,infinity)}'], 'tsmultirange': ['{}'], 'tstzmultirange': ['{[2026-01-01,)}'],
    # Created by the fixture: an enum, domains over numeric and int, and composites (nested, with arrays, empty).
    'probe.mood': ['happy'], 'probe.price': ['10.505'], 'probe.quantity': ['0', '2147483647'],
    'probe.pair': ['(1,"a b")', '(,)', '(,"")'],
    'probe.nest': [r'''("(1,""a b"")","{""(2,\\""x,\\""\\""y\\""\\""\\\\\\\\z (q)\\"")"",NULL}",2026-11-21,'''
                   r'''"{""n"": 0.1000000000000000000001, ""s"": ""a,(b)""}",happy,7,"{a,NULL,"""",""b c""}",é)''',
                   '("(,"""")",{},infinity,null,,0,{},"")', '(,,,,,,,)'],
    'probe.nothing': ['()'],
}
# Types whose values cannot be written in SQL by hand (planner internals) or that this server cannot read.
UNSUPPORTED = {
    'gtsvector': 'an index-internal type: no input function',
    'pg_brin_bloom_summary': 'a planner statistic: no input function',
    'pg_brin_minmax_multi_summary': 'a planner statistic: no input function',
    'pg_dependencies': 'a planner statistic: no input function', 'pg_mcv_list': 'a planner statistic: no input function',
    'pg_ndistinct': 'a planner statistic: no input function', 'pg_node_tree': 'a planner tree: no input function',
    'xml': 'written as PostgreSQL\'s text like any string type; this server was built without libxml',
}
ZOO_COMPOSITES = ('probe.pair', 'probe.nest', 'probe.nothing')
ZOO_TYPES = f'''
    SELECT t.oid::regtype::text AS name FROM pg_type t
    WHERE (t.typtype IN ('b', 'r', 'm') AND t.typnamespace = 'pg_catalog'::regnamespace
           AND NOT EXISTS (SELECT FROM pg_type element WHERE element.typarray = t.oid))
       OR t.typnamespace = 'probe'::regnamespace AND t.typtype IN ('e', 'd')
       OR t.oid::regtype::text IN {ZOO_COMPOSITES}
    ORDER BY 1'''
ZOO_SETUP = '''
    DROP TYPE IF EXISTS probe.mood, probe.pair, probe.nest, probe.nothing, probe.extras, probe.evolving CASCADE;
    DROP DOMAIN IF EXISTS probe.price, probe.quantity CASCADE;
    CREATE TYPE probe.mood AS ENUM ('happy', 'sad');
    CREATE DOMAIN probe.price AS numeric(10, 3) CHECK (VALUE >= 0);
    CREATE DOMAIN probe.quantity AS int CHECK (VALUE >= 0);
    CREATE TYPE probe.pair AS (n int, label text);
    CREATE TYPE probe.nest AS (pair probe.pair, pairs probe.pair[], day date, doc jsonb, mood probe.mood,
                               quantity probe.quantity, tags text[], "class" text);
    CREATE TYPE probe.nothing AS ();
    CREATE TYPE probe.extras AS (amount probe.price, took interval, raw bytea, at timestamptz, at_time timetz);
    CREATE TYPE probe.evolving AS (a int);
    DROP TABLE IF EXISTS probe.type_roundtrip;
    CREATE TABLE probe.type_roundtrip (id bigserial PRIMARY KEY, text text, amount numeric, big numeric, doc jsonb);
'''
# Each type's value, NULL, and a one-element array of it (array_append: PostgreSQL 16 reads ARRAY[v] of an int2vector
# as an int2vector); with to_jsonb's JSON, PostgreSQL's text and the epoch.
VALUES_QUERY = '''
    SELECT v, array_append('{{}}'::{type}[], v) AS a, to_jsonb(v)::text AS oracle, v::text AS pg_text, {epoch} AS epoch
    FROM (VALUES (%(literal)s::{type}), (NULL)) AS given (v)'''


@pytest.fixture(scope='module')
def types_app(make_app, database_url):
    """An app whose connections were made after the zoo's enum, domain and composite existed."""
    run_sql(database_url, ZOO_SETUP)
    return make_app()


@pytest.fixture()
def conn(types_app):
    """A connection of the zoo's app, in a transaction rolled back at the end."""
    with connection(types_app.extensions['dbapi'].pools['default']) as borrowed:
        yield borrowed
        borrowed.rollback()


def zoo_types(conn):
    """Return every type of the catalog the zoo covers."""
    return [row['name'] for row in Db(conn).fetch_all(ZOO_TYPES)]


def test_every_base_type_the_catalog_lists_has_samples_or_a_reason(conn):
    names = set(zoo_types(conn))
    assert names - set(SAMPLES) - set(UNSUPPORTED) == set()
    assert {'probe.mood', 'probe.price', 'probe.quantity', *ZOO_COMPOSITES} <= names


def without_trailing_zeros(text):
    """Return a time or timestamp text with its fraction's trailing zeros dropped and short offsets made hh:mm."""
    text = re.sub(r'\.(\d+)', lambda match: ('.' + match[1].rstrip('0')).rstrip('.'), text)
    return re.sub(r'([+-]\d\d)(?=$| BC)', r'\1:00', text)


def expected_json(type_name, oracle, pg_text, epoch):
    """Return the JSON docs/contract.md section 5 promises for one value, from to_jsonb's and PostgreSQL's text."""
    if oracle is None:
        return None
    if type_name in ('numeric', 'probe.price'):
        return pg_text  # exact, as a string
    if type_name in ('real', 'double precision'):
        return None if pg_text in ('NaN', 'Infinity', '-Infinity') else oracle
    if type_name == 'bytea':
        return base64.b64encode(bytes.fromhex(pg_text[2:])).decode()
    if type_name == 'interval':
        return epoch  # seconds, as a number
    if type_name == 'oid':
        return int(pg_text)  # a number, though to_jsonb writes it as a string
    if type_name == 'oidvector':
        return [int(oid) for oid in pg_text.split()]  # numbers, as for oid
    if type_name.startswith(('time', 'timestamp')):
        return without_trailing_zeros(oracle)
    return oracle


def comparable(type_name, value):
    """Return value made comparable with expected_json: times without trailing zeros, floats as floats."""
    if isinstance(value, str) and type_name.startswith(('time', 'timestamp')):
        return without_trailing_zeros(value)
    if type_name in ('real', 'double precision') and value is not None:
        return float(value)
    return value


def zoo_rows(conn, type_name, literal):
    """Return the rows of VALUES_QUERY for one literal, as the buffered path gives them, and their query."""
    epoch = 'extract(epoch FROM v)' if type_name == 'interval' else 'NULL'
    query = VALUES_QUERY.format(type=type_name, epoch=epoch)
    return Db(conn).fetch_all(query, {'literal': literal}), query


@pytest.mark.parametrize('type_name', sorted(SAMPLES))
def test_every_value_is_written_as_to_jsonb_writes_it_or_as_the_contract_says(conn, type_name):
    for literal in SAMPLES[type_name]:
        rows, _ = zoo_rows(conn, type_name, literal)
        for row in loads_exact(dumps_bytes(rows)):
            oracle = None if row['oracle'] is None else loads_exact(row['oracle'])
            epoch = None if row['epoch'] is None else loads_exact(row['epoch'])
            expected = expected_json(type_name, oracle, row['pg_text'], epoch)
            assert comparable(type_name, row['v']) == comparable(type_name, expected), (type_name, literal, row)
            assert row['a'] == [row['v']], (type_name, literal, row)


@pytest.mark.parametrize('type_name', sorted(SAMPLES))
def test_buffered_stream_and_stream_json_write_the_same_bytes(conn, type_name):
    for literal in SAMPLES[type_name]:
        rows, query = zoo_rows(conn, type_name, literal)
        buffered = dumps_bytes(rows)
        params = {'literal': literal}
        assert b''.join(json_array_chunks(Db(conn).stream(query, params))) == buffered, (type_name, literal)
        assert b''.join(json_array_chunks(Db(conn).stream_json(query, params))) == buffered, (type_name, literal)


def all_three_ways(conn, query, params=None):
    """Return query's rows as JSON bytes, asserting that the buffered path, Db.stream and Db.stream_json agree, each
    the first reader of json values in conn's lease (their plain digits budget: lib/db/types.py's json_budget)."""
    conn.json_budget = None
    buffered = dumps_bytes(Db(conn).fetch_all(query, params))
    conn.json_budget = None
    assert b''.join(json_array_chunks(Db(conn).stream(query, params))) == buffered
    conn.json_budget = None
    assert b''.join(json_array_chunks(Db(conn).stream_json(query, params))) == buffered
    return buffered


@pytest.mark.parametrize('query', [
    'SELECT 1 AS x;', 'SELECT 1 AS x ; ;\n', 'SELECT 1 AS x -- the end', 'SELECT 1 AS x; -- the end',
    'SELECT 1 AS x; /* the /* nested */ end */', psycopg2.sql.SQL('SELECT {} AS x;').format(psycopg2.sql.Literal(1)),
])
def test_the_three_readers_take_a_query_ending_in_a_semicolon_or_a_comment(conn, query):
    assert all_three_ways(conn, query) == b'[{"x":1}]'


@pytest.mark.parametrize('query, value', [
    ("SELECT ';' AS x", ';'), ("SELECT '--'' ;' AS x;", "--' ;"), ("SELECT E'\\'; --' AS x;", "'; --"),
    ('SELECT $$ ; -- $$ AS x; -- the end', ' ; -- '), ('SELECT $tag$;$tag$ AS x;', ';'),
    ('SELECT 1 AS "x;--"', 1), ('SELECT 1 AS x$y$z;', 1), ('SELECT $a$;$a$ AS x$a$; -- the end', ';'),
])
def test_a_semicolon_or_comment_mark_inside_a_quote_is_part_of_the_query(conn, query, value):
    assert list(loads_exact(all_three_ways(conn, query))[0].values()) == [value]


def test_parameters_in_a_trailing_comment_are_filled_in_as_the_other_readers_fill_them(conn):
    assert loads_exact(all_three_ways(conn, 'SELECT %s AS x; -- %s', (1, 2))) == [{'x': 1}]


def test_a_session_reading_backslashes_as_escapes_has_its_query_read_so(conn):
    Db(conn).execute('SET LOCAL standard_conforming_strings = off')
    assert loads_exact(all_three_ways(conn, "SELECT 'a\\' -- ' AS x, 2 AS y;")) == [{'x': "a' -- ", 'y': 2}]


def test_a_character_postgresql_takes_for_no_space_is_refused_by_all_three(conn):
    query = 'SELECT 1 AS x\v;'
    readers = (Db(conn).fetch_all, lambda text: list(Db(conn).stream(text)),
               lambda text: list(Db(conn).stream_json(text)))
    for read in readers:
        with pytest.raises(psycopg2.errors.SyntaxError):
            Db(conn).execute('SAVEPOINT reading')
            try:
                read(query)
            finally:
                Db(conn).execute('ROLLBACK TO SAVEPOINT reading')


def test_a_comment_ends_at_a_carriage_return_as_postgresql_reads_it(conn):
    assert loads_exact(all_three_ways(conn, 'SELECT 1 AS x -- the first\r, 2 AS y;')) == [{'x': 1, 'y': 2}]


def test_a_composites_fields_follow_the_contract_of_their_types(conn):
    query = '''SELECT ROW(10.5, '1 day 00:00:01', '\\x00ff', '2026-11-21 20:54:17.5+02', '12:30+02')::probe.extras AS v,
                      ARRAY[ROW(NULL, NULL, NULL, 'infinity', NULL)::probe.extras] AS a'''
    assert all_three_ways(conn, query) == (
        b'[{"v":{"amount":"10.500","took":86401,"raw":"AP8=","at":"2026-11-21T18:54:17.500000+00:00",'
        b'"at_time":"12:30:00+02:00"},"a":[{"amount":null,"took":null,"raw":null,"at":"infinity","at_time":null}]}]')


# (an array with lower bounds other than 1, the JSON of its elements: to_jsonb's, numeric and interval as the contract
# writes them)
BOUNDED_ARRAYS = [
    ("'[0:1][1:2]={{1,2},{3,4}}'::int[]", [[1, 2], [3, 4]]),
    ("'[0:1]={7,8}'::int[]", [7, 8]),
    ("'[-3:-2][0:0][1:1]={{{a}},{{NULL}}}'::text[]", [[['a']], [[None]]]),
    ("'[2:3]={1.50,NaN}'::numeric[]", ['1.50', 'NaN']),
    ("'[0:0][5:6]={{\"1 day\",NULL}}'::interval[]", [[86400, None]]),
    ("'[0:1]={happy,sad}'::probe.mood[]", ['happy', 'sad']),
    ("'[0:1]={\"(1,a)\",NULL}'::probe.pair[]", [{'n': 1, 'label': 'a'}, None]),
    ("'[0:1]={(1,1),(0,0);(2,2),(1,1)}'::box[]", ['(1,1),(0,0)', '(2,2),(1,1)']),
    ("'{{(1,1),(0,0)};{(2,2),(1,1)}}'::box[]", [['(1,1),(0,0)'], ['(2,2),(1,1)']]),
    ("'[0:1][1:1][5:5]={{{(1,1),(0,0)}};{{NULL}}}'::box[]", [[['(1,1),(0,0)']], [[None]]]),
    ("'[0:0]={\"[1,3)\"}'::int4range[]", ['[1,3)']),
    ("ROW(NULL, '[0:0]={\"(1,a)\"}', NULL, NULL, NULL, NULL, '[5:5]={x}', NULL)::probe.nest",
     {'pair': None, 'pairs': [{'n': 1, 'label': 'a'}], 'day': None, 'doc': None, 'mood': None, 'quantity': None,
      'tags': ['x'], 'class': None}),
]


@pytest.mark.parametrize('array, written', BOUNDED_ARRAYS)
def test_an_array_with_lower_bounds_other_than_1_is_its_elements_as_to_jsonb_writes_them(conn, array, written):
    assert loads_exact(all_three_ways(conn, f'SELECT {array} AS v'))[0]['v'] == written


@pytest.mark.parametrize('wrapper', ['{}', 'ARRAY[{}]', "jsonb_build_object('k', {})"])
def test_the_three_readers_refuse_a_value_as_deep_as_one_another(conn, wrapper):
    """orjson writes 254 levels of arrays and objects: a row list and its row take two."""
    def nested(levels):
        return wrapper.format(f"(repeat('[', {levels}) || repeat(']', {levels}))::jsonb")
    depth = 252 - (wrapper != '{}')  # the array or object around the value takes one more
    assert all_three_ways(conn, f'SELECT {nested(depth)} AS v').startswith(b'[{"v":')  # 254 levels: written alike
    query = f'SELECT {nested(depth + 1)} AS v'
    for read in (lambda: dumps_bytes(Db(conn).fetch_all(query)),
                 lambda: b''.join(json_array_chunks(Db(conn).stream(query))),
                 lambda: b''.join(json_array_chunks(Db(conn).stream_json(query)))):
        with pytest.raises(TooDeepToWrite):
            read()


def test_an_int2vector_of_several_dimensions_is_read_from_its_text(conn):
    query = "SELECT array_agg(v) AS v FROM (VALUES ('1 2'::int2vector), ('3 4')) AS given (v)"
    if conn.server_version < 160000:  # PostgreSQL 15 refuses to make such an int2vector
        with pytest.raises(psycopg2.errors.DatatypeMismatch):
            Db(conn).fetch_all(query)
        return
    assert loads_exact(all_three_ways(conn, query)) == [{'v': [1, 0]}]  # 16 makes one whose text holds its first row


def test_a_statistics_anyarray_is_postgresql_text(conn):
    db = Db(conn)
    db.execute('CREATE TEMPORARY TABLE counted AS '  # 0 most often, then 1, then 2: the most common values' order
               'SELECT CASE WHEN g <= 150 THEN 0 WHEN g <= 250 THEN 1 ELSE 2 END AS n FROM generate_series(1, 300) g')
    db.execute('ANALYZE counted')
    query = "SELECT most_common_vals AS v FROM pg_stats WHERE tablename = 'counted' AND attname = 'n'"
    assert loads_exact(all_three_ways(conn, query)) == [{'v': '{0,1,2}'}]


def test_a_tables_rows_are_objects_and_anonymous_records_postgresql_text(conn):
    Db(conn).execute("INSERT INTO probe.type_roundtrip (text, amount, big, doc) VALUES ('t', 1.5, 2, '{}')")
    query = '''SELECT r, ROW(1, 'a b') AS anonymous, (SELECT s FROM (SELECT 1 AS x) AS s) AS subquery
               FROM probe.type_roundtrip AS r ORDER BY id DESC LIMIT 1'''
    row = loads_exact(all_three_ways(conn, query))[0]
    assert row['r'] == {'id': row['r']['id'], 'text': 't', 'amount': '1.5', 'big': '2', 'doc': {}}
    # Only the server knows an anonymous record's fields: to_jsonb writes {"f1":1,"f2":"a b"} and {"x":1}.
    assert (row['anonymous'], row['subquery']) == ('(1,"a b")', '(1)')


def test_a_composite_altered_after_the_connection_read_it_is_read_with_its_new_fields(conn):
    assert Db(conn).fetch_value("SELECT ROW(1)::probe.evolving") == {'a': 1}
    Db(conn).execute("ALTER TYPE probe.evolving ADD ATTRIBUTE b text")  # rolled back with the test's transaction
    assert Db(conn).fetch_value("SELECT ROW(1, 'x')::probe.evolving") == {'a': 1, 'b': 'x'}
    assert all_three_ways(conn, "SELECT ROW(2, 'y')::probe.evolving AS v") == b'[{"v":{"a":2,"b":"y"}}]'


def test_a_composites_field_the_request_itself_renames_after_reading_it_keeps_its_old_name(conn):
    """The contract's limit (section 5, trial BD): fields are read once per request, and a rename keeps their count."""
    assert Db(conn).fetch_value("SELECT ROW(1)::probe.evolving") == {'a': 1}
    Db(conn).execute("ALTER TYPE probe.evolving RENAME ATTRIBUTE a TO z")  # rolled back with the test's transaction
    assert Db(conn).fetch_value("SELECT ROW(1)::probe.evolving") == {'a': 1}


def test_a_composites_field_the_request_drops_is_seen_and_one_it_retypes_fails_to_read(conn):
    """The contract's limit (section 5): within a request a dropped field is seen; one retyped is read by its old type,
    and a value that no longer reads as it is an error (a 500)."""
    db = Db(conn)  # each change is rolled back with the test's transaction
    assert db.fetch_value("SELECT ROW(1)::probe.evolving") == {'a': 1}
    db.execute("ALTER TYPE probe.evolving ADD ATTRIBUTE b text")
    assert db.fetch_value("SELECT ROW(1, 'x')::probe.evolving") == {'a': 1, 'b': 'x'}
    db.execute("ALTER TYPE probe.evolving DROP ATTRIBUTE b")
    assert db.fetch_value("SELECT ROW(1)::probe.evolving") == {'a': 1}
    db.execute("ALTER TYPE probe.evolving ALTER ATTRIBUTE a TYPE text")
    with pytest.raises(ValueError):
        db.fetch_value("SELECT ROW('abc')::probe.evolving")


def test_a_composites_field_renamed_or_retyped_since_an_earlier_request_is_read_as_it_is_now(make_app, database_url):
    name = f'probe.reshaped_{uuid.uuid4().hex[:8]}'
    run_sql(database_url, f'CREATE TYPE {name} AS (a numeric, b double precision)')
    pool = make_app(DB_POOL_MAX=1).extensions['dbapi'].pools['default']  # one connection, its types read once
    try:
        with connection(pool) as conn:
            assert all_three_ways(conn, f"SELECT ROW(1, 2)::{name} AS v") == b'[{"v":{"a":"1","b":2.0}}]'
        run_sql(database_url, f'ALTER TYPE {name} RENAME ATTRIBUTE a TO renamed_a; '
                              f'ALTER TYPE {name} ALTER ATTRIBUTE b TYPE numeric')
        with connection(pool) as conn:
            # No NULL in the first batches: the stream's helper thread fetches the next while the type is read again.
            query = (f"SELECT CASE WHEN n > 2 THEN ROW(1, '0.1000000000000000000001')::{name} END AS v "
                     f"FROM generate_series(1, 9) AS n")
            assert b''.join(json_array_chunks(Db(conn).stream_json(query, batch_size=2))) == (
                b'[' + b','.join([b'{"v":null}'] * 2 + [b'{"v":{"renamed_a":"1","b":"0.1000000000000000000001"}}'] * 7)
                + b']')
        with connection(pool) as conn:
            assert all_three_ways(conn, f"SELECT ROW(3, 0.5)::{name} AS v") == (
                b'[{"v":{"renamed_a":"3","b":"0.5"}}]')
    finally:
        run_sql(database_url, f'DROP TYPE {name}')


def test_a_type_created_after_a_connection_opened_is_text_on_it_until_connections_are_new(make_app, database_url):
    name = f'probe.late_{uuid.uuid4().hex[:8]}'
    query = {'query': f"SELECT ROW(1, 'a b')::{name} AS v"}
    old = Caller(make_app(DB_POOL_MAX=1).test_client())
    assert old('/types/select', {'query': 'SELECT 1 AS v'}).status_code == 200
    run_sql(database_url, f'CREATE TYPE {name} AS (n int, label text)')
    try:
        on_old = old('/types/select', query).get_json()
        on_new = Caller(make_app(DB_POOL_MAX=1).test_client())('/types/select', query).get_json()
    finally:
        run_sql(database_url, f'DROP TYPE {name}')
    assert on_old == [{'v': '(1,"a b")'}] and on_new == [{'v': {'n': 1, 'label': 'a b'}}]


def test_a_custom_configure_cannot_lose_the_types(types_app, make_app):
    def configure(conn):  # sets none of dbapi's settings, and an interval style the typecasters cannot read
        conn.autocommit = False
        with conn.cursor() as cursor:
            cursor.execute("SET IntervalStyle = 'iso_8601'")
        conn.commit()

    app = make_app(DB_POOL_MAX=1, DB_CONFIGURE=configure)
    with connection(app.extensions['dbapi'].pools['default']) as conn:
        row = Db(conn).fetch_one("""SELECT ROW(1, 'a')::probe.pair AS pair, '12:30+02'::timetz AS at,
                                           interval '1 day' AS took, current_setting('IntervalStyle') AS style""")
    assert dumps_bytes(row) == b'{"pair":{"n":1,"label":"a"},"at":"12:30:00+02:00","took":86400,"style":"postgres"}'


def test_an_interval_in_another_style_is_refused_not_misread(conn):
    Db(conn).execute("SET LOCAL IntervalStyle = 'iso_8601'")
    with pytest.raises(UnreadableValue, match='IntervalStyle'):
        Db(conn).fetch_value("SELECT interval '1 year'")


READERS = {'fetch_one': lambda db, query: db.fetch_one(query),
           'stream': lambda db, query: list(db.stream(query)),
           'stream_json': lambda db, query: list(db.stream_json(query))}


@pytest.mark.parametrize('date_style', ['SQL, DMY', 'SQL, MDY', 'German', 'Postgres'])
@pytest.mark.parametrize('expression', ["date '2026-03-04'", "timestamp '2026-03-04 05:06:07'",
                                        "timestamptz '2026-03-04 05:06:07+00'", "ARRAY[date '2026-03-04']"])
@pytest.mark.parametrize('reader', READERS)
def test_a_date_or_timestamp_in_another_date_style_is_refused_not_misread(conn, date_style, expression, reader):
    Db(conn).execute('SET LOCAL DateStyle = %s', [date_style])
    with pytest.raises(UnreadableValue, match='DateStyle'):
        READERS[reader](Db(conn), f'SELECT {expression} AS v')


@pytest.mark.parametrize('zone, stamp', [('Africa/Monrovia', '1960-01-01 00:00+00'),
                                         ('Europe/Dublin', '1890-06-01 12:00+00'),
                                         ('America/St_Johns', '1920-06-01 12:00+00'),
                                         ('Africa/Monrovia', '1960-01-01 00:00:00.5+00')])  # to_jsonb's fraction
def test_an_offset_with_seconds_keeps_the_instant_to_jsonb_writes(conn, zone, stamp):
    Db(conn).execute('SET LOCAL TimeZone = %s', [zone])
    query = 'SELECT %(s)s::timestamptz AS v, ARRAY[%(s)s::timestamptz] AS a, to_jsonb(%(s)s::timestamptz) AS j'
    row = Db(conn).fetch_one(query, {'s': stamp})
    assert row['j'].count(':') == 4, 'an offset with seconds in this zone and year'
    assert orjson.loads(dumps_bytes(row)) == {'v': row['j'], 'a': [row['j']], 'j': row['j']}


# --- The issue's table, row by row. ---

@pytest.fixture()
def call(types_app):
    """POST JSON with the admin token to the zoo's app."""
    return Caller(types_app.test_client())


def raw_post(call, path, text):
    """POST text as the JSON body, as written (json= would re-encode its numbers)."""
    return call.client.post(path, data=text.encode(), content_type='application/json',
                            headers={'Authorization': f'Bearer {call.token}'})


def selected(call, expression):
    """Return the raw JSON of SELECT expression AS v through a module action."""
    response = call('/types/select', {'query': f'SELECT {expression} AS v'})
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_data()


@pytest.mark.parametrize('expression, json_text', [
    ("'12:30:00+02'::timetz", b'[{"v":"12:30:00+02:00"}]'),
    ("'infinity'::timestamptz", b'[{"v":"infinity"}]'),
    ("'10000-06-23'::date", b'[{"v":"10000-06-23"}]'),
    ('int4range(1, 10)', b'[{"v":"[1,10)"}]'),
    ("""'{"n": 0.1000000000000000000001}'::jsonb""", b'[{"v":{"n":0.1000000000000000000001}}]'),
])
def test_the_issues_outbound_rows(call, expression, json_text):
    assert selected(call, expression) == json_text


def test_a_token_a_database_error_quotes_is_redacted_from_the_problem(call):
    body = assert_problem(call('/types/select', {'query': f"SELECT $${call.token}$$::int AS v"}), 422)
    assert call.token not in json.dumps(body) and '[REDACTED]' in body['detail'], body


@pytest.mark.parametrize('expression, detail', [
    # orjson writes 254 levels at most: the value's 300, in a row, in the answer's list
    ("(repeat('[', 300) || '1' || repeat(']', 300))::jsonb", 'deeper than 254 levels'),
    ("""'"\\ud800"'::json""", 'a json value dbapi cannot read'),  # the json type keeps it, to_jsonb refuses it
    ("(repeat('[', 5000) || repeat(']', 5000))::json", 'a json value dbapi cannot read'),
    ("(SELECT date '2026-03-04' FROM (SELECT set_config('DateStyle', 'SQL, DMY', true)) AS styled)", 'DateStyle'),
])
def test_a_stored_value_dbapi_cannot_pass_on_is_a_500_that_says_why(call, expression, detail):
    body = assert_problem(call('/types/select', {'query': f'SELECT {expression} AS v'}), 500)
    assert detail in body['detail'] and body['detail'] != 'The server could not complete the request.'


@pytest.mark.parametrize('statements, detail', [
    ("SET DateStyle = 'German'; SELECT daterange('2026-03-04', '2026-03-05') AS v", 'DateStyle'),
    ("SET DateStyle = 'SQL, DMY'; SELECT ROW(date '2026-03-04') AS v", 'DateStyle'),
    ("SET IntervalStyle = 'iso_8601'; SELECT ARRAY[interval '1 day']::text AS v", 'IntervalStyle'),
])
def test_values_read_after_a_request_changed_a_reading_style_are_a_500_that_says_why(call, statements, detail):
    """Ranges and records pass through as PostgreSQL's text, which the changed style writes: dbapi reads the styles
    PostgreSQL reports after each statement, and refuses the answer."""
    body = assert_problem(call('/types/select', {'query': statements}), 500)
    assert detail in body['detail'], body
    assert call('/types/select', {'query': "SELECT daterange('2026-03-04', '2026-03-05') AS v"}).get_json() == [
        {'v': '[2026-03-04,2026-03-05)'}], 'the next request reads ISO again'


@pytest.mark.parametrize('steps, detail', [
    (["SET LOCAL DateStyle = 'German'", "SELECT datemultirange(daterange('2026-03-04', '2026-03-05')) AS v",
      "SET LOCAL DateStyle = 'ISO, MDY'"], 'DateStyle'),
    (["SET LOCAL IntervalStyle = 'iso_8601'", "SELECT ARRAY[ROW(interval '1 year')] AS v", 'RESET IntervalStyle'],
     'IntervalStyle'),
])
def test_text_read_while_a_style_was_changed_is_refused_though_the_style_was_changed_back(call, steps, detail):
    body = assert_problem(call('/types/select_steps', {'queries': steps}), 500)
    assert detail in body['detail'], body


@pytest.mark.parametrize('steps', [
    ["SET LOCAL client_encoding = 'LATIN1'", "SELECT length('Zo\u00eb') AS v"],  # sent: stored `ZoÃ«` (trial AF)
    ["SELECT set_config('client_encoding', 'LATIN1', true) AS v", "INSERT INTO probe.type_roundtrip (text) "
     "VALUES ('Zo\u00eb') RETURNING id"],
    ["SET LOCAL client_encoding = 'LATIN1'; SELECT 'Zo\u00eb' AS v"],  # read: a bare UnicodeDecodeError's 500
    ["SET LOCAL client_encoding = 'LATIN1'; SELECT '\u00c3\u00a9' AS v"],  # read as UTF-8 by chance: `é`
    ["SET client_encoding = 'LATIN1'", "SELECT 1 AS v"],
])
def test_a_client_encoding_set_in_sql_refuses_what_follows_with_a_500_that_says_why(call, steps):
    """psycopg2 does not see an SQL SET of client_encoding: it went on sending and reading UTF-8, which PostgreSQL
    read as LATIN1 (text stored garbled, with a 200) and wrote in LATIN1 (misread, or a bare 500)."""
    body = assert_problem(call('/types/select_steps', {'queries': steps}), 500)
    assert 'client_encoding was set to LATIN1 in SQL' in body['detail'], body
    stored = call('/types/select', {'query': "SELECT count(*) AS n FROM probe.type_roundtrip WHERE text LIKE 'Zo%'"})
    assert stored.get_json() == [{'n': 0}]
    again = call('/types/select', {'query': "SELECT 'Zo\u00eb' AS v, current_setting('client_encoding') AS e"})
    assert again.get_json() == [{'v': 'Zo\u00eb', 'e': 'UTF8'}], 'the next request sends and reads UTF-8 again'


@pytest.mark.parametrize('encoding, text', [('LATIN1', 'Zo\u00eb'), ('ISO-8859-1', 'Zo\u00eb'),
                                            ('EUC_JP', '\u30c6\u30b9\u30c8'), ('SQL_ASCII', 'Zoe'), ('WIN1252', '\u20ac1')])
def test_a_client_encoding_set_through_psycopg2_is_read_as_set(types_app, encoding, text):
    """psycopg2 keeps EUC_JP as EUCJP and ISO-8859-1 as ISO88591, where PostgreSQL reports EUC_JP and LATIN1: the
    same encodings were refused as set in SQL (trial AH)."""
    with connection(types_app.extensions['dbapi'].pools['default'], autocommit=True) as conn:
        note_action(conn, True)  # as an action's lease: its statements are checked
        conn.set_client_encoding(encoding)  # psycopg2's way: it encodes and decodes in it too
        assert Db(conn).fetch_value('SELECT %s || %s', [text, text]) == text * 2


@inject_db(DEFAULT, autocommit=True)
def stream_then_change_encoding(db):
    """Stream a row, then one read after the session's client_encoding was set in SQL."""
    yield {'n': 1}
    yield db.fetch_one("SET client_encoding = 'LATIN1'; SELECT '\u00c3\u00a9' AS t")


def test_a_streams_batch_read_after_a_client_encoding_set_in_sql_is_refused(types_app):
    """The check ran on the first batch only: `\u00c3\u00a9` came out as `\u00e9`, a complete and wrong 200
    (trial AH)."""
    with types_app.test_request_context('/types/probe', method='POST'):
        stream = stream_then_change_encoding()
        assert next(stream) == {'n': 1}
        with pytest.raises(SessionEncodingChanged):
            next(stream)


def test_an_actions_extra_float_digits_below_one_rounds_its_floats_unseen(call):
    """The contract's float row states it: PostgreSQL does not report extra_float_digits (trial AF)."""
    steps = ["SET LOCAL extra_float_digits = 0", "SELECT 1/3::float8 AS v"]
    assert call('/types/select_steps', {'queries': steps}).get_data().endswith(b'[{"v":0.333333333333333}]]')
    assert call('/types/select', {'query': 'SELECT 1/3::float8 AS v'}).get_data() == b'[{"v":0.3333333333333333}]'


def test_after_a_request_sets_its_time_zone_its_buffered_answer_writes_offsets_in_that_zone(call):
    response = call('/types/select_steps', {'queries': ["SET LOCAL TimeZone = 'Asia/Kolkata'",
                                                        "SELECT timestamptz '2026-11-21 20:54:17.5+00' AS at"]})
    assert response.get_json()[1] == [{'at': '2026-11-22T02:24:17.500000+05:30'}]



def test_a_nul_character_in_a_body_is_a_422_naming_the_field(call):
    body = assert_problem(call('/users/create', {'email': 'n1@example.com', 'name': 'a\u0000b'}), 422)
    assert list(body['errors']) == ['name']
    deep = assert_problem(raw_post(call, '/types/select', '{"query": {"a": [1, {"k\\u0000": 2}]}}'), 422)
    assert deep['errors'] == {'query': {'a': {'1': {'k\u0000': ['Keys must not contain the NUL character (\\u0000).']}}}}


def test_an_amount_with_extra_digits_is_refused_however_it_is_spelt(call):
    account = call('/accounts/open', {'owner': 'exact'}).get_json()
    for amount in ('0.1000000000000000001', '"0.1000000000000000001"'):
        text = f'{{"account_id": {account["id"]}, "amount": {amount}}}'
        assert 'amount' in assert_problem(raw_post(call, '/accounts/deposit', text), 422)['errors']
    assert call('/accounts/get', {'account_id': account['id']}).get_json()['balance'] == '0.00'
    assert raw_post(call, '/accounts/deposit', f'{{"account_id": {account["id"]}, "amount": 0.10}}').status_code == 200


def test_an_id_past_bigint_is_a_422(call):
    for body in ('{"id": 9223372036854775808}', '{"id": 123456789012345678901234567890}'):
        assert 'id' in assert_problem(raw_post(call, '/users/get', body), 422)['errors']
    assert raw_post(call, '/users/get', '{"id": 9223372036854775807}').status_code == 404
    body = '{"account_id": 9223372036854775808, "amount": "1.00"}'
    assert 'account_id' in assert_problem(raw_post(call, '/accounts/deposit', body), 422)['errors']


def test_a_dict_parameter_goes_into_a_jsonb_column(conn):
    Db(conn).execute('CREATE TEMP TABLE orders (id serial, details jsonb, notes json, tags text[])')
    row = Db(conn).insert('orders', {'details': {'a': 1, 'n': decimal.Decimal('0.10')},
                                     'notes': {'deep': [1, {'x': None}]}, 'tags': ['a', 'b']})
    assert row['details'] == {'a': 1, 'n': '0.10'} and row['notes'] == {'deep': [1, {'x': None}]}
    assert row['tags'] == ['a', 'b']  # a list is still an array


class Price(marshmallow.Schema):
    """A body with one exact decimal field of at most two places."""

    price = exact_decimal(2, required=True)


@pytest.mark.parametrize('body, loaded', [('{"price": "12.50"}', decimal.Decimal('12.50')),
                                          ('{"price": 12.5}', decimal.Decimal('12.5')),
                                          ('{"price": "-3"}', decimal.Decimal('-3'))])
def test_an_exact_decimal_takes_a_plain_decimal_as_a_number_or_a_string(body, loaded):
    assert Price().load(loads_exact(body)) == {'price': loaded}


@pytest.mark.parametrize('value', ['0.1000000000000000001', '"0.1000000000000000001"', '"1_000"', '"+1"', '" 1"',
                                   '"1e3"', '"NaN"', '"\\u0661\\u0662"', '"\\uff11"'])
def test_an_exact_decimal_refuses_extra_places_and_what_is_not_a_plain_decimal(value):
    with pytest.raises(marshmallow.ValidationError) as refused:
        Price().load(loads_exact(f'{{"price": {value}}}'))
    assert list(refused.value.messages) == ['price']


@pytest.mark.parametrize('value', [10 ** 5000 + 7, -(10 ** 4300), 18446744073709551616],
                         ids=['5001 digits', '-4301 digits', '2 ** 64'])
def test_an_integer_of_any_size_is_written_exactly_as_a_value_and_as_a_key(value):
    """Python's str() refuses an integer of more than 4300 digits (sys.get_int_max_str_digits): it was a 500."""
    digits = decimal.Decimal(value).to_eng_string().encode()
    assert dumps_bytes({'n': value}) == b'{"n":' + digits + b'}'
    assert b''.join(json_array_chunks(iter([[value]]))) == b'[' + digits + b']'  # one batch of one row
    assert dumps_bytes({value: 1}) == b'{"' + digits + b'":1}'


class StockPrice(marshmallow.Schema):
    """A body with marshmallow's own Decimal field."""

    price = marshmallow.fields.Decimal(required=True)


@pytest.mark.parametrize('value', ['"1_000"', '"1e3"', '"\\u0661\\u0660\\u0660\\u0660"', '" 1000 "', '1000'])
def test_a_stock_decimal_reads_a_string_as_python_does_and_refuses_nan_alone(value):
    """docs/contract.md section 5: only exact_decimal takes plain decimals alone."""
    assert StockPrice().load(loads_exact(f'{{"price": {value}}}')) == {'price': decimal.Decimal(1000)}
    with pytest.raises(marshmallow.ValidationError):
        StockPrice().load(loads_exact('{"price": "NaN"}'))


@pytest.mark.parametrize('validate', [marshmallow.validate.Range(min=0), [marshmallow.validate.Range(min=0)]])
def test_an_exact_decimal_takes_validate_as_marshmallows_fields_do(validate):
    class Positive(marshmallow.Schema):
        price = exact_decimal(2, required=True, validate=validate)
    assert Positive().load({'price': '1.50'}) == {'price': decimal.Decimal('1.50')}
    with pytest.raises(marshmallow.ValidationError) as refused:
        Positive().load({'price': '-1'})
    assert refused.value.messages == {'price': ['Must be greater than or equal to 0.']}
    with pytest.raises(marshmallow.ValidationError):
        Positive().load({'price': '1.555'})  # the places check still runs


def insert_details(conn, value):
    """Insert value into the temporary orders table's jsonb column; return the stored JSON, or the error."""
    db = Db(conn)
    db.execute('SAVEPOINT attempt')
    try:
        return db.insert('orders', {'details': value}, returning_columns=['details'])['details']
    except psycopg2.Error as exc:
        db.execute('ROLLBACK TO SAVEPOINT attempt')
        return exc


def test_a_top_level_list_or_scalar_goes_into_jsonb_only_wrapped_in_json(conn):
    Db(conn).execute('CREATE TEMP TABLE orders (id serial, details jsonb)')
    for value in (['a', 1], 'abc', 5, True, None, [ExactNumber('0.1000000000000000000001'), 2**70]):
        assert insert_details(conn, json_parameter(value)) == value
    with pytest.raises(TypeError, match='ExactNumber is not JSON serializable'):  # json.dumps cannot write one
        insert_details(conn, psycopg2.extras.Json([ExactNumber('0.5')]))
    assert insert_details(conn, '"abc"') == 'abc'  # a str is SQL text: JSON text for jsonb to parse
    as_text = insert_details(conn, 'abc')
    assert as_text.pgcode == '22P02' and as_api_error(as_text).status == 422  # bad input syntax
    for value in (5, True, ['a', 'b']):  # an integer, a boolean, an ARRAY: types jsonb refuses, a module's bug
        refused = insert_details(conn, value)
        assert refused.pgcode == '42804' and as_api_error(refused).status == 500


class Status(enum.Enum):
    """An enum whose members' values are text and a number."""

    PAID = 'paid'
    LATE = 2


def test_a_uuid_and_an_enum_member_marshmallows_fields_load_are_parameters(conn):
    """marshmallow's UUID and Enum fields load uuid.UUID and enum members, which psycopg2 could not adapt: a 500."""
    ref = uuid.UUID('c20cf794-13f2-45c8-9ecc-1d923a96dbf0')
    loaded = marshmallow.Schema.from_dict({'ref': marshmallow.fields.UUID(), 'refs': marshmallow.fields.List(
        marshmallow.fields.UUID()), 'status': marshmallow.fields.Enum(Status)})().load(
        {'ref': str(ref), 'refs': [str(ref)], 'status': 'PAID'})
    row = Db(conn).fetch_one('SELECT %(ref)s AS ref, pg_typeof(%(ref)s)::text AS type, %(ref)s = ANY(%(refs)s) AS '
                             'found, %(status)s AS status, %(late)s AS late', {**loaded, 'late': Status.LATE})
    assert row == {'ref': str(ref), 'type': 'uuid', 'found': True, 'status': 'paid', 'late': 2}


def test_an_ip_address_interface_or_network_marshmallows_fields_load_is_a_parameter_and_written_as_its_text(conn):
    """marshmallow's IP and IPInterface fields load ipaddress objects (an action may make a network): psycopg2 "can't
    adapt type 'IPv4Address'", and an answer holding one "is not JSON serialisable", each a 500 (trial BU)."""
    loaded = marshmallow.Schema.from_dict({'ip': marshmallow.fields.IP(), 'v6': marshmallow.fields.IPv6(),
                                           'interface': marshmallow.fields.IPInterface()})().load(
        {'ip': '192.0.2.1', 'v6': '2001:db8::1', 'interface': '192.0.2.1/24'})
    loaded['network'] = ipaddress.ip_network('10.0.0.0/8')
    row = Db(conn).fetch_one('SELECT %(ip)s::inet AS ip, %(v6)s::inet AS v6, %(interface)s::inet AS interface, '
                             '%(network)s::cidr AS network, %(ip)s::inet << %(network)s::cidr AS inside', loaded)
    assert row == {'ip': '192.0.2.1', 'v6': '2001:db8::1', 'interface': '192.0.2.1/24', 'network': '10.0.0.0/8',
                   'inside': False}
    assert dumps_bytes(loaded) == (b'{"ip":"192.0.2.1","v6":"2001:db8::1","interface":"192.0.2.1/24",'
                                   b'"network":"10.0.0.0/8"}')


def ipv6_number(words):
    """Return the integer of an IPv6 address of eight 16-bit words."""
    return int(''.join(f'{word:04x}' for word in words), 16)


# Addresses of words mostly 0, 1 and ffff, so that IPv4-mapped (::ffff:a.b.c.d), IPv4-compatible (::a.b.c.d) and
# runs of zeros of every length come up; interfaces and networks of every prefix length.
IPV6_NUMBERS = strategies.lists(strategies.sampled_from([0, 0, 1, 0xffff]) | strategies.integers(0, 0xffff),
                                min_size=8, max_size=8).map(ipv6_number)
IPV4_NUMBERS = strategies.integers(0, 2 ** 32 - 1)
IP_VALUES = strategies.one_of(
    [strategies.builds(ipaddress.IPv6Address, IPV6_NUMBERS), strategies.builds(ipaddress.IPv4Address, IPV4_NUMBERS)]
    + [strategies.builds(lambda number, prefix, kind=kind: kind((number, prefix)), numbers,
                         strategies.integers(0, bits))
       for numbers, bits, kinds in [(IPV6_NUMBERS, 128, (ipaddress.IPv6Interface, ipaddress.IPv6Network)),
                                    (IPV4_NUMBERS, 32, (ipaddress.IPv4Interface, ipaddress.IPv4Network))]
       for kind in (kinds[0], lambda pair, network=kinds[1]: network(pair, strict=False))])


@given(strategies.lists(IP_VALUES, min_size=1, max_size=40))
@example([ipaddress.IPv6Address('::ffff:1.2.3.4'), ipaddress.IPv6Interface('::1.2.3.4/96'),
          ipaddress.IPv4Interface('192.0.2.1/32'), ipaddress.IPv6Network('::ffff:0:0/96'),
          ipaddress.IPv6Address('::1')])
@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_an_ipaddress_value_is_written_and_sent_as_postgresql_writes_the_inet_or_cidr_holding_it(conn, values):
    """Python 3.11 writes the IPv4-mapped IPv6 address PostgreSQL writes ::ffff:1.2.3.4 as ::ffff:102:304, and an
    interface spanning its whole address with the /32 an inet leaves out: an answer read otherwise than the column
    holding the value, and a text column kept another spelling (trial BW)."""
    networks = [value for value in values if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network))]
    others = [value for value in values if value not in networks]
    db = Db(conn)
    written = [json.loads(dumps_bytes(value)) for value in networks + others]
    sent = db.fetch_all('SELECT sent FROM unnest(%s::text[]) AS sent', [networks + others])
    kept = (db.fetch_all('SELECT sent::cidr AS sent FROM unnest(%s::text[]) AS sent', [networks])
            + db.fetch_all('SELECT sent::inet AS sent FROM unnest(%s::text[]) AS sent', [others]))
    assert [row['sent'] for row in sent] == [row['sent'] for row in kept] == written


@pytest.mark.parametrize('value, cast, text', [
    (-32768, 'int2', '-32768'), (-9223372036854775808, 'int8', '-9223372036854775808'),
    (decimal.Decimal('-0.01'), 'text', '-0.01'), (ExactNumber('-12.50'), 'text', '-12.50'), (-1.5, 'text', '-1.5'),
    (decimal.Decimal('-Infinity'), 'numeric', '-Infinity'), (decimal.Decimal('Infinity'), 'numeric', 'Infinity'),
    (decimal.Decimal('NaN'), 'numeric', 'NaN'), (float('-inf'), 'float8', '-Infinity'), (7, 'int2', '7'),
    (-0.0, 'numeric', '0.0'), (-0.0, 'float8', '0')])
def test_a_number_parameter_followed_by_a_cast_is_the_number_sent(conn, value, cast, text):
    """psycopg2 sent -32768 as ` -32768`, which `::int2` read as -(32768::int2), out of range (a 422 for a valid
    value), and -0.01 before `::text` as -(text), no operator (a 500); it sent every non-finite Decimal as NaN."""
    assert Db(conn).fetch_value(f'SELECT (%s::{cast})::text', [value]) == text


@pytest.mark.parametrize('value', [decimal.Decimal('10'), decimal.Decimal('10.00'), decimal.Decimal('1E+1'),
                                   ExactNumber('10'), decimal.Decimal('-10'), decimal.Decimal('-0')])
def test_a_decimal_parameter_is_a_numeric_however_it_is_spelled(conn, value):
    """Decimal('10') went as the integer constant 10: `%s / 3` divided as integers, 3, where 10.00 gave 3.33...
    (trial BD)."""
    row = Db(conn).fetch_one('SELECT pg_typeof(%(v)s)::text AS type, %(v)s / 3 AS third', {'v': value})
    assert row['type'] == 'numeric' and row['third'] == (value / 3).quantize(row['third'])


def test_docs_marshmallows_number_fields_and_float_and_empty_list_parameters(conn):
    """modules.md, schemas.py: what marshmallow's own number fields do with a body, and how a float and a list with
    no typed element go to PostgreSQL (trial BD)."""
    loose = marshmallow.Schema.from_dict({'n': marshmallow.fields.Integer(), 'f': marshmallow.fields.Float()})()
    assert loose.load(loads_exact('{"n": 1.5, "f": 1e-400}')) == {'n': 1, 'f': 0.0}
    row = Db(conn).fetch_one('SELECT %(f)s AS f, pg_typeof(%(nan)s)::text AS nan, %(empty)s AS empty, '
                             '%(nulls)s AS nulls, %(empty)s::int[] AS cast', {'f': 0.1, 'nan': float('nan'),
                                                                             'empty': [], 'nulls': [None]})
    assert row == {'f': decimal.Decimal('0.1'), 'nan': 'double precision', 'empty': '{}', 'nulls': '{NULL}',
                   'cast': []}


def test_docs_ways_round_a_grammar_that_takes_a_bare_literal_take_a_negative_number(conn):
    """modules.md: a negative setting through set_config(..., %s::text, ...), a count written into the statement."""
    assert Db(conn).fetch_value("SELECT set_config('extra_float_digits', %s::text, true)", [-5]) == '-5'
    Db(conn).execute('DECLARE c SCROLL CURSOR FOR SELECT n FROM generate_series(1, 10) AS n')
    Db(conn).execute('MOVE ABSOLUTE 5 IN c')
    query = psycopg2.sql.SQL('FETCH RELATIVE {} FROM c').format(psycopg2.sql.SQL(str(int(-2))))
    assert Db(conn).fetch_value(query) == 3


def test_a_negative_number_after_a_minus_is_still_subtracted(conn):
    """psycopg2's leading space kept `1-%s` from becoming the comment `1--1`; the parentheses keep it too."""
    assert Db(conn).fetch_value('SELECT 1-%s', [-1]) == 2


@pytest.mark.parametrize('seconds', ['123456789012.123457', '-0.5', '36497106.5', '-9223372036854.775807'])
def test_docs_interval_recipe_takes_seconds_back_exactly(conn, seconds):
    """modules.md's make_interval(secs => ...) went through a double precision: 123456789012.123457 lost a digit."""
    query = "SELECT EXTRACT(epoch FROM (%s::text || ' seconds')::interval)"
    assert Db(conn).fetch_value(query, [ExactNumber(seconds)]) == decimal.Decimal(seconds)


def test_docs_interval_recipe_refuses_seconds_out_of_range_with_a_class_22_error(conn):
    with pytest.raises(psycopg2.DataError) as refused:
        Db(conn).fetch_value("SELECT (%s::text || ' seconds')::interval", [ExactNumber('9.1e15')])
    assert refused.value.pgcode.startswith('22')


@pytest.mark.parametrize('text, read', [
    ('2026-12-31T23:59:59.9999999Z', '2027-01-01 00:00:00+00'), ('infinity', 'infinity'),
    ('0044-03-15T12:00:00Z BC', '0044-03-15 12:00:00+00 BC')])
def test_docs_timestamp_text_cast_in_sql_is_read_as_postgresql_reads_it(conn, text, read):
    """modules.md: marshmallow's datetime fields drop digits past the sixth and refuse infinity; text cast in the
    SQL does neither."""
    Db(conn).execute("SET LOCAL TimeZone = 'UTC'")
    assert Db(conn).fetch_value('SELECT (%s::timestamptz)::text', [text]) == read


def test_docs_timestamp_text_cast_in_sql_refuses_bad_text_with_a_class_22_error(conn):
    with pytest.raises(psycopg2.DataError) as refused:
        Db(conn).fetch_value('SELECT %s::timestamptz', ['not a time'])
    assert refused.value.pgcode.startswith('22')


# --- No 500 for a client's value; an action's own bug stays one. ---

@pytest.mark.parametrize('document', [{'k': 'lone \ud800'}, {'lone \ud800': 1}, [{'deep': ['\udfff']}],
                                      {'k': {'in a set \ud800'}}, {'k': frozenset({('tuple', '\ud800')})},
                                      {'k': collections.deque(['\udfff'])},
                                      {'k': types.MappingProxyType({'\ud800': 1})}],
                         ids=['value', 'key', 'nested', 'set', 'frozenset of tuples', 'deque', 'mapping'])
def test_a_string_that_cannot_be_utf8_in_a_json_parameter_is_refused_as_a_strs_is(conn, document):
    """A dict parameter's lone surrogate was orjson's TypeError, a 500; a str parameter's is RefusedValue, a 422."""
    with pytest.raises(RefusedValue, match='surrogates not allowed'):
        Db(conn).fetch_value('SELECT %(d)s::jsonb', {'d': json_parameter(document)})
    conn.rollback()
    with pytest.raises(TypeError) as raised:  # a value no JSON can hold stays the action's fault
        Db(conn).fetch_value('SELECT %(d)s::jsonb', {'d': {'k': object()}})
    assert not isinstance(raised.value, RefusedValue)


def test_a_value_psycopg2_cannot_send_is_a_422_and_the_same_error_from_an_actions_own_code_a_500(call):
    for escaped, words in (('a\\x00b', 'NUL'), ('lone \\ud800', 'surrogates not allowed')):
        detail = assert_problem(call('/types/unescaped', {'text': escaped}), 422)['detail']
        assert detail.startswith('A value cannot be sent to the database: ') and words in detail
    assert call('/types/unescaped', {'text': 'tab\\there'}).get_json() == 'tab\there'
    for kind in ('nul', 'overflow'):  # the very words psycopg2 uses, but raised by the action: a server fault
        assert assert_problem(call('/types/broken', {'kind': kind}), 500)['detail'] == ApiError.detail


def test_a_character_the_connections_encoding_lacks_is_refused_while_adapting(database_url):
    latin = psycopg2.connect(database_url, client_encoding='LATIN1')
    try:
        assert Db(latin).fetch_value('SELECT %s', ['café']) == 'café'
        with pytest.raises(RefusedValue) as refused:
            Db(latin).fetch_value('SELECT %s', [['ok', '€']])
        assert as_api_error(refused.value).status == 422 and 'latin-1' in as_api_error(refused.value).detail
    finally:
        latin.close()


def test_a_value_a_marshmallow_field_cannot_read_is_a_422_naming_the_field(call):
    huge = '1' + '0' * 400  # float() of it raises OverflowError, which TimeDelta and DateTime let through
    body = assert_problem(raw_post(call, '/types/timed', f'{{"pause": {huge}}}'), 422)
    assert body['errors'] == {'pause': ['Not a valid value: int too large to convert to float.']}
    nested = assert_problem(raw_post(call, '/types/timed', f'{{"later": {{"at": {huge}}}}}'), 422)
    assert nested['errors'] == {'later': {'at': ['Not a valid value: int too large to convert to float.']}}
    assert call('/types/timed', {'pause': 1.5}).get_json() == {'pause': 1.5, 'later': None}


def test_a_body_number_too_long_for_python_is_refused_at_once_and_a_stored_one_is_read_whole(call, conn):
    started = time.perf_counter()
    # As an int, 1e999999 takes a minute to build; written plain, 1e-999999999 is a gigabyte of zeros.
    for number in ('1e999999', '-9.5e4300', '1' * 4301, '1e-999999999', '-2.5e-16384', '0.' + '0' * 16383 + '1',
                   '1e99999999999999999999', '-1.5E+99999999999999999999', '1e-99999999999999999999',
                   '0e-99999999999999999999'):  # past a Decimal's exponent; a zero after the point as 0e-20000 is
        detail = assert_problem(raw_post(call, '/types/select', f'{{"query": {number}}}'), 400)['detail']
        place = 'after' if '-' in number[1:] or number.startswith('0.') else 'before'
        limit = 16383 if place == 'after' else 4300
        assert detail == f'The request body holds a number with more than {limit} digits {place} its point.'
        with pytest.raises(ValueError):
            loads_exact(f'[{number}]')
    assert time.perf_counter() - started < 2
    assert loads_exact('[9.5e4299, 1e-16383]') == [decimal.Decimal('9.5e4299'), decimal.Decimal('1e-16383')]
    huge = '1' + '0' * 5000
    stored = Db(conn).fetch_value(f"""SELECT '{{"n": {huge}, "m": [1e-999, 0.5]}}'::jsonb""")
    assert dumps_bytes(stored) == b'{"m":[0.%s1,0.5],"n":%s}' % (b'0' * 998, huge.encode())  # plain, as numeric


@pytest.mark.parametrize('number, echoed', [('0e4301', b'0'), ('-0e999999', b'-0'), ('0.0e5000', b'0'),
                                            ('0e-16383', b'0.' + b'0' * 16383),
                                            ('0e99999999999999999999', b'0'), ('-0.00e99999999999999999999', b'-0')])
def test_a_zero_with_a_large_exponent_is_no_long_number(call, number, echoed):
    """It is written back as the digits it has: one before its point."""
    response = raw_post(call, '/probe/echo', f'{{"n": {number}}}')
    assert response.status_code == 200 and response.get_data() == b'{"n":%s}' % echoed


def test_a_body_whose_numbers_written_out_take_over_a_million_digits_is_refused_at_once(call):
    started = time.perf_counter()
    many = ','.join(['1e-16383'] * 70)  # 70 x 16,384 digits: 1.1 million written out, from 700 bytes
    detail = assert_problem(raw_post(call, '/types/select', f'{{"query": [{many}]}}'), 400)['detail']
    assert detail == 'The numbers of the request body take more than 1048576 digits written out.'
    with pytest.raises(ValueError, match='digits written out'):
        loads_exact(f'[{many}]')
    assert time.perf_counter() - started < 2
    assert len(loads_exact(f"[{','.join(['1e-16383'] * 60)}]")) == 60  # 60 of them: within the budget


@settings(max_examples=200, deadline=None)
@given(text=strategies.from_regex(r'-?(0|[1-9][0-9]{0,700})\.[0-9]{1,700}', fullmatch=True))
def test_a_plain_numbers_digits_are_counted_as_written_out(text):
    """A short number in plain notation is counted from its length: the same count as its digits written out."""
    number = decimal.Decimal(text)
    counted = BoundedNumbers()
    assert counted(text) == number
    assert counted.digits == max(number.adjusted() + 1, 1) + max(-number.as_tuple().exponent, 0)


def test_plain_numbers_past_the_bodys_digits_are_refused_as_exponent_ones_are():
    plain = '0.' + '0' * 630 + '1'  # 632 digits written out, short enough to be counted from its length
    fitting = PLAIN_DIGITS_PER_BODY // 632
    assert len(loads_exact(f"[{','.join([plain] * fitting)}]")) == fitting
    with pytest.raises(ValueError, match='digits written out'):
        loads_exact(f"[{','.join([plain] * (fitting + 1))}]")


def on_a_deep_stack(levels, function):
    """Return function() called under levels more frames, as a request's value is read and written under the
    server's and the app's frames."""
    return function() if levels == 0 else on_a_deep_stack(levels - 1, function)


@pytest.mark.parametrize('depth', [200, 500, 700, 900])
def test_json_nested_as_deep_as_the_call_stack_allows_is_refused_with_a_reason_not_a_recursion_error(depth):
    frames = sys.getrecursionlimit() - len(traceback.extract_stack()) - depth // 2  # room for half its levels
    text = '[' * depth + '1.5' + ']' * depth
    with pytest.raises(ValueError, match='deeper than Python reads'):
        on_a_deep_stack(frames, lambda: loads_exact(text, bounded=False))
    value = 18446744073709551616  # an integer orjson refuses, so that dumps_bytes walks the value itself
    for _ in range(depth):
        value = [value]
    with pytest.raises(TooDeepToWrite):
        on_a_deep_stack(frames, lambda: dumps_bytes([18446744073709551616, value]))


def test_a_stored_json_number_past_numerics_range_is_written_in_exponent_notation(conn):
    started = time.perf_counter()
    stored = Db(conn).fetch_value("""SELECT '{"tiny": 1e-999999999, "vast": -2.5e200000, "edge": 1e-16383}'::json""")
    written = dumps_bytes(stored)
    assert time.perf_counter() - started < 2
    assert loads_exact(written, bounded=False) == stored
    assert written.startswith(b'{"tiny":1E-999999999,"vast":-2.5E+200000,"edge":0.%s1}' % (b'0' * 16382))
    assert dumps_bytes(decimal.Decimal('1e-20000')) == b'"1E-20000"'


@pytest.mark.parametrize('sql, written', [("'4.9e-324'::float8", b'5e-324'), ("'1e-40'::float4", b'1e-40'),
                                          ("'3.4028235e38'::float4", b'3.4028235e+38'), ("'-0'::float8", b'-0.0'),
                                          ("'0.1'::float8", b'0.1'), ("'NaN'::float8", b'null')])
def test_a_float_is_written_as_the_shortest_text_of_the_same_double(conn, sql, written):
    """The contract's exception to to_jsonb, which writes 5e-324 plain and -0 as 0 (trial AD): the same number."""
    assert dumps_bytes(Db(conn).fetch_value(f'SELECT {sql}')) == written


@pytest.mark.parametrize('value, written', [
    ('-0.00', b'"0.00"'), ('-0', b'"0"'), ('-0E+3', b'"0"'), ('sNaN', b'"NaN"'), ('-NaN', b'"NaN"'),
    ('-sNaN', b'"NaN"'),
    ('-Infinity', b'"-Infinity"'), ('-0.5', b'"-0.5"')])
def test_a_decimal_an_action_returns_is_written_as_postgresql_writes_numeric(conn, value, written):
    """numeric has one NaN and no negative zero: an action's Decimal('-0.00') was "-0.00" and Decimal('sNaN') "sNaN",
    text no numeric is (trial AD); PostgreSQL's own text of the value sent is the oracle."""
    assert dumps_bytes(decimal.Decimal(value)) == written
    assert dumps_bytes(Db(conn).fetch_value('SELECT %s::numeric', [decimal.Decimal(value)])) == written


@pytest.mark.parametrize('value, written', [('NaN', b'"NaN"'), ('sNaN', b'"NaN"'), ('-Infinity', b'"-Infinity"'),
                                            ('Infinity', b'"Infinity"')])
def test_an_exact_number_an_action_made_not_finite_is_written_as_numeric_writes_it(value, written):
    """No JSON number spells NaN or an infinity (RFC 8259 section 6): an action's ExactNumber('NaN') was written
    bare, `NaN`, with a 200 (trial AF); it is numeric's string of it, as a Decimal's."""
    assert dumps_bytes(ExactNumber(value)) == written
    assert json.loads(dumps_bytes({'v': [ExactNumber(value)]}), parse_constant=pytest.fail) == {'v': [json.loads(written)]}


# --- Round trips: what a body sends is what is stored, read back and exported. ---

TEXTS = strategies.text(strategies.characters(blacklist_categories=('Cs',), blacklist_characters='\x00'))
DECIMALS = strategies.decimals(allow_nan=False, allow_infinity=False, places=None).filter(
    lambda value: abs(value.adjusted()) < 1000)
BIG_INTEGERS = strategies.integers(min_value=-10 ** 40, max_value=10 ** 40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=TEXTS, amount=DECIMALS, big=BIG_INTEGERS)
def test_strings_decimals_and_big_integers_round_trip(call, conn, text, amount, big):
    body = b'{"text": %s, "amount": %s, "big": %d}' % (orjson.dumps(text), str(amount).encode(), big)
    response = call.client.post('/types/roundtrip', data=body, content_type='application/json',
                                headers={'Authorization': f'Bearer {call.token}'})
    assert response.status_code == 200, response.get_data(as_text=True)
    stored = loads_exact(response.get_data())
    assert stored['text'] == text and decimal.Decimal(stored['amount']) == amount and decimal.Decimal(stored['big']) == big
    assert stored['doc'] == {'text': text, 'amount': amount, 'big': big}
    query, params = 'SELECT text, amount, big, doc, doc AS json_doc FROM probe.type_roundtrip WHERE id = %(id)s', stored
    for exported in (Db(conn).stream(query, params), Db(conn).stream_json(query, params)):
        assert b''.join(json_array_chunks(exported)) == b'[%s]' % response.get_data().replace(b'"id":%d,' % stored['id'], b'')


def post_raw(call, body):
    """POST raw JSON bytes to /probe/echo as the admin."""
    return call.client.post('/probe/echo', data=body, content_type='application/json', buffered=True,
                            headers={'Authorization': f'Bearer {call.token}'})


@pytest.mark.parametrize('depth', [129, 300, 1000, 10000])
@pytest.mark.parametrize('leaf', ['', '1.5', '1e400', '"\\ud800"'])  # the last two, orjson refuses
def test_a_body_nested_too_deeply_is_a_400_never_a_500(call, depth, leaf):
    body = ('{"x":' * depth + (leaf or '1') + '}' * depth).encode()
    response = post_raw(call, body)
    assert response.status_code == 400 and response.mimetype == 'application/problem+json'
    assert response.get_json()['detail'] == 'The request body nests arrays and objects deeper than 128 levels.'


def nested_body(depth, repeat_key):
    """Return a body of objects depth deep around a large array, each repeating a key when repeat_key, with a
    number orjson refuses (1e400), so that the json module reads it."""
    twice = ', "d": 0, "d": 0' if repeat_key else ''
    inner = '[' + ','.join(['0'] * 100_000) + ']'
    for _ in range(depth):
        inner = f'{{"v": {inner}{twice}}}'
    return f'{{"x": {inner}, "z": 1e400}}'.encode()


def parse_seconds(body):
    """Return the least of three timings, in seconds, of loads_exact reading body."""
    return min(timeit.repeat(lambda: loads_exact(body), number=1, repeat=3))


def test_objects_that_repeat_a_key_walk_what_they_keep_once(call):
    # A body's values are looked at for lone surrogates once: an object that repeats a key looks at what it loses
    # only. Looking at all it held again, at each of 120 levels, took seconds of a worker for 800 kB.
    repeated, plain = nested_body(120, repeat_key=True), nested_body(120, repeat_key=False)
    assert post_raw(call, repeated).status_code == 200
    assert parse_seconds(repeated) < 5 * parse_seconds(plain)


@pytest.mark.parametrize('depth', [200, 1023])  # 1,024 levels with the body's own object
def test_a_value_a_key_given_twice_loses_is_dropped_unread_for_its_depth(call, depth):
    body = b'{"x": ' + b'[' * depth + b']' * depth + b', "x": 1}'
    response = post_raw(call, body)
    assert response.status_code == 200 and response.get_data() == b'{"x":1}'


def test_a_value_a_key_given_twice_loses_past_what_the_parsers_read_is_too_deep(call):
    body = b'{"x": ' + b'[' * 1100 + b']' * 1100 + b', "x": 1}'
    detail = assert_problem(post_raw(call, body), 400)['detail']
    assert detail == 'The request body nests arrays and objects deeper than 128 levels.'


@pytest.mark.parametrize('body, echoed', [(b'{"x": 1, "x": 2.5}', b'{"x":2.5}'),
                                          (b'{"x": {"k": 1.5, "k": 2}}', b'{"x":{"k":2}}')])
def test_a_key_given_twice_counts_once_with_its_last_value(call, body, echoed):
    response = post_raw(call, body)
    assert response.status_code == 200 and response.get_data() == echoed


@pytest.mark.parametrize('lost, status', [(b'1e-999999', 200), (b'"a\\u0000b"', 200), (b'1e999999', 400)])
def test_a_value_a_key_given_twice_loses_is_not_read_for_the_bodys_limits_unless_no_parser_reads_it(call, lost,
                                                                                                  status):
    """It is dropped unread (trial AO found its digits and its NUL let through, as the contract had not said), but a
    number past a float's range has the body read number by number, and refused."""
    response = post_raw(call, b'{"x": ' + lost + b', "x": "kept"}')
    assert response.status_code == status
    if status == 200:
        assert response.get_data() == b'{"x":"kept"}'


@pytest.mark.parametrize('body', [b'{"x": NaN}', b'{"x": Infinity}', b'{"x": -Infinity}', b'{"x": "\\ud800"}',
                                  b'{"x\\udc00": 1}',
                                  # in a value a key given twice loses, which was never looked at
                                  b'{"x": "\\ud800", "x": "y"}', b'{"x": [{"y": "\\udfff"}], "x": 1.5}',
                                  b'[{"x": {"\\ud800": 1}, "x": 2}]'])
def test_nan_infinity_and_lone_surrogates_in_a_body_are_400_not_json(call, body):
    assert assert_problem(post_raw(call, body), 400)['detail'] == 'The request body is not valid JSON.'


@pytest.mark.parametrize('body, why', [
    (b'{"x": "\xed\xa0\x80"}', 'it is not UTF-8 (byte 7; RFC 8259 section 8.1).'),  # a surrogate, UTF-8 encoded
    (b'{"x": "caf\xe9"}', 'it is not UTF-8 (byte 10; RFC 8259 section 8.1).'),  # Latin-1
    (b'\xef\xbb\xbf{"x": 1}', 'it starts with a byte order mark (RFC 8259 section 8.1).')])
def test_a_body_that_is_not_utf8_or_starts_with_a_bom_is_a_400_that_says_so(call, body, why):
    """JSON text is UTF-8 without a byte order mark (RFC 8259 section 8.1)."""
    assert assert_problem(post_raw(call, body), 400)['detail'] == f'The request body is not valid JSON: {why}'


@pytest.mark.parametrize('number, echoed', [('9223372036854775808', b'9223372036854775808'), ('1.0', b'1.0'),
                                            ('1e400', b'1' + b'0' * 400), ('1E+2', b'100'), ('1e-5', b'0.00001')])
def test_a_body_number_is_written_back_as_the_same_number_in_plain_notation(call, number, echoed):
    response = post_raw(call, b'{"x": %s}' % number.encode())
    assert response.status_code == 200 and response.get_data() == b'{"x":' + echoed + b'}'


def test_a_body_at_the_depth_limit_is_read(call):
    body = ('[' * 127 + '1.5' + ']' * 127).encode()
    response = post_raw(call, b'{"x":' + body + b'}')
    assert response.status_code == 200


@pytest.mark.parametrize('number', ['1e-30', '1.5e3', '123456789012345678901234567890.5', '0.1000000000000000000001'])
def test_jsonb_numbers_are_written_as_to_jsonb_writes_them(app, number):
    from lib.db import DEFAULT, Db, connection
    from lib.jsonenc import dumps_bytes
    with connection(app.extensions['dbapi'].pools[DEFAULT]) as conn:
        row = Db(conn).fetch_one("SELECT %(text)s::jsonb AS v, (%(text)s::jsonb)::text AS oracle",
                                 {'text': f'{{"n": {number}}}'})
    assert dumps_bytes(row['v']).decode() == row['oracle'].replace(' ', '')


def test_exact_numbers_nested_deep_are_written_without_corrupting_memory():
    """orjson.Fragment overran orjson's buffer when nested deeper than about 70 arrays (the process aborted): the
    check runs in a process of its own, so that a failure is a failed test, not a crashed test run."""
    script = '''if True:
        from lib.jsonenc import ExactNumber, dumps_bytes, loads_exact
        for size in range(1, 3000, 7):
            for depth in (96, 127, 200, 252):
                value = ExactNumber('0.' + '0' * size + '1')
                for _ in range(depth):
                    value = [value]
                written = dumps_bytes([{'v': value, 'g': row} for row in range(10)])
        assert written.startswith(b'[{"v":' + b'[' * 252 + b'0.000') and loads_exact(written, bounded=False)[9]['g'] == 9
        print('written')'''
    result = subprocess.run([sys.executable, '-c', script], cwd=BASE_DIR, capture_output=True, text=True,
                            timeout=120)
    assert (result.returncode, result.stdout) == (0, 'written\n'), result.stderr[-2000:]


def test_a_json_encoder_returning_an_orjson_fragment_is_refused_and_raw_json_is_written(monkeypatch):
    from lib.jsonenc import JSON_TYPES, RawJson

    class Measured:
        def __init__(self, text):
            self.text = text

    monkeypatch.setitem(JSON_TYPES, Measured, lambda value: orjson.Fragment(value.text))
    with pytest.raises(TypeError) as refused:
        dumps_bytes({'m': Measured('1.50')})
    assert 'Measured returned an orjson.Fragment' in str(refused.value.__cause__)  # orjson chains default's error
    monkeypatch.setitem(JSON_TYPES, Measured, lambda value: RawJson(value.text))
    deep = Measured('1.50')
    for _ in range(200):
        deep = [deep]
    assert dumps_bytes({'m': deep}) == b'{"m":' + b'[' * 200 + b'1.50' + b']' * 200 + b'}'


def test_a_deep_json_value_with_exact_numbers_is_answered_exactly(call):
    expression = "(repeat('[', 127) || '0.' || repeat('0', 399) || '1' || repeat(']', 127))::jsonb"
    answer = call('/types/select', {'query': f'SELECT {expression} AS v FROM generate_series(1, 100)'})
    assert answer.status_code == 200
    row = b'{"v":' + b'[' * 127 + b'0.' + b'0' * 399 + b'1' + b']' * 127 + b'}'
    assert answer.get_data() == b'[' + b','.join([row] * 100) + b']'


@pytest.mark.parametrize('literal, written', [('-178000000 years', b'-5617252800000000'),
                                              ('1000000000 days', b'86400000000000'),
                                              ('999999999 days', b'86399999913600'),
                                              ('1000000000 days 0.5 seconds', b'86400000000000.5')])
def test_an_interval_past_timedeltas_range_is_written_as_its_seconds_without_trailing_zeros(conn, literal, written):
    """As the contract's example and an interval within the range: 86400000000000, not 86400000000000.000000."""
    assert all_three_ways(conn, 'SELECT %(v)s::interval AS v', {'v': literal}) == b'[{"v":%s}]' % written


def test_bytea_read_as_base64_is_written_back_the_same_with_base64_bytes(call):
    answer = call('/probe/bytea_round_trip', {'raw': 'AP8='})
    assert answer.get_json() == {'raw': 'AP8=', 'length': 2}  # the two bytes 00 ff, not the four of the text


@pytest.mark.parametrize('raw', ['AP8', 'AP8=\n', '!!!!', 'é', 5, ['AP8='], 'AB==', 'AP9=', '===='])
def test_base64_bytes_refuses_what_is_no_base64_text_with_a_422(call, raw):
    """Non-zero pad bits too: "AB==" was stored as the byte 00, read back as "AA=="."""
    answer = call('/probe/bytea_round_trip', {'raw': raw})
    assert assert_problem(answer, 422)['errors'] == {'raw': ['Not valid base64 text.']}


def test_dates_and_times_an_action_builds_are_written_exactly():
    """orjson wrote an offset's seconds rounded away (another instant) and a time's .01-.099999 s with five digits
    (.05 as .50000, trial R): the registry writes them as to_jsonb does."""
    lmt = datetime.timezone(-datetime.timedelta(minutes=44, seconds=30))
    built = datetime.datetime(1959, 12, 31, 23, 15, 30, tzinfo=lmt)
    assert dumps_bytes(built) == b'"1959-12-31T23:15:30-00:44:30"'
    assert dumps_bytes(built.astimezone(datetime.timezone.utc)) == b'"1960-01-01T00:00:00+00:00"'
    assert dumps_bytes([datetime.time(12, 30, 0, 50000), datetime.time(0, 0, 0, 12345, tzinfo=lmt)]) == \
        b'["12:30:00.050000","00:00:00.012345-00:44:30"]'
    assert dumps_bytes({datetime.time(0, 0, 0, 10000): 1, datetime.date(5, 1, 2): 2}) == \
        b'{"00:00:00.010000":1,"0005-01-02":2}'


def test_docs_arithmetic_on_an_exact_number_is_a_decimals_and_exact_number_writes_its_result_as_a_number():
    """modules.md: `+x` of a 31-digit number was taken for "as it is" (trial BO): it rounds to 28 digits."""
    sent = loads_exact(b'0.1000000000000000000000000000001')
    assert dumps_bytes([sent, +sent]) == b'[0.1000000000000000000000000000001,"0.1000000000000000000000000000"]'
    with pytest.raises(decimal.InvalidOperation):
        round(loads_exact(b'12345678901234567890123456789.5'), 1)
    with decimal.localcontext(prec=40):
        assert dumps_bytes(ExactNumber(sent * 2)) == b'0.2000000000000000000000000000002'


def test_an_offset_with_a_fraction_of_a_second_is_written_as_the_same_instant_in_utc():
    """Python's isoformat wrote "+00:00:01.000005", which neither ISO 8601 nor PostgreSQL reads (trial BO)."""
    odd = datetime.timezone(datetime.timedelta(seconds=1, microseconds=5))
    built = datetime.datetime(2020, 1, 1, tzinfo=odd)
    assert dumps_bytes({built: built}) == b'{"2019-12-31T23:59:58.999995+00:00":"2019-12-31T23:59:58.999995+00:00"}'
    assert dumps_bytes(datetime.time(0, 0, tzinfo=odd)) == b'"23:59:58.999995+00:00"'


def test_an_offset_with_a_fraction_of_a_second_past_the_years_python_holds_in_utc_says_so():
    """datetime.max a microsecond behind UTC: its instant in UTC is past year 9999, "not JSON serializable" alone
    (trial BT)."""
    behind = datetime.timezone(-datetime.timedelta(hours=23, minutes=59, microseconds=1))
    with pytest.raises(TypeError) as raised:
        dumps_bytes(datetime.datetime.max.replace(tzinfo=behind))
    assert 'outside the years 1 to 9999' in str(raised.value.__cause__), raised.value.__cause__


def test_a_float_or_uuid_subclass_an_action_builds_is_written_as_its_base_type():
    """orjson writes neither a float subclass (numpy.float64 is one) nor a UUID subclass itself: both were a 500,
    "not JSON serializable" (trial BO)."""
    class Ratio(float):
        """A float of a library's own."""

    class Ref(uuid.UUID):
        """A UUID of a library's own, its text its own too (trial BT: written `U2!`)."""

        def __str__(self):
            return 'ref!'

    class Scaled(float):
        """A float whose __float__ says another number."""

        def __float__(self):
            return 99.0
    assert dumps_bytes([Scaled(1.25), {Scaled(1.25): 1}]) == b'[1.25,{"1.25":1}]'
    ref = Ref('c20cf794-13f2-45c8-9ecc-1d923a96dbf0')
    assert dumps_bytes([Ratio(0.5), Ratio('nan'), ref, {Ratio(0.5): ref, ref: 1}]) == (
        b'[0.5,null,"c20cf794-13f2-45c8-9ecc-1d923a96dbf0",{"0.5":"c20cf794-13f2-45c8-9ecc-1d923a96dbf0",'
        b'"c20cf794-13f2-45c8-9ecc-1d923a96dbf0":1}]')


def test_docs_a_float_minus_zero_arrives_as_zero_and_as_text_keeps_its_sign(conn):
    """modules.md: numeric, whose literal a float parameter is, has no negative zero; text cast to float8 keeps it."""
    assert math.copysign(1, Db(conn).fetch_value('SELECT %s::float8', [-0.0])) == 1
    assert math.copysign(1, Db(conn).fetch_value('SELECT %s::text::float8', ['-0.0'])) == -1


def test_stored_json_text_whose_numbers_would_take_gigabytes_written_plain_is_answered_in_exponent_notation(conn):
    """json text keeps 1e131071 in 8 bytes: written plain, a stored mebibyte of them was an answer of 14 GiB
    (trial R). Past a mebibyte of plain digits the numbers keep exponent notation, exact all the same."""
    stored = '[' + ', '.join(['1e131071'] * 20 + ['2.50e-16000', '1.5e3']) + ']'
    written = all_three_ways(conn, 'SELECT %s::json AS v', [stored])
    assert len(written) < 2 ** 20 + 1000
    values = loads_exact(written, bounded=False)[0]['v']
    assert values == [decimal.Decimal('1e131071')] * 20 + [decimal.Decimal('2.50e-16000'), decimal.Decimal(1500)]
    assert written.endswith(b',1E+131071,2.50E-16000,1.5E+3]}]')


def test_the_plain_digits_of_stored_json_are_counted_for_the_whole_answer_not_per_value(conn):
    """A mebibyte of plain digits per value was 14,000 times the stored size for many small values (trial T: 100 rows
    of eight 1e131071, 7 KB stored, a 100 MB answer): the values a lease reads share the budget."""
    Db(conn).execute('CREATE TEMPORARY TABLE docs AS SELECT i AS id, %s::json AS j FROM generate_series(1, 100) i',
                     ['[' + ', '.join(['1e131071'] * 8) + ']'])
    written = all_three_ways(conn, 'SELECT id, j FROM docs ORDER BY id')
    assert 2 ** 20 < len(written) < 2 ** 20 + 10_000, len(written)
    values = [value for row in loads_exact(written, bounded=False) for value in row['j']]
    assert values == [decimal.Decimal('1e131071')] * 800
    assert written.count(b'1E+131071') == 800 - PLAIN_DIGITS_PER_BODY // 131072


@pytest.mark.parametrize('stored, answered', [
    ('[1e1000000000000000000, -2.5E+1000000000000000000]', b'[1e1000000000000000000,-2.5E+1000000000000000000]'),
    ('[0e1000000000000000000, -0.0e1000000000000000000]', b'[0,0]'),
    ('[-0.0, -0e0, -0, -0.00e5]', b'[0.0,0,0,0]'),
])
def test_stored_json_numbers_past_a_decimals_range_or_negative_zeros_are_written_as_stored_or_to_jsonb_would(
        conn, stored, answered):
    """An exponent of 10**18 or more was a 500 (decimal.InvalidOperation; trial T); -0.0 kept a sign numeric has
    not."""
    assert all_three_ways(conn, 'SELECT %s::json AS v', [stored]) == b'[{"v":' + answered + b'}]'


def test_docs_jsonb_numbers_are_postgresqls_own_text_past_the_json_budget(conn):
    """contract.md, the json row: jsonb comes from PostgreSQL written out in full, as to_jsonb writes it; the plain
    digits budget is json text's alone."""
    stored = '[' + ', '.join(['1e131071'] * 9) + ']'
    written = all_three_ways(conn, 'SELECT %s::jsonb AS v', [stored])
    assert written == b'[{"v":[' + b','.join([b'1' + b'0' * 131071] * 9) + b']}]'


def test_docs_an_action_sees_a_stored_json_number_past_a_decimals_range_as_raw_json_text(conn):
    """contract.md, the json row: such a number reaches an action as lib.jsonenc.RawJson, its text in .text."""
    value = Db(conn).fetch_value("SELECT '[1e1000000000000000000]'::json")[0]
    assert isinstance(value, RawJson) and value.text == '1e1000000000000000000'


def test_stored_json_text_within_a_mebibyte_of_plain_digits_is_written_as_to_jsonb_writes_it(conn):
    written = all_three_ways(conn, 'SELECT %s::json AS v, to_jsonb(%s::json) AS oracle', ['[1e5, 1.5e-3]'] * 2)
    assert written == b'[{"v":[100000,0.0015],"oracle":[100000,0.0015]}]'
