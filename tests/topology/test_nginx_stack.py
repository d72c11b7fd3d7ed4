"""nginx in front of three gunicorn replicas, as `make stack` runs them: spreading, request ids,
forwarded headers, the body limit, hidden operations endpoints, timeouts, slow actions that leave every
replica serving, its access log, and the errors nginx answers itself."""
import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from email.parser import BytesHeaderParser
from pathlib import Path

import psutil
import pytest
from psycopg2.extensions import make_dsn, parse_dsn

from lib.errors import HTTP_DETAILS, status_phrase
from ops.stack import StackConfig, StackError, check_ports_free
import settings
from settings import BASE_DIR
from tests.helpers import (ADMIN_TOKEN, Reply, body_of_size, children_running, free_ports, http_request, post,
                           run_sql, wait_for, whole_or_first_piece)

from .helpers import read_json_lines, running_stack, stack_environment, worker_group

# nginx/dbapi.envsh: the longest request line and header nginx takes.
HEADER_BUFFER_SIZE = 8000

pytestmark = pytest.mark.slow

BODY_LIMIT = 65536
STATEMENT_TIMEOUT_MS = 1500
NGINX_REQUEST_ID = re.compile(r'[0-9a-f]{32}')
PROBLEM_KEYS = {'type', 'title', 'status', 'detail', 'request_id'}
# nginx's real_ip trusts X-Forwarded-For from this address in the module's stack, as it would an ingress's.
TRUSTED_PROXY = '127.0.0.1'
# Another loopback address: a connection from it is "outside" for nginx's probe-only paths.
OUTSIDE_ADDRESS = '127.0.0.2'


@pytest.fixture(scope='module')
def stack(tmp_path_factory, topology_database_url):
    """Three replicas behind nginx, with a small body limit, a short statement timeout, and real_ip on."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=3, MAX_CONTENT_LENGTH=str(BODY_LIMIT),
                       DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS), NGINX_REAL_IP_FROM=TRUSTED_PROXY) as running:
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
    assert body['status'] == status and body['title'] == status_phrase(status)
    assert body['request_id'] == reply.headers['X-Request-ID']
    assert reply.headers['Vary'] == 'Accept-Encoding'  # on every answer, nginx's own too (contract section 4)
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
    """Return the app's own access line of one request (its first piece when it was split), from the replicas'
    output the stack collects."""
    def lines():
        return [line for line in read_json_lines(stack.log_path)
                if line.get('log', {}).get('logger') == 'dbapi.access' and whole_or_first_piece(line)
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


@pytest.mark.parametrize('incoming', [ADMIN_TOKEN, f'trace.{ADMIN_TOKEN}'])
def test_an_id_holding_a_token_only_the_app_knows_is_replaced_in_the_answer_and_both_lines(stack, incoming):
    """nginx knows the request's own token only (none here): the app makes a new id, and nginx answers and logs that
    one, so the two lines of the request can be found together and none holds the token."""
    reply = stack.post('/probe/missing', headers={'X-Request-ID': incoming}, token='')
    request_id = reply.headers['X-Request-ID']
    assert ADMIN_TOKEN not in request_id and reply.json()['request_id'] == request_id
    assert log_line_of(stack, request_id)['http.response.status_code'] == 401
    assert app_access_line_of(stack, request_id)['http']['response']['status_code'] == 401
    assert ADMIN_TOKEN not in stack.log_text()


def test_an_app_error_carries_the_request_id_nginx_made(stack):
    body = assert_problem(stack.post('/probe/missing'), 404)
    assert NGINX_REQUEST_ID.fullmatch(body['request_id'])
    assert log_line_of(stack, body['request_id'])['nginx.upstream.status'] == [404]
    assert app_access_line_of(stack, body['request_id'])['http']['response']['status_code'] == 404


def test_the_app_trusts_exactly_one_forwarding_hop(stack):
    seen = stack.post('/topology/whoami', headers={'X-Forwarded-For': '203.0.113.9'}).json()
    assert seen['remote_addr'] == '127.0.0.1'  # not the address the caller claimed
    assert seen['x_forwarded_for'] == '203.0.113.9, 127.0.0.1'  # nginx appends its peer, once
    assert seen['scheme'] == 'http'


def test_a_callers_x_forwarded_proto_changes_nothing_for_an_app_trusting_nginx_alone(stack):
    """nginx appends the scheme it saw (tests/topology/test_nginx_headers.py), and the app reads nginx's entry."""
    assert stack.post('/topology/whoami', headers={'X-Forwarded-Proto': 'https'}).json()['scheme'] == 'http'


