"""CONTRACT section 1: calling an action."""
import gzip

import pytest

from lib.db import DEFAULT
from tests.helpers import ADMIN_TOKEN, AUTH, SCOPED_TOKEN, assert_problem, mounted_paths


def post_raw(client, path, data, content_type):
    """POST raw bytes with a content type and the admin token."""
    headers = dict(AUTH, **({'Content-Type': content_type} if content_type else {}))
    return client.post(path, data=data, headers=headers)


@pytest.mark.parametrize('path', ['/probe', '/probe/', '/probe/echo', '/probe/echo/'])
def test_an_action_answers_with_and_without_one_trailing_slash(call, path):
    response = call(path, {'root': True})
    assert response.status_code == 200
    assert response.get_json() == {'root': True}


def test_action_name_may_contain_a_slash(call):
    assert call('/probe/reports/daily', {'day': 'monday'}).get_json() == {'day': 'monday'}


def test_empty_body_means_empty_object(client):
    response = post_raw(client, '/probe/echo', b'', None)
    assert response.status_code == 200
    assert response.get_json() == {}


@pytest.mark.parametrize('body', [b'[1, 2]', b'"text"', b'3', b'null', b'true'])
def test_json_that_is_not_an_object_is_422(client, body):
    response = post_raw(client, '/probe/things/get', body, 'application/json')
    assert response.status_code == 422
    assert response.mimetype == 'application/problem+json'


def test_json_that_is_not_an_object_is_422_without_a_schema_too(client):
    assert post_raw(client, '/probe/greet', b'["x"]', 'application/json').status_code == 422


def test_many_schema_takes_an_array(call):
    response = call('/probe/items', [{'sku': 'a', 'count': 1}, {'sku': 'b', 'count': 2}])
    assert response.status_code == 200
    assert response.get_json() == {'count': 2, 'skus': ['a', 'b']}


def test_many_schema_refuses_an_object(call):
    assert call('/probe/items', {'sku': 'a', 'count': 1}).status_code == 422


def test_many_schema_reports_errors_per_item(call):
    response = call('/probe/items', [{'sku': 'a', 'count': 1}, {'sku': 'b'}])
    assert response.status_code == 422
    assert response.get_json()['errors'] == {'1': {'count': ['Missing data for required field.']}}


@pytest.mark.parametrize('content_type', ['application/json; charset=utf-8', 'application/json;charset=UTF-8',
                                          'Application/JSON', 'application/json; charset="utf-8"',
                                          'application/json; charset=utf8',
                                          # a quoted value holds its `;` (it was read as a charset=latin1, trial I)
                                          'application/json; profile="a;charset=latin1"; charset=utf-8',
                                          # RFC 2231's forms: they were a 500 (trial L)
                                          "application/json; charset*=utf-8''utf-8",
                                          "application/json; charset*0*=utf-8''utf; charset*1=-8"])
def test_charset_parameter_is_accepted(client, content_type):
    response = post_raw(client, '/probe/echo', b'{"a": 1}', content_type)
    assert response.status_code == 200
    assert response.get_json() == {'a': 1}


@pytest.mark.parametrize('content_type', ['application/json; charset=UTF8', 'application/json; charset="utf8"',
                                          'application/json; charset=Utf-8'])
def test_charset_utf8_is_accepted_in_any_case_quoted_or_not(client, content_type):
    response = post_raw(client, '/probe/echo', b'{"a": 1}', content_type)
    assert response.status_code == 200 and response.get_json() == {'a': 1}


@pytest.mark.parametrize('content_type', ['text/plain', 'application/x-www-form-urlencoded', 'application/xml', None])
def test_other_content_type_with_a_body_is_415(client, content_type):
    response = post_raw(client, '/probe/echo', b'{"a": 1}', content_type)
    assert response.status_code == 415
    assert response.mimetype == 'application/problem+json'


@pytest.mark.parametrize('charset', ['latin-1', 'ISO-8859-1', 'utf-16', '"windows-1252"', '', 'utf-8; charset=latin1',
                                     '"utf-8;x"'])
def test_json_in_another_charset_is_415_saying_json_is_utf8(client, charset):
    # In latin-1, b'\xe9' is an e with an acute accent; read as UTF-8 it is not a character at all.
    response = post_raw(client, '/probe/echo', '{"name": "Ren\u00e9"}'.encode('latin-1'),
                        f'application/json; charset={charset}')
    assert response.status_code == 415 and response.mimetype == 'application/problem+json'
    assert 'UTF-8 (RFC 8259' in response.get_json()['detail']


