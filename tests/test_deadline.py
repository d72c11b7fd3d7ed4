"""One request deadline (REQUEST_DEADLINE_MS): the pool wait, retries and statements end at it, nothing commits past
it, and nginx waits longer than it."""
import functools
import re
import subprocess
import sys
import time

import psycopg2
import psycopg2.extensions
import psycopg2.extras
import pytest
from flask import Response

import settings
from lib.db import DEFAULT, PoolTimeout, connection, transactional
from lib.db.guard import ActionMisusedConnection, NotACursorClass, StatementPastDeadline, TransactionLeftOpen
from lib.db.unit import DatabaseNotAnswering, DeadlineExceeded, StreamPastDeadline
from lib.decorators import inject_conn, inject_db
from lib.errors import Conflict, GatewayTimeout, ImproperlyConfigured, as_api_error, from_database_error
from lib.http.exchange import DEADLINE_KEY
from ops import nginx
from ops.stack import StackConfig, nginx_environment
from tests.helpers import Caller, run_sql

TABLE = 'deadline_probe'


@pytest.fixture()
def probe_table(database_url):
    """A table the actions below write to; empty at the start of each test."""
    run_sql(database_url, f'CREATE TABLE IF NOT EXISTS {TABLE} (attempt int); TRUNCATE {TABLE}')
    return database_url


def rows_written(dsn):
    """Return how many rows the actions committed."""
    with psycopg2.connect(dsn) as conn, conn.cursor() as cursor:
        cursor.execute(f'SELECT count(*) FROM {TABLE}')
        count = cursor.fetchone()[0]
    conn.close()
    return count


@inject_db()
def write_then_conflict(db):
    """Write a row, wait a little, then fail as a serialization failure would: retried until the deadline."""
    db.execute(f'INSERT INTO {TABLE} VALUES (1)')
    db.execute("SELECT pg_sleep(0.1); DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")


@inject_db()
def write_then_sleep(db, seconds):
    """Write a row, then run a statement for seconds."""
    db.execute(f'INSERT INTO {TABLE} VALUES (1)')
    db.execute('SELECT pg_sleep(%(seconds)s)', {'seconds': seconds})


@inject_db()
def write_then_think(db, seconds):
    """Write a row, then spend seconds in Python (no statement to stop) before the commit."""
    db.execute(f'INSERT INTO {TABLE} VALUES (1)')
    time.sleep(seconds)


@inject_conn(autocommit=True)
def think_then_write_in_a_transaction(conn, seconds):
    """Spend seconds in Python, then open a transaction of its own and write a row in it."""
    time.sleep(seconds)
    with transactional(conn) as db:
        db.execute(f'INSERT INTO {TABLE} VALUES (1)')


@inject_conn(autocommit=True)
def commit_then_think_in_a_second_transaction(conn, seconds):
    """Commit one transaction, then write in a second and spend seconds in Python before its commit."""
    with transactional(conn) as db:
        db.execute(f'INSERT INTO {TABLE} VALUES (1)')
    with transactional(conn) as db:
        db.execute(f'INSERT INTO {TABLE} VALUES (2)')
        time.sleep(seconds)


@inject_conn(autocommit=True)
def write_fast_until(conn, seconds):
    """Insert rows one by one in autocommit for seconds, each a statement of a few tens of microseconds."""
    ends = time.monotonic() + seconds
    with conn.cursor() as cursor:
        while time.monotonic() < ends:
            cursor.execute(f'INSERT INTO {TABLE} VALUES (1)')


@inject_conn(autocommit=True)
def write_think_then_commit(conn, seconds):
    """Write a row in a `with conn:` block of an autocommit action (transactional()'s way), spend seconds in Python,
    then have the block's end commit it."""
    with conn, conn.cursor() as cursor:
        cursor.execute(f'INSERT INTO {TABLE} VALUES (1)')
        time.sleep(seconds)


def autocommit_on(conn):
    """Roll the transaction back and switch autocommit on, as psycopg2 lets one then."""
    conn.rollback()
    conn.autocommit = True