def test_real_ip_puts_the_client_of_a_trusted_proxy_in_nginxs_log(stack):
    reply = stack.post('/probe/echo', {}, headers={'X-Forwarded-For': '198.51.100.1, 203.0.113.9',
                                                   'X-Request-ID': 'real-ip-1'})
    assert reply.status == 200
    assert log_line_of(stack, 'real-ip-1')['client.ip'] == '203.0.113.9'  # the address the proxy appended
    assert app_access_line_of(stack, 'real-ip-1')['client']['ip'] == '127.0.0.1'  # one hop: nginx's peer


def test_a_body_at_the_limit_reaches_the_app(stack):
    reply = stack.post('/probe/echo', raw=body_of_size(BODY_LIMIT))
    assert reply.status == 200
    assert len(reply.json()['pad']) == BODY_LIMIT - len(b'{"pad": ""}')


def test_a_body_over_the_limit_is_refused_by_nginx_as_problem_details(stack):
    reply = stack.post('/probe/echo', raw=body_of_size(BODY_LIMIT + 1))
    body = assert_problem(reply, 413)
    assert body['detail'] == HTTP_DETAILS[413]  # the app's own words
    assert 'nginx.upstream.address' not in log_line_of(stack, body['request_id'])  # no replica saw it


@pytest.mark.parametrize('path', ['/metrics', '/metrics/', '/metrics?format=prometheus', '//metrics'])
def test_metrics_are_not_exposed_through_nginx(stack, path):
    body = assert_problem(http_request(stack.port, 'GET', path), 404)
    assert 'nginx.upstream.address' not in log_line_of(stack, body['request_id'])


def request_from(address, port, method, path, headers=()):
    """Send one request to 127.0.0.1:port from a connection whose source is address; return the Reply."""
    head = [f'{method} {path} HTTP/1.1'.encode(), *(f'{name}: {value}'.encode() for name, value in headers)]
    return raw_request(port, head, source=address)


@pytest.mark.parametrize('path', ['/healthz', '/readyz', '/readyz/', '/healthz?x=1', '//healthz', '/metrics'])
def test_probe_paths_are_refused_from_outside_this_host(stack, path):
    reply = request_from(OUTSIDE_ADDRESS, stack.port, 'GET', path)
    body = assert_problem(reply, 404)
    assert 'nginx.upstream.address' not in log_line_of(stack, body['request_id'])


def test_x_forwarded_for_never_makes_a_caller_local(stack):
    reply = request_from(OUTSIDE_ADDRESS, stack.port, 'GET', '/readyz', [('X-Forwarded-For', '127.0.0.1')])
    assert_problem(reply, 404)


def test_metrics_stay_reachable_on_the_replicas(stack):
    reply = http_request(stack.replica_ports[0], 'GET', '/metrics')
    assert reply.status == 200 and reply.headers['Content-Type'].startswith('text/plain')


def test_health_endpoints_answer_a_probe_made_on_this_host(stack):
    """The image's HEALTHCHECK and `make stack`'s start-up checks call nginx from 127.0.0.1."""
    assert http_request(stack.port, 'GET', '/healthz').json() == {'status': 'ok'}
    assert http_request(stack.port, 'GET', '/readyz').status == 200
    reply = http_request(stack.port, 'GET', '/healthz', headers={'X-Forwarded-For': '203.0.113.9'})
    assert reply.status == 200  # the peer counts, not what real_ip made of X-Forwarded-For


