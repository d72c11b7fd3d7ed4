"""Issue 11: one slow caller never stalls the others: the worker model, worker timeouts, a bounded /readyz,
bulkheads, shedding."""
import collections
import contextlib
import http.client
import io
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg2
import psycopg2.extensions
import pytest

import manage
import settings
from lib.auth import load_clients
from lib.db.green import make_psycopg2_cooperative
from lib.db.guard import StatementPastDeadline
from lib.db.waiting import finish_by, interruptible_wait
from lib.http.admission import Admission
from lib.errors import ImproperlyConfigured, StartupError
from lib.logs.access import CLIENT_GONE_AFTER_COMMIT_MESSAGE, CUT_SHORT_MESSAGE
from tests.helpers import (ADMIN_TOKEN, BEARER_TOKENS, SINGLE_BEARER, Caller, assert_problem, backend_count,
                           gunicorn_logging_to, gunicorn_server, http_request, post, run_sql, running_gunicorn,
                           server_environment, things_with_code, throwaway_postgres, wait_for, whole_or_first_piece)


# The worker model: gevent workers, psycopg2 waiting through gevent's hub


@pytest.fixture()
def cooperative_psycopg2():
    """psycopg2 waiting through gevent, as in a gevent worker, for the test only."""
    make_psycopg2_cooperative()
    try:
        yield
    finally:
        psycopg2.extensions.set_wait_callback(None)


def test_queries_of_several_greenlets_wait_side_by_side(database_url, cooperative_psycopg2):
    import gevent

    def sleep_in_postgres():
        conn = psycopg2.connect(database_url)
        try:
            with conn.cursor() as cursor:
                cursor.execute('SELECT pg_sleep(0.5)')
        finally:
            conn.close()
    _, seconds = timed(lambda: gevent.joinall([gevent.spawn(sleep_in_postgres) for _ in range(3)], raise_error=True))
    assert seconds < 1.2  # one after the other would take 1.5 s


def test_copy_is_refused_by_psycopg2_under_gevent_as_modules_md_says(database_url, cooperative_psycopg2):
    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cursor, pytest.raises(psycopg2.ProgrammingError, match='asynchronous callback'):
            cursor.copy_expert('COPY (SELECT 1) TO STDOUT', io.StringIO())
    finally:
        conn.close()


# gunicorn's timeout (WORKER_TIMEOUT)


@pytest.mark.parametrize('statement_ms, expected', [(0, 0), (30000, 45), (1500, 17)])
def test_the_worker_timeout_outlasts_the_statement_timeout_and_is_off_without_one(monkeypatch, statement_ms, expected):
    monkeypatch.delenv('WORKER_TIMEOUT', raising=False)
    assert settings.worker_timeout(statement_ms) == expected


@pytest.mark.parametrize('statement_ms, worker_seconds, allowed', [
    (30000, '0', True), (30000, '31', True), (30000, '30', False), (0, '0', True), (0, '60', False)])
def test_a_worker_timeout_that_could_kill_a_running_statement_is_refused(monkeypatch, statement_ms, worker_seconds,
                                                                        allowed):
    monkeypatch.setenv('WORKER_TIMEOUT', worker_seconds)
    if allowed:
        assert settings.worker_timeout(statement_ms) == int(worker_seconds)
    else:
        with pytest.raises(ImproperlyConfigured, match='WORKER_TIMEOUT'):
            settings.worker_timeout(statement_ms)


@pytest.mark.slow
def test_with_no_statement_timeout_a_20_second_action_gets_its_answer(database_url):
    # gunicorn's timeout used to be derived from the statement timeout: 15 s for none, and the worker was killed.
    with running_gunicorn(database_url, DB_STATEMENT_TIMEOUT_MS='0', WORKER_TIMEOUT='') as port:
        reply = post(port, '/slow/sleep', {'seconds': 20})
    assert reply.status == 200, reply.body
    assert reply.json() == {'slept': 20}


# /readyz within a second, whatever the database does


@pytest.fixture()
def silent_database():
    """A server on 127.0.0.1 that accepts TCP connections and never answers; yields (DSN, open connection counts)."""
    listener = socket.create_server(('127.0.0.1', 0))
    accepted, counts = [], []

    def accept_forever():
        with contextlib.suppress(OSError):
            while True:
                accepted.append(listener.accept()[0])
                counts.append(sum(1 for conn in accepted if still_open(conn)))
    threading.Thread(target=accept_forever, daemon=True).start()
    yield f'host=127.0.0.1 port={listener.getsockname()[1]} dbname=x user=x', counts
    listener.close()
    for conn in accepted:
        conn.close()


def still_open(conn):
    """Tell whether the peer of an accepted connection has not closed it, reading (and dropping) what it sent."""
    conn.setblocking(False)
    try:
        while conn.recv(65536):
            pass
        return False
    except BlockingIOError:
        return True
    except OSError:
        return False


def timed(call):
    """Return (call's result, seconds it took)."""
    started = time.monotonic()
    result = call()
    return result, time.monotonic() - started


def test_readyz_answers_503_within_a_second_when_the_database_never_answers(make_app, silent_database):
    dsn, _ = silent_database
    client = make_app(DATABASES={'default': dsn}).test_client()
    response, seconds = timed(lambda: client.get('/readyz'))
    assert_problem(response, 503)
    assert response.headers['Retry-After'] == '1'
    assert seconds < 1, 'the contract says within the second (it took 1.00-1.02 s, trial O)'
    assert seconds > 0.85, 'the databases get 0.9 s of the second (docs/contract.md)'
    health, seconds = timed(lambda: client.get('/healthz'))
    assert health.status_code == 200 and seconds < 0.5


def test_a_scrape_says_a_database_that_never_answers_is_down_within_a_second(make_app, silent_database):
    """contract section 6: a scrape asks every database as /readyz does, so it may take a second, and no more."""
    dsn, _ = silent_database
    client = make_app(DATABASES={'default': dsn}).test_client()
    response, seconds = timed(lambda: client.get('/metrics'))
    assert response.status_code == 200 and seconds < 1
    assert 'dbapi_database_up{database="default"} 0.0' in response.get_data(as_text=True)


def test_readyz_probes_piling_up_hold_one_connection_and_leave_healthz_alone(make_app, silent_database):
    dsn, open_counts = silent_database
    app = make_app(DATABASES={'default': dsn})
    with ThreadPoolExecutor(6) as executor:
        probes = [executor.submit(timed, lambda: app.test_client().get('/readyz')) for _ in range(5)]
        health, health_seconds = timed(lambda: app.test_client().get('/healthz'))
        answers = [probe.result() for probe in probes]
    assert health.status_code == 200 and health_seconds < 0.5
    assert [response.status_code for response, _ in answers] == [503] * 5
    assert max(seconds for _, seconds in answers) < 1.5
    assert max(open_counts, default=0) <= 1, 'a probe left its connection open, or several ran at once'


def test_a_commands_wait_callback_keeps_the_connect_timeout_for_a_database_that_never_answers(silent_database):
    """manage.py and make stack wait through lib.db.waiting's interruptible_wait, so that a stop cancels a statement;
    libpq does not bound an asynchronous connect, and the start's check of a silent database hung for good."""
    dsn, _ = silent_database
    refusals = []

    def check():
        try:
            manage.check_reachable({'reports': dsn})
        except StartupError as exc:
            refusals.append(str(exc))
    before = psycopg2.extensions.get_wait_callback()
    psycopg2.extensions.set_wait_callback(interruptible_wait)
    try:
        checking = threading.Thread(target=check, daemon=True)  # a hang fails the test, and leaves no thread to join
        checking.start()
        checking.join(settings.DB_CONNECT_TIMEOUT + 10)
    finally:
        psycopg2.extensions.set_wait_callback(before)
    assert refusals == ["the database 'reports' cannot be reached: timeout expired (connect_timeout)"]


def test_the_starts_check_of_a_database_keeps_the_connect_timeout_its_dsn_names(silent_database):
    """DB_CONNECT_TIMEOUT is for a DSN that names none, as for the migrations: the check used to replace the DSN's."""
    dsn = f'{silent_database[0]} connect_timeout=1'
    started = time.monotonic()
    with pytest.raises(StartupError, match='timeout expired'):
        manage.check_reachable({'reports': dsn})
    assert settings.DB_CONNECT_TIMEOUT >= 5 and time.monotonic() - started < 4


def test_migrate_stops_in_one_line_when_the_database_never_answers(silent_database):
    """The migrations' connection had no connect_timeout: `manage.py migrate` (and make run, make stack) waited for
    good on a server that accepts and never answers."""
    port = psycopg2.extensions.parse_dsn(silent_database[0])['port']
    result = subprocess.run([sys.executable, 'manage.py', 'migrate'], cwd=settings.BASE_DIR, capture_output=True,
                            text=True, timeout=settings.DB_CONNECT_TIMEOUT + 30,
                            env=server_environment(DATABASE_URL=f'postgresql://x:secret-pw@127.0.0.1:{port}/x',
                                                   DB_CONNECT_TIMEOUT='2'))
    assert result.returncode == 1 and result.stderr.splitlines() == [
        'dbapi: the database cannot be reached: timeout expired (connect_timeout)'], result.stderr


def test_an_answer_that_came_while_the_process_was_busy_is_read_not_taken_for_silence(database_url, monkeypatch):
    """A gevent worker busy parsing other requests' bodies past /readyz's second found the database's answer waiting
    and said the database was not answering (trial BA)."""
    conn = psycopg2.connect(database_url, async_=True)
    try:
        finish_by(conn)
        cursor = conn.cursor()
        cursor.execute('SELECT pg_sleep(0.1), 1')
        deadline = time.monotonic() + 5

        def busy_clock():
            """The process looks at the time once it is done elsewhere: long past the deadline, the answer there."""
            time.sleep(0.4)
            return deadline + 60
        monkeypatch.setattr('lib.db.waiting.time', types.SimpleNamespace(monotonic=busy_clock))
        finish_by(conn, deadline)
        assert cursor.fetchone() == ('', 1)
    finally:
        conn.close()


def test_readyz_is_ready_again_at_once_when_the_database_answers(client):
    response, seconds = timed(lambda: client.get('/readyz'))
    assert response.status_code == 200 and seconds < 1


# Bulkheads and load shedding: a client over its connection limit gets 429, an exhausted pool 503, both at once


HOG_TOKEN = 'hog-token-0123456789'


