"""What nginx tells the replicas about the caller (X-Forwarded-For, X-Forwarded-Proto, real_ip), what it logs of
an answer a replica cut short, and how its two templates render for the image: the worker count from
NGINX_WORKER_PROCESSES, a read-only root."""
import http.client
import json
import os
import re
import socket
import subprocess
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from ops import nginx
from ops.render import TemplateError, program
from tests.helpers import ADMIN_TOKEN, http_request, wait_for

from .helpers import running_nginx

pytestmark = pytest.mark.slow

NATIVE = dict(DBAPI_UPSTREAMS='127.0.0.1:8001', NGINX_LISTEN='127.0.0.1:8000')


class HeaderEcho(BaseHTTPRequestHandler):
    """An upstream that answers every GET with the request headers it received, as JSON."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        """Answer with the headers."""
        body = json.dumps({name.lower(): value for name, value in self.headers.items()}).encode()
        self.send_response(200)
        self.send_header('Content-Type', 'application/json')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):  # noqa: N802 (http.server's name)
        """Answer /probe/whole with 12 bytes, /probe/stream with 8 MiB in chunks; anything else with 10 bytes of the
        1000 announced, then close: a replica that died half-way."""
        if self.path == '/probe/whole':
            self.rfile.read(int(self.headers.get('Content-Length') or 0))
            self.send_response(200)
            self.send_header('Content-Type', 'application/json')
            self.send_header('Content-Length', '12')
            self.end_headers()
            self.wfile.write(b'{"ok": true}')
            return
        if self.path == '/probe/stream':
            self.send_response(200)
            self.send_header('Transfer-Encoding', 'chunked')
            self.end_headers()
            chunk = b'[' * 65536
            for _ in range(128):
                self.wfile.write(b'%x\r\n%s\r\n' % (len(chunk), chunk))
            self.wfile.write(b'0\r\n\r\n')
            return
        self.send_response(200)
        self.send_header('Content-Length', '1000')
        self.end_headers()
        self.wfile.write(b'{"rows": [')
        self.close_connection = True

    def log_message(self, format, *args):  # noqa: A002 (http.server's name)
        """Stay quiet."""


@pytest.fixture()
def echo_port():
    """The port of a header-echoing upstream, stopped after the test."""
    server = ThreadingHTTPServer(('127.0.0.1', 0), HeaderEcho)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server.server_address[1]
    server.shutdown()
    server.server_close()


def headers_seen(proxy, headers):
    """Return the headers the upstream received for a GET through nginx."""
    return http_request(proxy.port, 'GET', '/probe/echo', headers=headers).json()


def test_nginx_appends_what_it_saw_to_the_forwarded_headers(echo_port):
    with running_nginx([echo_port]) as proxy:
        alone = headers_seen(proxy, {})
        behind_ingress = headers_seen(proxy, {'X-Forwarded-For': '203.0.113.9, 10.0.0.7',
                                              'X-Forwarded-Proto': 'https'})
    assert (alone['x-forwarded-for'], alone['x-forwarded-proto']) == ('127.0.0.1', 'http')
    # TRUSTED_PROXY_HOPS=2 reads the second entry from the right: the ingress's client and scheme.
    assert behind_ingress['x-forwarded-for'] == '203.0.113.9, 10.0.0.7, 127.0.0.1'
    assert behind_ingress['x-forwarded-proto'] == 'https, http'


def test_real_ip_logs_the_client_the_trusted_proxy_saw_and_forwards_each_hop_once(echo_port):
    with running_nginx([echo_port], NGINX_REAL_IP_FROM='127.0.0.1') as proxy:
        seen = headers_seen(proxy, {'X-Forwarded-For': '198.51.100.1, 203.0.113.9', 'X-Request-ID': 'real-1'})
        line = wait_for(lambda: [line for line in proxy.access_log() if line['http.request.id'] == 'real-1'], 5,
                        'nginx did not log the request')[0]
    assert line['client.ip'] == '203.0.113.9'  # the last entry: the one the trusted proxy appended
    assert seen['x-forwarded-for'] == '198.51.100.1, 203.0.113.9, 127.0.0.1'


def test_without_real_ip_the_peer_is_the_client(echo_port):
    with running_nginx([echo_port]) as proxy:
        headers_seen(proxy, {'X-Forwarded-For': '203.0.113.9', 'X-Request-ID': 'peer-1'})
        line = wait_for(lambda: [line for line in proxy.access_log() if line['http.request.id'] == 'peer-1'], 5,
                        'nginx did not log the request')[0]
    assert line['client.ip'] == '127.0.0.1'


TOKEN = 'Zq9SecretTokenAbc123'


AUTHORIZATION_SHAPES = [f'Bearer {TOKEN}, Bearer x', f'Bearer x, Bearer {TOKEN}', f'Bearer {TOKEN} extra',
                        f'Bearer:{TOKEN}', f'Basic {TOKEN}', TOKEN, f'bearer\t{TOKEN}', f'Bearer,{TOKEN}',
                        f'Bearer {TOKEN};x', f'Bearer "{TOKEN}"']


def test_an_id_holding_any_word_of_the_requests_authorization_is_replaced(echo_port):
    """Only `Bearer <token>` alone was read: a token before another word, or in two joined headers, was kept as the
    id (trial AA); the scheme's name is no token, and an id without the token is kept."""
    with running_nginx([echo_port]) as proxy:
        replaced = [http_request(proxy.port, 'GET', '/probe/echo', headers={
            'Authorization': shape, 'X-Request-ID': f'id.{TOKEN}'}) for shape in AUTHORIZATION_SHAPES]
        kept = [http_request(proxy.port, 'GET', '/probe/echo', headers={'Authorization': shape, 'X-Request-ID': sent})
                for shape, sent in [(f'Bearer {TOKEN}', 'Bearer-1'), (f'Bearer {TOKEN}, Bearer xyzw', 'plain-2'),
                                    ('', 'plain-3'), (f'Bearer {TOKEN}, Bearer=x', 'Bearer-5')]]
    assert [TOKEN in answer.headers['X-Request-ID'] + answer.json()['x-request-id'] for answer in replaced] == [
        False] * len(AUTHORIZATION_SHAPES)
    assert [answer.headers['X-Request-ID'] for answer in kept] == ['Bearer-1', 'plain-2', 'plain-3', 'Bearer-5']