def test_nginx_waits_longer_than_the_statement_timeout(stack):
    """The app's own 504 (with its SQLSTATE) arrives, not nginx's: proxy timeouts sit above it."""
    reply = stack.post('/probe/hold', {'seconds': STATEMENT_TIMEOUT_MS / 1000 * 2})
    body = assert_problem(reply, 504)
    assert body.get('sqlstate') == '57014'


def test_access_log_lines_are_ecs_json(stack):
    reply = stack.post('/probe/echo?x=1', {'name': 'Ada'}, headers={'User-Agent': 'topology-test'})
    line = log_line_of(stack, reply.headers['X-Request-ID'])
    assert list(line)[:3] == ['@timestamp', 'log.level', 'message']  # ECS logging's order
    assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d', line['@timestamp'])
    assert line['message'] == 'POST /probe/echo 200' and line['event.outcome'] == 'success'
    assert line['http.request.method'] == 'POST' and line['url.path'] == '/probe/echo'
    assert line['url.query'] == 'x=1' and line['http.response.status_code'] == 200
    assert line['client.ip'] == '127.0.0.1' and line['user_agent.original'] == 'topology-test'
    assert isinstance(line['event.duration'], int) and line['event.duration'] >= 0
    assert line['nginx.upstream.address'] in {f'127.0.0.1:{port}' for port in stack.replica_ports}
    assert line['nginx.upstream.status'] == [200] and isinstance(line['nginx.upstream.bytes_sent'][0], int)
    assert isinstance(line['nginx.upstream.response_time'][0], float)


def test_access_log_lines_leave_out_what_the_request_lacks(stack):
    reply = call_raw(stack, b'/probe/echo', b'X-Request-ID: bare-1')  # no User-Agent, no query
    assert reply.status == 200
    line = log_line_of(stack, 'bare-1')
    assert 'url.query' not in line and 'user_agent.original' not in line
    assert '' not in line.values()


def test_a_request_line_nginx_cannot_read_is_logged_without_its_parts(stack):
    reply = raw_request(stack.port, [b'GARBAGE'])
    body = assert_problem(reply, 400)
    line = log_line_of(stack, body['request_id'])
    assert line['message'] == '- - 400' and line['log.level'] == 'warning'
    assert not {'http.request.method', 'url.path', 'url.original', 'nginx.upstream.address'} & line.keys()


def test_the_longest_request_nginx_takes_logs_a_line_under_4_kib(stack):
    """nginx's workers share stdout: a pipe takes at most 4 KiB in one write without interleaving."""
    path = b'/probe/' + b'p' * (HEADER_BUFFER_SIZE - 100)
    reply = call_raw(stack, path, b'User-Agent: ' + '\u00e9'.encode() * 3000, b'X-Request-ID: longest-1')
    assert reply.status == 404
    line = log_line_of(stack, 'longest-1')
    assert line['url.original'].endswith('\u2026') and len(line['url.original'].encode()) == 512 + 3
    assert line['user_agent.original'] == '\u00e9' * 256 + '\u2026'
    raw = [raw for raw in stack.log_path.read_bytes().splitlines() if b'"longest-1"' in raw and b'nginx.access' in raw]
    assert len(raw) == 1 and len(raw[0]) + 1 < 4096


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


def raw_request(port, head, body=b'', source='127.0.0.1'):
    """Send a request head (bytes, lines without CRLF) as it is from source, and return the Reply; Connection:
    close."""
    request = b'\r\n'.join([*head, b'Host: 127.0.0.1', b'Connection: close', f'Content-Length: {len(body)}'.encode()])
    with socket.create_connection(('127.0.0.1', port), timeout=30, source_address=(source, 0)) as sock:
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
    line = log_line_of(stack, body['request_id'])
    assert 'nginx.upstream.address' not in line and line['message'] == 'POST - 414'


def test_two_authorization_headers_are_a_400_problem(stack):
    reply = call_raw(stack, b'/probe/echo', b'Authorization: Bearer other-token')
    assert_problem(reply, 400)


