"""Helpers of the topology tests: real nginx, gunicorn replicas and pgbouncer on 127.0.0.1, no mocks.

`python -m ops.stack` (what `make stack` runs) is started as a program, with its own database, and
stopped with SIGINT as Ctrl-C would. Fake upstreams (raw sockets) stand in for replicas only where a
test must make a replica misbehave at an exact moment.
"""
import http.client
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
from psycopg2.extensions import make_dsn, parse_dsn

import settings
from ops import nginx
from ops.ports import free_ports as ops_free_ports
from ops.stack import child_pids
from tests.helpers import (BEARER_TOKENS, MODULE_PACKAGES as TEST_MODULE_PACKAGES, free_ports, port_open, post,
                           require_programs, shared_run_dir, wait_for)

# Trust authentication ignores it; the native pgbouncer adopts it, so the tests can log in there too.
TOPOLOGY_DB_PASSWORD = 'topology-password'
MODULE_PACKAGES = ','.join([*TEST_MODULE_PACKAGES, 'tests.topology.fixture_modules'])
READY_LINE = b'dbapi stack serves on'
START_TIMEOUT_SECONDS = 90
# The stack stops its children one by one, each within ops.stack.STOP_TIMEOUT_SECONDS (gunicorn's graceful timeout and
# a little more); on a loaded machine a replica's workers can take most of that, so wait for all of them.
STOP_TIMEOUT_SECONDS = 240


def free_ports_below_the_ephemeral_range(count):
    """Return the first of count consecutive free loopback ports below the kernel's ephemeral range (ops/ports.py):
    a replica restarted under load must find its port free."""
    return ops_free_ports(count)[0]


def read_json_lines(path, start=0):
    """Return every JSON object line of a log file from byte start (other lines, such as gunicorn's, are skipped)."""
    lines = []
    for line in Path(path).read_bytes()[start:].splitlines():
        if line.startswith(b'{'):
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass
    return lines


def access_log(path):
    """Return nginx's access log lines from a log file."""
    return [line for line in read_json_lines(path) if line.get('event.dataset') == 'nginx.access']


def worker_group(port):
    """Return the process group of the replica on port: the one its gunicorn master leads."""
    return os.getpgid(post(port, '/probe/pid').json()['pid'])


