"""Scenario 8, "mixed" (issue 11): users/get under wrk while slow callers hold half of the connection budget.

Each round, on each side: users/get alone (a warm-up, then the measured run), then users/get again while slow
caller threads (bench/run.py says how many) POST the slow action (SLOW_SECONDS of pg_sleep) in a loop with the slow
client's token, and a prober GETs /healthz every PROBE_INTERVAL seconds on a new connection, as a liveness probe
does. The slow client may hold half of each worker's pool (its max_connections, bench/servers.py), and there are
more slow callers than that: those past the limit should get 429 (or 503) at once and, as a polite client does,
wait the Retry-After before calling again. Every call opens its own connection, so each lands on whichever worker
accepts it.
"""
import http.client
import json
import threading
import time
from dataclasses import dataclass
from statistics import quantiles

from .load import measure, run_wrk
from .servers import SLOW_TOKEN

SLOW_SECONDS = 1
PROBE_INTERVAL = 0.05
PROBE_TIMEOUT = 2
# Long enough for every slow caller to have made its first call and the callers past the limit to be refused.
SETTLE_SECONDS = 1.5
SLOW_CALL_TIMEOUT = 30


@dataclass(frozen=True)
class Call:
    """One slow call or health probe: when it started and ended (monotonic seconds), and its status (None: no
    answer)."""

    started: float
    ended: float
    status: int | None

    @property
    def ms(self):
        """How long it took, in milliseconds."""
        return (self.ended - self.started) * 1000


def timed_request(port, method, path, body=None, headers=None, timeout=PROBE_TIMEOUT):
    """Send one request on a new connection, read the answer; return its Call and the Retry-After seconds."""
    conn = http.client.HTTPConnection('127.0.0.1', port, timeout=timeout)
    started = time.monotonic()
    try:
        conn.request(method, path, body, headers or {})
        response = conn.getresponse()
        response.read()
        return Call(started, time.monotonic(), response.status), float(response.getheader('Retry-After') or 0)
    except (OSError, http.client.HTTPException):
        return Call(started, time.monotonic(), None), 0.0
    finally:
        conn.close()


def call_slowly(port, stopped, calls):
    """Call the slow action until stopped, waiting out each Retry-After; append each Call to calls."""
    body = json.dumps({'seconds': SLOW_SECONDS})
    headers = {'Authorization': f'Bearer {SLOW_TOKEN}', 'Content-Type': 'application/json'}
    while not stopped.is_set():
        call, retry_after = timed_request(port, 'POST', '/slow/sleep', body, headers, SLOW_CALL_TIMEOUT)
        calls.append(call)
        stopped.wait(retry_after)


def probe_health(port, stopped, probes):
    """GET /healthz every PROBE_INTERVAL seconds until stopped; append each Call to probes."""
    while not stopped.is_set():
        probes.append(timed_request(port, 'GET', '/healthz')[0])
        stopped.wait(PROBE_INTERVAL)


class Background:
    """Threads that run target(port, stopped, list) while the block runs; each appends to its own list."""

    def __init__(self, target, port, count):
        self.stopped = threading.Event()
        self.records = [[] for _ in range(count)]
        self.threads = [threading.Thread(target=target, args=(port, self.stopped, records), daemon=True)
                        for records in self.records]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopped.set()
        for thread in self.threads:
            thread.join()

    def calls(self):
        """Return every Call of every thread."""
        return [call for records in self.records for call in records]


def percentile(values, share):
    """Return the share-th percentile (1-99) of values; the only value when there is one; None for none."""
    values = list(values)
    if len(values) < 2:
        return values[0] if values else None
    return quantiles(values, n=100, method='inclusive')[share - 1]


@dataclass(frozen=True)
class MixedResult:
    """One side's round: users/get alone and under the slow load, and what the probes and slow callers saw."""

    alone: object
    loaded: object
    probes: tuple
    slow_calls: tuple
    slow_held: float

    @property
    def rate(self):
        """users/get requests per second under the slow load."""
        return self.loaded.rate

    @property
    def p50_ms(self):
        """users/get median latency under the slow load."""
        return self.loaded.p50_ms

    @property
    def p99_ms(self):
        """users/get p99 latency under the slow load."""
        return self.loaded.p99_ms

    @property
    def kept(self):
        """The share of its throughput alone that users/get kept under the slow load."""
        return self.loaded.rate / self.alone.rate

    def refusals(self):
        """Return the slow calls answered 429 or 503."""
        return [call for call in self.slow_calls if call.status in (429, 503)]

    def as_dict(self):
        """Return the round's numbers for the raw log."""
        health = [probe.ms for probe in self.probes if probe.status == 200]
        statuses = {}
        for call in self.slow_calls:
            statuses[str(call.status)] = statuses.get(str(call.status), 0) + 1
        return {'rps_alone': round(self.alone.rate, 1), 'rps': round(self.rate, 1), 'kept': round(self.kept, 3),
                'p50_ms': self.p50_ms, 'p99_ms': self.p99_ms, 'non_2xx': self.loaded.non_2xx,
                'timeouts': self.loaded.timeouts, 'healthz_p99_ms': round(percentile(health, 99) or 0, 1),
                'healthz_failed': len(self.probes) - len(health), 'slow_statuses': statuses,
                'refusal_p99_ms': round(percentile([call.ms for call in self.refusals()], 99) or 0, 1),
                'slow_held': round(self.slow_held, 2)}


def held_on_average(calls, start, end):
    """Return how many successful slow calls ran at once on average between start and end."""
    overlap = sum(max(0.0, min(call.ended, end) - max(call.started, start)) for call in calls if call.status == 200)
    return overlap / (end - start)


def measure_mixed(port, load, seconds, warmup, slow_callers):
    """Measure users/get alone, then under slow_callers slow callers with the /healthz prober; return the
    MixedResult."""
    url = f'http://127.0.0.1:{port}'
    alone = measure(url, load, seconds, warmup)
    with Background(call_slowly, port, slow_callers) as callers:
        time.sleep(SETTLE_SECONDS)
        with Background(probe_health, port, 1) as prober:
            start = time.monotonic()
            loaded = run_wrk(url, load, seconds)
            end = time.monotonic()
    during = [call for call in callers.calls() if start <= call.started <= end]
    held = held_on_average(callers.calls(), start, end)
    return MixedResult(alone, loaded, tuple(prober.calls()), tuple(during), held)