# How an action run as one transaction ends it itself, or escapes it (trials AG, AH).
ENDINGS = {'commit': lambda conn: conn.commit(), 'sql commit': lambda conn: conn.cursor().execute('COMMIT'),
           'sql rollback': lambda conn: conn.cursor().execute('ROLLBACK'),
           'one string': lambda conn: conn.cursor().execute(f'INSERT INTO {TABLE} VALUES (2); COMMIT; SELECT 1'),
           'injected': lambda conn: conn.cursor().execute('%s', [psycopg2.extensions.AsIs('COMMIT')]),
           'autocommit': autocommit_on,
           'autocommit mid-way': lambda conn: setattr(conn, 'autocommit', True),
           'set_session': lambda conn: conn.set_session(isolation_level='SERIALIZABLE'),
           'set_client_encoding': lambda conn: conn.set_client_encoding('LATIN1')}


@inject_conn()
def write_end_then_conflict(conn, ending):
    """Write a row in the action's one transaction, end that transaction itself (ENDINGS), then fail as a
    serialization failure would: retried, as the whole action is (trial AG)."""
    conn.cursor().execute(f'INSERT INTO {TABLE} VALUES (1)')
    ENDINGS[ending](conn)
    conn.cursor().execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")


@inject_conn()
def write_in_with_block(conn):
    """Write a row in a `with conn:` block of an action run as one transaction: the block's end commits it."""
    with conn, conn.cursor() as cursor:
        cursor.execute(f'INSERT INTO {TABLE} VALUES (1)')


@inject_conn(autocommit=True)
def close_own_connection(conn):
    """Close the action's connection, the pool's."""
    conn.close()


@inject_conn(autocommit=True)
def autocommit_off_and_write(conn):
    """Switch autocommit off in an autocommit action, write a row, and return with its transaction open."""
    conn.autocommit = False
    conn.cursor().execute(f'INSERT INTO {TABLE} VALUES (1)')


@inject_conn(autocommit=True)
def begin_and_write(conn):
    """Open a transaction in SQL in an autocommit action, write a row, and return with it open."""
    conn.cursor().execute(f'BEGIN; INSERT INTO {TABLE} VALUES (1)')


@inject_conn(autocommit=True)
def write_through_a_cursor_a_function_makes(conn, factory):
    """Insert a row through a cursor of cursor_factory=factory, a callable that is no cursor class."""
    with conn.cursor(cursor_factory=factory) as cursor:
        cursor.execute(f'INSERT INTO {TABLE} VALUES (1)')


class HandsOutPlainCursors(type):
    """A metaclass whose classes make psycopg2's plain cursor, not one of their own."""

    def __call__(cls, *args, **kwargs):
        return psycopg2.extensions.cursor(*args, **kwargs)


class MetaclassCursor(psycopg2.extensions.cursor, metaclass=HandsOutPlainCursors):
    """A cursor class in name: its metaclass hands out plain cursors."""


class NewCursor(psycopg2.extensions.cursor):
    """A cursor class in name: its __new__ hands out plain cursors."""

    def __new__(cls, *args, **kwargs):
        return psycopg2.extensions.cursor(*args, **kwargs)


@inject_conn()
def fetch_from_a_named_cursor_for(conn, seconds, how):
    """Fetch rows one at a time from a server-side cursor for seconds (each fetch a FETCH or MOVE statement), the way
    how names."""
    ends = time.monotonic() + seconds
    with conn.cursor(name='deadline_rows') as cursor:
        cursor.itersize = 1
        cursor.execute('SELECT n FROM generate_series(1, 10000) AS n')
        rows = iter(cursor)
        fetch = {'fetchone': cursor.fetchone, 'fetchmany': lambda: cursor.fetchmany(1), 'fetchall': cursor.fetchall,
                 'iterate': lambda: next(rows), 'scroll': lambda: cursor.scroll(1)}[how]
        while time.monotonic() < ends:
            time.sleep(0.05)
            fetch()


