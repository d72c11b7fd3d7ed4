"""Prometheus metrics: requests by module, action and status, latency, answers cut short, pool gauges, multiprocess
gunicorn."""
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg2.errors
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

import settings
from lib.logs import metrics
from lib.logs.metrics import FLUSH_SECONDS, MULTIPROC_DIR, RequestMetrics
from tests.helpers import ADMIN_TOKEN, UNREACHABLE_DSN, Caller, gunicorn_logging_to, http_request

POOL_EVENTS = ('waits', 'timeouts', 'connects', 'connect_failures', 'discarded')


def sample(name, **labels):
    """Return a sample's value in this process's registry, 0 when it was never recorded."""
    return REGISTRY.get_sample_value(name, labels) or 0


def scraped(text):
    """Parse Prometheus text into {(sample name, sorted labels): value}."""
    return {(entry.name, tuple(sorted(entry.labels.items()))): entry.value
            for family in text_string_to_metric_families(text) for entry in family.samples}


def total(samples, name, **labels):
    """Return the sum of the samples of name whose labels include labels."""
    return sum(value for (sample_name, sample_labels), value in samples.items()
               if sample_name == name and labels.items() <= dict(sample_labels).items())


@pytest.fixture()
def fresh_client(make_app):
    """A test client of a fresh app, with pools of its own."""
    return make_app().test_client()


def test_metrics_answers_a_scrape_in_prometheus_text_without_a_token(fresh_client):
    response = fresh_client.get('/metrics', buffered=True)
    assert response.status_code == 200
    assert response.headers['Content-Type'].startswith('text/plain; version=0.0.4')
    names = {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}
    assert {'dbapi_requests', 'dbapi_request_duration_seconds', 'dbapi_pool_connections', 'dbapi_pool_max_connections',
            'dbapi_pool_waits', 'dbapi_pool_timeouts', 'dbapi_responses_cut_short'} <= names
    assert fresh_client.post('/metrics', buffered=True).status_code == 405


def test_a_scrape_is_never_compressed(fresh_client):
    """Prometheus text, not JSON: contract section 4 compresses JSON bodies alone (trial AO read it as any body)."""
    response = fresh_client.get('/metrics', buffered=True, headers={'Accept-Encoding': 'gzip, br'})
    assert len(response.get_data()) >= 500 and 'Content-Encoding' not in response.headers


@pytest.mark.parametrize('path, body, module, action, status', [
    ('/probe/echo', {'a': 1}, 'probe', 'echo', '200'),
    ('/probe/missing', None, 'probe', 'missing', '404'),
    ('/probe/crash', None, 'probe', 'crash', '500'),
    ('/probe/reports/daily', None, 'probe', 'reports/daily', '200'),
    ('/no/such/module', None, '', '', '404'),
])
def test_each_request_is_counted_and_timed_by_module_action_and_status(fresh_client, path, body, module, action,
                                                                      status):
    labels = dict(module=module, action=action, status=status)
    names = ('dbapi_requests_total', 'dbapi_request_duration_seconds_count', 'dbapi_request_duration_seconds_sum')
    before = [sample(name, **labels) for name in names]
    started = time.perf_counter()
    assert Caller(fresh_client)(path, body).status_code == int(status)
    elapsed = time.perf_counter() - started
    counted, timed, seconds = (sample(name, **labels) - value for name, value in zip(names, before))
    assert counted == timed == 1
    assert 0 < seconds <= elapsed


def test_an_answer_cut_short_after_its_status_is_counted_apart(fresh_client):
    """A stream that broke half-way was counted as any 200 (trial AX): dbapi_responses_cut_short_total says it."""
    call, labels = Caller(fresh_client), dict(module='slow', action='stream', status='200')
    before = sample('dbapi_responses_cut_short_total', **labels)
    assert call('/slow/stream', {'rows': 10}).status_code == 200
    assert sample('dbapi_responses_cut_short_total', **labels) == before, 'a whole stream is not counted'
    with pytest.raises(psycopg2.errors.DivisionByZero):  # the server closes the connection: the test client raises
        call('/slow/stream', {'rows': 1000, 'fail_at': 550})
    assert sample('dbapi_responses_cut_short_total', **labels) == before + 1
    assert sample('dbapi_responses_cut_short_total', module='probe', action='crash', status='500') == 0
    call('/probe/crash')
    assert sample('dbapi_responses_cut_short_total', module='probe', action='crash', status='500') == 0, \
        'a 500 says its failure itself'


