"""`make bench BENCH_ARGS=--instructions`: CPU instructions per request, gateway against baseline, with callgrind.

Times on a shared machine move by ten per cent from one minute to the next; instruction counts do not. Each
count runs one Python process under `valgrind --tool=callgrind`, which builds the app in process (the gateway
with production settings and prometheus_client in multiprocess mode, as under gunicorn; or bench/baseline.py),
warms it up and sends it N requests straight through WSGI: no sockets, gunicorn or wrk. The same run with
N = 0 is subtracted, so what is left is N requests, each with the same small environ-building cost on both
sides. PostgreSQL's own work is not counted, nor are the round trips that the baseline's transactions add.
The users/get row "as nginx forwards it" adds nginx's headers and runs the gateway with TRUSTED_PROXY_HOPS=1,
as a replica behind nginx; the baseline gets the same headers and ignores them.
"""
import datetime
import io
import itertools
import os
import random
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor

import orjson

from .data import ACCOUNTS, USERS, reset_accounts, reset_users, start_database
from .profile import RESULTS_DIR, baseline_app, call_wsgi, gateway_app
from .results_files import unused_path
from .servers import BENCH_TOKEN

REQUESTS = 1000
WARM_UP = 50
SIDES = ('gateway', 'baseline')
COLLECTED = re.compile(r'Collected : (\d+)')


# users/get as nginx forwards it to a replica (TRUSTED_PROXY_HOPS=1): the headers it adds, with a fixed id.
PROXIED = 'users/get as nginx forwards it'
FORWARDED = {'HTTP_X_FORWARDED_FOR': '198.51.100.7, 127.0.0.1', 'HTTP_X_FORWARDED_PROTO': 'http',
             'HTTP_X_REQUEST_ID': '5f0c3e6d2b8a4c1e9d7f6a5b4c3d2e1f'}


def scenario_bodies(scenario, seed=1):
    """Return the path of a scenario and an endless iterator of its bodies, the same for both sides."""
    chooser, tag = random.Random(seed), os.urandom(4).hex()
    if scenario == PROXIED:
        return scenario_bodies('users/get', seed)
    bodies = {
        'users/get': ({'id': chooser.randint(1, USERS)} for _ in itertools.count()),
        'users/create': ({'email': f'calls-{tag}-{n}@bench.test', 'name': 'Counted'} for n in itertools.count()),
        'accounts/transfer': (dict(zip(('from_id', 'to_id'), chooser.sample(range(1, ACCOUNTS + 1), 2)), amount='0.01')
                              for _ in itertools.count()),
    }
    return f'/{scenario}', bodies[scenario]


def environ_of(path, body, extra=None):
    """Return the WSGI environ of one POST of body to path, as gunicorn would build it, with extra headers."""
    data = orjson.dumps(body)
    return {**(extra or {}), 'REQUEST_METHOD': 'POST', 'PATH_INFO': path, 'QUERY_STRING': '',
            'SERVER_NAME': '127.0.0.1', 'SERVER_PORT': '8000', 'SERVER_PROTOCOL': 'HTTP/1.1', 'REMOTE_ADDR': '127.0.0.1', 'HTTP_HOST': '127.0.0.1',
            'HTTP_AUTHORIZATION': f'Bearer {BENCH_TOKEN}', 'HTTP_USER_AGENT': 'bench', 'CONTENT_TYPE': 'application/json',
            'CONTENT_LENGTH': str(len(data)), 'wsgi.input': io.BytesIO(data), 'wsgi.url_scheme': 'http',
            'wsgi.errors': sys.stderr, 'wsgi.multithread': False, 'wsgi.multiprocess': True, 'wsgi.run_once': False,
            'wsgi.input_terminated': True}


def send_requests(side, scenario, dsn, count):
    """In this process (under callgrind): build side's app, warm it up, then send it count requests.

    Every answer must be a success: counting error paths (a stopped database, a wrong token) would
    compare nothing."""
    os.environ['PROMETHEUS_MULTIPROC_DIR'] = tempfile.mkdtemp(prefix='dbapi-calls-')
    proxied = scenario == PROXIED
    app = gateway_app(dsn, trusted_proxy_hops=int(proxied)) if side == 'gateway' else baseline_app(dsn)
    path, bodies = scenario_bodies(scenario)
    statuses = set()
    for body in itertools.islice(bodies, WARM_UP + count):
        call_wsgi(app, environ_of(path, body, FORWARDED if proxied else None), statuses.add)
    if not all(status.startswith('2') for status in statuses):
        sys.exit(f'{side} answered {sorted(statuses)} to {scenario}')


def instructions(side, scenario, dsn, count):
    """Return the instructions callgrind counts for a process that sends count requests."""
    command = ['valgrind', '--tool=callgrind', '--callgrind-out-file=/dev/null', sys.executable, '-m',
               'bench.instructions', side, scenario, dsn, str(count)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return int(COLLECTED.search(result.stderr).group(1))


def per_request(side, scenario, dsn):
    """Return the instructions of one request of scenario on side."""
    with ThreadPoolExecutor(2) as pool:  # the two runs side by side, one per core
        idle, busy = pool.map(lambda count: instructions(side, scenario, dsn, count), (0, REQUESTS))
    return (busy - idle) / REQUESTS


def main(options):
    """Count every scenario on both sides; print the table and write bench/results/<date>-instructions.md."""
    dsn = start_database()
    reset_users(dsn)
    reset_accounts(dsn)
    lines = ['| scenario | gateway instructions/request | baseline instructions/request | gateway/baseline |',
             '|---|--:|--:|--:|']
    for scenario in ('users/get', PROXIED, 'users/create', 'accounts/transfer'):
        gateway, baseline = (per_request(side, scenario, dsn) for side in SIDES)
        lines.append(f'| {scenario} | {gateway / 1000:,.0f}k | {baseline / 1000:,.0f}k | {gateway / baseline:.2f} |')
        print(lines[-1], flush=True)
    day = datetime.date.today().isoformat()
    path = unused_path(RESULTS_DIR, f'{day}-instructions')
    path.write_text('\n'.join([f'# make bench --instructions, {day}', '', __doc__.strip(), '', *lines]) + '\n')
    print(f'Written to {path}', flush=True)
    return 0


if __name__ == '__main__':
    send_requests(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]))
