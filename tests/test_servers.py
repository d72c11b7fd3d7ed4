"""Real servers over HTTP: gunicorn with several workers, and `make run`'s serve command stopped by Ctrl-C."""
import contextlib
import errno
import http.client as http_client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

import manage
import settings
from lib.process import CommandStop
from ops.stack import answers
from tests.helpers import (ADMIN_TOKEN, LEADER_UNDER_NOHUP, children_running, discard_data_dir, free_port,
                           http_request, migration_ids, new_data_dir, on_a_terminal, port_open, post,
                           postgres_processes, running_gunicorn, server_environment, wait_for, wait_until_healthy)

pytestmark = pytest.mark.slow


@pytest.fixture()
def gunicorn(database_url):
    """A real gunicorn with three workers on a free loopback port; yields its port."""
    with running_gunicorn(database_url) as port:
        yield port


def test_gunicorn_serves_the_contract_over_http(gunicorn):
    traced = {'X-Request-ID': 'over-http-1'}
    created = post(gunicorn, '/probe/things/create', {'code': f'http-{time.time_ns()}'}, headers=traced)
    assert created.status == 201 and created.headers['X-Request-ID'] == 'over-http-1'
    assert post(gunicorn, '/probe/things/get', {'id': created.json()['id']}).json() == created.json()
    refused = post(gunicorn, '/probe/things/get', {'id': 'x'}, headers=traced)
    assert refused.status == 422 and refused.headers['Content-Type'] == 'application/problem+json'
    assert refused.json()['request_id'] == 'over-http-1'
    assert post(gunicorn, '/probe/things/get', {'id': 1}, token='').status == 401
    assert http_request(gunicorn, 'GET', '/readyz').status == 200


def test_gunicorn_spreads_concurrent_requests_over_its_workers(gunicorn):
    def slow_pid(_):
        post(gunicorn, '/probe/hold', {'seconds': 0.2})
        return post(gunicorn, '/probe/pid').json()['pid']
    with ThreadPoolExecutor(6) as pool:
        pids = set(pool.map(slow_pid, range(30)))
    assert len(pids) >= 2


def test_gunicorn_believes_no_forwarded_header_only_the_app_does(database_url):
    forwarded = {'X-Forwarded-For': '203.0.113.5', 'X-Forwarded-Proto': 'https', 'SCRIPT_NAME': '/elsewhere'}
    packages = 'tests.topology.fixture_modules'
    for hops, expected in (('0', ('127.0.0.1', 'http')), ('1', ('203.0.113.5', 'https'))):
        with running_gunicorn(database_url, MODULE_PACKAGES=packages, TRUSTED_PROXY_HOPS=hops) as port:
            reply = post(port, '/topology/whoami', headers=forwarded)
        assert reply.status == 200, reply.body
        seen = reply.json()
        assert (seen['remote_addr'], seen['scheme']) == expected, f'TRUSTED_PROXY_HOPS={hops}'


@pytest.fixture()
def serve_data_dir():
    """The data folder of the embedded PostgreSQL that `manage.py serve` starts; stopped and deleted afterwards."""
    data_dir = new_data_dir('serve-')
    yield data_dir
    discard_data_dir(data_dir)


SERVE_COMMAND = [sys.executable, 'manage.py', 'serve']


def serve_environment(data_dir, **settings_):
    """Return the environment of `manage.py serve` on the embedded PostgreSQL in data_dir, with settings_ over it."""
    return server_environment(ENVIRONMENT='local', EMBEDDED_DB_DIR=str(data_dir), DATABASE_URL='', DEFAULT_DB_NAME='',
                              **settings_)


@contextlib.contextmanager
def started_serve(data_dir, output=subprocess.PIPE, command=SERVE_COMMAND, errors=subprocess.STDOUT, **settings_):
    """Start `manage.py serve` (or command) in a session of its own, as a terminal starts a foreground job, its
    stderr (unless errors says where) with its stdout into output; yield the process, killed with its whole session
    if it still runs after the block."""
    process = subprocess.Popen(command, cwd=settings.BASE_DIR, start_new_session=True,
                               env=serve_environment(data_dir, **settings_), stdout=output, stderr=errors,
                               text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)


def run_serve(data_dir, **settings_):
    """Run `manage.py serve` to its end (a start it refuses), with settings_; return the completed process."""
    return subprocess.run(SERVE_COMMAND, cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60,
                          env=serve_environment(data_dir, **settings_))


