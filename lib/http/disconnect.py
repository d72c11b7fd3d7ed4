"""Cancellation: a client that goes away while its query runs gets the query cancelled in PostgreSQL, and so
does every query still running when a stopping worker's graceful timeout is about to end.

While a request holds a pooled connection, its client socket (gunicorn puts it in environ['gunicorn.socket']) is
watched by one watcher per process, a thread (a greenlet under gevent, whose patched select waits through the
hub). When the socket reads as closed, the watcher marks the request gone and sends PostgreSQL a cancel request
for the statement its connection runs (lib/db/cancel.py, without stopping the rest of the worker while the server
takes it); the action then fails with QueryCanceled, the lease rolls back and the connection goes back to the pool
for reuse (thrown away instead when the server has not taken the request within a second), and the answer is a 499,
which only the access line sees. A request marked over (its client gone, its deadline passed, its worker stopping)
stays watched until its lease ends: a statement it starts later (the action caught the error, or ran no statement
when it was marked) is refused before it reaches PostgreSQL (lib/db/guard.py), one that runs on after a cancel the
server took is cancelled again (at most every RECANCEL_SECONDS), and the transaction of a client gone or past its
deadline is never committed.
nginx closes its upstream connection when its own client goes away, so this works through nginx too. A client that
shuts down its sending side while it waits for the answer looks gone too (nginx, curl and the HTTP libraries never
do that): its connection is closed without an answer, as nginx closes its own. An answer being sent that may wait
for its client (a stream, one longer than SEND_WATCH_BYTES, which a socket's buffers may not take whole, or any to a
client behind with what was sent to it before: lib/logs/access.py) is watched until the server has sent it: one
whose client stops reading is cut short a second past its deadline (cut_short), so that it gives back its
connection, if it still holds one, and its admission slot.

gunicorn's master kills a worker that has not finished within the graceful timeout, and a killed worker logs
nothing. So a second before that, the worker cancels the queries still running and cuts short the answers still
waiting for their clients: each of those requests ends as a failure (a stream as cut short, with the bytes it sent)
and is logged before the kill.
"""
import collections
import contextlib
import os
import select
import signal
import socket
import threading
import time

import psycopg2
import psycopg2.errors
import psycopg2.extensions

from lib.db.cancel import cancel_running_query
from lib.db.session import PooledConnection
from lib.db.guard import StatementPastDeadline
from lib.db.unit import ANSWER_GRACE_SECONDS, StreamPastDeadline
from lib.errors import ApiError, ServiceUnavailable
from lib.http.exchange import (BODY_TIMED_OUT_KEY, CLIENT_SOCKET_KEY, CUT_KEY, GONE_KEY, PAST_DEADLINE_KEY,
                               STOPPING_KEY)
from lib.polling import ready_events

# The watcher looks at the sockets this often: it bounds how late a client that left is noticed.
POLL_SECONDS = 0.1
# A statement that runs on after a cancel the server took (one that catches query_canceled in PL/pgSQL, a COPY
# waiting on the action's Python) is sent another at most this often.
RECANCEL_SECONDS = 1.0
# How long past its deadline an answer whose client stopped reading is still sent before it is cut short: the grace
# its database waits get (lib/db/unit.py).
SEND_GRACE_SECONDS = ANSWER_GRACE_SECONDS
# An answer longer than this may wait for its client to read (a socket takes more than this whole, buffers on both
# ends): it is watched while it is sent. Shorter ones never are, which keeps the watch off the common request.
SEND_WATCH_BYTES = 64 * 1024
# The peer closed its side (POLLRDHUP, even with unread data in the socket) or reset the connection.
GONE_EVENTS = select.POLLRDHUP | select.POLLHUP | select.POLLERR


class ClientClosedRequest(ApiError):
    """The client went away before its answer was ready (499, as nginx logs it); nobody reads this answer."""

    status = 499
    title = 'Client Closed Request'
    detail = 'The client closed the connection before the answer was ready.'


class ServerStopping(ServiceUnavailable):
    """The worker is stopping and could not finish the request in time (503)."""

    detail = 'The server stopped before the answer was ready. Try again.'


