"""The connection pool: bounded, thread-safe, per process, with configure and reset callbacks at its seams."""
import collections
import logging
import math
import select
import threading
import time
import weakref

import psycopg2
import psycopg2.extensions

from lib.db.session import END_OF_USE_ANSWER_SECONDS, bound_answers, run_in_autocommit
from lib.db.waiting import LEAST_CONNECT_TIMEOUT
from lib.errors import GatewayTimeout, ServiceUnavailable, TooManyRequests, database_unavailable, from_database_error
from lib.polling import ready_events
from lib.process import after_fork

log = logging.getLogger('dbapi.db')

# How long a connection coming back waits for PostgreSQL to answer its rollback and reset (lib/db/green.py).

IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
BROKEN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN


class PoolTimeout(ServiceUnavailable):
    """No connection came free in time (503)."""

    detail = 'No database connection came free in time. Try again shortly.'


class DatabaseUnreachable(ServiceUnavailable):
    """A new connection could not be made: refused, or not made within DB_CONNECT_TIMEOUT (503). Nothing of the
    request reached the database."""

    detail = 'The database cannot be reached. Nothing was sent to it; try again shortly.'


class ClientOverLimit(TooManyRequests):
    """The client already holds as many of the pool's connections as it may (429)."""

    detail = 'This client holds as many database connections as it may. Try again shortly.'


class Bulkhead:
    """How many of a pool's connections each client holds, so that no client can take them all."""

    def __init__(self):
        self.lock = threading.Lock()
        self.held = collections.Counter()

    def enter(self, client, limit):
        """Count one more connection for client; raise ClientOverLimit, at once, when it holds limit already."""
        with self.lock:
            if self.held[client] >= limit:
                raise ClientOverLimit()
            self.held[client] += 1

    def leave(self, client):
        """Count one connection fewer for client."""
        with self.lock:
            self.held[client] -= 1
            if not self.held[client]:
                del self.held[client]


def connection_is_stale(conn):
    """Tell whether an idle pooled connection was closed or told to go away by the server."""
    if conn.closed:
        return True
    # An idle connection has nothing to read; anything readable is a FATAL goodbye or EOF.
    return bool(ready_events([conn.fileno()], select.POLLIN))


def connect_within(connect_kwargs, deadline):
    """Return connect_kwargs with a connect_timeout that ends by deadline (a time.monotonic() value, or None), when
    that is sooner: in whole seconds and at least 2, as libpq takes it, so up to 2 s past deadline at most."""
    timeout = connect_kwargs.get('connect_timeout')
    if deadline is None or not timeout:
        return connect_kwargs
    left = max(LEAST_CONNECT_TIMEOUT, math.ceil(deadline - time.monotonic()))
    return connect_kwargs if int(timeout) <= left else {**connect_kwargs, 'connect_timeout': left}


def driver_state(conn):
    """Return what psycopg2 itself keeps of conn's session, which no SQL reset reaches: (isolation_level, readonly,
    deferrable, encoding, cursor_factory), as set_session, set_client_encoding and the cursor_factory attribute
    leave them (None: the server's default, or psycopg2's own cursor)."""
    return conn.isolation_level, conn.readonly, conn.deferrable, conn.encoding, conn.cursor_factory


def restore_driver_state(conn, state):
    """Put psycopg2's own state of idle conn back to state (from driver_state) where an action changed it: the
    reset then runs on the cursors configure left, never on a cursor_factory an action chose."""
    *session, encoding, cursor_factory = state
    if [conn.isolation_level, conn.readonly, conn.deferrable] != session:
        conn.set_session(*['DEFAULT' if value is None else value for value in session])
    if conn.encoding != encoding:
        conn.set_client_encoding(encoding)
    conn.cursor_factory = cursor_factory


def close_quietly(conn):
    """Close conn, ignoring errors from an already broken connection."""
    try:
        conn.close()
    except psycopg2.Error:
        pass


def do_nothing(conn):
    """A configure or reset callback that leaves the connection as it is."""


