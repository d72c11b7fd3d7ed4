"""A start that fails once, clearly and without secrets (CONTRACT section 7): each bad setting, token, module or
migration stops `manage.py` before anything starts, with one line on stderr naming it and a non-zero exit code."""
import contextlib
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.errors
import pytest
from psycopg2.extensions import make_dsn
from yoyo import read_migrations

import manage
import settings
from lib.db.migrate import (CHECKSUM_TABLE, MIGRATION_LOCK_KEY, MIGRATION_TABLE, MIGRATIONS_DIR, in_one_line,
                            yoyo_backend)
from lib.errors import ImproperlyConfigured, StartupError
from lib.process import COMMAND_STOP, StartInterrupted
from tests.helpers import (ADMIN_TOKEN, PROBE_SQL, QUOTING_TOKEN, assert_quoted_safely, broken_module,
                           code_raising_secrets, drop_database, free_port, recreate_database, run_sql,
                           server_environment, wait_for)

SECRET = 'pa55-Secret-x9'


def run_manage(command, tmp_path=None, **environ):
    """Run `python manage.py command` with environ over the test servers' environment; return the result."""
    base = {key: value for key, value in server_environment(**environ).items()
            if not key.startswith('DEFAULT_DB') or key in environ}
    if tmp_path is not None:
        base['PYTHONPATH'] = os.pathsep.join([str(tmp_path), str(settings.BASE_DIR)])
    return subprocess.run([sys.executable, 'manage.py', command], cwd=settings.BASE_DIR, env=base,
                          capture_output=True, text=True, timeout=120)


def assert_one_line_failure(result, *names, secrets=(SECRET,)):
    """Check the process failed with exactly one line on stderr naming names, and no secret anywhere."""
    assert result.returncode != 0, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith('dbapi: ')
    for name in names:
        assert name in lines[0]
    for secret in secrets:
        assert secret not in result.stdout + result.stderr
    assert 'dbapi serves on' not in result.stdout
    return lines[0]


@pytest.mark.parametrize('url, fragment', [
    (f'postgresql://dbapi:{SECRET}%zz@127.0.0.1:1/db', 'percent-encode'),        # a raw % in the password
    (f'postgresql://dbapi:{SECRET} more@127.0.0.1:1/db', 'percent-encode'),      # an unquoted space in a URL
    (f'postgresql://dbapi:{SECRET}@more@127.0.0.1:1/db', 'percent-encode'),      # a raw @ in the password
    # the same with the host in ?host=, which hid the rest of the password read as the host (trial BF)
    (f'postgresql://dbapi:{SECRET}@more@/db?host=127.0.0.1&port=1', 'percent-encode'),
    # a query's @ with no path before it: libpq read the query as the user (trial BI), and a raw ? in a password,
    # which the URL cannot tell from it
    (f'postgresql://127.0.0.1:1?user=dbapi&password={SECRET}@more', 'percent-encode'),
    (f'postgresql://dbapi:{SECRET}?more@127.0.0.1:1/db', 'percent-encode'),
    # a raw / in the password: libpq read its rest as the database's name, and its error quoted it (trial BF)
    (f'postgresql://dbapi:/{SECRET}more@/db?host=127.0.0.1&port=1', 'percent-encode'),
    (f'postgresql://dbapi:5432/{SECRET}more@127.0.0.1:1/db', 'percent-encode'),
    (f'host=127.0.0.1 password={SECRET} more dbname=db', 'single quotes'),        # an unquoted space in key=value
    # a mistyped scheme: libpq reads key=value and quotes the whole string, password and all
    (f'postgresq://dbapi:{SECRET}more@127.0.0.1:1/db', 'a URL starts with postgresql://'),
    (f' postgresql://dbapi:{SECRET}more@127.0.0.1:1/db', 'a URL starts with postgresql://'),
    (f'POSTGRESQL://dbapi:{SECRET}more@127.0.0.1:1/db', 'a URL starts with postgresql://'),
    (f'postgresql:/dbapi:{SECRET}more@127.0.0.1:1/db', 'a URL starts with postgresql://'),
    (f'postgres//dbapi:{SECRET}more@127.0.0.1:1/db', 'a URL starts with postgresql://'),
    # the pools and the start's checks read it (a DSN's own, above 0, wins over DB_CONNECT_TIMEOUT)
    (f'postgresql://dbapi:{SECRET}more@127.0.0.1:1/db?connect_timeout=5s',
     "DATABASE_URL's connect_timeout must be a whole number of seconds, 600 at most"),
    # past about 24 days it overflowed the wait that applies it: a traceback (trial T)
    (f'postgresql://dbapi:{SECRET}more@127.0.0.1:1/db?connect_timeout=2147484',
     "DATABASE_URL's connect_timeout must be a whole number of seconds, 600 at most"),
    (f'postgresql://dbapi:{SECRET}more@127.0.0.1:1/db?connect_timeout=601', "600 at most"),
    # the password as the timeout, or within it (trial AA: shown), in both forms, percent-encoded too
    (f'postgresql://dbapi:{SECRET}more@127.0.0.1:1/db?connect_timeout={SECRET}more', '600 at most'),
    (f'postgresql://dbapi:{SECRET}more@127.0.0.1:1/db?connect_timeout=zz{SECRET}morezz', '600 at most'),
    (f"host=127.0.0.1 password={SECRET}more dbname=db connect_timeout={SECRET}more", '600 at most'),
    (f'postgresql://dbapi:{SECRET}%40more@127.0.0.1:1/db?connect_timeout={SECRET}%40more', '600 at most'),
])
def test_a_malformed_database_url_stops_the_start_without_showing_its_password(url, fragment):
    line = assert_one_line_failure(run_manage('migrate', DATABASE_URL=url), 'DATABASE_URL', fragment,
                                   secrets=(SECRET, 'more'))
    assert 'Traceback' not in line


def test_a_database_out_of_reach_is_one_line_without_its_password():
    result = run_manage('migrate', DATABASE_URL=f'postgresql://dbapi:{SECRET}@127.0.0.1:1/db?connect_timeout=2')
    assert 'cannot be reached' in assert_one_line_failure(result)


def test_a_malformed_bind_stops_the_start_in_one_line():
    assert_one_line_failure(run_manage('migrate', BIND='127.0.0.1'), 'BIND must be one host:port')


def test_a_named_database_without_its_settings_stops_the_start():
    result = run_manage('migrate', DB_NAMES='default,reports')
    assert_one_line_failure(result, "DB_NAMES names 'reports'", 'REPORTS_DATABASE_URL')


def test_a_named_database_out_of_reach_stops_serve_without_its_password(database_url):
    result = run_manage('serve', DATABASE_URL=database_url, DB_NAMES='default,reports', PORT=str(free_port()),
                        REPORTS_DATABASE_URL=f'postgresql://dbapi:{SECRET}@127.0.0.1:1/r?connect_timeout=2')
    assert "the database 'reports' cannot be reached" in assert_one_line_failure(result)


def test_a_log_path_that_cannot_be_written_stops_the_start(tmp_path):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    assert_one_line_failure(run_manage('migrate', LOG_PATH=str(blocker / 'logs')), 'LOG_PATH', 'not writable')


def test_a_log_path_in_a_kernel_file_system_says_it_takes_no_files():
    """/proc exists and makes no file: the kernel's error said "No such file or directory"."""
    assert_one_line_failure(run_manage('migrate', LOG_PATH='/proc'), 'LOG_PATH /proc is not writable (a folder that '
                            'takes no new files')


@contextlib.contextmanager
def mounted_tmpfs(path, options):
    """Mount a tmpfs with options on path for the block; skip where mounting is not allowed."""
    path.mkdir()
    if subprocess.run(['mount', '-t', 'tmpfs', '-o', options, 'tmpfs', str(path)], capture_output=True).returncode:
        pytest.skip('mounting a tmpfs needs root and CAP_SYS_ADMIN')
    try:
        yield path
    finally:
        subprocess.run(['umount', str(path)], check=True)


@pytest.mark.parametrize('options, reason', [('ro,size=64k', 'Read-only file system'),
                                             ('size=4k', 'No space left on device')])
def test_a_log_path_on_a_read_only_or_full_disk_stops_the_start(tmp_path, options, reason):
    with mounted_tmpfs(tmp_path / 'disk', options) as disk:
        if 'ro' not in options:
            (disk / 'filler').write_bytes(b'x' * 4096)  # the whole disk
        result = run_manage('migrate', LOG_PATH=str(disk))
    assert reason in assert_one_line_failure(result, 'LOG_PATH')


@pytest.mark.parametrize('environ, name', [
    ({'BEARER': 's3cret!token#1'}, 'BEARER'),
    ({'BEARER_TOKENS': json.dumps({'reports': {'token': 's3cret!token#1'}})}, "bearer client 'reports'"),
])
def test_a_token_no_bearer_header_can_carry_stops_the_start(environ, name):
    line = assert_one_line_failure(run_manage('migrate', **environ), name, 'RFC 6750', secrets=('s3cret!token#1',))
    assert 's3cret' not in line


