"""Zero-downtime restarts (issue 11): `make stack`'s rolling restart (SIGHUP) restarts every replica under a
write load through nginx, and not one request fails; every 2xx answer is one row, and no row lacks one. A lone
replica is restarted behind a stand-in."""
import collections
import contextlib
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psutil
import pytest

import settings
from manage import counted
from ops.stack import answers
from tests.helpers import codes_of_run, on_a_terminal, port_open, post, run_sql, wait_for, whole_or_first_piece

from .helpers import (MODULE_PACKAGES, READY_LINE, START_TIMEOUT_SECONDS, DatabaseRelay, WriteLoad,
                      free_ports_below_the_ephemeral_range, read_json_lines, running_stack, stack_environment,
                      worker_group)

pytestmark = pytest.mark.slow

LOAD_THREADS = 6
MAX_REQUESTS_PER_THREAD = 20_000  # a bound only; the restart's end stops the load
RESTART_TIMEOUT_SECONDS = 120


# nginx's reload closes the kept-alive client connections that hold no request: one sent on such a connection just
# then gets no answer at all. nginx never read it, so no replica ran it, and it is safe to send again, POST included.
UNANSWERED = {'RemoteDisconnected', 'ConnectionResetError', 'BrokenPipeError'}


@pytest.mark.parametrize('replicas, keep_alive', [(3, False), (1, False), (3, True)])
def test_a_rolling_restart_under_a_write_load_fails_no_request(tmp_path_factory, topology_database_url, replicas,
                                                               keep_alive):
    run_id = uuid.uuid4().hex[:12]
    # Each reload puts the replica restarted before back and takes the next out: n + 1, not 2n (trial AQ).
    finished_line = (f'rolling restart of {counted(replicas, "replica")} finished '
                     f'({counted(replicas + 1, "reload")} of nginx)').encode()
    base_port = free_ports_below_the_ephemeral_range(replicas + 2)
    with running_stack(tmp_path_factory, topology_database_url, replicas=replicas, base_port=base_port,
                       GRACEFUL_TIMEOUT='10') as stack:
        groups_before = [worker_group(port) for port in stack.replica_ports]
        with WriteLoad(stack, run_id, LOAD_THREADS, MAX_REQUESTS_PER_THREAD, keep_alive) as load:
            time.sleep(1)
            stack.process.send_signal(signal.SIGHUP)
            wait_for(lambda: b'rolling restart of' in stack.log_path.read_bytes(), 10, 'the rolling restart did not start')
            stack.process.send_signal(signal.SIGHUP)  # while the first runs: refused, not queued
            wait_for(lambda: finished_line in stack.log_path.read_bytes(), RESTART_TIMEOUT_SECONDS,
                     'the rolling restart did not finish', interval=0.5, on_timeout=lambda: stack.log_text()[-3000:])
            time.sleep(1)
        groups_after = [worker_group(port) for port in stack.replica_ports]
    log = stack.log_path.read_bytes()
    assert log.count(finished_line) == 1 and b'rolling restart refused: one is running' in log
    assert all(before != after for before, after in zip(groups_before, groups_after)), 'a replica was not restarted'
    outcomes = collections.Counter(attempt.status for attempt in load.attempts)
    assert set(outcomes) <= ({201} | UNANSWERED if keep_alive else {201}), outcomes
    rows = codes_of_run(topology_database_url, run_id)
    assert rows == {attempt.code for attempt in load.attempts if attempt.status == 201} and len(rows) > 100
    # The stack's own health and readiness checks read their answers whole: none is logged as a failure.
    probes = [line for line in read_json_lines(stack.log_path) if line.get('log', {}).get('logger') == 'dbapi.access'
              and line.get('url', {}).get('path') in ('/healthz', '/readyz') and whole_or_first_piece(line)]
    assert probes and not [line for line in probes if line['event']['outcome'] == 'failure'], probes[:3]


