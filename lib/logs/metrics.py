"""Prometheus metrics: requests, latency and answers cut short by module, action and status, pool gauges, and
GET /metrics.

Under gunicorn every worker writes its numbers to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode, chosen when prometheus_client is first imported, so gunicorn.conf.py sets the directory
before that), and whichever worker answers a scrape sums them all. Without the variable, as in the tests'
single process, the numbers live in this process's default registry.
"""
import atexit
import glob
import logging
import os
import struct
import threading
import time
import weakref

from flask import Blueprint, Response, current_app, request
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import choose_encoder

from lib.http.health import databases_answering
from lib.process import after_fork

MULTIPROC_DIR = 'PROMETHEUS_MULTIPROC_DIR'
REQUEST_LABELS = ('module', 'action', 'status')
# From a cached primary-key lookup to a statement that runs into the default 30 s timeout.
LATENCY_BUCKETS = (.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60)

REQUESTS = Counter('dbapi_requests', 'Requests answered, by module, action and status.', REQUEST_LABELS)
LATENCY = Histogram('dbapi_request_duration_seconds',
                    'Time from the start of a request to the end of its response body.',
                    REQUEST_LABELS, buckets=LATENCY_BUCKETS)
# What dbapi_requests_total cannot tell: an answer whose status (a 200) went out and whose body then ended early.
CUT_SHORT = Counter('dbapi_responses_cut_short', 'Answers whose body ended early after a status that tells no '
                    'failure was sent (a stream that broke, a worker stopping), by module, action and status.',
                    REQUEST_LABELS)
# livesum: the sum over the processes alive now; a dead worker's share is dropped by forget_process.
POOL_CONNECTIONS = Gauge('dbapi_pool_connections', 'Pooled database connections by state (in_use, idle).',
                         ('database', 'state'), multiprocess_mode='livesum')
POOL_MAX = Gauge('dbapi_pool_max_connections', 'The most connections the pools may open.',
                 ('database',), multiprocess_mode='livesum')
POOL_EVENTS = {
    'waits': Counter('dbapi_pool_waits', 'Borrows that had to wait for a free connection.', ('database',)),
    'timeouts': Counter('dbapi_pool_timeouts', 'Borrows that gave up waiting (answered 503).', ('database',)),
    'connects': Counter('dbapi_pool_connects', 'Connections opened.', ('database',)),
    'connect_failures': Counter('dbapi_pool_connect_failures', 'Connections that could not be opened or set up.',
                                ('database',)),
    'discarded': Counter('dbapi_pool_discarded', 'Connections thrown away as broken or stale.', ('database',)),
}

# How often a worker in multiprocess mode hands its tallies to prometheus_client.
FLUSH_SECONDS = 1.0
# The most durations a process keeps between two hand-overs; the request that reaches it hands them over itself.
MAX_PENDING = 10_000

log = logging.getLogger('dbapi.metrics')
metrics_endpoint = Blueprint('metrics', __name__)
LIVE_OBSERVERS = weakref.WeakSet()