class Watch:
    """One request's client socket and either the connection its query runs on (a query watch; cancelling, while the
    watcher sends a cancel request for it, is set when that is over: taken by the server, or given up on) or None
    (a send watch: the request's answer is being sent; past its deadline, a time.monotonic() value, and a grace, it
    is cut short). A query watch once marked (reason: the environ key of why its request is over, GONE_KEY,
    PAST_DEADLINE_KEY or STOPPING_KEY) stays watched until its lease ends: a statement still running on its
    connection is cancelled again (cancelled_at: when the last cancel was sent, a time.monotonic() value)."""

    __slots__ = ('fileno', 'conn', 'environ', 'cancelling', 'cancelled_at', 'deadline', 'reason', 'reading')

    def __init__(self, sock, conn, environ, deadline, reading=False):
        self.fileno, self.conn, self.environ, self.deadline = sock.fileno(), conn, environ, deadline
        self.cancelling = self.reason = self.cancelled_at = None
        self.reading = reading

    def overdue(self, now):
        """Tell whether the watch is of an answer still being sent past its deadline and the grace."""
        return (self.conn is None and not self.reading and self.deadline is not None
                and now > self.deadline + SEND_GRACE_SECONDS)

    def read_past_deadline(self, now):
        """Tell whether the watch is of a body still being read (reading) past the request's deadline."""
        return self.reading and now > self.deadline

    def query_past_deadline(self, now):
        """Tell whether the watch is of a query still running past the request's deadline."""
        return self.conn is not None and self.deadline is not None and now > self.deadline

    def mark(self, reason):
        """Mark the request as over for reason (an environ key), unless it was for another reason first; from now
        on its connection starts no statement (lib/db/guard.py: the deadline's it checks itself)."""
        if self.reason is None:
            self.reason = reason
            self.environ[reason] = True
            if reason in OVER_ERRORS and isinstance(self.conn, PooledConnection):
                self.conn.request_over = OVER_ERRORS[reason]

    def needs_cancel(self, now):
        """Tell whether the marked request's connection runs a statement now (libpq's transaction status, read
        without a round trip) that no cancel is on its way to, and none was sent for within RECANCEL_SECONDS; not
        after a cancel the server did not take (a hung server: the connection is thrown away at the lease's end,
        lib/db/cancel.py)."""
        if self.cancelling is not None and (not self.cancelling.is_set() or now < self.cancelled_at + RECANCEL_SECONDS):
            return False
        if getattr(self.conn, 'cancel_unacknowledged', False):
            return False
        return self.conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_ACTIVE

    def cancelled_error(self, cause):
        """Return the error that ends a request whose query the watcher cancelled, or None if it did not. A query
        cancelled at the deadline explains a database error (QueryCanceled) only: a server that did not answer even
        the cancel is DatabaseNotAnswering, as it was raised."""
        if self.environ.get(GONE_KEY):
            return ClientClosedRequest()
        if self.environ.get(STOPPING_KEY):
            return ServerStopping()
        if self.environ.get(PAST_DEADLINE_KEY) and isinstance(cause, psycopg2.errors.QueryCanceled):
            return StatementPastDeadline()
        return None


def shut_down(fileno, how):
    """Shut down the socket of fileno (socket.SHUT_RD or SHUT_RDWR) through a duplicate of it, whatever its state."""
    with contextlib.suppress(OSError), socket.socket(fileno=os.dup(fileno)) as duplicate:
        duplicate.shutdown(how)


def client_gone(environ):
    """Tell whether the request's client socket (gunicorn's; False without one) reads as closed now, as the watcher
    sees it (GONE_EVENTS), without waiting: a request that gave up waiting for a connection asks it, so that a client
    who left meanwhile is logged 499, not the 503 or 504 nobody reads."""
    sock = environ.get(CLIENT_SOCKET_KEY)
    if sock is None:
        return False
    return bool(ready_events([sock.fileno()], GONE_EVENTS).get(sock.fileno(), 0) & GONE_EVENTS)


# The error a statement started once its request is over raises instead (lib/db/guard.py), by the environ key the
# watcher marks the request with.
OVER_ERRORS = {GONE_KEY: ClientClosedRequest, STOPPING_KEY: ServerStopping}


