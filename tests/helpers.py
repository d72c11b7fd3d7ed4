"""What the tests share: tokens, test apps and callers, SQL, the routes a test app mounts, waiting, HTTP to
servers on 127.0.0.1, and the servers the tests start (each one stopped again, whichever tests run).

Test files import from here (and take fixtures from conftest.py), never from one another.
"""
import contextlib
import fcntl
import functools
import hashlib
import http.client
import json
import os
import pty
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import termios
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psutil
import psycopg2
import pytest
from psycopg2 import sql
from yoyo import read_migrations

import settings
from app import create_app
from lib.db.embedded import start_embedded
from lib.db.migrate import MIGRATIONS_DIR
from manage import gunicorn_command
from ops import pgbouncer
from ops.ports import free_ports as consecutive_free_ports
from ops.render import program
from ops.stack import Child

ADMIN_TOKEN = 'admin-token-0123456789'
SINGLE_BEARER = 'single-bearer-token-7'
# The admin's Authorization header, for requests a test client sends without a Caller.
AUTH = {'Authorization': f'Bearer {ADMIN_TOKEN}'}
# A client limited to one test module: its calls anywhere else are a 403.
SCOPED_TOKEN = 'probe-only-token-42'
SCOPED_CLIENT = 'probe-reader'
SCOPED_MODULE = 'probe'
BEARER_TOKENS = {
    'admin': {'token': ADMIN_TOKEN},
    SCOPED_CLIENT: {'sha256': hashlib.sha256(SCOPED_TOKEN.encode()).hexdigest(), 'modules': [SCOPED_MODULE]},
}
# The shipped modules and the test-only ones (tests/fixture_modules: probe, sealed).
MODULE_PACKAGES = ['modules', 'tests.fixture_modules']
PROBE_SQL = settings.BASE_DIR / 'tests' / 'fixture_modules' / 'probe' / 'setup.sql'
# Strings JSON must escape or keep as they are: quotes, backslashes, the control characters COPY and
# JSON escape differently, tabs and newlines, non-ASCII, a literal \u0000 and \N, % and the empty string.
TRICKY_TEXTS = ['plain', 'say "hi"', 'back\\slash', 'vertical\x0btab', 'raw\x01\x1f\x7f', 'tab\there',
                'new\nline\r', 'bs\b ff\f', 'é ünï 😀 \u2028', 'literal \\u0000 here', '\\N', '', '%s %(x)s 100%']
# Refuses connections at once: for apps that must never reach a database.
UNREACHABLE_DSN = 'host=127.0.0.1 port=1 dbname=x user=x connect_timeout=2'


def app_config(database_url, **overrides):
    """Return create_app overrides for a test app on database_url."""
    # No bound on the requests in flight unless a test sets one: werkzeug's test client leaves open the body of a
    # response it did not buffer, so such a request never ends, which no server does.
    config = dict(DATABASES={'default': database_url}, BEARER=SINGLE_BEARER, BEARER_TOKENS=json.dumps(BEARER_TOKENS),
                  BEARER_TOKENS_FILE=None, MODULE_PACKAGES=MODULE_PACKAGES, TESTING=True, MAX_REQUESTS_IN_FLIGHT=10**6)
    config.update(overrides)
    return config


# Every app app_factory built, in order: tests/conftest.py closes the pools of those each test built when it ends.
BUILT_APPS = []


def close_pools(apps):
    """Close the idle connections of every pool of apps (a pool closed so connects anew when it is used again)."""
    for app in apps:
        for pool in app.extensions['dbapi'].pools.values():
            pool.close()


@contextlib.contextmanager
def app_factory(database_url):
    """Yield a function that builds test apps on database_url (its keyword arguments override the config);
    the pools of every app it built are closed after the block."""
    first = len(BUILT_APPS)

    def factory(**overrides):
        BUILT_APPS.append(create_app(app_config(database_url, **overrides)))
        return BUILT_APPS[-1]
    try:
        yield factory
    finally:
        close_pools(BUILT_APPS[first:])


class Caller:
    """A test client that POSTs JSON with a bearer token."""

    def __init__(self, client, token=ADMIN_TOKEN):
        self.client = client
        self.token = token

    def __call__(self, path, body=None, token=None, **kwargs):
        """POST body as JSON to path and return the response."""
        headers = kwargs.pop('headers', {})
        # Buffered: the whole body is read and the response closed, as a WSGI server would.
        kwargs.setdefault('buffered', True)
        token = self.token if token is None else token
        if token:
            headers.setdefault('Authorization', f'Bearer {token}')
        return self.client.post(path, json={} if body is None else body, headers=headers, **kwargs)