def ctrl_c(process):
    """Send SIGINT to serve's whole session, as a terminal's Ctrl-C does; return its output once it has ended."""
    os.killpg(process.pid, signal.SIGINT)
    return process.communicate(timeout=60)[0]


def test_serve_starts_everything_and_ctrl_c_stops_it_all(serve_data_dir):
    port = free_port()
    with started_serve(serve_data_dir, PORT=str(port), WEB_CONCURRENCY='2', BEARER='serve-test-token') as process:
        wait_until_healthy(f'http://127.0.0.1:{port}', process, seconds=90)
        assert post(port, '/probe/echo', {'name': 'Ada'}, token='serve-test-token').json() == {'name': 'Ada'}
        assert post(port, '/probe/migrations', token='serve-test-token').json() == migration_ids()
        postgres = postgres_processes(serve_data_dir)
        assert postgres, 'the embedded PostgreSQL should run under EMBEDDED_DB_DIR'
        output = ctrl_c(process)
    assert process.returncode == 0
    assert 'curl' in output and f'127.0.0.1:{port}' in output
    psutil.wait_procs(postgres, timeout=15)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in postgres)
    assert not port_open(port)
    assert (serve_data_dir / 'PG_VERSION').exists(), 'the data stays for the next `make run`'


def test_serves_stdout_holds_json_lines_alone_and_its_words_to_the_terminal_go_to_stderr(serve_data_dir, tmp_path):
    port = free_port()
    with open(tmp_path / 'stderr', 'w') as errors:
        with started_serve(serve_data_dir, PORT=str(port), WEB_CONCURRENCY='1', LOG_LEVEL='INFO',
                           errors=errors) as process:
            wait_until_healthy(f'http://127.0.0.1:{port}', process, seconds=90)
            assert post(port, '/probe/echo', {'a': 1}).status == 200
            wait_for(lambda: 'dbapi serves on' in (tmp_path / 'stderr').read_text(), 5, 'serve said nothing')
            output = ctrl_c(process)
    lines = output.splitlines()
    assert lines and all(isinstance(json.loads(line), dict) for line in lines), [
        line for line in lines if not line.startswith('{')]
    assert any('"POST /probe/echo 200"' in line for line in lines)


@pytest.mark.parametrize('stop, said', [
    (lambda pid: os.killpg(pid, signal.SIGINT),  # what the terminal's Ctrl-C does
     'Stopping: the requests in flight finish first. Ctrl-C again stops at once.\n'),
    # what the terminal's hangup (closed) does, and a supervisor's stop: they said nothing (trial AA)
    (lambda pid: os.killpg(pid, signal.SIGHUP), 'Stopping: the requests in flight finish first.\n'),
    (lambda pid: os.kill(pid, signal.SIGTERM), 'Stopping: the requests in flight finish first.\n'),
], ids=['ctrl-c', 'hangup', 'sigterm'])
def test_a_stop_of_serve_lets_the_requests_in_flight_finish_and_be_logged(serve_data_dir, stop, said):
    port = free_port()
    with started_serve(serve_data_dir, PORT=str(port), WEB_CONCURRENCY='1', LOG_LEVEL='INFO') as process:
        wait_until_healthy(f'http://127.0.0.1:{port}', process, seconds=90)
        with ThreadPoolExecutor(1) as pool:
            in_flight = pool.submit(post, port, '/slow/sleep', {'seconds': 2}, headers={'X-Request-ID': 'at-ctrl-c'})
            time.sleep(0.5)
            stop(process.pid)
            answer = in_flight.result(timeout=30)
        output = process.communicate(timeout=60)[0]
    assert answer.status == 200 and answer.json() == {'slept': 2.0}
    lines = [json.loads(line) for line in output.splitlines() if line.startswith('{')]
    logged = [line for line in lines if line.get('http', {}).get('request', {}).get('id') == 'at-ctrl-c']
    assert len(logged) == 1 and logged[0]['http']['response']['status_code'] == 200, output[-2000:]
    assert process.returncode == 0
    assert [line + '\n' for line in output.splitlines() if line.startswith('Stopping')] == [said]