@pytest.fixture()
def bulkhead_app(make_app):
    """An app whose pool has 3 connections, of which the client "hog" may hold 2; others may hold all 3."""
    tokens = {**BEARER_TOKENS, 'hog': {'token': HOG_TOKEN, 'max_connections': 2}}
    return make_app(BEARER_TOKENS=json.dumps(tokens), DB_POOL_MAX=3, DB_POOL_TIMEOUT_MS=300)


@contextlib.contextmanager
def holding(app, token, count, seconds=2):
    """Keep count connections of app's pool busy with token's slow calls for the block; yield their futures."""
    pool = app.extensions['dbapi'].pools['default']
    busy_before = pool.gauges()['in_use']
    with ThreadPoolExecutor(count) as executor:
        calls = [executor.submit(Caller(app.test_client(), token), '/slow/sleep', {'seconds': seconds})
                 for _ in range(count)]
        wait_for(lambda: pool.gauges()['in_use'] >= busy_before + count, 10, 'the slow calls did not start')
        yield calls


def test_a_client_over_its_connection_limit_gets_429_at_once_while_another_is_served(bulkhead_app):
    with holding(bulkhead_app, HOG_TOKEN, 2) as slow_calls:
        refused, seconds = timed(lambda: Caller(bulkhead_app.test_client(), HOG_TOKEN)('/slow/sleep', {'seconds': 0}))
        served = Caller(bulkhead_app.test_client())('/slow/sleep', {'seconds': 0})
    assert_problem(refused, 429)
    assert refused.headers['Retry-After'] == '1' and seconds < 0.25
    assert served.status_code == 200
    assert [call.result().status_code for call in slow_calls] == [200, 200]
    assert not bulkhead_app.extensions['dbapi'].pools['default'].bulkhead.held, 'every lease left the bulkhead'


def test_an_exhausted_pool_sheds_with_503_within_the_pool_timeout(bulkhead_app):
    with holding(bulkhead_app, ADMIN_TOKEN, 3) as slow_calls:  # admin may hold them all; another client waits
        shed, seconds = timed(lambda: Caller(bulkhead_app.test_client(), SINGLE_BEARER)('/slow/sleep', {'seconds': 0}))
    assert_problem(shed, 503)
    assert shed.headers['Retry-After'] == '1'
    assert 0.3 <= seconds < 0.3 + 0.5
    assert [call.result().status_code for call in slow_calls] == [200] * 3


def test_the_default_limit_applies_to_clients_without_their_own(make_app):
    app = make_app(DB_POOL_MAX=3, DB_CLIENT_MAX_CONNECTIONS=1)
    with holding(app, ADMIN_TOKEN, 1):
        refused = Caller(app.test_client())('/slow/sleep', {'seconds': 0})
        served = Caller(app.test_client(), SINGLE_BEARER)('/slow/sleep', {'seconds': 0})
    assert_problem(refused, 429)
    assert served.status_code == 200


def test_a_streamed_export_holds_its_place_in_the_bulkhead_until_it_ends(make_app):
    app = make_app(DB_CLIENT_MAX_CONNECTIONS=1)
    call = Caller(app.test_client())
    # Ten batches: the first is fetched before the answer starts, the other nine while it is read.
    stream = call('/slow/stream', {'rows': 1000}, buffered=False)
    assert_problem(call('/slow/sleep', {'seconds': 0}), 429)
    stream.get_data()
    stream.close()
    assert call('/slow/sleep', {'seconds': 0}).status_code == 200


@pytest.mark.parametrize('limit', ['0', '-1', '1.5', '2.0', '"2"', 'true', 'null', '1001', '1' + '0' * 5000,
                                   '-' + '1' * 5000])
def test_max_connections_must_be_an_integer_from_1_to_1000(limit):
    """As DB_CLIENT_MAX_CONNECTIONS is; an integer of more digits than int() converts (trial Z: "BEARER_TOKENS is
    not valid JSON") is past the bound too."""
    config = {'ENVIRONMENT': 'test', 'BEARER_TOKENS': '{"x": {"token": "x-token", "max_connections": %s}}' % limit}
    with pytest.raises(ImproperlyConfigured, match='"max_connections" must be an integer from 1 to 1000$'):
        load_clients(config)


def test_max_connections_may_be_1000():
    config = {'ENVIRONMENT': 'test', 'BEARER_TOKENS': '{"x": {"token": "x-token", "max_connections": 1000}}'}
    assert [client.max_connections for client in load_clients(config).values()] == [1000]


# Load shedding: a process admits MAX_REQUESTS_IN_FLIGHT requests; one more is a fast 503, the ops endpoints pass


def in_flight(app):
    """Return how many requests app's admission counts in flight."""
    return admission_of(app).in_flight


def admission_of(app):
    """Return the admission middleware of app."""
    layer = app.wsgi_app
    while not isinstance(layer, Admission):
        layer = layer.wsgi_app
    return layer


def test_a_process_sheds_what_it_cannot_admit_with_a_fast_503_and_the_ops_endpoints_pass(make_app):
    app = make_app(MAX_REQUESTS_IN_FLIGHT=2, DB_POOL_MAX=3)
    with holding(app, ADMIN_TOKEN, 2) as slow_calls:
        shed, seconds = timed(lambda: Caller(app.test_client())('/slow/sleep', {'seconds': 0}))
        # with the one trailing slash any path takes (docs/contract.md section 1): a 404 before, never shed after
        ops = [app.test_client().get(path).status_code
               for path in ('/healthz', '/metrics', '/readyz', '/healthz/', '/metrics/', '/readyz/')]
    body = assert_problem(shed, 503)
    assert shed.headers['Retry-After'] == '1' and seconds < 0.25
    assert 'serving as many requests' in body['detail']
    assert ops == [200] * 6
    assert [call.result().status_code for call in slow_calls] == [200, 200]
    assert in_flight(app) == 0
    assert Caller(app.test_client())('/slow/sleep', {'seconds': 0}).status_code == 200


def test_a_wait_for_room_ends_when_a_request_ends_or_at_its_timeout(make_app):
    app = make_app(MAX_REQUESTS_IN_FLIGHT=1, DB_POOL_MAX=2)
    admission = admission_of(app)
    assert timed(lambda: admission.wait_for_room(5))[1] < 0.1  # room already
    with holding(app, ADMIN_TOKEN, 1, seconds=0.5) as slow_calls:
        _, seconds_to_room = timed(lambda: admission.wait_for_room(5))
        assert slow_calls[0].result().status_code == 200
    assert 0.2 < seconds_to_room < 2  # woken by the held request's end, long before the timeout
    with holding(app, ADMIN_TOKEN, 1, seconds=2):
        _, seconds_to_timeout = timed(lambda: admission.wait_for_room(0.3))
    assert 0.25 < seconds_to_timeout < 1


def test_a_stream_is_in_flight_until_its_body_is_closed(make_app):
    app = make_app(MAX_REQUESTS_IN_FLIGHT=1)
    call = Caller(app.test_client())
    stream = call('/probe/things/export', buffered=False)
    assert in_flight(app) == 1
    assert_problem(call('/probe/echo', {}), 503)
    stream.get_data()
    stream.close()
    assert in_flight(app) == 0 and call('/probe/echo', {}).status_code == 200


def test_a_failing_request_leaves_its_place_too(make_app):
    app = make_app(MAX_REQUESTS_IN_FLIGHT=1)
    call = Caller(app.test_client())
    assert_problem(call('/probe/missing'), 404)
    assert_problem(call('/slow/sleep', {'seconds': 'x'}), 422)
    assert in_flight(app) == 0


@pytest.mark.parametrize('worker_class, expected', [('gevent', 128), ('gthread', 8), ('sync', 1)])
def test_max_requests_in_flight_follows_the_worker_model(monkeypatch, worker_class, expected):
    monkeypatch.delenv('MAX_REQUESTS_IN_FLIGHT', raising=False)
    assert settings.max_requests_in_flight(worker_class, threads=8, pool_max=2) == expected


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gthread', 'sync'])
def test_outside_gevent_a_probe_waits_behind_the_request_a_busy_worker_serves(database_url, worker_class):
    """docs/contract.md section 6: /healthz never waits behind actions under gevent only. A gthread worker of one
    thread, like a sync worker, takes the probe once its request ends."""
    query = f'SELECT pg_sleep({1.5 + random.randint(1, 999) / 100000})'
    seconds_asked = float(query[len('SELECT pg_sleep('):-1])
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', WORKER_CLASS=worker_class, THREADS='1') as port:
        with ThreadPoolExecutor(1) as executor:
            slow = executor.submit(post, port, '/slow/sleep', {'seconds': seconds_asked})
            wait_for(lambda: backend_count(database_url, query), 10, 'the slow request did not start')
            health, health_seconds = timed(lambda: http_request(port, 'GET', '/healthz'))
            assert slow.result().status == 200
    assert health.status == 200 and health_seconds > 0.8, health_seconds


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
@pytest.mark.parametrize('stop_signal', [signal.SIGQUIT, signal.SIGINT], ids=['SIGQUIT', 'SIGINT'])
def test_a_quick_stop_cancels_the_queries_it_cuts(database_url, worker_class, stop_signal):
    """gunicorn's quick stop cut the request, and PostgreSQL ran its query on to its end, its locks held, for ever with
    no statement timeout (trial BS: a double Ctrl-C)."""
    query = f'SELECT pg_sleep({30 + random.randint(1, 999) / 100000})'
    with gunicorn_server(dict(DATABASE_URL=database_url, WEB_CONCURRENCY='1', WORKER_CLASS=worker_class,
                              DB_STATEMENT_TIMEOUT_MS='0', REQUEST_DEADLINE_MS='0')) as (port, master):
        with ThreadPoolExecutor(1) as executor:
            cut = executor.submit(post, port, '/slow/sleep', {'seconds': float(query[len('SELECT pg_sleep('):-1])})
            wait_for(lambda: backend_count(database_url, query), 10, 'the slow request did not start')
            master.send_signal(stop_signal)
            wait_for(lambda: not backend_count(database_url, query), 3, 'the query ran on past the quick stop',
                     on_timeout=lambda: run_sql(database_url, 'SELECT pg_cancel_backend(pid) FROM pg_stat_activity '
                                                'WHERE query = %s', (query,)))
            answer = cut.exception() or cut.result()  # cut with no answer, or the 503 of a worker stopping
    assert isinstance(answer, OSError) or answer.status == 503, answer


