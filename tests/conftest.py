"""Fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), app factories and authorised clients."""
import hashlib
import json
import os

os.environ['ENVIRONMENT'] = 'test'  # before settings is imported anywhere

import psycopg2  # noqa: E402
import pytest  # noqa: E402
from psycopg2 import sql  # noqa: E402

import settings  # noqa: E402
from app import create_app  # noqa: E402
from lib.db.embedded import start_embedded  # noqa: E402
from lib.db.migrate import migrate  # noqa: E402

# One database per test session, so that sessions running side by side do not disturb each other.
TEST_DB = f'dbapi_test_{os.getpid()}'
ADMIN_TOKEN = 'admin-token-0123456789'
EXAMPLE_ONLY_TOKEN = 'example-only-token-42'
SINGLE_BEARER = 'single-bearer-token-7'
BEARER_TOKENS = {
    'admin': {'token': ADMIN_TOKEN},
    'example-reader': {'sha256': hashlib.sha256(EXAMPLE_ONLY_TOKEN.encode()).hexdigest(), 'modules': ['example']},
}
PROBE_SQL = settings.BASE_DIR / 'tests' / 'fixture_modules' / 'probe' / 'setup.sql'


def recreate_database(server_dsn, name):
    """Drop and create database name on the server; return its DSN."""
    conn = psycopg2.connect(server_dsn)
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))
        cursor.execute(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name)))
    conn.close()
    return psycopg2.extensions.make_dsn(server_dsn, dbname=name)


def scratch_folder():
    """Return .data/, where throwaway embedded servers live (git ignores it; not under pytest's basetemp,
    which a concurrent pytest session resets to mode 0700, locking out the server's unprivileged user)."""
    folder = settings.BASE_DIR / '.data'
    folder.mkdir(exist_ok=True)
    return folder


def run_sql(dsn, text, params=None):
    """Run SQL on dsn in autocommit and return all rows (or None)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(text, params)
            return cursor.fetchall() if cursor.description else None
    finally:
        conn.close()


@pytest.fixture(scope='session')
def database_url():
    """A migrated database: TEST_DATABASE_URL as given, else a fresh one on the embedded server."""
    dsn = server = os.environ.get('TEST_DATABASE_URL')
    if not dsn:
        server = start_embedded(settings.BASE_DIR / '.data' / 'pg-test', database='postgres')
        dsn = recreate_database(server, TEST_DB)
    migrate(dsn)
    run_sql(dsn, PROBE_SQL.read_text())
    yield dsn
    if not os.environ.get('TEST_DATABASE_URL'):
        run_sql(server, f'DROP DATABASE IF EXISTS {TEST_DB} WITH (FORCE)')


def app_config(database_url, **overrides):
    """Return create_app overrides for a test app on database_url."""
    config = dict(DATABASES={'default': database_url}, BEARER=SINGLE_BEARER, BEARER_TOKENS=json.dumps(BEARER_TOKENS),
                  BEARER_TOKENS_FILE=None, MODULE_PACKAGES=['modules', 'tests.fixture_modules'], TESTING=True)
    config.update(overrides)
    return config


@pytest.fixture(scope='session')
def make_app(database_url):
    """A factory of apps on the test database; keyword arguments override the config."""
    apps = []

    def factory(**overrides):
        app = create_app(app_config(database_url, **overrides))
        apps.append(app)
        return app
    yield factory
    for app in apps:
        for pool in app.extensions['dbapi'].pools.values():
            pool.close()


@pytest.fixture(scope='session')
def app(make_app):
    """The default test app: every module plus the probe fixture module."""
    return make_app()


class Caller:
    """A test client that POSTs JSON with a bearer token."""

    def __init__(self, client, token=ADMIN_TOKEN):
        self.client = client
        self.token = token

    def __call__(self, path, body=None, token=None, **kwargs):
        """POST body as JSON to path and return the response."""
        headers = kwargs.pop('headers', {})
        # Buffered: the whole body is read and the response closed, as a WSGI server would.
        kwargs.setdefault('buffered', True)
        token = self.token if token is None else token
        if token:
            headers.setdefault('Authorization', f'Bearer {token}')
        return self.client.post(path, json={} if body is None else body, headers=headers, **kwargs)


@pytest.fixture()
def client(app):
    """A Flask test client of the default app."""
    return app.test_client()


@pytest.fixture()
def call(client):
    """POST JSON with the admin token: call('/users/get', {'id': 1})."""
    return Caller(client)