@pytest.mark.parametrize('stderr', [None, subprocess.DEVNULL], ids=['on the terminal', 'redirected'])
def test_serve_stops_when_its_terminal_hangs_up_under_a_leader_that_waits(serve_data_dir, stderr):
    """Under `ssh -t host make run` (or tmux, or script), make leads the session: it took the hangup and waited, and
    serve, gunicorn and PostgreSQL served on (trial K); with stderr redirected too (trial M)."""
    port = free_port()
    with on_a_terminal(SERVE_COMMAND, serve_environment(serve_data_dir, PORT=str(port)), stderr) as (leader, hang_up):
        wait_until_healthy(f'http://127.0.0.1:{port}', leader, seconds=90)
        postgres = postgres_processes(serve_data_dir)
        hang_up()
        leader.wait(30)  # its exit code says little: writes to the closed terminal fail
    psutil.wait_procs(postgres, timeout=15)
    assert not port_open(port) and not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in postgres)


class GoneTerminal(io.StringIO):
    """A stderr whose terminal hung up: every write fails with EIO."""

    def write(self, text):
        raise OSError(errno.EIO, 'Input/output error')


def test_a_stop_whose_terminal_is_gone_still_stops_gunicorn(monkeypatch):
    """A hangup's `Stopping` line met the closed terminal before gunicorn was told to stop: its EIO left gunicorn
    serving (CI, the test above, once in two runs)."""
    command_stop = CommandStop()
    command_stop.served = True
    stops = manage.Stops(command_stop)
    gunicorn = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])
    stops.follow(gunicorn)
    monkeypatch.setattr(sys, 'stderr', GoneTerminal())
    stops.graceful(signal.SIGHUP)
    assert gunicorn.wait(10) == -signal.SIGTERM and command_stop.asked == signal.SIGHUP


def test_serve_under_nohup_serves_on_when_its_terminal_hangs_up(serve_data_dir):
    """nohup ignores SIGHUP for the program it runs, so that it outlives its terminal, and sends its output to a file
    (nohup.out): serve keeps to that."""
    port = free_port()
    with on_a_terminal(SERVE_COMMAND, serve_environment(serve_data_dir, PORT=str(port)), subprocess.DEVNULL,
                       LEADER_UNDER_NOHUP, subprocess.DEVNULL) as (leader, hang_up):
        wait_until_healthy(f'http://127.0.0.1:{port}', leader, seconds=90)
        hang_up()
        time.sleep(2)  # the hangup watch looks once a second
        assert leader.poll() is None and answers(port)
        serve = psutil.Process(leader.pid).children()[0]
        serve.terminate()
        assert leader.wait(30) == 0


@pytest.mark.parametrize('command, line', [
    ('serve', 'dbapi: stopped by {} before it served'),
    ('migrate', 'dbapi: migrate stopped by {}; run it again to apply the migrations still pending'),
])
@pytest.mark.parametrize('stop_signal, cause, send', [
    (signal.SIGINT, 'Ctrl-C', os.killpg),  # the terminal's Ctrl-C, to its foreground group
    (signal.SIGTERM, 'SIGTERM', os.kill),  # a supervisor's stop
    (signal.SIGHUP, 'SIGHUP', os.killpg),  # the terminal hanging up
])
def test_a_stop_before_gunicorn_runs_stops_the_start_in_one_line_and_postgresql_with_it(
        serve_data_dir, command, line, stop_signal, cause, send):
    """SIGTERM and SIGHUP while it migrated killed manage.py outright: the embedded PostgreSQL served on, and pgserver
    counted the dead process among its users (trial N)."""
    with started_serve(serve_data_dir, command=[*SERVE_COMMAND[:-1], command], PORT=str(free_port()),
                       WEB_CONCURRENCY='1') as process:
        # As the postmaster says it is ready: pgserver has yet to count this process among the server's users (trial
        # P: a stop in that moment left the server running)
        wait_for(lambda: 'ready' in postmaster_status(serve_data_dir), 90, 'no postmaster ready', interval=0.002)
        send(process.pid, stop_signal)
        postgres = postgres_processes(serve_data_dir)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + stop_signal and 'Traceback' not in output, output[-2000:]
    words = [text for text in output.strip().splitlines() if not text.startswith('{')]  # not the JSON log lines
    assert words[-1] == line.format(cause) and 'serves on' not in output
    psutil.wait_procs(postgres, timeout=15)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in postgres)