@pytest.mark.parametrize('host, status', [('a' * 64 + '.example', 200), ('a..b', 400), ('a/b', 400)])
def test_a_host_nginx_passes_on_routes_as_any_other_and_one_it_refuses_is_its_400_problem(stack, host, status):
    reply = stack.post('/probe/echo', {'a': 1}, headers={'Host': host})
    if status == 200:
        assert reply.status == 200 and reply.json() == {'a': 1}
    else:
        assert 'a valid host name' in assert_problem(reply, 400)['detail']


def test_a_nul_byte_in_the_path_is_a_400_problem(stack):
    assert_problem(call_raw(stack, b'/probe/echo%00'), 400)


def test_a_header_too_large_for_nginx_is_a_431_problem(stack):
    reply = call_raw(stack, b'/probe/echo', b'X-Large: ' + b'y' * (HEADER_BUFFER_SIZE + 1))
    body = assert_problem(reply, 431)
    assert log_line_of(stack, body['request_id'])['log.level'] == 'warning'


def test_the_largest_line_and_headers_nginx_passes_on_reach_the_app(stack):
    """gunicorn's limits sit above nginx's, so gunicorn never answers with its own HTML page; 80 headers of the
    client's, and those nginx adds, stay within gunicorn's count of 100."""
    near_limit = HEADER_BUFFER_SIZE - 100
    path = b'/probe/echo?pad=' + b'p' * (near_limit - len(b'POST /probe/echo?pad= HTTP/1.1'))
    headers = [b'X-Large: ' + b'y' * near_limit, b'X-Forwarded-For: ' + b'1' * near_limit,
               *(f'X-Many-{index}: x'.encode() for index in range(80))]
    reply = call_raw(stack, path, *headers, body=b'{"a": 1}')
    assert reply.status == 200, reply.body[:300]
    assert reply.json() == {'a': 1}


def test_more_headers_than_gunicorn_counts_are_its_431_as_problem_details_through_nginx(stack):
    """nginx counts no headers: gunicorn's bound on their count is the one that holds (docs/deployment.md)."""
    reply = call_raw(stack, b'/probe/echo', *(f'X-Many-{index}: x'.encode() for index in range(120)),
                     body=b'{"a": 1}')
    assert assert_problem(reply, 431)['detail'] == 'The request has a header too large, or too many headers.'


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


# --- Slow actions never take a replica out of service. ---


