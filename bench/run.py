"""`make bench`: the gateway against a bare baseline in the same run, A B A B, into bench/results/<date>.md.

Scenarios (issue 5): 1 users/get (also against the FastAPI + asyncpg peer, issue 11), 2 users/create,
3 accounts/transfer, 4 users/list (100 rows), 5 users/get through nginx and 3 replicas against the replicas called
directly, 6 users/export of 1,000,000 rows against psql's COPY and against PostgreSQL's own JSON (COPY of
row_to_json), 7 cold start of `make run`, 8 "mixed": users/get while slow callers hold half of the connection
budget, against the peer under the same slow load (issue 11); then users/get at 256 connections, direct and
through nginx.
"""
import argparse
import datetime
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from contextlib import ExitStack
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import settings
from ops.ports import free_ports

from . import report, results_files
from .coldstart import cold_starts
from .data import reset_accounts, reset_users, start_database
from .export import JSON_REFERENCE, copy_through_psql, export_through_gateway, json_through_psql
from .load import measure
from .mixed import PROBE_INTERVAL, SLOW_SECONDS, measure_mixed
from .sampling import max_connections
from .scenarios import ALL_NUMBERS, EXPORT, LOAD_SCENARIOS, MIXED, PEER, PROXIED, alternate, check_capacity
from .servers import LOG_DIR, kept, slow_client_limit, start_baseline, start_gateway, start_nginx, start_peer
from .servers import worker_processes

RESULTS_DIR = Path(__file__).with_name('results')
REPLICAS = 3
# The scenarios measured against the baseline, and those against the peer (the headline and "mixed").
BASELINE_NUMBERS = frozenset(scenario.number for scenario in LOAD_SCENARIOS)
PEER_NUMBERS = frozenset({1, MIXED.number})


def parse_options(argv):
    """Read the command line."""
    parser = argparse.ArgumentParser(prog='make bench', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type=int, default=3, help='length of each measured wrk run')
    parser.add_argument('--warmup', type=int, default=1, help='unmeasured wrk run before each measured one')
    parser.add_argument('--rounds', type=int, default=10, help='A B rounds per scenario')
    parser.add_argument('--capacity-seconds', type=int, default=6, help='length of each 256-connection check')
    parser.add_argument('--workers', type=int, default=4, help='workers of the gateway, the baseline and the peer')
    parser.add_argument('--replica-workers', type=int, default=2, help='workers of each replica behind nginx')
    parser.add_argument('--pool-max', type=int, default=2, help='DB_POOL_MAX of every server (the peer too)')
    parser.add_argument('--cold-runs', type=int, default=3, help='measured cold starts')
    parser.add_argument('--only', default=','.join(map(str, ALL_NUMBERS)),
                        type=lambda text: {int(number) for number in text.split(',')},
                        help='scenario numbers to run, e.g. 1,5 (the 256-connection checks go with 1 and 5)')
    parser.add_argument('--profile', action='store_true', help='profile the gateway instead (bench/profile.py)')
    parser.add_argument('--instructions', action='store_true',
                        help='count instructions per request with callgrind instead (bench/instructions.py)')
    return parser.parse_args(argv)


class Recorder:
    """Prints each measurement as it comes and keeps it for the .raw file."""

    def __init__(self):
        self.lines = []

    def __call__(self, scenario, side, round_number, result):
        """Note one measurement of side in scenario."""
        numbers = result.as_dict()
        self.lines.append({'scenario': scenario.number, 'side': side, 'round': round_number, **numbers})
        shown = ', '.join(f'{key} {value}' for key, value in numbers.items() if value)
        print(f'bench: {scenario.number} {side} round {round_number}: {shown}', flush=True)


@dataclass(frozen=True)
class Side:
    """One side of a comparison: the port wrk sends to, the host:ports its threads are pinned to, whose CPU counts."""

    port: int
    targets: tuple = ()
    workers: tuple = ()

    @property
    def url(self):
        """Return the loopback URL of the side's port."""
        return f'http://127.0.0.1:{self.port}'


