"""The database layer: pooled connections always given back, session settings, recovery, migrations."""
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pgserver
import psycopg2
import psycopg2.extensions
import pytest
from psycopg2.extensions import parse_dsn

import settings
from lib.db.cancel import LIBPQ, cancel_running_query
from lib.db.migrate import MIGRATION_TABLE, migrate
from lib.db.session import PooledConnection
from lib.errors import ServiceUnavailable
from tests.helpers import (PROBE_SQL, Caller, assert_problem, drop_database, migration_ids, recreate_database, run_sql,
                           throwaway_postgres)

# One of each path through the pool: success, validation error, 404, SQL errors, a crash, a stream.
MIXED_CALLS = [
    ('/probe/things/get', {'id': 1}), ('/probe/things/get', {'id': 'x'}), ('/probe/things/get', {'id': 10**12}),
    ('/probe/sqlstate', {'case': 'unique'}), ('/probe/sqlstate', {'case': 'data'}),
    ('/probe/sqlstate', {'case': 'syntax'}), ('/probe/crash', {}), ('/probe/things/export', {}),
    ('/probe/sqlstate', {'case': 'timeout'}), ('/probe/things/move', {'from_id': 10**12, 'to_id': 1, 'amount': 1}),
]


def app_connections(database_url, application_name):
    """Count the server's connections from one application_name."""
    return run_sql(database_url, 'SELECT count(*) FROM pg_stat_activity '
                                 'WHERE application_name = %s AND datname = current_database()',
                   (application_name,))[0][0]


def test_connections_stay_bounded_after_thousands_of_requests_with_errors(make_app, database_url):
    app = make_app(PROCESS_ID='bounded-test', DB_POOL_MAX=2)
    call = Caller(app.test_client())
    statuses = set()
    for index in range(2000):
        path, body = MIXED_CALLS[index % len(MIXED_CALLS)]
        statuses.add(call(path, body).status_code)
    assert {200, 404, 409, 422, 500, 504} <= statuses
    pool = app.extensions['dbapi'].pools['default']
    assert pool.gauges()['in_use'] == 0
    assert 1 <= app_connections(database_url, 'dbapi:bounded-test') <= 2


def test_a_stream_closed_before_it_is_read_gives_its_connection_back(make_app):
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=200)
    call = Caller(app.test_client())
    for _ in range(3):
        response = call('/probe/things/export', buffered=False)
        response.close()
    assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0
    assert call('/probe/things/get', {'id': 1}).status_code in (200, 404)


def test_a_stream_read_halfway_gives_its_connection_back(make_app, database_url):
    run_sql(database_url, "INSERT INTO probe.things (code) SELECT 'half-' || g || '-' || %s "
                          'FROM generate_series(1, 12000) g', (uuid.uuid4().hex,))
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=200)
    response = Caller(app.test_client())('/probe/things/export', buffered=False)
    next(iter(response.response))
    response.close()
    assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0


def test_each_connection_has_application_name_and_statement_timeout(make_app):
    app = make_app(PROCESS_ID='settings-test', DB_STATEMENT_TIMEOUT_MS=1234)
    pool = app.extensions['dbapi'].pools['default']
    conn = pool.borrow()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name'), current_setting('statement_timeout')")
            assert cursor.fetchone() == ('dbapi:settings-test', '1234ms')
    finally:
        pool.give_back(conn)


def test_statement_timeout_setting_is_enforced(make_app):
    app = make_app(DB_STATEMENT_TIMEOUT_MS=100)
    response = Caller(app.test_client())('/probe/hold', {'seconds': 1})
    assert response.status_code == 504


def test_a_connection_killed_by_the_server_is_replaced_without_an_error(make_app, database_url):
    app = make_app(PROCESS_ID='killed-test', DB_POOL_MAX=1)
    call = Caller(app.test_client())
    assert call('/probe/things/get', {'id': 1}).status_code in (200, 404)
    run_sql(database_url, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                          'WHERE application_name = %s AND datname = current_database()', ('dbapi:killed-test',))
    time.sleep(0.2)
    assert call('/probe/things/get', {'id': 1}).status_code in (200, 404)
    assert app.extensions['dbapi'].pools['default'].gauges()['discarded'] == 1


