"""The per-request fast paths give the same answers as the slow ones they skip (issue 5)."""
import itertools
import sys
import textwrap
from collections import OrderedDict

import flask
import pytest
import werkzeug.exceptions
from marshmallow import EXCLUDE, Schema, ValidationError, fields, pre_load, validate, validates_schema
from werkzeug.test import EnvironBuilder

import lib.modules
from lib import auth
from lib.decorators import schema_of
from lib.fastschema import fast_loader
from lib.fields import BIGINT_MAX, bigint_id
from tests.helpers import ADMIN_TOKEN, assert_problem

# Values of every JSON type, and edge values of the ones the schemas take.
# A date, an aware date and time, a UUID and a decimal's text: a module's schema with a required Date, DateTime, UUID
# or Decimal field took no body of the others, and its fast path looked untested (trial AG).
TEXTS_OF_KINDS = ['2024-01-02', '2024-01-02T03:04:05+02:00', '12345678-1234-5678-1234-567812345678', '12.50']
VALUES = [0, 1, 7, -1, 1000, 1001, 2**70, 1.0, 2.5, True, False, None, '', 'a', '7', 'x@example.com',
          'not an email', 'a' * 201, f"{'a' * 320}@example.com", [], {}, [1], {'a': 1}, *TEXTS_OF_KINDS]
# One value of each kind a body's field takes, for schemas of more keys than VALUES can be combined for.
FEW_VALUES = [1, 2.5, True, 'a', 'x@example.com', *TEXTS_OF_KINDS]
# Values for the field classes and options below: JSON types each field takes and refuses, strings of each kind.
FIELD_VALUES = [0, 1, 7, -1, 11, 2**70, 1.0, 2.5, -0.5, 1e300, True, False, None, '', ' a ', 'a', 'A', 'on', 'off',
                'yes', 'true', 'false', '1', '0', '7', '1.50', '1.005', '-2', 'NaN', 'Infinity', 'x@example.com',
                'X@example.com', 'not an email', 'a' * 30 + '@example.com', '2024-01-02', '2024-01-02T03:04:05',
                '2024-01-02T03:04:05+02:00', '12345678-1234-5678-1234-567812345678', [], {}, [1, 2], {'x': 1}]
# What the throwaway module of field cases declares besides the fields: a custom field, a nested schema.
FIELD_CASES_PRELUDE = '''
    from marshmallow import Schema, fields, validate

    from lib.decorators import use_schema


    class Shouting(fields.String):
        """A custom field: its public deserialize upper-cases what String loads."""

        def deserialize(self, value, attr=None, data=None, **kwargs):
            loaded = super().deserialize(value, attr, data, **kwargs)
            return loaded.upper() if isinstance(loaded, str) else loaded


    class Point(Schema):
        """A nested body."""

        x = fields.Integer(required=True)


    def stripped(value):
        return value.strip() if isinstance(value, str) else value


    def case(field):
        """Return an action whose body is a strict integer id and the field f, answering what it loaded."""
        schema = Schema.from_dict({'id': fields.Integer(required=True, strict=True), 'f': field})()
        return use_schema(schema)(lambda **loaded: loaded)
'''
# (field, whether a schema with it has a fast loader): every class and option is checked against Schema.load.
FIELD_CASES = [
    ('fields.Boolean()', True),
    ("fields.Boolean(truthy={'on'}, falsy={'off'})", True),
    ('fields.Boolean(truthy=set())', True),
    ("fields.Boolean(truthy={True, 'yes'}, falsy={False, 0})", True),
    ('fields.Boolean(allow_none=True)', True),
    ('fields.Integer()', True),
    ('fields.Integer(strict=True)', True),
    ('fields.Integer(strict=True, validate=validate.Range(min=1, max=10))', True),
    ('fields.Integer(load_default=lambda: 42)', True),
    ('fields.Integer(load_default=None)', True),
    ('fields.Integer(as_string=True, required=True)', True),
    ('fields.String()', True),
    ('fields.String(required=True, validate=validate.Length(min=1, max=3))', True),
    ("fields.String(validate=[validate.OneOf(['a', 'on']), validate.Length(max=1)])", True),
    ("fields.String(allow_none=True, load_default='none')", True),
    ("fields.String(data_key='f-key')", True),
    ("fields.String(attribute='renamed')", True),
    ('fields.String(pre_load=stripped)', True),
    ('fields.String(post_load=str.upper)', True),
    ('fields.String(load_only=True)', True),
    ('fields.String(dump_only=True)', True),
    ("fields.String(error_messages={'invalid': 'Text, please.'})", True),
    ('fields.Email()', True),
    ('fields.Email(required=True, validate=validate.Length(max=20))', True),
    ('fields.Email(load_default=None)', True),
    ('fields.Float()', True),
    ('fields.Float(allow_nan=True)', True),
    ('fields.Float(validate=validate.Range(min=0))', True),
    ('fields.Decimal()', True),
    ('fields.Decimal(places=2)', True),
    ('fields.Decimal(allow_nan=True)', True),
    ('fields.DateTime()', True),
    ("fields.DateTime(format='%Y-%m-%d')", True),
    ('fields.Date()', True),
    ('fields.UUID()', True),
    ("fields.String(attribute='nested.name')", False),
    ('fields.Nested(Point)', False),
    ("fields.Pluck(Point, 'x')", False),
    ('fields.List(fields.Integer())', False),
    ('fields.Dict()', False),
    ('fields.Raw()', False),
    ('fields.Url()', False),
    ('fields.Time()', False),
    ('Shouting()', False),
]
FIELD_CASES_PACKAGE = 'fast_path_field_cases'


