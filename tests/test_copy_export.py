"""Db.stream_json and a streamed export: the same bytes as Db.stream through dumps_bytes, and a healthy pool after."""
import datetime
import json
import threading
import time
import uuid

import orjson
import psycopg2
import pytest

from lib.db import Db, connection
from lib.db.types import register_types
from lib.jsonenc import json_array_chunks
from tests.helpers import TRICKY_TEXTS, Caller, run_sql

# Fractions with trailing zeros, whole seconds, years before 1000, infinities.
TRICKY_STAMPS = ['2026-11-21 20:54:17.123456+00', '2026-11-21 20:54:17.12+00', '2026-11-21 20:54:17.1+00',
                 '2026-11-21 20:54:17+00', '2026-11-21 20:54:00+00', '2000-01-01 00:00:00.000001+00',
                 '0999-01-02 03:04:05.5+00', 'infinity', '-infinity', '2026-11-21 23:59:59.99999+05:30']
# One query with every tricky value, NULLs, and columns of types written the generic way.
TRICKY_QUERY = '''
    SELECT n AS id, n::int2 AS small, (n * 1000)::int4 AS medium, n %% 3 = 0 AS flag, texts[n] AS text,
           texts[n]::varchar AS label, left(texts[n], 3)::char(5) AS code, stamps[n]::timestamptz AS at,
           stamps[n]::timestamptz::timestamp AS local_at, (n * 1.10)::numeric(10, 2) AS amount,
           CASE WHEN n = 2 THEN 'NaN' ELSE n / 3.0 END::float8 AS ratio, DATE '2026-11-21' + n AS day,
           md5(n::text)::uuid AS uid, json_build_object('n', n, 'text', texts[n]) AS doc,
           jsonb_build_object('n', n) AS docb, ARRAY[texts[n], 'x'] AS tags, convert_to(texts[n], 'UTF8') AS raw,
           make_interval(secs => n * 1.5) AS pause
    FROM (SELECT %(texts)s::text[] AS texts, %(stamps)s::text[] AS stamps) AS given,
         generate_series(1, greatest(cardinality(%(texts)s::text[]), cardinality(%(stamps)s::text[]))) AS n
    ORDER BY n'''


@pytest.fixture()
def conn(app):
    """A connection from the test app's pool, in one transaction rolled back at the end."""
    with connection(app.extensions['dbapi'].pools['default']) as borrowed:
        yield borrowed
        borrowed.rollback()


def as_json(batches):
    """Return a stream of batches as the one JSON array the gateway sends."""
    return b''.join(json_array_chunks(batches))


def both_ways(conn, query, params=None, batch_size=3):
    """Return query's rows as JSON through stream_json and through stream."""
    reference = as_json(Db(conn).stream(query, params))
    return as_json(Db(conn).stream_json(query, params, batch_size=batch_size)), reference


def tricky_params(texts=TRICKY_TEXTS, stamps=TRICKY_STAMPS, nulls=True):
    """Return the parameters of TRICKY_QUERY, with NULLs at the end of both lists when nulls."""
    return {'texts': texts + [None] * nulls, 'stamps': stamps + [None] * nulls}


@pytest.mark.parametrize('batch_size', [1, 3, 1000])
def test_tricky_values_come_out_exactly_as_dumps_bytes_writes_them(conn, batch_size):
    fast, reference = both_ways(conn, TRICKY_QUERY, tricky_params(), batch_size)
    assert fast == reference
    assert json.loads(fast)[1]['text'] == 'say "hi"'


def test_a_time_zone_changed_half_way_through_the_query_keeps_every_instant(conn):
    query = ("SELECT n, CASE WHEN n = 5 THEN set_config('TimeZone', 'Asia/Kolkata', true) END AS changed, "
             "timestamptz '2026-03-04 01:02:03.5+00' AS at FROM generate_series(1, 40) AS n")
    rows = json.loads(as_json(Db(conn).stream_json(query, batch_size=8)))
    instants = {datetime.datetime.fromisoformat(row['at']) for row in rows}
    assert instants == {datetime.datetime(2026, 3, 4, 1, 2, 3, 500000, tzinfo=datetime.timezone.utc)}, rows[-1]
    # UTC until the row that changed the session's zone, the new zone's offset from that row on.
    assert [row['at'] for row in rows] == (['2026-03-04T01:02:03.500000+00:00'] * 4
                                           + ['2026-03-04T06:32:03.500000+05:30'] * 36)