def test_a_token_in_any_word_of_authorization_never_reaches_nginxs_access_line(echo_port):
    """Only the token after the first Bearer, up to a space or a comma, was redacted: `Bearer x, Bearer T`, `Basic
    T`, `Bearer T;x`, `Bearer "T"` left T in the target and the User-Agent (trial AC). A %0A in the path puts a
    newline in nginx's decoded path, which the test reads across."""
    with running_nginx([echo_port]) as proxy:
        answers = [http_request(proxy.port, 'GET', f'/{TOKEN}/x%0A{TOKEN}?t={TOKEN}', headers={
            'Authorization': shape, 'User-Agent': f'agent {TOKEN}'}) for shape in AUTHORIZATION_SHAPES]
        request_ids = [answer.headers['X-Request-ID'] for answer in answers]
        lines = wait_for(lambda: len(logged := [line for line in proxy.access_log()
                                                if line['http.request.id'] in request_ids]) == len(answers) and logged,
                         5, 'nginx did not log the requests')
    assert not [line for line in lines if TOKEN in json.dumps(line)], lines
    assert {(line['url.path'], line['url.query'], line['user_agent.original']) for line in lines} == {
        ('[REDACTED]', '[REDACTED]', '[REDACTED]')}


def test_the_requests_own_bearer_token_never_reaches_nginxs_access_line(echo_port):
    headers = {'Authorization': f'Bearer {TOKEN}', 'User-Agent': f'agent-{TOKEN}', 'X-Request-ID': f'id.{TOKEN}'}
    with running_nginx([echo_port]) as proxy:
        answer = http_request(proxy.port, 'GET', f'/probe/echo?token={TOKEN}', headers=headers)
        in_path = http_request(proxy.port, 'GET', f'/{TOKEN}/echo', headers={'Authorization': f'bearer  {TOKEN}'})
        plain = http_request(proxy.port, 'GET', '/probe/echo?a=1', headers={**headers, 'X-Request-ID': 'plain-1',
                                                                              'User-Agent': 'agent/1'})
        # The log keeps 512 bytes of a target: this token straddles the cut.
        straddling = http_request(proxy.port, 'GET', '/' + 'a' * 505 + TOKEN, headers={
            'Authorization': f'Bearer {TOKEN}', 'User-Agent': 'b' * 505 + TOKEN})
        # Percent-encoded in the path (trial I): nginx decodes it before it looks.
        encoded = http_request(proxy.port, 'GET', '/' + ''.join(f'%{ord(char):02X}' for char in TOKEN[:3]) + TOKEN[3:],
                               headers={'Authorization': f'Bearer {TOKEN}'})
        request_ids = [response.headers['X-Request-ID'] for response in (answer, in_path, plain, straddling, encoded)]
        lines = wait_for(lambda: [line for line in proxy.access_log() if line['http.request.id'] in request_ids], 5,
                         'nginx did not log the requests')
    assert TOKEN not in answer.json()['x-request-id'] and TOKEN not in ' '.join(request_ids)
    assert not [line for line in lines if TOKEN in json.dumps(line)], lines
    first, second, third, fourth, fifth = sorted(lines, key=lambda line: request_ids.index(line['http.request.id']))
    assert (first['url.path'], first['url.query'], first['user_agent.original']) == (
        '/probe/echo', '[REDACTED]', '[REDACTED]')
    assert (second['url.path'], second['message']) == ('[REDACTED]', 'GET [REDACTED] 200')
    assert (third['url.original'], third['user_agent.original'], third['http.request.id']) == (
        '/probe/echo?a=1', 'agent/1', 'plain-1')
    assert (fourth['url.original'], fourth['user_agent.original']) == ('[REDACTED]', '[REDACTED]')
    assert not [line for line in lines if TOKEN[:-1] in json.dumps(line)], 'no part of a cut token'
    assert (fifth['url.path'], fifth['url.original']) == ('[REDACTED]', '[REDACTED]')
    assert TOKEN[3:] not in json.dumps(fifth)


