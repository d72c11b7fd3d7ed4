"""The Db helper and transactional() on a real connection from the pool."""
import json
import threading
import uuid
from decimal import Decimal

import psycopg2
import pytest

from lib.db import Db, connection, transactional
from lib.jsonenc import json_array_chunks
from tests.helpers import Caller

ODD_TABLE = 'probe.odd table'


@pytest.fixture()
def conn(app):
    """An autocommit connection borrowed from the test app's pool, emptied table included."""
    with connection(app.extensions['dbapi'].pools['default'], autocommit=True) as borrowed:
        Db(borrowed).execute('TRUNCATE probe."odd table"')
        yield borrowed


def test_insert_quotes_schema_table_and_odd_column_names(conn):
    row = Db(conn).insert(ODD_TABLE, {'select': 'a', 'na me': 'Ada'})
    assert row['select'] == 'a' and row['na me'] == 'Ada' and row['id'] > 0


def test_upsert_inserts_then_updates_the_conflicting_row(conn):
    db = Db(conn)
    first = db.upsert(ODD_TABLE, {'select': 'k', 'na me': 'one'}, conflict=['select'])
    second = db.upsert(ODD_TABLE, {'select': 'k', 'na me': 'two'}, conflict=['select'])
    assert first['id'] == second['id'] and second['na me'] == 'two'
    assert db.fetch_value('SELECT count(*) FROM probe."odd table"') == 1


def test_one_column_may_be_named_as_a_string_not_split_into_letters(conn):
    """A string is one name: ('select' would be the columns s, e, l, e, c, t, and 'id' in 'select id' a substring)."""
    db = Db(conn)
    first = db.upsert(ODD_TABLE, {'select': 'k', 'na me': 'one'}, conflict='select', returning_columns='id')
    second = db.upsert(ODD_TABLE, {'select': 'k', 'na me': 'two'}, conflict='select', update='na me',
                       returning_columns='na me')
    assert list(first) == ['id'] and second == {'na me': 'two'}
    assert db.insert(ODD_TABLE, {'select': 'j'}, returning_columns='select') == {'select': 'j'}


def test_upsert_with_nothing_to_update_still_returns_the_row(conn):
    db = Db(conn)
    first = db.upsert(ODD_TABLE, {'select': 'only'}, conflict=['select'])
    assert db.upsert(ODD_TABLE, {'select': 'only'}, conflict=['select'])['id'] == first['id']


def test_fetch_value_of_a_statement_that_returns_no_rows_is_none_as_fetch_one_is(conn):
    db = Db(conn)
    statement = 'UPDATE probe."odd table" SET "na me" = NULL WHERE false'
    assert db.fetch_value(statement) is None and db.fetch_one(statement) is None  # was "no results to fetch", a 500


def test_update_and_delete_return_the_row_or_none(conn):
    db = Db(conn)
    row = db.insert(ODD_TABLE, {'select': 'u', 'na me': 'before'})
    assert db.update(ODD_TABLE, {'na me': 'after'}, {'id': row['id']})['na me'] == 'after'
    assert db.update(ODD_TABLE, {'na me': 'x'}, {'id': -1}) is None
    assert db.delete(ODD_TABLE, {'id': row['id']})['select'] == 'u'
    assert db.delete(ODD_TABLE, {'id': row['id']}) is None


def test_where_and_set_may_name_the_same_column(conn):
    db = Db(conn)
    db.insert(ODD_TABLE, {'select': 'old'})
    assert db.update(ODD_TABLE, {'select': 'new'}, {'select': 'old'})['select'] == 'new'


@pytest.fixture()
def awkward_table(conn):
    """The name of a temporary table (gone when the connection goes back: DISCARD ALL) whose names psycopg2's named
    placeholders cannot carry, or that a helper's own parameter names could meet."""
    name = f'awkward%{uuid.uuid4().hex[:8]}'
    Db(conn).execute(f'CREATE TEMP TABLE "{name}" (id int PRIMARY KEY, w_id int, "price (usd)" numeric, '
                     '"pct%" numeric, note text DEFAULT \'none\')'.replace('%', '%%'), [])
    return name


