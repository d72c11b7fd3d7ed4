"""`make bench BENCH_ARGS=--profile`: where a users/get request's time goes, into bench/results/<date>-profile.md.

Three views. py-spy samples one live gunicorn worker (production settings) under wrk and files each on-CPU
sample under the first matching part of the request path (BUCKETS). Then, in this process, the same
request goes straight to the WSGI app of the gateway, of the gateway less one hook, and of the baseline:
the differences are what each hook costs, without sockets, gunicorn or wrk. Then a stopwatch times each
part of the gateway's request, and last each part runs alone, warm, under timeit.
"""
import contextlib
import datetime
import functools
import os
import random
import subprocess
import sys
import tempfile
import time
import timeit
from collections import Counter
from pathlib import Path
from unittest import mock

from .data import USERS, start_database
from .load import Load, run_wrk
from .results_files import unused_path
from ops.ports import free_ports

from .servers import BENCH_TOKEN, kept, start_gateway, worker_processes

RESULTS_DIR = Path(__file__).with_name('results')
PY_SPY = Path(sys.executable).with_name('py-spy')
SAMPLE_RATE = 200
# A sample goes to the bucket of its innermost frame that matches a pattern: the middlewares wrap the whole
# request, so a sample in psycopg2 under AccessLog.__call__ is the database's, not the access log's. Within
# one frame, the first bucket listed wins.
BUCKETS = (
    ('metrics observer (prometheus_client files)', ('lib/logs/metrics.py', 'prometheus_client/')),
    ('access log line (lib/logs/, logging, ECS)', ('lib/logs/',)),
    ('compression hook (flask_compress)', ('flask_compress/', 'compress_large')),
    ('request id middleware', ('lib/http/requestid.py',)),
    ('bearer check (lib/auth/)', ('lib/auth/',)),
    ('body read and JSON parse', ('read_json_body',)),
    ('schema validation (fast path, marshmallow)', ('lib/fastschema.py', 'marshmallow/', 'load_arguments')),
    ('JSON encoding of the result', ('lib/jsonenc.py', 'respond (lib/modules.py')),
    ('database: pool, transaction, query, rows', ('lib/db/', 'lib/decorators.py', 'psycopg2')),
    ('Flask and werkzeug: routing, request and response objects', ('flask/', 'werkzeug/')),
    ('gunicorn: accept, HTTP parsing, socket writes', ('gunicorn/',)),
)
BETWEEN_REQUESTS = 'between requests'
# gunicorn's request handler, per worker class (gevent's is AsyncWorker's): a sample outside it is between requests.
IN_REQUEST_FRAMES = ('SyncWorker.handle ', 'AsyncWorker.handle ', 'ThreadWorker.handle ')
# What the in-process stopwatch times: request hooks by name, and the view's helpers in lib.modules.
HOOK_PARTS = {'compress_large': 'compression hook'}
VIEW_PARTS = {'authorize': 'bearer check', 'read_json_body': 'body read and JSON parse',
              'respond': 'JSON encoding and Response'}
METRICS_PART = 'metrics observer (part of writing the line)'
DEVNULL = open(os.devnull, 'w')  # the in-process gateway's log lines go here, as the bench's go to /dev/null


def bucket_of(frames):
    """Return the bucket of one sample's stack ("root;...;leaf")."""
    if not any(frame in frames for frame in IN_REQUEST_FRAMES):
        return BETWEEN_REQUESTS
    for frame in reversed(frames.split(';')):
        for label, patterns in BUCKETS:
            if any(pattern in frame for pattern in patterns):
                return label
    return 'other'


def read_samples(raw_file):
    """Count py-spy's raw samples ("frame;frame;... count" lines) per bucket."""
    buckets = Counter()
    for line in Path(raw_file).read_text().splitlines():
        frames, _, count = line.rpartition(' ')
        buckets[bucket_of(frames)] += int(count)
    return buckets