def test_an_answer_cut_short_is_logged_as_a_failure(echo_port):
    with running_nginx([echo_port]) as proxy:
        with pytest.raises(http.client.IncompleteRead):
            http_request(proxy.port, 'POST', '/probe/export', b'{}', {'X-Request-ID': 'cut-1'})
        line = wait_for(lambda: [line for line in proxy.access_log() if line['http.request.id'] == 'cut-1'], 5,
                        'nginx did not log the request')[0]
    assert (line['http.response.status_code'], line['http.response.body.bytes']) == (200, 10)
    assert line['event.outcome'] == 'failure'


def test_an_answer_its_client_stopped_reading_is_logged_as_a_failure(echo_port):
    with running_nginx([echo_port]) as proxy:
        with socket.create_connection(('127.0.0.1', proxy.port)) as client:
            client.sendall(b'POST /probe/stream HTTP/1.1\r\nHost: dbapi\r\nX-Request-ID: stopped-1\r\n'
                           b'Content-Length: 0\r\n\r\n')
            assert client.recv(100).startswith(b'HTTP/1.1 200 ')
        # Closed with the rest unread: nginx's next writes fail.
        line = wait_for(lambda: [line for line in proxy.access_log() if line['http.request.id'] == 'stopped-1'], 10,
                        'nginx did not log the request')[0]
        whole = http_request(proxy.port, 'POST', '/probe/stream', b'', {'X-Request-ID': 'whole-1'})
        whole_line = wait_for(lambda: [line for line in proxy.access_log() if line['http.request.id'] == 'whole-1'],
                              10, 'nginx did not log the request')[0]
    assert line['http.response.status_code'] == 200 and line['http.response.body.bytes'] < 128 * 65536
    assert line['event.outcome'] == 'failure'
    assert len(whole.body) == 128 * 65536 and whole_line['event.outcome'] == 'success'


