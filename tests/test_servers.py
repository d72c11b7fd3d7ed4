"""Real servers over HTTP: gunicorn with several workers, and `make run`'s serve command stopped by Ctrl-C."""
import contextlib
import http.client as http_client
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest

import settings
from ops.ports import free_ports
from tests.conftest import ADMIN_TOKEN, BEARER_TOKENS, scratch_folder

pytestmark = pytest.mark.slow


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)[0]


def http(method, url, body=None, headers=None, timeout=10):
    """Send one request; return (status, headers, parsed JSON body or None)."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method, headers={
        'Content-Type': 'application/json', **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.headers, json.loads(response.read() or b'null')
    except urllib.error.HTTPError as error:
        return error.code, error.headers, json.loads(error.read() or b'null')


def wait_until_healthy(base, process, seconds=30):
    """Poll /healthz until it answers 200; fail if the process dies or time runs out."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert process.poll() is None, 'the server exited while starting'
        try:
            if http('GET', f'{base}/healthz', timeout=1)[0] == 200:
                return
        except OSError:
            time.sleep(0.2)
    pytest.fail('the server did not become healthy in time')


def server_environment(**extra):
    """Return the environment of a server process started by a test."""
    return {**os.environ, 'ENVIRONMENT': 'test', 'BEARER_TOKENS': json.dumps(BEARER_TOKENS),
            'MODULE_PACKAGES': 'modules,tests.fixture_modules', 'LOG_LEVEL': 'WARNING', **extra}


