"""`make bench`: the gateway against a bare baseline in the same run, A B A B, into bench/results/<date>.md.

Scenarios (issue 5): 1 users/get, 2 users/create, 3 accounts/transfer, 4 users/list (100 rows), 5 users/get
through nginx and 3 replicas against the replicas called directly, 6 users/export of 1,000,000 rows against
psql's COPY and against PostgreSQL's own JSON (COPY of row_to_json), 7 cold start of `make run`; then
users/get at 256 connections, direct and through nginx.
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

from . import report
from .coldstart import cold_starts
from .data import reset_accounts, reset_users, start_database
from .export import JSON_REFERENCE, copy_through_psql, export_through_gateway, json_through_psql
from .load import measure
from .sampling import max_connections
from .scenarios import ALL_NUMBERS, EXPORT, LOAD_SCENARIOS, PROXIED, alternate, check_capacity
from .servers import LOG_DIR, kept, start_baseline, start_gateway, start_nginx, worker_processes

RESULTS_DIR = Path(__file__).with_name('results')
REPLICAS = 3


def parse_options(argv):
    """Read the command line."""
    parser = argparse.ArgumentParser(prog='make bench', description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--seconds', type=int, default=3, help='length of each measured wrk run')
    parser.add_argument('--warmup', type=int, default=1, help='unmeasured wrk run before each measured one')
    parser.add_argument('--rounds', type=int, default=10, help='A B rounds per scenario')
    parser.add_argument('--capacity-seconds', type=int, default=6, help='length of each 256-connection check')
    parser.add_argument('--workers', type=int, default=4, help='gunicorn workers of the gateway and of the baseline')
    parser.add_argument('--replica-workers', type=int, default=2, help='workers of each replica behind nginx')
    parser.add_argument('--pool-max', type=int, default=2, help='DB_POOL_MAX of every gunicorn')
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
    """Run one wrk scenario on each named Side in turn, options.rounds times."""
    measures = {name: partial(measure, side.url, scenario.load, options.seconds, options.warmup, side.targets,
                              side.workers) for name, side in sides.items()}
    return alternate(scenario, measures, options.rounds, record)


def compare_export(options, dsn, gateway, record):
    """Scenario 6 on exactly the seeded users, whatever the writes before it added: the gateway, plain COPY, and
    PostgreSQL writing the JSON itself, in turn."""
    reset_users(dsn)
    return alternate(EXPORT, {'gateway': partial(export_through_gateway, gateway.workers, gateway.port),
                              'psql COPY': partial(copy_through_psql, dsn),
                              JSON_REFERENCE: partial(json_through_psql, dsn)}, options.rounds, record)


def direct_scenarios(options, dsn, run_dir, record):
    """Scenarios 1-4 and 6, and the headline at 256 connections, on one gateway and one baseline."""
    gateway_port, baseline_port = free_ports(2)
    with ExitStack() as stack:
        gateway = kept(stack, start_gateway('bench-gateway', gateway_port, dsn, run_dir, options.workers,
                                            options.pool_max))
        baseline = kept(stack, start_baseline(baseline_port, dsn, options.workers, options.pool_max))
        sides = {name: Side(port, workers=tuple(worker_processes(server, options.workers)))
                 for name, server, port in (('gateway', gateway, gateway_port), ('baseline', baseline, baseline_port))}
        comparisons = [compare_load(scenario, sides, options, record)
                       for scenario in LOAD_SCENARIOS if scenario.number in options.only]
        export = compare_export(options, dsn, sides['gateway'], record) if 6 in options.only else None
        checks = [check_capacity(f'gateway, {options.workers} workers', sides['gateway'].url, options.capacity_seconds,
                                 dsn, options.workers * options.pool_max, max_connections(dsn), 'bench-gateway')
                  ] if 1 in options.only else []
    return comparisons, export, checks


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
        f'the ratios of the rounds. gunicorn workers: '
        f'{options.workers} per side, {options.replica_workers} per replica behind nginx; DB_POOL_MAX '
        f'{options.pool_max}. The gateway runs ENVIRONMENT=production, LOG_LEVEL=INFO, its log lines to /dev/null.',
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
        comparisons, export, checks = direct_scenarios(options, dsn, run_dir, record)
        if PROXIED.number in options.only:
            proxied, check = proxied_scenario(options, dsn, run_dir, record)
            comparisons.append(proxied)
            checks.append(check)
    cold = cold_start_scenario(options, record) if 7 in options.only else None
    return started, record.lines, report.render(context, comparisons, export, cold, checks)


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
    path = report.write(RESULTS_DIR, started.date().isoformat(), markdown, raw_lines)
    print('\n' + markdown + f'\nWritten to {path.relative_to(settings.BASE_DIR)}', flush=True)
    return 0


if __name__ == '__main__':
    sys.exit(main())
