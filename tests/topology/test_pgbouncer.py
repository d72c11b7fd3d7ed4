"""The whole chain of `make stack STACK_PGBOUNCER=1` (nginx, replicas, pgbouncer in transaction mode):
requests and concurrent transactions work, the statement timeout still holds, and the pgbouncer
image's entrypoint works. tests/test_example_modules.py runs the modules' contract tests on pgbouncer too."""
import os
import subprocess
import sys
import threading
import time
import uuid

import psycopg2
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

import settings
from ops import pgbouncer
from tests.helpers import (PROBE_SQL, Caller, app_factory, free_ports, port_open, require_programs, run_sql,
                           running_pgbouncer, show_pgbouncer, stop_postgres, throwaway_postgres, wait_for)

from .helpers import running_stack

pytestmark = pytest.mark.slow

STATEMENT_TIMEOUT_MS = 1500
ENTRYPOINT = pgbouncer.BASE_DIR / 'ops' / 'pgbouncer-entrypoint.sh'


@pytest.fixture(scope='module')
def stack(tmp_path_factory, topology_database_url):
    """Two replicas behind nginx whose database connections go through pgbouncer."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=2, pgbouncer=True,
                       DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS)) as running:
        yield running


def bouncer_dsn(database_url, port, dbname):
    """Return a DSN of dbname on the pgbouncer at port, with the database's user and password."""
    parts = parse_dsn(database_url)
    return make_dsn(host='127.0.0.1', port=port, dbname=dbname, user=parts['user'], password=parts['password'])


def ok(reply, status=200):
    """Return the JSON of reply after checking its status."""
    assert reply.status == status, reply.body
    return reply.json()


def test_reads_and_writes_through_the_whole_chain(stack):
    code = f'bouncer-{uuid.uuid4().hex[:10]}'
    thing = ok(stack.post('/probe/things/create', {'code': code}), 201)
    assert stack.post('/probe/things/create', {'code': code}).status == 409
    assert ok(stack.post('/probe/things/get', {'id': thing['id']})) == thing
    assert thing in ok(stack.post('/probe/things/export'))
    assert stack.post('/probe/things/get', {'id': 10**12}).status == 404