class DisconnectWatcher:
    """Watch the client sockets of the requests that hold a connection; cancel the query of a client that left."""

    def __init__(self):
        self.forget_everything()

    def forget_everything(self):
        """Start with no watches and no watcher (a forked child has none of its parent's threads)."""
        self.lock = threading.Lock()
        self.watches = {}
        self.wanted = threading.Event()
        self.started = False
        # Set once cancel_all has run: the worker is about to be killed, and a query started now would be killed
        # with it, unanswered and unlogged (lib/decorators.py's run_leased refuses it: ServerStopping).
        self.stopping = False

    def watch(self, environ, conn, deadline=None, reading=False):
        """Watch the request's client while conn runs its query, or (conn None) while its answer is sent, or
        (reading) while its body is read by a thread (lib/http/body.py); return the Watch, or None without a
        socket."""
        sock = environ.get(CLIENT_SOCKET_KEY)
        if sock is None:  # not served by gunicorn (the tests' in-process client)
            return None
        watch = Watch(sock, conn, environ, deadline, reading)
        with self.lock:
            self.watches[id(watch)] = watch
            start, self.started = not self.started, True
        self.wanted.set()
        if start:
            threading.Thread(target=self.run, name='dbapi-disconnects', daemon=True).start()
        return watch

    def forget(self, watch):
        """Stop watching; once this returns, no cancel for this watch is on its way to the connection (one the server
        did not take in time still may be: the pool throws that connection away, lib/db/cancel.py). Only the request
        whose own cancel is being sent waits for it."""
        with self.lock:
            self.drop(watch)
            cancelling = watch.cancelling
        if cancelling is not None:
            cancelling.wait()

    def run(self):
        """Look at the watched sockets every POLL_SECONDS for as long as the process lives, idle while there are none."""
        while True:
            self.wanted.wait()
            time.sleep(POLL_SECONDS)
            with self.lock:
                watches = list(self.watches.values())
            self.check(watches)

    def check(self, watches):
        """Cancel the statements of the watched requests whose clients have closed their connection, whose deadline
        has passed or that were marked over before, and cut short the streams still being sent past their
        deadline."""
        now = time.monotonic()
        for watch in watches:
            if watch.read_past_deadline(now):
                self.stop_reading(watch)
            elif watch.overdue(now):
                self.cut_short(watch, StreamPastDeadline())
            elif watch.query_past_deadline(now):  # a transaction's statements end at the deadline, however many
                self.cancel(watch, PAST_DEADLINE_KEY)
            elif watch.reason is not None:  # its request is over: so is every statement it starts
                self.cancel(watch, watch.reason)
        by_fileno = collections.defaultdict(list)
        for watch in watches:
            # A client gone while its answer is sent fails the send itself.
            if watch.conn is not None and watch.reason is None:
                by_fileno[watch.fileno].append(watch)
        # The standard library's poll (lib/polling.py): a look must not wait, and must not touch the sockets' gevent
        # watchers, which gunicorn's handler uses to read the next request of a kept-alive connection.
        for fileno, events in ready_events(by_fileno, GONE_EVENTS).items():
            if events & GONE_EVENTS:  # not POLLNVAL alone: a socket closed since, whose request has ended
                for watch in by_fileno[fileno]:
                    if CUT_KEY not in watch.environ:  # a socket cut_short shut down reads as closed too
                        self.cancel(watch)

    def cancel(self, watch, reason=GONE_KEY):
        """Mark the request with reason and cancel the statement its connection runs, if one does, unless its lease
        ended (and the watch was forgotten). The watch stays: a statement that runs on after the cancel is cancelled
        again at a later look (needs_cancel). The cancel is sent outside the lock: a server slow to take it holds no
        other request's watch or forget."""
        with self.lock:
            if id(watch) not in self.watches:
                return
            watch.mark(reason)
            now = time.monotonic()
            if not watch.needs_cancel(now):
                return
            watch.cancelling, watch.cancelled_at = threading.Event(), now
        try:
            cancel_running_query(watch.conn)
        finally:
            watch.cancelling.set()

    def drop(self, watch):
        """With the lock held, stop watching watch; False when it was no longer watched (its request ended, or
        another act took it off first)."""
        if self.watches.pop(id(watch), None) is None:
            return False
        if not self.watches:
            self.wanted.clear()
        return True

    def cut_short(self, watch, error):
        """End an answer the server is still sending (its client stopped reading past its deadline, or the worker is
        stopping): its write waits for that client, holding the request's slot and any connection its stream holds.
        Shutting the socket down makes the write fail; the answer then ends and is logged with error (CUT_KEY), and
        a stream's connection goes back."""
        with self.lock:
            if not self.drop(watch):
                return
            watch.environ[CUT_KEY] = error
        shut_down(watch.fileno, socket.SHUT_RDWR)

    def stop_reading(self, watch):
        """End a body still being read past the request's deadline by a thread, whose socket timeout bounds each wait
        only (a byte trickled every second kept it reading, under sync until gunicorn killed the worker; trial AI):
        shutting the socket's reading side down ends the read, which lib/http/body.py answers with a 408
        (BODY_TIMED_OUT_KEY); the answer can still be written."""
        with self.lock:
            if not self.drop(watch):
                return
            watch.environ[BODY_TIMED_OUT_KEY] = True
        shut_down(watch.fileno, socket.SHUT_RD)

    def cancel_all(self):
        """Cancel every query still running and cut short every answer still being sent (the worker is about to be
        killed), so that each request ends and is logged; from now on no query starts (stopping)."""
        with self.lock:
            watches = list(self.watches.values())
            self.stopping = True
        for watch in watches:  # the queries first: a stream whose query is cancelled ends with the query's error
            if watch.conn is not None:
                self.cancel(watch, STOPPING_KEY)
        for watch in watches:
            if watch.conn is None:
                self.cut_short(watch, ServerStopping())