# Schemas as a module declares them: required and defaulted fields, strict integers, ranges and lengths.
class UserId(Schema):
    """One record by a bigint id."""

    id = bigint_id(required=True)


class NewUser(Schema):
    """An email of at most 320 characters and a name of 1 to 200."""

    email = fields.Email(required=True, validate=validate.Length(max=320))
    name = fields.String(required=True, validate=validate.Length(min=1, max=200))


class UserChange(UserId):
    """An id with the fields to change, at least one of them (a schema validator)."""

    email = fields.Email(validate=validate.Length(max=320))
    name = fields.String(validate=validate.Length(min=1, max=200))

    @validates_schema
    def require_a_change(self, data, **kwargs):
        if 'email' not in data and 'name' not in data:
            raise ValidationError('Give email, name or both.', '_schema')


class Page(Schema):
    """A keyset page, both fields defaulted."""

    limit = fields.Integer(strict=True, load_default=100, validate=validate.Range(min=1, max=1000))
    after_id = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0, max=BIGINT_MAX))


def bodies_for(schema):
    """Yield bodies for schema: each field with each value, all fields valid-looking, missing and extra keys."""
    keys = [field.data_key or name for name, field in schema.load_fields.items()]
    yield {}
    for key, value in itertools.product(keys, VALUES):
        yield {key: value}
    for values in itertools.product(VALUES if len(keys) <= 3 else FEW_VALUES, repeat=len(keys)):
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
    (UserId(), [{'id': 5}]),
])
def test_doubtful_bodies_are_left_to_marshmallow(schema, body):
    assert fast_loader(schema)(body) is None


@pytest.fixture(scope='module')
def field_cases(tmp_path_factory):
    """Write a throwaway modules package with one route per field case; return its name."""
    folder = tmp_path_factory.mktemp('fast-path-cases')
    module = folder / FIELD_CASES_PACKAGE / 'fields'
    module.mkdir(parents=True)
    (folder / FIELD_CASES_PACKAGE / '__init__.py').write_text('')
    (module / '__init__.py').write_text('')
    routes = [f"    dict(route='case{index}', action=case({source})),\n" for index, (source, _) in enumerate(FIELD_CASES)]
    (module / 'routes.py').write_text(textwrap.dedent(FIELD_CASES_PRELUDE) + '\n\nroutes = [\n' + ''.join(routes) + ']\n')
    sys.path.insert(0, str(folder))
    yield FIELD_CASES_PACKAGE
    sys.path.remove(str(folder))
    for name in [name for name in sys.modules if name.startswith(FIELD_CASES_PACKAGE)]:
        del sys.modules[name]


def case_schemas(app):
    """Return (field case, whether it should have a fast loader, schema) for each route of the field cases."""
    schemas = {route.name: schema_of(route.action) for route in app.extensions['dbapi'].routes}
    return [(source, fast, schemas[f'case{index}']) for index, (source, fast) in enumerate(FIELD_CASES)]


def case_bodies(schema):
    """Yield bodies for a field case: each value for f, with and without the id, with an unknown key, and none."""
    key = schema.fields['f'].data_key or 'f'
    yield from ({}, {'id': 1})
    for value in FIELD_VALUES:
        yield from ({key: value}, {'id': 1, key: value}, {'id': 1, key: value, 'extra': 0})


def test_every_field_class_and_option_loads_as_marshmallow_loads_it(make_app, field_cases):
    for source, fast, schema in case_schemas(make_app(MODULE_PACKAGES=[field_cases])):
        load = fast_loader(schema)
        assert (load is not None) == fast, source
        accepted = 0
        for body in case_bodies(schema) if load else ():
            loaded = load(body)
            if loaded is not None:
                accepted += 1
                # repr: 1 and True, or 1 and 1.0, are equal but not the same answer; nan is the same but not equal.
                assert repr(loaded) == repr(marshmallow_result(schema, body)), (source, body)
        assert accepted or not fast, f'{source}: no body took the fast path'