@pytest.mark.parametrize('command', ['migrate', 'repair'])
@pytest.mark.parametrize('tokens, words', [('{"a": {"token": "test"}}', '"[REDACTED]"'),  # ENVIRONMENT is test
                                           ('{"a": {"token": "info"}}', '"[REDACTED]"')])  # a level
def test_a_token_that_every_log_line_holds_stops_every_command_in_one_line(command, tokens, words):
    """`serve` stopped; `migrate` wrote its lines with service.environment or log.level as [REDACTED] (trial AA)."""
    result = run_manage(command, BEARER_TOKENS=tokens)
    assert_one_line_failure(result, 'a bearer token', 'every log line holds')
    assert words not in result.stdout


@pytest.mark.parametrize('port', ['eighty', '8_080', '８０８０', '8080.0', '8080\x1c'])  # int() reads 2 and 3
def test_a_bad_setting_stops_the_start_in_one_line(port):
    assert_one_line_failure(run_manage('migrate', PORT=port), 'PORT must be an integer, in ASCII digits')


@pytest.mark.parametrize('name, value, said', [
    ('MIGRATION_LOCK_TIMEOUT_MS', '0' * 5000 + '1', 'MIGRATION_LOCK_TIMEOUT_MS must be between 0 and 2147483647'),
    ('PORT', '-' + '9' * 5000, 'PORT must be between 1 and 65535'),
    ('BIND', '127.0.0.1:' + '9' * 4400, 'BIND must be one host:port'),
    ('DATABASE_URL', 'postgresql://u@h/db?connect_timeout=' + '9' * 5001, "DATABASE_URL's connect_timeout must be"),
    ('DEFAULT_DB_PORT', '5' * 5000, 'DEFAULT_DB_PORT must be a port number'),
    ('DATABASE_URL', 'postgresql://u@127.0.0.1:' + '5' * 5000 + '/db', "DATABASE_URL's port must be a port number"),
])
def test_an_integer_of_more_digits_than_python_converts_stops_the_start_in_one_line(name, value, said):
    """int() refuses text of more than 4,300 digits: a ValueError's traceback (trial W)."""
    assert_one_line_failure(run_manage('migrate', **{name: value}), said)


@pytest.mark.parametrize('port', ['5432x', '５４３２', '-1', '99999', 'x,5432', '5432,-1'])
def test_a_database_port_that_is_no_port_stops_the_start_naming_it(port):
    """libpq refused it at the first connection: "the database cannot be reached", naming no setting (trial W)."""
    line = assert_one_line_failure(run_manage('migrate', DEFAULT_DB_HOST='127.0.0.1', DEFAULT_DB_PORT=port),
                                   'DEFAULT_DB_PORT must be a port number from 1 to 65535')
    assert 'cannot be reached' not in line


@pytest.mark.parametrize('port', ['99999', '0'])
def test_a_database_urls_port_that_is_no_port_stops_the_start_naming_it(port):
    """The same in a URL (trial Z)."""
    line = assert_one_line_failure(run_manage('migrate', DATABASE_URL=f'postgresql://u@127.0.0.1:{port}/db'),
                                   "DATABASE_URL's port must be a port number from 1 to 65535")
    assert 'cannot be reached' not in line


@pytest.mark.parametrize('environ, said', [
    ({'DEFAULT_DB_HOST': '127.0.0.1', 'DEFAULT_DB_PORT': '5432,5433'}, 'DEFAULT_DB_PORT lists 2 ports'),
    ({'DEFAULT_DB_PORT': '5432,5433'}, 'DEFAULT_DB_PORT lists 2 ports'),  # the one default host
    ({'DEFAULT_DB_HOST': '127.0.0.1', 'DEFAULT_DB_PORT': '5432,'}, 'DEFAULT_DB_PORT lists 2 ports'),
    ({'DEFAULT_DB_HOST': 'a,b,c', 'DEFAULT_DB_PORT': '5432,5433'}, 'DEFAULT_DB_PORT lists 2 ports'),
    ({'DATABASE_URL': f'host=a,b,c port=5432,5433 password={SECRET}'}, "DATABASE_URL's port lists 2 ports"),
    ({'DATABASE_URL': f'postgresql://u:{SECRET}@a,b/db?port=1,2,3'}, "DATABASE_URL's port lists 3 ports"),
])
def test_ports_that_are_not_one_per_host_stop_the_start_naming_the_setting(environ, said):
    """libpq refused them at the first connection ("could not match 2 port numbers to 1 hosts"), naming no setting,
    and gunicorn served on with them (trial AA)."""
    line = assert_one_line_failure(run_manage('migrate', **environ), said, 'give one port, or one per host')
    assert 'cannot be reached' not in line


@pytest.mark.parametrize('dsn, password', [
    ('postgresql://u:ab#cd@127.0.0.1/db', 'ab#cd'), ('postgresql://u:ab%3Fcd@127.0.0.1/db', 'ab?cd'),
    ('postgresql://u@h?host=/tmp&password=a@b', 'a@b'), ('postgresql://h/db?password=a@b', 'a@b')])
def test_a_raw_hash_in_a_url_password_and_an_at_in_its_query_after_a_user_or_a_path_are_read_as_meant(dsn, password):
    """libpq ends the user and password at the first @ before any /: a raw # was refused (trial BG), and an @ in
    the query is a value's once a user or a path comes before it."""
    assert settings.checked_dsn('DATABASE_URL', dsn) == dsn
    assert psycopg2.extensions.parse_dsn(dsn)['password'] == password


@pytest.mark.parametrize('dsn', ['postgresql://u@127.0.0.1:5432,127.0.0.1/db', 'host=127.0.0.1,127.0.0.1 port=,5433',
                                 'postgresql://u@127.0.0.1:/db'])
def test_an_empty_port_in_a_list_is_libpqs_default_port_and_accepted(dsn):
    """libpq reads an empty port, alone or in a list, as its default port; the check refused a URL whose first host
    alone has a port (its ports are `5432,`) before it started (noted in session 23)."""
    assert settings.checked_dsn('DATABASE_URL', dsn) == dsn
    psycopg2.extensions.parse_dsn(dsn)  # libpq takes it too


@pytest.mark.parametrize('name, value', [
    ('DATABASE_URL', f'postgresql://postgres:{SECRET}\udc85@/db?host=/tmp'),  # a raw byte 0x85, as bash's $'\x85'
    ('DEFAULT_DB_PASS', f'{SECRET}\udc85'), ('LOG_LEVEL', 'INFO\udcff')])
def test_a_setting_that_is_not_utf8_stops_the_start_in_one_line(name, value):
    """psycopg2's UnicodeEncodeError, a traceback (trial W); the line names the variable, never its text."""
    assert_one_line_failure(run_manage('migrate', **{name: value}), f'{name} is not UTF-8 text')


@pytest.mark.parametrize('name', ['DEFAULT_DB_PASS_FILE', 'BEARER_TOKENS_FILE'])
def test_a_secret_file_that_is_not_utf8_stops_the_start_in_one_line(tmp_path, name):
    (tmp_path / 'secret').write_bytes(SECRET.encode() + b'\x85')
    environ = {name: str(tmp_path / 'secret'), **({'DEFAULT_DB_HOST': '127.0.0.1'} if 'DB' in name else {})}
    assert_one_line_failure(run_manage('migrate', **environ), f'{name} is not UTF-8 text')


def test_an_env_file_that_is_not_utf8_is_refused_naming_it(tmp_path):
    """python-dotenv's UnicodeDecodeError, a traceback (trial W)."""
    (tmp_path / '.env').write_bytes(b'MIGRATION_LOCK_TIMEOUT_MS=5\n# caf\xe9\n')
    with pytest.raises(ImproperlyConfigured, match=r'^env/x/\.env is not UTF-8 text'):
        settings.load_env_file(tmp_path / '.env', 'env/x/.env')
    assert settings.load_env_file(tmp_path / 'none', 'env/x/.env') is None  # no file: nothing to set


@pytest.mark.parametrize('folder, reason', [('/proc', 'takes no new files'), ('/etc/hostname', 'is a file'),
                                            ('/proc/dbapi-metrics', 'No such file or directory'),
                                            ('/tmp/' + 'a' * 300, 'File name too long')])  # a traceback (trial M)
def test_a_metrics_folder_that_cannot_be_written_stops_the_start_in_one_line(folder, reason):
    """It was prometheus_client's traceback at the first metric, after the migrations (trial K)."""
    result = run_manage('migrate', PROMETHEUS_MULTIPROC_DIR=folder)
    assert reason in assert_one_line_failure(result, f'PROMETHEUS_MULTIPROC_DIR {folder}')


