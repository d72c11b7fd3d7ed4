"""CONTRACT section 2: bearer authorization on every mounted action."""
import hashlib
import json

import pytest

import settings
from app import create_app
from lib.auth import DEVELOPMENT_TOKEN
from lib.errors import ImproperlyConfigured
from tests.helpers import (ADMIN_TOKEN, SCOPED_CLIENT, SCOPED_MODULE, SCOPED_TOKEN, SINGLE_BEARER, app_config,
                           mounted_routes, route_id)

# Every mounted action, known when the tests are collected: a new module is covered without an edit here.
EVERY_ROUTE = pytest.mark.parametrize('route', mounted_routes(), ids=route_id)
MALFORMED_HEADERS = ['Basic dXNlcjpwYXNz', 'Bearer', 'Bearer ', 'Token abc', ADMIN_TOKEN, f'Bearer {ADMIN_TOKEN} extra',
                     'Bearer a b']


def path_of(route):
    """Return the URL of a mounted route."""
    return f'/{route.module}/{route.name}'


@EVERY_ROUTE
def test_missing_header_is_401_with_a_bearer_challenge(client, route):
    response = client.post(path_of(route), json={})
    assert response.status_code == 401
    assert response.headers['WWW-Authenticate'] == 'Bearer realm="dbapi"'
    assert response.mimetype == 'application/problem+json'


@EVERY_ROUTE
def test_malformed_header_is_401_without_error_param(client, route):
    for header in MALFORMED_HEADERS:
        response = client.post(path_of(route), json={}, headers={'Authorization': header})
        assert response.status_code == 401, header
        assert response.headers['WWW-Authenticate'] == 'Bearer realm="dbapi"', header


@EVERY_ROUTE
def test_unknown_token_is_401_invalid_token(client, route):
    response = client.post(path_of(route), json={}, headers={'Authorization': 'Bearer not-a-known-token'})
    assert response.status_code == 401
    assert response.headers['WWW-Authenticate'] == 'Bearer realm="dbapi", error="invalid_token"'


@EVERY_ROUTE
def test_scoped_client_is_403_outside_its_modules_and_allowed_inside(client, route):
    headers = {'Authorization': f'Bearer {SCOPED_TOKEN}'}
    status = client.post(path_of(route), json={}, buffered=True, headers=headers).status_code
    assert (status == 403) == (route.module != SCOPED_MODULE), status


def test_403_names_the_client_but_never_the_token(call):
    response = call('/sealed/', token=SCOPED_TOKEN)
    assert response.status_code == 403
    # RFC 6750 section 3.1: a token without the scope the request needs (trial BF: no challenge)
    assert response.headers['WWW-Authenticate'] == 'Bearer realm="dbapi", error="insufficient_scope"'
    assert SCOPED_CLIENT in response.get_json()['detail']
    assert SCOPED_TOKEN not in response.get_data(as_text=True)


def test_auth_is_checked_before_the_body(client):
    response = client.post('/probe/things/get', data=b'not json', headers={'Content-Type': 'application/json'})
    assert response.status_code == 401


def test_scheme_is_case_insensitive(call):
    assert call('/probe/', headers={'Authorization': f'bearer {ADMIN_TOKEN}'}, token='').status_code == 200


def test_single_bearer_keeps_working(call):
    assert call('/probe/', token=SINGLE_BEARER).status_code == 200


def test_sha256_entry_matches_its_token(call):
    assert call('/probe/', token=SCOPED_TOKEN).status_code == 200


@pytest.mark.parametrize('encoding', ['utf-8', 'utf-8-sig'])  # utf-8-sig: a byte order mark first, as Notepad writes
def test_tokens_file_is_read(make_app, tmp_path, encoding):
    tokens = tmp_path / 'tokens.json'
    tokens.write_text(json.dumps({'files': {'token': 'from-a-file-token'}}), encoding=encoding)
    app = make_app(BEARER=None, BEARER_TOKENS=None, BEARER_TOKENS_FILE=str(tokens))
    client = app.test_client()
    assert client.post('/probe/', headers={'Authorization': 'Bearer from-a-file-token'}).status_code == 200
    assert client.post('/probe/', headers={'Authorization': f'Bearer {ADMIN_TOKEN}'}).status_code == 401


@pytest.mark.parametrize('environment', ['production', 'staging'])
def test_service_refuses_to_start_without_a_token_outside_local_and_test(database_url, environment):
    config = app_config(database_url, BEARER=None, BEARER_TOKENS=None, ENVIRONMENT=environment)
    with pytest.raises(ImproperlyConfigured, match='no bearer token'):
        create_app(config)