class HandsOutAnotherGuardedCursor(psycopg2.extensions.cursor):
    """A cursor class in name: its __new__ hands out a guarded cursor of another class, whose guard is not a named
    cursor's."""

    def __new__(cls, conn, name=None, **kwargs):
        return type(conn.cursor())(conn, name, **kwargs)


class UnhashableClass(type):
    """A metaclass whose classes cannot be hashed."""

    __hash__ = None

    def __eq__(cls, other):
        return cls is other


class UnhashableCursor(psycopg2.extensions.cursor, metaclass=UnhashableClass):
    """A cursor class that cannot be a dict's key."""


@inject_conn(autocommit=True)
def commit_in_a_stream(conn, pause):
    """Return a stream that yields a row, spends pause seconds in Python, then runs a transactional() block."""
    def rows():
        yield {'first': 1}
        time.sleep(pause)
        with transactional(conn) as db:
            db.execute(f'INSERT INTO {TABLE} VALUES (1)')
    return rows()


@inject_conn(autocommit=True)
def write_rows_in_a_stream(conn, pause):
    """Return a stream that writes and yields a row, then spends pause seconds in Python before the next."""
    def rows():
        with conn.cursor() as cursor:
            for attempt in range(3):
                cursor.execute(f'INSERT INTO {TABLE} VALUES (%s) RETURNING attempt', (attempt,))
                yield cursor.fetchone()
                time.sleep(pause)
    return rows()


def timed_call(app, action, *args):
    """Call action in a request of app, its pool's first connection made before (a connect and its setup took the
    whole of a 300 ms deadline on a loaded host); return (exception raised or None, seconds taken)."""
    with connection(app.extensions['dbapi'].pools[DEFAULT], autocommit=True):
        pass
    started = time.monotonic()
    with app.test_request_context('/deadline/probe', method='POST'):
        try:
            action(*args)
        except Exception as exc:  # the test inspects it
            return exc, time.monotonic() - started
    return None, time.monotonic() - started


def test_retries_stop_at_the_deadline_and_nothing_commits(make_app, probe_table):
    app = make_app(REQUEST_DEADLINE_MS=700, DB_RETRIES=100)
    error, seconds = timed_call(app, write_then_conflict)
    # The last attempt ends in its conflict (503), in its statement stopped at the time left (504), or, when the
    # deadline falls between attempts, before the next one starts (504).
    assert isinstance(error, (DeadlineExceeded, StatementPastDeadline)) or (isinstance(error, psycopg2.Error)
                                                                            and error.pgcode == '40001')
    assert seconds < 0.9  # a hundred retries of 0.1 s each would take ten
    assert rows_written(probe_table) == 0


def test_a_statement_ends_at_the_deadline_even_with_no_statement_timeout(make_app, probe_table):
    app = make_app(REQUEST_DEADLINE_MS=600, DB_STATEMENT_TIMEOUT_MS=0)
    error, seconds = timed_call(app, write_then_sleep, 5)
    assert isinstance(error, StatementPastDeadline) and error.__cause__.pgcode == '57014'  # a 504
    assert seconds < 0.9
    assert rows_written(probe_table) == 0


@pytest.mark.parametrize('statement_timeout_ms', [1000, 0])
def test_a_statement_running_at_the_deadline_answers_the_deadlines_504_whichever_timeout_stops_it(make_app,
                                                                                                   statement_timeout_ms):
    """With the session's statement timeout equal to the deadline (the default), PostgreSQL cancels a statement begun
    at once a few milliseconds past the deadline, before the watcher looks: the answer said "The database statement
    timed out." (57014), where the contract promises the deadline's words."""
    app = make_app(REQUEST_DEADLINE_MS=1000, DB_STATEMENT_TIMEOUT_MS=statement_timeout_ms)
    answer = Caller(app.test_client())('/probe/hold', {'seconds': 3})
    assert answer.status_code == 504 and answer.get_json()['detail'] == StatementPastDeadline.detail


