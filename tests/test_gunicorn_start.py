"""gunicorn run directly (the Dockerfile's CMD): a bad setting, token or module stops it in the master with one
'dbapi: ...' line and exit code 1, no traceback and no secret; a clean stop (SIGTERM) prints no traceback."""
import hashlib
import json
import os
import signal
import socket
import subprocess
import time
from types import SimpleNamespace

import psutil
import pytest

import settings
from lib.process import WORKER_STOP_SIGNALS, hold_stop_signals_for_the_fork, take_stop_signals
from lib.auth import load_clients
from manage import gunicorn_command, unmounted_scopes
from tests.helpers import (QUOTING_TOKEN, assert_quoted_safely, broken_module, code_raising_secrets, free_port,
                           gunicorn_logging_to, gunicorn_server, http_request, post, server_environment, wait_for,
                           wait_until_healthy)

SECRET = 'pa55-Secret-x9'
GUNICORN = gunicorn_command()


def run_gunicorn(pythonpath=None, **environ):
    """Run gunicorn as the image does, with environ over the test servers' environment; return the result."""
    environment = {key: value for key, value in server_environment(PORT=str(free_port()), **environ).items()
                   if not key.startswith('DEFAULT_DB') or key in environ}
    if pythonpath is not None:
        environment['PYTHONPATH'] = os.pathsep.join([str(pythonpath), str(settings.BASE_DIR)])
    return subprocess.run(GUNICORN, cwd=settings.BASE_DIR, env=environment, capture_output=True, text=True,
                          timeout=60)


def assert_one_line(result, *fragments):
    """Check gunicorn failed with one 'dbapi: ' line on stderr holding fragments, no traceback and no secret."""
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert result.stderr.splitlines() == [result.stderr.strip()] and result.stderr.startswith('dbapi: '), output
    assert 'Traceback' not in output and SECRET not in output
    for fragment in fragments:
        assert fragment in result.stderr


@pytest.mark.parametrize('url', [f'postgresql://dbapi:{SECRET}%zz@127.0.0.1:1/db',
                                 f'postgresql://dbapi:{SECRET} more@127.0.0.1:1/db'])
def test_a_malformed_database_url_is_one_line(url):
    assert_one_line(run_gunicorn(DATABASE_URL=url), 'DATABASE_URL', 'percent-encode')


@pytest.mark.parametrize('packages, named', [
    ('no_such_package', 'MODULE_PACKAGES'),
    ('json', 'MODULE_PACKAGES'),  # a package with no module folder (trial K: its workers failed to boot, exit 3)
    ('modules,modules', 'MODULE_PACKAGES names modules more than once'),  # trial M: its workers failed to boot
])
def test_module_packages_naming_no_package_is_one_line(database_url, packages, named):
    result = run_gunicorn(DATABASE_URL=database_url, MODULE_PACKAGES=packages, WEB_CONCURRENCY='2')
    assert_one_line(result, named)
    assert 'Booting worker' not in result.stdout + result.stderr


def test_a_bad_token_is_one_line():
    assert_one_line(run_gunicorn(BEARER=f'{SECRET}!#'), 'BEARER', 'RFC 6750')


@pytest.mark.parametrize('environ, fragment', [
    ({'DATABASE_URL': 'postgresql://dbapi:dbapi@127.0.0.1:1/db'}, "the password of database 'default'"),  # APP_ID
    ({'DATABASE_URL': 'postgresql://dbapi:info@127.0.0.1:1/db'}, "the password of database 'default'"),  # a level
    ({'BEARER': 'http'}, 'a bearer token'),  # a field name
    ({'DATABASE_URL': 'postgresql://dbapi:T23%3A59@127.0.0.1:1/db'}, "the password of database 'default'"),  # a time
    ({'BEARER': 'prod-acme', 'ENVIRONMENT': 'prod-acme', 'DATABASE_URL': 'postgresql://u@127.0.0.1:1/db'},
     'a bearer token')])