WATCHER = DisconnectWatcher()


def prepare_worker(graceful_timeout, queries_block_signals=False):
    """Set up a gunicorn worker once it is ready (gevent, if any, has patched threading by then): a watcher of its
    own, and a SIGTERM that cancels the queries still running shortly before the graceful timeout ends.
    queries_block_signals: the main thread runs queries inside libpq, where Python's signal handlers wait for
    them to end (a sync worker)."""
    # The watcher made at import, or after the fork, holds the standard library's locks, which would block a gevent
    # worker whole.
    WATCHER.forget_everything()
    cancel_queries_before_the_kill(graceful_timeout, queries_block_signals)


def cancel_queries_before_the_kill(graceful_timeout, queries_block_signals):
    """On SIGTERM, cancel the queries still running shortly before the graceful timeout ends (gunicorn's own
    handler, installed before, still runs)."""
    # A signal handler must not block (under gevent it runs as a callback of the event loop): it only sets an
    # event, and a thread made now does the waiting. gevent and gthread workers run Python's handlers at once; a sync
    # worker's main thread runs them only once its query returns, so there a thread sees the signal as it comes.
    stopping = threading.Event()

    def cancel_when_time_is_nearly_up():
        stopping.wait()
        time.sleep(max(graceful_timeout - 1, graceful_timeout / 2))
        WATCHER.cancel_all()
    threading.Thread(target=cancel_when_time_is_nearly_up, name='dbapi-stop-deadline', daemon=True).start()
    stop_worker = signal.getsignal(signal.SIGTERM)

    def on_stop(signum, frame):
        stopping.set()
        if callable(stop_worker):
            stop_worker(signum, frame)
    signal.signal(signal.SIGTERM, on_stop)
    if queries_block_signals:
        relay_signal_numbers(lambda number: stopping.set() if number == signal.SIGTERM else
                             cancel_queries_at_a_quick_stop() if number in QUICK_STOP_SIGNALS else None)


# The signals of gunicorn's quick stop of a worker, which cuts the requests in flight.
QUICK_STOP_SIGNALS = (signal.SIGINT, signal.SIGQUIT)
# How long a quick stop waits for its cancels, in seconds: each server takes one in milliseconds, or is given
# lib.db.cancel's ACKNOWLEDGE_SECONDS.
QUICK_STOP_CANCEL_SECONDS = 2


def cancel_queries_at_a_quick_stop():
    """Cancel the queries still running when the worker stops at once (gunicorn.conf.py's worker_int; a sync worker's
    signal relay, since its handler waits for the query): their requests are cut, and PostgreSQL would run them on to
    their end, their locks held, with no statement timeout for ever (trial BS: a double Ctrl-C). In a thread of its
    own, waited for QUICK_STOP_CANCEL_SECONDS at most: the signal handler that calls it may have interrupted its own
    thread inside the watcher's lock."""
    cancelling = threading.Thread(target=WATCHER.cancel_all, name='dbapi-quick-stop', daemon=True)
    cancelling.start()
    cancelling.join(QUICK_STOP_CANCEL_SECONDS)


def relay_signal_numbers(on_signal):
    """Call on_signal(number) in a thread of its own for each signal as it arrives, while the main thread may be
    blocked in C code, where Python runs no handler. Python writes each signal's number as one byte to its wakeup
    fd (signal.set_wakeup_fd) at once; the thread takes that fd's place and passes every byte on to the fd it
    replaced (gunicorn's sync worker sleeps on it), so that one still wakes as before."""
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    replaced = signal.set_wakeup_fd(write_end)

    def relay():
        while data := os.read(read_end, 512):
            if replaced != -1:
                with contextlib.suppress(BlockingIOError):  # full: its reader has bytes to wake it already
                    os.write(replaced, data)
            for number in data:
                on_signal(number)
    threading.Thread(target=relay, name='dbapi-signal-relay', daemon=True).start()