@contextlib.contextmanager
def running_gunicorn(database_url, **extra):
    """Run a real gunicorn with gunicorn.conf.py and three workers on a free loopback port; yield its base URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, '-m', 'gunicorn', '-c', 'gunicorn.conf.py', 'app:create_app()'], cwd=settings.BASE_DIR,
        env=server_environment(PORT=str(port), WEB_CONCURRENCY='3', DATABASE_URL=database_url, **extra),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f'http://127.0.0.1:{port}'
    try:
        wait_until_healthy(base, process)
        yield base
    finally:
        process.terminate()
        process.wait(timeout=30)


@pytest.fixture()
def gunicorn(database_url):
    """A real gunicorn with three workers on a free loopback port; yields its base URL."""
    with running_gunicorn(database_url) as base:
        yield base


def test_gunicorn_serves_the_contract_over_http(gunicorn):
    auth = {'Authorization': f'Bearer {ADMIN_TOKEN}', 'X-Request-ID': 'over-http-1'}
    status, headers, body = http('POST', f'{gunicorn}/users/create',
                                 {'email': f'http-{time.time_ns()}@example.com', 'name': 'H'}, auth)
    assert status == 201 and headers['X-Request-ID'] == 'over-http-1'
    assert http('POST', f'{gunicorn}/users/get', {'id': body['id']}, auth)[2] == body
    status, headers, problem = http('POST', f'{gunicorn}/users/get', {'id': 'x'}, auth)
    assert status == 422 and headers['Content-Type'] == 'application/problem+json'
    assert problem['request_id'] == 'over-http-1'
    assert http('POST', f'{gunicorn}/users/get', {'id': 1})[0] == 401
    assert http('GET', f'{gunicorn}/readyz')[0] == 200


def test_gunicorn_spreads_concurrent_requests_over_its_workers(gunicorn):
    auth = {'Authorization': f'Bearer {ADMIN_TOKEN}'}

    def slow_pid(_):
        http('POST', f'{gunicorn}/probe/hold', {'seconds': 0.2}, auth)
        return http('POST', f'{gunicorn}/probe/pid', {}, auth)[2]['pid']
    with ThreadPoolExecutor(6) as pool:
        pids = set(pool.map(slow_pid, range(30)))
    assert len(pids) >= 2


def test_gunicorn_believes_no_forwarded_header_only_the_app_does(database_url):
    forwarded = {'Authorization': f'Bearer {ADMIN_TOKEN}', 'X-Forwarded-For': '203.0.113.5',
                 'X-Forwarded-Proto': 'https', 'SCRIPT_NAME': '/elsewhere'}
    packages = 'tests.topology.fixture_modules'
    for hops, expected in (('0', ('127.0.0.1', 'http')), ('1', ('203.0.113.5', 'https'))):
        with running_gunicorn(database_url, MODULE_PACKAGES=packages, TRUSTED_PROXY_HOPS=hops) as base:
            status, _, seen = http('POST', f'{base}/topology/whoami', {}, forwarded)
        assert status == 200, seen
        assert (seen['remote_addr'], seen['scheme']) == expected, f'TRUSTED_PROXY_HOPS={hops}'


def test_serve_starts_everything_and_ctrl_c_stops_it_all():
    port = free_port()
    data_dir = Path(tempfile.mkdtemp(prefix='serve-', dir=scratch_folder())) / 'pg'
    process = subprocess.Popen(
        [sys.executable, 'manage.py', 'serve'], cwd=settings.BASE_DIR, start_new_session=True,
        env=server_environment(ENVIRONMENT='local', PORT=str(port), WEB_CONCURRENCY='2', EMBEDDED_DB_DIR=str(data_dir),
                               BEARER='serve-test-token', DATABASE_URL='', DEFAULT_DB_NAME=''),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f'http://127.0.0.1:{port}'
    try:
        wait_until_healthy(base, process, seconds=90)
        status, _, body = http('POST', f'{base}/example/foo', {'name': 'Ada'},
                               {'Authorization': 'Bearer serve-test-token'})
        assert status == 200 and body['name'] == 'Ada'
        assert http('POST', f'{base}/users/list', {}, {'Authorization': 'Bearer serve-test-token'})[0] == 200
        postgres = [p for p in psutil.process_iter(['cmdline']) if str(data_dir) in ' '.join(p.info['cmdline'] or [])]
        assert postgres, 'the embedded PostgreSQL should run under EMBEDDED_DB_DIR'
        os.killpg(process.pid, signal.SIGINT)
        output = process.communicate(timeout=60)[0]
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 0
    assert 'curl' in output and f'127.0.0.1:{port}' in output
    psutil.wait_procs(postgres, timeout=15)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in postgres)
    with pytest.raises(OSError):
        http('GET', f'{base}/healthz', timeout=2)
    assert (data_dir / 'PG_VERSION').exists(), 'the data stays for the next `make run`'
    shutil.rmtree(data_dir.parent, ignore_errors=True)


def post_chunked(base, path, chunks):
    """POST chunks with Transfer-Encoding: chunked and the admin token; return (status, parsed body)."""
    host, port = base.removeprefix('http://').split(':')
    connection = http_client.HTTPConnection(host, int(port), timeout=30)
    try:
        connection.request('POST', path, body=iter(chunks), encode_chunked=True,
                           headers={'Authorization': f'Bearer {ADMIN_TOKEN}', 'Content-Type': 'application/json',
                                    'Transfer-Encoding': 'chunked'})
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


def test_gunicorn_reads_chunked_bodies_to_their_end_and_bounds_them(gunicorn):
    assert post_chunked(gunicorn, '/probe/echo', [b'{"a":', b' [1, 2]', b'}']) == (200, {'a': [1, 2]})
    status, problem = post_chunked(gunicorn, '/probe/echo', [b'{"pad": "', b'x' * settings.MAX_CONTENT_LENGTH, b'"}'])
    assert status == 413 and problem['status'] == 413


def test_a_client_that_sends_less_than_it_declared_gets_a_400(gunicorn):
    host, port = gunicorn.removeprefix('http://').split(':')
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        sock.sendall(f'POST /probe/echo HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n'
                     'Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"a": 1}'.encode())
        sock.shutdown(socket.SHUT_WR)
        reply = b''
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b'HTTP/1.1 400 '), reply[:200]