def test_a_session_hook_naming_no_function_stops_serve_in_one_line(database_url):
    result = run_manage('serve', DATABASE_URL=database_url, DB_RESET='tests.session_hooks:nothing', PORT='1')
    assert_one_line_failure(result, 'DB_RESET: tests.session_hooks:nothing cannot be imported')


@pytest.mark.parametrize('packages, named', [
    ('no_such_package', "MODULE_PACKAGES names 'no_such_package'"),  # not importable
    ('settings', "MODULE_PACKAGES names 'settings'"),  # no package
    ('.modules', "MODULE_PACKAGES names '.modules'"),  # relative
    ('json', 'MODULE_PACKAGES (json) holds no module folder'),  # a package, with no module (it was seen after the
])                                                               # migrations, trial K)
def test_module_packages_naming_no_package_stops_serve_in_one_line(database_url, packages, named):
    result = run_manage('serve', DATABASE_URL=database_url, MODULE_PACKAGES=packages, PORT='1', LOG_LEVEL='INFO')
    assert_one_line_failure(result, named, secrets=())
    assert 'migrations applied' not in result.stdout, 'checked before anything starts'


@pytest.mark.parametrize('code, named', [
    ('import no_such_library\n', 'ModuleNotFoundError'),
    ('import sys\nsys.exit(0)\n', 'SystemExit: 0'),  # it made serve end with no word, as a success
    ('import sys\nsys.exit(3)\n', 'SystemExit: 3'),
    # a traceback, quoting its message unredacted (trial L)
    ('raise BaseException("base")\n', 'BaseException: base'),
    ('class Odd(Exception):\n    def __str__(self):\n        raise RuntimeError\nraise Odd()\n',
     'Odd: (its message cannot be shown)'),
])
def test_a_broken_module_stops_serve_once_before_gunicorn_starts(tmp_path, database_url, code, named):
    result = run_manage('serve', broken_module(tmp_path, code), DATABASE_URL=database_url,
                        MODULE_PACKAGES='brokenmods', PORT='1', WEB_CONCURRENCY='3', LOG_LEVEL='INFO')
    assert_one_line_failure(result, 'broken/routes.py', named, secrets=())
    assert 'HaltServer' not in result.stdout + result.stderr
    assert 'migrations applied' not in result.stdout, 'checked before anything starts'


def test_a_modules_error_quoted_at_the_start_is_one_line_without_secrets(tmp_path, database_url):
    result = run_manage('serve', broken_module(tmp_path, code_raising_secrets(database_url)),
                        DATABASE_URL=database_url, BEARER=QUOTING_TOKEN, MODULE_PACKAGES='brokenmods', PORT='1')
    assert_quoted_safely(assert_one_line_failure(result, 'broken/routes.py', secrets=()),
                         result.stdout + result.stderr, database_url)


@pytest.mark.parametrize('code, named', [('import sys\nsys.exit(0)\n', '(SystemExit: 0)'),
                                         ('raise ValueError("x\\ny")\n', '(ValueError: x\\ny)')])
def test_a_session_hooks_module_failing_at_import_stops_serve_in_one_line(tmp_path, database_url, code, named):
    (tmp_path / 'failing_hooks.py').write_text(code)
    result = run_manage('serve', tmp_path, DATABASE_URL=database_url, DB_RESET='failing_hooks:reset', PORT='1')
    assert_one_line_failure(result, 'DB_RESET: failing_hooks:reset cannot be imported', named, secrets=())


@pytest.fixture()
def scratch_database(database_url):
    """A fresh, empty database on the test server; dropped afterwards."""
    server = make_dsn(database_url, dbname='postgres')
    dsn = recreate_database(server, f'dbapi_startup_{os.getpid()}')
    yield dsn
    drop_database(server, f'dbapi_startup_{os.getpid()}')


def test_the_probe_fixture_keeps_a_schema_probe_that_is_not_its_own_and_stops(scratch_database):
    """The tests' setup dropped any schema probe of the server of TEST_DATABASE_URL, and what depended on it (trial BU:
    a user's table, its row and a view in public went); one it made itself it makes again."""
    run_sql(scratch_database, "CREATE SCHEMA probe; CREATE TABLE probe.kept (v text); INSERT INTO probe.kept VALUES "
                              "('precious'); CREATE VIEW public.report AS SELECT * FROM probe.kept")
    with pytest.raises(psycopg2.errors.RaiseException, match="a schema probe that is not the tests' own"):
        run_sql(scratch_database, PROBE_SQL.read_text())
    assert run_sql(scratch_database, 'SELECT v FROM public.report') == [('precious',)]
    run_sql(scratch_database, 'DROP SCHEMA probe CASCADE')
    for _ in range(2):
        run_sql(scratch_database, PROBE_SQL.read_text())
    assert run_sql(scratch_database, 'SELECT count(*) FROM probe.things') == [(0,)]


