"""CONTRACT section 7: settings come from the environment over env/<ENVIRONMENT>/.env, and bad values stop the start."""
import ast
import json
import os
import re
import subprocess
import sys

import psycopg2
import pytest
from psycopg2.extensions import parse_dsn

import settings
from tests.helpers import run_sql

AWKWARD_PASSWORD = """p@ss w'o"rd/with\\odd=chars:%20?#"""


def read_settings(**environ):
    """Import settings in a fresh interpreter with environ; return (exit code, stdout, stderr)."""
    code = 'import settings, json; print(json.dumps({k: str(v) for k, v in vars(settings).items() if k.isupper()}))'
    base = {key: value for key, value in os.environ.items() if not key.startswith(('DEFAULT_DB', 'DATABASE_URL'))}
    result = subprocess.run([sys.executable, '-c', code], cwd=settings.BASE_DIR, capture_output=True, text=True,
                            env={**base, 'ENVIRONMENT': 'test', **environ}, timeout=60)
    return result.returncode, result.stdout, result.stderr


@pytest.mark.parametrize('name, value', [
    ('PORT', 'eighty'), ('PORT', '70000'), ('WEB_CONCURRENCY', '0'), ('DB_POOL_MAX', '-1'),
    ('DB_STATEMENT_TIMEOUT_MS', '1.5'), ('MAX_CONTENT_LENGTH', 'big'), ('LOG_LEVEL', 'LOUD'), ('FAST_PATHS', 'disable'),
    ('FAST_PATHS', '2'), ('ENVIRONMENT', 'Prod uction'), ('DB_NAMES', 'default,bad name'), ('BIND', '127.0.0.1'),
    ('BIND', 'unix:'),
    ('BIND', '127.0.0.1:99999'), ('BIND', '127.0.0.1:0'), ('BIND', '127.0.0.1:8702,127.0.0.1:8703'),
    ('BIND', '::1:8761'), ('BIND', '[::1:8761'), ('BIND', '[::1]]:8761'), ('BIND', '[]:8761'),
    ('BIND', '[127.0.0.1]:8761'), ('BIND', '127.0.0.1:876\u00b2'), ('GRACEFUL_TIMEOUT', '0'),
    ('MODULE_PACKAGES', ' , '), ('MODULE_PACKAGES', ','), ('MODULE_PACKAGES', 'modules, modules'),
    ('PROCESS_ID', 'a/b'), ('PROCESS_ID', '../escape'), ('PROCESS_ID', '..')])
def test_bad_value_fails_at_start_naming_the_variable(name, value):
    status, _, stderr = read_settings(**{name: value})
    assert status != 0
    assert 'ImproperlyConfigured' in stderr and name in stderr


@pytest.mark.parametrize('environ, fault', [
    ({'ELK_INDEX': 'Dbapi-prod'}, "ELK_INDEX 'Dbapi-prod' has upper-case letters"),
    ({'ELK_INDEX': 'dbapi prod'}, "ELK_INDEX 'dbapi prod' has ' '"),
    ({'ELK_INDEX': '_dbapi'}, 'starts with -, _ or +'),
    ({'ELK_INDEX': 'x' * 256}, 'longer than 255 bytes'),
    ({'APP_ID': 'MyApp'}, "ELK_INDEX 'MyApp-test' (made of APP_ID and ENVIRONMENT) has upper-case letters"),
])
def test_an_index_name_elasticsearch_refuses_stops_the_start(environ, fault):
    """filebeat ships each line to the index labels.elk_index names; one Elasticsearch refuses lost every line."""
    status, _, stderr = read_settings(**environ)
    assert status != 0 and fault in stderr and 'Elasticsearch refuses it as an index name' in stderr, stderr


def test_a_log_path_that_is_a_file_says_so(tmp_path):
    (tmp_path / 'logs').write_text('')
    status, _, stderr = read_settings(LOG_PATH=str(tmp_path / 'logs'))
    assert status != 0 and f'LOG_PATH {tmp_path / "logs"} is a file: name a folder' in stderr, stderr


