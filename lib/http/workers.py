"""gunicorn worker classes whose own error answers (a request it cannot parse) are problem+json, not HTML.

gunicorn answers a request it cannot parse (a bare CR in a header, a request line over its limit, ...) before
the app sees it, with an HTML page and no X-Request-ID. Its public `Worker.handle_error(req, client, addr, exc)`
decides the status and writes that page; each class here lets it decide, keeps what it writes, and sends the
same status as an RFC 9457 problem document with a fresh request id instead.
"""
import contextlib
import copy
import functools
import logging
import os
import re
import signal
import threading
import time

import gevent
from gunicorn.http.errors import (InvalidChunkExtension, InvalidHTTPVersion, InvalidRequestLine, InvalidSchemeHeaders,
                                   LimitRequestHeaders, LimitRequestLine, ParseException)
from gunicorn.workers.ggevent import GeventWorker
from gunicorn.workers.gthread import ThreadWorker
from gunicorn.workers.sync import SyncWorker

from lib.errors import RETRY_AFTER_SECONDS, status_phrase
from lib.http.admission import SHED_KEY, UNKNOWN_VERSION_DETAIL
from lib.http.disconnect import WATCHER
from lib.http.exchange import CLIENT_SOCKET_KEY, WAITED_ON_DATABASE_KEY, BrokeBeforeItsFirstByte
from lib.http.raw import problem_answer
from lib.http.requestid import REFUSED_REQUEST_ID, new_request_id
from lib.logs.access import log_refused_request
from lib.logs.metrics import count_refused_request
from lib.logs.secrets import UNQUOTED

STATUS_LINE = re.compile(rb'HTTP/1\.[01] (\d{3}) ([^\r\n]*)')
# gunicorn's 501 is a Transfer-Encoding it does not know: the client's mistake, a 400, as nginx answers it.
CLIENT_MISTAKES = {501: 400}
# A gevent sleep this long (more than 0) resumes only in the event loop's next turn, after it has looked at every
# socket and timer (gevent.sleep's documentation).
LOOP_TURN_SECONDS = 1e-6
# A kept-alive connection whose request was shed is read again once the process has room, or after its answer's
# Retry-After.
SHED_PAUSE_SECONDS = int(RETRY_AFTER_SECONDS)
# Bytes read at a time of what the app left of a body (DrainedBody).
DRAIN_CHUNK_BYTES = 65536
# The HTTP versions dbapi speaks, as gunicorn's Request.version has them.
SPOKEN_VERSIONS = frozenset({(1, 0), (1, 1)})
# HTTP/2's connection preface (RFC 9113 section 3.4), whose first line gunicorn reads as a request line it cannot parse.
HTTP2_PREFACE_LINE = 'PRI * HTTP/2.0'
# An HTTP/0.9 request line: a method and a path, no version. A version gunicorn does not parse that is one still
# (HTTP/1.10, http/1.1), not words that only end a line (`GET /a b HTTP/1.1`, a space in the path).
HTTP09_LINE = re.compile(r'[A-Z]+ /\S*')
VERSION_LIKE = re.compile(r'HTTP/[0-9]+(\.[0-9]+)?', re.IGNORECASE)
# gunicorn's parse errors whose text is gunicorn's own words or sizes alone; every other one quotes the request.
QUOTING_NOTHING = (LimitRequestLine, LimitRequestHeaders, InvalidSchemeHeaders, InvalidChunkExtension)


class CapturedAnswer:
    """Stands in for the client socket while gunicorn writes its error page: keeps the bytes, sends nothing."""

    def __init__(self, client):
        self.client = client
        self.written = b''

    def sendall(self, data):
        """Keep what gunicorn would have sent."""
        self.written += bytes(data)

    send = sendall

    def __getattr__(self, name):
        return getattr(self.client, name)


def speaks_another_version(exc):
    """Tell whether gunicorn's parse error is of a request in an HTTP version other than 1.0 and 1.1: one it names
    (HTTP/2.0, HTTP/1.10), HTTP/2's connection preface (`curl --http2-prior-knowledge`), or an HTTP/0.9 request line,
    a method and a target with no version (RFC 9112 section 3: its answer still says why, trial AR)."""
    if isinstance(exc, InvalidHTTPVersion):
        return isinstance(exc.version, tuple) or VERSION_LIKE.fullmatch(str(exc.version)) is not None
    if not isinstance(exc, InvalidRequestLine):
        return False
    return exc.req == HTTP2_PREFACE_LINE or HTTP09_LINE.fullmatch(exc.req) is not None


def refuse_another_version(req):
    """Raise InvalidHTTPVersion for a request gunicorn parsed in a version dbapi does not speak (HTTP/1.2 to 1.9): the
    app's refusal went out in that version's status line, `HTTP/1.2 400`, its connection kept alive (trial AR);
    ProblemErrors.handle_error answers it as it answers HTTP/2.0."""
    if req.version not in SPOKEN_VERSIONS:
        raise InvalidHTTPVersion(req.version)


