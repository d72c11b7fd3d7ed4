"""Prometheus metrics: requests and latency by module, action and status, pool gauges, and GET /metrics.

Under gunicorn every worker writes its numbers to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode, chosen when prometheus_client is first imported, so gunicorn.conf.py sets the directory
before that), and whichever worker answers a scrape sums them all. Without the variable, as in the tests'
single process, the numbers live in this process's default registry.
"""
import atexit
import logging
import os
import threading
import time
from bisect import bisect_left

from flask import Blueprint, Response, current_app, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

MULTIPROC_DIR = 'PROMETHEUS_MULTIPROC_DIR'
REQUEST_LABELS = ('module', 'action', 'status')
# From a cached primary-key lookup to a statement that runs into the default 30 s timeout.
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter('dbapi_requests', 'Requests answered, by module, action and status.', REQUEST_LABELS)
LATENCY = Histogram('dbapi_request_duration_seconds',
                    'Time from the start of a request to the end of its response body.',
                    REQUEST_LABELS, buckets=LATENCY_BUCKETS)
# livesum: the sum over the processes alive now; a dead worker's share is dropped by forget_process.
POOL_CONNECTIONS = Gauge('dbapi_pool_connections', 'Pooled database connections by state (in_use, idle).',
                         ('database', 'state'), multiprocess_mode='livesum')
POOL_MAX = Gauge('dbapi_pool_max_connections', 'The most connections the pools may open.',
                 ('database',), multiprocess_mode='livesum')
POOL_EVENTS = {
    'waits': Counter('dbapi_pool_waits', 'Borrows that had to wait for a free connection.', ('database',)),
    'timeouts': Counter('dbapi_pool_timeouts', 'Borrows that gave up waiting (answered 503).', ('database',)),
    'connects': Counter('dbapi_pool_connects', 'Connections opened.', ('database',)),
    'discarded': Counter('dbapi_pool_discarded', 'Connections thrown away as broken or stale.', ('database',)),
}

# How often a worker in multiprocess mode hands its tallies to prometheus_client.
FLUSH_SECONDS = 1.0

log = logging.getLogger('dbapi.metrics')
metrics_endpoint = Blueprint('metrics', __name__)


class Tally:
    """The requests of one (module, action, status) since the last flush: count, seconds, latency buckets."""

    __slots__ = ('count', 'seconds', 'buckets')

    def __init__(self):
        self.count = 0
        self.seconds = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)

    def add(self, seconds):
        """Count one request that took seconds."""
        self.count += 1
        self.seconds += seconds
        self.buckets[bisect_left(LATENCY_BUCKETS, seconds)] += 1


class RequestMetrics:
    """An access log observer: counts and times each finished request and keeps the pool gauges current.

    In multiprocess mode each prometheus_client update takes a lock and writes a memory-mapped file, which
    cost more than the rest of the access line. So requests are tallied in plain numbers, and a thread of
    each worker hands them over, with the pools' numbers, once a second (and at exit, and before this
    worker answers a scrape). In a single process (tests) every request is handed over at once.
    """

    def __init__(self, pools, flush_seconds=None):
        self.pools = pools
        multiprocess_mode = bool(os.environ.get(MULTIPROC_DIR))
        self.flush_seconds = (FLUSH_SECONDS if multiprocess_mode else 0) if flush_seconds is None else flush_seconds
        self.tallies = {}
        self.lock = threading.Lock()
        # The flusher, a scrape and exit may flush at once; pool counters must grow by each change only once.
        self.flushing = threading.Lock()
        self.flusher_pid = None
        self.children = {}
        self.published = {}

    def __call__(self, module, action, status, seconds):
        """Tally one finished request; hand the tallies over now, or leave that to this process's flusher."""
        with self.lock:
            tally = self.tallies.get((module, action, status))
            if tally is None:
                tally = self.tallies[module, action, status] = Tally()
            tally.add(seconds)
        if not self.flush_seconds:
            self.flush()
        elif self.flusher_pid != os.getpid():
            self.start_flusher()

    def start_flusher(self):
        """Start this process's flusher thread (a forked worker has none of its parent's threads)."""
        self.flusher_pid = os.getpid()
        threading.Thread(target=self.flush_every_interval, name='dbapi-metrics', daemon=True).start()
        atexit.register(self.flush)

    def flush_every_interval(self):
        """Hand the tallies over every flush_seconds, for as long as the process lives."""
        while True:
            time.sleep(self.flush_seconds)
            try:
                self.flush()
            except Exception:
                log.exception('the metrics could not be handed to prometheus_client')

    def flush(self):
        """Hand the tallies since the last flush to prometheus_client, then publish the pools' numbers."""
        with self.flushing:
            with self.lock:
                tallies, self.tallies = self.tallies, {}
            for key, tally in tallies.items():
                self.record(key, tally)
            self.publish_pools()

    def record(self, key, tally):
        """Add one tally to the request counter and the latency histogram of its labels."""
        children = self.children.get(key)
        if children is None:
            labels = (key[0], key[1], str(key[2]))
            children = self.children[key] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
        counter, histogram = children
        counter.inc(tally.count)
        # Histogram.observe takes one value; its bucket and sum values (prometheus_client 0.2x) take a tally.
        histogram._sum.inc(tally.seconds)
        for bucket, count in zip(histogram._buckets, tally.buckets):
            if count:
                bucket.inc(count)

    def publish_pools(self):
        """Write each pool's numbers when they changed since the last request (usually they have not)."""
        for database, pool in self.pools.items():
            numbers = pool.gauges()
            before = self.published.get(database)
            if numbers != before:
                publish_pool(database, numbers, before or {})
                self.published[database] = numbers


def publish_pool(database, numbers, before):
    """Set the gauges of one pool and add what its event counts grew by since before."""
    POOL_CONNECTIONS.labels(database, 'in_use').set(numbers['in_use'])
    POOL_CONNECTIONS.labels(database, 'idle').set(numbers['idle'])
    POOL_MAX.labels(database).set(numbers['max'])
    for event, counter in POOL_EVENTS.items():
        grown = numbers.get(event, 0) - before.get(event, 0)
        if grown > 0:
            counter.labels(database).inc(grown)


def scrape_registry():
    """Return what a scrape reads: every worker's files in multiprocess mode, else this process's registry."""
    if not os.environ.get(MULTIPROC_DIR):
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return registry


@metrics_endpoint.route('/metrics', methods=['GET'])
def metrics():
    """Answer a Prometheus scrape in the text format the scraper asks for, this worker's latest tallies included."""
    gateway_metrics = getattr(current_app.extensions.get('dbapi'), 'metrics', None)
    if gateway_metrics is not None:
        gateway_metrics.flush()
    encode, content_type = choose_encoder(request.headers.get('Accept'))
    return Response(encode(scrape_registry()), content_type=content_type)


def clear_multiprocess_dir():
    """Empty the metrics directory when gunicorn starts: files left by an earlier run would be summed in."""
    folder = os.environ.get(MULTIPROC_DIR)
    if not folder:
        return
    os.makedirs(folder, exist_ok=True)
    for entry in os.scandir(folder):
        if entry.name.endswith('.db'):
            os.remove(entry.path)


def forget_process(pid):
    """Drop a dead worker's live gauges; its counters stay, so totals never go backwards."""
    if os.environ.get(MULTIPROC_DIR):
        multiprocess.mark_process_dead(pid)