def test_another_charset_in_rfc_2231s_form_is_415_too(client):
    response = post_raw(client, '/probe/echo', b'{}', "application/json; charset*=utf-8''latin1")
    assert 'charset=latin1 is not accepted' in assert_problem(response, 415)['detail']


@pytest.mark.parametrize('coding', ['gzip', 'br', 'deflate, gzip'])
def test_a_compressed_body_is_415_naming_the_codings_accepted(client, coding):
    response = client.post('/probe/echo', data=gzip.compress(b'{"a": 1}'), headers={
        'Authorization': f'Bearer {ADMIN_TOKEN}', 'Content-Type': 'application/json', 'Content-Encoding': coding})
    assert assert_problem(response, 415)['detail'].endswith('is not accepted: send the body uncompressed.')
    assert response.headers['Accept-Encoding'] == 'identity'


def test_a_content_encoding_with_an_empty_body_is_415_too(client):
    response = client.post('/probe/echo', data=b'', headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                                                             'Content-Encoding': 'gzip'})
    assert_problem(response, 415)


def test_an_identity_content_encoding_is_a_plain_body(client):
    response = client.post('/probe/echo', data=b'{"a": 1}', headers={
        'Authorization': f'Bearer {ADMIN_TOKEN}', 'Content-Type': 'application/json', 'Content-Encoding': 'identity'})
    assert response.status_code == 200 and response.get_json() == {'a': 1}


def test_other_content_type_with_an_empty_body_is_fine(client):
    assert post_raw(client, '/probe/echo', b'', 'text/plain').status_code == 200


@pytest.mark.parametrize('headers, data', [
    ({'Content-Type': 'application/json'}, b'{"pad": "' + b'x' * 2**21 + b'"}'),
    ({'Content-Type': 'text/plain'}, b'a=1'),
    ({'Content-Type': 'application/json; charset=latin-1'}, b'{}'),
    ({'Content-Type': 'application/json', 'Content-Encoding': 'gzip'}, gzip.compress(b'{}')),
    ({'Content-Type': 'application/json'}, b' '),
], ids=['too large', 'wrong type', 'wrong charset', 'compressed', 'whitespace'])
@pytest.mark.parametrize('authorization', [None, 'Bearer not-a-known-token'])
def test_authorization_is_checked_before_the_body_is_read(client, headers, data, authorization):
    if authorization:
        headers = dict(headers, Authorization=authorization)
    assert_problem(client.post('/probe/echo', data=data, headers=headers), 401)


def test_a_client_outside_its_modules_is_403_before_the_body_is_read(client):
    response = client.post('/sealed/', data=b'x' * 2**21, headers={'Authorization': f'Bearer {SCOPED_TOKEN}',
                                                                   'Content-Type': 'text/plain'})
    assert_problem(response, 403)


def test_unknown_key_is_422_against_the_schema(call):
    response = call('/probe/things/get', {'id': 1, 'sneaky': True})
    assert response.status_code == 422
    assert response.get_json()['errors'] == {'sneaky': ['Unknown field.']}


def test_unknown_key_is_422_against_the_signature(call):
    response = call('/probe/greet', {'name': 'Ada', 'conn': 'x', 'extra': 1})
    assert response.status_code == 422
    assert response.get_json()['errors'] == {'conn': ['Unknown field.'], 'extra': ['Unknown field.']}


def test_missing_key_is_422_against_the_signature(call):
    response = call('/probe/greet', {'greeting': 'hi'})
    assert response.status_code == 422
    assert response.get_json()['errors'] == {'name': ['Missing data for required field.']}


def test_signature_action_gets_exactly_its_keys(call):
    assert call('/probe/greet', {'name': 'Ada'}).get_json() == 'hello Ada'
    assert call('/probe/greet', {'name': 'Ada', 'greeting': 'hi'}).get_json() == 'hi Ada'


def test_injected_connection_cannot_be_set_from_the_body(call):
    response = call('/probe/things/get', {'id': 1, 'db': 'x'})
    assert response.status_code == 422
    assert 'db' in response.get_json()['errors']


@pytest.mark.parametrize('route', ['echo_in_a_transaction', 'echo_any_keys_in_a_transaction'])
def test_injected_connection_cannot_be_set_from_the_body_of_an_action_taking_any_key(call, route):
    assert call(f'/probe/{route}', {'db': 1}).get_json()['errors'] == {'db': ['Unknown field.']}
    assert call(f'/probe/{route}', {'dbx': 1, 'name': 'Ada'}).get_json() == {'dbx': 1, 'name': 'Ada'}


