"""A unit of work on one borrowed connection: lease, connection(), transactional() and streamed leases."""
import math
import time
import weakref
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg2.errors

from lib.db.guard import IN_TRANSACTION, StatementPastDeadline, refuse_transaction_left_open
from lib.db.helpers import Db
from lib.db.pool import PoolTimeout
from lib.db.types import check_reading_styles
from lib.db.session import (END_OF_USE_ANSWER_SECONDS, bound_answers, count_use, end_action, note_request,
                            report_notices)
from lib.errors import GatewayTimeout


class DeadlineExceeded(GatewayTimeout):
    """The request ran out of time (REQUEST_DEADLINE_MS) before its transaction could commit (504)."""

    detail = 'The request ran past its deadline; nothing was committed.'
    # transactional()'s, in an autocommit action: statements and transactions before it may have committed.
    autocommit_detail = 'The request ran past its deadline: its transaction was rolled back; what the request ' \
                        'committed before it stays committed.'


class DatabaseNotAnswering(GatewayTimeout):
    """PostgreSQL had not answered ANSWER_GRACE_SECONDS past the request's deadline, when its own statement timeout
    would have (504): the server hangs or cannot be reached, and the connection is closed. What was sent may still
    run there. (A new connection not made within its connect_timeout is a database down instead: DatabaseUnreachable,
    503.)"""

    detail = 'The database did not answer in time. What the request sent may still run.'


class StreamPastDeadline(GatewayTimeout):
    """A stream still being sent at the request's deadline (REQUEST_DEADLINE_MS): cut short there, before its next
    batch; its status is sent already, so only the access line says so (a failure, with the bytes sent)."""

    detail = "The answer ran past the request's deadline and was cut short."


class NotAutocommit(RuntimeError):
    """transactional(conn) on a connection that is not in autocommit (an action's with autocommit=False, which is
    one transaction already): its commit would end that transaction half-way, and a retry of the action would run
    the part committed again. A module's bug, a 500."""


# How long past a request's deadline its connection still waits for PostgreSQL, whose own statement timeout ends a
# transaction's statements at the deadline and answers with its error.
ANSWER_GRACE_SECONDS = 1


def time_left(deadline):
    """Return the seconds left until deadline (a time.monotonic() value), or None when there is no deadline."""
    return None if deadline is None else deadline - time.monotonic()


def borrow_within(pool, timeout, deadline):
    """Borrow a connection of pool, waiting for a free one the pool's wait (or timeout) at most, never past deadline
    (a time.monotonic() value, or None): PoolTimeout (503) when the wait ends, DeadlineExceeded (504) when the
    deadline ends it, or had passed before it."""
    wait = pool.timeout if timeout is None else timeout
    left = time_left(deadline)
    if left is not None and left <= 0:
        raise DeadlineExceeded()
    try:
        return pool.borrow(wait if left is None else min(wait, left), deadline)
    except PoolTimeout as exc:
        if left is not None and left < wait:
            raise DeadlineExceeded() from exc
        raise


class Lease:
    """One borrowed connection; end() commits on success, rolls back otherwise, and gives it back once.

    With a client (any hashable name) and its limit, the pool's bulkhead counts the connection against the
    client from before the borrow until the end: a client over its limit gets a 429 at once, without waiting.
    A limit of the pool's size or more limits nothing: such a client waits for the pool, then gets its 503.
    """

    def __init__(self, pool, autocommit=False, cursor_factory=None, timeout=None, client=None, client_limit=None,
                 deadline=None):
        self.pool = pool
        # A time.monotonic() value or None: the wait ends at it, and a transaction past it is not committed.
        self.deadline = deadline
        self.client = client if client is not None and client_limit < pool.max_size else None
        if self.client is not None:
            pool.bulkhead.enter(client, client_limit)
        try:
            self.conn = borrow_within(pool, timeout, deadline)
        except BaseException:
            self.leave_bulkhead()
            raise
        self.open = True
        # Each is called with the lease's success first when the lease ends, before the commit and the give-back: a
        # watch on the client must stop before the connection can serve another request (lib/http/disconnect.py).
        # One that raises refuses the commit: the connection goes back rolled back, and end() raises its error.
        self.before_end = []
        # Each is called with whether the lease's work is committed once it has ended: its transaction committed (or
        # its autocommit statements done, no transaction left open), or not (rolled back, or its commit refused).
        self.after_end = []
        self.conn.autocommit = autocommit
        self.conn.cursor_factory = cursor_factory
        count_use(self.conn)
        note_request(self.conn, deadline)
        bound_answers(self.conn, None if deadline is None else deadline + ANSWER_GRACE_SECONDS)

    def leave_bulkhead(self):
        """Stop counting this lease's connection against its client."""
        if self.client is not None:
            self.pool.bulkhead.leave(self.client)

    def end(self, success):
        """Finish the lease: commit when success and not autocommit, then give the connection back."""
        if not self.open:
            return
        self.open = False
        committed = False
        try:
            end_action(self.conn)  # the action, a stream's included, is done: the commit is dbapi's
            for callback in self.before_end:
                callback(success)
            if success and not self.conn.autocommit:
                self.commit_in_time()
            elif success:
                self.refuse_open_transaction()
            committed = success
        finally:
            report_notices(self.conn)
            note_request(self.conn, None)
            self.pool.give_back(self.conn)
            self.leave_bulkhead()
            for callback in self.after_end:
                callback(committed)

    def refuse_open_transaction(self):
        """Raise TransactionLeftOpen when the connection of an autocommit lease is inside a transaction block."""
        refuse_transaction_left_open(self.conn)

    def commit_in_time(self):
        """Commit, unless the deadline has passed: nginx may have answered 504 already, so roll back instead."""
        left = time_left(self.deadline)
        if left is not None and left <= 0:
            raise DeadlineExceeded()  # end() gives the connection back, which rolls it back
        self.conn.commit()

    def hold_to_deadline(self, statement_timeout_ms, slack_ms=1000):
        """Have this transaction's statements stop at the deadline: SET LOCAL statement_timeout to the time left when
        that is shorter (by more than slack_ms, which spares the round trip) than the session's own (0: none)."""
        left = time_left(self.deadline)
        if left is None or self.conn.autocommit:
            return
        left_ms = math.ceil(left * 1000)  # never before the deadline: its 57014 is then the deadline's 504
        if left_ms <= 0:
            raise DeadlineExceeded()
        if statement_timeout_ms == 0 or left_ms < statement_timeout_ms - slack_ms:
            with self.conn.cursor() as cursor:  # opens the transaction, which SET LOCAL lasts for
                cursor.execute('SET LOCAL statement_timeout = %s', (left_ms,))