def test_a_set_column_named_w_and_a_where_column_stay_apart(conn, awkward_table):
    """update(t, {'w_id': 2}, {'id': 7}) wrote 7 into w_id: the where's parameters were named w_<column> beside the
    SET's (trial BD)."""
    db = Db(conn)
    db.insert(awkward_table, {'id': 7, 'w_id': 1})
    assert db.update(awkward_table, {'w_id': 2}, {'id': 7})['w_id'] == 2
    assert db.fetch_value(f'SELECT w_id FROM "{awkward_table.replace("%", "%%")}"', []) == 2
    assert db.delete(awkward_table, {'w_id': 2, 'id': 7})['id'] == 7


def test_every_helper_takes_names_with_percent_and_parentheses(conn, awkward_table):
    """`price (usd)` was psycopg2's ValueError, `pct%` its TypeError: 500s (trial BD)."""
    db = Db(conn)
    row = db.insert(awkward_table, {'id': 1, 'price (usd)': 1.5, 'pct%': 2})
    assert (row['price (usd)'], row['pct%']) == (Decimal('1.5'), 2)
    assert db.upsert(awkward_table, {'id': 1, 'pct%': 3}, conflict='id', returning_columns=['pct%']) == {'pct%': 3}
    assert db.update(awkward_table, {'price (usd)': 2}, {'pct%': 3}, returning_columns='price (usd)') == {
        'price (usd)': 2}
    assert db.delete(awkward_table, {'price (usd)': 2, 'pct%': 3})['id'] == 1


def test_a_none_in_where_matches_null_and_an_empty_where_is_refused(conn, awkward_table):
    """A None compiled to `= NULL`, which matches no row (trial BD); an empty where was a syntax error."""
    db = Db(conn)
    db.insert(awkward_table, {'id': 1, 'note': None})
    db.insert(awkward_table, {'id': 2})
    assert db.update(awkward_table, {'note': 'was null'}, {'note': None})['id'] == 1
    assert db.delete(awkward_table, {'note': 'none', 'w_id': None})['id'] == 2
    for refused in (lambda: db.update(awkward_table, {'note': 'x'}, {}), lambda: db.delete(awkward_table, {})):
        with pytest.raises(ValueError, match='names no column: it would touch every row'):
            refused()


def test_nothing_to_set_or_to_conflict_on_is_a_value_error_not_a_syntax_error(conn, awkward_table):
    """`SET  WHERE`, `() VALUES ()` and `ON CONFLICT ()` were PostgreSQL's syntax errors (trial BG)."""
    db, no_values, no_conflict = Db(conn), 'the values of Db.{} names no column', 'the conflict of Db.upsert names no'
    for call, said in ((lambda: db.update(awkward_table, {}, {'id': 1}), no_values.format('update')),
                       (lambda: db.upsert(awkward_table, {}, 'id'), no_values.format('upsert')),
                       (lambda: db.upsert(awkward_table, {'id': 1}, []), no_conflict),
                       # '' got past it, a 500, and None was a TypeError (trial BI)
                       (lambda: db.upsert(awkward_table, {'id': 1}, ''), no_conflict),
                       (lambda: db.upsert(awkward_table, {'id': 1}, None), no_conflict),
                       (lambda: db.update(awkward_table, {'': 1}, {'id': 1}), no_values.format('update')),
                       (lambda: db.insert(awkward_table, {'': 1}), no_values.format('insert')),
                       (lambda: db.delete(awkward_table, {'': 1}), 'the where of Db.update and Db.delete names no')):
        with pytest.raises(ValueError, match=said):
            call()


def test_an_empty_name_anywhere_is_a_value_error_not_a_500(conn, awkward_table):
    """The rest of the kind trial BI found for upsert's conflict: an empty returning list, update column or table
    name, a schema with no table, were PostgreSQL's syntax or zero-length-name errors."""
    db = Db(conn)
    for call, said in ((lambda: db.insert(awkward_table, {'id': 1}, returning_columns=[]), 'the returning_columns'),
                       (lambda: db.insert(awkward_table, {'id': 2}, returning_columns=''), 'the returning_columns'),
                       (lambda: db.upsert(awkward_table, {'id': 3}, 'id', update=['']), 'a name given to a Db'),
                       (lambda: db.insert('', {'id': 4}), 'a name given to a Db helper is empty'),
                       (lambda: db.insert('pg_temp.', {'id': 5}), 'a name given to a Db helper is empty')):
        with pytest.raises(ValueError, match=said):
            call()