HOLD_ROUTES = '''
    from lib.decorators import inject_conn

    def hold(conn, code, seconds):
        with conn.cursor() as cursor:
            cursor.execute('INSERT INTO probe.things (code) VALUES (%s)', (code,))
            cursor.execute('SELECT pg_sleep(%s)', (seconds,))
        return {'held': seconds}

    @inject_conn(autocommit=True)
    def note(conn, code):
        with conn.cursor() as cursor:
            cursor.execute('INSERT INTO probe.things (code) VALUES (%s)', (code,))

    @inject_conn()
    def after_helper(conn, code, seconds):
        note(code)  # a helper asking for autocommit borrows a connection of its own: its row commits at once
        with conn.cursor() as cursor:
            cursor.execute('SELECT pg_sleep(%s)', (seconds,))

    routes = [dict(route='in_transaction', action=inject_conn()(hold)),
              dict(route='in_autocommit', action=inject_conn(autocommit=True)(hold)),
              dict(route='after_helper', action=after_helper)]
'''


@pytest.mark.parametrize('route, said', [
    ('in_transaction', 'broke before the transaction was committed: nothing it wrote was committed'),
    ('in_autocommit', 'may have run'),
    ('after_helper', 'may have run')])  # trial BG: "nothing it wrote was committed", the helper's row committed
def test_a_connection_killed_while_its_statement_runs_is_a_503_that_says_what_was_committed(
        make_app, module_package, database_url, route, said):
    """A transaction whose session ends is rolled back: an action run as one was told its writes "may have run"
    (trial BE); an autocommit action's statements before it did commit, and so did a helper's with a connection of its
    own."""
    app = make_app(PROCESS_ID=f'killed-{route}', DB_POOL_MAX=2,
                   MODULE_PACKAGES=[module_package({'held/routes.py': HOLD_ROUTES})])
    kill = ('SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s '
            'AND datname = current_database()')
    killer = threading.Timer(0.5, run_sql, (database_url, kill, (f'dbapi:killed-{route}',)))
    killer.start()
    code = f'killed-{uuid.uuid4()}'
    try:
        problem = assert_problem(Caller(app.test_client())(f'/held/{route}', {'code': code, 'seconds': 5}), 503)
    finally:
        killer.join()
    assert said in problem['detail'] and problem['detail'] != ServiceUnavailable.detail
    committed = run_sql(database_url, 'SELECT count(*) FROM probe.things WHERE code = %s', (code,))[0][0]
    assert committed == (0 if route == 'in_transaction' else 1)


@pytest.fixture()
def private_server():
    """A second embedded PostgreSQL of this test's own, to stop and start; stopped and deleted afterwards."""
    with throwaway_postgres('restart-') as (dsn, data_dir):
        migrate(dsn)
        run_sql(dsn, PROBE_SQL.read_text())
        socket_dir = parse_dsn(dsn)['host']
        # pgserver runs the server as the data folder's owner when we are root (its documented pg_ctl wrapper).
        user = data_dir.owner() if os.geteuid() == 0 else None

        def control(action):
            pgserver.pg_ctl(['-w', '-o', '-h ""', '-o', f'-k {socket_dir}', action], pgdata=data_dir, user=user)
        yield dsn, control


@pytest.mark.slow
def test_service_recovers_by_itself_after_the_database_restarts(make_app, private_server):
    dsn, control = private_server
    app = make_app(DATABASES={'default': dsn}, DB_POOL_MAX=2, DB_CONNECT_TIMEOUT=2)
    call = Caller(app.test_client())
    created = call('/probe/things/create', {'code': 'restart'}).get_json()
    control('stop')
    down = call('/probe/things/get', {'id': created['id']})
    assert down.status_code == 503 and down.headers['Retry-After'] == '1'
    assert app.test_client().get('/readyz').status_code == 503
    control('start')
    for _ in range(3):
        assert call('/probe/things/get', {'id': created['id']}).get_json() == created
    assert app.test_client().get('/readyz').status_code == 200


@pytest.mark.slow
def test_a_restart_between_requests_costs_no_error(make_app, private_server):
    dsn, control = private_server
    app = make_app(DATABASES={'default': dsn}, DB_POOL_MAX=2)
    call = Caller(app.test_client())
    assert call('/probe/things/get', {'id': 1}).status_code in (200, 404)
    control('restart')
    assert call('/probe/things/get', {'id': 1}).status_code in (200, 404)


def test_migrations_apply_once(database_url, call):
    assert migrate(database_url) == []
    assert call('/probe/migrations').get_json() == migration_ids()


@pytest.fixture()
def fresh_database(database_url):
    """An empty database of this test's own on the test server, dropped afterwards."""
    name = f'dbapi_migrate_race_{uuid.uuid4().hex[:8]}'
    yield recreate_database(database_url, name)
    drop_database(database_url, name)