def compare_load(scenario, sides, options, record):
    """Run one wrk scenario on each named Side in turn (the peer only in the headline), options.rounds times."""
    measures = {name: partial(measure, side.url, scenario.load, options.seconds, options.warmup, side.targets,
                              side.workers)
                for name, side in sides.items() if name != PEER or scenario.number in PEER_NUMBERS}
    return alternate(scenario, measures, options.rounds, record)


def slow_callers(options):
    """Return how many slow callers scenario 8 runs: four for each connection the slow client may hold in all the
    workers together. A refused caller waits out its Retry-After, and each call lands on whichever worker accepts
    it, so fewer would leave a worker's share unused for a while; with four, the client holds nearly all of its
    share and most callers are past its limit."""
    return 4 * options.workers * slow_client_limit(options.pool_max)


def compare_mixed(options, sides, record):
    """Scenario 8 on the gateway and the peer in turn."""
    measures = {name: partial(measure_mixed, sides[name].port, MIXED.load, options.seconds, options.warmup,
                              slow_callers(options)) for name in ('gateway', PEER)}
    return alternate(MIXED, measures, options.rounds, record)


def compare_export(options, dsn, gateway, record):
    """Scenario 6 on exactly the seeded users, whatever the writes before it added: the gateway, plain COPY, and
    PostgreSQL writing the JSON itself, in turn."""
    reset_users(dsn)
    return alternate(EXPORT, {'gateway': partial(export_through_gateway, gateway.workers, gateway.port),
                              'psql COPY': partial(copy_through_psql, dsn),
                              JSON_REFERENCE: partial(json_through_psql, dsn)}, options.rounds, record)


def start_sides(stack, options, dsn, run_dir):
    """Start the gateway, and the baseline and the peer when a chosen scenario is compared with them; return each
    one's Side by name."""
    starters = {'gateway': partial(start_gateway, 'bench-gateway'), 'baseline': start_baseline, PEER: start_peer}
    if not options.only & BASELINE_NUMBERS:
        del starters['baseline']
    if not options.only & PEER_NUMBERS:
        del starters[PEER]
    sides = {}
    for (name, start), port in zip(starters.items(), free_ports(len(starters))):
        server = kept(stack, start(port, dsn, run_dir, options.workers, options.pool_max))
        sides[name] = Side(port, workers=tuple(worker_processes(server, options.workers)))
    return sides


def direct_scenarios(options, dsn, run_dir, record):
    """Scenarios 1-4, 6 and 8, and the headline at 256 connections, on one gateway, one baseline and one peer."""
    with ExitStack() as stack:
        sides = start_sides(stack, options, dsn, run_dir)
        comparisons = [compare_load(scenario, sides, options, record)
                       for scenario in LOAD_SCENARIOS if scenario.number in options.only]
        export = compare_export(options, dsn, sides['gateway'], record) if 6 in options.only else None
        mixed = compare_mixed(options, sides, record) if MIXED.number in options.only else None
        checks = [check_capacity(f'gateway, {options.workers} workers', sides['gateway'].url, options.capacity_seconds,
                                 dsn, options.workers * options.pool_max, max_connections(dsn), 'bench-gateway')
                  ] if 1 in options.only else []
    return comparisons, export, mixed, checks


def proxied_scenario(options, dsn, run_dir, record):
    """Scenario 5 and the same load at 256 connections: REPLICAS gateways behind nginx, and called directly."""
    nginx_port, *replica_ports = free_ports(REPLICAS + 1)
    with ExitStack() as stack:
        for index, port in enumerate(replica_ports, start=1):
            kept(stack, start_gateway(f'bench-replica-{index}', port, dsn, run_dir, options.replica_workers,
                                      options.pool_max, proxied=True))
        kept(stack, start_nginx(Path(run_dir) / 'nginx', nginx_port, replica_ports))
        replicas = tuple(f'127.0.0.1:{port}' for port in replica_ports)
        sides = {'nginx': Side(nginx_port), 'replicas called directly': Side(replica_ports[0], replicas)}
        comparison = compare_load(PROXIED, sides, options, record)
        budget = REPLICAS * options.replica_workers * options.pool_max
        check = check_capacity(f'nginx, {REPLICAS} replicas x {options.replica_workers} workers', sides['nginx'].url,
                               options.capacity_seconds, dsn, budget, max_connections(dsn), 'nginx')
    return comparison, check