def test_pool_gauges_follow_the_pool(make_app):
    app = make_app(DB_POOL_MAX=3)
    pool = app.extensions['dbapi'].pools['default']
    Caller(app.test_client())('/probe/add', {'a': 1, 'b': 2})
    assert sample('dbapi_pool_max_connections', database='default') == 3
    assert sample('dbapi_pool_connections', database='default', state='idle') == pool.gauges()['idle'] == 1
    assert sample('dbapi_pool_connections', database='default', state='in_use') == 0


def test_a_connection_that_could_not_be_opened_is_counted_as_a_failure_not_as_opened(make_app):
    """Each failed attempt counted in dbapi_pool_connects_total: an outage looked like connection churn (trial BE)."""
    app = make_app(DATABASES={'default': UNREACHABLE_DSN})
    before = {event: sample(f'dbapi_pool_{event}_total', database='default') for event in POOL_EVENTS}
    assert [Caller(app.test_client())('/probe/add', {'a': 1, 'b': 2}).status_code for _ in range(2)] == [503] * 2
    app.test_client().get('/healthz', buffered=True)  # any finished request publishes the pool's numbers
    grown = {event: sample(f'dbapi_pool_{event}_total', database='default') - before[event] for event in POOL_EVENTS}
    assert (grown['connects'], grown['connect_failures']) == (0, 2)


def test_pool_timeouts_and_waits_are_counted(make_app):
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=100)
    before = {event: sample(f'dbapi_pool_{event}_total', database='default') for event in POOL_EVENTS}
    holder = threading.Thread(target=Caller(app.test_client()), args=('/probe/hold', {'seconds': 1.0}))
    holder.start()
    time.sleep(0.3)
    assert Caller(app.test_client())('/probe/hold', {'seconds': 0}).status_code == 503
    holder.join()
    app.test_client().get('/healthz', buffered=True)  # any finished request publishes the pool's numbers
    grown = {event: sample(f'dbapi_pool_{event}_total', database='default') - before[event] for event in POOL_EVENTS}
    assert grown['timeouts'] == 1 and grown['connects'] == 1
    if 'waits' in app.extensions['dbapi'].pools['default'].gauges():
        assert grown['waits'] == 1


def scrape(port):
    """Scrape a running server's /metrics."""
    reply = http_request(port, 'GET', '/metrics')
    assert reply.status == 200
    return scraped(reply.body.decode())


def scrape_until(port, settled, seconds=5):
    """Scrape until settled(samples) holds (each worker hands its tallies over once a second); return them."""
    deadline = time.monotonic() + seconds
    samples = scrape(port)
    while not settled(samples) and time.monotonic() < deadline:
        time.sleep(0.1)
        samples = scrape(port)
    return samples


def test_tallies_reach_prometheus_only_when_handed_over(make_app):
    pools = make_app().extensions['dbapi'].pools
    observer = RequestMetrics(pools, flush_seconds=3600)
    labels = dict(module='tally', action='held', status='200')
    for seconds in (0.003, 0.2, 0.0049, 0.005):
        observer('tally', 'held', 200, seconds)
    assert sample('dbapi_requests_total', **labels) == 0
    observer.flush()
    assert sample('dbapi_requests_total', **labels) == 4
    assert sample('dbapi_request_duration_seconds_count', **labels) == 4
    assert sample('dbapi_request_duration_seconds_sum', **labels) == 0.003 + 0.2 + 0.0049 + 0.005  # exact
    assert sample('dbapi_request_duration_seconds_bucket', le='0.0025', **labels) == 0
    assert sample('dbapi_request_duration_seconds_bucket', le='0.005', **labels) == 3  # le: 0.005 itself is in
    assert sample('dbapi_request_duration_seconds_bucket', le='0.1', **labels) == 3
    assert sample('dbapi_request_duration_seconds_bucket', le='0.25', **labels) == 4
    assert sample('dbapi_request_duration_seconds_bucket', le='+Inf', **labels) == 4


def test_a_flusher_thread_hands_tallies_over_without_further_requests(make_app):
    observer = RequestMetrics(make_app().extensions['dbapi'].pools, flush_seconds=0.05)
    labels = dict(module='tally', action='idle', status='204')
    observer('tally', 'idle', 204, 0.001)
    deadline = time.monotonic() + 5
    while sample('dbapi_requests_total', **labels) == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert sample('dbapi_requests_total', **labels) == 1