@pytest.mark.parametrize('environment', ['local', 'test'])
def test_local_and_test_start_without_a_token_and_refuse_every_call(make_app, environment):
    app = make_app(BEARER=None, BEARER_TOKENS=None, ENVIRONMENT=environment)
    assert app.test_client().post('/probe/', headers={'Authorization': 'Bearer x'}).status_code == 401


@pytest.mark.parametrize('tokens', [
    'not json', '[]', '{"a": "plain string"}', '{"a": {}}', '{"a": {"token": "xxxx-token", "sha256": "y"}}',
    '{"a": {"sha256": "short"}}', '{"a": {"token": ""}}', '{"a": {"token": "xxxx-token", "modules": "users"}}',
    '{"a": {"token": "xxxx-token", "scopes": []}}', '{"": {"token": "xxxx-token"}}', '{" ": {"token": "xxxx-token"}}',
    # not a string: a traceback ('int' object has no attribute 'encode'); modules null gave every module (trial AA)
    '{"a": {"token": 12345}}', '{"a": {"token": null}}', '{"a": {"token": ["x"]}}', '{"a": {"token": {}}}',
    '{"a": {"token": true}}', '{"a": {"token": "xxxx-token", "modules": null}}',
    # keyed by token, the natural mistake: its name was printed (trial BF), and so was a name that is a token
    '{"xxxx-token": "billing"}', '{"xxxx-token": {"token": "xxxx-token", "x": 1}}',
    # keyed by token, its entry an object with neither token nor sha256 (trial BJ: shown)
    '{"xxxx-token": {"name": "billing"}}', '{"xxxx-token": {}}',
    '[' * 100_000, '{"a":' * 3000])  # past the recursion limit: a traceback (trial AC)
def test_malformed_token_config_fails_at_start_without_echoing_it(database_url, tokens):
    with pytest.raises(ImproperlyConfigured) as raised:
        create_app(app_config(database_url, BEARER_TOKENS=tokens))
    assert 'xxxx-token' not in str(raised.value) and 'plain string' not in str(raised.value)


@pytest.mark.parametrize('name', ['s3cr3t-token-value==', 's3cr3t-token-value.', 'https://x/s3cr3t-token-value',
                                  's3cr3t-token-value=x'])
@pytest.mark.parametrize('entry, said', [
    ({'token': 'own-token-1234', 'max_connections': 0}, 'bearer client number 2 of BEARER_TOKENS: "max_connections"'),
    ({"token": "other-token-1"}, "client number 2 of BEARER_TOKENS and number 2 of BEARER_TOKENS_FILE is given twice")])
def test_a_start_error_says_a_client_by_its_place_when_a_client_is_known_by_its_sha256(database_url, tmp_path, name,
                                                                                      entry, said):
    """A name holding a sha256 client's token among other token characters, which no digest of the name's words
    finds, was quoted (trial BN)."""
    (tmp_path / 'tokens.json').write_text(json.dumps({'other': {'sha256': sha256_of('s3cr3t-token-value')}}))
    table = json.dumps({'first': {'token': 'first-token-1'}, name: entry})
    twice = {'BEARER_TOKENS_FILE': str(tmp_path / 'tokens.json')}
    if 'twice' in said:  # the name given in the file too
        (tmp_path / 'tokens.json').write_text(json.dumps({'other': {'sha256': sha256_of('s3cr3t-token-value')},
                                                         name: {'token': 'third-token-1'}}))
    with pytest.raises(ImproperlyConfigured) as raised:
        create_app(app_config(database_url, BEARER=None, BEARER_TOKENS=table, **twice))
    assert said in str(raised.value) and 's3cr3t' not in str(raised.value), str(raised.value)


@pytest.mark.parametrize('token, said', [('12345', 'a number'), ('1.5', 'a number'), ('null', 'null'),
                                         ('["x"]', 'an array'), ('{}', 'an object'), ('true', 'a boolean')])
def test_a_token_that_is_no_string_is_said_to_be_what_it_is(database_url, token, said):
    """`"token": 12345` was "a token may hold only letters, digits...", which 12345 does."""
    with pytest.raises(ImproperlyConfigured) as raised:
        create_app(app_config(database_url, BEARER_TOKENS=f'{{"a": {{"token": {token}}}}}'))
    assert str(raised.value) == f"bearer client 'a': a token is a JSON string, not {said}"