class RequestMetrics:
    """An access log observer: counts and times each finished request and keeps the pool gauges current.

    In multiprocess mode each prometheus_client update takes a lock and writes a memory-mapped file, which
    costs more than the rest of the access line. So with fast paths on, a worker keeps each request's
    duration in a plain list, and a thread of its own hands them over, with the pools' numbers, once a
    second (and at exit, and before this worker answers a scrape), through the public calls: Counter.inc
    and one Histogram.observe per request. Every bucket, _count and _sum is exact: each duration is
    observed as it was measured. In a single process (tests), or with FAST_PATHS off, each request goes
    to prometheus_client as it finishes.
    """

    def __init__(self, pools, flush_seconds=None, fast_paths=True):
        self.pools = pools
        if flush_seconds is None:
            flush_seconds = FLUSH_SECONDS if fast_paths and os.environ.get(MULTIPROC_DIR) else 0
        self.flush_seconds = flush_seconds
        self.children = {}
        self.published = {}
        start_pool_counters(pools)
        # A worker's gauges count from its start: the sums over live workers would miss one that served nothing yet.
        self.publish_pools()
        self.forget_pending()
        LIVE_OBSERVERS.add(self)
        if flush_seconds:
            atexit.register(self.flush)

    def forget_pending(self):
        """Start with no durations, fresh locks and no flusher (a forked child has none of its parent's threads)."""
        self.pending = {}
        self.pending_count = 0
        self.lock = threading.Lock()
        # The flusher, a scrape and exit may flush at once; pool counters must grow by each change only once.
        self.flushing = threading.Lock()
        self.flusher_started = False

    def __call__(self, module, action, status, seconds, cut_short=False):
        """Record one finished request now, or keep its duration for this process's flusher; one cut short (rare)
        is counted in dbapi_responses_cut_short_total at once."""
        if cut_short:
            CUT_SHORT.labels(module, action, str(status)).inc()
        if not self.flush_seconds:
            self.hand_over({(module, action, status): (seconds,)})
            return
        with self.lock:
            durations = self.pending.get((module, action, status))
            if durations is None:
                durations = self.pending[module, action, status] = []
            durations.append(seconds)
            self.pending_count += 1
            start_flusher, self.flusher_started = not self.flusher_started, True
            full = self.pending_count >= MAX_PENDING
        if start_flusher:
            threading.Thread(target=self.flush_every_interval, name='dbapi-metrics', daemon=True).start()
        if full:
            self.flush()

    def flush_every_interval(self):
        """Hand the durations over every flush_seconds, for as long as the process lives."""
        while True:
            time.sleep(self.flush_seconds)
            try:
                self.flush()
            except Exception:
                log.exception('the metrics could not be handed to prometheus_client')

    def flush(self):
        """Hand the durations kept since the last flush to prometheus_client, then publish the pools' numbers."""
        with self.lock:
            pending, self.pending, self.pending_count = self.pending, {}, 0
        self.hand_over(pending)

    def hand_over(self, pending):
        """Record {(module, action, status): durations} in prometheus_client, then publish the pools' numbers."""
        with self.flushing:
            for key, durations in pending.items():
                self.record(key, durations)
            self.publish_pools()

    def record(self, key, durations):
        """Count the requests of one label set and observe each of their durations."""
        children = self.children.get(key)
        if children is None:
            labels = (key[0], key[1], str(key[2]))
            children = self.children[key] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
        counter, histogram = children
        counter.inc(len(durations))
        for seconds in durations:
            histogram.observe(seconds)

    def publish_pools(self):
        """Write each pool's numbers when they changed since the last request (usually they have not)."""
        for database, pool in self.pools.items():
            numbers = pool.gauges()
            before = self.published.get(database)
            if numbers != before:
                publish_pool(database, numbers, before or {})
                self.published[database] = numbers


def count_refused_request(status):
    """Count a request gunicorn answered itself (lib/http/workers.py) in dbapi_requests_total as its access line
    has it: no module or action; the histogram gets nothing, as gunicorn times nothing it refuses (trial AX: such
    requests had access lines and no count)."""
    REQUESTS.labels('', '', str(status)).inc()


@after_fork
def forget_parents_durations():
    """In a forked child, drop the durations its parent kept (the parent reports them) and let it start a flusher."""
    for observer in list(LIVE_OBSERVERS):
        observer.forget_pending()


def start_pool_counters(databases):
    """Create each pool event counter of every database at 0: a scrape shows it before its first event, so that
    rate() sees that first event and absent() does not fire on a healthy replica."""
    for database in databases:
        for counter in POOL_EVENTS.values():
            counter.labels(database)


