"""nginx in front of three gunicorn replicas, as `make stack` runs them: spreading, request ids,
forwarded headers, the body limit, hidden /metrics, timeouts, and the errors nginx answers itself."""
import json
import os
import re
import socket
import subprocess
import sys
from email.parser import BytesHeaderParser
from http import HTTPStatus

import pytest

from lib.errors import HTTP_DETAILS
from tests.helpers import ADMIN_TOKEN, Reply, body_of_size, free_ports, http_request, post, wait_for

from .helpers import read_json_lines, running_stack, worker_group

# nginx/dbapi.envsh: the longest request line and header nginx takes.
HEADER_BUFFER_SIZE = 8000

pytestmark = pytest.mark.slow

BODY_LIMIT = 65536
STATEMENT_TIMEOUT_MS = 1500
NGINX_REQUEST_ID = re.compile(r'[0-9a-f]{32}')
PROBLEM_KEYS = {'type', 'title', 'status', 'detail', 'request_id'}


@pytest.fixture(scope='module')
def stack(tmp_path_factory, topology_database_url):
    """Three replicas behind nginx, with a small body limit and a short statement timeout."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=3, MAX_CONTENT_LENGTH=str(BODY_LIMIT),
                       DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS)) as running:
        yield running


def log_line_of(stack, request_id):
    """Return nginx's access log line of one request; nginx may write it just after answering."""
    def lines():
        return [line for line in stack.access_log() if line['http.request.id'] == request_id]
    found = wait_for(lines, 5, f'no access log line for {request_id}')
    assert len(found) == 1, found
    return found[0]


def assert_problem(reply, status):
    """Check that reply is nginx's or the app's problem+json of status, tied to its X-Request-ID."""
    assert reply.status == status
    assert reply.headers['Content-Type'] == 'application/problem+json'
    body = reply.json()
    assert set(body) >= PROBLEM_KEYS
    assert body['status'] == status and body['title'] == HTTPStatus(status).phrase
    assert body['request_id'] == reply.headers['X-Request-ID']
    return body


def test_requests_spread_over_every_replica(stack):
    groups = {worker_group(port) for port in stack.replica_ports}
    assert len(groups) == len(stack.replica_ports)
    served_by = set()
    for _ in range(30):
        reply = stack.post('/probe/pid')
        assert reply.status == 200
        served_by.add(os.getpgid(reply.json()['pid']))
    assert served_by == groups


def app_access_line_of(stack, request_id):
    """Return the app's own access line of one request, from the replicas' output the stack collects."""
    def lines():
        return [line for line in read_json_lines(stack.log_path)
                if line.get('log', {}).get('logger') == 'dbapi.access'
                and line.get('http', {}).get('request', {}).get('id') == request_id]
    found = wait_for(lines, 5, f'no app access line for {request_id}')
    assert len(found) == 1, found
    return found[0]


def test_request_id_made_by_nginx_reaches_the_app_and_comes_back(stack):
    reply = stack.post('/topology/whoami')
    assert reply.status == 200
    request_id = reply.headers['X-Request-ID']
    assert NGINX_REQUEST_ID.fullmatch(request_id)
    seen = reply.json()
    assert seen['x_request_id'] == seen['request_id'] == request_id
    assert log_line_of(stack, request_id)['http.response.status_code'] == 200
    assert app_access_line_of(stack, request_id)['http']['response']['status_code'] == 200


@pytest.mark.parametrize('incoming, kept', [('caller-1.2:3_x', True), ('has spaces', False),
                                            ('x' * 129, False), ('quote"brace{', False)])
def test_a_sane_request_id_is_kept_and_any_other_replaced(stack, incoming, kept):
    reply = stack.post('/topology/whoami', headers={'X-Request-ID': incoming})
    request_id = reply.headers['X-Request-ID']
    assert (request_id == incoming) is kept
    assert kept or NGINX_REQUEST_ID.fullmatch(request_id)
    assert reply.json()['request_id'] == request_id


def test_an_app_error_carries_the_request_id_nginx_made(stack):
    body = assert_problem(stack.post('/probe/missing'), 404)
    assert NGINX_REQUEST_ID.fullmatch(body['request_id'])
    assert log_line_of(stack, body['request_id'])['nginx.upstream.status'] == '404'
    assert app_access_line_of(stack, body['request_id'])['http']['response']['status_code'] == 404