@inject_conn(autocommit=True)
def write_then_sleep_in_autocommit(conn, seconds):
    """Write a row in autocommit (committed at once), then run a statement for seconds."""
    with conn.cursor() as cursor:
        cursor.execute(f'INSERT INTO {TABLE} VALUES (1)')
        cursor.execute('SELECT pg_sleep(%s)', (seconds,))


def test_an_autocommit_statement_past_the_deadline_says_what_ran_before_it_stays_committed(make_app, probe_table):
    app = make_app(REQUEST_DEADLINE_MS=1000, DB_STATEMENT_TIMEOUT_MS=1000)  # PostgreSQL stops it (no watcher here)
    error, _ = timed_call(app, write_then_sleep_in_autocommit, 3)
    assert isinstance(error, StatementPastDeadline) and error.detail == StatementPastDeadline.autocommit_detail
    assert 'stay committed' in error.detail and 'rolled back' not in error.detail
    assert rows_written(probe_table) == 1  # what the words say


@inject_conn(autocommit=True)
def write_and_sleep_in_one_query_string(conn, seconds):
    """Send a row's INSERT and a statement that runs for seconds as one query string, one transaction."""
    with conn.cursor() as cursor:
        cursor.execute(f'INSERT INTO {TABLE} VALUES (1); SELECT pg_sleep(%s)', (seconds,))


def test_an_autocommit_query_string_past_the_deadline_says_its_statements_went_with_it(make_app, probe_table):
    """A query string's statements are one transaction: the detail said the INSERT before the cancelled statement
    stayed committed, and it had not (trial BZ)."""
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=1000, DB_STATEMENT_TIMEOUT_MS=1000),
                          write_and_sleep_in_one_query_string, 3)
    assert isinstance(error, StatementPastDeadline) and error.detail == StatementPastDeadline.autocommit_detail
    assert 'with those sent with it in one query string' in error.detail
    assert rows_written(probe_table) == 0  # what the words say


def test_a_statement_timeout_shorter_than_the_deadline_keeps_its_own_words(make_app):
    app = make_app(REQUEST_DEADLINE_MS=3000, DB_STATEMENT_TIMEOUT_MS=500)
    answer = Caller(app.test_client())('/probe/hold', {'seconds': 2})
    assert answer.status_code == 504 and answer.get_json()['detail'] == 'The database statement timed out.'


def test_a_transaction_past_the_deadline_is_rolled_back_not_committed(make_app, probe_table):
    app = make_app(REQUEST_DEADLINE_MS=300)
    error, _ = timed_call(app, write_then_think, 0.5)
    assert isinstance(error, GatewayTimeout) and error.status == 504
    assert rows_written(probe_table) == 0
    error, _ = timed_call(app, write_then_think, 0)
    assert error is None and rows_written(probe_table) == 1


def test_a_transaction_an_action_opens_past_the_deadline_is_rolled_back_not_committed(make_app, probe_table):
    """Its first statement is refused before it reaches PostgreSQL (lib/db/guard.py)."""
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=300), think_then_write_in_a_transaction, 0.5)
    assert isinstance(error, StatementPastDeadline) and error.detail == StatementPastDeadline.autocommit_detail
    assert rows_written(probe_table) == 0


def test_a_transaction_past_the_deadline_in_an_autocommit_action_says_what_committed_before_it_stays(make_app,
                                                                                                    probe_table):
    """It said "nothing was committed", although the action's first transaction had."""
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=300), commit_then_think_in_a_second_transaction, 0.5)
    assert isinstance(error, DeadlineExceeded) and error.detail == DeadlineExceeded.autocommit_detail
    assert run_sql(probe_table, f'SELECT attempt FROM {TABLE}') == [(1,)]


def test_no_statement_starts_past_the_deadline_however_short(make_app, probe_table):
    """Fast autocommit statements past the deadline ran, and committed, between the watcher's looks; now each is
    refused before it reaches PostgreSQL, so the rows stop at the deadline."""
    error, seconds = timed_call(make_app(REQUEST_DEADLINE_MS=500), write_fast_until, 1.5)
    assert isinstance(error, StatementPastDeadline) and error.detail == StatementPastDeadline.autocommit_detail
    assert seconds < 1, 'the action ran on past its deadline'
    assert run_sql(probe_table, f'SELECT count(*) FROM {TABLE}')[0][0] > 0, 'it wrote until the deadline'