@pytest.mark.slow
def test_under_gunicorn_a_flood_of_slow_calls_is_shed_at_once_while_healthz_answers(database_url):
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', MAX_REQUESTS_IN_FLIGHT='3', DB_POOL_MAX='3') as port:
        with ThreadPoolExecutor(8) as executor:
            calls = [executor.submit(timed, lambda: post(port, '/slow/sleep', {'seconds': 1.5})) for _ in range(8)]
            time.sleep(0.5)
            health, health_seconds = timed(lambda: http_request(port, 'GET', '/healthz'))
            replies = [call.result() for call in calls]
    assert health.status == 200 and health_seconds < 0.5
    statuses = sorted(reply.status for reply, _ in replies)
    assert statuses == [200] * 3 + [503] * 5, statuses
    assert all(seconds < 1 for reply, seconds in replies if reply.status == 503)
    assert all(reply.headers['Retry-After'] == '1' for reply, _ in replies if reply.status == 503)


class PipelinedFlood:
    """A connection that sends count copies of one request at once (pipelined: the next is always there to be read)
    and reads every answer, counting the status lines; close() ends it."""

    def __init__(self, port, request, count):
        self.client = socket.create_connection(('127.0.0.1', port))
        self.answers = 0
        self.threads = [threading.Thread(target=self.send, args=(request * count,), daemon=True),
                        threading.Thread(target=self.read, daemon=True)]
        for thread in self.threads:
            thread.start()

    def send(self, data):
        """Send every request, until the connection is closed."""
        with contextlib.suppress(OSError):
            self.client.sendall(data)

    def read(self):
        """Read and count answers until the connection ends."""
        with contextlib.suppress(OSError):
            while chunk := self.client.recv(1 << 16):
                self.answers += chunk.count(b'HTTP/1.1 ')

    def close(self):
        """Close the connection."""
        with contextlib.suppress(OSError):
            self.client.shutdown(socket.SHUT_RDWR)
        self.client.close()


def pipelined(path, body, token):
    """Return the bytes of one kept-alive POST of body to path with token."""
    payload = json.dumps(body).encode()
    return (f'POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n'
            f'Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n').encode() + payload


@pytest.mark.slow
@pytest.mark.parametrize('flood', ['shed', 'unauthorized'])
def test_kept_alive_connections_that_always_have_a_request_ready_leave_the_gevent_worker_serving_the_others(
        database_url, flood):
    """Requests that wait for nothing (a shed 503, a 401), each read at once because the next is already there,
    kept gevent's loop from turning: the admitted request and /healthz waited until the flood was over."""
    request = pipelined('/slow/sleep', {'seconds': 1}, ADMIN_TOKEN if flood == 'shed' else 'not-a-token')
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', WORKER_CLASS='gevent', MAX_REQUESTS_IN_FLIGHT='1',
                          DB_POOL_MAX='1') as port:
        with ThreadPoolExecutor(1) as executor:
            admitted = executor.submit(timed, lambda: post(port, '/slow/sleep', {'seconds': 2}))
            time.sleep(0.5)  # it holds the one place in flight: what the flood asks for is shed
            floods = [PipelinedFlood(port, request, 20_000) for _ in range(8)]
            try:
                time.sleep(0.5)
                health, health_seconds = timed(lambda: http_request(port, 'GET', '/healthz', timeout=30))
                reply, seconds = admitted.result(timeout=60)
            finally:
                for connection in floods:
                    connection.close()
    assert health.status == 200 and health_seconds < 0.5, health_seconds
    assert reply.status == 200 and seconds < 3, seconds  # a 2 s statement
    if flood == 'shed':  # a connection whose request was shed is read again after its Retry-After (1 s), no sooner
        assert all(1 <= connection.answers <= 4 for connection in floods), [c.answers for c in floods]


@pytest.mark.slow
@pytest.mark.parametrize('hops, paused', [('0', True), ('1', False)])
def test_a_shed_connection_waits_for_room_unless_it_is_a_proxys_which_carries_other_clients_requests(
        database_url, hops, paused):
    """Through nginx, whose kept-alive upstream connections carry every client's requests, a probe sent on the
    connection a shed request left waited the second a direct client's re-send waits."""
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', WORKER_CLASS='gevent', MAX_REQUESTS_IN_FLIGHT='1',
                          DB_POOL_MAX='1', TRUSTED_PROXY_HOPS=hops) as port:
        with ThreadPoolExecutor(1) as executor:
            holder = executor.submit(post, port, '/slow/sleep', {'seconds': 3})
            time.sleep(0.5)  # it holds the one place in flight
            kept = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
            shed = post(port, '/slow/sleep', {'seconds': 0}, connection=kept)
            health, seconds = timed(lambda: http_request(port, 'GET', '/healthz', connection=kept))
            kept.close()
            assert holder.result().status == 200
    assert shed.status == 503 and health.status == 200
    assert (seconds > 0.8) if paused else (seconds < 0.3), seconds


def send_body_slowly(port, trickle_seconds):
    """POST /probe/echo declaring a 100-byte body, send 10 bytes of it, then one more every trickle_seconds (or none);
    return (the answer's status line and headers and body as bytes, seconds until it came)."""
    started = time.monotonic()
    with socket.create_connection(('127.0.0.1', port), timeout=15) as client:
        client.sendall(b'POST /probe/echo HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n'
                       b'Authorization: Bearer ' + ADMIN_TOKEN.encode() + b'\r\nContent-Length: 100\r\n\r\n{"a": "    ')
        client.settimeout(trickle_seconds or 15)
        answer = b''
        while b'\r\n\r\n' not in answer or not answer.rstrip().endswith(b'}'):
            try:
                chunk = client.recv(65536)
            except socket.timeout:
                client.sendall(b' ')
                continue
            if not chunk:
                break
            answer += chunk
    return answer, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize('worker_class, trickle_seconds', [('gevent', 0.2), ('gevent', None), ('gthread', None),
                                                            ('gthread', 0.2)])
def test_a_body_sent_too_slowly_is_a_408_at_the_deadline_and_frees_its_slot(database_url, worker_class,
                                                                            trickle_seconds):
    """Straight to gunicorn (nginx's client_body_timeout is not in front): a slow body ends at the request deadline,
    a byte trickled now and then included (with threads, each wait was bounded, not the read: trial AI)."""
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', WORKER_CLASS=worker_class, MAX_REQUESTS_IN_FLIGHT='2',
                          REQUEST_DEADLINE_MS='1500') as port:
        with ThreadPoolExecutor(2) as executor:
            answers = list(executor.map(lambda _: send_body_slowly(port, trickle_seconds), range(2)))
        after = post(port, '/probe/echo', {'a': 1})
    for answer, seconds in answers:
        head, _, body = answer.partition(b'\r\n\r\n')
        assert head.startswith(b'HTTP/1.1 408 ') and b'application/problem+json' in head, answer
        assert json.loads(body)['detail'] == 'The request was not sent in time.'
        assert 1.4 < seconds < 5
    assert after.status == 200  # both slots are free again


@pytest.mark.slow
@pytest.mark.parametrize('trickle_seconds', [None, 0.2])
def test_a_body_sent_too_slowly_to_a_sync_worker_is_a_408_at_the_deadline(database_url, trickle_seconds):
    """A trickled body kept a sync worker reading until gunicorn killed it (WORKER_TIMEOUT), a 500 (trial AI)."""
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', WORKER_CLASS='sync', REQUEST_DEADLINE_MS='1500') as port:
        answer, seconds = send_body_slowly(port, trickle_seconds)
        after = post(port, '/probe/echo', {'a': 1})
    head, _, body = answer.partition(b'\r\n\r\n')
    assert head.startswith(b'HTTP/1.1 408 ') and json.loads(body)['detail'] == 'The request was not sent in time.'
    assert 1.4 < seconds < 5 and after.status == 200


def send_head_unfinished(port):
    """Open a connection to 127.0.0.1:port, send the first lines of a request's head and never its end; return (what
    came back before the connection ended, seconds until it ended)."""
    started = time.monotonic()
    with socket.create_connection(('127.0.0.1', port), timeout=30) as client:
        client.sendall(b'POST /probe/echo HTTP/1.1\r\nHost: localhost\r\n')
        received = b''
        with contextlib.suppress(ConnectionResetError):
            while chunk := client.recv(65536):
                received += chunk
    return received, time.monotonic() - started


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gthread', 'sync'])
def test_a_head_never_finished_is_closed_unanswered_after_keepalive_as_under_gevent(database_url, worker_class):
    """Its thread waited without end under gthread (two such connections took both threads, /healthz with them),
    and a sync worker until gunicorn killed it at WORKER_TIMEOUT, a 500 (trial AL): gunicorn's keepalive, 5 s, bounds
    it, as it does under gevent."""
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', WORKER_CLASS=worker_class, THREADS='2',
                          WORKER_TIMEOUT='60') as port:
        count = 2 if worker_class == 'gthread' else 1  # a sync worker reads one connection at a time
        with ThreadPoolExecutor(count) as executor:
            unfinished = list(executor.map(lambda _: send_head_unfinished(port), range(count)))
        health = http_request(port, 'GET', '/healthz', timeout=10)
    for received, seconds in unfinished:
        assert received == b'' and 4 < seconds < 8, (received, seconds)
    assert health.status == 200


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_transactions_statements_end_at_the_deadline_however_many_there_are(database_url, worker_class):
    """SET LOCAL statement_timeout bounds each statement; the watcher cancels the one running at the deadline, so
    five statements of 0.6 s against a deadline of 1.5 s end at it: a 504, the connection reused, nothing held."""
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1', WORKER_CLASS=worker_class,
                          REQUEST_DEADLINE_MS='1500') as port:
        started = time.monotonic()
        answer = post(port, '/probe/hold_many', {'seconds': 0.6, 'count': 5})
        seconds = time.monotonic() - started
        after = post(port, '/probe/echo_in_a_transaction', {'a': 1})
    assert answer.status == 504 and 1.4 < seconds < 2.2, (answer.status, seconds)
    assert answer.json()['detail'] == ('The request ran past its deadline: the statement running then was cancelled, '
                                       'and its transaction rolled back.')
    assert after.status == 200


