"""Operations endpoints: /healthz (the process serves) and /readyz (every database answers within a second)."""
import contextlib
import threading
import time

import psycopg2
import psycopg2.extensions
from flask import Blueprint, current_app

from lib.db.waiting import finish_by
from lib.errors import ServiceUnavailable
from lib.jsonenc import json_response

ops = Blueprint('ops', __name__)
READY_TIMEOUT_MS = 1000
# Of a probe's second, what is kept for its answer (the 503's problem, the access line): the databases get the rest.
READY_ANSWER_MS = 100
# Readiness probes running at once in a process. A probe holds one fresh connection per database for at
# most READY_TIMEOUT_MS and starts no thread; probes that arrive while one runs wait for it within their own
# second, so a hanging database costs at most one connection per database per process, never a pile of them.
READY_PROBES = threading.BoundedSemaphore(1)
# A probe left less than this of its second after waiting for the one before it asks no database.
PROBE_LEAST_SECONDS = 0.1
PROBES_BEFORE = 'the readiness probes before this one did not end in time'


@ops.route('/healthz', methods=['GET', 'HEAD'], provide_automatic_options=False, strict_slashes=False)
def healthz():
    """Answer while the process serves; touches no database."""
    return json_response({'status': 'ok'})


def database_problem(pool, deadline):
    """Return None when pool's database answers SELECT 1, on a fresh connection of its own, before deadline; else
    the error that says why (psycopg2's, or a TimeoutError)."""
    # Asynchronous mode bounds every wait, connecting included, which connect_timeout and statement_timeout
    # cannot do for a server that accepts TCP and never answers; a pooled connection could hang on one.
    conn = None
    try:
        conn = psycopg2.connect(pool.dsn, async_=True, **pool.connect_kwargs)
        finish_by(conn, deadline)
        cursor = conn.cursor()
        cursor.execute('SELECT 1')
        finish_by(conn, deadline)
        return None if cursor.fetchone() == (1,) else RuntimeError('SELECT 1 did not answer 1')
    except (psycopg2.Error, OSError) as exc:  # TimeoutError is an OSError
        return exc
    finally:
        if conn is not None:
            conn.close()


@contextlib.contextmanager
def probe_slot():
    """Hold the process's readiness probe slot (READY_PROBES) and yield (deadline, waited_ms): when the databases must
    have answered, READY_TIMEOUT_MS less READY_ANSWER_MS from now (time.monotonic()), and how long the wait for the
    slot took; TimeoutError(PROBES_BEFORE) when that wait took the second, or all but PROBE_LEAST_SECONDS of it."""
    started = time.monotonic()
    deadline = started + (READY_TIMEOUT_MS - READY_ANSWER_MS) / 1000
    if not READY_PROBES.acquire(timeout=deadline - started):
        raise TimeoutError(PROBES_BEFORE)
    try:
        if deadline - time.monotonic() < PROBE_LEAST_SECONDS:  # its second went to waiting: no database to blame
            raise TimeoutError(PROBES_BEFORE)
        yield deadline, round((time.monotonic() - started) * 1000)
    finally:
        READY_PROBES.release()


def first_database_problem(pools):
    """Return None when the database of every pool ({name: Pool}, DATABASES' names) answers within
    READY_TIMEOUT_MS less READY_ANSWER_MS, all of them together; else the first problem found, noting the database's
    name."""
    try:
        with probe_slot() as (deadline, waited_ms):
            for name, pool in pools.items():
                problem = database_problem(pool, deadline)
                if problem is not None:
                    # A probe that waited for another had less of its second left: the time out may be the wait's.
                    waited = f', in what was left after waiting {waited_ms} ms for another probe' \
                        if waited_ms >= 10 else ''
                    problem.add_note(f'/readyz: the database {name!r} (DATABASES) {what_failed(problem)}{waited}')
                    return problem
            return None
    except TimeoutError as exc:  # probe_slot's: the second went to waiting for the probes before
        return exc


def databases_answering(pools):
    """Return {name: True when the database of that pool answers as /readyz asks it, else False}, within one probe's
    second for all of them (a database that hangs leaves those after it no time: they read False too); {} when the
    probes before this one took the second (probe_slot)."""
    try:
        with probe_slot() as (deadline, _):
            return {name: database_problem(pool, deadline) is None for name, pool in pools.items()}
    except TimeoutError:
        return {}


def what_failed(problem):
    """Say what a database's probe met: silence (a TimeoutError), or an error, libpq's or the server's (no route, no
    such host, a refused connection, a FATAL such as too many clients or a wrong password: not silence, trial BE)."""
    if isinstance(problem, TimeoutError):
        return 'did not answer in time'
    return 'failed the probe: it could not be reached, or refused its connection or its SELECT 1'


@ops.route('/readyz', methods=['GET'], provide_automatic_options=False, strict_slashes=False)
def readyz():
    """Answer 200 when every configured database answers within a second, else 503; names nothing. The access line
    of a 503 holds its cause (the error raised from it, in error.stack_trace), for the operator only."""
    problem = first_database_problem(current_app.extensions['dbapi'].pools)
    if problem is None:
        return json_response({'status': 'ready'})
    raise ServiceUnavailable('A database is not ready.') from problem