@pytest.mark.parametrize('name, value, listed', [('WORKER_CLASS', 'eventlet', 'gevent, gthread, sync'),
                                                 ('LOG_LEVEL', 'loud', 'DEBUG, INFO, WARNING, ERROR, CRITICAL')])
def test_a_value_not_among_the_choices_lists_them_as_the_docs_spell_them(name, value, listed):
    status, _, stderr = read_settings(**{name: value})
    assert status != 0 and f'{name} must be one of {listed}' in stderr


def test_a_choice_is_taken_in_any_case():
    _, stdout, _ = read_settings(WORKER_CLASS='GThread', LOG_LEVEL='debug')
    assert (json.loads(stdout)['WORKER_CLASS'], json.loads(stdout)['LOG_LEVEL']) == ('gthread', 'DEBUG')


def test_defaults():
    status, stdout, _ = read_settings()
    values = json.loads(stdout)
    assert status == 0
    assert values['PORT'] == '8000' and values['DB_POOL_MAX'] == '2'
    assert values['DB_STATEMENT_TIMEOUT_MS'] == '30000' and values['MAX_CONTENT_LENGTH'] == '1048576'
    assert values['LOG_LEVEL'] == 'WARNING'  # from env/test/.env
    assert values['WEB_CONCURRENCY'] == str(2 * os.cpu_count() + 1)


@pytest.mark.parametrize('environ, expected', [
    ({}, '45'), ({'DB_STATEMENT_TIMEOUT_MS': '0'}, '45'), ({'REQUEST_DEADLINE_MS': '1500'}, '17'),
    ({'REQUEST_DEADLINE_MS': '0', 'DB_STATEMENT_TIMEOUT_MS': '1500'}, '17'),
    ({'REQUEST_DEADLINE_MS': '0', 'DB_STATEMENT_TIMEOUT_MS': '0'}, '0')])
def test_the_worker_timeout_outlasts_the_deadline_else_the_statement_timeout(environ, expected):
    status, stdout, stderr = read_settings(WORKER_TIMEOUT='', **environ)
    assert status == 0, stderr
    assert json.loads(stdout)['WORKER_TIMEOUT'] == expected


@pytest.mark.parametrize('environ', [
    {'REQUEST_DEADLINE_MS': '1500', 'WORKER_TIMEOUT': '1'},
    {'REQUEST_DEADLINE_MS': '0', 'DB_STATEMENT_TIMEOUT_MS': '17000', 'WORKER_TIMEOUT': '17'},
    {'REQUEST_DEADLINE_MS': '0', 'DB_STATEMENT_TIMEOUT_MS': '0', 'WORKER_TIMEOUT': '60'}])
def test_a_worker_timeout_within_the_request_bound_stops_the_start(environ):
    status, _, stderr = read_settings(**environ)
    assert status != 0 and 'WORKER_TIMEOUT must be 0 (never) or longer than REQUEST_DEADLINE_MS' in stderr


def test_environment_variables_win_over_the_env_file():
    _, stdout, _ = read_settings(LOG_LEVEL='DEBUG')
    assert json.loads(stdout)['LOG_LEVEL'] == 'DEBUG'


def test_production_needs_a_database():
    status, _, stderr = read_settings(ENVIRONMENT='production', BEARER='x')
    assert status != 0 and 'DATABASE_URL or DEFAULT_DB_' in stderr


def test_url_and_parts_together_are_refused():
    status, _, stderr = read_settings(DATABASE_URL='postgresql://a@b/c', DEFAULT_DB_NAME='c')
    assert status != 0 and 'not both' in stderr


def test_password_with_any_character_survives_the_dsn(monkeypatch):
    for name, value in dict(NAME='db', USER='u', PASS=AWKWARD_PASSWORD, HOST='h').items():
        monkeypatch.setenv(f'DEFAULT_DB_{name}', value)
    monkeypatch.delenv('DATABASE_URL', raising=False)
    assert parse_dsn(settings.database_dsn('DEFAULT'))['password'] == AWKWARD_PASSWORD