# Cancellation: a client that goes away gets its query cancelled, the connection reused, and a 499 in the log


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_an_action_that_raises_system_exit_is_a_500_and_the_service_serves_on(database_url, tmp_path, worker_class):
    """sys.exit(3) in an action ended a gthread worker with gunicorn's "failed to boot" code, which stops the whole
    service; under gevent the request vanished unanswered."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             WORKER_CLASS=worker_class) as (port, _):
        answer = post(port, '/probe/system_exit', {'now': True}, headers={'X-Request-ID': 'system-exit'})
        after = post(port, '/probe/echo', {'a': 1})
    assert answer.status == 500 and answer.json()['detail'] == 'The server could not complete the request.'
    assert after.status == 200
    line = gunicorn_access_line(tmp_path, 'system-exit')
    assert line['http']['response']['status_code'] == 500 and line['event']['outcome'] == 'failure'
    assert line['error']['type'] == 'lib.http.exchange.ActionExited' and 'SystemExit(3)' in line['error']['message']


@pytest.mark.parametrize('kind, escaped', [('timeout', 'gevent.timeout.Timeout (0.01 seconds)'),
                                            ('own', 'OwnBaseException (raised on purpose)'),
                                            ('interrupt', 'builtins.KeyboardInterrupt (raised on purpose)')])
def test_a_base_exception_escaping_an_action_is_the_apps_500_with_its_full_access_line(database_url, tmp_path, kind,
                                                                                       escaped):
    """A gevent.Timeout the action let escape passed Flask's handlers: gunicorn answered its own 500, and the only
    access line was its "- - 500", without the method, path, action or error."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1') as (port, _):
        answer = post(port, '/probe/system_exit', {'now': True, 'kind': kind}, headers={'X-Request-ID': kind})
        after = post(port, '/probe/echo', {'a': 1})
    assert answer.status == 500 and answer.json()['detail'] == 'The server could not complete the request.'
    assert answer.json()['request_id'] == kind and after.status == 200
    line = gunicorn_access_line(tmp_path, kind)
    assert line['message'] == 'POST /probe/system_exit 500' and line['labels']['action'] == 'system_exit'
    assert line['error']['type'] == 'lib.http.exchange.ActionExited' and escaped in line['error']['message']


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
@pytest.mark.parametrize('kind, escaped', [('own', 'OwnBaseException (raised on purpose)'),
                                            ('interrupt', 'builtins.KeyboardInterrupt (raised on purpose)'),
                                            ('exit', 'SystemExit(3) was raised'),
                                            ('answer', 'the action raised HTTPException, an answer of status 200')])
def test_a_base_exception_or_an_answer_a_stream_raises_cuts_it_short_with_one_access_line(database_url, tmp_path,
                                                                                          worker_class, kind, escaped):
    """Past the stream's first item, gunicorn wrote a whole 500 answer into the chunked body, under another request
    id and with a second access line (trial BR); a SystemExit was gunicorn's "Error handling request", and an answer
    raised was logged as werkzeug's class (trial BT)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             WORKER_CLASS=worker_class) as (port, _):
        with raw_post(port, '/probe/system_exit', {'later': True, 'kind': kind}, f'later-{kind}') as sock:
            answer = b''.join(iter(lambda: sock.recv(65536), b''))
        after = post(port, '/probe/echo', {'a': 1})
    assert answer.startswith(b'HTTP/1.1 200') and b'{"item":1}' in answer, answer
    assert answer.count(b'HTTP/1.1') == 1 and not answer.endswith(b'0\r\n\r\n'), answer  # cut, no last chunk
    assert after.status == 200
    line = gunicorn_access_line(tmp_path, f'later-{kind}')
    kind_logged = 'ResponseRaised' if kind == 'answer' else 'ActionExited'
    assert line['event']['outcome'] == 'failure' and line['error']['type'] == f'lib.http.exchange.{kind_logged}'
    assert escaped in line['error']['message']
    assert 'Error handling request' not in (tmp_path / 'stdout').read_text()
    lines = [json.loads(text) for text in (tmp_path / 'stdout').read_text().splitlines() if text.startswith('{')]
    assert not [found for found in lines if found.get('http', {}).get('response', {}).get('status_code') == 500]


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_client_gone_once_its_transaction_committed_is_a_499_whose_line_says_it_committed(database_url, tmp_path,
                                                                                           worker_class):
    """The line read as one rolled back, as every 499's (trial BQ: committed transfers among rolled-back ones)."""
    code = f'committed-{uuid.uuid4()}'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             WORKER_CLASS=worker_class) as (port, _):
        with raw_post(port, '/slow/write_then_answer', {'code': code, 'size': 32 * 2 ** 20}, 'gone-committed') as sock:
            assert sock.recv(12) == b'HTTP/1.1 200'  # the answer has started: the action is over
        line = wait_for(lambda: access_lines(tmp_path, 'gone-committed'), 10, 'not logged')[0]
    assert line['http']['response']['status_code'] == 499 and line['event']['outcome'] == 'failure'
    assert line['error']['message'] == CLIENT_GONE_AFTER_COMMIT_MESSAGE
    assert things_with_code(database_url, code) == 1


def gunicorn_access_line(folder, request_id):
    """Return the app's access line of one request from the stdout of a gunicorn run by gunicorn_logging_to."""
    found = access_lines(folder, request_id)
    assert len(found) == 1, found
    return found[0]


def access_lines(folder, request_id):
    """Return the app's access lines of one request written so far to the stdout of gunicorn_logging_to's gunicorn (the
    first piece of a line split to fit a pipe write: a 5xx's with a deep stack trace)."""
    found = []
    for text in (folder / 'stdout').read_text().splitlines():
        line = json.loads(text) if text.startswith('{') and text.endswith('}') else {}
        if line.get('log', {}).get('logger') == 'dbapi.access' and line['http']['request'].get('id') == request_id \
                and whole_or_first_piece(line):
            found.append(line)
    return found


def raw_post(port, path, body, request_id):
    """Open a connection, send one POST and return the socket without reading the answer."""
    payload = json.dumps(body).encode()
    client = socket.create_connection(('127.0.0.1', port))
    client.sendall(f'POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n'
                   f'Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n'
                   f'X-Request-ID: {request_id}\r\n\r\n'.encode() + payload)
    return client


def backend_running(database_url, query):
    """Return the pid of the backend running query now (None: the slow module's stream), or None."""
    rows = run_sql(database_url, "SELECT pid FROM pg_stat_activity WHERE state = 'active' AND "
                   "(query = %s OR %s IS NULL AND query LIKE 'FETCH FORWARD %%')", (query, query))
    return rows[0][0] if rows else None


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_client_that_goes_away_has_its_query_cancelled_and_its_connection_reused(database_url, tmp_path,
                                                                                   worker_class):
    seconds = 30 + random.randint(1, 999) / 1000  # a query text of this test's own in pg_stat_activity
    query = f'SELECT pg_sleep({seconds})'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1',
                             LOG_LEVEL='INFO', WORKER_CLASS=worker_class) as (port, _):
        client = raw_post(port, '/slow/sleep', {'seconds': seconds}, 'gone-client')
        backend = wait_for(lambda: backend_running(database_url, query), 10, 'the query did not start')
        client.close()
        _, seconds_to_cancel = timed(lambda: wait_for(lambda: not backend_running(database_url, query), 10,
                                                      'the query still runs'))
        served = post(port, '/slow/backend')
    assert seconds_to_cancel < 2
    assert served.status == 200 and served.json() == {'pid': backend}, 'the one pooled connection serves again'
    line = gunicorn_access_line(tmp_path, 'gone-client')
    assert line['http']['response']['status_code'] == 499
    assert line['event']['outcome'] == 'failure' and line['error']['code'] == '57014', line  # query_canceled
    # not "The response was cut short": no answer had started
    assert line['error']['message'] == 'The client went away before its answer.', line


def received_after_half_close(client):
    """Shut down client's sending side; return all it receives until the server closes the connection."""
    client.shutdown(socket.SHUT_WR)
    client.settimeout(10)
    received = b''
    with contextlib.suppress(ConnectionResetError):
        while chunk := client.recv(4096):
            received += chunk
    client.close()
    return received


def leave(client, how):
    """Have a client whose request was sent leave: close its socket, or (half-close) shut down its sending side and
    check that it is sent nothing."""
    if how == 'close':
        client.close()
    else:
        assert received_after_half_close(client) == b'', 'a half-closed client is sent no answer'


@contextlib.contextmanager
def the_one_connection_held(database_url, tmp_path, worker_class, seconds, **environment):
    """Run gunicorn_logging_to's gunicorn with one worker and one pooled connection, held by a slow call of about
    seconds for the block; yield (port, an executor with a thread to spare). The slow call must get its 200."""
    seconds += random.randint(1, 999) / 1000  # a query text of this test's own in pg_stat_activity
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1',
                             LOG_LEVEL='INFO', WORKER_CLASS=worker_class, **environment) as (port, _):
        with ThreadPoolExecutor(2) as executor:
            holder = executor.submit(post, port, '/slow/sleep', {'seconds': seconds})
            wait_for(lambda: backend_running(database_url, f'SELECT pg_sleep({seconds})'), 10,
                     'the query did not start')
            yield port, executor
            assert holder.result().status == 200


@pytest.mark.slow
@pytest.mark.parametrize('worker_class, leaves', [('gevent', 'close'), ('gthread', 'close'), ('gevent', 'half-close'),
                                                  ('gthread', 'half-close')])
def test_a_client_that_leaves_while_waiting_for_a_connection_is_logged_499_and_one_that_stays_gets_its_503(
        database_url, tmp_path, worker_class, leaves):
    with the_one_connection_held(database_url, tmp_path, worker_class, 3, DB_POOL_TIMEOUT_MS='500') as (port, executor):
        stays = executor.submit(post, port, '/slow/sleep', {'seconds': 0}, headers={'X-Request-ID': 'stays'})
        leave(raw_post(port, '/slow/sleep', {'seconds': 0}, 'gone-waiting'), leaves)
        wait_for(lambda: access_lines(tmp_path, 'gone-waiting'), 10, 'the request that waited was not logged')
        assert stays.result().status == 503
    gone = gunicorn_access_line(tmp_path, 'gone-waiting')
    assert gone['http']['response']['status_code'] == 499 and gone['event']['outcome'] == 'failure', gone
    assert gone['error']['message'] == 'The client went away before its answer.', gone
    assert gunicorn_access_line(tmp_path, 'stays')['http']['response']['status_code'] == 503


@pytest.mark.slow
@pytest.mark.parametrize('worker_class, leaves', [('gevent', 'close'), ('gthread', 'half-close'),
                                                  ('gevent', 'half-close')])