@pytest.mark.parametrize('replicas', [1, 2])
def test_a_rolling_restart_onto_code_that_cannot_start_leaves_the_stack_serving(tmp_path_factory,
                                                                                topology_database_url, replicas):
    modules = tmp_path_factory.mktemp('breakable')
    (modules / 'breakable').mkdir()
    (modules / 'breakable' / '__init__.py').write_text('')
    base_port = free_ports_below_the_ephemeral_range(replicas + 2)
    with running_stack(tmp_path_factory, topology_database_url, replicas=replicas, base_port=base_port,
                       GRACEFUL_TIMEOUT='10', MODULE_PACKAGES=f'{MODULE_PACKAGES},breakable',
                       PYTHONPATH=f'{modules}:{settings.BASE_DIR}') as stack:
        assert stack.post('/session/state').status == 200
        broken = modules / 'breakable' / 'broken'
        broken.mkdir()
        (broken / '__init__.py').write_text('')
        (broken / 'routes.py').write_text('this is not Python\n')
        stack.process.send_signal(signal.SIGHUP)
        wait_for(lambda: b'rolling restart stopped' in stack.log_path.read_bytes(), RESTART_TIMEOUT_SECONDS,
                 'the rolling restart did not stop', interval=0.5, on_timeout=lambda: stack.log_text()[-3000:])
        assert stack.process.poll() is None, stack.log_text()[-3000:]
        statuses = collections.Counter(stack.post('/session/state').status for _ in range(20))
        if replicas > 1:  # a lone replica is never stopped: its stand-in failed instead, and is not restarted
            wait_for(lambda: b'restarting it in 4 s' in stack.log_path.read_bytes(), RESTART_TIMEOUT_SECONDS,
                     'the failing replica was not restarted ever later', interval=0.5,
                     on_timeout=lambda: stack.log_text()[-3000:])
        (broken / 'routes.py').unlink()  # so that the restarting replica can come back before the stack stops
    assert statuses == {200: 20}, statuses
    if replicas > 1:
        assert_restarted_ever_later(stack, f'replica 1 (port {stack.replica_ports[0]})')


def assert_restarted_ever_later(stack, name):
    """Assert that the stack restarted name after 1, 2 then 4 s (its exits came within seconds of its starts),
    saying so on stderr and in an ECS error line with the exit code."""
    said = re.findall(rf'^stack: {re.escape(name)} exited with code -?[0-9]+; restarting it in ([0-9]+) s$',
                      stack.log_text(), re.MULTILINE)
    assert said[:3] == ['1', '2', '4'], said
    logged = [line for line in read_json_lines(stack.log_path) if line.get('log', {}).get('logger') == 'dbapi.stack'
              and line['message'].startswith(f'{name} exited')]
    assert [line['log.level'] for line in logged[:3]] == ['error'] * 3, logged[:3]
    assert all(line['process']['exit_code'] != 0 for line in logged[:3]), logged[:3]


@contextlib.contextmanager
def squatting(port, answering, timeout):
    """Listen on 127.0.0.1:port as soon as it is free (within timeout seconds), as another program might, for the
    block; answering, reply 200 to every request there."""
    deadline = time.monotonic() + timeout
    while True:
        squatter = socket.socket()
        squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            squatter.bind(('127.0.0.1', port))
            squatter.listen()
            break
        except OSError:
            squatter.close()
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)
    server = threading.Thread(target=answer_ok_to_everything, args=(squatter,), daemon=True)
    if answering:
        server.start()
    try:
        yield
    finally:
        squatter.shutdown(socket.SHUT_RDWR)  # wakes the accept: a listener closed under it would live on
        squatter.close()
        if answering:
            server.join(5)


def answer_ok_to_everything(squatter):
    """Answer every request on squatter's connections with a 200, until it is shut down."""
    while True:
        try:
            connection, _ = squatter.accept()
        except OSError:
            return
        with connection:
            connection.recv(65536)
            connection.sendall(b'HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}')