def test_an_actions_own_commit_past_the_deadline_is_refused_and_nothing_is_committed(make_app, probe_table):
    """conn.commit() sends no statement through a cursor: past the deadline it committed, and the answer said that
    nothing was. The deadline leaves the INSERT, with its connection's first connect, a second on a loaded host."""
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=1000), write_think_then_commit, 1.2)
    assert isinstance(error, StatementPastDeadline)
    assert rows_written(probe_table) == 0
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=3000), write_think_then_commit, 0)
    assert error is None and rows_written(probe_table) == 1


# The rows each ending leaves committed: those an SQL COMMIT committed stay (the statement after it is refused).
KEPT = {'sql commit': 1, 'one string': 2, 'injected': 1}


@pytest.mark.parametrize('ending', ENDINGS)
def test_an_action_that_ends_its_one_transaction_itself_is_a_500_never_retried(make_app, probe_table, ending):
    """dbapi commits an action's one transaction when it returns, and runs it whole again after a conflict: the
    part an action committed itself ran again on each retry, a row committed four times behind a 503 (trial AG).
    Its commit is refused before anything commits; after an SQL COMMIT, the next statement (what it wrote stays)."""
    error, _ = timed_call(make_app(DB_RETRIES=3), write_end_then_conflict, ending)
    assert isinstance(error, ActionMisusedConnection), error
    assert as_api_error(error).status == 500 and as_api_error(error).detail.startswith('The action ')
    assert rows_written(probe_table) == KEPT.get(ending, 0)


@pytest.mark.parametrize('ending, hint', [('set_session', True), ('set_client_encoding', False)])
def test_a_refused_session_change_hints_at_isolation_levels_only_where_one_is_meant(make_app, probe_table, ending,
                                                                                    hint):
    """set_client_encoding's refusal ended with the hint on isolation levels (trial AK)."""
    error, _ = timed_call(make_app(), write_end_then_conflict, ending)
    assert f'called connection.{ending} in its one transaction' in str(error)
    assert ('ISOLATION LEVEL' in str(error)) == hint


@inject_conn()
def commit_in_sql_then(conn, then):
    """Write a row and commit it in SQL, then fail in the same query string as a conflict would, or write a second
    row in it, or (then 'raise') answer a 409 after it."""
    after = {'conflict': "; DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$",
             'write': f'; INSERT INTO {TABLE} VALUES (2)'}.get(then, '')
    conn.cursor().execute(f'INSERT INTO {TABLE} VALUES (1); COMMIT{after}')
    if then == 'raise':
        raise Conflict('no')


@pytest.mark.parametrize('then', ['conflict', 'raise', 'return', 'write'])
def test_an_sql_commit_as_an_actions_last_statement_is_a_500_that_says_so_never_retried(make_app, probe_table, then):
    """The conflict after it was retried, the row committed four times behind a 503; the 409 or 200 said nothing of
    the COMMIT (trials AG, AH); a write after it in the same query string runs, and the 500 says it stays (AK)."""
    error, _ = timed_call(make_app(DB_RETRIES=3), commit_in_sql_then, then)
    assert isinstance(error, ActionMisusedConnection) and 'what a COMMIT wrote stays committed' in str(error)
    assert 'the statements after it in the same query string' in str(error)
    assert rows_written(probe_table) == (2 if then == 'write' else 1)


@inject_conn()
def stream_that_commits(conn, ending):
    """Return a stream whose generator writes a row, ends the transaction (ENDINGS), then writes another."""
    def rows():
        yield {'n': 1}
        conn.cursor().execute(f'INSERT INTO {TABLE} VALUES (1)')
        ENDINGS[ending](conn)
        conn.cursor().execute(f'INSERT INTO {TABLE} VALUES (2)')
        yield {'n': 2}
    return rows()


