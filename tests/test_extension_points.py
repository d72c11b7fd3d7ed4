"""The Gateway's extension points: session configure/reset, the JSON type registry, error translators, headers."""
import dataclasses
import datetime
import decimal
import enum
import gzip
import json
import logging
import uuid

import pytest

import psycopg2.errors
import psycopg2.extensions
import psycopg2.extras
import werkzeug.exceptions
from marshmallow import ValidationError

from lib.db import DEFAULT, Pool, connection
from lib.db.pool import DatabaseUnreachable
from lib.db.session import (DISCARD_ALL, RESET_SESSION, PooledConnection, application_name, configure_with,
                            reset_with, session_settings, startup_options)
from lib.db.types import with_types
from lib.decorators import inject_conn
from lib.errors import ERROR_TRANSLATORS, Conflict, ImproperlyConfigured, translates
from lib.jsonenc import JSON_TYPES, dumps_bytes, register_json_type
from tests import session_hooks
from tests.helpers import Caller


@pytest.fixture()
def one_connection_call(make_app):
    """POST as admin to an app whose pool holds a single connection, so every request shares one session."""
    return Caller(make_app(DB_POOL_MAX=1).test_client())


def test_a_request_leaves_no_session_state_for_the_next(one_connection_call):
    before = one_connection_call('/session/state').get_json()
    leaked_on = one_connection_call('/session/change-everything').get_json()['pid']
    after = one_connection_call('/session/state').get_json()
    assert after['pid'] == leaked_on == before['pid'], 'the same connection served all three'
    assert after == before
    assert after['statement_timeout'] == '30s' and after['time_zone'] == 'UTC'
    assert (after['prepared'], after['listening'], after['advisory_locks'], after['temp_tables']) == (0, 0, 0, 0)


LEAK_EVERYTHING = ("SET statement_timeout = 1234; SET TimeZone = 'Asia/Tokyo'; SET DateStyle = 'German'; "
                   "SET IntervalStyle = 'iso_8601'; SET search_path = pg_catalog; SET application_name = 'leaked'; "
                   "PREPARE leaked AS SELECT 1; LISTEN leaked; SELECT pg_advisory_lock(4242); "
                   "CREATE TEMP TABLE leaked (id int); DECLARE leaked CURSOR WITH HOLD FOR SELECT 1; "
                   "SET ROLE pg_read_all_settings")
STATE_NOW = ("SELECT current_setting('statement_timeout'), current_setting('TimeZone'), current_setting('DateStyle'), "
             "current_setting('IntervalStyle'), current_setting('search_path'), current_setting('application_name'), "
             "current_user = session_user, "
             "(SELECT count(*) FROM pg_prepared_statements) + (SELECT count(*) FROM pg_listening_channels()) "
             "+ (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) "
             "+ (SELECT count(*) FROM pg_class WHERE relpersistence = 't') + (SELECT count(*) FROM pg_cursors)")
DEFAULT_SEARCH_PATH = '"$user", public'