def stream_bytes_on_disk(proxy, request_id):
    """Start /probe/stream (8 MiB) through proxy, read its status line only, and return the bytes nginx keeps on
    disk once its upstream has sent all it can."""
    with socket.create_connection(('127.0.0.1', proxy.port)) as client:
        client.sendall(b'POST /probe/stream HTTP/1.1\r\nHost: dbapi\r\nX-Request-ID: %s\r\n'
                       b'Content-Length: 0\r\n\r\n' % request_id.encode())
        assert client.recv(100).startswith(b'HTTP/1.1 200 ')
        time.sleep(1.5)  # the upstream writes its 8 MiB at once, as far as nginx takes them
        return proxy.answer_bytes_on_disk()


@pytest.mark.parametrize(('limit', 'most'), [('1m', 1 << 20), ('0', 0)])
def test_nginx_keeps_at_most_its_temp_file_limit_of_an_answer_on_disk(echo_port, limit, most):
    with running_nginx([echo_port]) as proxy:
        unbounded = stream_bytes_on_disk(proxy, 'disk-default')
    with running_nginx([echo_port], NGINX_MAX_TEMP_FILE_SIZE=limit) as proxy:
        bounded = stream_bytes_on_disk(proxy, 'disk-bounded')
    assert unbounded > 4 << 20  # nginx's own default, 1024m, took most of the 8 MiB
    assert bounded <= most


def rendered_main(**environment):
    """Return nginx.conf.template as the image renders it (dbapi.envsh's defaults for the image's places)."""
    values = nginx.derived_environment({'PATH': os.environ['PATH'], **NATIVE, **environment})
    names = ' '.join(f'${{{name}}}' for name in values)
    return subprocess.run([program('envsubst'), names], input=nginx.MAIN_TEMPLATE.read_text(), env=values,
                          capture_output=True, text=True, check=True).stdout


def directive(text, name):
    """Return the values of every `name value;` directive in an nginx config."""
    return re.findall(rf'^\s*{name} ([^;]*);', text, re.MULTILINE)


def test_the_image_takes_its_worker_count_from_the_environment():
    assert directive(rendered_main(NGINX_WORKER_PROCESSES='2'), 'worker_processes') == ['2']
    assert directive(rendered_main(), 'worker_processes') == ['auto']


@pytest.mark.parametrize('workers', ['0', '-1', 'two', '1.5', '02', '1025', '99999999999'])
def test_a_bad_worker_count_stops_nginx_from_starting(workers):
    with pytest.raises(TemplateError, match='NGINX_WORKER_PROCESSES'):
        nginx.render({'PATH': os.environ['PATH'], **NATIVE, 'NGINX_WORKER_PROCESSES': workers})


def test_the_image_takes_its_temp_file_limit_from_the_environment():
    assert directive(rendered_main(NGINX_MAX_TEMP_FILE_SIZE='128m'), 'proxy_max_temp_file_size') == ['128m']
    assert directive(rendered_main(), 'proxy_max_temp_file_size') == ['1024m']


@pytest.mark.parametrize('size', ['m', '12mm', '1.5m', '-1', '12t', '1 m', '128m;', '1g',  # nginx takes no g here
                                  '99999999999', '9999999999999m'])  # nor a size past its integers
def test_a_bad_temp_file_limit_stops_nginx_from_starting(size):
    with pytest.raises(TemplateError, match='NGINX_MAX_TEMP_FILE_SIZE'):
        nginx.render({'PATH': os.environ['PATH'], **NATIVE, 'NGINX_MAX_TEMP_FILE_SIZE': size})