@pytest.mark.parametrize('ending', ['commit', 'sql commit'])
def test_a_stream_of_an_action_run_as_one_transaction_may_not_end_it_either(make_app, probe_table, ending):
    """The action's mark ended as it returned its generator, which then committed freely (trial AH)."""
    app = make_app()
    with app.test_request_context('/deadline/probe', method='POST'):
        stream = stream_that_commits(ending)
        with pytest.raises(ActionMisusedConnection):
            list(stream)
    assert rows_written(probe_table) == (1 if ending == "sql commit" else 0)  # the SQL COMMIT's row stays


@inject_conn()
def respond_with_a_writing_body(conn):
    """Answer a flask Response whose body's generator writes a row as it is sent."""
    def body():
        yield '['
        conn.cursor().execute(f'INSERT INTO {TABLE} VALUES (1)')
        yield ']'
    return Response(body(), mimetype='application/json')


def test_a_response_whose_body_is_a_generator_keeps_its_connection_until_it_is_sent(make_app, probe_table):
    """Its body ran after the lease ended, on a connection the pool had lent again: two requests on one connection
    froze a gevent worker (trial AJ)."""
    app = make_app(DB_POOL_MAX=1)
    pool = app.extensions['dbapi'].pools[DEFAULT]
    with app.test_request_context('/deadline/probe', method='POST'):
        response = respond_with_a_writing_body()
        assert pool.gauges()['in_use'] == 1, 'the body holds the connection'
        assert list(response.response) == ['[', ']']
    assert pool.gauges()['in_use'] == 0 and rows_written(probe_table) == 1  # committed once sent


def test_a_with_block_ending_an_actions_one_transaction_is_refused(make_app, probe_table):
    error, _ = timed_call(make_app(), write_in_with_block)
    assert isinstance(error, ActionMisusedConnection) and rows_written(probe_table) == 0


def test_an_action_that_closes_its_connection_is_a_500_and_the_connection_serves_on(make_app):
    """It was a 503 that said the database could not be reached, and the connection was lost (trial AG)."""
    app = make_app(DB_POOL_MAX=1)
    error, _ = timed_call(app, close_own_connection)
    assert isinstance(error, ActionMisusedConnection)
    assert as_api_error(error).detail.startswith("The action called connection.close, which is the pool's")
    assert app.extensions['dbapi'].pools[DEFAULT].gauges()['discarded'] == 0


def test_an_autocommit_action_that_switches_autocommit_off_is_a_500_and_nothing_is_committed(make_app, probe_table):
    """Its transaction was committed with a 200, where one its BEGIN left open is a 500, rolled back (trial AK)."""
    error, _ = timed_call(make_app(), autocommit_off_and_write)
    assert isinstance(error, ActionMisusedConnection) and 'switched autocommit off' in str(error)
    assert rows_written(probe_table) == 0


def test_a_transaction_an_autocommit_action_left_open_is_rolled_back_and_its_connection_kept(make_app, probe_table):
    """psycopg2's rollback does nothing on an autocommit connection: the reset failed (25001) with a warning, and the
    connection was thrown away (trial AG)."""
    app = make_app(DB_POOL_MAX=1)
    error, _ = timed_call(app, begin_and_write)
    assert isinstance(error, TransactionLeftOpen) and rows_written(probe_table) == 0
    assert app.extensions['dbapi'].pools[DEFAULT].gauges()['discarded'] == 0


@pytest.mark.parametrize('factory', [lambda *args, **kwargs: psycopg2.extensions.cursor(*args, **kwargs),
                                     functools.partial(psycopg2.extras.RealDictCursor)], ids=['function', 'partial'])
def test_a_cursor_factory_that_is_no_cursor_class_is_refused_since_its_statements_could_not_be(make_app, probe_table,
                                                                                              factory):
    """A function's cursors were left unguarded: past the deadline, or after the client left, their writes
    committed (trial C)."""
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=3000), write_through_a_cursor_a_function_makes, factory)
    assert isinstance(error, NotACursorClass) and 'must be psycopg2.extensions.cursor or a subclass' in str(error)
    assert rows_written(probe_table) == 0