def test_batches_without_nulls_or_oddities_take_the_fast_way_and_still_match(conn):
    texts = ['Ada', 'Grace "Hopper"', 'Édouard\\Lucas', 'tab\there'] * 50
    stamps = ['2026-11-21 20:54:17.%06d+00' % (index * 37) for index in range(200)]
    fast, reference = both_ways(conn, TRICKY_QUERY, tricky_params(texts, stamps, nulls=False), 64)
    assert fast == reference and len(json.loads(fast)) == 200


def test_every_ascii_character_and_every_fraction_length_match(conn):
    texts = [f'a{chr(code)}b{chr(code)}' for code in range(1, 128)]
    stamps = [f'2026-11-21 20:54:{second:02d}{fraction}+00' for second in (0, 9)
              for fraction in ['', '.1', '.12', '.103', '.1004', '.10005', '.100006']]
    fast, reference = both_ways(conn, TRICKY_QUERY, tricky_params(texts, stamps, nulls=False), 500)
    assert fast == reference


def test_texts_in_another_client_encoding_go_the_generic_way(database_url):
    with psycopg2.connect(database_url, client_encoding='LATIN1') as latin:
        register_types(latin)  # as the pool does after configure
        fast, reference = both_ways(latin, TRICKY_QUERY, tricky_params(['café', 'naïve "quoted"'], TRICKY_STAMPS))
        assert fast == reference and 'café' in fast.decode()
    latin.close()


def test_repeated_and_odd_column_names_behave_like_a_dict_per_row(conn):
    query = 'SELECT 1 AS a, \'x\' AS "50% of ""b""", 2 AS a, now() AS "when", NULL::text AS a'
    fast, reference = both_ways(conn, query)
    assert fast == reference and list(json.loads(fast)[0]) == ['a', '50% of "b"', 'when']
    assert json.loads(fast)[0]['a'] is None, 'the last column of the name gives the value'


def test_no_rows_and_no_columns(conn):
    assert both_ways(conn, 'SELECT id, code FROM probe.things WHERE false') == (b'[]', b'[]')
    assert both_ways(conn, 'SELECT FROM generate_series(1, 4)') == (b'[{},{},{},{}]',) * 2


def test_a_query_error_is_raised_before_the_stream_starts(conn):
    with pytest.raises(psycopg2.errors.UndefinedColumn):
        Db(conn).stream_json('SELECT missing FROM probe.things')


# A text that takes seconds to compute.
SLEEP = "(SELECT 'slept' FROM pg_sleep({}))"


def prefetch_threads():
    """Return the helper threads of json streams still alive."""
    return [thread for thread in threading.enumerate() if thread.name == 'dbapi-prefetch']


def test_an_error_midway_is_raised_after_the_first_batches_and_ends_the_helper_thread(app):
    pool = app.extensions['dbapi'].pools['default']
    with pytest.raises(psycopg2.errors.DivisionByZero):
        with connection(pool) as conn:
            stream = Db(conn).stream_json('SELECT 1 / (7 - g) AS n FROM generate_series(1, 20) g', batch_size=2)
            next(stream)
            list(stream)
    assert prefetch_threads() == [] and pool.gauges()['in_use'] == 0


def test_the_statement_timeout_applies_to_each_fetch(make_app):
    pool = make_app(DB_STATEMENT_TIMEOUT_MS=300).extensions['dbapi'].pools['default']
    query = f'SELECT g, CASE WHEN g = 5 THEN {SLEEP.format(2)} END AS slept FROM generate_series(1, 8) g'
    with pytest.raises(psycopg2.errors.QueryCanceled):
        with connection(pool) as conn:
            list(Db(conn).stream_json(query, batch_size=2))
    assert prefetch_threads() == [] and pool.gauges()['in_use'] == 0


def test_closing_early_cancels_the_fetch_running_ahead(app):
    pool = app.extensions['dbapi'].pools['default']
    query = f'SELECT g, CASE WHEN g = 3 THEN {SLEEP.format(30)} END AS slept FROM generate_series(1, 8) g'
    with connection(pool) as conn:
        stream = Db(conn).stream_json(query, batch_size=2)
        assert json.loads(orjson.dumps(next(stream))) == [{'g': 1, 'slept': None}, {'g': 2, 'slept': None}]
        started = time.monotonic()
        stream.close()
        assert time.monotonic() - started < 5 and prefetch_threads() == []
    with connection(pool) as conn:
        assert Db(conn).fetch_value('SELECT 1') == 1
    assert pool.gauges()['in_use'] == 0