def test_the_app_trusts_exactly_one_forwarding_hop(stack):
    seen = stack.post('/topology/whoami', headers={'X-Forwarded-For': '203.0.113.9'}).json()
    assert seen['remote_addr'] == '127.0.0.1'  # not the address the caller claimed
    assert seen['x_forwarded_for'] == '203.0.113.9, 127.0.0.1'
    assert seen['scheme'] == 'http'


def test_a_body_at_the_limit_reaches_the_app(stack):
    reply = stack.post('/probe/echo', raw=body_of_size(BODY_LIMIT))
    assert reply.status == 200
    assert len(reply.json()['pad']) == BODY_LIMIT - len(b'{"pad": ""}')


def test_a_body_over_the_limit_is_refused_by_nginx_as_problem_details(stack):
    reply = stack.post('/probe/echo', raw=body_of_size(BODY_LIMIT + 1))
    body = assert_problem(reply, 413)
    assert body['detail'] == HTTP_DETAILS[413]  # the app's own words
    assert log_line_of(stack, body['request_id'])['nginx.upstream.address'] == ''  # no replica saw it


@pytest.mark.parametrize('path', ['/metrics', '/metrics/', '/metrics?format=prometheus', '//metrics'])
def test_metrics_are_not_exposed_through_nginx(stack, path):
    body = assert_problem(http_request(stack.port, 'GET', path), 404)
    assert log_line_of(stack, body['request_id'])['nginx.upstream.address'] == ''


def test_metrics_stay_reachable_on_the_replicas(stack):
    reply = http_request(stack.replica_ports[0], 'GET', '/metrics')
    assert reply.status == 200 and reply.headers['Content-Type'].startswith('text/plain')


def test_health_endpoints_pass_through(stack):
    assert http_request(stack.port, 'GET', '/healthz').json() == {'status': 'ok'}
    assert http_request(stack.port, 'GET', '/readyz').status == 200


def test_nginx_waits_longer_than_the_statement_timeout(stack):
    """The app's own 504 (with its SQLSTATE) arrives, not nginx's: proxy timeouts sit above it."""
    reply = stack.post('/probe/hold', {'seconds': STATEMENT_TIMEOUT_MS / 1000 * 2})
    body = assert_problem(reply, 504)
    assert body.get('sqlstate') == '57014'


def test_access_log_lines_are_ecs_json(stack):
    reply = stack.post('/probe/echo?x=1', {'name': 'Ada'}, headers={'User-Agent': 'topology-test'})
    line = log_line_of(stack, reply.headers['X-Request-ID'])
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d', line['@timestamp'])
    assert line['http.request.method'] == 'POST' and line['url.path'] == '/probe/echo'
    assert line['url.query'] == 'x=1' and line['http.response.status_code'] == 200
    assert line['client.ip'] == '127.0.0.1' and line['user_agent.original'] == 'topology-test'
    assert isinstance(line['event.duration'], int) and line['event.duration'] >= 0
    assert line['nginx.upstream.address'] in {f'127.0.0.1:{port}' for port in stack.replica_ports}


def test_tokens_never_reach_the_access_log(stack):
    stack.post('/probe/')
    assert ADMIN_TOKEN not in stack.log_text()


def test_replicas_answer_directly_too(stack):
    """Each replica is a whole dbapi: what nginx adds is routing, ids and limits."""
    for port in stack.replica_ports:
        assert post(port, '/probe/', {'direct': True}).json() == {'direct': True}


def test_the_image_healthcheck_passes_on_a_serving_replica_only(stack):
    def healthcheck(port):
        environment = dict(os.environ, BIND=f'127.0.0.1:{port}')
        return subprocess.run([sys.executable, '-m', 'ops.healthcheck'], env=environment, capture_output=True).returncode
    assert healthcheck(stack.replica_ports[0]) == 0
    assert healthcheck(free_ports(1)) == 1


# --- Errors nginx answers itself: problem details with the X-Request-ID, never an HTML page. ---


def raw_request(port, head, body=b''):
    """Send a request head (bytes, lines without CRLF) as it is, and return the Reply; Connection: close."""
    request = b'\r\n'.join([*head, b'Host: 127.0.0.1', b'Connection: close', f'Content-Length: {len(body)}'.encode()])
    with socket.create_connection(('127.0.0.1', port), timeout=30) as sock:
        sock.sendall(request + b'\r\n\r\n' + body)
        answer = b''
        while chunk := sock.recv(65536):
            answer += chunk
    head_bytes, _, payload = answer.partition(b'\r\n\r\n')
    status_line, _, header_lines = head_bytes.partition(b'\r\n')
    return Reply(int(status_line.split()[1]), BytesHeaderParser().parsebytes(header_lines), payload)