def test_kept_durations_are_bounded(make_app, monkeypatch):
    monkeypatch.setattr(metrics, 'MAX_PENDING', 3)
    observer = RequestMetrics(make_app().extensions['dbapi'].pools, flush_seconds=3600)
    labels = dict(module='tally', action='bounded', status='200')
    for _ in range(3):
        observer('tally', 'bounded', 200, 0.001)
    assert sample('dbapi_requests_total', **labels) == 3, 'the request that fills the list hands it over'
    assert observer.pending == {}


@pytest.mark.parametrize('fast_paths, flush_seconds', [(True, FLUSH_SECONDS), (False, 0)])
def test_in_multiprocess_mode_only_fast_paths_keep_durations(make_app, monkeypatch, fast_paths, flush_seconds):
    monkeypatch.setenv(MULTIPROC_DIR, '/nonexistent')  # read when the observer is made, not here
    observer = RequestMetrics(make_app().extensions['dbapi'].pools, fast_paths=fast_paths)
    assert observer.flush_seconds == flush_seconds
    monkeypatch.delenv(MULTIPROC_DIR)
    labels = dict(module='tally', action=f'fast-{fast_paths}', status='200')
    observer('tally', f'fast-{fast_paths}', 200, 0.001)
    assert sample('dbapi_requests_total', **labels) == (0 if fast_paths else 1)
    observer.flush()
    assert sample('dbapi_requests_total', **labels) == 1


def starts_fresh(observer):
    """In a forked child: fail unless observer kept no durations, started no flusher and holds a free lock."""
    assert observer.pending == {} and not observer.flusher_started
    assert observer.flushing.acquire(blocking=False)


def test_a_forked_child_forgets_its_parents_durations_and_starts_its_own_flusher(make_app):
    observer = RequestMetrics(make_app().extensions['dbapi'].pools, flush_seconds=3600)
    observer('tally', 'forked', 200, 0.001)
    child = multiprocessing.get_context('fork').Process(target=starts_fresh, args=(observer,))
    with observer.flushing:  # held by the parent at the fork, as a flush in progress would be
        child.start()
    child.join()
    assert child.exitcode == 0
    assert observer.pending and observer.flusher_started, 'the parent keeps its own'


@pytest.mark.slow
@pytest.mark.parametrize('fast_paths', ['1', '0'])
def test_gunicorn_workers_share_one_set_of_metrics(tmp_path, database_url, fast_paths):
    metrics_dir = tmp_path / 'metrics'
    metrics_dir.mkdir()
    (metrics_dir / 'counter_999999.db').write_bytes(b'\0' * 16)  # left by an earlier run
    auth = {'Content-Type': 'application/json', 'Authorization': f'Bearer {ADMIN_TOKEN}'}
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, DB_POOL_MAX='2', FAST_PATHS=fast_paths,
                          PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as (port, server):
        assert not (metrics_dir / 'counter_999999.db').exists(), 'gunicorn starts the metrics from zero'
        with ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(lambda _: http_request(port, 'POST', '/probe/hold', b'{"seconds": 0.05}', auth),
                                    range(60)))
            pids = set(pool.map(lambda _: http_request(port, 'POST', '/probe/pid', b'', auth).json()['pid'], range(30)))
        assert {reply.status for reply in replies} == {200}
        assert len(pids) >= 2, 'concurrent requests reach more than one worker'
        held = dict(module='probe', action='hold', status='200')
        # A flush counts a batch of requests, then observes each one's duration: a scrape between the two sees the
        # count whole and the durations on their way, so wait for both.
        samples = scrape_until(port, lambda samples: total(samples, 'dbapi_requests_total', **held) == 60 and
                               total(samples, 'dbapi_request_duration_seconds_count', **held) == 60)
        assert total(samples, 'dbapi_requests_total', **held) == 60
        assert total(samples, 'dbapi_request_duration_seconds_count', **held) == 60
        assert total(samples, 'dbapi_request_duration_seconds_sum', **held) >= 60 * 0.05
        assert total(samples, 'dbapi_request_duration_seconds_bucket', le='0.025', **held) == 0
        assert total(samples, 'dbapi_request_duration_seconds_bucket', le='+Inf', **held) == 60
        # Each worker that served publishes its pool: 2 connections at most, summed over the live workers.
        assert 2 * len(pids) <= total(samples, 'dbapi_pool_max_connections', database='default') <= 2 * 3
        assert total(samples, 'dbapi_pool_connects_total', database='default') >= len(pids)
        # A request gunicorn refuses itself is counted as its access line has it, with no duration (trial AX).
        for request in (b'NOT A REQUEST\r\n\r\n', b'GET /' + b'a' * 9000 + b' HTTP/1.1\r\n\r\n'):
            with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
                sock.sendall(request)
                while sock.recv(65536):
                    pass
        refused = scrape_until(port, lambda samples: total(samples, 'dbapi_requests_total', module='', action='',
                                                           status='414') == 1)
        assert total(refused, 'dbapi_requests_total', module='', action='', status='400') == 1
        assert total(refused, 'dbapi_request_duration_seconds_count', module='', action='', status='400') == 0
        victim = min(pids)
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 15
        while (metrics_dir / f'gauge_livesum_{victim}.db').exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not (metrics_dir / f'gauge_livesum_{victim}.db').exists(), "a dead worker's gauges are dropped"
        assert total(scrape(port), 'dbapi_requests_total', **held) == 60, 'its counts stay'


