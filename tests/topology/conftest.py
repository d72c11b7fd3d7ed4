"""Fixtures of the topology tests; their helpers live in tests/topology/helpers.py."""
import os

import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from lib.db.migrate import migrate
from tests.helpers import PROBE_SQL, drop_database, recreate_database, run_sql

from .helpers import TOPOLOGY_DB_PASSWORD

# One per test session, as the main test database is.
TOPOLOGY_DB = f'dbapi_topology_{os.getpid()}'


@pytest.fixture(scope='session')
def topology_database_url(database_url):
    """A migrated database of the topology tests' own, so their rows never meet other tests' counts."""
    server_dsn = make_dsn(database_url, dbname='postgres')
    dsn = recreate_database(server_dsn, TOPOLOGY_DB)
    migrate(dsn)
    run_sql(dsn, PROBE_SQL.read_text())
    yield dsn if parse_dsn(dsn).get('password') else make_dsn(dsn, password=TOPOLOGY_DB_PASSWORD)
    drop_database(server_dsn, TOPOLOGY_DB)