def test_awkward_password_connects_to_a_real_server(make_app, database_url):
    run_sql(database_url, 'DROP ROLE IF EXISTS "dbapi awkward"')
    run_sql(database_url, 'CREATE ROLE "dbapi awkward" LOGIN PASSWORD %s', (AWKWARD_PASSWORD,))
    parts = parse_dsn(database_url)
    dsn = psycopg2.extensions.make_dsn(dbname=parts['dbname'], user='dbapi awkward', password=AWKWARD_PASSWORD,
                                       host=parts.get('host'), port=parts.get('port'))
    app = make_app(DATABASES={'default': dsn})
    assert app.test_client().get('/readyz').status_code == 200


@pytest.mark.parametrize('encoding', ['utf-8', 'utf-8-sig'])  # utf-8-sig: a byte order mark first (trial BL: kept)
def test_password_may_come_from_a_secret_file(monkeypatch, tmp_path, encoding):
    secret = tmp_path / 'db_password'
    secret.write_text(AWKWARD_PASSWORD + '\n', encoding=encoding)
    for name, value in dict(NAME='db', USER='u', PASS_FILE=str(secret), HOST='h').items():
        monkeypatch.setenv(f'DEFAULT_DB_{name}', value)
    monkeypatch.delenv('DEFAULT_DB_PASS', raising=False)
    monkeypatch.delenv('DATABASE_URL', raising=False)
    assert parse_dsn(settings.database_dsn('DEFAULT'))['password'] == AWKWARD_PASSWORD


def test_unreadable_secret_file_fails_at_start(tmp_path):
    status, _, stderr = read_settings(DEFAULT_DB_NAME='db', DEFAULT_DB_PASS_FILE=str(tmp_path / 'missing'))
    assert status != 0 and 'DEFAULT_DB_PASS_FILE cannot be read' in stderr


# settings.py's readers of one setting by name, and the pages whose tables document settings.
SETTING_READERS = frozenset({'env_str', 'env_int', 'env_choice', 'env_secret'})
SETTINGS_TABLES = ['README.md', 'docs/logging.md', 'docs/deployment.md']


def settings_read(path):
    """Return the names of the settings a Python file reads through settings.py's readers (a constant name)."""
    tree = ast.parse(path.read_text(), str(path))
    return {call.args[0].value for call in ast.walk(tree) if isinstance(call, ast.Call) and call.args
            and getattr(call.func, 'id', getattr(call.func, 'attr', None)) in SETTING_READERS
            and isinstance(call.args[0], ast.Constant) and isinstance(call.args[0].value, str)}


def settings_documented():
    """Return every name in backticks in the first cell of a table row of SETTINGS_TABLES."""
    rows = (line.split('|')[1] for page in SETTINGS_TABLES
            for line in (settings.BASE_DIR / page).read_text().splitlines() if line.startswith('|'))
    return {name for cell in rows for name in re.findall(r'`([A-Z][A-Z0-9_]*)`', cell)}


@pytest.mark.parametrize('value, on', [('FALSE', False), ('Off', False), ('0', False), ('yes', True), ('1', True)])
def test_fast_paths_takes_its_words_in_any_case(value, on):
    """`FALSE` left them on (trial AS)."""
    status, stdout, stderr = read_settings(FAST_PATHS=value)
    assert status == 0 and json.loads(stdout)['FAST_PATHS'] == str(on), stderr


def test_every_setting_the_code_reads_has_a_row_in_a_settings_table():
    """make stack's REPLICAS, REPLICA_BASE_PORT, STACK_PGBOUNCER and PGBOUNCER_PORT had none (trial AQ)."""
    files = [settings.BASE_DIR / name for name in ('settings.py', 'manage.py', 'app.py', 'gunicorn.conf.py')]
    files += [*settings.BASE_DIR.glob('ops/*.py'), *settings.BASE_DIR.glob('lib/**/*.py')]
    read = set().union(*(settings_read(path) for path in files))
    assert {'PORT', 'REPLICAS', 'STACK_PGBOUNCER'} <= read
    assert sorted(read - settings_documented()) == []