@pytest.mark.parametrize('stop_signal, cause', [(signal.SIGINT, 'Ctrl-C'), (signal.SIGHUP, 'SIGHUP')])
def test_a_stop_that_kills_initdb_is_the_stops_one_line_alone(serve_data_dir, stop_signal, cause):
    """A terminal's Ctrl-C or hangup reaches initdb too: pgserver's report of its failure, kilobytes of initdb's output
    at level error, went to stdout beside the stop's line (trial Q)."""
    with started_serve(serve_data_dir, command=[*SERVE_COMMAND[:-1], 'migrate'], errors=subprocess.PIPE) as process:
        wait_for(lambda: children_running(process.pid, 'initdb', recursive=True) or process.poll() is not None, 90,
                 'no initdb', interval=0.005)
        os.killpg(process.pid, stop_signal)
        output, errors = process.communicate(timeout=60)
    assert process.returncode == 128 + stop_signal, errors[-2000:]
    assert errors.splitlines() == [f'dbapi: migrate stopped by {cause}; run it again to apply the migrations still '
                                   'pending'], errors[-2000:]
    assert 'Failed postgres command' not in output and '"error"' not in output, output[-2000:]


STOP_IN_A_WEAKREF_CALLBACK = """
import weakref
from lib.process import COMMAND_STOP, StartInterrupted
class Held: pass
held = Held()
def callback(_):
    COMMAND_STOP.asked = 2
    raise StartInterrupted(130)  # as CommandStop.take raises a Ctrl-C that came while the callback ran
reference = weakref.ref(held, callback)
del held
print('went on')
COMMAND_STOP.raise_if_asked()
"""


def test_a_stop_that_python_ignores_where_it_came_is_no_traceback_and_still_stops():
    """A Ctrl-C that came inside a weakref's callback as gunicorn started printed "Exception ignored in" and a
    traceback after the stop's one line (trial T, 2 in 17)."""
    result = subprocess.run([sys.executable, '-c', STOP_IN_A_WEAKREF_CALLBACK], cwd=settings.BASE_DIR,
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout, result.stderr) == (130, 'went on\n', '')


REPEATED_STOPS = """
import os, subprocess, time
from lib.process import COMMAND_STOP
COMMAND_STOP.take_stop_signals(lambda signum: 'dbapi: stopped')
kills = '; '.join(f'kill -{name} {os.getpid()} || exit' for name in SIGNALS.split())
subprocess.Popen(['sh', '-c', f'for i in $(seq 500); do {kills}; sleep 0.002; done'],
                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # a dead process stays a zombie to kill
while True:
    time.sleep(0.01)
"""


@pytest.mark.parametrize('signals', ['INT', 'INT TERM'])
def test_stops_that_keep_coming_while_the_process_exits_leave_its_exit_code_and_one_line(signals):
    """A second Ctrl-C while the first one's stop unwound killed the process by SIGINT (8 of 24, trial W): Python's
    exit gives its handlers back SIG_DFL; a SIGTERM right after a Ctrl-C was "OSError: Signal 15 ignored due to race
    condition", a traceback, once the first had set SIG_IGN (trial Z)."""
    for _ in range(3):
        result = subprocess.run([sys.executable, '-c', f'SIGNALS = {signals!r}' + REPEATED_STOPS],
                                cwd=settings.BASE_DIR, capture_output=True, text=True, timeout=60)
        assert (result.returncode, result.stderr) == (130, 'dbapi: stopped\n')


def test_an_embedded_postgresql_that_cannot_start_is_one_line(tmp_path):
    (tmp_path / 'file').write_text('')
    result = subprocess.run([sys.executable, 'manage.py', 'migrate'], cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=60, env=serve_environment(tmp_path / 'file' / 'pg'))
    assert result.returncode == 1 and 'Traceback' not in result.stderr, result.stderr
    assert result.stderr.startswith(f'dbapi: the embedded PostgreSQL in {tmp_path}/file/pg did not start: ')
    assert len(result.stderr.splitlines()) == 1, result.stderr


@pytest.mark.parametrize('options, message', [
    ('-c x=1', 'FATAL: unrecognized configuration parameter "x"'),
    ('-c default_transaction_read_only=on', 'cannot execute CREATE DATABASE in a read-only transaction')])
def test_a_database_the_embedded_postgresql_refuses_is_one_line(serve_data_dir, options, message):
    """Trial Z: PGOPTIONS, which libpq sends from the environment, naming a setting PostgreSQL does not know made
    `migrate` print psycopg2's traceback."""
    result = subprocess.run([sys.executable, 'manage.py', 'migrate'], cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=90, env={**serve_environment(serve_data_dir), 'PGOPTIONS': options})
    assert (result.returncode, result.stderr) == (1, f"dbapi: the embedded PostgreSQL refused database 'dbapi': "
                                                     f'{message}\n')