def test_a_migration_with_bad_sql_names_file_line_and_postgresqls_message(tmp_path, scratch_database):
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_good.sql').write_text('CREATE TABLE good_one (id int);\n')
    (folder / '0002_broken.sql').write_text('CREATE TABLE fine_too (id int);\n\n'
                                            'CREATE TABLE broken (\n    id int,\n    name txet\n);\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    message = str(caught.value)
    assert '\n' not in message
    assert message == (f'migration {folder / "0002_broken.sql"}:5 failed: type "txet" does not exist '
                       '(SQLSTATE 42704)')


def test_a_migration_added_with_a_name_sorting_before_an_applied_one_is_refused_unless_it_depends_on_it(
        tmp_path, scratch_database):
    """It was applied last on this database and first on a new one, where it failed: `relation "shipments" does not
    exist` (trial AG). Nothing of it runs; yoyo's `-- depends:` on the later one puts it after it everywhere."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_orders.sql').write_text('CREATE TABLE orders (id int PRIMARY KEY);\n')
    (folder / '0005_shipments.sql').write_text('CREATE TABLE shipments (order_id int REFERENCES orders);\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0001_orders', '0005_shipments']
    late = folder / '0004_refunds.sql'
    late.write_text('CREATE TABLE refunds (order_id int);\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == (f'migration {late} sorts before 0005_shipments, which this database applied already: '
                                 'a new database runs it before that one, this one would run it after. Rename it to '
                                 'sort after the last migration applied, or add `-- depends: 0005_shipments` to it '
                                 "(yoyo's directive), so that every database runs them in one order")
    assert run_sql(scratch_database, "SELECT to_regclass('refunds') IS NULL") == [(True,)], 'nothing of it ran'
    late.write_text('-- depends: 0005_shipments\nCREATE TABLE refunds (order_id int);\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0004_refunds']
    # One that declares its dependencies has chosen its place: yoyo puts it after them on a new database too, and
    # after what sorts before them (trial AH: a second refusal named 0001_orders, which yoyo runs first anyway).
    (folder / '0003_notes.sql').write_text('-- depends: 0005_shipments\nCREATE TABLE notes (id int);\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0003_notes']


def test_a_migration_that_depends_only_on_an_earlier_one_is_still_out_of_order(tmp_path, scratch_database):
    """Any `-- depends:` skipped the check: a file depending on 0001 alone ran after 0005 here and before it on a new
    database, where it failed (trial AM). One depending on 0004, which depends on 0005, is placed after both."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_orders.sql').write_text('CREATE TABLE orders (id int PRIMARY KEY);\n')
    (folder / '0004_refunds.sql').write_text('-- depends: 0005_shipments\nCREATE TABLE refunds (id int);\n')
    (folder / '0005_shipments.sql').write_text('CREATE TABLE shipments (id int);\n')
    manage.apply_migrations(scratch_database, folder)
    late = folder / '0003_notes.sql'
    late.write_text('-- depends: 0001_orders\nALTER TABLE shipments ADD COLUMN note text;\n')
    with pytest.raises(StartupError, match='sorts before 0005_shipments, which this database applied already'):
        manage.apply_migrations(scratch_database, folder)
    late.write_text('-- depends: 0004_refunds\nALTER TABLE shipments ADD COLUMN note text;\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0003_notes']


def test_an_out_of_order_python_migration_is_told_its_own_form_of_the_dependency(tmp_path, scratch_database):
    """A `.py` migration declares `__depends__`; the line told it to add `-- depends:` (trial AH)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0005_shipments.sql').write_text('CREATE TABLE shipments (id int);\n')
    manage.apply_migrations(scratch_database, folder)
    (folder / '0004_refunds.py').write_text('from yoyo import step\nsteps = [step("CREATE TABLE refunds (id int)")]\n')
    with pytest.raises(StartupError, match=r"add `__depends__ = \{'0005_shipments'\}` to it"):
        manage.apply_migrations(scratch_database, folder)


def applied_then_gone(folder, dsn, name):
    """Make folder, apply to dsn a migration of it named name that creates a table, then delete its file; return
    folder."""
    folder.mkdir()
    (folder / f'{name}.sql').write_text(f'CREATE TABLE table_{name} (id int);\n')
    manage.apply_migrations(dsn, folder)
    (folder / f'{name}.sql').unlink()
    return folder


def test_a_migration_sorting_before_an_applied_one_whose_file_is_gone_is_refused_too(tmp_path, scratch_database):
    """It was applied, with a warning for the gone file alone, where with the file there it was refused (trial AK)."""
    folder = applied_then_gone(tmp_path / 'migrations', scratch_database, '0006_gone')
    (folder / '0005_before.sql').write_text('CREATE TABLE before_it (id int);\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == (
        f'migration {folder / "0005_before.sql"} sorts before 0006_gone, which this database applied already and whose '
        'file is gone: a new database would not run that one, this one ran it first. Rename it to sort after the last '
        "migration applied, or restore 0006_gone's file and add `-- depends: 0006_gone` to it (yoyo's directive)")
    assert run_sql(scratch_database, "SELECT to_regclass('before_it') IS NULL") == [(True,)], 'nothing of it ran'


@pytest.mark.parametrize('header, name', [('-- Depends: 0001_fine', 'depends'),
                                          ('--TRANSACTIONAL : false', 'transactional'),
                                          ('-- about it\n\n  -- Transactional: false', 'transactional')])
def test_a_header_line_that_reads_like_a_yoyo_directive_but_is_not_one_is_refused(tmp_path, scratch_database, header,
                                                                                  name):
    """yoyo's directives are case-sensitive: it took `-- Transactional: false` for a comment, and the file's CREATE
    INDEX CONCURRENTLY failed in a transaction; a `-- Depends:` file was refused as out of order (trial AK)."""
    folder = tmp_path / 'migrations'
    line = header.count('\n') + 1
    assert refusal_before_anything_runs(folder, scratch_database, f'{header}\nCREATE TABLE refused (id int);\n') == (
        f"migration {folder / '0002_refused.sql'}:{line} reads like yoyo's {name} directive, which yoyo would take for "
        f'a comment: it is written in lower case, `-- {name}: ...`')


def test_a_header_comment_that_only_mentions_a_directive_runs(tmp_path, scratch_database):
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_fine.sql').write_text('-- Depends on nothing, transactional\nCREATE TABLE fine (id int);\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0001_fine']


def migrations_failure(dsn, folder, files):
    """Write files ({name: text}) to folder and return the StartupError's line of migrating dsn from it."""
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(dsn, folder)
    return str(caught.value)


@pytest.mark.parametrize('files, named', [
    ({'0001_orders.sql': '-- depends: 0000_typo\nCREATE TABLE orders (id int);\n'},
     ('0001_orders.sql', 1, '0000_typo')),
    # one missing among several, on a later line of the header (trial AZ: the file alone was named)
    ({'0001_a.sql': 'CREATE TABLE a (id int);\n',
      '0002_b.sql': '-- a comment\n-- depends: 0001_a\n--depends:0001_a   0001_z\nCREATE TABLE b (id int);\n'},
     ('0002_b.sql', 3, '0001_z'))])
def test_a_dependency_on_no_migration_stops_the_start_in_one_line_naming_it(tmp_path, scratch_database, files,
                                                                            named):
    """yoyo's BadMigration was a traceback (trial AH), then a line that named the file alone."""
    folder, (name, line, missing) = tmp_path / 'migrations', named
    assert migrations_failure(scratch_database, folder, files) == (
        f'the migrations cannot be ordered: migration {folder / name}:{line} depends on {missing}, which is no '
        f'migration in {folder}')


def test_a_loop_of_dependencies_stops_the_start_in_one_line(tmp_path, scratch_database):
    """yoyo's CycleError is no BadMigration: a traceback (trial AZ)."""
    folder = tmp_path / 'migrations'
    files = {'0001_a.sql': '-- depends: 0002_b\nCREATE TABLE a (id int);\n',
             '0002_b.sql': '-- depends: 0001_a\nCREATE TABLE b (id int);\n'}
    assert migrations_failure(scratch_database, folder, files) == (
        'the migrations cannot be ordered: their -- depends: directives make a loop (0001_a, 0002_b)')


@pytest.mark.parametrize('value', ['no', 'off', '0', 'false;'])
def test_a_transactional_directive_neither_true_nor_false_is_refused_naming_its_line(tmp_path, scratch_database,
                                                                                    value):
    """yoyo's KeyError was a traceback (trial AZ)."""
    folder = tmp_path / 'migrations'
    text = f'-- about it\n-- transactional: {value}\nCREATE TABLE refused (id int);\n'
    assert refusal_before_anything_runs(folder, scratch_database, text) == (
        f"migration {folder / '0002_refused.sql'}:2: transactional takes true or false, not {value!r}")


def test_a_transactional_directive_given_twice_is_refused_naming_the_second(tmp_path, scratch_database):
    """yoyo joined the values, 'false false', and its KeyError was a traceback (trial BB)."""
    folder = tmp_path / 'migrations'
    text = '-- transactional: false\n-- transactional: false\nCREATE TABLE refused (id int);\n'
    assert refusal_before_anything_runs(folder, scratch_database, text) == (
        f"migration {folder / '0002_refused.sql'}:2: transactional is given twice; keep one")


def test_a_directive_in_any_case_of_true_or_false_with_crlf_runs(tmp_path, scratch_database):
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_fine.sql').write_bytes(b'-- transactional: FALSE\r\nCREATE TABLE fine (id int);\r\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0001_fine']


def test_a_migration_with_a_byte_order_mark_is_refused_before_anything_runs_and_repair_refuses_it(tmp_path,
                                                                                                  scratch_database):
    """PostgreSQL read the mark as text, a syntax error after the files before it ran; repair took an applied file
    that gained one, which a new database then failed on (trial AZ)."""
    folder = tmp_path / 'migrations'
    line = refusal_before_anything_runs(folder, scratch_database, '\ufeff-- about it\nCREATE TABLE refused (id int);\n')
    assert line == (f"migration {folder / '0002_refused.sql'}:1 starts with a byte order mark, which PostgreSQL would "
                    'read as text: save it as UTF-8 without one')
    (folder / '0002_refused.sql').unlink()
    manage.apply_migrations(scratch_database, folder)
    (folder / '0001_fine.sql').write_text('\ufeffCREATE TABLE fine_first (id int);\n')
    with pytest.raises(StartupError, match='starts with a byte order mark'):
        manage.repair_checksums(scratch_database, folder)


def test_a_rollback_file_with_a_byte_order_mark_is_refused_before_anything_runs(tmp_path, scratch_database):
    """yoyo rollback would fail on it as PostgreSQL reads the mark as text; it passed (session 27's note)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_fine.sql').write_text('CREATE TABLE fine_back (id int);\n')
    (folder / '0001_fine.rollback.sql').write_text('\ufeffDROP TABLE fine_back;\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == (f"migration {folder / '0001_fine.rollback.sql'}:1 starts with a byte order mark, "
                                 'which PostgreSQL would read as text: save it as UTF-8 without one')
    assert run_sql(scratch_database, "SELECT to_regclass('fine_back') IS NULL") == [(True,)]


def test_bookkeeping_the_user_may_not_do_says_what_the_user_needs_in_one_line(tmp_path, scratch_database):
    """A role with no CREATE on the schema: yoyo swallowed its table's failure, and the failure line's own look at the
    pending files failed again, a traceback hiding the cause (trial AZ)."""
    role = f'dbapi_no_create_{os.getpid()}'
    run_sql(scratch_database, f'DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN; '
                              f'REVOKE CREATE ON SCHEMA public FROM PUBLIC')
    try:
        folder = tmp_path / 'migrations'
        folder.mkdir()
        (folder / '0001_fine.sql').write_text('CREATE TABLE fine (id int);\n')
        with pytest.raises(StartupError) as caught:
            manage.apply_migrations(make_dsn(scratch_database, user=role), folder)
        assert str(caught.value).startswith('migrations failed on a bookkeeping statement, in no migration file')
        assert "the database user must create and write yoyo's tables" in str(caught.value)
    finally:
        run_sql(scratch_database, f'REASSIGN OWNED BY {role} TO CURRENT_USER; DROP OWNED BY {role}; DROP ROLE {role}')


def test_a_migration_file_yoyo_does_not_read_and_an_applied_ones_missing_file_are_warned_of(tmp_path, scratch_database,
                                                                                             caplog):
    """Both were silent (trial AG): a new database would not run either."""
    folder = applied_then_gone(tmp_path / 'migrations', scratch_database, '0001_orders')
    (folder / '0002_refunds.SQL').write_text('CREATE TABLE refunds (id int);\n')
    with caplog.at_level(logging.WARNING, logger='dbapi.migrate'):
        assert manage.apply_migrations(scratch_database, folder) == []
    assert [record.getMessage() for record in caplog.records if record.name == 'dbapi.migrate'] == [
        f'{folder / "0002_refunds.SQL"} is not read: a migration file ends in .sql or .py, in lower case',
        f'applied migrations have no file in {folder}: 0001_orders; a new database would not run them']


def test_migration_files_in_a_sub_folder_and_empty_ones_are_warned_of(tmp_path, scratch_database, caplog):
    """A sub-folder's file was not read, and an empty file was recorded as applied, so that what was written in it
    later never ran: both silent (trial AK)."""
    folder = tmp_path / 'migrations'
    (folder / 'orders').mkdir(parents=True)
    (folder / 'orders' / '0002_orders.sql').write_text('CREATE TABLE orders (id int);\n')
    (folder / 'orders' / 'helpers.py').write_text('')
    (folder / '0003_later.sql').write_text('\n-- to be written\n')
    with caplog.at_level(logging.WARNING, logger='dbapi.migrate'):
        assert manage.apply_migrations(scratch_database, folder) == ['0003_later']
    assert [record.getMessage() for record in caplog.records if record.name == 'dbapi.migrate'] == [
        f'{folder / "orders" / "0002_orders.sql"} is not read: yoyo reads the files directly in {folder}, not those of '
        'its sub-folders',
        f'{folder / "0003_later.sql"} has no statement to run: it is recorded as applied, and what is written in it '
        'later never runs (an applied file that changed stops the start)']


def test_a_failure_without_a_position_names_the_statements_own_line_not_the_comment_before_it(tmp_path,
                                                                                                 scratch_database):
    """PostgreSQL gives no position for a duplicate key: the line named was the first of yoyo's statement, a
    comment; and its detail, which key, was left out (trial N)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_pk.sql').write_text('CREATE TABLE keyed (id int PRIMARY KEY);\n-- later\n/* two\nrows */\n'
                                        'INSERT INTO keyed VALUES (1), (1);\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == (f'migration {folder / "0001_pk.sql"}:5 failed: duplicate key value violates unique '
                                 'constraint "keyed_pkey": Key (id)=(1) already exists. (SQLSTATE 23505)')