@dataclass
class RunningStack:
    """A `python -m ops.stack` process and where it serves."""

    process: subprocess.Popen
    log_path: Path
    port: int
    replica_ports: list
    pgbouncer_port: int

    def post(self, path, body=None, **kwargs):
        """POST through nginx."""
        return post(self.port, path, body, **kwargs)

    def access_log(self):
        """Return nginx's access log lines so far."""
        return access_log(self.log_path)

    def log_text(self):
        """Return everything the stack wrote."""
        return self.log_path.read_text(errors='replace')

    def stop(self):
        """Stop the stack as Ctrl-C does; return its exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
        try:
            return self.process.wait(STOP_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()


def stack_environment(database_url, base_port, replicas, pgbouncer, overrides):
    """Return the environment of a test stack: its ports, its database, the test tokens and modules."""
    env = dict(os.environ)
    env.update({f'DEFAULT_DB_{part}': '' for part in [*settings.DB_PARTS.values(), 'PASS_FILE']})
    env.update(ENVIRONMENT='test', DATABASE_URL=database_url, PORT=str(base_port), REPLICAS=str(replicas),
               REPLICA_BASE_PORT=str(base_port + 1), STACK_PGBOUNCER='1' if pgbouncer else '0',
               PGBOUNCER_PORT=str(base_port + replicas + 1), WEB_CONCURRENCY='2', BEARER='',
               BEARER_TOKENS=json.dumps(BEARER_TOKENS), BEARER_TOKENS_FILE='', MODULE_PACKAGES=MODULE_PACKAGES,
               LOG_LEVEL='WARNING')
    env.update(overrides)
    return env


def start_stack(log_dir, database_url, replicas=3, pgbouncer=False, base_port=None, log_mode='ab', **overrides):
    """Start `python -m ops.stack` (on consecutive ports from base_port, default free ones), its output in a file
    opened with log_mode, and wait for its ready line; return the RunningStack."""
    require_programs('nginx', *(['pgbouncer'] if pgbouncer else []))
    base_port = base_port or free_ports(replicas + 2)
    log_path = Path(log_dir) / 'stack.log'
    with open(log_path, log_mode) as log:
        process = subprocess.Popen([sys.executable, '-m', 'ops.stack'], cwd=settings.BASE_DIR, stdout=log,
                                   stderr=subprocess.STDOUT,
                                   env=stack_environment(database_url, base_port, replicas, pgbouncer, overrides))
    stack = RunningStack(process, log_path, base_port, [base_port + 1 + index for index in range(replicas)],
                         base_port + replicas + 1)
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while READY_LINE not in log_path.read_bytes():
        if process.poll() is not None or time.monotonic() > deadline:
            stack.stop()
            pytest.fail(f'the stack did not start:\n{stack.log_text()[-5000:]}')
        time.sleep(0.2)
    return stack


@contextmanager
def running_stack(tmp_path_factory, database_url, **options):
    """Run a stack for the block; afterwards check that Ctrl-C stopped all of it cleanly."""
    stack = start_stack(tmp_path_factory.mktemp('stack'), database_url, **options)
    try:
        yield stack
    finally:
        code = stack.stop()
    assert code == 0, stack.log_text()[-5000:]
    for port in [stack.port, *stack.replica_ports]:
        assert not port_open(port), f'port {port} still answers after the stack stopped'


class FakeUpstream:
    """A raw HTTP upstream that records every request it receives, then answers, drops or hangs."""

    def __init__(self, behaviour):
        self.behaviour = behaviour
        self.received = []
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.port = self.listener.getsockname()[1]
        self.closing = threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        """Accept connections until closed, one thread each."""
        while not self.closing.is_set():
            try:
                connection, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self.handle, args=(connection,), daemon=True).start()

    def handle(self, connection):
        """Read one whole request, record it, then behave."""
        with connection:
            request_line = read_request(connection)
            if request_line is None:
                return
            self.received.append(request_line)
            if self.behaviour == 'answer':
                connection.sendall(b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n'
                                   b'Content-Length: 15\r\nConnection: close\r\n\r\n{"fake": "ok"}\n')
            elif self.behaviour == 'drop':
                # Reset the connection, as a process killed mid-request leaves it.
                connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b'\x01\x00\x00\x00\x00\x00\x00\x00')
            else:
                self.closing.wait(30)

    def close(self):
        """Stop listening and release hanging handlers."""
        self.closing.set()
        self.listener.close()


def read_request(connection):
    """Read an HTTP request's head and body from connection; return its request line, or None."""
    data = b''
    while b'\r\n\r\n' not in data:
        chunk = connection.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b'\r\n\r\n')
    length = next((int(line.split(b':', 1)[1]) for line in head.split(b'\r\n')
                   if line.lower().startswith(b'content-length:')), 0)
    while len(body) < length:
        body += connection.recv(65536)
    return head.split(b'\r\n', 1)[0].decode()


@dataclass
class RunningNginx:
    """nginx alone, rendered from the template, in front of fake upstreams."""

    port: int
    log_path: Path
    pid: int
    run_dir: Path

    def access_log(self):
        """Return the access log lines so far."""
        return access_log(self.log_path)

    def answer_bytes_on_disk(self):
        """Return the bytes of the answers nginx's workers keep in their temporary files now (proxy_temp_path, whose
        files nginx unlinks once open: their sizes are read through /proc)."""
        folder = str(self.run_dir / 'proxy')
        open_files = (Path(f'/proc/{worker}/fd').iterdir() for worker in child_pids(self.pid))
        return sum(fd.stat().st_size for files in open_files for fd in files if os.readlink(fd).startswith(folder))


@contextmanager
def running_nginx(upstream_ports, **settings_env):
    """Run nginx from the template in front of upstream_ports for the block."""
    require_programs('nginx')
    port = free_ports(1)
    environment = dict(os.environ, DBAPI_UPSTREAMS=' '.join(f'127.0.0.1:{p}' for p in upstream_ports),
                       NGINX_LISTEN=f'127.0.0.1:{port}', **settings_env)
    with shared_run_dir('dbapi-nginx-test-') as run_dir:
        main_config = nginx.write_config(run_dir / 'nginx', environment)
        log_path = run_dir / 'nginx.log'
        with open(log_path, 'ab') as log:
            process = subprocess.Popen(nginx.command(main_config), stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: port_open(port), 10, 'nginx did not start')
            yield RunningNginx(port, log_path, process.pid, main_config.parent)
        finally:
            process.send_signal(signal.SIGQUIT)
            process.wait(10)


