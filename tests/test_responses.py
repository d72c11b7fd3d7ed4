"""CONTRACT sections 4 and 5: headers on every response, and the JSON encoding of database values."""
import base64
import gzip
import json
import uuid

import brotli
import pytest

from tests.helpers import ADMIN_TOKEN, AUTH, Caller, assert_problem, export_in_flight


@pytest.mark.parametrize('incoming', ['abc', 'A.b_c:d-1', 'x' * 128, '4f9c0e'])
def test_sane_request_id_is_echoed(call, incoming):
    assert call('/probe/', headers={'X-Request-ID': incoming}).headers['X-Request-ID'] == incoming


@pytest.mark.parametrize('incoming', ['', 'x' * 129, 'has space', 'semi;colon', 'tab\tin', 'ü'])
def test_insane_request_id_is_replaced(call, incoming):
    response = call('/probe/', headers={'X-Request-ID': incoming})
    assert response.headers['X-Request-ID'] not in ('', incoming)
    assert len(response.headers['X-Request-ID']) <= 128


def test_request_id_is_made_when_absent_and_differs_per_request(call):
    first, second = call('/probe/').headers['X-Request-ID'], call('/probe/').headers['X-Request-ID']
    assert first and second and first != second


@pytest.mark.parametrize('path, method', [('/probe/', 'POST'), ('/nope', 'POST'), ('/probe/echo', 'GET'),
                                          ('/healthz', 'GET')])