def postmaster_status(data_dir):
    """Return the postmaster.pid of data_dir's server ('' for none): its last line says `starting`, then `ready`."""
    with contextlib.suppress(OSError):
        return (data_dir / 'postmaster.pid').read_text()
    return ''


@pytest.mark.parametrize('stop_signal, cause, send', [
    (signal.SIGINT, 'Ctrl-C', os.killpg), (signal.SIGTERM, 'SIGTERM', os.kill), (signal.SIGHUP, 'SIGHUP', os.killpg)])
def test_a_stop_while_gunicorn_boots_stops_the_start_in_one_line(serve_data_dir, tmp_path, stop_signal, cause, send):
    """A stop once gunicorn ran but before serve said where it serves exited 0 without a line (trial P)."""
    port = free_port()
    with started_serve(serve_data_dir, PORT=str(port), WEB_CONCURRENCY='1', TMPDIR=str(tmp_path)) as process:
        def booting():
            return gunicorn_child(process) and list(tmp_path.glob('dbapi-metrics-*')) or process.poll() is not None
        wait_for(booting, 90, 'no gunicorn', interval=0.01)
        postgres = postgres_processes(serve_data_dir)
        send(process.pid, stop_signal)
        output = process.communicate(timeout=60)[0]
    assert process.returncode == 128 + stop_signal and 'Traceback' not in output, output[-2000:]
    words = [text for text in output.strip().splitlines() if not text.startswith('{')]  # not the JSON log lines
    assert words[-1] == f'dbapi: stopped by {cause} before it served' and 'serves on' not in output, output[-2000:]
    wait_for(lambda: not port_open(port), 10, 'gunicorn still serves')
    assert list(tmp_path.glob('dbapi-metrics-*')) == [], 'the metrics directory stays behind'
    psutil.wait_procs(postgres, timeout=15)
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in postgres)


def gunicorn_child(process):
    """Return the gunicorn that `manage.py serve` (process) started, or None before it has."""
    return next(iter(children_running(process.pid, 'gunicorn')), None)


def test_serve_on_a_unix_socket_says_where_and_how_to_call_it(serve_data_dir, tmp_path):
    path = tmp_path / 'dbapi.sock'
    with started_serve(serve_data_dir, BIND=f'unix:{path}', WEB_CONCURRENCY='1', LOG_LEVEL='WARNING') as process:
        wait_for(lambda: process.poll() is not None or manage.unix_socket_answers(str(path)), 90, 'no answer')
        time.sleep(1)  # the "serves" line comes within a tenth of a second of the first answer
        output = ctrl_c(process)
    assert f'dbapi serves on unix:{path}' in output and f'--unix-socket {path} http://localhost/' in output, \
        output[-2000:]
    assert process.returncode == 0 and 'Traceback' not in output


def test_serve_killed_outright_leaves_no_gunicorn_serving(serve_data_dir):
    port = free_port()
    with started_serve(serve_data_dir, output=subprocess.DEVNULL, PORT=str(port), WEB_CONCURRENCY='1') as process:
        wait_until_healthy(f'http://127.0.0.1:{port}', process, seconds=90)
        gunicorns = psutil.Process(process.pid).children()
        process.kill()  # SIGKILL to manage.py alone: nothing of it runs to stop gunicorn
        process.wait(10)
        psutil.wait_procs(gunicorns, timeout=30)
        assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in gunicorns)
        wait_for(lambda: not port_open(port), 10, 'the port is still served')


@pytest.mark.parametrize('stop, code, line', [
    (signal.SIGKILL, 128 + signal.SIGKILL, 'dbapi: gunicorn was stopped by SIGKILL, which make run did not send'),
    # gunicorn ends gracefully with code 0: nothing was said (trial AA), and a SIGKILL's code was 247
    (signal.SIGTERM, 0, 'dbapi: gunicorn stopped, which make run did not ask: a stop signal sent to its master alone'),
    # a quick stop: the line said the workers finished the requests in flight (trial BS)
    (signal.SIGQUIT, 0, 'a SIGTERM lets its workers finish the requests in flight, a SIGINT or SIGQUIT cuts them')])