@contextmanager
def connection(pool, autocommit=False, cursor_factory=None, timeout=None, deadline=None):
    """Borrow a connection: commit when the block ends, roll back on error, always give it back. deadline (a
    time.monotonic() value, or None) bounds the wait for it, a new one's connect included (Lease)."""
    lease = Lease(pool, autocommit, cursor_factory, timeout, deadline=deadline)
    try:
        yield lease.conn
    except BaseException:
        lease.end(success=False)
        raise
    lease.end(success=True)


class LeasedStream:
    """An iterator that keeps its lease until it is exhausted or closed, for streamed responses; first holds the
    items already taken from items (the first batch, fetched before the response starts)."""

    def __init__(self, items, lease, first=()):
        self.body = items
        self.lease = lease
        self.ahead = list(reversed(first))
        try:
            self.items = iter(items)
        except BaseException:  # a Response body's own __iter__ failed: its connection stayed leased (trial CC)
            lease.end(success=False)
            raise

    def __iter__(self):
        return self

    def __next__(self):
        if self.ahead:
            return self.ahead.pop()
        if self.past_deadline():
            self.close()
            raise StreamPastDeadline()
        try:
            item = next(self.items)
            check_reading_styles(self.lease.conn)  # a batch read after the action changed them, or the encoding
            return item
        except StopIteration:
            self.lease.end(success=True)
            raise
        # A batch still fetched at the deadline (cancelled there: lib/http/disconnect.py) or a second past it, or a
        # statement or transaction the stream started past it (refused: lib/db/guard.py, transactional()).
        except (DatabaseNotAnswering, psycopg2.errors.QueryCanceled, StatementPastDeadline, DeadlineExceeded) as exc:
            self.lease.end(success=False)
            if self.past_deadline():
                raise StreamPastDeadline() from exc
            raise
        except BaseException:
            self.lease.end(success=False)
            raise

    def past_deadline(self):
        """Tell whether the request's deadline has passed."""
        left = time_left(self.lease.deadline)
        return left is not None and left <= 0

    def close(self):
        """End the stream, its items first (a stream's helper thread stops fetching before the connection goes back),
        and give the connection back whatever happens, also when the stream was never read (client gone, error).
        Past the deadline, the statements that end it (CLOSE, a cancel) get time of their own."""
        if self.lease.open and self.past_deadline():  # an ended lease's connection may serve another request now
            bound_answers(self.lease.conn, time.monotonic() + END_OF_USE_ANSWER_SECONDS)
        try:
            close_iterated(self.items, self.body)
        finally:
            self.lease.end(success=False)


def close_stream(items):
    """Close items when it is an iterator that can be closed (a generator, a stream's batches)."""
    close = getattr(items, 'close', None) if isinstance(items, Iterator) else None
    if close is not None:
        close()


def close_iterated(iterator, iterable):
    """Close iterator (close_stream), then iterable, the object it came from, when that is another one with a close
    (a Response body's own, which PEP 3333 has the server call: it went uncalled once wrapped, trial CC)."""
    try:
        close_stream(iterator)
    finally:
        close = getattr(iterable, 'close', None) if iterable is not iterator else None
        if callable(close):
            close()


# The connections inside a transactional() block now.
OPEN_BLOCKS = weakref.WeakSet()


@contextmanager
def transactional(conn):
    """Run the block in one transaction on conn and yield a Db helper for it. Once the request conn serves is over
    (a PooledConnection's request_over: its client gone, its worker stopping) or past its deadline (request_deadline),
    the transaction is rolled back, never committed: that request's error (499, 503), or DeadlineExceeded (504) that
    says what committed before stays. conn must be in autocommit (an action's with autocommit=True): else
    NotAutocommit, before anything runs."""
    if not conn.autocommit:
        raise NotAutocommit('transactional() needs a connection in autocommit (inject_conn or inject_db with '
                            'autocommit=True): this one is one transaction already, which its commit would end '
                            'half-way')
    # psycopg2 2.9 opens a transaction here even on an autocommit connection.
    with conn:
        OPEN_BLOCKS.add(conn)
        try:
            yield Db(conn)
        finally:
            OPEN_BLOCKS.discard(conn)
        if (over := getattr(conn, 'request_over', None)) is not None:
            raise over()
        left = time_left(getattr(conn, 'request_deadline', None))
        if left is not None and left <= 0:
            raise DeadlineExceeded(DeadlineExceeded.autocommit_detail)


def in_transaction(conn):
    """Tell whether conn's statements run in a transaction: one an action runs as one (autocommit=False), a
    transactional() block (OPEN_BLOCKS: before its first statement, libpq tells no transaction), or a block opened
    in SQL or by a stream on an autocommit connection."""
    return not conn.autocommit or conn in OPEN_BLOCKS or conn.get_transaction_status() in IN_TRANSACTION
