"""Fixtures: a real PostgreSQL (embedded, or TEST_DATABASE_URL), app factories and authorised clients.

Helpers that are not fixtures live in tests/helpers.py.
"""
import itertools
import os
import sys
import textwrap

os.environ['ENVIRONMENT'] = 'test'  # before settings is imported anywhere

import pytest  # noqa: E402

import settings  # noqa: E402
from lib.db.embedded import start_embedded  # noqa: E402
from lib.db.migrate import apply_migrations  # noqa: E402
from tests.helpers import (ADMIN_TOKEN, BEARER_TOKENS, BUILT_APPS, PROBE_SQL, SCOPED_TOKEN,  # noqa: E402,F401
                           SINGLE_BEARER, THROWAWAY_DATA_DIRS, Caller, app_config, app_factory, close_pools,
                           discard_data_dir, drop_database, recreate_database, run_sql, scratch_folder)

# The name tests/test_logging.py still imports; the token now limits its client to the probe module.
EXAMPLE_ONLY_TOKEN = SCOPED_TOKEN
# One database per test session, so that sessions running side by side do not disturb each other.
TEST_DB = f'dbapi_test_{os.getpid()}'
package_numbers = itertools.count()


@pytest.fixture(scope='session', autouse=True)
def stop_throwaway_servers():
    """Stop, at the end of the session, every PostgreSQL a test started and did not stop (it failed half-way)."""
    yield
    for data_dir in list(THROWAWAY_DATA_DIRS):
        discard_data_dir(data_dir)


@pytest.fixture(scope='session')
def database_url():
    """A migrated database: TEST_DATABASE_URL as given, else a fresh one on the embedded server."""
    dsn = server = os.environ.get('TEST_DATABASE_URL')
    if not dsn:
        server = start_embedded(settings.BASE_DIR / '.data' / 'pg-test', database='postgres')
        dsn = recreate_database(server, TEST_DB)
    apply_migrations(dsn)  # a failing migration is the one line manage.py prints, its file and line named
    run_sql(dsn, PROBE_SQL.read_text())
    yield dsn
    if not os.environ.get('TEST_DATABASE_URL'):
        drop_database(server, TEST_DB)


@pytest.fixture(scope='session')
def make_app(database_url):
    """A factory of apps on the test database; keyword arguments override the config."""
    with app_factory(database_url) as factory:
        yield factory


@pytest.fixture(autouse=True)
def close_pools_of_apps_built_by_the_test():
    """Close, when a test ends, the pools of the apps it (or its function-scoped fixtures, set up after this one)
    built: the session's factory kept every app's idle connections until the session ended, and the dozens of apps
    a module of tests builds then made the server refuse connections (too many clients)."""
    first = len(BUILT_APPS)
    yield
    close_pools(BUILT_APPS[first:])


@pytest.fixture(scope='session')
def app(make_app):
    """The default test app: every module plus the test-only ones (tests/fixture_modules)."""
    return make_app()


@pytest.fixture()
def client(app):
    """A Flask test client of the default app."""
    return app.test_client()


@pytest.fixture()
def call(client):
    """POST JSON with the admin token: call('/probe/echo', {'a': 1})."""
    return Caller(client)


@pytest.fixture()
def module_package(tmp_path, monkeypatch):
    """Return a function that writes a throwaway modules package ({relative path: text}) and returns its name."""
    monkeypatch.syspath_prepend(str(tmp_path))

    def write(files):
        name = f'scratch_modules_{next(package_numbers)}'
        for relative, text in {'__init__.py': '', **files}.items():
            path = tmp_path / name / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(textwrap.dedent(text))
        return name
    yield write
    for module in [m for m in sys.modules if m.startswith('scratch_modules_')]:
        del sys.modules[module]