def test_a_gunicorn_master_stopped_under_serve_is_said_in_one_line_without_a_traceback(serve_data_dir, tmp_path, stop,
                                                                                       code, line):
    port = free_port()
    with open(tmp_path / 'stderr', 'w') as errors:
        with started_serve(serve_data_dir, output=subprocess.DEVNULL, errors=errors, PORT=str(port),
                           WEB_CONCURRENCY='2', PROMETHEUS_MULTIPROC_DIR='') as process:  # serve makes its own
            wait_until_healthy(f'http://127.0.0.1:{port}', process, seconds=90)
            master = wait_for(lambda: gunicorn_child(process), 10, 'no gunicorn')
            workers = master.children()
            with ThreadPoolExecutor(1) as executor:  # a request in flight: its worker has metrics to flush at exit
                in_flight = executor.submit(post, port, '/slow/sleep', {'seconds': 2})
                time.sleep(0.5)
                master.send_signal(stop)
                process.wait(60)
                answer = in_flight.exception() or in_flight.result()
                assert answer.status == 200 if stop != signal.SIGQUIT else isinstance(answer, OSError) or \
                    answer.status == 503, answer  # a quick stop cuts it
            psutil.wait_procs(workers, timeout=30)  # their exit handlers write to the same stderr
        said = (tmp_path / 'stderr').read_text()
    assert process.returncode == code
    assert said.count(line) == 1, said
    assert 'Traceback' not in said and 'Exception ignored' not in said, said


@pytest.mark.parametrize('setting', ['PORT', 'BIND'])
def test_serve_on_a_port_in_use_stops_at_once_and_says_so(serve_data_dir, setting):
    with socket.socket() as taken:
        taken.bind(('127.0.0.1', 0))
        taken.listen()
        port = taken.getsockname()[1]
        # BIND, which gunicorn binds, wins over PORT.
        chosen = {'PORT': str(port)} if setting == 'PORT' else {'BIND': f'127.0.0.1:{port}', 'PORT': str(free_port())}
        result = run_serve(serve_data_dir, **chosen, BEARER='serve-test-token')
    assert result.returncode != 0
    assert f'port {port} (127.0.0.1:{port}) is in use' in result.stderr and 'serves' not in result.stdout
    assert f'or set {setting}' in result.stderr
    assert not postgres_processes(serve_data_dir), 'nothing starts before the check'


@pytest.mark.parametrize('taken_by, message', [
    ('a server', 'is in use: stop what listens there, or set BIND'),
    ('a file', 'exists and is not a socket'),
    ('nothing, in a folder that does not exist', 'does not exist')])
def test_serve_on_a_unix_socket_path_it_cannot_bind_stops_at_once_and_says_so(serve_data_dir, tmp_path, taken_by,
                                                                               message):
    path = tmp_path / 'dbapi.sock'
    with socket.socket(socket.AF_UNIX) as listening:
        if taken_by == 'a server':
            listening.bind(str(path))
            listening.listen()
        elif taken_by == 'a file':
            path.write_text('')
        else:
            path = tmp_path / 'missing' / 'dbapi.sock'
        result = run_serve(serve_data_dir, BIND=f'unix:{path}')
        assert result.returncode != 0 and message in result.stderr, result.stderr
        assert result.stderr.count('\n') == 1 and 'serves' not in result.stdout
        assert not postgres_processes(serve_data_dir), 'nothing starts before the check'
        if taken_by == 'a server':
            listening.settimeout(1)
            with socket.socket(socket.AF_UNIX) as client:
                client.connect(str(path))  # the socket is still the first server's
                listening.accept()[0].close()


def test_serve_on_an_address_this_machine_does_not_have_stops_at_once_and_says_so(serve_data_dir):
    bind = f'192.0.2.1:{free_port()}'  # TEST-NET-1 (RFC 5737): no machine's own address; a bind sends nothing
    result = run_serve(serve_data_dir, BIND=bind)
    assert result.returncode != 0 and f'BIND {bind}: cannot bind 192.0.2.1' in result.stderr, result.stderr
    assert not postgres_processes(serve_data_dir), 'nothing starts before the check'


def test_serve_on_ipv6_loopback_waits_for_it_and_says_where(serve_data_dir):
    port = free_port()
    with started_serve(serve_data_dir, BIND=f'[::1]:{port}', WEB_CONCURRENCY='1', LOG_LEVEL='WARNING') as process:
        wait_for(lambda: process.poll() is not None or answers(port, host='[::1]'), 90, 'no answer on [::1]')
        time.sleep(1)  # the "serves" line comes within a tenth of a second of the first answer
        output = ctrl_c(process)
    assert f'dbapi serves on http://[::1]:{port} ' in output and f'http://[::1]:{port}/' in output, output[-2000:]