def test_an_include_schema_passes_through_only_keys_its_action_takes_after_its_pre_load(call):
    assert call('/probe/enveloped_any_keys', {'data': {'name': 'a', 'note': 'x'}}).get_json() == {
        'name': 'a', 'extra': {'note': 'x'}}
    assert call('/probe/enveloped_own_keys', {'data': {'name': 'a', 'label': 'x'}}).get_json() == {
        'name': 'a', 'note': None, 'label': 'x'}
    assert call('/probe/enveloped_own_keys', {'data': {'name': 'a', 'other': 1}}).get_json()['errors'] == {
        'other': ['Unknown field.']}
    assert call('/probe/enveloped_own_keys', {'data': {'name': 'a', 'note': 'x'}}).get_json()['errors'] == {
        'note': ['Unknown field.']}  # a parameter taken by position only


@pytest.mark.parametrize('route', ['enveloped_any_keys', 'enveloped_own_keys'])
def test_an_injected_name_an_include_schemas_pre_load_makes_is_refused(call, route):
    assert call(f'/probe/{route}', {'data': {'name': 'a', 'db': 1}}).get_json()['errors'] == {
        'db': ['Unknown field.']}


def test_action_without_parameters_refuses_any_key(call):
    response = call('/probe/pid', {'anything': 1})
    assert response.status_code == 422
    assert response.get_json()['errors'] == {'anything': ['Unknown field.']}


def test_a_query_string_plays_no_part(client):
    response = client.post('/probe/echo?a=1&b=2', json={'c': 3}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert response.status_code == 200 and response.get_json() == {'c': 3}


def test_success_encodes_the_return_value(call):
    response = call('/probe/greet', {'name': 'Ada'})
    assert response.status_code == 200
    assert response.mimetype == 'application/json'


def test_action_may_return_value_and_status(call):
    response = call('/probe/status')
    assert response.status_code == 202
    assert response.get_json() == {'accepted': True}


@pytest.mark.parametrize('code', [204, 304])
@pytest.mark.parametrize('streamed', [False, True])
def test_a_no_content_status_answers_with_no_body_and_no_content_type(call, code, streamed):
    response = call('/probe/given_status', {'code': code, 'value': [1, 2], 'streamed': streamed})
    assert (response.status_code, response.get_data(), response.content_type) == (code, b'', None)


def test_an_action_may_return_a_response_it_made_with_a_status(app, call):
    """(Response, status) was a 500 (trial AK); the body, read from the database as it is sent, keeps the lease."""
    response = call('/probe/made_response', {'code': 201})
    assert (response.status_code, response.get_data()) == (201, b'made')
    assert response.content_type == 'text/plain; charset=utf-8'
    assert app.extensions['dbapi'].pools[DEFAULT].gauges()['in_use'] == 0


@pytest.mark.parametrize('code', [100, 199, 400, 422, 500, 503, 600, 0])
def test_an_error_status_returned_instead_of_raised_is_a_500_problem(call, code):
    """An error's answer is problem details (section 3): an action raises it; a status it returns is for success."""
    response = call('/probe/given_status', {'code': code, 'value': {'a': 1}})
    assert response.status_code == 500 and response.content_type == 'application/problem+json'
    assert 'a' not in response.get_json()


def test_a_plain_action_may_return_a_generator_streamed_as_an_array(call):
    assert call('/probe/counted', {'count': 3}).get_json() == [0, 1, 2]
    assert call('/probe/counted', {'count': 0}).get_json() == []
    assert call('/probe/nothing_to_iterate').get_json() == []


def test_a_generator_failing_at_its_first_item_is_the_requests_own_problem(call):
    response = call('/probe/counted', {'count': 3, 'missing_at': 0})
    assert response.status_code == 404 and response.content_type == 'application/problem+json'
    assert response.get_json()['detail'] == 'No number 0.'


# Every URL a module mounted, known when the tests are collected: a new module is covered without an edit here.
@pytest.mark.parametrize('path', mounted_paths())
def test_other_methods_are_405_with_allow_post(client, path):
    for method in ['GET', 'PUT', 'PATCH', 'DELETE', 'OPTIONS', 'HEAD']:
        response = client.open(path, method=method, headers=AUTH)
        assert response.status_code == 405, method
        assert response.headers['Allow'] == 'POST', method


@pytest.mark.parametrize('path', ['/nope/create', '/nope', '/probe/nope', '/probe/echo/extra', '/'])
def test_unknown_module_or_action_is_404(call, path):
    response = call(path)
    assert response.status_code == 404
    assert response.mimetype == 'application/problem+json'