class FairSlots:
    """A counting semaphore that hands a freed slot to the longest waiter: first come, first served.

    threading's (and gevent's) Semaphore lets a newcomer take a slot that was freed for a woken waiter, so
    under load one unlucky request can wait its whole timeout while later ones pass it.
    """

    def __init__(self, size):
        self.free = size
        self.waiters = collections.deque()
        self.lock = threading.Lock()

    def acquire(self, timeout):
        """Take a slot, waiting up to timeout seconds in line; tell whether one was taken."""
        with self.lock:
            if self.free and not self.waiters:
                self.free -= 1
                return True
            if timeout <= 0:
                return False
            turn = threading.Lock()
            turn.acquire()
            self.waiters.append(turn)
        if turn.acquire(timeout=timeout):
            return True
        with self.lock:
            if turn in self.waiters:
                self.waiters.remove(turn)
                return False
        return True  # the slot was handed over just as the wait ran out

    def release(self):
        """Give a slot back: to the first waiter in line, else to the free count."""
        with self.lock:
            if self.waiters:
                self.waiters.popleft().release()
            else:
                self.free += 1


class Pool:
    """A bounded, thread-safe, per-process pool of raw psycopg2 connections to one database.

    Like psycopg_pool's ConnectionPool, the pool owns the lifecycle and takes small callbacks:
    configure(conn) runs once on each new connection, reset(conn) each time one comes back idle (no open
    transaction); a callback that raises makes the pool throw the connection away. What psycopg2 keeps on its own
    side (set_session, set_client_encoding) goes back to how configure left it before each reset, and the
    notifications it collected are dropped after. Its bulkhead
    counts the connections each client holds; a Lease enters it before it borrows.
    """

    def __init__(self, dsn, max_size, timeout_ms, configure=do_nothing, reset=do_nothing, **connect_kwargs):
        self.dsn = dsn
        self.max_size = max_size
        self.timeout = timeout_ms / 1000
        self.configure = configure
        self.reset = reset
        self.connect_kwargs = connect_kwargs
        self.stats = collections.Counter(waits=0, timeouts=0, connects=0, connect_failures=0, discarded=0)
        self.configured_driver_state = None  # driver_state() of a connection fresh from configure
        # Bumped when a connection comes back stale (lib/db/guard.py's sent): each connection opened before is closed
        # when it comes back, or at once when idle, as they all began as it did (trial BI).
        self.generation = 0
        self.forget_connections()
        LIVE_POOLS.add(self)

    def forget_connections(self):
        """Start empty: a forked worker must not share its parent's sockets."""
        self.idle = collections.deque()
        self.slots = FairSlots(self.max_size)
        self.in_use = 0
        self.bulkhead = Bulkhead()

    def borrow(self, timeout=None, deadline=None):
        """Take a live connection, waiting up to timeout (default: the pool's) seconds for a free slot; a new one's
        connect ends at deadline (a time.monotonic() value, or None) too (connect_within)."""
        self.take_slot(self.timeout if timeout is None else timeout)
        try:
            conn = self.take_idle() or self.connect(deadline)
        except BaseException:
            self.slots.release()
            raise
        self.in_use += 1
        return conn

    def take_slot(self, timeout):
        """Take a free slot, waiting up to timeout seconds for one; count the waits and the timeouts."""
        if self.slots.acquire(timeout=0):
            return
        self.stats['waits'] += 1
        if not self.slots.acquire(timeout=timeout):
            self.stats['timeouts'] += 1
            raise PoolTimeout()

    def take_idle(self):
        """Pop the most recently used live idle connection, dropping stale ones."""
        while self.idle:
            conn = self.idle.pop()
            if not connection_is_stale(conn):
                return conn
            self.stats['discarded'] += 1
            close_quietly(conn)
        return None

    def connect(self, deadline=None):
        """Open a new connection and configure it; its connect ends at deadline too (connect_within).
        DatabaseUnreachable (503, nothing of the request sent) when either fails for the database's state: through
        pgbouncer, a server that cannot be reached is a connection made whose first statement fails (08P01 "server
        login has been failing"); a server shutting down between the two ends the setup (57P01)."""
        try:
            conn = psycopg2.connect(self.dsn, **connect_within(self.connect_kwargs, deadline))
        except psycopg2.OperationalError as exc:  # libpq's reason, host and port stay in the log's cause
            self.stats['connect_failures'] += 1
            raise DatabaseUnreachable() from exc
        try:
            self.configure(conn)
        except BaseException as exc:
            self.stats['connect_failures'] += 1
            close_quietly(conn)
            if isinstance(exc, psycopg2.Error) and isinstance(from_database_error(exc), ServiceUnavailable):
                raise DatabaseUnreachable() from exc
            raise
        self.stats['connects'] += 1  # opened: a failed attempt counted too, so an outage looked like churn (trial BE)
        self.configured_driver_state = driver_state(conn)
        conn.pool_generation = self.generation
        return conn

    def give_back(self, conn):
        """Return conn to the pool reset, or throw it away when it is broken or cannot be reset; never raise for
        the reset (what the request did stands, committed or not), and close conn whatever ends the give-back."""
        kept = False
        try:
            kept = self.reusable(conn)
        finally:
            if kept:
                self.idle.append(conn)
            else:
                self.stats['discarded'] += 1
                close_quietly(conn)
                if getattr(conn, 'stale_session', False):  # the others began as it did (trial BG: each failed once)
                    self.generation += 1
                    self.discard_idle()
            self.in_use -= 1
            self.slots.release()

    def reusable(self, conn):
        """Roll back any open transaction and reset the session; tell whether conn can serve again. Under gevent,
        PostgreSQL has END_OF_USE_ANSWER_SECONDS to answer; a connection it leaves waiting longer is thrown away. A
        reset that fails with anything but a database error (a bug in a DB_RESET, an action's cursor class) is
        logged with its traceback; one that PostgreSQL refuses (not the database's state: database_unavailable), or
        that leaves a transaction open, with a warning: either throws every connection away, silently before
        (trial Y)."""
        if conn.closed or conn.get_transaction_status() == BROKEN or getattr(conn, 'cancel_unacknowledged', False):
            return False  # a cancel request the server has not taken may still cancel the next query
        if getattr(conn, 'stale_session', False) or getattr(conn, 'pool_generation', 0) < self.generation:
            return False  # a new session reads the database's settings as they are now
        bound_answers(conn, time.monotonic() + END_OF_USE_ANSWER_SECONDS)
        try:
            if conn.get_transaction_status() != IDLE:
                conn.rollback()
            if conn.get_transaction_status() != IDLE:  # a BEGIN an autocommit action sent: psycopg2 knows of none
                run_in_autocommit(conn, 'ROLLBACK')
            restore_driver_state(conn, self.configured_driver_state)
            self.reset(conn)
            # Notifications psycopg2 collected (a LISTEN the reset ended may still have delivered some): another
            # request's payloads, which the next borrower must not read.
            conn.notifies.clear()
        except GatewayTimeout:
            return False
        except psycopg2.Error as exc:
            if exc.pgcode is not None and not database_unavailable(exc):
                log.warning('The reset of a returned connection failed: %s (SQLSTATE %s); the connection is thrown '
                            'away', exc.diag.message_primary, exc.pgcode)
            return False
        except Exception:
            log.exception('The reset of a returned connection failed; the connection is thrown away')
            return False
        bound_answers(conn, None)
        if conn.closed:
            return False
        if conn.get_transaction_status() != IDLE:
            log.warning('The reset of a returned connection left a transaction open; the connection is thrown away')
            return False
        return True

    def gauges(self):
        """Return the pool's current numbers for metrics."""
        return dict(in_use=self.in_use, idle=len(self.idle), max=self.max_size, **self.stats)

    def close(self):
        """Close every idle connection."""
        while self.idle:
            close_quietly(self.idle.pop())

    def discard_idle(self):
        """Close every idle connection, counted as thrown away."""
        self.stats['discarded'] += len(self.idle)
        self.close()


LIVE_POOLS = weakref.WeakSet()


@after_fork
def forget_inherited_connections():
    """In a forked child, start every pool empty; the parent keeps its connections."""
    for pool in list(LIVE_POOLS):
        pool.forget_connections()