def test_every_field_case_answers_the_same_request_with_fast_paths_off(make_app, field_cases):
    fast, stock = (make_app(MODULE_PACKAGES=[field_cases], FAST_PATHS=on).test_client() for on in (True, False))
    headers = {'Authorization': f'Bearer {ADMIN_TOKEN}'}
    for index, (source, _) in enumerate(FIELD_CASES):
        for body in [{}, *({'id': 1, 'f': value, 'f-key': value} for value in FIELD_VALUES)]:
            answers = [client.post(f'/fields/case{index}', json=body, headers=headers, buffered=True)
                       for client in (fast, stock)]
            assert len({answer.status_code for answer in answers}) == 1, (source, body)
            bodies = [answer.get_json() for answer in answers]
            for answer in bodies:
                if isinstance(answer, dict):
                    answer.pop('request_id', None)
            assert bodies[0] == bodies[1], (source, body)


def test_a_boolean_with_its_own_truthy_and_falsy_values_is_loaded_by_them():
    schema = Schema.from_dict({'f': fields.Boolean(truthy={'on'}, falsy={'off'})})()
    load = fast_loader(schema)
    assert load({'f': True}) is None and load({'f': 'on'}) == {'f': True} == schema.load({'f': 'on'})
    with pytest.raises(ValidationError):
        schema.load({'f': True})


class Checked(Schema):
    """A schema with a schema validator."""

    low = fields.Integer(required=True)

    @validates_schema
    def positive(self, data, **kwargs):
        if data['low'] < 0:
            raise ValidationError('low is negative', 'low')


class Rewritten(Schema):
    """A schema whose pre_load hook changes the body."""

    name = fields.String()

    @pre_load
    def strip(self, data, **kwargs):
        return {key: value.strip() for key, value in data.items()}


class Helped(Schema):
    """A schema with a method of its own, which may be anything: a hook, an override."""

    name = fields.String()

    def handle_error(self, error, data, **kwargs):
        raise ValueError('handled here')


class Stripping:
    """A mixin with a pre_load hook."""

    @pre_load
    def strip(self, data, **kwargs):
        return data


class MixedIn(Stripping, Schema):
    name = fields.String()


class Lenient(Schema):
    class Meta:
        unknown = EXCLUDE

    name = fields.String()


class Extended(UserId):
    """A plain schema's plain subclass."""

    name = fields.String()


def dict_class_changed():
    """Return a UserId schema whose instance was given another dict_class."""
    schema = UserId()
    schema.dict_class = OrderedDict
    return schema


@pytest.mark.parametrize('schema', [Checked(), UserChange(), Rewritten(), Helped(), MixedIn(), Lenient(),
                                    UserId(many=True), UserId(partial=True), UserId(unknown=EXCLUDE),
                                    dict_class_changed()], ids=lambda schema: type(schema).__name__)
def test_schemas_that_are_not_plain_always_use_schema_load(schema):
    assert fast_loader(schema) is None


def test_a_plain_subclass_of_a_plain_schema_takes_the_fast_path():
    assert fast_loader(Extended())({'id': 2, 'name': 'n'}) == {'id': 2, 'name': 'n'}


def test_with_fast_paths_off_every_body_goes_to_schema_load(make_app, monkeypatch):
    asked = []
    monkeypatch.setattr(lib.modules, 'fast_loader', lambda schema, enabled=True: asked.append(enabled))
    make_app(FAST_PATHS=False)
    assert asked and not any(asked)
    assert fast_loader(UserId(), enabled=False) is None


def test_an_accepted_header_is_remembered_and_a_refused_one_is_not(app, call):
    clients = app.extensions['dbapi'].clients
    assert call('/probe/echo', {'id': 1}, token=ADMIN_TOKEN).status_code == 200
    assert f'Bearer {ADMIN_TOKEN}' in clients.known_headers
    assert call('/probe/echo', {'id': 1}, token='not-a-known-token').status_code == 401
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


def test_requests_keep_no_session_and_set_no_cookie(app, call):
    response = call('/probe/echo', {'a': 1})
    assert response.status_code == 200 and 'Set-Cookie' not in response.headers
    with app.test_request_context('/'):
        assert len(flask.session) == 0
        with pytest.raises(RuntimeError):
            flask.session['user'] = 'someone'  # a NullSession refuses to keep anything


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
        if '//' in path:  # a doubled slash is a 404 before any matching, werkzeug's too (contract section 1)
            assert isinstance(fast_match(app, environ), werkzeug.exceptions.NotFound), (method, path)
            continue
        expected = werkzeug_match(app, environ)
        assert same(fast_match(app, environ), expected), (method, path, expected)
        checked += not isinstance(expected, Exception)
    assert checked >= len(paths), 'every route should have matched at least once'


def test_with_a_server_name_flask_binds_the_routes_itself(make_app):
    environ = EnvironBuilder(path='/probe/echo', method='POST', base_url='http://dbapi.example').get_environ()
    adapter = make_app(SERVER_NAME='dbapi.example').create_url_adapter(flask.Request(environ))
    assert adapter.server_name == 'dbapi.example'
    assert adapter.match(return_rule=True)[0].rule == '/probe/echo'