@pytest.mark.parametrize('replicas, answering', [(1, False), (1, True), (2, True)])
def test_a_replica_that_cannot_come_back_gets_no_request_until_it_does(tmp_path_factory, topology_database_url,
                                                                       replicas, answering):
    """A lone replica's stand-in serves alone meanwhile; with more, the others do."""
    run_id = uuid.uuid4().hex[:12]
    base_port = free_ports_below_the_ephemeral_range(replicas + 2)
    with running_stack(tmp_path_factory, topology_database_url, replicas=replicas, base_port=base_port,
                       GRACEFUL_TIMEOUT='10') as stack:
        with WriteLoad(stack, run_id, LOAD_THREADS, MAX_REQUESTS_PER_THREAD) as load:
            time.sleep(1)
            stack.process.send_signal(signal.SIGHUP)
            # Another program takes the replica's port while it restarts (one answering 200 is not the replica either).
            with squatting(stack.replica_ports[0], answering, RESTART_TIMEOUT_SECONDS):
                wait_for(lambda: b'rolling restart stopped' in stack.log_path.read_bytes(), RESTART_TIMEOUT_SECONDS,
                         'the rolling restart did not stop', interval=0.5, on_timeout=lambda: stack.log_text()[-3000:])
                time.sleep(2)  # the stand-in, or the other replica, serves alone
            done = b'its stand-in stopped' if replicas == 1 else b'nginx sends to it again'
            wait_for(lambda: b'is ready again; ' + done in stack.log_path.read_bytes(),
                     RESTART_TIMEOUT_SECONDS, 'the replica did not take its requests back', interval=0.5,
                     on_timeout=lambda: stack.log_text()[-3000:])
            time.sleep(1)
    outcomes = collections.Counter(attempt.status for attempt in load.attempts)
    assert set(outcomes) == {201}, outcomes
    rows = codes_of_run(topology_database_url, run_id)
    assert rows == {attempt.code for attempt in load.attempts if attempt.status == 201} and len(rows) > 100


def answers_while_taken_out(stack, port, requests):
    """Kill the replica on port, let another program take the port (it answers 200 {} to anything), and once the
    replica failed to start again, POST requests times through nginx and ask for a rolling restart, which must be
    refused; return the answers once the replica is ready again and back in nginx's list."""
    os.killpg(worker_group(port), signal.SIGKILL)
    with squatting(port, True, RESTART_TIMEOUT_SECONDS):
        wait_for(lambda: f'replica 1 (port {port}) exited with code 1;'.encode() in stack.log_path.read_bytes(),
                 RESTART_TIMEOUT_SECONDS, 'the replica did not fail to start again', interval=0.5,
                 on_timeout=lambda: stack.log_text()[-3000:])
        answers = [stack.post('/session/state') for _ in range(requests)]
        stack.process.send_signal(signal.SIGHUP)
        wait_for(lambda: f'rolling restart refused: replica 1 (port {port}) is not ready again yet'.encode()
                 in stack.log_path.read_bytes(), 10, 'the rolling restart was not refused',
                 on_timeout=lambda: stack.log_text()[-3000:])
    wait_for(lambda: f'replica 1 (port {port}) is ready again; nginx sends to it again'.encode()
             in stack.log_path.read_bytes(), RESTART_TIMEOUT_SECONDS, 'the replica did not take requests back',
             interval=0.5, on_timeout=lambda: stack.log_text()[-3000:])
    return answers


def test_a_replica_that_exited_gets_no_request_until_it_is_ready_again(tmp_path_factory, topology_database_url):
    """nginx sent it requests while the stack waited to start it again (up to 32 s, trial AS): another program that
    took its port answered them, and a rolling restart asked for meanwhile took the other replica out, leaving nginx
    this one alone: 394 of 1908 POSTs were 502s."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=2,
                       base_port=free_ports_below_the_ephemeral_range(4), GRACEFUL_TIMEOUT='10') as stack:
        answers = answers_while_taken_out(stack, stack.replica_ports[0], 20)
    assert [answer.status for answer in answers] == [200] * 20
    assert not [answer for answer in answers if answer.json() == {}], 'the other program answered'


def test_a_lone_replica_that_exited_gets_no_request_until_it_is_ready_again(tmp_path_factory, topology_database_url):
    """A lone replica stayed in nginx's list (it cannot be empty): the program that took its port answered its
    requests (trial AT: 45 fake 200s), and a rolling restart asked for meanwhile was not refused. nginx now lists it
    `down` and answers its 502 at once."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=1,
                       base_port=free_ports_below_the_ephemeral_range(3), GRACEFUL_TIMEOUT='10') as stack:
        answers = answers_while_taken_out(stack, stack.replica_ports[0], 5)
        after = stack.post('/session/state')
    assert [(answer.status, answer.headers['Content-Type']) for answer in answers] == [
        (502, 'application/problem+json')] * 5, 'nginx answers itself, the other program gets nothing'
    assert after.status == 200 and after.json() != {}