def call_raw(stack, path, *headers, body=b'{}'):
    """POST body to path (bytes) through nginx with the admin token and extra header lines (bytes)."""
    head = [b'POST ' + path + b' HTTP/1.1', f'Authorization: Bearer {ADMIN_TOKEN}'.encode(),
            b'Content-Type: application/json', *headers]
    return raw_request(stack.port, head, body)


def test_a_5000_character_path_reaches_the_app_not_gunicorns_limit(stack):
    reply = call_raw(stack, b'/probe/' + b'x' * 4993)
    body = assert_problem(reply, 404)
    assert app_access_line_of(stack, body['request_id'])['http']['response']['status_code'] == 404


def test_a_9000_character_path_is_nginxs_414_problem(stack):
    body = assert_problem(call_raw(stack, b'/probe/' + b'x' * 8993), 414)
    assert str(HEADER_BUFFER_SIZE) in body['detail']
    assert log_line_of(stack, body['request_id'])['nginx.upstream.address'] == ''


def test_two_authorization_headers_are_a_400_problem(stack):
    reply = call_raw(stack, b'/probe/echo', b'Authorization: Bearer other-token')
    assert_problem(reply, 400)


def test_a_nul_byte_in_the_path_is_a_400_problem(stack):
    assert_problem(call_raw(stack, b'/probe/echo%00'), 400)


def test_a_header_too_large_for_nginx_is_a_431_problem(stack):
    reply = call_raw(stack, b'/probe/echo', b'X-Large: ' + b'y' * (HEADER_BUFFER_SIZE + 1))
    body = assert_problem(reply, 431)
    assert log_line_of(stack, body['request_id'])['log.level'] == 'warning'


def test_the_largest_line_and_headers_nginx_passes_on_reach_the_app(stack):
    """gunicorn's limits sit above nginx's, so gunicorn never answers with its own HTML page."""
    near_limit = HEADER_BUFFER_SIZE - 100
    path = b'/probe/echo?pad=' + b'p' * (near_limit - len(b'POST /probe/echo?pad= HTTP/1.1'))
    headers = [b'X-Large: ' + b'y' * near_limit, b'X-Forwarded-For: ' + b'1' * near_limit,
               *(f'X-Many-{index}: x'.encode() for index in range(200))]
    reply = call_raw(stack, path, *headers, body=b'{"a": 1}')
    assert reply.status == 200, reply.body[:300]
    assert reply.json() == {'a': 1}


def test_a_path_with_bytes_outside_printable_ascii_is_a_400_problem(stack):
    """gunicorn would refuse it with an HTML page; nginx refuses it first."""
    assert_problem(call_raw(stack, b'/probe/caf\xc3\xa9'), 400)


def test_invalid_utf8_in_the_path_and_user_agent_still_logs_a_valid_json_line(stack):
    reply = call_raw(stack, b'/probe/\xff\xfeecho?q=\xe2\x82\xac\xff', b'User-Agent: caf\xc3\xa9 \xff agent',
                     b'X-Request-ID: invalid-utf8-1')
    assert_problem(reply, 400)
    line = log_line_of(stack, 'invalid-utf8-1')
    assert line['url.path'] == line['url.original'] == '/probe/\ufffd'
    assert line['user_agent.original'] == 'café \ufffd'
    assert line['log.level'] == 'warning' and line['http.request.method'] == 'POST'
    agent_only = call_raw(stack, b'/probe/echo?q=%E2%82%AC', b'User-Agent: \xff', b'X-Request-ID: invalid-utf8-2')
    assert agent_only.status == 200
    line = log_line_of(stack, 'invalid-utf8-2')
    assert line['user_agent.original'] == '\ufffd' and line['url.query'] == 'q=%E2%82%AC'
    for raw in stack.log_path.read_bytes().splitlines():
        if b'"nginx.access"' in raw:
            json.loads(raw.decode('utf-8'))  # every line: strict UTF-8, then JSON


def test_the_access_line_level_follows_the_status(stack):
    ok = stack.post('/probe/echo', {})
    crashed = stack.post('/probe/crash')
    levels = {reply.status: log_line_of(stack, reply.headers['X-Request-ID'])['log.level'] for reply in (ok, crashed)}
    assert levels == {200: 'info', 500: 'error'}