@pytest.mark.parametrize('config', [{'BEARER': 'abc'}, {'BEARER_TOKENS': '{"short": {"token": "abc"}}'},
                                    {'BEARER_TOKENS': '{"short": {"token": "a"}}'},
                                    {'BEARER': 'a==='}, {'BEARER': 'abc=='}])  # padding counts for none (trial BJ)
def test_a_token_too_short_to_redact_fails_at_start(database_url, config):
    """`abc` was accepted, then echoed in X-Request-ID, error bodies and log lines: the redactor takes out secrets
    of 4 characters or more (trial BF)."""
    with pytest.raises(ImproperlyConfigured, match='a token of fewer than 4 characters could not be kept out'):
        create_app(app_config(database_url, **config))


@pytest.mark.parametrize('config', [
    {'BEARER': DEVELOPMENT_TOKEN}, {'BEARER_TOKENS': json.dumps({'svc': {'token': DEVELOPMENT_TOKEN}})},
    # by its digest, which a sha256 entry holds (trial BG: accepted)
    {'BEARER_TOKENS': json.dumps({'svc': {'sha256': hashlib.sha256(DEVELOPMENT_TOKEN.encode()).hexdigest()}})}])
@pytest.mark.parametrize('environment', ['production', 'staging'])
def test_the_public_development_token_fails_at_start_outside_local_and_test(database_url, config, environment):
    """env/local/.env's token, printed in the README, was accepted in production (trial BF)."""
    with pytest.raises(ImproperlyConfigured, match=f'the development token .* ENVIRONMENT={environment}'):
        create_app(app_config(database_url, ENVIRONMENT=environment, **config))


def test_the_development_token_is_env_local_s_and_serves_there(make_app):
    assert f'BEARER={DEVELOPMENT_TOKEN}\n' in (settings.BASE_DIR / 'env' / 'local' / '.env').read_text()
    app = make_app(BEARER=DEVELOPMENT_TOKEN, ENVIRONMENT='local')
    assert app.test_client().post('/probe/', headers={'Authorization': f'Bearer {DEVELOPMENT_TOKEN}'}).status_code \
        == 200


def sha256_of(token):
    """Return the hex digest a "sha256" entry holds for token."""
    return hashlib.sha256(token.encode()).hexdigest()


@pytest.mark.parametrize('config, file_table, origin, place', [
    # BEARER's token names a client of BEARER_TOKENS whose entry is bad (trial BG: shown)
    ({'BEARER': 's3cr3t-token-value'}, None, 'BEARER_TOKENS', 1),
    # a BEARER_TOKENS name is a token of the file, parsed after it (trial BL: shown, max_connections quoting it)
    ({}, {'other': {'token': 's3cr3t-token-value'}}, 'BEARER_TOKENS', 1),
    # a name is the token of a client known by its sha256 alone (trial BL: shown)
    ({}, {'other': {'sha256': sha256_of('s3cr3t-token-value')}}, 'BEARER_TOKENS', 1),
    # a name is its own client's token, in the table and the file (trial BI: shown as given twice)
    ({'BEARER_TOKENS': '{"c": {"token": "c-token-1234"}, "s3cr3t-token-value": {"token": "s3cr3t-token-value"}}'},
     {'s3cr3t-token-value': {'token': 's3cr3t-token-value'}}, 'BEARER_TOKENS', 2),
    ({'BEARER_TOKENS': None}, {'s3cr3t-token-value': {'sha256': sha256_of('s3cr3t-token-value').upper()}},
     'BEARER_TOKENS_FILE', 1),
    # a name holding a sha256 client's token as a word (trial BM: shown)
    ({'BEARER_TOKENS': '{"s3cr3t-token-value ": {"token": "own-token-1234", "max_connections": 0}}'},
     {'other': {'sha256': sha256_of('s3cr3t-token-value')}}, 'BEARER_TOKENS', 1),
    ({'BEARER_TOKENS': '{"Bearer s3cr3t-token-value": {"token": "own-token-1234", "modules": 1}}'},
     {'other': {'sha256': sha256_of('s3cr3t-token-value')}}, 'BEARER_TOKENS', 1)])