@pytest.mark.parametrize('factory', [MetaclassCursor, NewCursor, HandsOutAnotherGuardedCursor])
def test_a_cursor_class_that_hands_out_cursors_of_another_kind_is_refused(make_app, probe_table, factory):
    """It passed the class check, and its plain cursors wrote after the deadline and after the client left (trial
    D)."""
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=3000), write_through_a_cursor_a_function_makes, factory)
    assert isinstance(error, NotACursorClass) and 'not a cursor of its own class' in str(error)
    assert rows_written(probe_table) == 0


@pytest.mark.parametrize('factory, words', [([psycopg2.extensions.cursor], 'must be psycopg2.extensions.cursor'),
                                            (UnhashableCursor, 'cannot be guarded')], ids=['list', 'unhashable class'])
def test_a_cursor_factory_that_cannot_be_hashed_is_no_cursor_class(make_app, probe_table, factory, words):
    """A list, or a class its metaclass made unhashable, as cursor_factory was a TypeError of the guard's cache."""
    error, _ = timed_call(make_app(REQUEST_DEADLINE_MS=3000), write_through_a_cursor_a_function_makes, factory)
    assert isinstance(error, NotACursorClass) and words in str(error)
    assert rows_written(probe_table) == 0


@pytest.mark.parametrize('how', ['fetchone', 'fetchmany', 'fetchall', 'iterate', 'scroll'])
def test_a_named_cursors_fetches_past_the_deadline_are_refused(make_app, how):
    """A server-side cursor's FETCH and MOVE ran on past the deadline, their functions' side effects too (trial D)."""
    error, seconds = timed_call(make_app(REQUEST_DEADLINE_MS=400), fetch_from_a_named_cursor_for, 1.5, how)
    assert isinstance(error, StatementPastDeadline) and error.detail == StatementPastDeadline.detail
    assert seconds < 0.8, 'it fetched on past its deadline'


@pytest.mark.parametrize('action, first, written', [(write_rows_in_a_stream, {'attempt': 0}, 1),
                                                     (commit_in_a_stream, {'first': 1}, 0)])
def test_a_statement_a_stream_starts_past_the_deadline_ends_it_as_past_the_deadline(make_app, probe_table, action,
                                                                                   first, written):
    """It ended as StatementPastDeadline (or transactional()'s DeadlineExceeded), which speak of a statement or a
    transaction; the contract says such an answer ran past the deadline and was cut short (trials D, E and F)."""
    with make_app(REQUEST_DEADLINE_MS=300).test_request_context('/deadline/probe', method='POST'):
        stream = action(0.5)
        assert next(stream) == first
        with pytest.raises(StreamPastDeadline):
            next(stream)
    assert rows_written(probe_table) == written