@dataclass
class Attempt:
    """One POST of a write load: its unique code (its request id too), when it ran (time.monotonic()) and how it
    ended: the HTTP status, or the name of the error that cut it short (a replica gone mid-answer)."""

    code: str
    started: float
    ended: float
    status: int | str


class WriteLoad:
    """Threads that create things with unique codes through the stack's nginx until stopped, keeping every attempt."""

    def __init__(self, stack, run_id, threads, max_per_thread, keep_alive=False):
        self.stack, self.run_id, self.max_per_thread, self.keep_alive = stack, run_id, max_per_thread, keep_alive
        self.attempts = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self.create_things, args=(index,)) for index in range(threads)]

    def create_things(self, thread_index):
        """POST probe/things/create in a loop, recording every attempt: each on a fresh connection, or with
        keep_alive on one the thread keeps (a new one after an error), as HTTP client libraries do."""
        connection = None
        for number in range(self.max_per_thread):
            if self.stopping.is_set():
                break
            if self.keep_alive and connection is None:
                connection = http.client.HTTPConnection('127.0.0.1', self.stack.port, timeout=30)
            code = f'{self.run_id}-{thread_index}-{number}'
            started = time.monotonic()
            try:
                status = self.stack.post('/probe/things/create', {'code': code}, headers={'X-Request-ID': code},
                                         connection=connection).status
            except (http.client.HTTPException, OSError) as exc:
                status = type(exc).__name__
                if connection is not None:
                    connection.close()
                    connection = None
            self.attempts.append(Attempt(code, started, time.monotonic(), status))
        if connection is not None:
            connection.close()

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


class DatabaseRelay:
    """A TCP relay on 127.0.0.1 to a PostgreSQL server (a DSN's host, TCP or a Unix socket's folder, and port) whose
    new connections can be held unanswered (hang), as a database that accepts TCP and never answers."""

    def __init__(self, dsn):
        params = parse_dsn(dsn)
        host, port = params.get('host', '/tmp'), int(params.get('port', 5432))
        self.target = (socket.AF_UNIX, f'{host}/.s.PGSQL.{port}') if host.startswith('/') else (socket.AF_INET,
                                                                                                (host, port))
        self.listener = socket.create_server(('127.0.0.1', 0))
        self.dsn = make_dsn(dsn, host='127.0.0.1', port=self.listener.getsockname()[1])
        self.hanging = threading.Event()
        self.held = []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        """Relay each connection to the server, or hold it while hanging, until closed."""
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if self.hanging.is_set():
                self.held.append(client)
                continue
            server = socket.socket(self.target[0])
            server.connect(self.target[1])
            for source, sink in ((client, server), (server, client)):
                threading.Thread(target=relay, args=(source, sink), daemon=True).start()

    def resume(self):
        """Relay new connections again; the held ones are closed."""
        self.hanging.clear()
        for held in self.held:
            held.close()

    def close(self):
        """Take no more connections."""
        self.listener.close()


def relay(source, sink):
    """Copy source's bytes to sink until either ends, then end both."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        for end in (source, sink):
            with suppress(OSError):
                end.shutdown(socket.SHUT_RDWR)  # wakes the other direction's recv
            end.close()


# nginx's stop: on SIGQUIT it finishes the requests in flight, each waiting on a replica at most its proxy timeout.
# Its grace period outlasts that by the margin the API's get (docs/deployment.md, "Zero-downtime restarts").
NGINX_STOP_MARGIN_SECONDS = 5
DURATION_UNITS = {'ms': 0.001, 's': 1, 'm': 60, 'h': 3600}


def seconds_of(duration):
    """Return a compose duration or an nginx time ('45s', '1m30s', '40000ms') in seconds."""
    parts = re.findall(r'(\d+)(ms|s|m|h)', duration)
    assert parts and ''.join(number + unit for number, unit in parts) == duration, duration
    return sum(int(number) * DURATION_UNITS[unit] for number, unit in parts)


def nginx_longest_wait_seconds(environment):
    """Return nginx's proxy timeout, as nginx/dbapi.envsh derives it from a container's environment, in seconds."""
    unresolved = {'PATH': os.environ['PATH'], **environment, 'NGINX_RESOLVER': ''}  # no name is looked up here
    return seconds_of(nginx.derived_environment(unresolved)['NGINX_PROXY_TIMEOUT'])