def test_a_client_named_by_a_configured_token_fails_at_start_showing_neither(database_url, tmp_path, config,
                                                                             file_table, origin, place):
    """A name that is a token of any source is refused before any line quotes a name: it would be every access line's
    user.name, and a start error quoted it when the token came from a source parsed later or from a sha256 entry."""
    config.setdefault('BEARER_TOKENS', '{"s3cr3t-token-value": {"token": "own-token-1234", "max_connections": 0}}')
    if file_table is not None:
        (tmp_path / 'tokens.json').write_text(json.dumps(file_table))
        config['BEARER_TOKENS_FILE'] = str(tmp_path / 'tokens.json')
    with pytest.raises(ImproperlyConfigured) as raised:
        create_app(app_config(database_url, **{'BEARER': None, **config}))
    assert str(raised.value) == (f'{origin} names its client number {place} by a configured bearer token (not shown): '
                                 'a name is user.name in every access line; name each client by who it is')


@pytest.mark.parametrize('config, message', [
    ({'BEARER_TOKENS': '{"a": {"token": "shared-token-1", "modules": ["users"]}, "b": {"token": "shared-token-1"}}'},
     "clients 'a' and 'b' have the same token"),
    ({'BEARER': 'shared-token-1', 'BEARER_TOKENS': '{"b": {"token": "shared-token-1", "modules": ["users"]}}'},
     "clients 'bearer' and 'b' have the same token"),
    ({'BEARER_TOKENS': '{"a": {"token": "token-one"}, "a": {"token": "token-two", "modules": ["users"]}}'},
     "BEARER_TOKENS gives a client name (or a key of one entry) twice"),
    # a name that is a token, given twice in one table, or in the table and the file (trial BI: shown)
    ({'BEARER': 'shared-token-1', 'BEARER_TOKENS': '{"shared-token-1": {"token": "token-one"}, '
                                                   '"shared-token-1": {"token": "token-two"}}'},
     "BEARER_TOKENS gives a client name (or a key of one entry) twice"),
    ({'BEARER_TOKENS': '{"a": {"token": "token-one", "token": "token-two"}}'}, "BEARER_TOKENS gives 'token' twice"),
    ({'BEARER': 'token-one', 'BEARER_TOKENS': '{"bearer": {"token": "token-two", "modules": ["users"]}}'},
     "client 'bearer' is given twice (BEARER, which env/<ENVIRONMENT>/.env may set, is the client 'bearer'"),
])
def test_a_token_or_a_client_given_twice_fails_at_start(database_url, config, message):
    with pytest.raises(ImproperlyConfigured) as raised:
        create_app(app_config(database_url, **config))
    assert message in str(raised.value) and 'shared-token-1' not in str(raised.value)
    assert 'token-one' not in str(raised.value) and 'token-two' not in str(raised.value)


@pytest.mark.parametrize('text, said', [
    ('{"a": {"token": "xxxx-token"}}\n{"b": {}}', 'Extra data (line 2, column 1)'),
    # trial BK: json's "decode using utf-8-sig"; a traceback; "a name holds no control character"
    ('\ufeff\ufeff{"a": {"token": "xxxx-token"}}', 'a byte order mark (U+FEFF) stands where its object begins'),
    ('{"a": {"token": "xxxx-token\\ud800"}}', 'holds a \\u escape of a lone surrogate (\\ud800 to \\udfff)'),
    ('{"a\\udc80": {"token": "xxxx-token"}}', 'holds a \\u escape of a lone surrogate (\\ud800 to \\udfff)'),
    ('{"a\\nb": {"token": "xxxx-token"}}', "bearer client 'a\\nb': a name holds no control character")])
def test_a_tokens_file_that_cannot_be_read_as_meant_says_where_and_why(database_url, tmp_path, text, said):
    """A second document was only "is not valid JSON"; a name with a line break was taken (trial BF). A byte order mark
    is taken (test_tokens_file_is_read)."""
    tokens = tmp_path / 'tokens.json'
    tokens.write_text(text, encoding='utf-8')
    with pytest.raises(ImproperlyConfigured) as raised:
        create_app(app_config(database_url, BEARER=None, BEARER_TOKENS=None, BEARER_TOKENS_FILE=str(tokens)))
    assert said in str(raised.value) and 'xxxx-token' not in str(raised.value)


def test_unreadable_tokens_file_fails_at_start(database_url, tmp_path):
    with pytest.raises(ImproperlyConfigured, match='BEARER_TOKENS_FILE'):
        create_app(app_config(database_url, BEARER_TOKENS_FILE=str(tmp_path / 'missing.json')))


def test_sha256_config_is_case_insensitive(make_app):
    digest = hashlib.sha256(b'upper-case-digest').hexdigest().upper()
    app = make_app(BEARER_TOKENS=json.dumps({'u': {'sha256': digest}}))
    assert app.test_client().post('/probe/', headers={'Authorization': 'Bearer upper-case-digest'}).status_code == 200