def publish_pool(database, numbers, before):
    """Set the gauges of one pool and add what its event counts grew by since before."""
    POOL_CONNECTIONS.labels(database, 'in_use').set(numbers['in_use'])
    POOL_CONNECTIONS.labels(database, 'idle').set(numbers['idle'])
    POOL_MAX.labels(database).set(numbers['max'])
    for event, counter in POOL_EVENTS.items():
        grown = numbers.get(event, 0) - before.get(event, 0)
        if grown > 0:
            counter.labels(database).inc(grown)


class ReadableWorkerFiles:
    """A collector of every worker's metrics files, as prometheus_client's MultiProcessCollector, that skips a file
    it cannot read instead of failing the whole scrape: one caught half-made by a worker creating it, or left
    empty by a killed worker, would otherwise fail every scrape (prometheus/client_python#1199)."""

    def __init__(self, folder):
        self.folder = folder

    def collect(self):
        """Return the merged metrics of the readable files: all of them, read once, unless one cannot be read; then
        each is tried alone first (a scrape read every file twice: trial BV, 2.7 s with 800 files of dead workers)."""
        files = glob.glob(os.path.join(self.folder, '*.db'))
        try:
            return multiprocess.MultiProcessCollector.merge(files, accumulate=True)
        except FileNotFoundError:  # a dead worker's file removed since: read the others again
            return self.collect()
        except UNREADABLE:
            pass
        try:
            return multiprocess.MultiProcessCollector.merge(list(filter(readable_metrics_file, files)),
                                                           accumulate=True)
        except FileNotFoundError:
            return self.collect()


# What prometheus_client raises for a metrics file it cannot read (half-made, or left empty by a killed worker).
UNREADABLE = (OSError, RuntimeError, ValueError, struct.error)


def readable_metrics_file(path):
    """Tell whether prometheus_client can read one metrics file."""
    try:
        multiprocess.MultiProcessCollector.merge([path], accumulate=True)
    except UNREADABLE:
        return False
    return True


class DatabasesUp:
    """dbapi_database_up{database}: 1 when the database answers as /readyz asks it (SELECT 1 on a fresh connection,
    within a second for all of them: lib/http/health.py's databases_answering), else 0; asked by the worker that
    answers each scrape, so that an outage shows with no request arriving (trial BV: in quiet hours no alert could
    fire). No sample when another probe held the process's probe slot for the whole second."""

    def __init__(self, pools):
        self.pools = pools

    def collect(self):
        """Return the gauge's family, asked now."""
        family = GaugeMetricFamily('dbapi_database_up', 'Whether the database answers SELECT 1 on a fresh connection '
                                   'within a second, asked at this scrape (1) or not (0), by database.',
                                   labels=['database'])
        for name, answers in databases_answering(self.pools).items():
            family.add_metric([name], 1.0 if answers else 0.0)
        return [family]


class Collected:
    """A collector of what a registry collects: the process's default registry inside a scrape's own."""

    def __init__(self, registry):
        self.registry = registry

    def collect(self):
        """Return the registry's metrics."""
        return self.registry.collect()


def scrape_registry(pools):
    """Return what a scrape reads: every worker's files in multiprocess mode, else this process's registry, and
    whether each database of pools ({name: Pool}) answers now (DatabasesUp)."""
    registry = CollectorRegistry()
    multiprocess_dir = os.environ.get(MULTIPROC_DIR)
    registry.register(ReadableWorkerFiles(multiprocess_dir) if multiprocess_dir else Collected(REGISTRY))
    registry.register(DatabasesUp(pools))
    return registry


@metrics_endpoint.route('/metrics', methods=['GET'], provide_automatic_options=False, strict_slashes=False)
def metrics():
    """Answer a Prometheus scrape in the text format the scraper asks for, this worker's latest tallies included."""
    gateway = current_app.extensions.get('dbapi')
    gateway_metrics = getattr(gateway, 'metrics', None)
    if gateway_metrics is not None:
        gateway_metrics.flush()
    encode, content_type = choose_encoder(request.headers.get('Accept'))
    return Response(encode(scrape_registry(getattr(gateway, 'pools', {}))), content_type=content_type)


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
