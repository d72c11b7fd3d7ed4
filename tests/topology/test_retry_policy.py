"""nginx's retry policy, shown on upstreams that misbehave at exact moments: a refused connection moves
the request on; a POST that reached an upstream is never sent to another; a GET is; nginx's own
502 and 504 are problem details. And its balancing: a busy upstream gets no new request."""
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import free_ports, http_request, post, wait_for

from .helpers import FakeUpstream, running_nginx

pytestmark = pytest.mark.slow


@pytest.fixture()
def upstreams():
    """A factory of fake upstreams, closed after the test."""
    made = []

    def make(behaviour):
        made.append(FakeUpstream(behaviour))
        return made[-1]
    yield make
    for upstream in made:
        upstream.close()


def logged_lines(proxy, count):
    """Return nginx's access lines once there are count of them (nginx writes them within a second), else None."""
    lines = proxy.access_log()
    return lines if len(lines) >= count else None


def test_a_refused_connection_moves_the_post_to_another_upstream(upstreams):
    healthy = upstreams('answer')
    closed_port = free_ports(1)
    with running_nginx([closed_port, healthy.port]) as proxy:
        replies = [post(proxy.port, '/probe/things/create', {'n': n}) for n in range(4)]
        lines = wait_for(lambda: logged_lines(proxy, len(replies)), 5, 'nginx did not log every request')
    assert [reply.status for reply in replies] == [200] * 4
    assert len(healthy.received) == 4
    moved = [line for line in lines if ',' in line['nginx.upstream.address']]
    assert moved and moved[0]['nginx.upstream.bytes_sent'][0] == 0


def test_a_post_that_reached_an_upstream_is_never_sent_again(upstreams):
    dropping, healthy = upstreams('drop'), upstreams('answer')
    with running_nginx([dropping.port, healthy.port]) as proxy:
        statuses = []
        while not dropping.received and len(statuses) < 4:
            last = post(proxy.port, '/probe/things/create', {'n': len(statuses)})
            statuses.append(last.status)
    assert dropping.received, 'round robin never chose the dropping upstream'
    assert statuses[-1] == 502
    assert last.json()['detail'] == 'No dbapi replica gave an answer. A request that reached one may have run.'
    # Every POST was received exactly once, by one upstream or the other.
    assert len(dropping.received) + len(healthy.received) == len(statuses)


def test_a_get_that_failed_after_sending_is_retried(upstreams):
    dropping, healthy = upstreams('drop'), upstreams('answer')
    with running_nginx([dropping.port, healthy.port]) as proxy:
        statuses = []
        while not dropping.received and len(statuses) < 4:
            statuses.append(http_request(proxy.port, 'GET', '/healthz').status)
    assert dropping.received and statuses == [200] * len(statuses)
    # The GET the dropping upstream received was sent again to the healthy one.
    assert len(healthy.received) == len(statuses)


def assert_nginx_problem(reply, status, title):
    """Check nginx's own error page: problem+json tied to the X-Request-ID it sent."""
    assert reply.status == status
    assert reply.headers['Content-Type'] == 'application/problem+json'
    body = reply.json()
    assert set(body) == {'type', 'title', 'status', 'detail', 'request_id'}
    assert (body['type'], body['title'], body['status']) == ('about:blank', title, status)
    assert body['request_id'] == reply.headers['X-Request-ID']


def test_no_upstream_at_all_is_a_502_problem_that_says_the_request_did_not_run():
    """Every connect refused: no replica got a byte of it, so it may be sent again; it said "may have run" (trial
    BP)."""
    closed = free_ports(2)
    with running_nginx([closed, closed + 1]) as proxy:
        reply = post(proxy.port, '/probe/')
    assert_nginx_problem(reply, 502, 'Bad Gateway')
    assert reply.json()['detail'] == 'No dbapi replica could be reached: the request did not run. Try again shortly.'


def test_an_upstream_slower_than_the_proxy_timeout_is_a_504_problem(upstreams):
    hanging = upstreams('hang')
    # A 1 ms deadline and no pool wait put nginx's read timeout at 5 s (deadline + pool wait + 5 s).
    with running_nginx([hanging.port], REQUEST_DEADLINE_MS='1', DB_POOL_TIMEOUT_MS='0') as proxy:
        assert_nginx_problem(post(proxy.port, '/probe/'), 504, 'Gateway Timeout')
    assert len(hanging.received) == 1  # a POST that timed out is not sent to anyone else


def test_a_request_goes_to_the_upstream_with_the_fewest_in_flight(upstreams):
    busy, idle = upstreams('hang'), upstreams('answer')
    with running_nginx([busy.port, idle.port], DB_STATEMENT_TIMEOUT_MS='1000') as proxy, \
            ThreadPoolExecutor(4) as background:
        for n in range(4):  # until one request hangs in the busy upstream
            pending = background.submit(post, proxy.port, '/probe/things/get', {'n': n})
            wait_for(lambda: pending.done() or busy.received, 10, 'no upstream answered or hung')
            if busy.received:
                break
        answered_before = len(idle.received)
        replies = [post(proxy.port, '/probe/things/get', {'n': n}) for n in range(6)]
        busy.close()  # nginx then answers the hanging request with a 502
    assert len(busy.received) == 1, 'the request nginx sent first should be the only one the busy upstream got'
    assert [reply.status for reply in replies] == [200] * 6
    assert len(idle.received) == answered_before + 6


def test_nginx_passes_a_request_on_only_once_its_whole_body_arrived(upstreams):
    """A slow body never reaches a replica's worker behind nginx (contract section 1): nginx reads it first."""
    upstream = upstreams('answer')
    with running_nginx([upstream.port]) as proxy:
        with socket.create_connection(('127.0.0.1', proxy.port), timeout=10) as client:
            client.sendall(b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                           b'Content-Length: 10\r\n\r\n{"a": ')
            time.sleep(1)
            assert upstream.received == []  # half a body: nothing passed on yet
            client.sendall(b'1}  ')
            assert client.recv(65536).startswith(b'HTTP/1.1 200 ')
    assert upstream.received == ['POST /probe/echo HTTP/1.1']


def test_a_body_that_stops_arriving_is_nginxs_408_in_its_log_and_no_answer(upstreams):
    """Contract, "Our choices" and section 3: nginx logs a 408 once its client_body_timeout (60 s, its default) has
    passed with nothing sent, and closes the connection without an answer; the contract once said it answered one."""
    upstream = upstreams('answer')
    with running_nginx([upstream.port]) as proxy:
        with socket.create_connection(('127.0.0.1', proxy.port), timeout=75) as client:
            client.sendall(b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n'
                           b'X-Request-ID: body-stopped\r\nContent-Length: 10\r\n\r\n{"a": ')
            started = time.monotonic()
            answer = b''.join(iter(lambda: client.recv(65536), b''))
            waited = time.monotonic() - started
        lines = wait_for(lambda: logged_lines(proxy, 1), 5, 'nginx did not log the request')
    assert answer == b'' and 55 < waited < 70, (answer, waited)
    assert [line['http.response.status_code'] for line in lines] == [408] and upstream.received == []