@pytest.mark.slow
def test_replicas_migrating_together_apply_each_migration_once(fresh_database):
    fresh = fresh_database
    code = 'import sys; from lib.db.migrate import migrate; print(len(migrate(sys.argv[1])))'
    replicas = [subprocess.Popen([sys.executable, '-c', code, fresh], cwd=settings.BASE_DIR, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [replica.communicate(timeout=120) for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0] * 4, results
    assert sorted(int(out.strip().splitlines()[-1]) for out, _ in results) == [0, 0, 0, len(migration_ids())]
    assert run_sql(fresh, f'SELECT count(*) FROM {MIGRATION_TABLE}') == [(len(migration_ids()),)]
    psycopg2.connect(fresh).close()


def test_pool_waits_for_a_free_connection_within_its_timeout(make_app):
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=3000)
    results = []

    def hold():
        results.append(Caller(app.test_client())('/probe/hold', {'seconds': 0.3}).status_code)
    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    assert Caller(app.test_client())('/probe/things/get', {'id': 1}).status_code in (200, 404)
    holder.join()
    assert results == [200]


@pytest.mark.parametrize('encoding', ['br', 'identity'])
def test_a_stream_closed_early_gives_its_connection_back_compressed_or_not(make_app, encoding):
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=200)
    call = Caller(app.test_client())
    for _ in range(2):
        response = call('/probe/things/export', buffered=False, headers={'Accept-Encoding': encoding})
        assert (response.headers.get('Content-Encoding') == 'br') == (encoding == 'br')
        next(iter(response.response))
        response.close()
        assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0


def test_pool_slots_go_to_waiters_in_the_order_they_came():
    import threading
    import time

    from lib.db.pool import FairSlots
    slots, served = FairSlots(1), []
    assert slots.acquire(timeout=0)

    def wait_in_line(name):
        assert slots.acquire(timeout=5)
        served.append(name)
        slots.release()
    waiters = []
    for name in range(5):
        waiters.append(threading.Thread(target=wait_in_line, args=(name,)))
        waiters[-1].start()
        time.sleep(0.05)  # each in line before the next
    assert not slots.acquire(timeout=0), 'a newcomer does not pass the line'
    slots.release()
    for waiter in waiters:
        waiter.join(5)
    assert served == [0, 1, 2, 3, 4]
    assert slots.acquire(timeout=0) and not slots.acquire(timeout=0.05)


def test_a_slot_wait_that_times_out_leaves_the_line():
    from lib.db.pool import FairSlots
    slots = FairSlots(1)
    assert slots.acquire(timeout=0)
    assert not slots.acquire(timeout=0.05) and not slots.waiters
    slots.release()
    assert slots.free == 1


def test_cancel_requests_go_through_psycopg2s_own_libpq():
    # Not the fallback (connection.cancel(), which holds the GIL): lib/db/cancel.py found the libpq psycopg2 uses.
    assert LIBPQ is not None and LIBPQ.PQlibVersion() == psycopg2.extensions.libpq_version()


def test_a_cancel_the_server_does_not_take_lets_the_process_run_and_marks_the_connection():
    with throwaway_postgres('cancel-') as (dsn, data_dir):
        postmaster = int((data_dir / 'postmaster.pid').read_text().split()[0])
        conn = psycopg2.connect(dsn, connection_factory=PooledConnection)
        outcome = []
        query = threading.Thread(target=lambda: outcome.append(run_and_catch(conn, 'SELECT pg_sleep(30)')))
        query.start()
        time.sleep(0.3)
        os.kill(postmaster, signal.SIGSTOP)  # the kernel accepts the cancel's connection, nobody reads it
        try:
            ticks = []
            ticker = threading.Thread(target=lambda: [ticks.append(time.sleep(0.05)) for _ in range(20)])
            ticker.start()
            started = time.monotonic()
            cancel_running_query(conn)
            waited = time.monotonic() - started
            ticker.join()
        finally:
            os.kill(postmaster, signal.SIGCONT)
        query.join(10)
    assert 1 <= waited < 2, 'ACKNOWLEDGE_SECONDS, then it gives up'
    assert len(ticks) == 20, 'the other threads ran meanwhile'
    assert conn.cancel_unacknowledged, 'the pool throws such a connection away'
    assert outcome == ['57014'], 'the request the server took late cancelled the query'


def run_and_catch(conn, statement):
    """Run statement on conn; return the SQLSTATE it failed with, or None."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(statement)
    except psycopg2.Error as exc:
        return exc.pgcode
    return None
