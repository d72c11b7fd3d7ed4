"""psycopg2 under gevent: a wait callback that lets other greenlets run while a connection waits on its socket.

gunicorn's gevent worker monkey-patches the standard library, but psycopg2 is C and blocks in libpq. Its public
hook, psycopg2.extensions.set_wait_callback, makes every blocking call asynchronous underneath and hands each wait
to a callback; psycogreen's gevent callback is these few lines, written here rather than taken as a dependency.
"""
from time import monotonic

import psycopg2
import psycopg2.extensions

POLL_OK, POLL_READ, POLL_WRITE = (psycopg2.extensions.POLL_OK, psycopg2.extensions.POLL_READ,
                                  psycopg2.extensions.POLL_WRITE)


# How long a statement begun past its connection's answer_deadline still waits for an answer: the watcher cancels
# such a statement within its POLL_SECONDS (lib/http/disconnect.py), and a server that answers takes that at once.
LATE_START_ANSWER_SECONDS = 1


def cooperative_wait(wait_read, wait_write, not_answering):
    """Return psycopg2's wait callback over gevent's wait_read and wait_write (passed in: only a gevent worker
    imports them). It runs on every query's every wait, so it binds what it calls once, here.

    A connection with an answer_deadline (a time.monotonic() value, lib/db/session.py's PooledConnection) waits
    until then at most, or LATE_START_ANSWER_SECONDS for work begun later: a server that stops answering (frozen,
    or cut off by the network) then gets not_answering (an exception class) raised, and psycopg2 closes the
    connection, as it does whenever a wait callback raises."""
    def wait(conn):
        """Drive conn until its pending work is done, yielding to gevent's hub whenever it waits on the network."""
        deadline = getattr(conn, 'answer_deadline', None)
        if deadline is not None:
            deadline = max(deadline, monotonic() + LATE_START_ANSWER_SECONDS)
        while (state := conn.poll()) != POLL_OK:
            timeout = None if deadline is None else max(deadline - monotonic(), 0)
            if state == POLL_READ:
                wait_read(conn.fileno(), timeout, not_answering)
            elif state == POLL_WRITE:
                wait_write(conn.fileno(), timeout, not_answering)
            else:
                raise psycopg2.OperationalError(f'unexpected state from poll(): {state!r}')
    return wait


def make_psycopg2_cooperative():
    """Have every psycopg2 connection of this process wait through gevent (call it in a gevent worker only)."""
    from gevent.socket import wait_read, wait_write

    from lib.db.unit import DatabaseNotAnswering
    psycopg2.extensions.set_wait_callback(cooperative_wait(wait_read, wait_write, DatabaseNotAnswering))