def test_slow_actions_that_time_out_in_nginx_leave_every_replica_serving(tmp_path_factory, topology_database_url):
    """One slow action per replica, each given up by nginx (its read timeout set low here): nginx never rests a
    replica for it (max_fails=0), so the fast calls that follow all reach one. With max_fails=1 they were 502s,
    "no live upstreams", for 5 s."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=3, NGINX_PROXY_TIMEOUT='1000ms') as slow:
        with ThreadPoolExecutor(3) as pool:
            timed_out = list(pool.map(lambda _: slow.post('/probe/hold', {'seconds': 4}), range(3)))
        fast = [slow.post('/probe/echo', {'n': number}) for number in range(30)]
        lines = [log_line_of(slow, reply.headers['X-Request-ID']) for reply in timed_out]
    assert [reply.status for reply in timed_out] == [504] * 3
    assert {line['nginx.upstream.address'] for line in lines} == {f'127.0.0.1:{port}' for port in slow.replica_ports}
    assert all(line['event.outcome'] == 'failure' and line['nginx.upstream.status'] == [504] for line in lines)
    assert [reply.status for reply in fast] == [200] * 30


@pytest.mark.parametrize('taken, owner', [(0, 'nginx (PORT)'), (2, 'replica 2 (REPLICA_BASE_PORT)'),
                                          (4, 'pgbouncer (PGBOUNCER_PORT)')])
def test_a_port_of_the_stack_in_use_stops_it_before_anything_starts(topology_database_url, taken, owner):
    base = free_ports(5)
    with socket.create_server(('127.0.0.1', base + taken)):
        result = subprocess.run([sys.executable, '-m', 'ops.stack'], cwd=BASE_DIR, capture_output=True, text=True,
                                timeout=60, env=stack_environment(topology_database_url, base, 3, True,
                                                                  {'LOG_LEVEL': 'INFO'}))
    assert result.returncode == 1
    assert result.stderr.splitlines() == [f'stack: 1 port in use: {base + taken} ({owner}): stop what listens there, '
                                          f'or move the stack'], result.stderr
    assert 'migrations applied' not in result.stdout and 'serves on' not in result.stdout


def test_two_servers_of_the_stack_on_one_port_stop_it_before_anything_starts():
    config = StackConfig(port=8000, replicas=3, replica_base_port=7998, pgbouncer=False, pgbouncer_port=6432)
    with pytest.raises(StackError, match='port 8000 would serve both nginx .PORT. and replica 3 .REPLICA_BASE_PORT.'):
        check_ports_free(config)


def test_a_named_database_out_of_reach_stops_the_stack_before_anything_starts(topology_database_url):
    """It started, never ready (/readyz a 503), and its first rolling restart stopped at the first replica; `make
    run` refuses it at once."""
    reports = 'postgresql://dbapi:pa55-x9@127.0.0.1:1/r?connect_timeout=2'
    environment = stack_environment(topology_database_url, free_ports(5), 2, False,
                                    {'DB_NAMES': 'default,reports', 'REPORTS_DATABASE_URL': reports})
    result = subprocess.run([sys.executable, '-m', 'ops.stack'], cwd=BASE_DIR, capture_output=True, text=True,
                            timeout=60, env=environment)
    assert result.returncode == 1 and len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("stack: the database 'reports' cannot be reached: ") and 'pa55' not in result.stderr
    assert result.stdout == '', 'nothing started: no migration, no replica'


@pytest.mark.parametrize('overrides, line', [
    ({'PORT': '70000'}, 'dbapi: PORT must be between 1 and 65535'),
    ({'PORT': '65535', 'REPLICA_BASE_PORT': ''},
     'stack: the 3 replicas after PORT 65535 would need ports past 65535: set PORT or REPLICA_BASE_PORT lower'),
    ({'REPLICA_BASE_PORT': '65534'}, 'stack: REPLICA_BASE_PORT must be between 1 and 65533'),
    # Checked once before PostgreSQL or a replica starts, not once per replica.
    ({'DB_RESET': 'no_such_package:reset'}, 'stack: DB_RESET: no_such_package:reset cannot be imported '
                                            "(ModuleNotFoundError: No module named 'no_such_package')"),
    ({'MODULE_PACKAGES': 'no_such_package'}, "stack: MODULE_PACKAGES names 'no_such_package', which is no importable "
                                             "package (ModuleNotFoundError: No module named 'no_such_package')"),
    # A quoted exception on one line, escaped (trial L: it went out raw, on two lines, its colour escape live).
    ({'DB_RESET': 'tests.failing_hooks:reset'}, 'stack: DB_RESET: tests.failing_hooks:reset cannot be imported '
                                                '(ValueError: first line\\nsecond \\x1b[31mred)'),
    # nginx's settings too: they were a traceback once the replicas ran (trial K).
    ({'NGINX_PROXY_TIMEOUT': 'abc'}, 'stack: dbapi.envsh: NGINX_PROXY_TIMEOUT must be an nginx time with its unit, '
                                     "such as 1500ms, not 'abc'"),
    # nginx reads a bare number as seconds, where every other dbapi time is milliseconds (trial P)
    ({'NGINX_PROXY_TIMEOUT': '1500'}, 'stack: dbapi.envsh: NGINX_PROXY_TIMEOUT must be an nginx time with its unit, '
                                      "such as 1500ms, not '1500'"),
    # nginx takes 0 and then gives up on every request at once: the stack never served (trial N)
    ({'NGINX_PROXY_TIMEOUT': '0s'}, 'stack: dbapi.envsh: NGINX_PROXY_TIMEOUT must be above 0 (nginx would give up on '
                                    "every request at once), not '0s'"),
    # the stack's own: it replaced them without a word (trial Q)
    ({'NGINX_LISTEN': '127.0.0.1:18149'},
     "stack: NGINX_LISTEN is the nginx image's setting: make stack sets it itself, from PORT (nginx listens on "
     '127.0.0.1:PORT): set PORT'),
    # and what only nginx itself refuses, by `nginx -t` (trial M: nginx said so once the replicas ran)
    ({'NGINX_REAL_IP_FROM': '999.1.1.1'}, 'stack: nginx refuses its settings: host not found in set_real_ip_from '
                                          '"999.1.1.1"'),
])
def test_a_stack_setting_out_of_range_stops_it_in_one_line(topology_database_url, overrides, line):
    environment = stack_environment(topology_database_url, free_ports(5), 3, False, overrides)
    environment = {key: value for key, value in environment.items() if value != '' or key not in overrides}
    result = subprocess.run([sys.executable, '-m', 'ops.stack'], cwd=BASE_DIR, capture_output=True, text=True,
                            timeout=60, env=environment)
    assert result.returncode == 1 and result.stderr.splitlines() == [line], result.stderr
    assert result.stdout == '', 'nothing started: no migration, no replica'


def respelled(dsn):
    """Return dsn with its server's address spelled otherwise: a socket folder with a trailing slash, a port given."""
    parts = parse_dsn(dsn)
    host = parts.get('host') or 'localhost'
    host = f'{host}/' if host.startswith('/') else host
    return make_dsn(**{**parts, 'host': host, 'port': parts.get('port', '5432')})


