"""The example modules' contract tests again, with every database connection going through a real
pgbouncer in transaction mode (the native one `make stack STACK_PGBOUNCER=1` runs)."""
import os
import signal

import pytest

import settings
from ops import pgbouncer
from ops.stack import Child
from tests.conftest import app, make_app  # noqa: F401  (registered again here: built on the DSN below)

from ..conftest import free_ports, port_open, require_programs, shared_run_dir, wait_for


@pytest.fixture(scope='session')
def database_url(database_url):
    """The test database, reached through pgbouncer: the DSN every app of these tests uses."""
    require_programs('pgbouncer')
    port = free_ports(1)
    with shared_run_dir('dbapi-pgbouncer-test-') as run_dir:
        yield from serve_through_pgbouncer(database_url, run_dir / 'pgbouncer', port)


def serve_through_pgbouncer(server_dsn, run_dir, port):
    """Run pgbouncer in front of server_dsn while the caller is suspended; yield the DSN through it."""
    argv, bouncer_dsn, user = pgbouncer.write_config(run_dir, server_dsn, port, settings.DB_STATEMENT_TIMEOUT_MS)
    bouncer = Child('pgbouncer', argv, dict(os.environ), signal.SIGINT, user=user).start()
    try:
        wait_for(lambda: bouncer.exit_code() is not None or port_open(port), 15, 'pgbouncer did not start')
        assert bouncer.exit_code() is None, 'pgbouncer exited at start'
        yield bouncer_dsn
    finally:
        bouncer.stop()