def run_in_a_lease(pool, statement):
    """Run statement on pool's connection in an autocommit lease."""
    with connection(pool, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute(statement)


def session_after_leaking_leases(pool):
    """Leave every kind of session state on pool's only connection twice (its first reset is always the full one,
    the second is the one chosen for it), then borrow it again: return (its reset statement, (its settings...,
    whether its role is its own, how many leftovers it still holds))."""
    for _ in range(2):
        run_in_a_lease(pool, LEAK_EVERYTHING)
    with connection(pool, autocommit=True) as conn, conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
        cursor.execute(STATE_NOW)
        return conn.reset_statement, cursor.fetchone()


def clean_session(config, search_path=DEFAULT_SEARCH_PATH):
    """Return what STATE_NOW reads on a session as dbapi configures it."""
    return '30s', 'UTC', 'ISO, MDY', 'postgres', search_path, application_name(config), True, 0


@pytest.fixture()
def pool_without_startup_options(make_app, database_url):
    """A one-connection pool with the default configure and reset whose settings never arrive as startup options,
    as through pgbouncer (ignore_startup_parameters drops them); yield (pool, the app config it was made from)."""
    config = make_app(DB_POOL_MAX=1).config
    settings = session_settings(config)
    pool = Pool(database_url, 1, 1000, configure=with_types(configure_with(settings)), reset=reset_with(settings),
                connection_factory=PooledConnection)
    yield pool, config
    pool.close()


def test_the_reset_is_discard_all_alone_when_the_settings_are_startup_options(make_app):
    app = make_app(DB_POOL_MAX=1)
    reset_statement, state = session_after_leaking_leases(app.extensions['dbapi'].pools[DEFAULT])
    assert reset_statement == DISCARD_ALL
    assert state == clean_session(app.config)


def test_the_reset_sets_the_settings_again_where_startup_options_never_arrive(pool_without_startup_options):
    pool, config = pool_without_startup_options
    reset_statement, state = session_after_leaking_leases(pool)
    assert reset_statement.startswith(RESET_SESSION) and 'SET "TimeZone"' in reset_statement
    assert state == clean_session(config)


@pytest.mark.parametrize('startup_options', [True, False])
def test_a_custom_settings_value_is_reset_but_its_name_stays_as_docs_architecture_says(
        make_app, pool_without_startup_options, startup_options):
    """PostgreSQL keeps a custom setting's placeholder through DISCARD ALL and RESET ALL (trial AG)."""
    pool = make_app(DB_POOL_MAX=1).extensions['dbapi'].pools[DEFAULT]
    if not startup_options:
        pool, _ = pool_without_startup_options
    for _ in range(2):  # a connection's first reset is the full one, its later ones the one chosen for it
        run_in_a_lease(pool, "SELECT set_config('my.var', 'leaked', false)")
    with connection(pool, autocommit=True) as conn, conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
        cursor.execute("SELECT current_setting('my.var', true)")
        assert cursor.fetchone() == ('',)


def test_a_temporary_view_cannot_choose_the_reset(pool_without_startup_options):
    pool, config = pool_without_startup_options
    # The connection's first request fakes pg_settings, as if the startup options had arrived, and drops the timeout.
    faked = ', '.join(f"('{name.lower()}', '{value}')" for name, value in session_settings(config).items())
    run_in_a_lease(pool, f'CREATE TEMP VIEW pg_settings AS SELECT * FROM (VALUES {faked}) AS v(name, reset_val); '
                         'SET statement_timeout = 0')
    run_in_a_lease(pool, 'SET statement_timeout = 0')
    with connection(pool, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT current_setting('statement_timeout')")
        assert (conn.reset_statement != DISCARD_ALL, cursor.fetchone()) == (True, ('30s',))


def test_a_requests_notifications_never_reach_the_next(make_app):
    pool = make_app(DB_POOL_MAX=1).extensions['dbapi'].pools[DEFAULT]
    run_in_a_lease(pool, "LISTEN secrets; NOTIFY secrets, 'password=hunter2'")
    with connection(pool, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute('SELECT 1')
        assert conn.notifies == []


def test_psycopg2s_own_session_state_goes_back_too(make_app):
    pool = make_app(DB_POOL_MAX=1).extensions['dbapi'].pools[DEFAULT]
    with connection(pool) as conn:
        conn.set_session(isolation_level='SERIALIZABLE', readonly=True, deferrable=True)
        conn.set_client_encoding('LATIN1')
    with connection(pool) as conn, conn.cursor() as cursor:
        cursor.execute('CREATE TEMP TABLE written (text text); INSERT INTO written VALUES (%s) RETURNING text', ('Zoë',))
        assert cursor.fetchone() == ('Zoë',)
        assert (conn.isolation_level, conn.readonly, conn.deferrable, conn.encoding) == (None, None, None, 'UTF8')


def test_startup_options_keep_the_dsns_own_and_escape_spaces():
    dsn = 'postgresql://db.example/app?options=-c%20search_path%3Dapp'
    assert (startup_options({'statement_timeout': '0', 'DateStyle': 'ISO, MDY'}, dsn)
            == r'-c search_path=app -c statement_timeout=0 -c DateStyle=ISO,\ MDY')


def test_a_dsns_own_startup_options_still_apply(make_app, database_url):
    dsn = psycopg2.extensions.make_dsn(database_url, options='-c search_path=pg_catalog,public')
    app = make_app(DB_POOL_MAX=1, DATABASES={DEFAULT: dsn})
    reset_statement, state = session_after_leaking_leases(app.extensions['dbapi'].pools[DEFAULT])
    assert reset_statement == DISCARD_ALL
    assert state == clean_session(app.config, search_path='pg_catalog,public')


def test_set_local_outside_a_transaction_is_logged_not_silent(one_connection_call, caplog):
    with caplog.at_level(logging.WARNING, logger='dbapi.db'):
        response = one_connection_call('/session/local-outside-transaction')
    assert response.status_code == 200 and response.get_json()['statement_timeout'] == '30s'
    assert any('SET LOCAL can only be used in transaction blocks' in record.getMessage() for record in caplog.records)


def test_custom_configure_and_reset_callbacks_run_at_their_seams(make_app):
    seen = []

    def configure(conn):
        seen.append('configure')
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SET application_name = 'configured'")

    app = make_app(DB_POOL_MAX=1, DB_CONFIGURE=configure, DB_RESET=lambda conn: seen.append('reset'))
    pool = app.extensions['dbapi'].pools[DEFAULT]
    for _ in range(2):
        with connection(pool, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT current_setting('application_name')")
            assert cursor.fetchone() == ('configured',)
    assert seen == ['configure', 'reset', 'reset']


@pytest.mark.parametrize('configure, reset', [
    (session_hooks.configure, session_hooks.reset),  # create_app's own arguments
    ('tests.session_hooks:configure', 'tests.session_hooks:reset'),  # as the settings name them
])
def test_a_setting_made_in_configure_lasts_with_the_reset_docs_architecture_pairs_it_with(make_app, configure, reset):
    pool = make_app(DB_POOL_MAX=1, DB_CONFIGURE=configure, DB_RESET=reset).extensions['dbapi'].pools[DEFAULT]
    seen = []
    for _ in range(3):
        with connection(pool, autocommit=True) as conn, conn.cursor() as cursor:
            cursor.execute("SELECT current_setting('search_path')")
            seen.append(cursor.fetchone()[0])
            cursor.execute('SET search_path = pg_catalog')
    assert seen == ['app, public'] * 3


def test_a_reset_that_fails_throws_the_connection_away(make_app):
    def failing_reset(conn):
        raise __import__('psycopg2').OperationalError('cannot reset')

    pool = make_app(DB_POOL_MAX=1, DB_RESET=failing_reset).extensions['dbapi'].pools[DEFAULT]
    with connection(pool, autocommit=True):
        pass
    assert pool.gauges()['idle'] == 0 and pool.gauges()['discarded'] == 1


def test_a_reset_that_raises_any_error_throws_the_connection_away_and_the_request_stands(make_app, caplog):
    def buggy_reset(conn):
        raise RuntimeError('a bug in a custom reset')

    app = make_app(DB_POOL_MAX=1, DB_RESET=buggy_reset)
    call = Caller(app.test_client())
    with caplog.at_level(logging.ERROR, logger='dbapi.db'):
        created = call('/users/create', {'email': f'reset-bug-{uuid.uuid4().hex}@example.com', 'name': 'Reset Bug'})
    assert created.status_code == 201, 'the insert was committed: the answer must say so'
    assert call('/users/get', {'id': created.get_json()['id']}).status_code == 200
    assert app.extensions['dbapi'].pools[DEFAULT].gauges()['discarded'] == 2  # one per request, each closed
    logged = [record.exc_info[1].args for record in caplog.records if record.name == 'dbapi.db']
    assert logged == [('a bug in a custom reset',)] * 2


def setting_search_path(conn):
    """A configure written without `conn.autocommit = True`, as architecture.md's example has it."""
    with conn.cursor() as cursor:
        cursor.execute("SET search_path = app, public")


def test_a_configure_that_leaves_autocommit_alone_keeps_what_it_set(make_app):
    """Every request was a 500: "set_session cannot be used inside a transaction" (trial Y)."""
    pool = make_app(DB_POOL_MAX=1, DB_CONFIGURE=setting_search_path).extensions['dbapi'].pools[DEFAULT]
    with connection(pool, autocommit=True) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT current_setting('search_path')")
        assert cursor.fetchone() == ('app, public',)


def refusing_configure(conn):
    """A configure whose SET PostgreSQL refuses with SQLSTATE 22023, a class 22 data exception."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SET work_mem = 'lots'")


def test_a_configure_that_postgresql_refuses_is_a_500_not_the_callers_422(make_app):
    """Its 22023 was answered as the caller's 422, configure's SQL in the detail (trial Y)."""
    call = Caller(make_app(DB_POOL_MAX=1, DB_CONFIGURE=refusing_configure).test_client())
    response = call('/users/get', {'id': 1})
    assert response.status_code == 500 and response.get_json()['detail'] == 'The server could not complete the request.'
    assert 'work_mem' not in response.get_data(as_text=True)


def configure_on_a_server_shutting_down(conn):
    """A configure whose connection the server ends (57P01 admin_shutdown), as a server shutting down between the
    connect and the setup does, or pgbouncer's first statement on a server it cannot reach (08P01)."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute('SELECT pg_terminate_backend(pg_backend_pid())')


def test_a_new_connection_whose_setup_the_database_ends_says_nothing_was_sent(make_app):
    """Behind pgbouncer, with PostgreSQL down, every write was told it "may have run" (trial AB): the setup's
    statement failed, never the request's."""
    call = Caller(make_app(DB_POOL_MAX=1, DB_CONFIGURE=configure_on_a_server_shutting_down).test_client())
    response = call('/users/create', {'email': 'never-sent@example.com', 'name': 'N'})
    assert (response.status_code, response.get_json()['detail']) == (503, DatabaseUnreachable.detail)
    assert response.headers['Retry-After'] == '1'


@pytest.mark.parametrize('reset, said', [
    (lambda conn: conn.cursor().execute('SELECT 1 / 0'), 'failed: division by zero (SQLSTATE 22012)'),
    (lambda conn: conn.cursor().execute('SELECT 1') or setattr(conn, 'autocommit', False) or
     conn.cursor().execute('SELECT 1'), 'left a transaction open'),
])
def test_a_reset_that_throws_every_connection_away_says_so(make_app, caplog, reset, said):
    """It threw each connection away in silence: a new connection per request, and nothing said why (trial Y)."""
    pool = make_app(DB_POOL_MAX=1, DB_RESET=reset).extensions['dbapi'].pools[DEFAULT]
    with caplog.at_level(logging.WARNING, logger='dbapi.db'):
        with connection(pool, autocommit=True):
            pass
    assert pool.gauges()['discarded'] == 1
    assert [record.getMessage() for record in caplog.records if record.name == 'dbapi.db'] == [
        f'The reset of a returned connection {said}; the connection is thrown away']


def test_an_actions_cursor_factory_does_not_reach_the_reset_or_the_next_request(make_app):
    app = make_app(DB_POOL_MAX=1)

    @app.post('/scratchpad/logging-cursor')
    @inject_conn(DEFAULT, named=False)
    def choose_a_cursor_class(conn):
        conn.cursor_factory = psycopg2.extras.LoggingCursor  # runs only on a LoggingConnection
        return {'chosen': True}
    call = Caller(app.test_client())
    assert [call('/scratchpad/logging-cursor', {}).status_code for _ in range(2)] == [200, 200]
    assert call('/session/state').status_code == 200
    assert app.extensions['dbapi'].pools[DEFAULT].gauges()['connects'] == 1


class Money:
    """A type no library knows."""

    def __init__(self, cents):
        self.cents = cents


def test_a_registered_json_type_is_written_the_same_by_responses_streams_and_logs(app, monkeypatch):
    monkeypatch.setitem(JSON_TYPES, Money, lambda money: f'{money.cents / 100:.2f} EUR')
    assert dumps_bytes({'price': Money(1050)}) == b'{"price":"10.50 EUR"}'
    with app.test_request_context():
        from lib.jsonenc import json_array_chunks, json_response
        assert json_response(Money(5)).get_data() == b'"0.05 EUR"'
        assert b''.join(json_array_chunks([[Money(1), Money(2)]])) == b'["0.01 EUR","0.02 EUR"]'


def test_register_json_type_fills_the_registry(monkeypatch):
    monkeypatch.setattr('lib.jsonenc.JSON_TYPES', dict(JSON_TYPES))
    register_json_type(Money, lambda money: money.cents)
    assert dumps_bytes([Money(7)]) == b'[7]'


class Colour(enum.Enum):
    """An Enum, which orjson writes as its value."""

    RED = 1


@dataclasses.dataclass
class Point:
    """A dataclass, which orjson writes as an object."""

    x: int


class Tag(str):
    """A str of a module's own, which orjson writes as the str it is."""


@pytest.mark.parametrize('python_type, said', [
    (decimal.Decimal, 'Decimal has a JSON encoder already'),  # every module's numeric became a float (trial Y)
    (datetime.date, 'date has a JSON encoder already'),
    (Colour, 'Colour is written by orjson itself'),  # accepted, and never asked (trial Y)
    (Tag, 'Tag is written by orjson itself'),
    (Point, 'Point is written by orjson itself'),
    (uuid.UUID, 'UUID has a JSON encoder already'),  # asked for a subclass alone, which orjson does not write
    (float, 'float has a JSON encoder already'),
    (tuple, 'tuple is written by orjson itself'),
])
def test_register_json_type_refuses_a_type_it_would_change_for_every_module_or_never_be_asked_for(
        monkeypatch, python_type, said):
    monkeypatch.setattr('lib.jsonenc.JSON_TYPES', dict(JSON_TYPES))
    with pytest.raises(TypeError, match=said):
        register_json_type(python_type, str)


def test_a_subclass_of_a_contract_type_may_have_its_own_encoder(monkeypatch):
    monkeypatch.setattr('lib.jsonenc.JSON_TYPES', dict(JSON_TYPES))

    class Cents(decimal.Decimal):
        """A module's own number type."""
    register_json_type(Cents, lambda cents: int(cents * 100))
    assert dumps_bytes([Cents('1.25'), decimal.Decimal('1.25')]) == b'[125,"1.25"]'


def test_a_subclass_of_a_type_orjson_writes_but_not_its_subclasses_may_have_its_own_encoder(monkeypatch):
    """orjson hands a float, tuple or UUID subclass to the registry: its entry is asked, where it was refused."""
    monkeypatch.setattr('lib.jsonenc.JSON_TYPES', dict(JSON_TYPES))

    class Percent(float):
        """A module's own float."""
    register_json_type(Percent, lambda percent: f'{percent:g} %')
    assert dumps_bytes([Percent(12.5), 12.5]) == b'["12.5 %",12.5]'


class OutOfStock(Exception):
    """An exception a module might raise, translated by a registered translator."""


def test_a_registered_error_translator_decides_the_problem(make_app, monkeypatch):
    monkeypatch.setattr('lib.errors.ERROR_TRANSLATORS', dict(ERROR_TRANSLATORS))
    translates(OutOfStock)(lambda exc: Conflict(f'Out of stock: {exc}'))
    app = make_app()
    app.add_url_rule('/out-of-stock', 'out_of_stock', lambda: (_ for _ in ()).throw(OutOfStock('tea')),
                     methods=['POST'])
    response = app.test_client().post('/out-of-stock')
    assert response.status_code == 409 and response.mimetype == 'application/problem+json'
    assert response.get_json()['detail'] == 'Out of stock: tea'


def test_a_class_has_one_translator(monkeypatch):
    monkeypatch.setattr('lib.errors.ERROR_TRANSLATORS', dict(ERROR_TRANSLATORS))
    translates(OutOfStock)(lambda exc: Conflict('Out of stock.'))
    with pytest.raises(TypeError, match='OutOfStock has a translator already .*: a class has one, for every module'):
        translates(OutOfStock)(lambda exc: Conflict('Gone.'))


class SchemaRefusal(ValidationError):
    """A module's own kind of ValidationError."""


@pytest.mark.parametrize('error_class', [Exception, BaseException])
def test_no_translator_answers_every_modules_bugs(monkeypatch, error_class):
    monkeypatch.setattr('lib.errors.ERROR_TRANSLATORS', dict(ERROR_TRANSLATORS))
    with pytest.raises(TypeError, match=f"a translator of {error_class.__name__} would answer every module's bugs"):
        translates(error_class)(lambda exc: Conflict('Whatever it was.'))


@pytest.mark.parametrize('error_class', [psycopg2.errors.UniqueViolation, SchemaRefusal, werkzeug.exceptions.NotFound,
                                         Conflict])
def test_a_module_cannot_translate_an_error_the_contract_answers_for_every_module(monkeypatch, error_class):
    """A module's own UniqueViolation translator answered every module's duplicates without errors or sqlstate."""
    monkeypatch.setattr('lib.errors.ERROR_TRANSLATORS', dict(ERROR_TRANSLATORS))
    with pytest.raises(TypeError, match=f'{error_class.__name__} is answered as docs/contract.md section 3 says'):
        translates(error_class)(lambda exc: Conflict('This SKU is already in the catalogue.'))


@pytest.fixture()
def served_by_step():
    """A header step appended to lib.http.headers.RESPONSE_HEADERS for one test."""
    from lib.http.headers import RESPONSE_HEADERS
    step = lambda environ, sent: [('X-Served-By', 'dbapi')]  # noqa: E731
    RESPONSE_HEADERS.append(step)
    yield step
    RESPONSE_HEADERS.remove(step)


def test_a_header_step_adds_its_header_to_successes_and_errors(make_app, served_by_step):
    client = make_app().test_client()
    for path in ('/healthz', '/no/such/module'):
        response = client.get(path)
        assert response.headers['X-Served-By'] == 'dbapi' and response.headers['X-Request-ID']
        assert response.headers.getlist('Vary') == ['Accept-Encoding']


def raising_step(environ, sent):
    """A header step with a bug."""
    raise RuntimeError('no header today')


@pytest.mark.parametrize('step, fault', [
    (raising_step, 'The header step tests.test_extension_points.raising_step failed'),
    (lambda environ, sent: None, 'returned NoneType, not a list of (name, value) strings'),
    (lambda environ, sent: [('X-Number', 5)], 'returned list, not a list of (name, value) strings'),
    (lambda environ, sent: ('X-Tuple', 'a'), 'returned tuple, not a list'),
    (lambda environ, sent: [('Content-Type', 'text/html')], "returned 'Content-Type': the framework sets it"),
    (lambda environ, sent: [('X-Split', 'a\r\nSet-Cookie: b')], "'X-Split' with a character other than visible ASCII"),
    (lambda environ, sent: [('X-Split', 'caf\u00e9 \u2615')], "'X-Split' with a character other than visible ASCII"),
])
def test_a_header_step_that_fails_adds_nothing_and_says_why_in_one_error_line(make_app, caplog, step, fault):
    """One that raised or returned None went out of the WSGI app: gunicorn answered a second time, logged the request
    twice and its post_request hook failed on it (trial Y); one that returned a Content-Type sent two."""
    from lib.http.headers import RESPONSE_HEADERS
    RESPONSE_HEADERS.append(step)
    try:
        response = make_app().test_client().get('/healthz')
    finally:
        RESPONSE_HEADERS.remove(step)
    assert response.status_code == 200 and response.headers['X-Request-ID']
    assert response.headers.getlist('Content-Type') == ['application/json']
    assert 'X-Number' not in response.headers and 'X-Split' not in response.headers
    errors = [record for record in caplog.records if record.name == 'dbapi.headers']
    assert len(errors) == 1 and errors[0].levelname == 'ERROR' and fault in errors[0].getMessage(), errors


def test_a_streamed_export_is_gzipped_for_a_client_that_accepts_only_gzip(call):
    call('/probe/things/create', {'code': 'stream-gzip'})
    response = call('/probe/things/export', headers={'Accept-Encoding': 'gzip'})
    assert response.headers['Content-Encoding'] == 'gzip'
    assert any(thing['code'] == 'stream-gzip' for thing in json.loads(gzip.decompress(response.get_data())))


def test_the_decorators_still_accept_the_documented_imports():
    assert callable(inject_conn(DEFAULT)) and DEFAULT == 'default'


def test_trusted_hosts_are_still_checked_on_the_fast_route(make_app):
    client = make_app(TRUSTED_HOSTS=['dbapi.example']).test_client()
    assert client.get('/healthz', base_url='http://elsewhere.example').status_code == 400
    assert client.get('/healthz', base_url='http://dbapi.example').status_code == 200


@pytest.mark.parametrize('value, message', [
    ('tests.session_hooks', 'DB_CONFIGURE must name a function as package.module:function'),
    ('tests.session_hooks:missing', "DB_CONFIGURE: tests.session_hooks:missing cannot be imported (AttributeError"),
    ('no_such_package.hooks:configure', "cannot be imported (ModuleNotFoundError"),
    ('tests.session_hooks:NOT_A_FUNCTION', 'DB_CONFIGURE: tests.session_hooks:NOT_A_FUNCTION is not a function'),
])
def test_a_session_hook_that_names_no_function_stops_the_start(make_app, value, message):
    with pytest.raises(ImproperlyConfigured) as raised:
        make_app(DB_CONFIGURE=value)
    assert message in str(raised.value) and '\n' not in str(raised.value)