@pytest.mark.parametrize('proxies', ['10.0.0.0/8;', 'ingress.local', '$(reboot)'])
def test_real_ip_takes_addresses_only(proxies):
    with pytest.raises(TemplateError, match='NGINX_REAL_IP_FROM'):
        nginx.render({'PATH': os.environ['PATH'], **NATIVE, 'NGINX_REAL_IP_FROM': proxies})


def test_the_image_writes_only_where_kubernetes_mounts_volumes():
    """Read-only root: the pid and temporary files go to /tmp, the rendered templates to /etc/nginx/conf.d (both
    emptyDirs in k8s/nginx.yaml), and the image runs nginx on the rendered main config."""
    text = rendered_main()
    assert directive(text, 'pid') == ['/tmp/nginx.pid']
    assert all(path.startswith('/tmp/') for name in ('client_body', 'proxy', 'fastcgi', 'uwsgi', 'scgi')
               for path in directive(text, f'{name}_temp_path'))
    assert directive(text, 'include') == ['/etc/nginx/conf.d/dbapi.conf']
    dockerfile = (nginx.BASE_DIR / 'nginx' / 'Dockerfile').read_text()
    assert 'CMD ["nginx", "-c", "/etc/nginx/conf.d/nginx.conf", "-g", "daemon off;"]' in dockerfile
    assert 'COPY nginx.conf.template dbapi.conf.template /etc/nginx/templates/' in dockerfile


@pytest.mark.parametrize('workers', [{}, {'NGINX_WORKER_PROCESSES': ''}], ids=['unset', 'empty'])
def test_the_native_stack_renders_the_same_main_config_in_its_own_directory(tmp_path, workers):
    """An empty NGINX_WORKER_PROCESSES, as the stack's other settings, is unset: it was the image's auto (trial N)."""
    main_config = nginx.write_config(tmp_path, {'PATH': os.environ['PATH'], **NATIVE, **workers})
    text = main_config.read_text()
    assert directive(text, 'worker_processes') == ['1']
    assert directive(text, 'pid') == [f'{tmp_path}/nginx.pid']
    assert directive(text, 'include') == [f'{tmp_path}/dbapi.conf']
    image = rendered_main(NGINX_RUN_DIR=str(tmp_path), NGINX_CONF_DIR=str(tmp_path), NGINX_WORKER_PROCESSES='1',
                          NGINX_USER_DIRECTIVE=nginx.worker_user())
    assert image == text


def line_of(proxy, request_id):
    """Return nginx's access line of request_id, once written."""
    return wait_for(lambda: [line for line in proxy.access_log() if line['http.request.id'] == request_id], 10,
                    'nginx did not log the request')[0]


def exchange(port, *parts, pause=0.3):
    """Send parts (bytes) to port with a pause between them, read the answer until nginx closes, and return it."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as client:
        for number, part in enumerate(parts):
            if number:
                time.sleep(pause)
            client.sendall(part)
        answer = b''
        while chunk := client.recv(65536):
            answer += chunk
    return answer


def test_an_answer_after_100_continue_is_logged_as_sent_whole(echo_port):
    """nginx counts its "100 Continue" in $body_bytes_sent: the line still has the body's bytes and a success."""
    with running_nginx([echo_port]) as proxy:
        answer = exchange(proxy.port, b'POST /probe/whole HTTP/1.1\r\nHost: dbapi\r\nX-Request-ID: continue-1\r\n'
                          b'Expect: 100-continue\r\nContent-Length: 2\r\nConnection: close\r\n\r\n', b'{}')
        line = line_of(proxy, 'continue-1')
    assert answer.startswith(b'HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 ') and answer.endswith(b'{"ok": true}')
    assert (line['http.response.body.bytes'], line['event.outcome']) == (12, 'success')