TRAILING_COMMENT_REFUSAL = ('migration {}:2 ends with a comment after its last statement, which yoyo sends as a '
                            'statement of its own and which fails: end the file with a statement, or remove the '
                            'comment')


@pytest.mark.parametrize('comment', ['-- a trailing comment\n', '-- done;\n', '/* done; */'])
def test_a_comment_after_a_migrations_last_statement_is_refused_before_anything_runs(tmp_path, scratch_database,
                                                                                    comment):
    """yoyo sends the trailing comment as a statement, which psycopg2 refuses without a SQLSTATE: the line said the
    database could not be reached (trial P), then named the file without its line, after the files before it ran
    (trial Q); a `;` in the comment hid it from the check (trial S)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_first.sql').write_text('CREATE TABLE before_the_comment (id int);\n')
    (folder / '0002_trailing.sql').write_text(f'CREATE TABLE ends_in_a_comment (id int);\n{comment}')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == TRAILING_COMMENT_REFUSAL.format(folder / '0002_trailing.sql')
    assert run_sql(scratch_database, "SELECT to_regclass('before_the_comment') IS NULL") == [(True,)]


@pytest.mark.parametrize('text, line', [
    ('CREATE TABLE one_semicolon_too_many (id int);;\n', 1),
    ('CREATE TABLE one_semicolon_too_many (id int);\n;\nCREATE TABLE after_it (id int);\n', 2),
    ('-- a header\n;\nCREATE TABLE one_semicolon_too_many (id int);\n', 2),
    ('CREATE TABLE one_semicolon_too_many (id int);\n/* done */ ;\n', 2),
])
def test_an_empty_statement_in_a_migration_is_refused_before_anything_runs(tmp_path, scratch_database, text, line):
    """A ";" with nothing before it failed as "a comment after the file's last statement", without a line, once the
    files before it had run (trial T)."""
    folder = tmp_path / 'migrations'
    assert refusal_before_anything_runs(folder, scratch_database, text) == (
        f'migration {folder / "0002_refused.sql"}:{line} holds an empty statement (a ";" with nothing to run before '
        'it), which yoyo sends as a statement of its own and which fails: remove that ";"')


def refusal_before_anything_runs(folder, dsn, text):
    """Write folder's migrations, a fine one and then text (0002_refused.sql), migrate dsn and return the StartupError's
    line, checking that the fine one did not run."""
    folder.mkdir()
    (folder / '0001_fine.sql').write_text('CREATE TABLE fine_first (id int);\n')
    (folder / '0002_refused.sql').write_text(text)
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(dsn, folder)
    assert run_sql(dsn, "SELECT to_regclass('fine_first') IS NULL") == [(True,)]
    return str(caught.value)


def test_a_migration_of_a_header_and_a_block_comment_alone_is_refused_naming_the_comments_line(tmp_path,
                                                                                              scratch_database,
                                                                                              caplog):
    """yoyo sends the block comment as a statement, which fails: the refusal named line 1, the header's, after a
    warning that the file would be recorded as applied (trial AM)."""
    folder = tmp_path / 'migrations'
    with caplog.at_level(logging.WARNING, logger='dbapi.migrate'):
        refusal = refusal_before_anything_runs(folder, scratch_database, '-- Reserved for later.\n/* later */\n')
    assert refusal == TRAILING_COMMENT_REFUSAL.format(folder / '0002_refused.sql')
    assert [record for record in caplog.records if record.name == 'dbapi.migrate'] == []


@pytest.mark.parametrize('text', ['-- only a description\n-- and more\n', '-- transactional: false\n\nSELECT 1;\n',
                                  'SELECT 1; -- the end\n', "SELECT ';;' AS x; SELECT $$;$$;\n"])
def test_a_migration_with_a_header_or_semicolons_inside_its_statements_runs(tmp_path, scratch_database, text):
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_fine.sql').write_text(text)
    assert manage.apply_migrations(scratch_database, folder) == ['0001_fine']


def applied_then_ended_in_a_comment(folder, dsn):
    """Make folder, apply to dsn a migration of it that creates a table, then end its file in a comment; return the
    file."""
    folder.mkdir()
    applied = folder / '0001_applied.sql'
    applied.write_text('CREATE TABLE applied_before (id int);\n')
    manage.apply_migrations(dsn, folder)
    applied.write_text('CREATE TABLE applied_before (id int);\n-- done\n')
    return applied


def test_a_file_whose_checksum_row_was_deleted_must_run_on_a_new_database_to_be_taken(tmp_path, scratch_database):
    """The changed-files line offers to delete their checksum rows: migrate then took a file that repair refuses, one
    that fails on every new database (trial V)."""
    folder = tmp_path / 'migrations'
    applied = applied_then_ended_in_a_comment(folder, scratch_database)
    run_sql(scratch_database, f"DELETE FROM {CHECKSUM_TABLE} WHERE migration_id = '0001_applied'")
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == TRAILING_COMMENT_REFUSAL.format(applied)
    assert run_sql(scratch_database, f'SELECT count(*) FROM {CHECKSUM_TABLE}') == [(0,)]


def test_a_stop_python_ignored_where_it_came_stops_the_migrations_before_they_run(scratch_database, monkeypatch):
    """A stop during manage.py's imports, which Python can ignore, said the command stopped, and then every pending
    file was applied (trial V, 7 in 69)."""
    monkeypatch.setattr(COMMAND_STOP, 'asked', signal.SIGINT)  # taken, its exception dropped
    with pytest.raises(StartInterrupted) as caught:
        manage.migrate_database(scratch_database)
    assert caught.value.code == 128 + signal.SIGINT
    assert run_sql(scratch_database, "SELECT to_regclass('_yoyo_migration') IS NULL") == [(True,)]


def test_yoyos_word_on_a_nested_begin_is_not_shown(recwarn):
    """A stop's unwinding can BEGIN where a transaction is open: yoyo's two-line warning, about databases that are
    not PostgreSQL, followed the stop's one line (trial V, 2 in 170)."""
    def work(dsn, directory):
        warnings.warn('Nested transaction requested; this will raise an exception in some PostgreSQL-compatible '
                      'databases', UserWarning)
        return 'done'
    assert in_one_line(work, 'dbname=unused', MIGRATIONS_DIR) == 'done'
    assert [str(warning.message) for warning in recwarn] == []


def test_repair_refuses_to_take_a_file_that_ends_in_a_comment(tmp_path, scratch_database):
    """It took it, and the file then failed on every new database (trial Q)."""
    folder = tmp_path / 'migrations'
    applied = applied_then_ended_in_a_comment(folder, scratch_database)
    with pytest.raises(StartupError) as caught:
        manage.repair_checksums(scratch_database, folder)
    assert str(caught.value) == TRAILING_COMMENT_REFUSAL.format(applied)
    with pytest.raises(StartupError, match='applied migrations changed since'):  # nothing was recorded
        manage.apply_migrations(scratch_database, folder)