def reason_phrase(status, gunicorns):
    """Return the standard phrase of status, the app's titles' (gunicorn's own, bytes, for a status without one)."""
    try:
        return status_phrase(status)
    except ValueError:
        return gunicorns.decode('latin-1')


@functools.cache
def unquoted_class(kind):
    """Return a subclass of gunicorn's parse error class kind whose text names the error alone, without quoting the
    request."""
    return type(kind.__name__, (kind,), {'__str__': lambda self: f'{kind.__name__} {UNQUOTED}'})


def unquoted(exc):
    """Return exc as gunicorn's handle_error should see it: a parse error's text (which gunicorn logs) quotes what the
    client sent, a header line or the request line, where a token known only by its sha256 cannot be redacted; the
    copy's class is a subclass, so gunicorn picks the same status."""
    if not isinstance(exc, ParseException) or isinstance(exc, QUOTING_NOTHING):
        return exc
    quiet = copy.copy(exc)
    quiet.__class__ = unquoted_class(type(exc))
    return quiet


class ProblemErrors:
    """Mixin for a gunicorn worker: its own error answers as problem+json."""

    def handle_error(self, req, client, addr, exc):
        """Let gunicorn decide the status and log the error (its line carries the answer's request id), then answer
        it as problem details, with an access line of its own. An answer the app started that broke before its
        first byte is answered as a 500 under its request's id, without a line or a traceback: its access line has
        told of it."""
        if isinstance(exc, BrokeBeforeItsFirstByte):
            with contextlib.suppress(OSError):
                client.sendall(exc.answer)
            return
        captured, request_id = CapturedAnswer(client), new_request_id()
        refused = REFUSED_REQUEST_ID.set(request_id)  # gunicorn's line saying why carries the answer's id
        try:
            super().handle_error(req, captured, addr, unquoted(exc))
        finally:
            REFUSED_REQUEST_ID.reset(refused)
        status_line = STATUS_LINE.match(captured.written)
        if status_line is None:
            return
        status = CLIENT_MISTAKES.get(int(status_line[1]), int(status_line[1]))
        detail = UNKNOWN_VERSION_DETAIL if speaks_another_version(exc) else None
        answer, body_bytes = problem_answer(status, reason_phrase(status, status_line[2]), request_id, detail)
        try:
            client.sendall(answer)
        except OSError:
            body_bytes = 0  # the client is gone; gunicorn too only tries once
        log_refused_request(status, request_id, body_bytes, addr)
        count_refused_request(status)


def pace_kept_alive_connection(environ, response, behind_proxy):
    """Under gunicorn's gevent worker, before the next request of a kept-alive connection is read (gunicorn's
    post_request hook): after a shed request (lib/http/admission.py) of a client met directly, wait until the
    process has room for one more, the Retry-After its 503 gave (1 s) at most; after one that waited for nothing (no
    database: a 401, /healthz, a shed request through a proxy), let the event loop turn once. gevent serves a
    connection's next request at once when it is already there, so a client that always had one ready kept the loop
    from turning: the requests waiting for PostgreSQL, /healthz and the pool's timeouts waited for it, and a flood of
    shed requests took the worker whole. A proxy's connection (behind_proxy: TRUSTED_PROXY_HOPS) carries other
    clients' requests, a probe's among them, which must not wait for the room a shed one wanted. A request that used
    the database waited through the loop already, and pays nothing."""
    if response is None or response.should_close():
        return
    if (admission := environ.get(SHED_KEY)) is not None and not behind_proxy:
        admission.wait_for_room(SHED_PAUSE_SECONDS)
    elif not environ.get(WAITED_ON_DATABASE_KEY):
        gevent.sleep(LOOP_TURN_SECONDS)


class DrainedBody:
    """Mixin for gunicorn's keep-alive workers (gevent, gthread): what the app left unread of a request's body (a
    401, a 404 answered before it) is read here, within gunicorn's keepalive (the class's head_read), before the
    connection may carry another request; a body that does not end as HTTP/1.1 says (RFC 9112 section 7.1), or not
    in time, closes the connection unanswered: its request has had its answer. gunicorn reads such a body itself as
    it parses the next request, and answered malformed chunks (trial AO) and malformed trailers (trial AR) with a
    second answer, a 400 or 431 the client took for its next request's."""

    def body_ended(self, req, sock):
        """Read the rest of req's body (gunicorn's Request.body, the app's wsgi.input) within the bound; tell whether
        it ended well."""
        try:
            with self.head_read(sock):
                while req.body.read(DRAIN_CHUNK_BYTES):
                    pass
        except (ParseException, OSError) as exc:  # its parse errors; NoMoreData and TimeoutError: not in time
            self.log.debug('The body of a request answered without reading it all did not end well (%s): the '
                           'connection is closed', type(exc).__name__)
            return False
        return True