def test_a_socket_a_stopped_server_left_behind_may_be_bound_again(tmp_path, monkeypatch):
    stale = tmp_path / 'stale.sock'
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(stale))
    monkeypatch.setattr(settings, 'BIND', f'unix:{stale}')
    assert stale.exists() and manage.check_unix_socket_path(manage.unix_socket_path()) is None


def test_a_relative_unix_socket_path_is_in_the_projects_folder_where_gunicorn_runs(monkeypatch):
    monkeypatch.setattr(settings, 'BIND', 'unix:run/dbapi.sock')
    assert manage.unix_socket_path() == str(settings.BASE_DIR / 'run' / 'dbapi.sock')


def post_chunked(port, path, chunks):
    """POST chunks with Transfer-Encoding: chunked and the admin token; return (status, parsed body)."""
    connection = http_client.HTTPConnection('127.0.0.1', port, timeout=30)
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


@pytest.mark.parametrize('framing, body', [('Content-Length: 100', '{"a": 1}'),
                                            ('Transfer-Encoding: chunked', '8\r\n{"a": 1}\r\n')])
def test_a_client_that_sends_less_than_it_declared_gets_a_400_that_says_so(gunicorn, framing, body):
    with socket.create_connection(('127.0.0.1', gunicorn), timeout=30) as sock:
        sock.sendall(f'POST /probe/echo HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n'
                     f'Content-Type: application/json\r\n{framing}\r\n\r\n{body}'.encode())
        sock.shutdown(socket.SHUT_WR)
        reply = b''
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b'HTTP/1.1 400 '), reply[:200]
    assert json.loads(reply.partition(b'\r\n\r\n')[2])['detail'] == (
        'The request body ended before all of it arrived: fewer bytes than its Content-Length, or a chunked body '
        'without its last chunk.')


def test_a_binary_upgrade_is_refused_under_make_run_which_serves_on(serve_data_dir):
    port = free_port()
    with started_serve(serve_data_dir, PORT=str(port), WEB_CONCURRENCY='1') as process:
        wait_until_healthy(f'http://127.0.0.1:{port}', process, seconds=90)
        master = gunicorn_child(process)
        master.send_signal(signal.SIGUSR2)
        time.sleep(3)  # a new master would have booted its workers by now
        assert not [child for child in master.children() if child.children()], 'no new master'
        assert post(port, '/probe/echo', {'name': 'Ada'}).json() == {'name': 'Ada'}
        assert process.poll() is None and master.is_running()
        output = ctrl_c(process)
    refusal = [json.loads(line) for line in output.splitlines() if 'binary upgrade' in line]
    assert [line['message'] for line in refusal] == [
        'SIGUSR2 (a binary upgrade) is refused under make run, which supervises this master: restart it instead']
    assert process.returncode == 0


HOLDS_AN_EMBEDDED_SERVER = """
import sys
from pathlib import Path
from lib.db.embedded import start_embedded
start_embedded(Path(sys.argv[1]), stop_at_exit=True)
print('started', flush=True)
sys.stdin.read()
"""


def test_an_exit_that_waits_for_a_hung_embedded_postgresql_says_so(tmp_path):
    """pgserver's pg_ctl waits up to 60 s for a postmaster that does not answer at exit, and nothing said why a
    Ctrl-C took a minute (trial BP: a stopped postmaster)."""
    data_dir = new_data_dir('hung-at-exit-')
    try:
        holder = subprocess.Popen([sys.executable, '-c', HOLDS_AN_EMBEDDED_SERVER, str(data_dir)],
                                  cwd=settings.BASE_DIR, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == 'started\n', holder.stderr.read()
        postmaster = int((data_dir / 'postmaster.pid').read_text().split()[0])
        os.kill(postmaster, signal.SIGSTOP)
        try:
            holder.stdin.close()  # the holder exits: pgserver stops the server it started
            said = holder.stderr.readline()
        finally:
            os.kill(postmaster, signal.SIGCONT)
        assert holder.wait(60) == 0
    finally:
        discard_data_dir(data_dir)
    assert said.startswith(f'dbapi: waiting for the embedded PostgreSQL in {data_dir} to stop: it has not answered '
                           'for 3 s'), said