def test_a_secret_that_every_log_line_holds_as_a_word_is_one_line(environ, fragment):
    """Redacted, every line lost that word: service.name became [REDACTED], and labels.elk_index an index
    Elasticsearch refuses; the secret itself is never printed."""
    result = run_gunicorn(**environ)
    assert_one_line(result, fragment, 'every log line holds')
    assert 'dbapi:dbapi' not in result.stderr and "'info'" not in result.stderr and "'http'" not in result.stderr
    assert 'T23:59' not in result.stderr


def test_a_log_path_that_cannot_be_written_is_one_line(tmp_path, database_url):
    blocker = tmp_path / 'a-file'
    blocker.write_text('')
    assert_one_line(run_gunicorn(DATABASE_URL=database_url, LOG_PATH=str(blocker / 'logs')), 'LOG_PATH', 'not writable')


@pytest.mark.parametrize('code, named', [('import no_such_library\n', 'ModuleNotFoundError'),
                                         ('import sys\nsys.exit(3)\n', 'SystemExit: 3')])
def test_a_broken_module_is_one_line_once_before_any_worker(tmp_path, database_url, code, named):
    result = run_gunicorn(broken_module(tmp_path, code), DATABASE_URL=database_url, MODULE_PACKAGES='brokenmods',
                          WEB_CONCURRENCY='3')
    assert_one_line(result, 'broken/routes.py', named)
    assert 'Booting worker' not in result.stdout + result.stderr


def test_a_modules_error_quoted_at_the_start_is_one_line_without_secrets(tmp_path, database_url):
    result = run_gunicorn(broken_module(tmp_path, code_raising_secrets(database_url)), DATABASE_URL=database_url,
                          BEARER=QUOTING_TOKEN, MODULE_PACKAGES='brokenmods')
    assert_one_line(result, 'broken/routes.py')
    assert_quoted_safely(result.stderr, result.stdout + result.stderr, database_url)


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
@pytest.mark.parametrize('stop', ['SIGTERM to the master', 'Ctrl-C to the group'])
def test_a_stop_prints_no_traceback(database_url, worker_class, stop):
    port = free_port()
    process = subprocess.Popen(GUNICORN, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               start_new_session=True,
                               env=server_environment(PORT=str(port), DATABASE_URL=database_url, WEB_CONCURRENCY='2',
                                                      WORKER_CLASS=worker_class))
    try:
        wait_until_healthy(f'http://127.0.0.1:{port}', process)
        time.sleep(0.5)  # the probe's request over: a quick stop (Ctrl-C) cuts one in flight short, and says so
    finally:
        # Ctrl-C reaches every process of the terminal's group: the workers get SIGINT and then the master's SIGQUIT.
        if stop.startswith('Ctrl-C'):
            os.killpg(process.pid, signal.SIGINT)
        else:
            process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=30)
    assert process.returncode == 0
    output = (stdout + stderr).decode(errors='replace')
    assert 'Traceback' not in output and 'SystemExit' not in output and 'race condition' not in output, output


def test_a_database_out_of_reach_does_not_stop_the_start_only_readiness():
    nobody_listens = f'postgresql://dbapi:{SECRET}@127.0.0.1:{free_port()}/db?connect_timeout=2'
    with gunicorn_server(dict(DATABASE_URL=nobody_listens, WEB_CONCURRENCY='1')) as (port, _):
        readiness = http_request(port, 'GET', '/readyz')
    assert readiness.status == 503 and SECRET not in readiness.body.decode()


@pytest.mark.parametrize('ending', ['a bad token', 'a port in use', 'a stop'])
def test_the_metrics_directory_gunicorn_made_is_removed_however_it_ends(tmp_path, database_url, ending):
    temporary = tmp_path / 'tmp'
    temporary.mkdir()
    environ = dict(DATABASE_URL=database_url, WEB_CONCURRENCY='1', TMPDIR=str(temporary), PROMETHEUS_MULTIPROC_DIR='')
    if ending == 'a stop':
        with gunicorn_server(environ) as (port, _):
            assert http_request(port, 'GET', '/metrics').status == 200
            assert list(temporary.glob('dbapi-metrics-*')), 'made while it serves'
    elif ending == 'a bad token':
        assert run_gunicorn(BEARER=f'{SECRET}!#', **environ).returncode == 1
    else:
        with socket.socket() as taken:
            taken.bind(('127.0.0.1', 0))
            taken.listen()
            result = run_gunicorn(**environ, BIND=f'127.0.0.1:{taken.getsockname()[1]}')
        assert result.returncode != 0
    assert list(temporary.glob('dbapi-metrics-*')) == []