def spy_on_worker(seconds, dsn, run_dir, raw_file):
    """Run a one-worker gateway under wrk -c4 while py-spy samples it; return the requests wrk made."""
    (port,) = free_ports(1)
    with contextlib.ExitStack() as stack:
        gateway = kept(stack, start_gateway('bench-profile', port, dsn, run_dir, workers=1, pool_max=2))
        run_wrk(f'http://127.0.0.1:{port}', Load('/users/get', 'get', connections=4), 1)  # warm-up
        pid = worker_processes(gateway, 1)[0].pid
        spy = subprocess.Popen([str(PY_SPY), 'record', '--pid', str(pid), '--duration', str(seconds),
                                '--rate', str(SAMPLE_RATE), '--format', 'raw', '--output', str(raw_file)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        result = run_wrk(f'http://127.0.0.1:{port}', Load('/users/get', 'get', connections=4), seconds)
        if spy.wait():
            raise RuntimeError('py-spy failed: it needs ptrace (root, or CAP_SYS_PTRACE)')
    return result.requests


def spy_table(buckets, requests):
    """Return the Markdown lines of the py-spy view: each part's share of the worker's CPU samples."""
    in_request = sum(count for label, count in buckets.items() if label != BETWEEN_REQUESTS)
    lines = ['| part of the request | share of CPU samples |', '|---|--:|']
    lines += [f'| {label} | {count / in_request:.1%} |' for label, count in buckets.most_common()
              if label != BETWEEN_REQUESTS]
    return lines + ['', f'{in_request} on-CPU samples at {SAMPLE_RATE} Hz inside {requests} requests (py-spy pauses '
                        'the worker to sample it, so read shares, not times; waits for PostgreSQL are not on-CPU).']


def request_environs(count):
    """Return count fresh WSGI environs of a users/get POST with random ids."""
    from werkzeug.test import EnvironBuilder
    headers = {'Authorization': f'Bearer {BENCH_TOKEN}', 'Content-Type': 'application/json'}
    bodies = (f'{{"id":{random.randint(1, USERS)}}}' for _ in range(count))
    return [EnvironBuilder(path='/users/get', method='POST', headers=headers, data=body,
                           environ_base={'REMOTE_ADDR': '127.0.0.1'}).get_environ() for body in bodies]


def call_wsgi(app, environ, note_status=lambda status: None):
    """Send one request to app and read and close its body, as gunicorn does; pass its status to note_status."""
    body = app(environ, lambda status, headers, exc_info=None: note_status(status))
    try:
        for _ in body:
            pass
    finally:
        getattr(body, 'close', lambda: None)()


def microseconds_per_request(app, count, clock=time.perf_counter):
    """Return the mean microseconds of count requests sent straight to app, by clock."""
    environs = request_environs(count)
    started = clock()
    for environ in environs:
        call_wsgi(app, environ)
    return (clock() - started) / count * 1e6


def middleware_chain(app):
    """Return app's WSGI middlewares, outermost first (RequestIds, AccessLog, ...), down to Flask's own."""
    chain, layer = [], app.wsgi_app
    while hasattr(layer, 'wsgi_app'):
        chain.append(layer)
        layer = layer.wsgi_app
    return chain


def find_layer(app, kind):
    """Return the middleware of class kind in app's chain."""
    return next(layer for layer in middleware_chain(app) if isinstance(layer, kind))


def skip_layer(app, kind):
    """Take the middleware of class kind out of app's chain."""
    chain = middleware_chain(app)
    index = next(index for index, layer in enumerate(chain) if isinstance(layer, kind))
    if index == 0:
        app.wsgi_app = chain[0].wsgi_app
    else:
        chain[index - 1].wsgi_app = chain[index].wsgi_app


def gateway_app(dsn, without=(), trusted_proxy_hops=0):
    """Build the gateway in this process with production settings, less the named parts."""
    from app import create_app
    from lib.logs import AccessLog
    from lib.http.headers import ResponseHeaders, request_id_header
    from lib.http.requestid import RequestIds
    overrides = dict(DATABASES={'default': dsn}, BEARER=BENCH_TOKEN, ENVIRONMENT='production', LOG_LEVEL='INFO',
                     LOG_PATH=None, PROCESS_ID='bench-profile', TRUSTED_PROXY_HOPS=trusted_proxy_hops)
    with contextlib.redirect_stdout(DEVNULL):
        app = create_app(overrides)
    hooks = app.after_request_funcs[None]
    hooks[:] = [hook for hook in hooks if hook.__name__ not in without]
    if 'metrics observer' in without:
        find_layer(app, AccessLog).observers = ()
    if 'access log' in without:
        skip_layer(app, AccessLog)
    if 'request ids' in without:
        skip_layer(app, RequestIds)
        header_step = find_layer(app, ResponseHeaders)  # its X-Request-ID header reads the id RequestIds sets
        header_step.steps = tuple(step for step in header_step.steps if step is not request_id_header)
    return app


def baseline_app(dsn):
    """Build bench/baseline.py's app in this process."""
    os.environ['BASELINE_DSN'] = dsn
    from .baseline import create_app
    return create_app()


def variants(dsn):
    """Return the apps to time, by name: the gateway, the gateway less each hook, the baseline."""
    return {
        'gateway as configured': gateway_app(dsn),
        'less the metrics observer': gateway_app(dsn, ('metrics observer',)),
        'less the access log (and metrics)': gateway_app(dsn, ('access log',)),
        'less the compression hook': gateway_app(dsn, ('compress_large',)),
        'less the request id middleware': gateway_app(dsn, ('request ids',)),
        'baseline (bare Flask + jsonify)': baseline_app(dsn),
    }


def in_process_table(dsn, count=2000, rounds=5):
    """Return the Markdown lines of the in-process view: the best of rounds, alternating the variants."""
    apps = variants(dsn)
    best = {name: float('inf') for name in apps}
    for _ in range(rounds):
        for name, app in apps.items():
            # This process's CPU time: PostgreSQL's share and the other load on the machine stay out of it.
            best[name] = min(best[name], microseconds_per_request(app, count, time.process_time))
    full = best['gateway as configured']
    lines = ['| app | CPU us per request | saved against the gateway |', '|---|--:|--:|']
    lines += [f'| {name} | {micros:.0f} | {full - micros:+.0f} |' for name, micros in best.items()]
    return lines


class Stopwatch:
    """Wall time per part, summed by the wrappers wrap() returns."""

    def __init__(self):
        self.totals = Counter()

    def wrap(self, part, function):
        """Return function, timed into part."""
        @functools.wraps(function)
        def timed(*args, **kwargs):
            started = time.process_time()
            try:
                return function(*args, **kwargs)
            finally:
                self.totals[part] += time.process_time() - started
        return timed


def instrument(app, watch):
    """Time app's hooks, routes and access log with watch; return the patches that time the view's helpers."""
    import lib.modules
    from lib.logs import AccessLog
    access_log = find_layer(app, AccessLog)
    access_log.observers = tuple(watch.wrap(METRICS_PART, observer) for observer in access_log.observers)
    access_log.finish = watch.wrap('access log: gather the fields and write the line', access_log.finish)
    hooks = app.after_request_funcs[None]
    hooks[:] = [watch.wrap(HOOK_PARTS[hook.__name__], hook) if hook.__name__ in HOOK_PARTS else hook
                for hook in hooks]
    for route in app.extensions['dbapi'].routes:  # frozen dataclasses, and the views hold these very objects
        object.__setattr__(route, 'load_arguments', watch.wrap('schema validation', route.load_arguments))
        object.__setattr__(route, 'action', watch.wrap('database: pool, transaction, query', route.action))
    return [mock.patch.object(lib.modules, name, watch.wrap(part, getattr(lib.modules, name)))
            for name, part in VIEW_PARTS.items()]


def parts_table(dsn, count=3000):
    """Return the Markdown lines of the stopwatch view: each part's microseconds in a users/get request."""
    watch = Stopwatch()
    app = gateway_app(dsn)
    with contextlib.ExitStack() as patches:
        for patch in instrument(app, watch):
            patches.enter_context(patch)
        microseconds_per_request(app, 200)  # warm-up
        watch.totals.clear()
        whole = microseconds_per_request(app, count, time.process_time)
    parts = {part: total / count * 1e6 for part, total in watch.totals.most_common()}
    rest = whole - sum(micros for part, micros in parts.items() if part != METRICS_PART)
    lines = ['| part | CPU us per request | share |', '|---|--:|--:|']
    lines += [f'| {part} | {micros:.0f} | {micros / whole:.0%} |' for part, micros in parts.items()]
    return lines + [f'| the rest: Flask and werkzeug request, routing, response, teardown | {rest:.0f} | '
                    f'{rest / whole:.0%} |', f'| whole request, the stopwatch included | {whole:.0f} | 100% |']


def constant_app(environ, start_response):
    """A WSGI app answering a small constant JSON body, to time a middleware around it."""
    start_response('200 OK', [('Content-Type', 'application/json'), ('Content-Length', '2')])
    return [b'{}']


def isolated_parts(app):
    """Return each part of a users/get request as a call to repeat, inside an active request context."""
    import orjson
    from flask import request

    import lib.modules as modules
    from lib.logs import AccessLog
    from lib.http.requestid import RequestIds
    gateway = app.extensions['dbapi']
    route = next(route for route in gateway.routes if (route.module, route.name) == ('users', 'get'))
    hooks = {hook.__name__: hook for hook in app.after_request_funcs[None]}
    row = route.action(id=1)
    response = modules.respond(row)
    observers = find_layer(app, AccessLog).observers
    return {
        'bearer check': functools.partial(modules.authorize, gateway.clients, 'users'),
        'JSON body parse (orjson.loads)': functools.partial(orjson.loads, b'{"id": 1}'),
        'schema validation': functools.partial(route.load_arguments, {'id': 1}),
        'database: pool, transaction, query (the action)': functools.partial(route.action, id=1),
        'JSON encoding and Response': functools.partial(modules.respond, row),
        'request id middleware, around a constant app': functools.partial(
            call_wsgi, RequestIds(constant_app), dict(request.environ)),
        'compression hook (nothing to compress)': functools.partial(hooks['compress_large'], response),
        'access log middleware, line and metrics, around a constant app': functools.partial(
            call_wsgi, AccessLog(constant_app, observers), dict(request.environ)),
        'metrics observer alone': functools.partial(observers[0], 'users', 'get', 200, 0.001),
    }


def isolated_table(dsn, number=2000):
    """Return the Markdown lines of each part run alone and warm, best of 5, in one users/get request context."""
    app = gateway_app(dsn)
    headers = {'Authorization': f'Bearer {BENCH_TOKEN}', 'Content-Type': 'application/json'}
    with app.test_request_context('/users/get', method='POST', headers=headers, data='{"id": 1}',
                                  environ_base={'REMOTE_ADDR': '127.0.0.1'}):
        timings = {part: min(timeit.repeat(call, number=number, repeat=5, timer=time.process_time)) / number * 1e6
                   for part, call in isolated_parts(app).items()}
    return ['| part, alone and warm | CPU us per call |', '|---|--:|',
            *(f'| {part} | {micros:.1f} |' for part, micros in timings.items())]


def main(options):
    """Profile the headline both ways and write bench/results/<date>-profile.md."""
    dsn = start_database()
    with tempfile.TemporaryDirectory(prefix='dbapi-profile-') as run_dir:
        os.environ['PROMETHEUS_MULTIPROC_DIR'] = run_dir  # as under gunicorn, before lib.logs.metrics is imported
        raw_file = Path(run_dir) / 'py-spy.raw'
        requests = spy_on_worker(max(options.seconds, 5), dsn, run_dir, raw_file)
        spied = spy_table(read_samples(raw_file), requests)
        timed = in_process_table(dsn)
        parts = parts_table(dsn)
        isolated = isolated_table(dsn)
    day = datetime.date.today().isoformat()
    markdown = '\n'.join([f'# make bench --profile, {day}', '', '## py-spy on one worker, users/get, wrk -c4', '',
                          *spied, '', '## In process, straight to the WSGI app (no sockets), users/get, best of 5', '',
                          *timed, '', '## In process, a stopwatch on each part of the gateway, users/get', '',
                          *parts, '', '## Each part alone, warm (timeit)', '', *isolated]) + '\n'
    path = unused_path(RESULTS_DIR, f'{day}-profile')
    path.write_text(markdown)
    print(markdown + f'\nWritten to {path}', flush=True)
    return 0