@pytest.mark.parametrize('named', [None, 'same', 'respelled'])
def test_replicas_whose_workers_postgresql_cannot_take_stop_the_stack_before_any_starts(topology_database_url, named):
    """3 replicas of 17 workers each (2 x 8 cores + 1), 2 connections each, went past PostgreSQL's 100 (trial AQ); a
    named database on the same server doubles the pools, and went uncounted (trial AS), and so did one whose DSN
    spelled the server's address otherwise (trial AT)."""
    [(max_connections,)] = run_sql(topology_database_url, "SELECT current_setting('max_connections')::int")
    taken = max_connections - 5
    workers = taken // 6 if named else 256  # fits one database's pools, not two
    overrides = {'WEB_CONCURRENCY': str(workers)}
    if named:
        reports = topology_database_url if named == 'same' else respelled(topology_database_url)
        overrides.update(DB_NAMES='default,reports', REPORTS_DATABASE_URL=reports)
    environment = stack_environment(topology_database_url, free_ports(5), 3, False, overrides)
    result = subprocess.run([sys.executable, '-m', 'ops.stack'], cwd=BASE_DIR, capture_output=True, text=True,
                            timeout=60, env=environment)
    pools = '2 connections (DB_POOL_MAX) to each of 2 databases there' if named else '2 connections (DB_POOL_MAX)'
    assert result.returncode == 1 and result.stderr.splitlines() == [
        f'stack: 3 replicas, each with {workers} workers (WEB_CONCURRENCY) of {pools}, would open '
        f'{3 * workers * 2 * (2 if named else 1)} connections; PostgreSQL takes {taken} (its max_connections less 5 '
        'for others): lower REPLICAS, WEB_CONCURRENCY or DB_POOL_MAX, or set STACK_PGBOUNCER=1'], result.stderr
    assert 'serves on' not in result.stderr and 'dbapi.access' not in result.stdout