def test_a_client_that_leaves_while_it_sends_its_body_is_logged_as_a_failure(echo_port):
    with running_nginx([echo_port]) as proxy:
        with socket.create_connection(('127.0.0.1', proxy.port), timeout=10) as client:
            client.sendall(b'POST /probe/whole HTTP/1.1\r\nHost: dbapi\r\nX-Request-ID: left-1\r\n'
                           b'Content-Length: 1000\r\n\r\n{"a": ')
            time.sleep(0.3)
        line = line_of(proxy, 'left-1')
    assert (line['http.response.status_code'], line['http.response.body.bytes']) == (400, 0)
    assert line['event.outcome'] == 'failure'  # nothing was answered: the client went away, as the app logs it


@pytest.mark.parametrize('request_head, status', [
    (b'TRACE /probe/whole HTTP/1.1\r\nHost: dbapi\r\n', 405),
    (b'POST /probe/whole HTTP/1.1\r\nHost: dbapi\r\nTransfer-Encoding: gzip\r\n', 400),
    (b'POST /probe/whole HTTP/2.0\r\nHost: dbapi\r\n', 400),
    (b'POST /probe/whole HTTP/1.2\r\nHost: dbapi\r\n', 400),  # a replica would answer in HTTP/1.2
])
def test_requests_nginx_refuses_itself_get_problem_details_and_no_5xx(echo_port, request_head, status):
    with running_nginx([echo_port]) as proxy:
        answer = exchange(proxy.port, request_head + b'Connection: close\r\n\r\n')
        head, _, body = answer.partition(b'\r\n\r\n')
        problem = json.loads(body)
        line = line_of(proxy, problem['request_id'])
    assert head.startswith(b'HTTP/1.1 %d ' % status) and b'Content-Type: application/problem+json' in head
    assert (problem['status'], line['http.response.status_code'], line['event.outcome']) == (status, status, 'success')
    if status == 405:
        assert b'\r\nAllow: POST' in head and problem['detail'] == 'Use POST.'


@pytest.mark.parametrize('request_line, allow', [(b'TRACE /healthz HTTP/1.1', b'GET, HEAD'),
                                                 (b'TRACE /readyz/?x=1 HTTP/1.1', b'GET, HEAD'),
                                                 (b'CONNECT /healthz HTTP/1.1', b'GET, HEAD'),
                                                 (b'CONNECT /probe/whole HTTP/1.1', b'POST'),
                                                 (b'TRACE /metrics HTTP/1.1', b'POST')])
def test_nginxs_own_405_names_the_methods_the_path_takes(echo_port, request_line, allow):
    """The health endpoints, passed on for a probe from this host, take GET and HEAD, as the app's 405 says."""
    with running_nginx([echo_port]) as proxy:
        answer = exchange(proxy.port, request_line + b'\r\nHost: dbapi\r\nConnection: close\r\n\r\n')
    head, _, body = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 405 ') and b'\r\nAllow: %s\r\n' % allow in head
    assert json.loads(body)['detail'] == f'Use {allow.decode()}.'


@pytest.mark.parametrize('request_head', [b'CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n',
                                          b'POST /probe/echo HTTP/1.1\r\n'], ids=['CONNECT host:port', 'no Host'])
def test_a_connect_to_a_host_and_port_or_a_request_without_host_is_nginxs_400_problem(echo_port, request_head):
    """The contract's 405 for CONNECT is for a path; `CONNECT host:port`, a target nginx does not read, is its 400
    (trial BQ), as is an HTTP/1.1 request without a Host header (RFC 9112 section 3.2)."""
    with running_nginx([echo_port]) as proxy:
        answer = exchange(proxy.port, request_head + b'Connection: close\r\n\r\n')
    head, _, body = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 400 ') and b'Content-Type: application/problem+json' in head, head
    assert json.loads(body)['status'] == 400


