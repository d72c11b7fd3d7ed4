"""The per-request fast paths give the same answers as the slow ones they skip (issue 5)."""
import itertools
from decimal import Decimal

import flask
import pytest
from flask.sessions import NullSession
from marshmallow import Schema, ValidationError, fields, pre_load, validates_schema
from werkzeug.test import EnvironBuilder

from lib import auth
from lib.decorators import schema_of
from lib.fastschema import fast_loader
from lib.http.routing import FixedRulesFirst
from modules.users.schemas import NewUser, Page, UserChange, UserId
from tests.conftest import ADMIN_TOKEN
from tests.test_errors import assert_problem

# Values of every JSON type, and edge values of the ones the schemas take.
VALUES = [0, 1, 7, -1, 1000, 1001, 2**70, 1.0, 2.5, True, False, None, '', 'a', '7', 'x@example.com',
          'not an email', 'a' * 201, f"{'a' * 320}@example.com", [], {}, [1], {'a': 1}]


def bodies_for(schema):
    """Yield bodies for schema: each field with each value, all fields valid-looking, missing and extra keys."""
    keys = [field.data_key or name for name, field in schema.load_fields.items()]
    yield {}
    for key, value in itertools.product(keys, VALUES):
        yield {key: value}
    for values in itertools.product(VALUES, repeat=len(keys)) if len(keys) <= 3 else []:
        yield dict(zip(keys, values))
    yield {**dict.fromkeys(keys, 1), 'unknown': 1}


def marshmallow_result(schema, body):
    """Return what marshmallow loads body to, or the ValidationError it raises."""
    try:
        return schema.load(body)
    except ValidationError as exc:
        return exc


def mounted_schemas(app):
    """Return (path, schema) of every mounted route declared with use_schema."""
    routes = app.extensions['dbapi'].routes
    return [(f'/{route.module}/{route.name}', schema_of(route.action)) for route in routes if schema_of(route.action)]


def test_fast_loads_agree_with_marshmallow_on_every_mounted_schema(app):
    fast_paths = 0
    for path, schema in mounted_schemas(app):
        load = fast_loader(schema)
        if load is None:
            continue
        fast_paths += 1
        accepted = 0
        for body in bodies_for(schema):
            loaded = load(body)
            if loaded is not None:
                accepted += 1
                assert loaded == marshmallow_result(schema, body), (path, body)
        assert accepted, f'{path}: no body took the fast path'
    assert fast_paths >= 5


@pytest.mark.parametrize('schema, body, loaded', [
    (UserId(), {'id': 5}, {'id': 5}),
    (NewUser(), {'email': 'a@example.com', 'name': 'A'}, {'email': 'a@example.com', 'name': 'A'}),
    (Page(), {}, {'limit': 100, 'after_id': 0}),
    (Page(), {'limit': 3}, {'limit': 3, 'after_id': 0}),
])
def test_valid_bodies_take_the_fast_path(schema, body, loaded):
    assert fast_loader(schema)(body) == loaded


@pytest.mark.parametrize('schema, body', [
    (UserId(), {'id': '5'}), (UserId(), {'id': True}), (UserId(), {'id': 0}), (UserId(), {}),
    (UserId(), {'id': 5, 'extra': 1}), (NewUser(), {'email': 'nope', 'name': 'A'}), (Page(), {'limit': None}),
])
def test_doubtful_bodies_are_left_to_marshmallow(schema, body):
    assert fast_loader(schema)(body) is None


class Checked(Schema):
    """A schema with a custom field and schema validators of both kinds."""

    low = fields.Decimal(required=True)
    high = fields.Decimal(required=True)
    seen = []

    @validates_schema
    def ordered(self, data, **kwargs):
        if data['low'] > data['high']:
            raise ValidationError('low is above high', 'low')

    @validates_schema(pass_original=True)
    def keeps_original(self, data, original, **kwargs):
        Checked.seen.append(original)


class Rewritten(Schema):
    """A schema whose pre_load hook changes the body."""

    name = fields.String()

    @pre_load
    def strip(self, data, **kwargs):
        return {key: value.strip() for key, value in data.items()}


def test_schema_validators_and_custom_fields_take_the_fast_path():
    load = fast_loader(Checked())
    assert load({'low': '1.5', 'high': 2}) == {'low': Decimal('1.5'), 'high': Decimal(2)}
    assert Checked.seen[-1] == {'low': '1.5', 'high': 2}
    assert load({'low': 3, 'high': 2}) is None
    assert fast_loader(UserChange())({'id': 3, 'name': 'N'}) == {'id': 3, 'name': 'N'}
    assert fast_loader(UserChange())({'id': 3}) is None


def test_schemas_with_load_hooks_have_no_fast_path():
    assert fast_loader(Rewritten()) is None
    assert fast_loader(UserId(many=True)) is None