def test_a_client_that_leaves_while_waiting_for_a_connection_that_then_comes_is_not_served(database_url, tmp_path,
                                                                                            worker_class, leaves):
    """Its action ran and committed once the connection came, and a half-closed client was sent the 200 (trial F):
    the watcher looked only after the first statements."""
    code = f'waited-{uuid.uuid4().hex[:8]}'
    with the_one_connection_held(database_url, tmp_path, worker_class, 1.5, DB_POOL_TIMEOUT_MS='5000') as (port, _):
        client = raw_post(port, '/probe/things/create', {'code': code}, 'gone-then-served')
        time.sleep(0.3)  # its request now waits for the one connection
        leave(client, leaves)
        wait_for(lambda: access_lines(tmp_path, 'gone-then-served'), 10, 'the request that waited was not logged')
    line = gunicorn_access_line(tmp_path, 'gone-then-served')
    assert line['http']['response']['status_code'] == 499 and line['event']['outcome'] == 'failure', line
    assert things_with_code(database_url, code) == 0, 'nothing is written for a client that left'


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_client_that_goes_away_has_its_transaction_rolled_back(database_url, worker_class):
    code = f'gone-{uuid.uuid4().hex[:8]}'
    query = f'SELECT pg_sleep({30 + random.randint(1, 999) / 1000})'
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1', WORKER_CLASS=worker_class) as port:
        client = raw_post(port, '/types/select_steps', {'queries': [
            f"INSERT INTO probe.things (code) VALUES ('{code}') RETURNING id", query]}, 'gone-writer')
        wait_for(lambda: backend_running(database_url, query), 10, 'the query did not start')
        client.close()
        wait_for(lambda: not backend_running(database_url, query), 10, 'the query still runs')
    assert run_sql(database_url, 'SELECT count(*) FROM probe.things WHERE code = %s', (code,)) == [(0,)]


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_client_that_only_shuts_its_sending_side_gets_no_499_sent_only_the_connection_closed(
        database_url, tmp_path, worker_class):
    """A half-closed client looks gone (docs/contract.md); it was sent a status line nobody defines, 499."""
    seconds = 30 + random.randint(1, 999) / 1000
    query = f'SELECT pg_sleep({seconds})'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', LOG_LEVEL='INFO',
                             WORKER_CLASS=worker_class) as (port, _):
        client = raw_post(port, '/slow/sleep', {'seconds': seconds}, 'half-closed')
        wait_for(lambda: backend_running(database_url, query), 10, 'the query did not start')
        received = received_after_half_close(client)
        line = wait_for(lambda: access_lines(tmp_path, 'half-closed'), 10, 'the request was not logged')[0]
    assert received == b'', received
    assert line['http']['response']['status_code'] == 499 and line['event']['outcome'] == 'failure', line
    assert 'Traceback' not in (tmp_path / 'stderr').read_text() + (tmp_path / 'stdout').read_text()


def idle_in_transaction_after(database_url, query):
    """Tell whether a backend's last statement was query and it now waits idle in its transaction (or idle: autocommit)."""
    return run_sql(database_url, "SELECT count(*) FROM pg_stat_activity WHERE state IN ('idle in transaction', 'idle') "
                   "AND query = %s", (query,))[0][0] > 0