def test_concurrent_transactions_neither_lose_nor_make_anything(stack):
    things = [ok(stack.post('/probe/things/create', {'code': f'c-{uuid.uuid4().hex}', 'quantity': 100}), 201)['id']
              for _ in range(3)]

    def move_round(offset):
        for step in range(10):
            source, target = things[(offset + step) % 3], things[(offset + step + 1) % 3]
            reply = stack.post('/probe/things/move', {'from_id': source, 'to_id': target, 'amount': 7})
            assert reply.status in (200, 422, 503), reply.body
    threads = [threading.Thread(target=move_round, args=(offset,)) for offset in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert sum(ok(stack.post('/probe/things/get', {'id': thing}))['quantity'] for thing in things) == 300


def test_the_statement_timeout_holds_through_pgbouncer(stack):
    """pgbouncer drops the `options` startup parameter; its connect_query sets the timeout instead."""
    reply = stack.post('/probe/hold', {'seconds': STATEMENT_TIMEOUT_MS / 1000 * 2})
    assert reply.status == 504 and reply.json()['sqlstate'] == '57014'


def test_sessions_through_pgbouncer_keep_dbapis_settings_after_every_reset(stack):
    """pgbouncer drops startup options, so each reset SETs the settings again, application_name among them (RESET
    ALL alone returned it to the empty name pgbouncer's server connection started with)."""
    states = [ok(stack.post('/session/state')) for _ in range(8)]
    assert {(state['application_name'].partition(':')[0], state['time_zone'], state['statement_timeout'])
            for state in states} == {(settings.APP_ID, 'UTC', f'{STATEMENT_TIMEOUT_MS}ms')}


def test_replicas_reach_the_database_through_pgbouncer_in_transaction_mode(stack, topology_database_url):
    stack.post('/probe/things/export')
    console = bouncer_dsn(topology_database_url, stack.pgbouncer_port, 'pgbouncer')
    database = parse_dsn(topology_database_url)['dbname']
    pools = [pool for pool in show_pgbouncer(console, 'SHOW POOLS') if pool['database'] == database]
    assert pools and all(pool['pool_mode'] == 'transaction' for pool in pools)
    stats = {row['database']: row for row in show_pgbouncer(console, 'SHOW STATS')}
    assert stats[database]['total_xact_count'] > 0
    clients = [client for client in show_pgbouncer(console, 'SHOW CLIENTS') if client['database'] == database]
    assert clients, 'no replica holds a connection to pgbouncer'


def test_the_image_entrypoint_renders_the_same_template_and_serves(tmp_path, topology_database_url):
    """ops/pgbouncer-entrypoint.sh (the image's) run natively against the test database."""
    require_programs('pgbouncer', 'envsubst')
    server = pgbouncer.server_parts(topology_database_url)
    port = free_ports(1)
    (tmp_path / 'password').write_text(server['password'] + '\n')
    environment = dict(os.environ, PGBOUNCER_TEMPLATE=str(pgbouncer.TEMPLATE), PGBOUNCER_RUN_DIR=str(tmp_path / 'run'),
                       PGBOUNCER_DB_HOST=server['host'], PGBOUNCER_DB_PORT=str(server['port']),
                       PGBOUNCER_DB_USER=server['user'], PGBOUNCER_DB_PASS_FILE=str(tmp_path / 'password'),
                       PGBOUNCER_LISTEN_ADDR='127.0.0.1', PGBOUNCER_PORT=str(port), DB_STATEMENT_TIMEOUT_MS='1234')
    # Run as root, the script is given pgbouncer's -u, as the native stack does; in the image it is not.
    user = pgbouncer.run_as(server)
    process = subprocess.Popen(['sh', str(ENTRYPOINT), *(['-u', user] if user else [])], env=environment)
    try:
        wait_for(lambda: process.poll() is not None or port_open(port), 15, 'pgbouncer did not start')
        conn = psycopg2.connect(bouncer_dsn(topology_database_url, port, parse_dsn(topology_database_url)['dbname']))
        with conn, conn.cursor() as cursor:
            cursor.execute('SHOW statement_timeout')
            assert cursor.fetchone() == ('1234ms',)
        conn.close()
    finally:
        process.terminate()
        process.wait(10)


def test_auth_file_lines_escape_quotes():
    assert pgbouncer.auth_line('a"b', 'p "q"') == '"a""b" "p ""q"""\n'


def test_a_test_app_on_the_native_pgbouncer_runs_in_transaction_mode(database_url):
    """What tests/test_example_modules.py's pgbouncer runs stand on."""
    with running_pgbouncer(database_url) as bouncer_dsn, app_factory(bouncer_dsn) as make_app:
        app = make_app()
        assert Caller(app.test_client())('/probe/things/create', {'code': uuid.uuid4().hex}).status_code == 201
        pools = show_pgbouncer(make_dsn(bouncer_dsn, dbname='pgbouncer'), 'SHOW POOLS')
    database = parse_dsn(database_url)['dbname']
    assert [pool['pool_mode'] for pool in pools if pool['database'] == database] == ['transaction']
    assert parse_dsn(bouncer_dsn)['host'] == '127.0.0.1'


def test_a_database_restart_behind_pgbouncer_ends_for_the_callers_once_it_is_back():
    with throwaway_postgres('restarting-') as (server_dsn, data_dir):
        run_sql(server_dsn, PROBE_SQL.read_text())
        with running_pgbouncer(server_dsn) as through_bouncer, app_factory(through_bouncer) as make_app:
            call = Caller(make_app(DB_POOL_TIMEOUT_MS=1000).test_client())

            def status():
                return call('/probe/things/get', {'id': 1}).status_code  # 404: the query ran and found nothing
            assert status() == 404
            stop_postgres(data_dir)
            assert status() == 503  # pgbouncer's login to PostgreSQL failed
            start_again(data_dir)
            back = time.monotonic()
            wait_for(lambda: status() == 404, 20, 'the callers never got through again')
            waited = time.monotonic() - back
    assert waited < 5, f'{waited:.1f} s after PostgreSQL was back (pgbouncer retries its login every second)'


def start_again(data_dir):
    """Start the stopped embedded PostgreSQL of data_dir, from a process of its own (pgserver keeps the servers it
    started in this one as running)."""
    subprocess.run([sys.executable, '-c', 'import sys, pathlib; from lib.db.embedded import start_embedded; '
                    'start_embedded(pathlib.Path(sys.argv[1]), stop_at_exit=False)', str(data_dir)],
                   cwd=settings.BASE_DIR, check=True, timeout=60)
