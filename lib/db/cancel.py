"""Cancel a running query without stopping the whole process.

psycopg2's connection.cancel() calls libpq's PQcancel with the GIL held. PQcancel opens a connection of its own to
the server, sends the cancel request and waits until the server closes it. While the server does not (a hung
postmaster, whose connections the kernel still accepts; a database host gone from the network, where connect()
waits out the kernel's SYN retries, minutes), every thread and greenlet of the worker stands still, its health
probe included, until gunicorn kills it. The same libpq calls made through ctypes release the GIL for their
duration, as ctypes does for every foreign call, and made in a thread of the operating system's own (a gevent
worker's greenlets are not), the rest of the worker runs on.

Public APIs only: psycopg2's connection.get_native_connection() (documented for handing its PGconn to other
libpq wrappers), CPython's PyCapsule_GetPointer, and libpq's PQgetCancel, PQcancel and PQfreeCancel, called on
the very libpq psycopg2 loaded (the only one /proc/self/maps shows: another copy's PGconn is not its own). Where
that is not found, connection.cancel() is called as before.
"""
import ctypes
import os
import threading
import weakref

import psycopg2
import psycopg2.extensions
from gevent.monkey import get_original, is_module_patched

NATIVE_CONNECTION = b'psycopg2.connection.native_connection'  # the name psycopg2 gives its capsule
# How long a cancel request is waited for: a server that answers takes it in milliseconds.
ACKNOWLEDGE_SECONDS = 1.0
# At most this many cancel requests wait for a server at once; past it, a new one is not sent (reported unsent).
MAX_WAITING_CANCELS = 4
ERROR_BUFFER_BYTES = 256
SystemLock = get_original('_thread', 'allocate_lock')


def psycopg2_libpq():
    """Return psycopg2's libpq through ctypes, its functions typed, or None: not on Linux, or more than one libpq is
    loaded, or the one found is not the one psycopg2 reports loaded (psycopg2.extensions.libpq_version())."""
    try:
        with open('/proc/self/maps') as maps:
            paths = {line.split()[-1] for line in maps if '/libpq' in line}
    except OSError:
        return None
    if len(paths) != 1:
        return None
    libpq = ctypes.CDLL(paths.pop())
    libpq.PQlibVersion.restype = ctypes.c_int
    libpq.PQgetCancel.argtypes, libpq.PQgetCancel.restype = [ctypes.c_void_p], ctypes.c_void_p
    libpq.PQcancel.argtypes, libpq.PQcancel.restype = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int], ctypes.c_int
    libpq.PQfreeCancel.argtypes, libpq.PQfreeCancel.restype = [ctypes.c_void_p], None
    return libpq if libpq.PQlibVersion() == psycopg2.extensions.libpq_version() else None


def native_connection(conn):
    """Return the address of conn's PGconn."""
    return CAPSULE_POINTER(conn.get_native_connection(), NATIVE_CONNECTION)


CAPSULE_POINTER = ctypes.pythonapi.PyCapsule_GetPointer
CAPSULE_POINTER.argtypes, CAPSULE_POINTER.restype = [ctypes.py_object, ctypes.c_char_p], ctypes.c_void_p


class CancelRequest:
    """libpq's cancel request (a PGcancel) for one connection: made by the thread that opened the connection, then
    sent from any thread, without the GIL; freed with this object."""

    def __init__(self, libpq, conn):
        self.libpq = libpq
        self.pointer = libpq.PQgetCancel(native_connection(conn))
        weakref.finalize(self, libpq.PQfreeCancel, self.pointer)

    def send(self):
        """Send it and wait until the server has taken it (or refused it, or cannot be reached)."""
        self.libpq.PQcancel(self.pointer, ctypes.create_string_buffer(ERROR_BUFFER_BYTES), ERROR_BUFFER_BYTES)


LIBPQ = psycopg2_libpq()


def cancel_request_for(conn):
    """Return conn's CancelRequest, or None where psycopg2's libpq cannot be called (then cancel it as psycopg2 does)."""
    return None if LIBPQ is None else CancelRequest(LIBPQ, conn)


class Canceller:
    """Sends cancel requests from threads of the operating system's own, each waited for ACKNOWLEDGE_SECONDS at most
    (under gevent, by the waiting greenlet alone). One per process: make it after the fork, where it is used."""

    def __init__(self):
        self.lock = SystemLock()  # taken by those threads too, for a moment: never gevent's
        self.waiting = 0
        self.threads = None
        if is_module_patched('threading'):
            from gevent.threadpool import ThreadPool  # its threads are the system's; a greenlet waits for their result
            self.threads = ThreadPool(MAX_WAITING_CANCELS)

    def cancel(self, conn):
        """Cancel what conn runs; tell whether the server took the request within ACKNOWLEDGE_SECONDS (False: it may
        still arrive, and cancel whatever conn runs next)."""
        request = getattr(conn, 'cancel_request', None)
        if request is None:
            try:
                conn.cancel()  # psycopg2's own, holding the GIL
            except psycopg2.Error:
                pass  # the connection broke: the query is over anyway
            return True
        with self.lock:
            if self.waiting >= MAX_WAITING_CANCELS:
                return False
            self.waiting += 1
        if self.threads is not None:
            return self.threads.spawn(self.send, request).wait(ACKNOWLEDGE_SECONDS) is not None
        sent = threading.Event()

        def send_and_tell():
            self.send(request)
            sent.set()
        threading.Thread(target=send_and_tell, name='dbapi-cancel', daemon=True).start()
        return sent.wait(ACKNOWLEDGE_SECONDS)

    def send(self, request):
        """Send request (in a thread of the system's); return True once the server has answered it either way."""
        try:
            request.send()
        finally:
            with self.lock:
                self.waiting -= 1
        return True


# {process id: its Canceller}, each made on first use: under gevent, once the worker has patched threading.
CANCELLERS = {}


def cancel_running_query(conn):
    """Cancel what conn runs, without stopping the rest of the process while the server takes the request. When it
    has not within ACKNOWLEDGE_SECONDS, the request may still arrive and cancel conn's next query: conn is marked
    (cancel_unacknowledged, a PooledConnection's) for the pool to throw it away."""
    process = os.getpid()
    canceller = CANCELLERS.get(process) or CANCELLERS.setdefault(process, Canceller())
    if not canceller.cancel(conn):
        conn.cancel_unacknowledged = True