@contextlib.contextmanager
def export_in_flight(call):
    """Keep a streamed export of the probe in flight, its body unread, for the block; yield its response."""
    stream = call('/probe/things/export', buffered=False)
    try:
        yield stream
    finally:
        stream.get_data()
        stream.close()


PROBLEM_KEYS = {'type', 'title', 'status', 'detail', 'request_id'}


def assert_problem(response, status):
    """Assert a test client's response is a problem+json document with status; return its body."""
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == 'application/problem+json'
    body = response.get_json()
    assert PROBLEM_KEYS <= body.keys()
    assert body['type'] == 'about:blank' and body['status'] == status and body['title']
    assert body['request_id'] == response.headers['X-Request-ID']
    return body


@functools.cache
def collection_app():
    """Return a test app with every module of the tests mounted and no database, built once per session."""
    return create_app(app_config(UNREACHABLE_DSN))


def mounted_routes():
    """Return the Route of every action a test app mounts: known at collection time, so tests parametrised
    with them cover a module added later without anyone editing them."""
    return list(collection_app().extensions['dbapi'].routes)


def route_id(route):
    """Name a route as its URL does: 'probe/echo', and 'probe/' for a module's root."""
    return f'{route.module}/{route.name}'


def mounted_paths():
    """Return every URL rule a module mounted (a root action has two: with and without the slash)."""
    return sorted(rule.rule for rule in collection_app().url_map.iter_rules() if 'POST' in rule.methods)


def broken_module(root, code='import no_such_library\n'):
    """Write a package 'brokenmods' under root (a folder for PYTHONPATH) whose module 'broken' runs code (Python
    text) when its routes.py is imported; return root."""
    folder = root / 'brokenmods' / 'broken'
    folder.mkdir(parents=True)
    (root / 'brokenmods' / '__init__.py').write_text('')
    (folder / '__init__.py').write_text('')
    (folder / 'routes.py').write_text(f'{code}routes = []\n')
    return root


# What a module's own exception at import may quote (defects of trial J): the service's token and DSN, a second line,
# a terminal's colour escape. Its start error must be one line without them.
QUOTING_TOKEN = 'quoted-token-5678'


def code_raising_secrets(dsn):
    """Return a routes.py's code that raises, quoting QUOTING_TOKEN and dsn on two lines with a colour escape."""
    message = f'blew up: Bearer {QUOTING_TOKEN} at {dsn}\nsecond line \x1b[31mred\x1b[0m'
    return f'raise RuntimeError({message!r})\n'


def assert_quoted_safely(line, output, dsn):
    """Check a start error's line quoting code_raising_secrets: one line, no secret, no escape in any output."""
    assert 'RuntimeError: blew up: Bearer [REDACTED] at [REDACTED]\\nsecond line \\x1b[31mred' in line, line
    assert QUOTING_TOKEN not in output and dsn not in output and '\x1b' not in output, output


def body_of_size(size):
    """Return a JSON object body of exactly size bytes for the probe's echo action."""
    overhead = len(b'{"pad": ""}')
    return b'{"pad": "' + b'x' * (size - overhead) + b'"}'


def migration_ids():
    """Return the ids of the project's migrations, in the order they apply."""
    return [migration.id for migration in read_migrations(str(MIGRATIONS_DIR))]


# SQL


