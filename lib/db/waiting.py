"""Waiting on a psycopg2 connection's socket with poll(2): for a readiness probe, within a bound, and for a command's
process (manage.py, make stack), whose signals must stop a statement at once rather than once it ends."""
import contextlib
import select
import time

import psycopg2
import psycopg2.extensions
from psycopg2.extensions import parse_dsn

SOCKET_EVENTS = {psycopg2.extensions.POLL_READ: select.POLLIN, psycopg2.extensions.POLL_WRITE: select.POLLOUT}
# libpq's shortest connect_timeout, in seconds ("a value of 1 is interpreted as 2", its documentation).
LEAST_CONNECT_TIMEOUT = 2


def connect_timeout_of(dsn, default):
    """Return the connect_timeout (whole seconds) dsn names when it names one above 0, else default (the setting
    DB_CONNECT_TIMEOUT): libpq's 0 or none would wait for good. settings.checked_dsn refuses one that is no whole
    number."""
    named = int(parse_dsn(dsn).get('connect_timeout', 0))
    return named if named > 0 else default


def finish_by(conn, deadline=None):
    """Drive an asynchronous connection (or one whose wait callback this is) until its pending work is done; raise
    TimeoutError past deadline (a time.monotonic() value; None waits as long as the work takes) when the database
    has not answered by then. What it answered while this process was busy elsewhere (a gevent worker parsing other
    requests' bodies past the deadline) is read, not taken for silence (trial BA: /readyz said a database that had
    answered was not answering)."""
    while (state := conn.poll()) != psycopg2.extensions.POLL_OK:
        poller = select.poll()
        # libpq may change sockets while it connects (another address, SSL refused): ask for the current one.
        poller.register(conn.fileno(), SOCKET_EVENTS[state])
        if deadline is None:
            poller.poll()
        elif ((remaining_ms := (deadline - time.monotonic()) * 1000) <= 0 or not poller.poll(remaining_ms)) \
                and not poller.poll(0):
            raise TimeoutError('the database did not answer in time')


def connect_deadline(conn):
    """Return when conn, a connection being made, must be made by (a time.monotonic() value: its DSN's
    connect_timeout from now, LEAST_CONNECT_TIMEOUT at least, as libpq's own wait counts it); None for a connection
    made, or one without a connect_timeout. libpq does not bound the waits of a connection made asynchronously,
    which is how psycopg2 makes one under a wait callback."""
    if conn.status != psycopg2.extensions.STATUS_SETUP:
        return None
    timeout = int(parse_dsn(conn.dsn).get('connect_timeout') or 0)
    return time.monotonic() + max(timeout, LEAST_CONNECT_TIMEOUT) if timeout > 0 else None


def interruptible_wait(conn):
    """psycopg2's wait callback for a command's process (psycopg2.extensions.set_wait_callback): libpq's own wait
    holds a signal's handler back until the statement ends (a Ctrl-C during a migration's long statement did
    nothing until then). When the handler raises (Ctrl-C, a stop), the statement is cancelled in PostgreSQL first,
    then the exception goes on, and psycopg2 closes the connection. A connection not made within its
    connect_timeout is psycopg2's OperationalError, as without the callback."""
    try:
        finish_by(conn, connect_deadline(conn))
    except psycopg2.Error:  # the statement's own failure: nothing runs to cancel
        raise
    except TimeoutError:
        raise psycopg2.OperationalError('timeout expired (connect_timeout)') from None
    except BaseException:
        with contextlib.suppress(psycopg2.Error):
            conn.cancel()
        raise