def test_a_replica_restarted_while_a_database_hangs_gets_no_request_until_it_is_ready(tmp_path_factory,
                                                                                     topology_database_url):
    """It listened but was not ready (its /readyz a 503): the failed restart put it back in nginx's list at once, and
    it never said it was ready again (trial AB)."""
    relay = DatabaseRelay(topology_database_url)
    with running_stack(tmp_path_factory, topology_database_url, replicas=2, GRACEFUL_TIMEOUT='10', LOG_LEVEL='INFO',
                       DB_NAMES='default,reports', REPORTS_DATABASE_URL=relay.dsn) as stack:
        first = stack.replica_ports[0]
        relay.hanging.set()
        stack.process.send_signal(signal.SIGHUP)
        wait_for(lambda: f'rolling restart stopped: replica 1 (port {first})'.encode() in stack.log_path.read_bytes(),
                 RESTART_TIMEOUT_SECONDS, 'the rolling restart did not stop', interval=0.5,
                 on_timeout=lambda: stack.log_text()[-3000:])
        stopped_at = len(stack.log_path.read_bytes())
        assert {stack.post('/session/state').status for _ in range(20)} == {200}
        relay.resume()
        wait_for(lambda: f'replica 1 (port {first}) is ready again; nginx sends to it again'.encode()
                 in stack.log_path.read_bytes(), RESTART_TIMEOUT_SECONDS, 'the replica did not take requests back',
                 interval=0.5, on_timeout=lambda: stack.log_text()[-3000:])
    relay.close()
    # Read once the stack has stopped: every access line is written by then (only these 20 call /session/state).
    served_by = collections.Counter(line['service']['node']['name'] for line in read_json_lines(stack.log_path,
                                                                                                stopped_at)
                                    if line.get('url', {}).get('path') == '/session/state')
    assert sum(served_by.values()) == 20 and all(name.endswith('-2') for name in served_by), served_by


