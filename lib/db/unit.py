"""A unit of work on one borrowed connection: lease, connection(), transactional() and streamed leases."""
from contextlib import contextmanager

from lib.db.helpers import Db
from lib.db.session import report_notices


class Lease:
    """One borrowed connection; end() commits on success, rolls back otherwise, and gives it back once.

    With a client (any hashable name) and its limit, the pool's bulkhead counts the connection against the
    client from before the borrow until the end: a client over its limit gets a 429 at once, without waiting.
    A limit of the pool's size or more limits nothing: such a client waits for the pool, then gets its 503.
    """

    def __init__(self, pool, autocommit=False, cursor_factory=None, timeout=None, client=None, client_limit=None):
        self.pool = pool
        self.client = client if client is not None and client_limit < pool.max_size else None
        if self.client is not None:
            pool.bulkhead.enter(client, client_limit)
        try:
            self.conn = pool.borrow(timeout)
        except BaseException:
            self.leave_bulkhead()
            raise
        self.open = True
        # Run first when the lease ends, before the commit and the give-back: a watch on the client must stop
        # before the connection can serve another request (lib/http/disconnect.py).
        self.before_end = []
        self.conn.autocommit = autocommit
        self.conn.cursor_factory = cursor_factory

    def leave_bulkhead(self):
        """Stop counting this lease's connection against its client."""
        if self.client is not None:
            self.pool.bulkhead.leave(self.client)

    def end(self, success):
        """Finish the lease: commit when success and not autocommit, then give the connection back."""
        if not self.open:
            return
        self.open = False
        try:
            for callback in self.before_end:
                callback()
            if success and not self.conn.autocommit:
                self.conn.commit()
        finally:
            report_notices(self.conn)
            self.pool.give_back(self.conn)
            self.leave_bulkhead()


@contextmanager
def connection(pool, autocommit=False, cursor_factory=None, timeout=None):
    """Borrow a connection: commit when the block ends, roll back on error, always give it back."""
    lease = Lease(pool, autocommit, cursor_factory, timeout)
    try:
        yield lease.conn
    except BaseException:
        lease.end(success=False)
        raise
    lease.end(success=True)


class LeasedStream:
    """An iterator that keeps its lease until it is exhausted or closed, for streamed responses."""

    def __init__(self, items, lease):
        self.items = iter(items)
        self.lease = lease

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.items)
        except StopIteration:
            self.lease.end(success=True)
            raise
        except BaseException:
            self.lease.end(success=False)
            raise

    def close(self):
        """Give the connection back even when the stream was never read (client gone, error)."""
        close_items = getattr(self.items, 'close', None)
        if close_items:
            close_items()
        self.lease.end(success=False)


@contextmanager
def transactional(conn):
    """Run the block in one transaction on conn and yield a Db helper for it."""
    # psycopg2 2.9 opens a transaction here even on an autocommit connection.
    with conn:
        yield Db(conn)
