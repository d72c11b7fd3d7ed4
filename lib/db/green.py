"""psycopg2 under gevent: a wait callback that lets other greenlets run while a connection waits on its socket.

gunicorn's gevent worker monkey-patches the standard library, but psycopg2 is C and blocks in libpq. Its public
hook, psycopg2.extensions.set_wait_callback, makes every blocking call asynchronous underneath and hands each wait
to a callback; psycogreen's gevent callback is these few lines, written here rather than taken as a dependency.
"""
import psycopg2
import psycopg2.extensions

READY = psycopg2.extensions.POLL_OK


def wait_cooperatively(conn):
    """Drive conn until its pending work is done, yielding to gevent's hub whenever it waits on the network."""
    from gevent.socket import wait_read, wait_write  # only a gevent worker calls this

    waits = {psycopg2.extensions.POLL_READ: wait_read, psycopg2.extensions.POLL_WRITE: wait_write}
    while (state := conn.poll()) != READY:
        if state not in waits:
            raise psycopg2.OperationalError(f'unexpected state from poll(): {state!r}')
        waits[state](conn.fileno())


def make_psycopg2_cooperative():
    """Have every psycopg2 connection of this process wait through gevent (call it in a gevent worker only)."""
    psycopg2.extensions.set_wait_callback(wait_cooperatively)