def test_a_name_holding_a_dot_is_reached_as_a_schema_and_name_pair(conn):
    """A dot splits schema from table: a table whose own name holds one could not be reached (trial BG)."""
    db = Db(conn)
    db.execute('CREATE TEMP TABLE "v1.2 prices" (id int, note text)', [])
    schema = db.fetch_value("SELECT nspname FROM pg_namespace WHERE oid = pg_my_temp_schema()")
    assert db.insert((schema, 'v1.2 prices'), {'id': 1, 'note': 'a'}) == {'id': 1, 'note': 'a'}
    assert db.update([schema, 'v1.2 prices'], {'note': 'b'}, {'id': 1})['note'] == 'b'


def test_insert_of_no_values_inserts_the_defaults(conn):
    """INSERT INTO t () VALUES () was a syntax error, a 500 (trial BD)."""
    row = Db(conn).insert(ODD_TABLE, {})
    assert row['id'] > 0 and row['select'] is None


def test_fetch_helpers_and_execute(conn):
    db = Db(conn)
    assert db.fetch_all('SELECT g AS n FROM generate_series(1, 3) g') == [{'n': 1}, {'n': 2}, {'n': 3}]
    assert db.fetch_one('SELECT 1 AS n WHERE false') is None
    assert db.fetch_value('SELECT %(a)s::int + 1', {'a': 41}) == 42
    assert db.execute('INSERT INTO probe."odd table" ("select") VALUES (%s), (%s)', ('p', 'q')) == 2


def test_call_runs_a_schema_qualified_function(conn):
    assert Db(conn).call('probe.add', 40, 2) == 42


def test_values_are_parameters_never_sql(conn):
    hostile = "x'); DROP TABLE probe.things; --"
    assert Db(conn).insert(ODD_TABLE, {'select': hostile})['select'] == hostile
    assert Db(conn).fetch_value('SELECT count(*) FROM probe.things') is not None


def test_transactional_commits_a_block_and_rolls_back_a_failing_one(conn):
    with transactional(conn) as db:
        db.insert(ODD_TABLE, {'select': 'kept'})
    with pytest.raises(psycopg2.errors.UniqueViolation):
        with transactional(conn) as db:
            db.insert(ODD_TABLE, {'select': 'lost'})
            db.insert(ODD_TABLE, {'select': 'kept'})
    assert [row['select'] for row in Db(conn).fetch_all('SELECT "select" FROM probe."odd table"')] == ['kept']


def test_stream_yields_batches_from_a_server_side_cursor(app):
    with connection(app.extensions['dbapi'].pools['default']) as conn:
        batches = list(Db(conn).stream('SELECT g AS n FROM generate_series(1, 7) g', batch_size=3))
    assert [len(batch) for batch in batches] == [3, 3, 1]
    assert batches[2] == [{'n': 7}]


@pytest.mark.parametrize('kind', ['stream', 'stream_json'])
@pytest.mark.parametrize('batch_size', [0, -1, 2.5, True, '10', 2**31, 2**63])
def test_a_batch_size_that_is_no_count_of_rows_is_refused_before_anything_runs(conn, kind, batch_size):
    """0 streamed no rows (a 200 of []), and stream_json's FETCH FORWARD 0 spun until the deadline (trial AW)."""
    with pytest.raises(ValueError, match='batch_size must be an int from 1 to 2147483647'):
        list(getattr(Db(conn), kind)('SELECT g FROM generate_series(1, 3) g', batch_size=batch_size))
    assert conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE  # no statement was sent