def run_sql(dsn, text, params=None):
    """Run SQL on dsn in autocommit and return all rows (or None)."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True
    try:
        with conn.cursor() as cursor:
            cursor.execute(text, params)
            return cursor.fetchall() if cursor.description else None
    finally:
        conn.close()


def things_with_code(dsn, code):
    """Return how many rows of probe.things (the probe fixture module's table) have code."""
    return run_sql(dsn, 'SELECT count(*) FROM probe.things WHERE code = %s', (code,))[0][0]


def codes_of_run(dsn, run_id):
    """Return the set of probe.things codes written by a run: those that start with `<run_id>-`."""
    return {code for (code,) in run_sql(dsn, 'SELECT code FROM probe.things WHERE code LIKE %s', (f'{run_id}-%',))}


def backend_count(database_url, query):
    """Return how many backends run query now."""
    return run_sql(database_url, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = %s",
                   (query,))[0][0]


def drop_database(server_dsn, name):
    """Drop database name on the server, if it exists, closing its connections."""
    run_sql(server_dsn, sql.SQL('DROP DATABASE IF EXISTS {} WITH (FORCE)').format(sql.Identifier(name)))


def recreate_database(server_dsn, name):
    """Drop and create database name on the server; return its DSN."""
    drop_database(server_dsn, name)
    run_sql(server_dsn, sql.SQL('CREATE DATABASE {}').format(sql.Identifier(name)))
    return psycopg2.extensions.make_dsn(server_dsn, dbname=name)


# Waiting and HTTP


def wait_for(condition, timeout, message, interval=0.1, on_timeout=None):
    """Poll condition until it returns something true, and return that; fail the test after timeout seconds,
    adding what on_timeout() says to the message."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(interval)
    details = f': {on_timeout()}' if on_timeout else ''
    pytest.fail(f'{message} (after {timeout} s){details}')


def free_ports(count):
    """Return the first of count consecutive free loopback ports."""
    return consecutive_free_ports(count)[0]


def free_port():
    """Return a TCP port on 127.0.0.1 that nothing listens on now."""
    return free_ports(1)


def port_open(port):
    """Tell whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(('127.0.0.1', port)) == 0


@dataclass
class Reply:
    """One HTTP answer."""

    status: int
    headers: object
    body: bytes

    def json(self):
        """Return the body decoded as JSON."""
        return json.loads(self.body)


def http_request(port, method, path, body=b'', headers=None, timeout=30, connection=None):
    """Send one request to 127.0.0.1:port and return the Reply: on a fresh connection, closed after, or on the
    given one (an http.client.HTTPConnection kept alive by the caller)."""
    kept = connection is not None
    connection = connection or http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Reply(response.status, response.headers, response.read())
    finally:
        if not kept:
            connection.close()


def post(port, path, body=None, token=ADMIN_TOKEN, headers=None, raw=None, connection=None):
    """POST body as JSON (or raw bytes) with a bearer token to 127.0.0.1:port (on connection, when given)."""
    headers = {'Content-Type': 'application/json', 'Authorization': f'Bearer {token}', **(headers or {})}
    payload = raw if raw is not None else json.dumps({} if body is None else body).encode()
    return http_request(port, 'POST', path, payload, headers, connection=connection)


def wait_until_healthy(base, process, seconds=30):
    """Poll base's /healthz (base is http://127.0.0.1:PORT) until it answers 200; fail if process exits first."""
    port = int(base.rsplit(':', 1)[1])

    def healthy():
        assert process.poll() is None, 'the server exited while starting'
        try:
            return http_request(port, 'GET', '/healthz', timeout=1).status == 200
        except OSError:
            return False
    wait_for(healthy, seconds, 'the server did not become healthy', interval=0.2)


# Servers the tests start


def server_environment(**extra):
    """Return the environment of a server process started by a test."""
    return {**os.environ, 'ENVIRONMENT': 'test', 'BEARER_TOKENS': json.dumps(BEARER_TOKENS),
            'MODULE_PACKAGES': ','.join(MODULE_PACKAGES), 'LOG_LEVEL': 'WARNING', **extra}


@contextlib.contextmanager
def gunicorn_server(environment, stdout=subprocess.DEVNULL, stderr=None):
    """Run a real gunicorn with gunicorn.conf.py and three workers (unless environment sets WEB_CONCURRENCY) on a
    free loopback port, with environment over server_environment(); yield (port, process). It is stopped (SIGTERM,
    as a deployment stops it) after the block, so what it wrote is complete when the caller reads it; one that does
    not stop within STOP_SECONDS fails the test with the end of its stderr (a temporary file unless given)."""
    port = free_port()
    with contextlib.ExitStack() as stack:
        if stderr is None:
            stderr = stack.enter_context(tempfile.TemporaryFile())
        process = subprocess.Popen(
            gunicorn_command(), cwd=settings.BASE_DIR, stdout=stdout, stderr=stderr,
            env=server_environment(PORT=str(port), **{'WEB_CONCURRENCY': '3', **environment}))
        try:
            wait_until_healthy(f'http://127.0.0.1:{port}', process)
            yield port, process
        finally:
            stop_gunicorn(process, stderr)


# How long a stopped gunicorn may take to exit: past its graceful timeout (30 s), its master has killed the workers.
STOP_SECONDS = 30


def stop_gunicorn(process, stderr):
    """SIGTERM gunicorn's master and wait STOP_SECONDS for it to exit; else kill it and its workers and fail with the
    end of stderr (a file)."""
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        for worker in psutil.Process(process.pid).children(recursive=True):
            worker.kill()
        process.kill()
        process.wait()
        pytest.fail(f'gunicorn did not stop within {STOP_SECONDS} s of SIGTERM; its stderr ends with:\n'
                    f'{tail_of(stderr)}')


def tail_of(file, size=4000):
    """Return the last size bytes of a regular file, open in any mode, as text (reopened through /proc)."""
    with open(f'/proc/self/fd/{file.fileno()}', 'rb') as reader:
        reader.seek(max(0, reader.seek(0, os.SEEK_END) - size))
        return reader.read().decode(errors='replace')


@contextlib.contextmanager
def running_gunicorn(database_url, **extra):
    """Run a real gunicorn with gunicorn.conf.py and three workers on a free loopback port; yield the port."""
    with gunicorn_server(dict(DATABASE_URL=database_url, **extra)) as (port, _):
        yield port


def whole_or_first_piece(line):
    """Tell whether a JSON line read from stdout (nested, as written) is whole or the first piece of one split to fit a
    pipe write (labels.line_part 1/N, lib/logs/formatter.split_line): a 5xx access line's stack trace can take it past
    PIPE_BUF, and the first piece alone holds its status, outcome and duration."""
    return int(line.get('labels', {}).get('line_part', '1/1').split('/')[0]) == 1


@contextlib.contextmanager
def gunicorn_logging_to(folder, **environment):
    """Run gunicorn as gunicorn_server does, its stdout and stderr appended to folder/stdout and folder/stderr;
    yield (port, process)."""
    with open(folder / 'stdout', 'ab') as stdout, open(folder / 'stderr', 'ab') as stderr:
        with gunicorn_server(environment, stdout, stderr) as served:
            yield served


def require_programs(*names):
    """Skip unless the system programs exist (`make test` installs them through `make tools`)."""
    for name in names:
        try:
            program(name)
        except FileNotFoundError as exc:
            pytest.skip(str(exc))


@contextlib.contextmanager
def shared_run_dir(prefix):
    """Yield a fresh directory that nginx's and pgbouncer's unprivileged users can reach, unlike pytest's."""
    with tempfile.TemporaryDirectory(prefix=prefix) as run_dir:
        os.chmod(run_dir, 0o711)
        yield Path(run_dir)


@contextlib.contextmanager
def running_pgbouncer(server_dsn):
    """Run pgbouncer in transaction mode in front of server_dsn for the block; yield the DSN through it."""
    require_programs('pgbouncer')
    port = free_port()
    with shared_run_dir('dbapi-pgbouncer-test-') as run_dir:
        argv, bouncer_dsn, user = pgbouncer.write_config(run_dir / 'pgbouncer', server_dsn, port,
                                                         settings.DB_STATEMENT_TIMEOUT_MS)
        bouncer = Child('pgbouncer', argv, dict(os.environ), signal.SIGINT, user=user).start()
        try:
            wait_for(lambda: bouncer.exit_code() is not None or port_open(port), 15, 'pgbouncer did not start')
            assert bouncer.exit_code() is None, 'pgbouncer exited at start'
            yield bouncer_dsn
        finally:
            bouncer.stop()


@contextlib.contextmanager
def database_via(route, server_dsn):
    """Yield the DSN of server_dsn's database reached via route: 'direct' (server_dsn itself) or 'pgbouncer'."""
    if route == 'direct':
        yield server_dsn
    else:
        with running_pgbouncer(server_dsn) as bouncer_dsn:
            yield bouncer_dsn


def show_pgbouncer(dsn, command):
    """Run a SHOW command on pgbouncer's admin console; return rows as dicts."""
    conn = psycopg2.connect(dsn)
    conn.autocommit = True  # the console has no transactions
    try:
        with conn.cursor() as cursor:
            cursor.execute(command)
            columns = [column.name for column in cursor.description]
            return [dict(zip(columns, row)) for row in cursor.fetchall()]
    finally:
        conn.close()


def scratch_folder():
    """Return .data/, where throwaway embedded servers live (git ignores it; not under pytest's basetemp,
    which a concurrent pytest session resets to mode 0700, locking out the server's unprivileged user)."""
    folder = settings.BASE_DIR / '.data'
    folder.mkdir(exist_ok=True)
    return folder


# Data folders of the PostgreSQL servers this test session started itself; conftest stops any still running
# when the session ends, so a test that failed half-way leaves no server behind.
THROWAWAY_DATA_DIRS = []


def new_data_dir(prefix):
    """Return a fresh data folder path for a throwaway PostgreSQL, remembered for the session's cleanup."""
    data_dir = Path(tempfile.mkdtemp(prefix=prefix, dir=scratch_folder())) / 'pg'
    THROWAWAY_DATA_DIRS.append(data_dir)
    return data_dir


def postgres_processes(data_dir):
    """Return the running postmasters of data_dir: the one its postmaster.pid names, and any whose command
    line names the folder (so one whose folder is already gone is found too)."""
    found = {}
    with contextlib.suppress(OSError, ValueError, IndexError, psutil.Error):
        named = psutil.Process(int((data_dir / 'postmaster.pid').read_text().split()[0]))
        if named.name() == 'postgres':  # not a stale file whose pid now belongs to another program
            found[named.pid] = named
    for process in psutil.process_iter(['cmdline']):
        if str(data_dir) in (process.info['cmdline'] or []):
            found[process.pid] = process
    return [process for process in found.values() if process.is_running()]


def stop_postgres(data_dir, timeout=30):
    """Stop every PostgreSQL serving data_dir (SIGINT, PostgreSQL's fast shutdown); kill what outlives timeout."""
    servers = postgres_processes(data_dir)
    for server in servers:
        with contextlib.suppress(psutil.NoSuchProcess):
            server.send_signal(signal.SIGINT)
    _, alive = psutil.wait_procs(servers, timeout)
    for server in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            server.kill()


def discard_data_dir(data_dir):
    """Stop the servers of a throwaway data folder, then delete it."""
    stop_postgres(data_dir)
    shutil.rmtree(data_dir.parent, ignore_errors=True)
    if data_dir in THROWAWAY_DATA_DIRS:
        THROWAWAY_DATA_DIRS.remove(data_dir)


@contextlib.contextmanager
def throwaway_postgres(prefix, database='dbapi'):
    """Run an embedded PostgreSQL of the caller's own for the block; yield (dsn, data_dir). It is stopped and
    its folder deleted afterwards, whatever the block did to it."""
    data_dir = new_data_dir(prefix)
    try:
        yield start_embedded(data_dir, database=database, stop_at_exit=False), data_dir
    finally:
        discard_data_dir(data_dir)


# A session leader that takes the terminal's hangup itself and waits for its child, as make does (a handler: its
# child starts with SIGHUP's default), or that ignores it, as nohup does (its child inherits that).
LEADER_THAT_WAITS = ('import signal, subprocess, sys; signal.signal(signal.SIGHUP, lambda *_: None); '
                     'sys.exit(subprocess.call(sys.argv[1:]))')
LEADER_UNDER_NOHUP = LEADER_THAT_WAITS.replace('lambda *_: None', 'signal.SIG_IGN')


@contextlib.contextmanager
def on_a_terminal(command, environment, stderr=None, leader_code=LEADER_THAT_WAITS, stdout=None):
    """Run command on a new pseudo-terminal it has as its controlling terminal, under leader_code, what the terminal
    shows read and dropped (stdout and stderr there too, unless they say where else); yield (the leader, hang_up: a
    function that closes the terminal)."""
    controller, terminal = pty.openpty()
    leader = subprocess.Popen([sys.executable, '-c', leader_code, *command], cwd=settings.BASE_DIR,
                              env=environment, stdin=terminal, stdout=terminal if stdout is None else stdout,
                              stderr=terminal if stderr is None else stderr,
                              start_new_session=True, preexec_fn=lambda: fcntl.ioctl(0, termios.TIOCSCTTY, 0))
    os.close(terminal)
    closing = threading.Event()
    reader = threading.Thread(target=drain, args=(controller, closing), daemon=True)
    reader.start()

    def hang_up():
        closing.set()
        reader.join()  # a read in progress would keep the terminal open past close()
        os.close(controller)
    try:
        yield leader, hang_up
    finally:
        if leader.poll() is None:
            os.killpg(leader.pid, signal.SIGKILL)


def drain(fd, closing):
    """Read fd until closing is set: a terminal nobody reads stops its writers once its buffer is full."""
    while not closing.is_set():
        if select.select([fd], [], [], 0.1)[0]:
            with contextlib.suppress(OSError):
                os.read(fd, 65536)


def children_running(pid, word, recursive=False):
    """Return the children of process pid (every descendant, with recursive) whose command line holds word; one that
    ends meanwhile is left out."""
    found = []
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(pid).children(recursive=recursive):
            with contextlib.suppress(psutil.Error):
                if word in ' '.join(child.cmdline()):
                    found.append(child)
    return found
