"""tests/test_example_modules.py, collected again here, where database_url goes through pgbouncer."""
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from tests.test_example_modules import *  # noqa: F401,F403

from ..conftest import show_pgbouncer

pytestmark = pytest.mark.slow


def test_these_apps_reach_the_database_through_pgbouncer_in_transaction_mode(app, database_url):
    assert parse_dsn(app.extensions['dbapi'].pools['default'].dsn)['host'] == '127.0.0.1'
    pools = show_pgbouncer(make_dsn(database_url, dbname='pgbouncer'), 'SHOW POOLS')
    database = parse_dsn(database_url)['dbname']
    assert [pool['pool_mode'] for pool in pools if pool['database'] == database] == ['transaction']
