"""Scenario 7: seconds from `make run` to the first 200, the venv already there, PostgreSQL stopped."""
import os
import time

import settings
from ops.stack import Child

from .client import status_of
from .servers import BENCH_DIR, BENCH_TOKEN, quiet

COLD_DB_DIR = BENCH_DIR / 'pg-cold'
FIRST_CALL = ('/users/list', {'limit': 1})
TIMEOUT_SECONDS = 120


class ColdStartError(Exception):
    """`make run` exited, or gave no 200 in time."""


def cold_environment(port, workers):
    """Return `make run`'s environment: local settings, the bench's own embedded database, our port."""
    env = {name: value for name, value in os.environ.items() if not name.startswith(('MAKE', 'MFLAGS'))}
    env.update({f'DEFAULT_DB_{part}': '' for part in settings.DB_PARTS.values()})
    env.update(ENVIRONMENT='local', DATABASE_URL='', BIND='', PORT=str(port), EMBEDDED_DB_DIR=str(COLD_DB_DIR),
               BEARER=BENCH_TOKEN, WEB_CONCURRENCY=str(workers), LOG_PATH='', PROMETHEUS_MULTIPROC_DIR='')
    return env


def wait_for_first_200(child, port):
    """Poll the first call every 10 ms until it answers 200."""
    deadline = time.monotonic() + TIMEOUT_SECONDS
    while status_of(port, *FIRST_CALL) != 200:
        if child.exit_code() is not None:
            raise ColdStartError(f'make run exited with code {child.exit_code()}; see {BENCH_DIR}/logs/make-run.log')
        if time.monotonic() > deadline:
            raise ColdStartError(f'make run gave no 200 within {TIMEOUT_SECONDS} s')
        time.sleep(0.01)


def wait_until_database_stopped(timeout=30):
    """Wait until the cold start's PostgreSQL is gone, so the next start is cold too."""
    deadline = time.monotonic() + timeout
    while (COLD_DB_DIR / 'postmaster.pid').exists():
        if time.monotonic() > deadline:
            raise ColdStartError(f'PostgreSQL under {COLD_DB_DIR} did not stop within {timeout} s')
        time.sleep(0.1)


def cold_start(port, workers):
    """Run `make run` once and return the seconds until its first 200; stop it and its database after."""
    wait_until_database_stopped()
    child = Child('make run', quiet('make-run', ['make', '--no-print-directory', 'run']),
                  cold_environment(port, workers))
    started = time.perf_counter()
    child.start()
    try:
        wait_for_first_200(child, port)
        return time.perf_counter() - started
    finally:
        child.stop()
        wait_until_database_stopped()


def cold_starts(port, workers, runs):
    """Return the seconds of runs cold starts, after an unmeasured one that makes the database and the venv."""
    # initdb runs once per machine, and `make run` reinstalls the venv when a requirements file changed.
    cold_start(port, workers)
    return [cold_start(port, workers) for _ in range(runs)]