def add_things(database_url, count):
    """Insert count things with unique codes."""
    run_sql(database_url, 'INSERT INTO probe.things (code) SELECT %s || g FROM generate_series(1, %s) g',
            (f'bulk-{uuid.uuid4().hex}-', count))


def test_a_client_leaving_midway_leaves_a_healthy_pool(make_app, database_url):
    add_things(database_url, 7000)
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=500)
    call = Caller(app.test_client())
    for _ in range(3):
        response = call('/probe/things/export', buffered=False)
        chunks = iter(response.response)
        next(chunks), next(chunks)
        response.close()
        assert prefetch_threads() == [] and app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0
    assert call('/probe/things/get', {'id': 1}).status_code in (200, 404)
    assert json.loads(call('/probe/things/export').get_data())


@pytest.mark.parametrize('setting, query', [
    # The session's zone shapes the arithmetic and the constants of the query as well as the offsets written.
    ("SET LOCAL TimeZone = 'Asia/Tokyo'",
     "SELECT date_trunc('day', timestamptz '2026-11-30 01:00+00') AS day, timestamptz '2026-01-01 00:00' AS at"),
    ("SET LOCAL TimeZone = 'Asia/Kolkata'", "SELECT timestamptz '2026-11-21 20:54:17.5+00' AS at"),
    # The session's DateStyle decides how the query's own date literals read.
    ("SET LOCAL DateStyle = 'ISO, DMY'", "SELECT '01/02/2026'::date AS d, '01/02/2026 10:00'::timestamp AS t")])
def test_stream_json_runs_its_query_in_the_requests_session_as_stream_does(conn, setting, query):
    Db(conn).execute(setting)
    settings_now = "SELECT current_setting('TimeZone') || current_setting('DateStyle')"
    before = Db(conn).fetch_value(settings_now)
    reference = as_json(Db(conn).stream(query))
    assert as_json(Db(conn).stream_json(query)) == reference
    assert Db(conn).fetch_value(settings_now) == before


def test_a_fetch_ahead_that_fails_is_the_streams_error_not_the_closed_cursor_it_leaves(app, database_url):
    """The helper's FETCH failed (the server ended the session) and psycopg2 closed the connection, while the reader
    still had a batch to read: its fetchall raised `cursor already closed`, and the access line named that instead of
    the failure (trial AP)."""
    pool = app.extensions['dbapi'].pools['default']
    query = f'SELECT g, CASE WHEN g = 5 THEN {SLEEP.format(30)} END AS slept FROM generate_series(1, 8) g'
    with pytest.raises(psycopg2.OperationalError) as raised:
        with connection(pool) as conn:
            stream = Db(conn).stream_json(query, batch_size=2)
            next(stream)
            time.sleep(0.5)  # the helper has fetched the second batch, unread, and waits in the third's FETCH
            run_sql(database_url, 'SELECT pg_terminate_backend(%s)', (conn.info.backend_pid,))
            time.sleep(0.5)
            list(stream)
    assert not isinstance(raised.value, psycopg2.InterfaceError), raised.value
    assert prefetch_threads() == []


def test_a_session_ended_after_the_last_batch_is_the_streams_error_not_the_commits(app, database_url):
    """The cursor's CLOSE after the last batch failed (the server had ended the session) unseen, and the access line
    named the commit's `connection already closed` instead (trial AR)."""
    pool = app.extensions['dbapi'].pools['default']
    with pytest.raises(psycopg2.Error) as raised:
        with connection(pool) as conn:
            stream = Db(conn).stream_json('SELECT g FROM generate_series(1, 4) g', batch_size=2)
            next(stream), next(stream)
            time.sleep(0.5)  # the helper has found the cursor's end: nothing is fetched any more
            run_sql(database_url, 'SELECT pg_terminate_backend(%s)', (conn.info.backend_pid,))
            time.sleep(0.5)
            list(stream)
    assert isinstance(raised.value, psycopg2.OperationalError), repr(raised.value)
    assert prefetch_threads() == []
