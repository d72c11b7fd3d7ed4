"""A replica killed with SIGKILL under load: requests move to the others, no POST runs twice, and the
replica that the stack restarts gets traffic again."""
import os
import signal
import time
import uuid

import pytest

from tests.helpers import codes_of_run, port_open, wait_for

from .helpers import WriteLoad, running_stack, worker_group

pytestmark = pytest.mark.slow

LOAD_THREADS = 6
LOAD_BEFORE_KILL_SECONDS = 1.5
LOAD_AFTER_KILL_SECONDS = 2.5
MAX_REQUESTS_PER_THREAD = 3000  # a bound only; the clock stops the load


def failed(attempt):
    """Tell whether an attempt failed: a 502, or an answer cut short (the replica died after gunicorn had sent the
    headers, say a 201, and before the body, so nginx passed on the headers and then closed the connection; the
    POST may or may not have run, as with a 502)."""
    return attempt.status == 502 or isinstance(attempt.status, str)


@pytest.fixture(scope='module')
def stack(tmp_path_factory, topology_database_url):
    """Three replicas behind nginx, restarted by the stack when they die."""
    with running_stack(tmp_path_factory, topology_database_url, replicas=3) as running:
        yield running


def kill_replica(port):
    """SIGKILL every process of the replica on port, as a dying container; return when it is gone."""
    os.killpg(worker_group(port), signal.SIGKILL)
    killed_at = time.monotonic()
    wait_for(lambda: not port_open(port), 10, f'the replica on port {port} still answers')
    return killed_at, time.monotonic()


def group_if_serving(port):
    """Return the process group of the replica on port, or None while it is not serving."""
    try:
        return worker_group(port) if port_open(port) else None
    except OSError:
        return None


def bytes_sent_per_upstream(line):
    """Return how many bytes nginx sent to each upstream it tried for one request."""
    return line['nginx.upstream.bytes_sent']


def test_a_replica_killed_under_load_fails_only_requests_it_had_received(stack, topology_database_url):
    run_id = uuid.uuid4().hex[:12]
    with WriteLoad(stack, run_id, LOAD_THREADS, MAX_REQUESTS_PER_THREAD) as load:
        time.sleep(LOAD_BEFORE_KILL_SECONDS)
        killed_at, gone_at = kill_replica(stack.replica_ports[0])
        time.sleep(LOAD_AFTER_KILL_SECONDS)
    attempts = load.attempts
    # A POST run twice would meet its own unique code: a 409. Only the replica's in-flight requests fail.
    assert all(attempt.status == 201 or failed(attempt) for attempt in attempts), attempts
    failures = [attempt for attempt in attempts if failed(attempt)]
    assert all(attempt.started < gone_at and attempt.ended > killed_at for attempt in failures), failures
    assert len(failures) <= LOAD_THREADS
    after_kill = [attempt for attempt in attempts if attempt.started > gone_at]
    assert len(after_kill) > 20 and all(attempt.status == 201 for attempt in after_kill)
    assert_each_post_ran_at_most_once(stack, topology_database_url, run_id, attempts)


def assert_each_post_ran_at_most_once(stack, database_url, run_id, attempts):
    """Count rows against answers, and check in nginx's log that no request was sent to two replicas."""
    rows = codes_of_run(database_url, run_id)
    succeeded = {attempt.code for attempt in attempts if attempt.status == 201}
    failures = {attempt.code for attempt in attempts if failed(attempt)}
    assert succeeded <= rows <= succeeded | failures
    def lines_of_this_run():
        return [line for line in stack.access_log() if line['http.request.id'].startswith(run_id)]

    def every_line_of_this_run():
        lines = lines_of_this_run()
        return lines if len(lines) >= len(attempts) else None
    # nginx writes a line when it finishes a request, which may be just after the answer went out; on a
    # busy CI machine, with every process of the stack appending to one file, that took over 5 s once.
    lines = wait_for(every_line_of_this_run, 20, 'nginx logged fewer requests than were answered',
                     on_timeout=lambda: missing_lines(attempts, lines_of_this_run()))
    assert len(lines) == len(attempts)
    for line in lines:
        assert sum(1 for sent in bytes_sent_per_upstream(line) if sent > 0) == 1, line
    # A request that met the dead replica's closed port went on to another one, and succeeded there.
    # (test_retry_policy shows the move itself.)
    moved = [line for line in lines if ',' in line['nginx.upstream.address']]
    assert all(line['http.response.status_code'] == 201 for line in moved)


def missing_lines(attempts, lines):
    """Describe the answered requests that nginx's log lacks, for a failure message."""
    logged = {line['http.request.id'] for line in lines}
    missing = [attempt for attempt in attempts if attempt.code not in logged]
    return f'{len(lines)} lines for {len(attempts)} answers; not logged: {missing[:10]}'


def test_a_restarted_replica_is_used_again(stack):
    port = stack.replica_ports[-1]
    old_group = worker_group(port)
    kill_replica(port)
    new_group = wait_for(lambda: group_if_serving(port), 30, 'the stack did not restart the replica')
    assert new_group != old_group
    assert f'(port {port}) exited with code -9; restarting it' in stack.log_text()

    def served_by_new_replica():
        return os.getpgid(stack.post('/probe/pid').json()['pid']) == new_group
    # nginx never rests a replica (max_fails=0): it is tried again as soon as it accepts connections.
    wait_for(served_by_new_replica, 20, 'nginx never sent traffic to the restarted replica', interval=0.05)