def test_sigusr2_starts_a_new_master_with_its_own_workers(database_url):
    """gunicorn's binary upgrade: the new master runs the same command again, and must load the config."""
    port = free_port()
    process = subprocess.Popen(GUNICORN, cwd=settings.BASE_DIR, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True, text=True,
                               env=server_environment(PORT=str(port), DATABASE_URL=database_url, WEB_CONCURRENCY='1'))
    try:
        wait_until_healthy(f'http://127.0.0.1:{port}', process)
        old_master = psutil.Process(process.pid)
        process.send_signal(signal.SIGUSR2)
        # Its old workers have no children; the new master has workers of its own.
        new_master = wait_for(lambda: next((child for child in old_master.children() if child.children()), None), 30,
                              'no new master with workers')
        assert new_master.cmdline()[1:] == GUNICORN, new_master.cmdline()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        output = process.communicate(timeout=60)[0]
    assert 'Failed to read config' not in output and 'Traceback' not in output, output[-3000:]


def test_a_client_scoped_to_a_module_that_is_not_mounted_is_warned_of_once_and_the_start_goes_on(tmp_path,
                                                                                                 database_url):
    tokens = json.dumps({'misspelt': {'token': 'misspelt-token-1', 'modules': ['userz', 'example']}})
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, BEARER_TOKENS=tokens, MODULE_PACKAGES='modules',
                             WEB_CONCURRENCY='2') as (port, _):
        served = post(port, '/example', token='misspelt-token-1')
    assert served.status == 200
    output = (tmp_path / 'stdout').read_text() + (tmp_path / 'stderr').read_text()
    warned = [json.loads(line) for line in output.splitlines() if "'userz'" in line]
    assert len(warned) == 1, warned  # the master's, not one per worker
    assert warned[0]['log.level'] == 'warning', warned
    assert "bearer client 'misspelt' may call the module 'userz', which is not mounted" in warned[0]['message']
    assert 'misspelt-token-1' not in output


def test_a_stop_signal_sent_while_a_worker_is_forked_waits_for_the_worker_and_ends_it():
    """gunicorn.conf.py's pre_fork and post_fork: a SIGTERM that reached a worker before post_fork went to the master's
    handlers it still had, which only queue it, and the worker served on until the master's graceful timeout killed
    it (trial Q: a stop while workers booted took 37 s, 2 times in 10)."""
    queued = []
    masters = signal.signal(signal.SIGTERM, lambda signum, frame: queued.append(signum))  # as gunicorn's: it queues
    try:
        hold_stop_signals_for_the_fork()
        pid = os.fork()
        if pid == 0:  # the worker, before post_fork
            os.kill(os.getpid(), signal.SIGTERM)
            take_stop_signals()
            os._exit(0)  # reached only when the signal was lost
        assert not signal.pthread_sigmask(signal.SIG_BLOCK, []) & WORKER_STOP_SIGNALS, 'the master takes them again'
        status = os.waitpid(pid, 0)[1]
    finally:
        signal.signal(signal.SIGTERM, masters)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM and not queued


def test_the_unmounted_module_warning_says_a_client_by_its_place_when_a_client_is_known_by_its_sha256():
    """A name holding a sha256 client's token among other characters (`<token>==`) was quoted in the warning, which
    start errors say by place (trial BN's rule, session 30's note)."""
    tokens = json.dumps({'other': {'sha256': hashlib.sha256(b's3cr3t-token-value').hexdigest()},
                         's3cr3t-token-value==': {'token': 'own-token-1234', 'modules': ['userz']}})
    clients = load_clients({'BEARER_TOKENS': tokens, 'ENVIRONMENT': 'test'})
    warned = unmounted_scopes([SimpleNamespace(module='users')], clients)
    assert warned == ["bearer client number 2 of BEARER_TOKENS may call the module 'userz', which is not mounted "
                      '(mounted: users): if the name is misspelt, the module meant answers that client 403'], warned
