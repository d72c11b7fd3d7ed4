"""Prometheus metrics: requests and latency by module, action and status, pool gauges, and GET /metrics.

Under gunicorn every worker writes its numbers to files in PROMETHEUS_MULTIPROC_DIR (prometheus_client's
multiprocess mode, chosen when prometheus_client is first imported, so gunicorn.conf.py sets the directory
before that), and whichever worker answers a scrape sums them all. Without the variable, as in the tests'
single process, the numbers live in this process's default registry.
"""
import os

from flask import Blueprint, Response, request
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

metrics_endpoint = Blueprint('metrics', __name__)


class RequestMetrics:
    """An access log observer: counts and times each finished request and keeps the pool gauges current."""

    def __init__(self, pools):
        self.pools = pools
        self.children = {}
        self.published = {}

    def __call__(self, module, action, status, seconds):
        """Record one finished request, then publish the pools' numbers if they moved."""
        children = self.children.get((module, action, status))
        if children is None:
            labels = (module, action, str(status))
            children = self.children[module, action, status] = (REQUESTS.labels(*labels), LATENCY.labels(*labels))
        children[0].inc()
        children[1].observe(seconds)
        self.publish_pools()

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
    """Answer a Prometheus scrape in the text format the scraper asks for."""
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