def test_a_scrape_skips_a_worker_file_it_cannot_read(tmp_path):
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from lib.logs.metrics import ReadableWorkerFiles
    good = MmapedDict(str(tmp_path / 'counter_101.db'))
    good.write_value(mmap_key('dbapi_demo', 'dbapi_demo_total', [], [], 'A demo counter.'), 3.0, 0.0)
    good.close()
    (tmp_path / 'counter_102.db').write_bytes(b'')  # left empty by a worker killed while creating it
    (tmp_path / 'counter_103.db').write_bytes(b'\xff' * 16)  # caught half-written
    registry = CollectorRegistry()
    registry.register(ReadableWorkerFiles(str(tmp_path)))
    assert 'dbapi_demo_total 3.0' in generate_latest(registry).decode()


def test_a_scrape_reads_the_worker_files_once_when_each_can_be_read(tmp_path, monkeypatch):
    """Each file was read alone to check it, then all again: four times the work (trial BV: 2.7 s with the 800 files
    of 400 dead workers)."""
    from prometheus_client import CollectorRegistry, generate_latest, multiprocess
    from prometheus_client.mmap_dict import MmapedDict, mmap_key

    from lib.logs.metrics import ReadableWorkerFiles
    for pid in (201, 202):
        values = MmapedDict(str(tmp_path / f'counter_{pid}.db'))
        values.write_value(mmap_key('dbapi_demo', 'dbapi_demo_total', [], [], 'A demo counter.'), 2.0, 0.0)
        values.close()
    merged = []
    merge = multiprocess.MultiProcessCollector.merge
    monkeypatch.setattr(multiprocess.MultiProcessCollector, 'merge',
                        staticmethod(lambda files, accumulate=True: merged.append(files) or merge(files, accumulate)))
    registry = CollectorRegistry()
    registry.register(ReadableWorkerFiles(str(tmp_path)))
    assert 'dbapi_demo_total 4.0' in generate_latest(registry).decode()
    assert len(merged) == 1 and len(merged[0]) == 2


HOLD_A_FOLDER = '''
import sys, time
from lib.process import made_held_folder
print(made_held_folder(sys.argv[1]), flush=True)
time.sleep(60)
'''


def test_a_metrics_folder_whose_makers_were_killed_is_removed_by_the_next_start(tmp_path, monkeypatch):
    """A gunicorn master killed outright (SIGKILL) never ran the exit handler that removes the metrics folder it made,
    which stayed for good in an emptyDir that outlives its container (trial BV); a living maker's folder, and one
    without a lock file (a start under way), stay."""
    from lib.process import HELD_LOCKS, HOLDER_LOCK_NAME, made_held_folder
    prefix = 'dbapi-test-held-'
    environment = {**os.environ, 'TMPDIR': str(tmp_path), 'PYTHONPATH': str(settings.BASE_DIR)}
    holders = [subprocess.Popen([sys.executable, '-c', HOLD_A_FOLDER, prefix], env=environment, text=True,
                                stdout=subprocess.PIPE) for _ in range(2)]
    try:
        killed, living = [Path(holder.stdout.readline().strip()) for holder in holders]
        holders[0].kill()
        holders[0].wait()
        starting = Path(tempfile.mkdtemp(prefix=prefix, dir=tmp_path))
        monkeypatch.setattr(tempfile, 'tempdir', str(tmp_path))
        made = Path(made_held_folder(prefix))
        assert (killed.exists(), living.exists(), starting.exists()) == (False, True, True)
        assert (made / HOLDER_LOCK_NAME).exists() and (living / HOLDER_LOCK_NAME).exists()
        HELD_LOCKS.pop().close()  # the test's own hold ends with it
    finally:
        for holder in holders:
            holder.kill()
            holder.wait()
