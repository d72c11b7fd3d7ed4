"""The database layer: pooled connections always given back, session settings, recovery, migrations."""
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import psycopg2
import pytest

import settings
from lib.db.embedded import start_embedded
from lib.db.migrate import migrate
from tests.conftest import Caller, recreate_database, run_sql, scratch_folder

# One of each path through the pool: success, validation error, 404, SQL errors, a crash, a stream.
MIXED_CALLS = [
    ('/users/get', {'id': 1}), ('/users/get', {'id': 'x'}), ('/users/get', {'id': 10**12}),
    ('/probe/sqlstate', {'case': 'unique'}), ('/probe/sqlstate', {'case': 'data'}),
    ('/probe/sqlstate', {'case': 'syntax'}), ('/probe/crash', {}), ('/users/export', {}),
    ('/probe/sqlstate', {'case': 'timeout'}), ('/accounts/withdraw', {'account_id': 1, 'amount': '1'}),
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
        response = call('/users/export', buffered=False)
        response.close()
    assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0
    assert call('/users/get', {'id': 1}).status_code in (200, 404)


def test_a_stream_read_halfway_gives_its_connection_back(make_app, database_url):
    run_sql(database_url, "INSERT INTO users (email, name) SELECT 'half-' || g || '-' || %s || '@example.com', 'h' "
                          'FROM generate_series(1, 12000) g', (uuid.uuid4().hex,))
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=200)
    response = Caller(app.test_client())('/users/export', buffered=False)
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
    assert call('/users/get', {'id': 1}).status_code in (200, 404)
    run_sql(database_url, 'SELECT pg_terminate_backend(pid) FROM pg_stat_activity '
                          'WHERE application_name = %s AND datname = current_database()', ('dbapi:killed-test',))
    time.sleep(0.2)
    assert call('/users/get', {'id': 1}).status_code in (200, 404)
    assert app.extensions['dbapi'].pools['default'].gauges()['discarded'] == 1


@pytest.fixture()
def private_server():
    """A second embedded PostgreSQL of this test's own, to stop and start."""
    import pgserver
    from pgserver._commands import pg_ctl
    data_dir = Path(tempfile.mkdtemp(prefix='restart-', dir=scratch_folder())) / 'pg'
    dsn = start_embedded(data_dir, database='dbapi', stop_at_exit=False)
    migrate(dsn)
    server = pgserver.get_server(data_dir)

    def control(action):
        pg_ctl(['-w', '-o', '-h ""', '-o', f'-k {server.get_postmaster_info().socket_dir}', action],
               pgdata=data_dir, user=server.system_user)
    yield dsn, control
    server.cleanup()
    shutil.rmtree(data_dir.parent, ignore_errors=True)


@pytest.mark.slow
def test_service_recovers_by_itself_after_the_database_restarts(make_app, private_server):
    dsn, control = private_server
    app = make_app(DATABASES={'default': dsn}, DB_POOL_MAX=2, DB_CONNECT_TIMEOUT=2)
    call = Caller(app.test_client())
    created = call('/users/create', {'email': 'restart@example.com', 'name': 'R'}).get_json()
    control('stop')
    down = call('/users/get', {'id': created['id']})
    assert down.status_code == 503 and down.headers['Retry-After'] == '1'
    assert app.test_client().get('/readyz').status_code == 503
    control('start')
    for _ in range(3):
        assert call('/users/get', {'id': created['id']}).get_json() == created
    assert app.test_client().get('/readyz').status_code == 200


@pytest.mark.slow
def test_a_restart_between_requests_costs_no_error(make_app, private_server):
    dsn, control = private_server
    app = make_app(DATABASES={'default': dsn}, DB_POOL_MAX=2)
    call = Caller(app.test_client())
    assert call('/users/get', {'id': 1}).status_code in (200, 404)
    control('restart')
    assert call('/users/get', {'id': 1}).status_code in (200, 404)


def test_migrations_apply_once(database_url):
    assert migrate(database_url) == []
    applied = run_sql(database_url, 'SELECT migration_id FROM _yoyo_migration ORDER BY migration_id')
    assert [row[0] for row in applied] == ['0001_users', '0002_accounts', '0003_example_people']


@pytest.mark.slow
def test_replicas_migrating_together_apply_each_migration_once(database_url):
    server = run_sql(database_url, 'SELECT 1') and database_url
    fresh = recreate_database(server, f'dbapi_migrate_race_{uuid.uuid4().hex[:8]}')
    code = 'import sys; from lib.db.migrate import migrate; print(len(migrate(sys.argv[1])))'
    replicas = [subprocess.Popen([sys.executable, '-c', code, fresh], cwd=settings.BASE_DIR, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(4)]
    results = [replica.communicate(timeout=120) for replica in replicas]
    assert [replica.returncode for replica in replicas] == [0] * 4, results
    assert sorted(int(out.strip().splitlines()[-1]) for out, _ in results) == [0, 0, 0, 3]
    assert run_sql(fresh, 'SELECT count(*) FROM _yoyo_migration') == [(3,)]
    psycopg2.connect(fresh).close()


def test_pool_waits_for_a_free_connection_within_its_timeout(make_app):
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=3000)
    results = []

    def hold():
        results.append(Caller(app.test_client())('/probe/hold', {'seconds': 0.3}).status_code)
    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.1)
    assert Caller(app.test_client())('/users/get', {'id': 1}).status_code in (200, 404)
    holder.join()
    assert results == [200]


@pytest.mark.parametrize('encoding', ['br', 'identity'])
def test_a_stream_closed_early_gives_its_connection_back_compressed_or_not(make_app, encoding):
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=200)
    call = Caller(app.test_client())
    for _ in range(2):
        response = call('/users/export', buffered=False, headers={'Accept-Encoding': encoding})
        assert (response.headers.get('Content-Encoding') == 'br') == (encoding == 'br')
        next(iter(response.response))
        response.close()
        assert app.extensions['dbapi'].pools['default'].gauges()['in_use'] == 0