@inject_conn(autocommit=True)
def select_one(conn):
    """Run one short statement."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT 1')


@pytest.mark.parametrize('seconds_left, expected', [(0.2, DeadlineExceeded), (5, PoolTimeout)])
def test_a_wait_for_a_connection_that_the_deadline_ends_is_the_deadlines_504(make_app, seconds_left, expected):
    """A request that came late to the pool (a slow body) had its wait cut by the deadline, and got the pool's 503,
    whose words say no connection came free within DB_POOL_TIMEOUT_MS (trial D)."""
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=400, REQUEST_DEADLINE_MS=10000)
    with connection(app.extensions['dbapi'].pools[DEFAULT]):  # the pool's one connection, held
        with app.test_request_context('/deadline/probe', method='POST') as context:
            context.request.environ[DEADLINE_KEY] = time.monotonic() + seconds_left
            started = time.monotonic()
            with pytest.raises(expected):
                select_one()
    assert time.monotonic() - started < min(seconds_left, 0.4) + 0.3


def test_a_closed_connections_error_met_while_another_error_is_handled_answers_as_that_error():
    """psycopg2 closes a connection whose wait raised (DatabaseNotAnswering); a with-block's rollback then meets
    "connection already closed", which must not turn the 504 into a 503 about a broken connection."""
    try:
        try:
            raise DatabaseNotAnswering()
        except DatabaseNotAnswering:
            raise psycopg2.InterfaceError('connection already closed')
    except psycopg2.InterfaceError as exc:
        assert isinstance(from_database_error(exc), DatabaseNotAnswering)


def test_a_deadline_answers_504_problem_through_the_app(make_app, probe_table):
    app = make_app(REQUEST_DEADLINE_MS=300)
    app.add_url_rule('/deadline/think', 'deadline_think', lambda: write_then_think(0.5) or {}, methods=['POST'])
    response = app.test_client().post('/deadline/think')
    assert response.status_code == 504 and response.content_type == 'application/problem+json'
    assert response.get_json()['detail'] == 'The request ran past its deadline; nothing was committed.'
    assert rows_written(probe_table) == 0


def test_the_stacks_nginx_waits_longer_than_the_deadline():
    text = nginx.render(nginx_environment(StackConfig.from_environment()))
    (timeout,) = set(re.findall(r'proxy_read_timeout\s+(\d+)ms;', text))
    assert int(timeout) > settings.REQUEST_DEADLINE_MS > 0


def settings_of(environment):
    """Import settings in a fresh interpreter with environment; return (exit code, stderr)."""
    script = 'import settings; print(settings.DB_POOL_TIMEOUT_MS, settings.DB_STATEMENT_TIMEOUT_MS, ' \
             'settings.WORKER_TIMEOUT, settings.GRACEFUL_TIMEOUT, settings.NGINX_PROXY_TIMEOUT_MS)'
    result = subprocess.run([sys.executable, '-c', script], cwd=settings.BASE_DIR, capture_output=True, text=True,
                            env={'PATH': '/usr/bin:/bin', 'ENVIRONMENT': 'test', **environment})
    return result.returncode, result.stdout.split(), result.stderr


def test_every_timeout_is_derived_from_the_deadline():
    code, values, _ = settings_of({'REQUEST_DEADLINE_MS': '8000'})
    assert code == 0 and values == ['4000', '8000', '23', '8', '17000']
    code, values, _ = settings_of({})
    assert code == 0 and values == ['5000', '30000', '45', '30', '40000']


@pytest.mark.parametrize('environment, named', [
    ({'REQUEST_DEADLINE_MS': '8000', 'DB_POOL_TIMEOUT_MS': '8000'}, 'DB_POOL_TIMEOUT_MS'),
    ({'REQUEST_DEADLINE_MS': '8000', 'DB_STATEMENT_TIMEOUT_MS': '9000'}, 'DB_STATEMENT_TIMEOUT_MS'),
    ({'REQUEST_DEADLINE_MS': '8000', 'WORKER_TIMEOUT': '8'}, 'WORKER_TIMEOUT')])
def test_a_timeout_the_deadline_cannot_hold_is_refused(environment, named):
    with pytest.raises(ImproperlyConfigured, match=named):
        raise_for(environment)


def raise_for(environment):
    """Run the settings' deadline checks on environment's values as settings.py would."""
    deadline = int(environment['REQUEST_DEADLINE_MS'])
    pool = int(environment.get('DB_POOL_TIMEOUT_MS', 4000))
    settings.check_deadline(deadline, pool, int(environment.get('DB_STATEMENT_TIMEOUT_MS', deadline)))
    if 'WORKER_TIMEOUT' in environment:
        with pytest.MonkeyPatch.context() as patch:
            patch.setenv('WORKER_TIMEOUT', environment['WORKER_TIMEOUT'])
            settings.worker_timeout(deadline)


def test_an_action_called_outside_a_request_has_no_deadline(make_app, probe_table):
    """Only a request has a deadline: a decorated action called from a script or a shell runs as long as it needs."""
    with make_app(REQUEST_DEADLINE_MS=300).app_context():
        write_then_think(0.5)
    assert rows_written(probe_table) == 1