def test_nginx_knows_no_token_but_the_requests_own(echo_port):
    """A token sent as the X-Request-ID of a request that does not carry it in Authorization is, to nginx, an id
    like any other: its own answers echo it (docs/contract.md section 2 says so; send tokens in Authorization
    only)."""
    with running_nginx([echo_port]) as proxy:
        answer = exchange(proxy.port, f'TRACE /probe/whole HTTP/1.1\r\nHost: dbapi\r\nX-Request-ID: {ADMIN_TOKEN}\r\n'
                          'Connection: close\r\n\r\n'.encode())
    assert json.loads(answer.partition(b'\r\n\r\n')[2])['request_id'] == ADMIN_TOKEN


def test_an_http_0_9_request_is_refused_not_passed_on(echo_port):
    with running_nginx([echo_port]) as proxy:
        problem = json.loads(exchange(proxy.port, b'GET /probe/echo\r\n'))  # no status line: 0.9 has none
        line = line_of(proxy, problem['request_id'])
    assert problem['status'] == 400 and line['http.response.status_code'] == 400
    assert 'nginx.upstream.address' not in line


def test_nginxs_own_answer_after_100_continue_is_logged_with_its_body_bytes(echo_port):
    with running_nginx([echo_port]) as proxy:
        answer = exchange(proxy.port, b'POST /probe/whole HTTP/1.1\r\nHost: dbapi\r\nExpect: 100-continue\r\n'
                          b'Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n', b'zz\r\nabc\r\n0\r\n\r\n')
        body = answer.partition(b'\r\n\r\nHTTP/1.1 400 ')[2].partition(b'\r\n\r\n')[2]
        line = line_of(proxy, json.loads(body)['request_id'])
    assert answer.startswith(b'HTTP/1.1 100 Continue\r\n\r\n')
    assert (line['http.response.status_code'], line['http.response.body.bytes']) == (400, len(body))
    # a malformed chunked body through nginx is nginx's own 400, whose detail lists what a request takes
    assert 'one Content-Length or Transfer-Encoding: chunked' in json.loads(body)['detail']


@pytest.mark.parametrize('extension', [b';\x01=', b';a b', b';=x', b';a="unterminated', b'\t'])
def test_nginx_skips_a_chunk_extension_unread_and_passes_the_body_on(echo_port, extension):
    """RFC 9112 section 7.1.1 lets a recipient ignore chunk extensions: nginx does, malformed ones too, and sends the
    body it read on with a Content-Length, so the replica, which would refuse the extension, never sees it."""
    with running_nginx([echo_port]) as proxy:
        answer = exchange(proxy.port, b'POST /probe/whole HTTP/1.1\r\nHost: dbapi\r\nTransfer-Encoding: chunked\r\n'
                          b'Connection: close\r\n\r\n2' + extension + b'\r\n{}\r\n0\r\n\r\n')
    assert answer.startswith(b'HTTP/1.1 200 ') and answer.endswith(b'{"ok": true}')


def test_a_client_that_leaves_mid_body_after_100_continue_is_logged_as_a_failure(echo_port):
    with running_nginx([echo_port]) as proxy:
        with socket.create_connection(('127.0.0.1', proxy.port), timeout=10) as client:
            client.sendall(b'POST /probe/whole HTTP/1.1\r\nHost: dbapi\r\nX-Request-ID: left-2\r\n'
                           b'Expect: 100-continue\r\nContent-Length: 100\r\n\r\n')
            assert client.recv(100) == b'HTTP/1.1 100 Continue\r\n\r\n'
            client.sendall(b'{"a": ')
            time.sleep(0.3)
        line = line_of(proxy, 'left-2')
    assert (line['http.response.status_code'], line['event.outcome']) == (400, 'failure')


def test_a_method_too_long_to_log_leaves_the_line_under_4_kib(echo_port):
    with running_nginx([echo_port]) as proxy:
        exchange(proxy.port, b'A' * 7900 + b' /probe/whole HTTP/1.1\r\nHost: dbapi\r\nX-Request-ID: long-1\r\n'
                 b'Content-Length: 2\r\nConnection: close\r\n\r\n{}')
        line = line_of(proxy, 'long-1')
    assert len(json.dumps(line)) < 4096 and 'http.request.method' not in line