def test_every_response_has_a_request_id(client, path, method):
    response = client.open(path, method=method, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert response.headers['X-Request-ID']


def test_error_body_and_header_share_the_request_id(call):
    response = call('/nope', headers={'X-Request-ID': 'trace-me-1'})
    assert response.get_json()['request_id'] == 'trace-me-1' == response.headers['X-Request-ID']


def test_content_types(call):
    assert call('/probe/').headers['Content-Type'] == 'application/json'
    assert call('/nope').headers['Content-Type'] == 'application/problem+json'


@pytest.mark.parametrize('method, path, headers, data', [
    ('POST', '/probe/', AUTH, b''), ('POST', '/nope', AUTH, b''), ('GET', '/probe/echo', AUTH, b''),
    ('POST', '/probe/echo', {}, b''), ('POST', '/probe/echo', AUTH | {'Content-Type': 'text/plain'}, b'x'),
    ('GET', '/healthz', {}, b''), ('HEAD', '/healthz', {}, b''), ('GET', '/readyz', {}, b''),
    ('GET', '/metrics', {}, b''),
])
def test_every_answer_carries_vary_accept_encoding(client, method, path, headers, data):
    response = client.open(path, method=method, headers=headers, data=data)
    assert response.headers['Vary'] == 'Accept-Encoding', response.status_code


def test_a_413_a_shed_503_and_a_stream_carry_vary_accept_encoding_too(make_app):
    app = make_app(MAX_REQUESTS_IN_FLIGHT=1, MAX_CONTENT_LENGTH=100)
    call = Caller(app.test_client())
    too_large = call('/probe/echo', {'pad': 'x' * 200})
    with export_in_flight(call) as stream:
        shed = call('/probe/echo', {})
    assert_problem(too_large, 413)
    assert_problem(shed, 503)
    assert too_large.headers['Vary'] == shed.headers['Vary'] == stream.headers['Vary'] == 'Accept-Encoding'


@pytest.mark.parametrize('encoding, decompress', [('gzip', gzip.decompress), ('br', brotli.decompress)])
def test_large_bodies_are_compressed(call, encoding, decompress):
    response = call('/probe/sized', {'size': 2000}, headers={'Accept-Encoding': encoding})
    assert response.headers['Content-Encoding'] == encoding
    assert 'Accept-Encoding' in response.headers['Vary']
    assert json.loads(decompress(response.get_data())) == 'x' * 2000


def test_error_bodies_are_not_compressed_even_when_large(call):
    response = call('/probe/register', {f'k{i}': i for i in range(60)}, headers={'Accept-Encoding': 'gzip'})
    assert response.status_code == 422 and len(response.get_data()) >= 500
    assert 'Content-Encoding' not in response.headers and response.headers['Vary'] == 'Accept-Encoding'
    assert response.get_json()['status'] == 422


def test_bodies_under_500_bytes_are_not_compressed(call):
    response = call('/probe/sized', {'size': 400}, headers={'Accept-Encoding': 'gzip, br'})
    assert 'Content-Encoding' not in response.headers
    assert response.get_json() == 'x' * 400


@pytest.mark.parametrize('size, compressed', [(497, False), (498, True)])  # the JSON string adds two quotes
def test_a_body_of_500_bytes_or_more_is_compressed_and_a_smaller_one_is_not(call, size, compressed):
    response = call('/probe/sized', {'size': size}, headers={'Accept-Encoding': 'gzip'})
    body = gzip.decompress(response.get_data()) if compressed else response.get_data()
    assert len(body) == size + 2
    assert (response.headers.get('Content-Encoding') == 'gzip') == compressed


@pytest.mark.parametrize('accept_encoding, chosen', [
    ('gzip;q=0', None), ('br;q=0', None), ('gzip;q=0, br;q=0, *;q=0', None), ('br; q=0.0, gzip', 'gzip'),
    ('gzip;q=0, br;q=0.5', 'br'), ('br;q=0.001', 'br'), ('identity', None), ('br;q=0, *', 'gzip'),
    ('br;q=0, gzip;q=0, *', None), ('gzip;Q=0', None), ('BR;Q=0, GZIP', 'gzip'), ('*', 'br'), ('*;q=0', None),
    ('gzip;q=0.5, *;q=0.9', 'br'), ('br;q=abc', 'br'), ('gzip;q=nan, br;q=0.5', 'gzip'),
    ('gzip;q=inf, br;q=0.5', 'gzip'), ('gzip;q=-1, br;q=0.5', 'gzip'), ('gzip;q= 0.5, br;q=0.6', 'br'),
    ('gzip;q', 'gzip'), ('br;level', 'br')])
def test_a_coding_the_client_refuses_with_q_0_is_never_used(call, accept_encoding, chosen):
    """RFC 9110 section 12.4.2: a qvalue of 0 means "not acceptable"."""
    for path in ('/probe/sized', '/probe/things/export'):  # a buffered answer and a stream
        response = call(path, {'size': 2000} if path == '/probe/sized' else {},
                        headers={'Accept-Encoding': accept_encoding})
        assert response.headers.get('Content-Encoding') == chosen, (path, accept_encoding)


def test_no_compression_without_accept_encoding(call):
    response = call('/probe/sized', {'size': 2000})
    assert 'Content-Encoding' not in response.headers


def test_streamed_export_is_compressed_when_asked(call):
    code = f'stream-br-{uuid.uuid4().hex}'
    call('/probe/things/create', {'code': code})
    response = call('/probe/things/export', headers={'Accept-Encoding': 'br'})
    assert response.headers['Content-Encoding'] == 'br'
    assert any(thing['code'] == code for thing in json.loads(brotli.decompress(response.get_data())))


@pytest.fixture(scope='module')
def database_values(app):
    """The probe's row of one value per PostgreSQL type, as JSON text and parsed."""
    response = app.test_client().post('/probe/values', headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert response.status_code == 200
    return response.get_json()


@pytest.mark.parametrize('column, expected', [
    ('timestamptz', '2026-11-21T20:54:17.123456+00:00'),
    ('timestamp', '2026-11-21T20:54:17.123456'),
    ('date', '2026-11-21'),
    ('time', '20:54:17'),
    ('numeric', '10.50'),
    ('small_numeric', '0.1'),
    ('uuid', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'),
    ('bytea', base64.b64encode(b'\x00\xff\x10').decode()),
    ('interval', 86402),
    ('jsonb', {'a': [1, None, 'x']}),
    ('json', [1, 2]),
    ('nan', None),
    ('infinity', None),
    ('minus_infinity', None),
    ('int_array', [1, 2, 3]),
    ('bigint', 9223372036854775807),
    ('text', 'é ✓'),
])
def test_database_value_encoding(database_values, column, expected):
    assert database_values[column] == expected


def test_python_value_encoding_is_valid_json(call):
    response = call('/probe/python-values')
    text = response.get_data(as_text=True)
    assert 'NaN' not in text and 'Infinity' not in text
    body = json.loads(text, parse_constant=lambda name: pytest.fail(f'invalid JSON constant {name}'))
    assert body == {'set': [3], 'tuple': [1, 'a'], 'nan': None, 'inf': None, 'huge': 2**70,
                    'bytes': base64.b64encode(b'\x00\xff').decode(), 'nested': {'nan': [None]}, 'range': [0, 1, 2],
                    'keys': ['a'], 'items': [['a', 1]], 'deque': [1, 2], 'point': [1, 2], 'mapping': {'k': [2**70]}}


def test_keys_that_are_no_text_are_written_as_their_names(call):
    answer = call('/probe/keyed', {'kind': 'distinct'})
    # a Decimal (a numeric column's value) and bytes as the registry writes them: their keys were a 500 (trial AF)
    assert answer.get_data() == (b'{"1":"a","2.5":"b","null":2,"2026-11-21":3,"1180591620717411303424":4,"3.10":5,'
                                 b'"AP8=":6}')


@pytest.mark.parametrize('kind', ['int', 'bool', 'none', 'nested', 'big', 'decimal'])
def test_two_keys_written_as_one_name_are_a_500_never_a_value_lost(call, kind):
    """orjson would write both ({"1":"a","1":"b"}), and a JSON reader keeps one of the values."""
    answer = call('/probe/keyed', {'kind': kind})
    assert answer.status_code == 500 and answer.content_type == 'application/problem+json', answer.get_data()
    assert 'two keys written as one name' in answer.get_json()['detail']


@pytest.mark.parametrize('kind', ['tuple', 'frozenset'])
def test_a_key_that_is_a_collection_has_no_name_and_is_a_500_that_says_so(call, kind, caplog):
    """A collection is written as an array, which no JSON name can be (docs/contract.md, section 5)."""
    answer = call('/probe/keyed', {'kind': kind})
    assert answer.status_code == 500 and answer.content_type == 'application/problem+json'
    assert 'a key that is a collection (a tuple or a frozenset)' in answer.get_json()['detail']  # trial BD: generic
    logged = [record for record in caplog.records if record.name == 'dbapi.access'][-1]
    assert f'a dict key of type {kind} has no JSON name: use a str' in vars(logged)['error.message']


def test_named_false_gives_tuples_to_raw_cursors(call):
    assert call('/probe/raw-rows').get_json() == [[1, 2]]


def test_db_call_runs_a_stored_function(call):
    assert call('/probe/add', {'a': 2, 'b': 40}).get_json() == 42