class ProblemGeventWorker(DrainedBody, ProblemErrors, GeventWorker):
    """gunicorn's gevent worker with problem+json error answers, which finishes its requests when its master dies,
    and reads what a request left of its body itself (DrainedBody)."""

    def head_read(self, sock):
        """Bound the read of what comes next from sock by keepalive seconds (none with a keepalive of 0), as
        gunicorn's timeout_ctx does, raising TimeoutError past it."""
        return gevent.Timeout(self.cfg.keepalive or None, TimeoutError)

    def handle_request(self, listener_name, req, sock, addr):
        """Serve req, refusing an HTTP version dbapi does not speak (refuse_another_version); raise StopIteration,
        which gunicorn's keep-alive loop ends at, when its connection may not carry another request: gunicorn's own
        answer that closes it, or a body that did not end well (DrainedBody)."""
        refuse_another_version(req)
        super().handle_request(listener_name, req, sock, addr)
        if not self.body_ended(req, sock):
            raise StopIteration('the request body did not end well')

    def notify(self):
        """Tell the master this worker is alive (gunicorn calls it every second). A worker whose master is gone (it
        was killed) stops as on SIGTERM: it takes no new request, and finishes those in flight within the graceful
        timeout, cancelling the queries still running before its end, as the gthread and sync workers finish
        theirs; gunicorn's gevent worker exits at once, dropping them, writes committed included."""
        if self.ppid == os.getppid():
            super().notify()
        elif self.alive:
            self.log.info('The master is gone: finishing the requests in flight, then stopping: %s', self)
            os.kill(os.getpid(), signal.SIGTERM)


class BoundedHead:
    """Mixin for gunicorn's gthread and sync workers: a request's head (its line and headers) must arrive within
    gunicorn's keepalive seconds of the worker starting to read it, as under the gevent worker (gunicorn's
    timeout_ctx), or its connection is closed unanswered: the watcher (lib/http/disconnect.py) shuts the socket's
    reading side down, and gunicorn takes the end of data for a client gone. A thread waited for an unfinished head
    without end (gthread: a few connections froze the worker, /healthz with it), a sync worker until gunicorn killed
    it at WORKER_TIMEOUT, a 500 with a traceback (trial AL). A head that ends within the watcher's last look before
    the bound (POLL_SECONDS) can still lose its body's reading side: a 400, as a client gone half-way."""

    heads = threading.local()

    @contextlib.contextmanager
    def head_read(self, sock):
        """Watch the head this thread reads from sock (none with a keepalive of 0) until it has arrived."""
        if self.cfg.keepalive:
            self.heads.watch = WATCHER.watch({CLIENT_SOCKET_KEY: sock}, None, time.monotonic() + self.cfg.keepalive,
                                             reading=True)
        try:
            yield
        finally:
            self.head_read_over()

    def head_read_over(self):
        """Stop watching the head this thread read, if it still is."""
        watch, self.heads.watch = getattr(self.heads, 'watch', None), None
        if watch is not None:
            WATCHER.forget(watch)

    def handle_request(self, *args):
        """Serve a request whose head has arrived, its head no longer watched."""
        self.head_read_over()
        return super().handle_request(*args)


class ProblemThreadWorker(DrainedBody, BoundedHead, ProblemErrors, ThreadWorker):
    """gunicorn's gthread worker with problem+json error answers, a bounded read of each request's head (BoundedHead)
    and of what it left of its body (DrainedBody), and a quick stop that cannot deadlock."""

    def handle_request(self, req, conn):
        """Serve req, refusing an HTTP version dbapi does not speak (refuse_another_version); tell whether its
        connection may carry another request (DrainedBody)."""
        refuse_another_version(req)
        return super().handle_request(req, conn) and self.body_ended(req, conn.sock)

    def handle(self, conn):
        """Serve the request of a connection gunicorn's poller found readable, its head read within keepalive."""
        with self.head_read(conn.sock):
            return super().handle(conn)

    def handle_quit(self, sig, frame):
        """Stop at once (SIGQUIT, SIGINT), cutting the requests in flight as gunicorn's quick stop does, with
        os._exit: a signal that lands while the main thread starts a pool thread for a new connection hung the
        worker until the master's kill after GRACEFUL_TIMEOUT. gunicorn's own handler shuts the pool down, which
        waits for the pool's lock the interrupted start holds; sys.exit leaves the half-started thread unknown to
        the pool, and the interpreter's exit waits for it for ever. Logging is flushed first; the metrics of the
        last second (the flusher's) are lost, as at a kill."""
        self.alive = False
        self.cfg.worker_int(self)
        logging.shutdown()
        os._exit(0)


class ProblemSyncWorker(BoundedHead, ProblemErrors, SyncWorker):
    """gunicorn's sync worker with problem+json error answers and a bounded read of each request's head
    (BoundedHead)."""

    def handle(self, listener, client, addr):
        """Serve the request of an accepted connection, its head read within keepalive."""
        with self.head_read(client):
            return super().handle(listener, client, addr)

    def handle_request(self, listener, req, client, addr):
        """Serve req, refusing an HTTP version gunicorn parsed but dbapi does not speak (refuse_another_version)."""
        refuse_another_version(req)
        return super().handle_request(listener, req, client, addr)


WORKER_CLASSES = {'gevent': 'lib.http.workers.ProblemGeventWorker', 'gthread': 'lib.http.workers.ProblemThreadWorker',
                  'sync': 'lib.http.workers.ProblemSyncWorker'}