def test_a_replica_that_dies_during_a_rolling_restart_is_restarted_at_once(tmp_path_factory, topology_database_url):
    """The supervisor ran the restart through to its end before it looked at the replicas again: the other of two
    replicas, killed while the first drained a slow request, stayed dead until the restart reached it (a full
    outage meanwhile)."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=2, GRACEFUL_TIMEOUT='15') as stack:
        first, second = stack.replica_ports
        with ThreadPoolExecutor(1) as pool:
            slow = pool.submit(post, first, '/probe/hold', {'seconds': 8})  # the first replica's stop waits for it
            wait_for(lambda: run_sql(topology_database_url, "SELECT 1 FROM pg_stat_activity WHERE state = 'active' "
                                     "AND query LIKE 'SELECT pg_sleep(8%%'"), 10, 'the hold did not start')
            stack.process.send_signal(signal.SIGHUP)
            wait_for(lambda: b'rolling restart of 2 replicas started' in stack.log_path.read_bytes(), 10,
                     'the rolling restart did not start')
            os.killpg(worker_group(second), signal.SIGKILL)
            wait_for(lambda: answers(second), 6, 'the killed replica was not restarted',
                     on_timeout=lambda: stack.log_text()[-3000:])
            restarted_during_the_restart = b'rolling restart of 2 replicas finished' not in stack.log_path.read_bytes()
            assert slow.result().status == 200
        wait_for(lambda: b'rolling restart of 2 replicas finished' in stack.log_path.read_bytes(),
                 RESTART_TIMEOUT_SECONDS, 'the rolling restart did not finish', interval=0.5)
    assert restarted_during_the_restart
    assert f'replica 2 (port {second}) exited with code -9; restarting it'.encode() in stack.log_path.read_bytes()


def test_a_stop_during_a_lone_replicas_restart_stops_nginx_before_the_stand_in(tmp_path_factory,
                                                                                topology_database_url):
    """SIGTERM while the stand-in served alone stopped the stand-in first, and nginx answered its 502 (trial K): the
    stack's order holds then too, nginx first. A request nginx no longer takes is refused, never a 5xx."""
    run_id = uuid.uuid4().hex[:12]
    with running_stack(tmp_path_factory, topology_database_url, replicas=1, PROCESS_ID='lone',
                       base_port=free_ports_below_the_ephemeral_range(3), GRACEFUL_TIMEOUT='10') as stack:
        with WriteLoad(stack, run_id, LOAD_THREADS, MAX_REQUESTS_PER_THREAD) as load:
            time.sleep(0.5)
            stack.process.send_signal(signal.SIGHUP)
            wait_for(lambda: any(line.get('service', {}).get('node', {}).get('name') == 'lone-2'
                                 for line in read_json_lines(stack.log_path)), 30, 'the stand-in got no request')
            stack.process.send_signal(signal.SIGTERM)
            stack.process.wait(60)
    outcomes = collections.Counter(attempt.status for attempt in load.attempts)
    assert outcomes[201] > 10 and not [status for status in outcomes if status != 201 and status not in (
        'ConnectionRefusedError', *UNANSWERED)], outcomes
    rows = codes_of_run(topology_database_url, run_id)
    assert rows == {attempt.code for attempt in load.attempts if attempt.status == 201}


# A shell that leads the terminal's session: it takes the hangup, passes it on to its job as SIGHUP and waits; the job
# started with SIGHUP's default, or ignoring it (under nohup).
SHELL_LEADER = ('import signal, subprocess, sys; signal.signal(signal.SIGHUP, signal.{}); '
                'job = subprocess.Popen(sys.argv[1:]); '
                'signal.signal(signal.SIGHUP, lambda *_: job.send_signal(signal.SIGHUP)); sys.exit(job.wait())')


@pytest.mark.parametrize('job_sighup, stops', [('SIG_DFL', True), ('SIG_IGN', False)], ids=['a job', 'under nohup'])
def test_the_stacks_terminal_hanging_up_stops_it_or_under_nohup_leaves_it_serving(tmp_path, topology_database_url,
                                                                                  job_sighup, stops):
    """A shell passes its terminal's hangup on to its jobs as SIGHUP, the stack's rolling restart: it restarted every
    replica, nginx's reload failed to open the dead terminal, then the hangup watch stopped it (trial N). A SIGHUP
    once the terminal hung up is that hangup, and stops the stack; under nohup every SIGHUP is a rolling restart."""
    base_port = free_ports_below_the_ephemeral_range(3)
    log_path = tmp_path / 'stack.log'
    environment = stack_environment(topology_database_url, base_port, 1, False, {})
    with open(log_path, 'wb') as log, on_a_terminal([sys.executable, '-m', 'ops.stack'], environment, log,
                                                    SHELL_LEADER.format(job_sighup), log) as (leader, hang_up):
        wait_for(lambda: READY_LINE in log_path.read_bytes(), START_TIMEOUT_SECONDS, 'the stack did not start',
                 on_timeout=lambda: log_path.read_text(errors='replace')[-3000:])
        hang_up()
        if stops:
            assert leader.wait(60) == 0
            assert b'rolling restart' not in log_path.read_bytes() and not port_open(base_port)
        else:
            wait_for(lambda: b'rolling restart of 1 replica finished' in log_path.read_bytes(), 60,
                     'no rolling restart', on_timeout=lambda: log_path.read_text(errors='replace')[-3000:])
            assert leader.poll() is None and answers(base_port)
            os.kill(psutil.Process(leader.pid).children()[0].pid, signal.SIGTERM)
            assert leader.wait(60) == 0
    assert not port_open(base_port + 1), 'the replica serves on'