def test_a_migration_file_is_one_transaction_unless_it_says_transactional_false(tmp_path, scratch_database):
    """docs/modules.md: a file that fails leaves nothing of itself; one marked `-- transactional: false` runs what
    PostgreSQL refuses in a transaction block (CREATE INDEX CONCURRENTLY)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_half.sql').write_text('CREATE TABLE half_made (id int);\nSELECT 1 / 0;\n')
    with pytest.raises(StartupError):
        manage.apply_migrations(scratch_database, folder)
    assert run_sql(scratch_database, "SELECT to_regclass('half_made') IS NULL") == [(True,)]
    (folder / '0001_half.sql').write_text('CREATE TABLE half_made (id int);\n')
    (folder / '0002_index.sql').write_text('-- transactional: false\n'
                                           'CREATE INDEX CONCURRENTLY half_made_id ON half_made (id);\n')
    manage.apply_migrations(scratch_database, folder)
    assert run_sql(scratch_database, "SELECT to_regclass('half_made_id') IS NOT NULL") == [(True,)]


def test_a_migrations_select_shows_its_rows_on_stderr_never_on_stdout_which_holds_json_lines_alone(
        tmp_path, scratch_database, capsys):
    """yoyo prints the rows of a migration's SELECT (pg_dump's set_config calls, a pg_sleep) as a table on stdout,
    among the JSON log lines (trial N)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_select.sql').write_text("SELECT 1 AS x, 'two' AS y;\nCREATE TABLE selected (id int);\n")
    manage.apply_migrations(scratch_database, folder)
    shown = capsys.readouterr()
    assert shown.out == '' and 'two' in shown.err


@pytest.mark.parametrize('take', ['delete', 'repair'])
def test_an_applied_migration_edited_later_stops_the_start_until_restored_or_taken(tmp_path, scratch_database, take):
    """yoyo knows a migration by its id alone: an applied file edited later was skipped without a word, its change
    never run (trial J). Its SHA-256, recorded when it was applied, now stops the start, as Flyway's checksum does.
    The file is taken as it is by the DELETE the line gives, or by `manage.py repair` (the embedded database is
    stopped once the start stops: nothing could run the DELETE on it, trial N)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    first = folder / '0001_first.sql'
    first.write_text('CREATE TABLE first_one (id int);\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0001_first']
    first.write_text('CREATE TABLE first_one (id int);\nCREATE TABLE added_later (id int);\n')
    (folder / '0002_next.sql').write_text('CREATE TABLE next_one (id int);\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    message = str(caught.value)
    assert message.startswith(f'applied migrations changed since (their SHA-256 is not the one recorded when they '
                              f'were applied): {first}. ') and '\n' not in message
    assert message.endswith("DELETE FROM _dbapi_migration_checksum WHERE migration_id IN ('0001_first');")
    assert '`.venv/bin/python manage.py repair`' in message
    assert run_sql(scratch_database, "SELECT to_regclass('next_one') IS NULL") == [(True,)], 'nothing ran after it'
    if take == 'delete':
        run_sql(scratch_database, message[message.index('DELETE'):])  # as the message says: take the file as it is
    else:
        assert manage.repair_checksums(scratch_database, folder) == ['0001_first']
        assert manage.repair_checksums(scratch_database, folder) == [], 'nothing left to repair'
    assert manage.apply_migrations(scratch_database, folder) == ['0002_next']
    assert manage.apply_migrations(scratch_database, folder) == [], 'unchanged files pass'


def test_a_stop_during_a_migrations_statement_cancels_it_at_once(tmp_path, scratch_database):
    """libpq's own wait held the signal's handler back until the statement ended: a Ctrl-C, SIGTERM or hangup during
    a migration's long statement did nothing until then (trial N). Here the statement waits for a lock this test
    holds on yoyo's lock table."""
    (tmp_path / 'migrations').mkdir()
    manage.apply_migrations(scratch_database, tmp_path / 'migrations')  # yoyo's tables, no migration
    holder = psycopg2.connect(scratch_database)
    try:
        with holder.cursor() as cursor:
            cursor.execute('LOCK TABLE yoyo_lock IN ACCESS EXCLUSIVE MODE')
        process = subprocess.Popen([sys.executable, 'manage.py', 'migrate'], cwd=settings.BASE_DIR, text=True,
                                   env=server_environment(DATABASE_URL=scratch_database), stderr=subprocess.PIPE)
        waiting = "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        blocked = wait_for(lambda: run_sql(scratch_database, waiting), 60, 'migrate never waited for the lock')
        process.terminate()
        _, stderr = process.communicate(timeout=10)
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert stderr.strip().splitlines()[-1] == ('dbapi: migrate stopped by SIGTERM; run it again to apply the '
                                                   'migrations still pending')
        wait_for(lambda: not run_sql(scratch_database, f'SELECT 1 FROM pg_stat_activity WHERE pid = {blocked[0][0]}'),
                 2, 'its statement still runs in PostgreSQL')
    finally:
        holder.close()


def test_a_migration_waiting_for_a_lock_gives_up_after_the_lock_timeout(tmp_path, scratch_database):
    """An ALTER TABLE behind a reader's long transaction waited for good, and every query of the table queued behind
    it (trial Q): MIGRATION_LOCK_TIMEOUT_MS ends the wait, and the line says what to do."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_table.sql').write_text('CREATE TABLE read_for_long (id int);\n')
    manage.apply_migrations(scratch_database, folder)
    (folder / '0002_alter.sql').write_text('ALTER TABLE read_for_long ADD COLUMN added int;\n')
    holder = psycopg2.connect(scratch_database)
    try:
        with holder.cursor() as cursor:
            cursor.execute('LOCK TABLE read_for_long IN ACCESS SHARE MODE')  # a reader's open transaction
        started = time.monotonic()
        with pytest.raises(StartupError) as caught:
            manage.apply_migrations(scratch_database, folder, lock_timeout_ms=300)
        assert time.monotonic() - started < 5
    finally:
        holder.close()
    assert str(caught.value) == (
        f'migration {folder / "0002_alter.sql"}:1 failed: canceling statement due to lock timeout (SQLSTATE 55P03): '
        'another session holds a lock it needs (pg_locks and pg_stat_activity say which); run it again once that '
        'session ends, or set MIGRATION_LOCK_TIMEOUT_MS higher (0: no limit)')
    assert manage.apply_migrations(scratch_database, folder, lock_timeout_ms=300) == ['0002_alter']


def test_a_non_transactional_migration_that_fails_says_that_its_statements_before_stay(tmp_path, scratch_database):
    """README said nothing of the file was applied, and to run it again, which failed on the table it had made (trial
    T): a `-- transactional: false` file keeps its statements before the failed one, and the line says so."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_table.sql').write_text('CREATE TABLE read_for_long (id int);\n')
    manage.apply_migrations(scratch_database, folder)
    (folder / '0002_two.sql').write_text('-- transactional: false\nCREATE TABLE made_first (id int);\n'
                                         'ALTER TABLE read_for_long ADD COLUMN added int;\n')
    holder = psycopg2.connect(scratch_database)
    try:
        with holder.cursor() as cursor:
            cursor.execute('LOCK TABLE read_for_long IN ACCESS SHARE MODE')  # a reader's open transaction
        with pytest.raises(StartupError) as caught:
            manage.apply_migrations(scratch_database, folder, lock_timeout_ms=300)
    finally:
        holder.close()
    assert str(caught.value).startswith(f'migration {folder / "0002_two.sql"}:3 failed: canceling statement due to '
                                        'lock timeout (SQLSTATE 55P03): '), caught.value
    assert str(caught.value).endswith('; the file is not transactional (transactional: false): its statements before '
                                      'this one stay applied, so make them safe to run again first (IF NOT EXISTS; for '
                                      'an index built CONCURRENTLY, DROP INDEX CONCURRENTLY IF EXISTS before it: a '
                                      'failed build leaves an invalid index)')
    assert run_sql(scratch_database, "SELECT to_regclass('made_first') IS NOT NULL") == [(True,)]


def test_a_statement_that_runs_outside_a_transaction_only_says_how_to_run_it(tmp_path, scratch_database):
    """PostgreSQL's 25001 alone did not say which directive lets it run (trial AZ)."""
    folder = tmp_path / 'migrations'
    files = {'0001_table.sql': 'CREATE TABLE indexed (id int);\nCREATE INDEX CONCURRENTLY indexed_id ON indexed (id);\n'}
    assert migrations_failure(scratch_database, folder, files).endswith(
        '(SQLSTATE 25001): put it in a file of its own whose first line is "-- transactional: false" (yoyo\'s '
        'directive)')