def test_an_accepted_header_is_remembered_and_a_refused_one_is_not(app, call):
    clients = app.extensions['dbapi'].clients
    assert call('/users/get', {'id': 1}, token=ADMIN_TOKEN).status_code in (200, 404)
    assert f'Bearer {ADMIN_TOKEN}' in clients.known_headers
    assert call('/users/get', {'id': 1}, token='not-a-known-token').status_code == 401
    assert 'Bearer not-a-known-token' not in clients.known_headers


def test_remembered_headers_are_bounded(make_app, monkeypatch):
    monkeypatch.setattr(auth, 'MAX_KNOWN_HEADERS', 2)
    app = make_app()
    client, clients = app.test_client(), app.extensions['dbapi'].clients
    spellings = [f'Bearer {ADMIN_TOKEN}', f'bearer {ADMIN_TOKEN}', f'Bearer  {ADMIN_TOKEN}', f'BEARER {ADMIN_TOKEN} ']
    for header in spellings:
        assert client.post('/probe/echo', json={}, headers={'Authorization': header}).status_code == 200, header
    assert len(clients.known_headers) == 2


# A chunked body, as gunicorn hands it over: no declared length, a stream that ends where the body does.
CHUNKED = {'CONTENT_LENGTH': '', 'wsgi.input_terminated': True}


def test_a_chunked_body_is_read_to_its_end(client):
    headers = {'Authorization': f'Bearer {ADMIN_TOKEN}'}
    response = client.post('/probe/echo', json={'a': 1}, headers=headers, environ_overrides=CHUNKED)
    assert response.status_code == 200 and response.get_json() == {'a': 1}


def test_an_unterminated_body_over_the_limit_is_413_too(make_app):
    client = make_app(MAX_CONTENT_LENGTH=100).test_client()
    response = client.post('/probe/echo', json={'pad': 'x' * 200}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'},
                           environ_overrides=CHUNKED)
    assert_problem(response, 413)


def test_views_and_hooks_run_as_they_are_without_a_coroutine_check(app):
    def view():
        return 'plain'
    assert app.ensure_sync(view) is view


def test_requests_share_one_empty_session_and_set_no_cookie(app, call):
    response = call('/users/get', {'id': 1})
    assert 'Set-Cookie' not in response.headers
    with app.test_request_context('/'):
        assert flask.session._get_current_object() is app.session_interface.null_session
        assert isinstance(app.session_interface.null_session, NullSession)


def test_a_body_shorter_than_its_declared_length_is_a_400(client):
    response = client.post('/probe/echo', data=b'{"a": 1}', headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                           'Content-Type': 'application/json'}, environ_overrides={'CONTENT_LENGTH': '100'})
    assert_problem(response, 400)


class BrokenStream:
    """A request body whose client went away: reading it fails the way gunicorn's does."""

    def read(self, size=-1):
        raise OSError('no more data')


def test_a_body_whose_client_went_away_is_a_400(client):
    response = client.post('/probe/echo', data=b'{"a": 1}', headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                           'Content-Type': 'application/json'}, environ_overrides={'wsgi.input': BrokenStream()})
    assert_problem(response, 400)


def werkzeug_match(app, environ):
    """Return what werkzeug's own adapter matches for environ: (rule, arguments), or the exception it raises."""
    try:
        return app.url_map.bind_to_environ(environ, subdomain='').match(return_rule=True)
    except Exception as exc:  # NotFound, MethodNotAllowed and RequestRedirect are answers here
        return exc


def fast_match(app, environ):
    """Return what the gateway's adapter matches for environ, as werkzeug_match does."""
    try:
        return app.create_url_adapter(flask.Request(environ)).match(return_rule=True)
    except Exception as exc:
        return exc


def same(result, expected):
    """Tell whether two matches agree: the same rule and arguments, or the same exception and target."""
    if isinstance(expected, Exception):
        return type(result) is type(expected) and getattr(result, 'new_url', None) == getattr(expected, 'new_url', None)
    return result == expected


def test_the_fixed_route_table_matches_as_werkzeug_does(app):
    paths = {rule.rule for rule in app.url_map.iter_rules()}
    variants = {variant for path in paths for variant in (path, path + '/', '/' + path, path.upper(), path + 'x')}
    methods = ('POST', 'GET', 'HEAD', 'OPTIONS', 'PUT', 'DELETE')
    checked = 0
    for path, method in itertools.product(sorted(variants | {'/', '/no/such'}), methods):
        environ = EnvironBuilder(path=path, method=method).get_environ()
        expected = werkzeug_match(app, environ)
        assert same(fast_match(app, environ), expected), (method, path, expected)
        checked += not isinstance(expected, Exception)
    assert checked >= len(paths), 'every route should have matched at least once'


def test_with_a_server_name_flask_binds_the_routes_itself(make_app):
    environ = EnvironBuilder(path='/users/get', method='POST').get_environ()
    assert isinstance(make_app().create_url_adapter(flask.Request(environ)), FixedRulesFirst)
    adapter = make_app(SERVER_NAME='dbapi.example').create_url_adapter(flask.Request(environ))
    assert not isinstance(adapter, FixedRulesFirst) and adapter.server_name == 'dbapi.example'