def leave_while_idle(tmp_path, database_url, worker_class, path, body, last_query):
    """Run one gunicorn worker of one pooled connection, POST body to path and close the client once that connection
    sits idle after last_query (its action runs Python); return (the request's access line, the seconds from the
    close to it, the answer of a request sent next)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1',
                             LOG_LEVEL='INFO', WORKER_CLASS=worker_class) as (port, _):
        client = raw_post(port, path, body, 'idle-gone')
        wait_for(lambda: idle_in_transaction_after(database_url, last_query), 10, 'the action did not run')
        client.close()
        line, seconds = timed(lambda: wait_for(lambda: access_lines(tmp_path, 'idle-gone'), 10, 'not logged')[0])
        return line, seconds, post(port, '/slow/backend')


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
@pytest.mark.parametrize('autocommit, rows_kept', [(False, 0), (True, 1)])
def test_a_client_that_goes_away_while_no_statement_runs_is_a_499_and_its_transaction_rolls_back(
        database_url, tmp_path, worker_class, autocommit, rows_kept):
    code = f'idle-gone-{uuid.uuid4().hex[:8]}'
    line, _, _ = leave_while_idle(tmp_path, database_url, worker_class, '/slow/write_then_wait',
                                  {'code': code, 'seconds': 1.5, 'autocommit': autocommit},
                                  f"INSERT INTO probe.things (code) VALUES ('{code}')")
    # the watcher's cancel found no statement to stop; the commit must not happen for a client that left
    assert things_with_code(database_url, code) == rows_kept
    assert line['http']['response']['status_code'] == 499 and line['event']['outcome'] == 'failure', line
    assert line['error']['message'] == 'The client went away before its answer.', line


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
@pytest.mark.parametrize('autocommit, sleep', [(False, 30), (True, 30), (True, 0)])
def test_no_statement_starts_after_the_client_went_away_and_nothing_after_it_runs(
        database_url, tmp_path, worker_class, autocommit, sleep):
    """The watcher saw the client go while no statement ran; its cancel stopped nothing and it took the watch off,
    so the 30 s statement the action ran next held the connection to its end, and the insert after it committed (at
    once after a statement of 0 s). Now each statement the request starts is refused before it reaches PostgreSQL."""
    code = f'late-gone-{uuid.uuid4().hex[:8]}'
    line, seconds, served = leave_while_idle(tmp_path, database_url, worker_class, '/slow/wait_then_write',
                                             {'code': code, 'seconds': 1, 'sleep': sleep, 'autocommit': autocommit},
                                             f"SELECT '{code}'")
    assert seconds < 2, 'a statement begun after the client left ran on'
    assert things_with_code(database_url, code) == 0
    assert line['http']['response']['status_code'] == 499, line
    assert served.status == 200, 'the one pooled connection serves again'


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
@pytest.mark.parametrize('autocommit, sleep', [(False, 30), (True, 30), (True, 0)])
def test_no_statement_starts_past_the_deadline_and_the_connection_is_reused(database_url, worker_class, autocommit,
                                                                            sleep):
    """The deadline passed while the action ran Python: its next statement ran on (gthread: to the SET LOCAL timeout
    taken at the transaction's start, or the session's, the deadline's 2 s in all; autocommit and 0 s: to a 200, its
    insert committed past the deadline), or under gevent ended as the database not answering, its healthy connection
    closed."""
    code = f'late-deadline-{uuid.uuid4().hex[:8]}'
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1', WORKER_CLASS=worker_class,
                          REQUEST_DEADLINE_MS='2000') as port:
        backend = post(port, '/slow/backend').json()['pid']
        answer, seconds = timed(lambda: post(port, '/slow/wait_then_write', {
            'code': code, 'seconds': 2.2, 'sleep': sleep, 'autocommit': autocommit}))
        served = post(port, '/slow/backend')
    assert answer.status == 504 and seconds < 3, (answer.status, seconds)
    assert answer.json()['detail'] == StatementPastDeadline.of(autocommit).detail
    assert things_with_code(database_url, code) == 0
    assert served.status == 200 and served.json() == {'pid': backend}, 'the connection was reused'


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_transaction_of_an_autocommit_action_whose_client_went_away_is_not_committed(database_url, tmp_path,
                                                                                        worker_class):
    """transactional() checked only the deadline before its commit: the row of a client gone was committed."""
    code = f'tx-gone-{uuid.uuid4().hex[:8]}'
    line, _, _ = leave_while_idle(tmp_path, database_url, worker_class, '/slow/write_in_a_transaction_then_wait',
                                  {'code': code, 'seconds': 1.5}, f"INSERT INTO probe.things (code) VALUES ('{code}')")
    assert things_with_code(database_url, code) == 0
    assert line['http']['response']['status_code'] == 499, line


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_statement_that_outlives_its_cancels_is_sent_one_a_second_at_most(database_url, worker_class):
    """A statement that catches query_canceled was sent a cancel request (a connection PostgreSQL forks for) at every
    look of the watcher, ten a second, for as long as it ran."""
    code = f'swallow-{uuid.uuid4().hex[:8]}'
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1', WORKER_CLASS=worker_class,
                          REQUEST_DEADLINE_MS='1000') as port:
        post(port, '/slow/swallow_cancels', {'code': code, 'seconds': 3.5})
        written = wait_for(lambda: run_sql(database_url, 'SELECT code FROM probe.things WHERE code LIKE %s',
                                           (f'{code}:%',)), 10, 'the statement did not end')
    caught = int(written[0][0].rsplit(':', 1)[1])
    # PostgreSQL's own statement timeout at the deadline, then the watcher's first cancel and one a second after it.
    assert 1 <= caught <= 6, caught


@pytest.mark.slow
def test_a_database_that_stops_answering_gets_a_504_by_the_deadline_and_the_worker_serves_on(database_url, tmp_path):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1',
                             REQUEST_DEADLINE_MS='2000') as (port, _):
        backend = post(port, '/slow/backend').json()['pid']
        os.kill(backend, signal.SIGSTOP)  # the pooled connection's server process hangs, as a frozen server would
        try:
            with ThreadPoolExecutor(1) as pool:
                started = time.monotonic()
                frozen = pool.submit(post, port, '/slow/sleep', {'seconds': 0}, headers={'X-Request-ID': 'frozen-db'})
                time.sleep(0.5)
                assert http_request(port, 'GET', '/healthz', timeout=2).status == 200, 'the worker serves on'
                answer = frozen.result(timeout=15)
                waited = time.monotonic() - started
        finally:
            os.kill(backend, signal.SIGCONT)
        assert answer.status == 504, answer.body
        assert answer.json()['detail'] == 'The database did not answer in time. What the request sent may still run.'
        assert 2 <= waited < 6, 'the deadline (2 s) and a second of grace'
        assert post(port, '/slow/backend').json()['pid'] != backend, 'the connection that hung is thrown away'
    line = gunicorn_access_line(tmp_path, 'frozen-db')
    assert line['http']['response']['status_code'] == 504 and line['event']['outcome'] == 'failure'


@pytest.mark.slow
def test_a_new_connection_to_a_server_that_never_answers_gives_up_after_the_connect_timeout(tmp_path):
    with throwaway_postgres('frozen-') as (dsn, data_dir):
        postmaster = int((data_dir / 'postmaster.pid').read_text().split()[0])
        with gunicorn_logging_to(tmp_path, DATABASE_URL=dsn, WEB_CONCURRENCY='1', DB_CONNECT_TIMEOUT='2') as (port, _):
            os.kill(postmaster, signal.SIGSTOP)  # it accepts connections (the kernel does) and never answers them
            try:
                started = time.monotonic()
                answer = post(port, '/slow/sleep', {'seconds': 0})
                waited = time.monotonic() - started
                assert http_request(port, 'GET', '/healthz', timeout=2).status == 200
            finally:
                os.kill(postmaster, signal.SIGCONT)
            # A database down, as a refused connect or libpq's own connect_timeout under other worker classes is.
            assert answer.status == 503 and answer.headers['Retry-After'] == '1', answer.body
            assert 'Nothing was sent to it' in answer.json()['detail'], answer.body
            assert 2 <= waited < 5, 'DB_CONNECT_TIMEOUT, 2 s'
            assert post(port, '/slow/sleep', {'seconds': 0}).status == 200, 'it connects once the server answers'
            time.sleep(1)  # the server has woken up to every connection still waiting for it
            sessions = run_sql(dsn, "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
                                    "AND pid <> pg_backend_pid()")[0][0]
            assert sessions == 1, 'the connect given up on left no session behind'


@pytest.mark.slow
@pytest.mark.parametrize('named, waits', [(2, 2), (0, 3)], ids=['named', '0 is DB_CONNECT_TIMEOUT'])
def test_a_new_connection_keeps_the_connect_timeout_its_dsn_names(silent_database, tmp_path, named, waits):
    """DB_CONNECT_TIMEOUT replaced the DSN's own connect_timeout in the pools (the start's check kept it)."""
    port = psycopg2.extensions.parse_dsn(silent_database[0])['port']
    url = f'postgresql://x@127.0.0.1:{port}/x?connect_timeout={named}'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=url, WEB_CONCURRENCY='1', DB_CONNECT_TIMEOUT='3',
                             REQUEST_DEADLINE_MS='20000') as (port, _):
        answer, waited = timed(lambda: post(port, '/slow/sleep', {'seconds': 0}))
    assert answer.status == 503 and 'Nothing was sent to it' in answer.json()['detail'], answer.body
    assert waits - 0.5 <= waited < waits + 0.9


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'sync'])
def test_a_new_connection_waits_for_the_server_no_longer_than_the_request_deadline(silent_database, tmp_path,
                                                                                   worker_class):
    dsn, counts = silent_database
    url = f"postgresql://x@127.0.0.1:{psycopg2.extensions.parse_dsn(dsn)['port']}/x"
    with gunicorn_logging_to(tmp_path, DATABASE_URL=url, WEB_CONCURRENCY='1', DB_CONNECT_TIMEOUT='10',
                             REQUEST_DEADLINE_MS='2000', WORKER_CLASS=worker_class) as (port, _):
        answer, waited = timed(lambda: post(port, '/slow/sleep', {'seconds': 0}))
    assert answer.status == 503 and 'Nothing was sent to it' in answer.json()['detail'], answer.body
    assert counts, 'the server was asked for a connection'
    assert 1.5 <= waited < 3.5, 'the deadline (2 s), not DB_CONNECT_TIMEOUT (10 s)'


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread'])
def test_a_cancel_the_server_does_not_take_leaves_the_worker_serving(tmp_path, worker_class):
    seconds = 30 + random.randint(1, 999) / 1000
    query = f'SELECT pg_sleep({seconds})'
    with throwaway_postgres('cancel-') as (dsn, data_dir):
        postmaster = int((data_dir / 'postmaster.pid').read_text().split()[0])
        with gunicorn_logging_to(tmp_path, DATABASE_URL=dsn, WEB_CONCURRENCY='1', DB_POOL_MAX='2', LOG_LEVEL='INFO',
                                 WORKER_CLASS=worker_class) as (port, _):
            client = raw_post(port, '/slow/sleep', {'seconds': seconds}, 'gone-while-frozen')
            backend = wait_for(lambda: backend_running(dsn, query), 10, 'the query did not start')
            assert post(port, '/slow/sleep', {'seconds': 0}).status == 200  # a second connection, idle now
            os.kill(postmaster, signal.SIGSTOP)  # the kernel accepts the cancel's connection, nobody reads it
            try:
                client.close()
                time.sleep(0.3)  # the watcher has seen the client go and waits for the server to take the cancel
                assert http_request(port, 'GET', '/healthz', timeout=2).status == 200, 'the worker serves on'
                answer, took = timed(lambda: post(port, '/slow/sleep', {'seconds': 0}))
                assert answer.status == 200 and took < 0.5, f'{took:.2f} s: a query waited for the cancel'
                time.sleep(1)  # past the second a cancel is waited for
            finally:
                os.kill(postmaster, signal.SIGCONT)
            wait_for(lambda: not backend_running(dsn, query), 10, 'the late cancel did not end the query')
            served = post(port, '/slow/backend')
    assert served.status == 200 and served.json()['pid'] != backend, 'a connection whose cancel came late is closed'
    line = gunicorn_access_line(tmp_path, 'gone-while-frozen')
    assert line['http']['response']['status_code'] == 499 and line['error']['code'] == '57014', line


def test_an_export_refused_after_its_first_batch_leaves_the_worker_serving(database_url):
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1') as port:
        refused = post(port, '/probe/counted_stream', {'kind': 'stream_json', 'count': 5000, 'batch_size': 2000,
                                                       'date_style': 'SQL, DMY'})
        assert refused.status == 500 and 'DateStyle' in refused.json()['detail'], refused.body
        assert http_request(port, 'GET', '/healthz', timeout=2).status == 200
        served = post(port, '/probe/counted_stream', {'kind': 'stream_json', 'count': 5000, 'batch_size': 2000})
    assert served.status == 200 and len(served.json()) == 5000


def test_a_type_read_again_while_a_streams_helper_fetches_waits_its_turn_under_gevent(database_url):
    name = f'probe.turns_{uuid.uuid4().hex[:8]}'
    run_sql(database_url, f'CREATE TYPE {name} AS (n int)')
    query = f'SELECT CASE WHEN n > 2 THEN ROW(n)::{name} END AS v FROM generate_series(1, 40) AS n'
    try:
        with running_gunicorn(database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1', WORKER_CLASS='gevent') as port:
            # Each request reads the type's fields again, in its third batch, while the helper fetches the fourth.
            answers = [post(port, '/types/stream', {'query': query, 'batch_size': 2}) for _ in range(3)]
    finally:
        run_sql(database_url, f'DROP TYPE {name}')
    expected = [{'v': None}] * 2 + [{'v': {'n': n}} for n in range(3, 41)]
    assert [(answer.status, answer.json()) for answer in answers] == [(200, expected)] * 3


# A stream cut short (database error half-way, client gone, worker stopped) is a failure with the bytes sent


@contextlib.contextmanager
def streaming(port, body, request_id, encoding='identity'):
    """POST /slow/stream, its answer in encoding (Accept-Encoding), and yield the response once its headers came, its
    body unread."""
    connection = http.client.HTTPConnection('127.0.0.1', port, timeout=30)
    try:
        connection.request('POST', '/slow/stream', json.dumps(body), {
            'Authorization': f'Bearer {ADMIN_TOKEN}', 'Content-Type': 'application/json', 'X-Request-ID': request_id,
            'Accept-Encoding': encoding})
        yield connection.getresponse()
    finally:
        connection.close()


def read_to_the_cut(response):
    """Read a streamed body until the server breaks it off; return what came. A whole body fails the test."""
    with pytest.raises(http.client.IncompleteRead) as cut:
        response.read()
    return cut.value.partial


def server_tracebacks(folder):
    """Return the lines of gunicorn's own "Error handling request" in gunicorn_logging_to's output."""
    return [text for name in ('stdout', 'stderr') for text in (folder / name).read_text().splitlines()
            if 'Error handling request' in text]


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_stream_that_fails_half_way_is_logged_as_a_failure_with_the_bytes_sent(database_url, tmp_path,
                                                                                 worker_class):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             WORKER_CLASS=worker_class) as (port, _):
        with streaming(port, {'rows': 1000, 'fail_at': 550}, 'stream-broken') as response:
            assert response.status == 200
            received = read_to_the_cut(response)
        assert post(port, '/slow/sleep', {'seconds': 0}).status == 200, 'the worker serves on'
    line = gunicorn_access_line(tmp_path, 'stream-broken')
    assert line['http']['response'] == {'status_code': 200, 'body': {'bytes': len(received)}}
    assert 0 < len(received) and received.startswith(b'[{"n":1,')
    assert line['event']['outcome'] == 'failure' and line['error']['code'] == '22012'  # division_by_zero
    assert server_tracebacks(tmp_path) == [], 'the access line alone tells of the broken stream'


@pytest.mark.parametrize('worker_class', ['gevent', 'sync'])
def test_a_response_body_that_yields_what_is_not_bytes_is_logged_as_that_error(database_url, tmp_path, worker_class):
    """The server's own TypeError, raised as it wrote, was logged as the answer cut short (trial AM)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             WORKER_CLASS=worker_class) as (port, _):
        with contextlib.suppress(http.client.HTTPException):  # the answer ends without its last chunk
            post(port, '/probe/yields_a_row', {'row': [1]}, headers={'X-Request-ID': 'yields-a-row'})
    line = gunicorn_access_line(tmp_path, 'yields-a-row')
    assert line['event']['outcome'] == 'failure' and line['error']['type'] == 'TypeError', line
    assert line['error']['message'].startswith('a response body yielded list, not bytes'), line
    assert server_tracebacks(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_compressed_stream_that_breaks_before_its_first_byte_is_a_500_under_its_request_id(database_url, tmp_path,
                                                                                           worker_class):
    """brotli holds its first output back: the second batch fails before any byte went out, so the status can still
    be told. One access line, the server's 500 problem under the request's own id, no server traceback; the line
    counts the problem's bytes and the problem says what any 500 says (0 bytes and other words before: trial AK)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             WORKER_CLASS=worker_class) as (port, _):
        answer = post(port, '/slow/stream', {'rows': 5000, 'fail_at': 3000},
                      headers={'Accept-Encoding': 'br', 'X-Request-ID': 'br-early'})
        assert post(port, '/slow/sleep', {'seconds': 0}).status == 200, 'the worker serves on'
    assert answer.status == 500 and answer.headers['Content-Type'] == 'application/problem+json'
    assert answer.headers['X-Request-ID'] == answer.json()['request_id'] == 'br-early'
    assert answer.json()['detail'] == 'The server could not complete the request.'
    line = gunicorn_access_line(tmp_path, 'br-early')
    assert line['http']['response'] == {'status_code': 500, 'body': {'bytes': len(answer.body)}}
    assert line['event']['outcome'] == 'failure'
    assert line['error']['code'] == '22012'  # division_by_zero
    assert server_tracebacks(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize('worker_class, pause, encoding', [
    ('gevent', 0.05, 'identity'), ('gevent', 0, 'identity'), ('gthread', 0, 'identity'), ('sync', 0, 'identity'),
    ('gevent', 0.05, 'gzip'), ('gthread', 0.05, 'gzip')])
def test_a_client_that_leaves_a_stream_has_it_logged_as_a_499_with_the_bytes_sent(database_url, tmp_path,
                                                                                   worker_class, pause, encoding):
    """Seen by the watcher (a slow stream; a compressed one, whose compressor holds bytes back, most often) or by the
    server's failed write (a fast one: it was logged 200, trial I), the line is the same: cut short, nothing broke
    (the refused FETCH was logged as a broken stream, with its traceback, trial O)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             WORKER_CLASS=worker_class) as (port, _):
        with streaming(port, {'rows': 100_000, 'pause': pause}, 'stream-left', encoding) as response:
            received = response.read(20_000 if encoding == 'identity' else 1_000)
            response.close()  # with the connection's: the socket closes, its unread bytes make it a reset
        wait_for(lambda: backend_running(database_url, None) is None, 5, 'the stream still runs in PostgreSQL')
        wait_for(lambda: 'stream-left' in (tmp_path / 'stdout').read_text(), 5, 'no access line')
    line = gunicorn_access_line(tmp_path, 'stream-left')
    assert line['http']['response']['status_code'] == 499 and line['event']['outcome'] == 'failure'
    assert len(received) <= line['http']['response']['body']['bytes'] < 100_000 * 200
    assert line['error']['message'] == CUT_SHORT_MESSAGE and not {'type', 'stack_trace'} & set(line['error']), line