def test_a_non_transactional_migration_whose_first_statement_fails_says_nothing_stays(tmp_path, scratch_database):
    """It said its statements before the failed one stay applied, when there were none (trial W)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_first.sql').write_text('-- transactional: false\nSELECT 1 / 0;\nCREATE TABLE never (id int);\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == (f'migration {folder / "0001_first.sql"}:2 failed: division by zero (SQLSTATE 22012)')


def test_a_failed_statement_that_a_file_holds_twice_names_both_lines(tmp_path, scratch_database):
    """The line named the first copy, which had run; the second failed (trial W)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_twice.sql').write_text('CREATE TABLE twice (id int);\nINSERT INTO twice VALUES (1);\n'
                                           'CREATE UNIQUE INDEX twice_u ON twice (id);\n'
                                           'INSERT INTO twice VALUES (1);\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value).startswith(f'migration {folder / "0001_twice.sql"}:2 (or 4: the same statement stands '
                                        'there too) failed: duplicate key value violates unique'), caught.value


@pytest.mark.parametrize('text, line, keyword', [
    ('BEGIN;\nCREATE TABLE begun (id int);\nCOMMIT;\n', 1, 'BEGIN'),
    ('CREATE TABLE half (id int);\n-- done\ncommit;\nCREATE TABLE other_half (id int);\n', 3, 'COMMIT'),
    ('CREATE TABLE undone (id int);\nROLLBACK;\n', 2, 'ROLLBACK'),
    ('CREATE TABLE ended (id int);\nEND;\n', 2, 'END'),
    ('START TRANSACTION;\nCREATE TABLE started (id int);\n', 1, 'START TRANSACTION'),
])
def test_a_transactional_migration_that_controls_its_transaction_is_refused_before_anything_runs(
        tmp_path, scratch_database, text, line, keyword):
    """A COMMIT in the file committed what came before it and yoyo's record went nowhere: the line blamed the
    bookkeeping, the file was left run but half recorded, or run again and failing (trial W)."""
    folder = tmp_path / 'migrations'
    assert refusal_before_anything_runs(folder, scratch_database, text) == (
        f'migration {folder / "0002_refused.sql"}:{line} holds {keyword}, which ends or begins a transaction: dbapi '
        'runs the file, and records it, in one transaction of its own. Remove it, or run the file without one (a '
        'first line "-- transactional: false")')
    (folder / '0002_refused.sql').write_text('-- transactional: false\n' + text.replace('ROLLBACK', 'SELECT 1'))
    assert manage.apply_migrations(scratch_database, folder) == ['0001_fine', '0002_refused']


def test_savepoints_and_plpgsql_blocks_are_no_transaction_control(tmp_path, scratch_database):
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_blocks.sql').write_text(
        'SAVEPOINT before_table;\nCREATE TABLE saved (id int);\nRELEASE SAVEPOINT before_table;\n'
        'SAVEPOINT again;\nROLLBACK TO SAVEPOINT again;\n'
        'DO $$ BEGIN PERFORM 1; END $$;\n'
        'CREATE FUNCTION saved_one() RETURNS int LANGUAGE plpgsql AS $$\nBEGIN\n  RETURN 1;\nEND;\n$$;\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0001_blocks']
    assert run_sql(scratch_database, 'SELECT saved_one()') == [(1,)]


@pytest.mark.parametrize('name', ['0001_latin1.sql', '0001_latin1.rollback.sql'])
def test_a_migration_file_that_is_not_utf8_is_refused_naming_its_line(tmp_path, scratch_database, name):
    """yoyo's UnicodeDecodeError, a traceback (trial W)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_latin1.sql').write_text('CREATE TABLE latin (id int);\n')
    (folder / name).write_bytes(b'-- fine\n-- caf\xe9\nDROP TABLE IF EXISTS latin;\n')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == f'migration {folder / name}:2 is not UTF-8 text (byte 0xe9): save it as UTF-8'
    assert run_sql(scratch_database, "SELECT to_regclass('latin') IS NULL") == [(True,)]


def test_a_bookkeeping_statement_that_fails_names_no_migration_file(tmp_path, scratch_database):
    """A statement of yoyo's own that failed was blamed on the first pending file, none of whose statements had run
    (trial Q's leftover): one that no file holds is the bookkeeping's, and the line says so."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    manage.apply_migrations(scratch_database, folder)  # yoyo's tables, no migration
    (folder / '0001_fine.sql').write_text('CREATE TABLE fine (id int);\n')
    run_sql(scratch_database, f'ALTER TABLE {CHECKSUM_TABLE} ADD CONSTRAINT none_taken CHECK (false) NOT VALID')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value).startswith('migrations failed on a bookkeeping statement, in no migration file (INSERT '
                                        f'INTO {CHECKSUM_TABLE} '), caught.value
    assert 'violates check constraint "none_taken"' in str(caught.value), caught.value
    assert str(caught.value).endswith('(SQLSTATE 23514)'), caught.value
    assert run_sql(scratch_database, "SELECT to_regclass('fine') IS NULL") == [(True,)]  # its record's transaction
    run_sql(scratch_database, f'ALTER TABLE {CHECKSUM_TABLE} DROP CONSTRAINT none_taken')
    assert manage.apply_migrations(scratch_database, folder) == ['0001_fine']
    assert run_sql(scratch_database, f'SELECT migration_id FROM {CHECKSUM_TABLE}') == [('0001_fine',)]


def test_yoyos_lock_not_taken_is_one_line(tmp_path, scratch_database):
    """yoyo's own LockTimeout (its lock row's INSERT refused for 10 s: a yoyo command run beside dbapi, here a check
    that refuses every row) was a traceback."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    manage.apply_migrations(scratch_database, folder)  # yoyo's tables, no migration
    run_sql(scratch_database, 'ALTER TABLE yoyo_lock ADD CONSTRAINT never_taken CHECK (false) NOT VALID')
    with pytest.raises(StartupError) as caught:
        manage.apply_migrations(scratch_database, folder)
    assert str(caught.value) == ("the migrations did not take yoyo's lock: Database locked (run yoyo break-lock to "
                                 'remove this lock); a yoyo command run beside them (it takes no advisory lock) holds '
                                 'it: run them again once it ends')


def test_a_migration_whose_record_waits_past_the_lock_timeout_is_not_applied(tmp_path, scratch_database):
    """yoyo recorded a migration after its statements committed: a record that gave up on MIGRATION_LOCK_TIMEOUT_MS,
    or that a stop cut (trial U), left the file run but unrecorded, and every run after failed on it ("fine" already
    exists). The record is now the migration's own transaction."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    manage.apply_migrations(scratch_database, folder)  # yoyo's tables, no migration
    (folder / '0001_fine.sql').write_text('CREATE TABLE fine (id int);\n')
    holder = psycopg2.connect(scratch_database)
    executor = ThreadPoolExecutor(1)  # a record that waits for good is a failure of the test, not its hang
    try:
        with holder.cursor() as cursor:
            cursor.execute(f'LOCK TABLE {MIGRATION_TABLE} IN SHARE MODE')  # reads pass, yoyo's INSERT waits
        with pytest.raises(StartupError) as caught:
            executor.submit(manage.apply_migrations, scratch_database, folder, lock_timeout_ms=300).result(30)
    finally:
        holder.close()
        executor.shutdown()
    assert str(caught.value).startswith('migrations failed on a bookkeeping statement, in no migration file (INSERT '
                                        f'INTO "{MIGRATION_TABLE}" '), caught.value
    assert 'canceling statement due to lock timeout (SQLSTATE 55P03)' in str(caught.value)
    assert run_sql(scratch_database, "SELECT to_regclass('fine') IS NULL") == [(True,)]
    assert manage.apply_migrations(scratch_database, folder, lock_timeout_ms=300) == ['0001_fine']


# manage.py migrate's stop (lib.process's COMMAND_STOP, the interruptible wait) on a folder of a test's migrations.
MIGRATE_AS_MANAGE_DOES = """
import pathlib, signal, sys
import psycopg2.extensions
from lib.process import COMMAND_STOP
from lib.db.migrate import apply_migrations
from lib.db.waiting import interruptible_wait
signal.signal(signal.SIGTERM, COMMAND_STOP.take)
psycopg2.extensions.set_wait_callback(interruptible_wait)
apply_migrations(sys.argv[1], pathlib.Path(sys.argv[2]))
"""