def cold_start_scenario(options, record):
    """Scenario 7: the seconds of each measured cold start."""
    seconds = cold_starts(free_ports(1)[0], options.workers, options.cold_runs)
    for round_number, value in enumerate(seconds, start=1):
        record.lines.append({'scenario': 7, 'side': 'make run', 'round': round_number, 'seconds': round(value, 3)})
        print(f'bench: 7 make run round {round_number}: {value:.2f} s', flush=True)
    return seconds


def describe(options, started, load_average):
    """Return the report's heading time and the notes that say how it was measured."""
    commit = subprocess.run(['git', 'rev-parse', '--short', 'HEAD'], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no'], capture_output=True,
                           text=True).stdout.strip()
    load = ', '.join(f'{value:.2f}' for value in load_average)
    return {'started': started.strftime('%Y-%m-%d %H:%M UTC'), 'notes': [
        f'Commit {commit or "?"}{" with uncommitted changes" if dirty else ""}; {os.cpu_count()} cores, '
        f'load average {load} at the start; Python {platform.python_version()}.',
        f'wrk -t2 -c16 -d{options.seconds}s (scenario 5: -t3 -c15, one thread per replica when they are called '
        f'directly) after a {options.warmup} s warm-up, sides alternated A B A B '
        f'({options.rounds} rounds): rates and latencies are the means of the rounds, the ratio is the median of '
        f'the ratios of the rounds. Workers: {options.workers} per side, {options.replica_workers} per replica '
        f'behind nginx; DB_POOL_MAX {options.pool_max}. The gateway and the baseline run gunicorn with '
        f'gunicorn.conf.py, worker class {settings.WORKER_CLASS}; the peer runs uvicorn (uvloop, httptools) with '
        f'asyncpg. The gateway runs ENVIRONMENT=production, LOG_LEVEL=INFO, its log lines to /dev/null.',
        f'Scenario 8: {slow_callers(options)} slow callers ({SLOW_SECONDS} s of pg_sleep each, a new connection '
        f'per call) of one client limited to {slow_client_limit(options.pool_max)} connection(s) per worker, so '
        f'they may hold {options.workers * slow_client_limit(options.pool_max)} of the '
        f'{options.workers * options.pool_max} connections; /healthz probed every {PROBE_INTERVAL * 1000:.0f} ms '
        f'on a new connection.',
        'The machine is shared and noisy: read the ratios, not the absolute numbers. Every run is in the .raw file.']}


def run_all(options):
    """Run the chosen scenarios and return the report's parts."""
    record = Recorder()
    started = datetime.datetime.now(datetime.timezone.utc)
    load_average = os.getloadavg()
    context = describe(options, started, load_average)  # the commit as the run starts, before it writes files
    shutil.rmtree(LOG_DIR, ignore_errors=True)  # each run's server logs start empty
    dsn = start_database()
    reset_users(dsn)
    reset_accounts(dsn)
    with tempfile.TemporaryDirectory(prefix='dbapi-bench-') as run_dir:
        os.chmod(run_dir, 0o711)  # nginx workers (nobody) keep request bodies in here
        comparisons, export, mixed, checks = direct_scenarios(options, dsn, run_dir, record)
        if PROXIED.number in options.only:
            proxied, check = proxied_scenario(options, dsn, run_dir, record)
            comparisons.append(proxied)
            checks.append(check)
    cold = cold_start_scenario(options, record) if 7 in options.only else None
    return started, record.lines, report.render(context, comparisons, export, cold, checks, mixed)


def main(argv=None):
    """Run the bench, print the table and write it to bench/results/<date>.md."""
    options = parse_options(argv)
    if options.profile:
        from .profile import main as profile
        return profile(options)
    if options.instructions:
        from .instructions import main as count_instructions
        return count_instructions(options)
    started, raw_lines, markdown = run_all(options)
    path = results_files.write(RESULTS_DIR, started.date().isoformat(), markdown, raw_lines)
    print('\n' + markdown + f'\nWritten to {path.relative_to(settings.BASE_DIR)}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