def test_an_output_file_opened_without_append_keeps_every_line_of_nginx_and_the_replicas(tmp_path_factory,
                                                                                         topology_database_url):
    """A shell's `>` opens the stack's stdout without O_APPEND: nginx reopens /dev/stdout appending, the replicas
    wrote at the offset they share with the stack, which stayed behind nginx's lines, and overwrote them."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=2, log_mode='wb', LOG_LEVEL='INFO') as stack:
        ids = {stack.post('/probe/echo', {'n': number}).headers['X-Request-ID'] for number in range(40)}
        wait_for(lambda: {line['http.request.id'] for line in stack.access_log()} >= ids, 5, 'nginx lines missing')
        lines = [line for line in stack.log_path.read_bytes().splitlines() if line.startswith(b'{')]
    records = [json.loads(line) for line in lines]  # a line overwritten part of the way is no JSON
    app_ids = {record['http']['request'].get('id') for record in records
               if record.get('log', {}).get('logger') == 'dbapi.access'}
    assert app_ids >= ids and {record['http.request.id'] for record in records if 'http.request.id' in record} >= ids


def test_a_secret_that_a_replicas_own_process_id_holds_stops_the_stack_before_anything_starts():
    """Each replica's PROCESS_ID is the stack's, numbered: a password equal to the second's passed the stack's check,
    and the stack stopped half-way when that replica refused to start."""
    base = free_ports(4)
    url = f'postgresql://dbapi:{settings.PROCESS_ID}-2@127.0.0.1:1/db'
    result = subprocess.run([sys.executable, '-m', 'ops.stack'], cwd=BASE_DIR, capture_output=True, text=True,
                            timeout=60, env=stack_environment(url, base, 2, False, {}))
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("stack: the password of database 'default' is a word that every log line holds")
    assert len(result.stderr.splitlines()) == 1 and f'{settings.PROCESS_ID}-2' not in result.stderr


@pytest.mark.parametrize('stop_signal, cause', [
    (signal.SIGINT, 'Ctrl-C'), (signal.SIGTERM, 'SIGTERM'), (signal.SIGHUP, 'SIGHUP')])
def test_a_stop_while_the_stack_starts_stops_everything_in_one_line(tmp_path, topology_database_url, stop_signal,
                                                                    cause):
    """Stopped while its replicas booted, the stack stopped them and exited 0 without a word (trial P); a SIGHUP
    then (no terminal) was kept for a rolling restart once it served, where sent to the group it killed initdb or
    pg_ctl (trial Q): before the stack serves it stops it, as it stops `make run`."""
    base = free_ports(4)
    with open(tmp_path / 'stack.log', 'wb') as log:
        process = subprocess.Popen([sys.executable, '-m', 'ops.stack'], cwd=BASE_DIR, stdout=log,
                                   stderr=subprocess.PIPE, text=True,
                                   env=stack_environment(topology_database_url, base, 2, False, {}))
    try:
        replicas = wait_for(lambda: children_running(process.pid, 'gunicorn'), 60, 'no replica started', interval=0.01)
        process.send_signal(stop_signal)
        errors = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + stop_signal, errors
    assert errors.splitlines() == [f'stack: stopped by {cause} before it served'], errors
    psutil.wait_procs(replicas, timeout=30)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in replicas)


def catches(pid, signum):
    """Tell whether process pid has a handler of its own for signum (/proc/<pid>/status, SigCgt)."""
    with contextlib.suppress(OSError):
        for line in (Path('/proc') / str(pid) / 'status').read_text().splitlines():
            if line.startswith('SigCgt:'):
                return bool(int(line.split()[1], 16) >> (signum - 1) & 1)
    return False


def test_ctrl_c_while_the_stack_imports_is_its_one_line(topology_database_url):
    """A Ctrl-C in the stack's first second, while it imported, was a KeyboardInterrupt's traceback (trial Q)."""
    process = subprocess.Popen([sys.executable, '-m', 'ops.stack'], cwd=BASE_DIR, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True,
                               env=stack_environment(topology_database_url, free_ports(4), 2, False, {}))
    try:
        wait_for(lambda: catches(process.pid, signal.SIGTERM), 30, 'no stop handler', interval=0.001)
        importing = not maps_psycopg2(process.pid)  # imported a few tenths of a second later
        process.send_signal(signal.SIGINT)
        errors = process.communicate(timeout=120)[1]
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 128 + signal.SIGINT and errors.splitlines() == [
        'stack: stopped by Ctrl-C before it served'], errors
    assert importing, 'the stop handlers came once the imports were done'


def maps_psycopg2(pid):
    """Tell whether process pid has loaded psycopg2's C extension (/proc/<pid>/maps)."""
    with contextlib.suppress(OSError):
        return '_psycopg' in (Path('/proc') / str(pid) / 'maps').read_text()
    return False