def test_a_stop_while_a_migrations_record_waits_leaves_it_pending(tmp_path, scratch_database):
    """trial U: Ctrl-C, SIGTERM or SIGHUP while yoyo's record of an applied file waited for a lock left the file run
    but unrecorded (6 in 6), and the stop's line said to run it again, which failed."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    manage.apply_migrations(scratch_database, folder)  # yoyo's tables, no migration
    (folder / '0001_fine.sql').write_text('CREATE TABLE fine (id int);\n')
    holder = psycopg2.connect(scratch_database)
    try:
        with holder.cursor() as cursor:
            cursor.execute(f'LOCK TABLE {MIGRATION_TABLE} IN SHARE MODE')
        process = subprocess.Popen([sys.executable, '-c', MIGRATE_AS_MANAGE_DOES, scratch_database, str(folder)],
                                   cwd=settings.BASE_DIR, text=True, stderr=subprocess.PIPE)
        waiting = "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND wait_event_type = 'Lock'"
        wait_for(lambda: run_sql(scratch_database, waiting) or process.poll() is not None, 60, 'no wait for the lock')
        process.terminate()
        _, stderr = process.communicate(timeout=10)
    finally:
        holder.close()
    assert process.returncode == 128 + signal.SIGTERM, stderr
    assert run_sql(scratch_database, "SELECT to_regclass('fine') IS NULL") == [(True,)]
    assert manage.apply_migrations(scratch_database, folder) == ['0001_fine']


def test_manage_repair_says_what_it_took_in_one_line(scratch_database):
    result = run_manage('repair', DATABASE_URL=scratch_database)
    assert result.returncode == 0 and result.stderr.strip().splitlines() == [
        'dbapi: every applied migration is as its file is: nothing to repair'], result.stderr


def test_a_migration_applied_in_a_batch_that_failed_later_is_known_by_the_file_that_ran(tmp_path, scratch_database):
    """Checksums were recorded after the whole batch only: 0001 ran, 0002 failed, 0001 was edited, and its edit was
    taken as applied on the next run (trial L)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_ran.sql').write_text('CREATE TABLE ran (id int);\n')
    (folder / '0002_fails.sql').write_text('CREATE TABLE fails (id txet);\n')
    with pytest.raises(StartupError):
        manage.apply_migrations(scratch_database, folder)
    (folder / '0001_ran.sql').write_text('CREATE TABLE ran (id int, added int);\n')
    (folder / '0002_fails.sql').write_text('CREATE TABLE fails (id text);\n')
    with pytest.raises(StartupError, match='0001_ran.sql'):
        manage.apply_migrations(scratch_database, folder)


def test_line_endings_do_not_change_a_migration_and_one_applied_again_after_a_rollback_is_known_anew(
        tmp_path, scratch_database):
    """A checkout's CRLF, a last newline added: every applied file was "changed" (trial L). yoyo's own rollback then
    a fixed file applied again: its old checksum stayed, a false "changed" on the next start."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    first = folder / '0001_first.sql'
    first.write_bytes(b'CREATE TABLE first_one (id int);\nCREATE TABLE second_one (id int);')
    manage.apply_migrations(scratch_database, folder)
    first.write_bytes(b'CREATE TABLE first_one (id int);\r\nCREATE TABLE second_one (id int);\r\n')
    assert manage.apply_migrations(scratch_database, folder) == []
    backend = yoyo_backend(scratch_database)
    try:
        with backend.lock():
            backend.rollback_migrations(backend.to_rollback(read_migrations(str(folder))))
    finally:
        backend.connection.close()
    run_sql(scratch_database, 'DROP TABLE first_one, second_one')  # what its rollback file would do
    first.write_text('CREATE TABLE first_one (id bigint);\nCREATE TABLE second_one (id int);\n')
    assert manage.apply_migrations(scratch_database, folder) == ['0001_first']
    assert manage.apply_migrations(scratch_database, folder) == []


def test_replicas_migrating_at_once_finish_a_create_index_concurrently(tmp_path, scratch_database):
    """The one waiting for the advisory lock held a snapshot that the holder's CREATE INDEX CONCURRENTLY waited for:
    both hung for good (trial L)."""
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_table.sql').write_text('CREATE TABLE indexed (id int);\n')
    (folder / '0002_index.sql').write_text('-- transactional: false\n'
                                           'CREATE INDEX CONCURRENTLY indexed_id ON indexed (id);\n')
    with ThreadPoolExecutor(2) as pool:
        runs = [pool.submit(manage.apply_migrations, scratch_database, folder) for _ in range(2)]
        applied = sorted(run.result(timeout=60) for run in runs)
    assert applied == [[], ['0001_table', '0002_index']]


def test_a_migration_waiting_for_another_says_so(tmp_path, scratch_database, caplog):
    """It waited without a word (trial N)."""
    (tmp_path / 'migrations').mkdir()
    holder = psycopg2.connect(scratch_database)
    try:
        with holder.cursor() as cursor:
            cursor.execute('SELECT pg_advisory_lock(%s)', (MIGRATION_LOCK_KEY,))
        with caplog.at_level(logging.INFO, logger='dbapi.migrate'), ThreadPoolExecutor(1) as pool:
            run = pool.submit(manage.apply_migrations, scratch_database, tmp_path / 'migrations')
            wait_for(lambda: 'waiting for the migration lock' in caplog.text, 10, 'no word of the wait')
            assert not run.done()
            holder.close()
            assert run.result(timeout=10) == []
    finally:
        holder.close()


def test_migrations_applied_before_checksums_were_recorded_get_theirs_when_first_seen(tmp_path, scratch_database):
    folder = tmp_path / 'migrations'
    folder.mkdir()
    (folder / '0001_first.sql').write_text('CREATE TABLE first_one (id int);\n')
    manage.apply_migrations(scratch_database, folder)
    run_sql(scratch_database, 'DROP TABLE _dbapi_migration_checksum')  # as a database migrated by an older dbapi
    assert manage.apply_migrations(scratch_database, folder) == []
    assert run_sql(scratch_database, 'SELECT migration_id FROM _dbapi_migration_checksum') == [('0001_first',)]
    (folder / '0001_first.sql').write_text('CREATE TABLE first_one (id bigint);\n')
    with pytest.raises(StartupError):
        manage.apply_migrations(scratch_database, folder)


def test_make_run_shows_the_shipped_development_token_only(monkeypatch):
    shipped = manage.dotenv_values(manage.SHIPPED_LOCAL_ENV)['BEARER']
    monkeypatch.setattr(settings, 'BEARER', shipped)
    assert f'Bearer {shipped}"' in manage.how_to_call()
    monkeypatch.setattr(settings, 'BEARER', 'a-real-token-1234')
    line = manage.how_to_call()
    assert 'a-real-token-1234' not in line and 'Bearer $BEARER"' in line


@pytest.mark.parametrize('tokens, shown', [('{"svc": {"token": "svc-token-1234"}}', 'Bearer $TOKEN"'),
                                           (None, '/healthz    # no bearer token is configured')])
def test_without_bearer_the_curl_example_names_what_can_be_called(monkeypatch, tokens, shown):
    """BEARER= (empty) in local printed a call with $BEARER, which nothing set: a 401."""
    monkeypatch.setattr(settings, 'BEARER', None)
    monkeypatch.setattr(settings, 'BEARER_TOKENS', tokens)
    monkeypatch.setattr(settings, 'BEARER_TOKENS_FILE', None)
    line = manage.how_to_call()
    assert shown in line and '$BEARER' not in line and 'svc-token-1234' not in line, line


def test_the_stacks_curl_example_calls_nginx_whatever_bind_says(monkeypatch, capsys):
    """With BIND exported for `make run` (a Unix socket, another port), the stack's line pointed where nothing
    listens: the stack sets each replica's BIND itself, and nginx serves on PORT."""
    from ops.stack import StackConfig, announce
    monkeypatch.setattr(settings, 'BIND', 'unix:/tmp/elsewhere.sock')
    monkeypatch.setattr(settings, 'BIND_PORT', None)
    monkeypatch.setattr(settings, 'BEARER', ADMIN_TOKEN)
    announce(StackConfig(port=18999, replicas=2, replica_base_port=19000, pgbouncer=False, pgbouncer_port=0))
    line = capsys.readouterr().err.splitlines()[1]
    assert line.strip().startswith('curl -s -X POST http://127.0.0.1:18999/example ') and 'unix' not in line, line


@pytest.mark.parametrize('packages', [['modules'], ['tests.fixture_modules']])
def test_the_curl_example_calls_an_action_that_answers_2xx(monkeypatch, make_app, packages):
    monkeypatch.setattr(settings, 'MODULE_PACKAGES', packages)
    monkeypatch.setattr(settings, 'BEARER', ADMIN_TOKEN)  # a token is configured, as env/local/.env's
    line = manage.how_to_call()
    path = re.search(r'http://127\.0\.0\.1:\d+(/\S*)', line).group(1)
    assert path == '/example' if packages == ['modules'] else '/example/' not in path
    response = make_app(MODULE_PACKAGES=packages).test_client().post(
        path, json={}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert 200 <= response.status_code < 300, response.get_data(as_text=True)
    assert '/healthz' in manage.how_to_call([])