@pytest.mark.slow
def test_a_json_stream_whose_client_leaves_is_told_of_by_its_access_line_alone(database_url, tmp_path):
    """Db.stream_json closes its cursor when the stream ends: once the client was gone, the guard refused that CLOSE
    with the request's 499, which escaped the stream's close as gunicorn's "Error handling request" and a traceback,
    in about a third of such cuts (trial P)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1') as (port, _):
        for attempt in range(12):
            client = raw_post(port, '/probe/counted_stream',
                              {'kind': 'stream_json', 'count': 3_000_000, 'batch_size': 1000}, f'json-left-{attempt}')
            client.recv(65536 if attempt % 2 else 1)  # some of it: the stream has begun
            client.close()  # unread bytes: a reset
            wait_for(lambda: access_lines(tmp_path, f'json-left-{attempt}'), 10, 'no access line')
    assert server_tracebacks(tmp_path) == []


@pytest.mark.slow
def test_a_stream_cut_short_by_a_stopping_worker_is_logged_as_a_failure_with_the_bytes_sent(database_url, tmp_path):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1',
                             GRACEFUL_TIMEOUT='1') as (port, server):
        with streaming(port, {'rows': 100_000, 'pause': 0.05}, 'stream-stopped') as response:
            received = response.read(20_000)
            server.terminate()  # the worker has a second to finish: its running query is cancelled first
            received += read_to_the_cut(response)
        server.wait(10)
    line = gunicorn_access_line(tmp_path, 'stream-stopped')  # logged: the worker ended it before the master's kill
    assert line['http']['response'] == {'status_code': 200, 'body': {'bytes': len(received)}}
    assert line['event']['outcome'] == 'failure' and line['error']['code'] == '57014'  # its FETCH was cancelled


def process_ended(pid):
    """Tell whether process pid has exited (gone, or a zombie its new parent has not reaped)."""
    try:
        return open(f'/proc/{pid}/stat').read().rpartition(')')[2].split()[0] == 'Z'
    except FileNotFoundError:
        return True


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_worker_whose_master_is_killed_finishes_its_requests_then_stops(database_url, tmp_path, worker_class):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', GRACEFUL_TIMEOUT='10',
                             WORKER_CLASS=worker_class) as (port, master):
        (worker,) = map(int, open(f'/proc/{master.pid}/task/{master.pid}/children').read().split())
        seconds = 2 + random.randint(1, 999) / 1000  # a query text of this test's own in pg_stat_activity
        with ThreadPoolExecutor(1) as executor:
            in_flight = executor.submit(post, port, '/slow/sleep', {'seconds': seconds},
                                        headers={'X-Request-ID': 'orphan-1'})
            wait_for(lambda: backend_running(database_url, f'SELECT pg_sleep({seconds})'), 5,
                     'the request did not reach its query')
            master.kill()
            master.wait(5)
            assert in_flight.result().status == 200, 'the request in flight was finished'
        wait_for(lambda: process_ended(worker), 15, 'the worker did not stop once its requests were done')
    assert gunicorn_access_line(tmp_path, 'orphan-1')['event']['outcome'] == 'success'


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_query_still_running_at_the_graceful_timeout_is_cancelled_and_answered_503(database_url, tmp_path,
                                                                                      worker_class):
    query = f'SELECT pg_sleep({30 + random.randint(1, 999) / 1000})'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', GRACEFUL_TIMEOUT='3',
                             LOG_LEVEL='INFO', WORKER_CLASS=worker_class) as (port, server):
        connection = http.client.HTTPConnection('127.0.0.1', port, timeout=20)
        with ThreadPoolExecutor(1) as executor:
            slow = executor.submit(post, port, '/types/select', {'query': query},
                                   headers={'X-Request-ID': 'stopped-mid-query'}, connection=connection)
            wait_for(lambda: backend_running(database_url, query), 10, 'the query did not start')
            server.terminate()
            answer = slow.result(timeout=20)
        kept = connection.sock  # None: the answer said Connection: close (a sync worker's always do)
        if kept is not None:  # the worker is about to be killed: the connection ends with the answer
            kept.settimeout(0.5)
            assert kept.recv(1) == b'', 'the connection was kept open after the 503'
        server.wait(15)
    assert answer.status == 503 and answer.headers['Retry-After'] == '1', answer.body
    assert answer.json()['detail'] == 'The server stopped before the answer was ready. Try again.'
    assert gunicorn_access_line(tmp_path, 'stopped-mid-query')['event']['outcome'] == 'failure'
    assert not backend_running(database_url, query)


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_statement_started_after_the_stop_sweep_is_refused_and_answered_503(database_url, tmp_path, worker_class):
    """The sweep a second before the graceful timeout found the action in Python: the statement it started next ran
    (and an autocommit insert committed) on a worker about to be killed."""
    code = f'after-sweep-{uuid.uuid4().hex[:8]}'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', GRACEFUL_TIMEOUT='4',
                             LOG_LEVEL='INFO', WORKER_CLASS=worker_class) as (port, server):
        with ThreadPoolExecutor(1) as executor:
            slow = executor.submit(post, port, '/slow/wait_then_write', {'code': code, 'seconds': 3.5, 'sleep': 0,
                                                                         'autocommit': True})
            wait_for(lambda: idle_in_transaction_after(database_url, f"SELECT '{code}'"), 10, 'the action did not run')
            server.terminate()  # the sweep comes 3 s later, the kill 4 s later; the action's statement in between
            answer = slow.result(timeout=20)
        server.wait(15)
    assert answer.status == 503, answer.body
    assert answer.json()['detail'] == 'The server stopped before the answer was ready. Try again.'
    assert things_with_code(database_url, code) == 0


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread'])
def test_a_request_that_gets_its_connection_after_the_stop_sweep_is_answered_503_not_killed(database_url, tmp_path,
                                                                                           worker_class):
    """Two queries hold the pool; a third request waits for a connection. At the sweep a second before the graceful
    timeout ends, the two are cancelled, and the third, handed a connection just then, must not start a query the
    kill would end unanswered and unlogged."""
    query = f'SELECT pg_sleep({30 + random.randint(1, 999) / 1000})'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', GRACEFUL_TIMEOUT='3',
                             DB_POOL_MAX='2', REQUEST_DEADLINE_MS='20000', WORKER_CLASS=worker_class) as (port, server):
        with ThreadPoolExecutor(3) as executor:
            holding = [executor.submit(post, port, '/types/select', {'query': query},
                                       headers={'X-Request-ID': f'holding-{number}'}) for number in range(2)]
            wait_for(lambda: backend_count(database_url, query) == 2, 10, 'the queries did not start')
            waiting = executor.submit(post, port, '/probe/hold', {'seconds': 2}, headers={'X-Request-ID': 'waiting'})
            time.sleep(0.3)
            server.terminate()
            answers = [future.result(timeout=20) for future in (*holding, waiting)]
        server.wait(15)
    assert [answer.status for answer in answers] == [503, 503, 503], [answer.body for answer in answers]
    assert answers[2].json()['detail'] == 'The server stopped before the answer was ready. Try again.'
    assert gunicorn_access_line(tmp_path, 'waiting')['http']['response']['status_code'] == 503


@pytest.mark.slow
def test_requests_on_a_kept_alive_connection_are_not_disturbed_by_the_watch_on_it(database_url):
    # The watch looks at the client socket while gunicorn's handler waits on it for the next request.
    with running_gunicorn(database_url, WEB_CONCURRENCY='1') as port:
        connection = http.client.HTTPConnection('127.0.0.1', port, timeout=10)
        statuses = []
        for _ in range(300):
            connection.request('POST', '/slow/sleep', json.dumps({'seconds': 0.002}),
                               {'Authorization': f'Bearer {ADMIN_TOKEN}', 'Content-Type': 'application/json'})
            response = connection.getresponse()
            response.read()
            statuses.append(response.status)
        connection.close()
    assert statuses == [200] * 300


# The scenarios against real gunicorn (gevent workers): behaviour, not figures (those are the benchmark's)


class Repeatedly:
    """A thread that runs call() until stopped and keeps each outcome: a Reply's status, or the exception's name."""

    def __init__(self, call, pause=0.0):
        self.call, self.pause = call, pause
        self.outcomes = []
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self.run)

    def run(self):
        """Call until stopped."""
        while not self.stopping.is_set():
            try:
                self.outcomes.append(self.call().status)
            except OSError as exc:
                self.outcomes.append(type(exc).__name__)
            time.sleep(self.pause)


@contextlib.contextmanager
def running_all(*loops):
    """Run the loops for the block, then stop and join them."""
    for loop in loops:
        loop.thread.start()
    try:
        yield loops
    finally:
        for loop in loops:
            loop.stopping.set()
        for loop in loops:
            loop.thread.join(30)


@pytest.mark.slow
def test_slow_callers_holding_half_the_connections_leave_fast_calls_and_healthz_alone(database_url):
    # Two workers with four connections each: the hog may hold two of each worker's four, half of the budget.
    tokens = json.dumps({**BEARER_TOKENS, 'hog': {'token': HOG_TOKEN, 'max_connections': 2}})
    with running_gunicorn(database_url, WEB_CONCURRENCY='2', DB_POOL_MAX='4', BEARER_TOKENS=tokens) as port:
        slow = [Repeatedly(lambda: post(port, '/slow/sleep', {'seconds': 1}, token=HOG_TOKEN)) for _ in range(6)]
        fast = [Repeatedly(lambda: post(port, '/slow/backend')) for _ in range(4)]
        health = Repeatedly(lambda: http_request(port, 'GET', '/healthz', timeout=2), pause=0.05)
        with running_all(*slow, *fast, health):
            time.sleep(3)
    slow_outcomes = [outcome for loop in slow for outcome in loop.outcomes]
    assert 200 in slow_outcomes and set(slow_outcomes) <= {200, 429}, slow_outcomes  # past its share: 429 at once
    fast_outcomes = [outcome for loop in fast for outcome in loop.outcomes]
    assert fast_outcomes and set(fast_outcomes) == {200}, collections.Counter(fast_outcomes)
    assert health.outcomes and set(health.outcomes) == {200}, collections.Counter(health.outcomes)


@pytest.mark.slow
def test_under_gunicorn_an_exhausted_pool_sheds_503_within_the_pool_timeout(database_url):
    with running_gunicorn(database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='2', DB_POOL_TIMEOUT_MS='300') as port:
        with ThreadPoolExecutor(2) as executor:
            holders = [executor.submit(post, port, '/slow/sleep', {'seconds': 2}) for _ in range(2)]
            time.sleep(0.5)
            shed, seconds = timed(lambda: post(port, '/slow/backend'))
            health, health_seconds = timed(lambda: http_request(port, 'GET', '/healthz'))
            held = [holder.result().status for holder in holders]
    assert shed.status == 503 and shed.headers['Retry-After'] == '1' and 0.3 <= seconds < 0.3 + 0.5
    assert shed.json()['detail'] == 'No database connection came free in time. Try again shortly.'
    assert health.status == 200 and health_seconds < 0.5
    assert held == [200, 200]


@pytest.mark.slow
@pytest.mark.parametrize('body, pause_reading', [
    ({'rows': 100_000, 'pause': 0}, 3.5),  # the server waits to write: its socket is full until the client reads
    ({'rows': 1000, 'pause': 1.5}, 0),  # a batch is still being fetched a second past the deadline
])
def test_a_stream_past_the_deadline_however_it_got_there_is_logged_as_past_it(database_url, tmp_path, body,
                                                                               pause_reading):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', REQUEST_DEADLINE_MS='2000',
                             LOG_LEVEL='INFO') as (port, _):
        with streaming(port, body, 'stream-late') as response:
            time.sleep(pause_reading)
            received = read_to_the_cut(response)
    line = gunicorn_access_line(tmp_path, 'stream-late')
    assert line['http']['response'] == {'status_code': 200, 'body': {'bytes': len(received)}}
    assert line['error']['type'] == 'lib.db.unit.StreamPastDeadline', line['error']
    assert server_tracebacks(tmp_path) == []


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_stream_whose_client_stops_reading_gives_its_connection_back_a_second_past_the_deadline(
        database_url, tmp_path, worker_class):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', DB_POOL_MAX='1',
                             REQUEST_DEADLINE_MS='2000', LOG_LEVEL='INFO', WORKER_CLASS=worker_class) as (port, _):
        with streaming(port, {'rows': 200_000, 'pause': 0}, 'stream-unread') as response:
            assert response.status == 200  # and nothing of its body is read: the server's write waits
            wait_for(lambda: access_lines(tmp_path, 'stream-unread'), 10, 'the unread stream still holds its connection')
            assert post(port, '/slow/sleep', {'seconds': 0}).status == 200, 'the one pooled connection serves again'
    line = gunicorn_access_line(tmp_path, 'stream-unread')
    assert line['event']['outcome'] == 'failure'
    assert line['error']['type'] == 'lib.db.unit.StreamPastDeadline', line['error']
    assert 3 <= line['event']['duration'] / 1e9 < 5, 'the deadline (2 s) and a second'


@pytest.mark.slow
@pytest.mark.parametrize('path, body, worker_class', [
    ('/probe/sized', {'size': 20_000_000}, 'gevent'),  # one answer of 20 MB: more than both ends' buffers take
    ('/probe/sized', {'size': 20_000_000}, 'sync'),
    ('/probe/chunked', {'chunks': 300}, 'gevent'),  # a stream the action made itself, holding no connection
])
def test_an_answer_whose_client_stops_reading_is_cut_short_a_second_past_the_deadline(
        database_url, tmp_path, path, body, worker_class):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', REQUEST_DEADLINE_MS='2000',
                             WORKER_CLASS=worker_class, LOG_LEVEL='INFO') as (port, _):
        with raw_post(port, path, body, 'unread-answer'):  # the answer is never read
            wait_for(lambda: access_lines(tmp_path, 'unread-answer'), 10, 'the unread answer is still being sent')
            assert post(port, '/slow/sleep', {'seconds': 0}).status == 200
    line = gunicorn_access_line(tmp_path, 'unread-answer')
    assert line['event']['outcome'] == 'failure' and line['http']['response']['status_code'] == 200
    assert line['error']['type'] == 'lib.db.unit.StreamPastDeadline', line['error']
    assert 3 <= line['event']['duration'] / 1e9 < 5, 'the deadline (2 s) and a second'


def read_body_bytes(client, count):
    """Read an answer's head and then count bytes of its body from client's socket; return how many came."""
    data = b''
    while b'\r\n\r\n' not in data:
        data += client.recv(65536)
    body = len(data.partition(b'\r\n\r\n')[2])
    while body < count:
        body += len(client.recv(65536))
    return body


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'sync'])
def test_an_answer_cut_short_is_logged_with_at_least_the_bytes_its_client_received(database_url, tmp_path,
                                                                                   worker_class):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', REQUEST_DEADLINE_MS='2000',
                             WORKER_CLASS=worker_class, LOG_LEVEL='INFO') as (port, _):
        with raw_post(port, '/probe/sized', {'size': 20_000_000}, 'cut-bytes') as client:
            received = read_body_bytes(client, 3_000_000)  # one answer of 20 MB, one chunk: then no more is read
            wait_for(lambda: access_lines(tmp_path, 'cut-bytes'), 10, 'the unread answer is still being sent')
    line = gunicorn_access_line(tmp_path, 'cut-bytes')
    assert line['error']['type'] == 'lib.db.unit.StreamPastDeadline', line['error']
    assert received <= line['http']['response']['body']['bytes'] < 20_000_000


@pytest.mark.slow
def test_a_short_answer_to_a_client_that_sends_on_and_never_reads_is_cut_short_past_the_deadline(database_url,
                                                                                                  tmp_path):
    body = json.dumps({'size': 60_000}).encode()
    requests = b''.join(f'POST /probe/sized HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n'
                        f'Content-Type: application/json\r\nContent-Length: {len(body)}\r\n'
                        f'X-Request-ID: piped-{number}\r\n\r\n'.encode() + body for number in range(100))
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', REQUEST_DEADLINE_MS='2000',
                             LOG_LEVEL='INFO') as (port, _):
        with socket.create_connection(('127.0.0.1', port)) as client:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            client.sendall(requests)  # 100 answers of 60 kB on one connection, none read: the buffers fill up
            cut = wait_for(lambda: [line for number in range(100) for line in access_lines(tmp_path, f'piped-{number}')
                                    if line['event']['outcome'] == 'failure'], 15, 'no answer was cut short')
            assert post(port, '/slow/sleep', {'seconds': 0}).status == 200
    assert cut[0]['error']['type'] == 'lib.db.unit.StreamPastDeadline', cut[0]
    assert 3 <= cut[0]['event']['duration'] / 1e9 < 5, 'the deadline (2 s) and a second'


@pytest.mark.slow
def test_an_answer_its_client_stopped_reading_is_cut_short_and_logged_when_the_worker_stops(database_url, tmp_path):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', GRACEFUL_TIMEOUT='2',
                             LOG_LEVEL='INFO') as (port, server):
        with raw_post(port, '/probe/sized', {'size': 20_000_000}, 'unread-at-stop'):
            time.sleep(0.5)  # the answer fills the sockets' buffers
            server.terminate()
            server.wait(10)
    line = gunicorn_access_line(tmp_path, 'unread-at-stop')  # logged: the worker cut it before the master's kill
    assert line['event']['outcome'] == 'failure'
    assert line['error']['type'] == 'lib.http.disconnect.ServerStopping', line['error']


@pytest.mark.slow
def test_a_stream_still_sent_at_the_deadline_is_cut_short_and_logged_as_past_it(database_url, tmp_path):
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1', REQUEST_DEADLINE_MS='2000',
                             LOG_LEVEL='INFO') as (port, _):
        with streaming(port, {'rows': 100_000, 'pause': 0.05}, 'stream-past-deadline') as response:
            started = time.monotonic()
            received = read_to_the_cut(response)
            took = time.monotonic() - started
    line = gunicorn_access_line(tmp_path, 'stream-past-deadline')
    assert server_tracebacks(tmp_path) == []
    assert 1.5 < took < 3, 'cut at the deadline, not at the database wait bound a second later'
    assert line['http']['response'] == {'status_code': 200, 'body': {'bytes': len(received)}}
    assert line['event']['outcome'] == 'failure'
    assert line['error']['type'] == 'lib.db.unit.StreamPastDeadline', line['error']