@pytest.mark.parametrize('outer, inner', [('stream', 'stream'), ('stream', 'stream_json')])
def test_streams_may_be_open_on_one_connection_at_once(conn, outer, inner):
    """Each has a cursor of its own: a stream read inside another's rows ("dbapi_stream" already existed). Not inside
    a stream_json's: its helper thread fetches ahead on the connection (docs/modules.md)."""
    db = Db(conn)
    pairs = []
    for batch in getattr(db, outer)('SELECT g AS n FROM generate_series(1, 3) g', batch_size=2):
        for row in json.loads(b''.join(json_array_chunks([batch]))):  # either kind of batch, as rows
            inner_rows = getattr(db, inner)('SELECT g * %(n)s AS m FROM generate_series(1, 2) g', {'n': row['n']})
            pairs.append(json.loads(b''.join(json_array_chunks(inner_rows))))
    assert pairs == [[{'m': 1}, {'m': 2}], [{'m': 2}, {'m': 4}], [{'m': 3}, {'m': 6}]]


def test_an_action_may_stream_single_rows_from_a_generator(call, app):
    assert call('/probe/generated').get_json() == [{'n': 0}, {'n': 1}, {'n': 2}]
    assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0


@pytest.mark.parametrize('kind', ['stream', 'stream_json'])
def test_a_stream_that_fails_before_its_first_row_is_the_requests_own_problem(call, app, kind):
    answer = call('/probe/failing_stream', {'kind': kind})
    assert answer.status_code == 422 and answer.content_type == 'application/problem+json', answer.get_data()
    assert answer.get_json()['sqlstate'] == '22012'  # division_by_zero, not a 200 cut short at "["
    assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0


@pytest.mark.parametrize('kind', ['stream', 'stream_json'])
@pytest.mark.parametrize('count', [4, 6])
def test_a_stream_holds_its_connection_until_its_body_has_been_read(call, app, kind, count):
    pool = app.extensions['dbapi'].pools['default']
    answer = call('/probe/counted_stream', {'kind': kind, 'count': count, 'batch_size': 5}, buffered=False)
    try:
        assert answer.status_code == 200 and pool.gauges()['in_use'] == 1  # the first batch is encoded already
        assert json.loads(b''.join(answer.response)) == [{'n': n} for n in range(1, count + 1)]
        assert pool.gauges()['in_use'] == 0
    finally:
        answer.close()
    assert pool.gauges()['in_use'] == 0


@pytest.mark.parametrize('kind', ['stream', 'stream_json'])
def test_an_autocommit_action_streams_in_a_transaction_of_its_own(call, app, kind):
    code = f'autocommit-{kind}-{uuid.uuid4()}'
    answer = call('/probe/autocommit_stream', {'kind': kind, 'code': code, 'count': 5})
    assert answer.status_code == 200, answer.get_data()  # a server-side cursor outside a transaction was a 500
    assert answer.get_json() == [{'n': n} for n in range(1, 6)]
    with connection(app.extensions['dbapi'].pools['default']) as conn, conn.cursor() as cursor:
        cursor.execute('SELECT count(*) FROM probe.things WHERE code = %s', [code])
        assert cursor.fetchone()[0] == 1  # what the action wrote before its stream is kept
    assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0


@pytest.mark.filterwarnings('error::pytest.PytestUnraisableExceptionWarning')  # a stream closed later, by the GC
@pytest.mark.parametrize('kind', ['stream', 'stream_json'])
def test_a_stream_refused_after_its_first_batch_stops_reading_before_its_connection_serves_again(make_app, kind):
    app = make_app(DB_POOL_MAX=1)
    call, threads_before = Caller(app.test_client()), threading.active_count()
    answer = call('/probe/counted_stream', {'kind': kind, 'count': 50, 'batch_size': 5, 'date_style': 'SQL, DMY'})
    assert answer.status_code == 500 and 'DateStyle' in answer.get_json()['detail'], answer.get_data()
    assert threading.active_count() == threads_before, 'the helper fetching the next batches has ended'
    later = [call('/probe/counted_stream', {'kind': kind, 'count': 7, 'batch_size': 5}) for _ in range(20)]
    assert [(answer.status_code, len(answer.get_json())) for answer in later] == [(200, 7)] * 20


@pytest.mark.parametrize('kind', ['stream', 'stream_json'])
def test_a_stream_whose_first_batch_json_cannot_write_is_the_requests_own_problem(call, app, kind):
    answer = call('/probe/failing_stream', {'kind': kind, 'failure': 'depth'})
    assert answer.status_code == 500 and answer.content_type == 'application/problem+json', answer.get_data()
    assert 'deeper than 254 levels' in answer.get_json()['detail']
    assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0
