"""The access line: one per request, written when the server closes the response."""
import contextlib
import fcntl
import logging
import socket
import struct
import termios
import time
import traceback

from lib.http.disconnect import SEND_WATCH_BYTES, WATCHER, client_gone
from lib.http.exchange import (CLIENT_KEY, CLIENT_SOCKET_KEY, COMMITTED_KEY, CUT_KEY, ERROR_KEY, GONE_KEY, ROUTE_KEY,
                               STOPPING_KEY, BrokeBeforeItsFirstByte, answered_as, deadline_of, sent_text)
from lib.http.raw import problem_answer
from lib.http.requestid import REQUEST_ID_KEY
from lib.logs.formatter import ACCESS_LOGGER, dotted
from lib.logs.handlers import LineWriting

log = logging.getLogger('dbapi.logging')

ACCESS_DATASET = 'dbapi.access'
# The levels of access lines, as ECS spells them: a success, a failure.
ACCESS_LEVELS = {logging.INFO: 'info', logging.ERROR: 'error'}
MAX_CAUSES = 10
# nginx's status for a client that went away before its answer: the access line's, never sent to anyone.
CLIENT_CLOSED_REQUEST = 499
SEND_QUEUE_BUFFER = bytes(struct.calcsize('i'))  # room for the int SIOCOUTQ writes
# The longest piece of an answer the server is handed at once (pieces_of): what a cut answer's byte count may miss.
SEND_PIECE_BYTES = 64 * 1024
CUT_SHORT_MESSAGE = 'The response was cut short: the client went away or the server stopped before its end.'
# Whether its query was cancelled is error.code's to say (57014): a client may leave while no statement runs.
CLIENT_GONE_MESSAGE = 'The client went away before its answer.'
# A client seen gone only once its action's transaction had committed (COMMITTED_KEY): a 499 all the same (trial BQ:
# a committed transfer's line read as one rolled back).
CLIENT_GONE_AFTER_COMMIT_MESSAGE = ('The client went away before it had its whole answer, once the action had ended: '
                                    'what it wrote is committed.')
# (ECS group, field, WSGI environ key) of what an access line carries when the request has it.
OPTIONAL_ENVIRON_FIELDS = (('client', 'ip', 'REMOTE_ADDR'), ('user_agent', 'original', 'HTTP_USER_AGENT'))


class Exchange:
    """One request as the access line sees it, and its body as the server sends it.

    It notes the status when the app starts the response, counts the bytes the server has sent, notes a body
    the server closed before its end or the error that cut a stream short, and calls on_close once the server
    has closed the body, which is also when a streamed query's connection goes back. An answer that may wait for
    its client (answer_may_wait) is watched while it is sent: cut short past the request's deadline
    (deadline_ms, REQUEST_DEADLINE_MS) or when the worker stops (lib/http/disconnect.py).
    """

    __slots__ = ('environ', 'server_start_response', 'on_close', 'started_ns', 'status', 'endpoint', 'bytes',
                 'stream_error', 'cut_short', 'chunks', 'deadline_ms', 'send_watch')

    def __init__(self, environ, server_start_response, on_close, deadline_ms=0):
        self.environ = environ
        self.server_start_response = server_start_response
        self.on_close = on_close
        self.started_ns = time.perf_counter_ns()
        self.status = 500
        self.endpoint = None
        self.bytes = 0
        self.stream_error = None
        self.cut_short = False
        self.chunks = ()
        self.deadline_ms = deadline_ms
        self.send_watch = None

    def start_response(self, status, headers, exc_info=None):
        """Note the status, and the matched endpoint while Flask still serves the request, watch an answer that may
        wait for its client, then start the response."""
        self.status = int(status[:3])
        self.endpoint = getattr(self.environ.get('werkzeug.request'), 'endpoint', None)
        if self.environ.get(GONE_KEY):  # 499 is only logged: a client that shut down its sending side alone gets
            self.end_connection()        # the connection closed without an answer, as nginx does
        if self.send_watch is None and (answer_may_wait(headers) or client_behind(self.environ)):
            self.send_watch = WATCHER.watch(self.environ, None, deadline_of(self.environ, self.deadline_ms))
        return self.server_start_response(status, headers, exc_info)

    def __iter__(self):
        started = False
        try:
            for chunk in self.chunks:
                for piece in pieces_of(chunk):
                    yield piece
                    # The server asks for the next piece once it has written this one: only now has it gone out.
                    started = True
                    self.bytes += len(piece)
        except BaseException as exc:
            # Closed before its end (GeneratorExit), or the worker stopping: passed on. What the module's items raised
            # is answered as the view's would be (trial BR: gunicorn wrote a 500 into the stream).
            error = None if isinstance(exc, GeneratorExit) else answered_as(exc, WATCHER.stopping)
            if error is None:
                self.cut_short = True
                raise
            self.broke(error, started)

    def broke(self, exc, started):
        """End a body that exc broke: where it broke once the answer has started, else raise exc (in-process) or
        BrokeBeforeItsFirstByte, whose 500 the server sends in its place."""
        self.stream_error = exc
        # The client left (its statement refused, or cancelled while it ran): the body was cut short, nothing broke.
        self.cut_short = bool(self.environ.get(GONE_KEY))
        # Once the answer has started, the access line tells of the error: the server need not log it again,
        # as a traceback of its own ("Error handling request"); the client sees the answer end where it broke.
        if started and self.end_connection():
            return
        if self.environ.get(CLIENT_SOCKET_KEY) is None:
            raise exc
        # Nothing sent yet: the server answers a 500 in its place, and this line says so, with its body's bytes.
        self.status = 500
        answer, self.bytes = problem_answer(500, 'Internal Server Error', self.environ.get(REQUEST_ID_KEY))
        raise BrokeBeforeItsFirstByte(answer) from exc

    def end_connection(self):
        """Shut the client's connection down, so that a broken answer ends where it broke (a chunked one without its
        last chunk, which tells the client it is incomplete) and the server's next write fails as on any connection
        its client closed; tell whether there was a connection to shut."""
        client_socket = self.environ.get(CLIENT_SOCKET_KEY)
        if client_socket is None:
            return False
        with contextlib.suppress(OSError):
            client_socket.shutdown(socket.SHUT_RDWR)
        return True

    def close(self):
        """Stop watching the answer, close the wrapped body, then finish the exchange. The connection of an answer
        the stopping worker gave (its query cancelled before the kill: a 503) is shut down once the answer is out:
        the worker is about to be killed, and a next request on it would be cut with no answer. gunicorn's own
        `Connection: keep-alive` header cannot be changed from the app."""
        try:
            if self.send_watch is not None:
                WATCHER.forget(self.send_watch)
            close = getattr(self.chunks, 'close', None)
            if close is not None:
                close()
        finally:
            if self.environ.get(STOPPING_KEY):
                self.end_connection()
            self.on_close(self)


def pieces_of(chunk):
    """Return chunk as the server should write it: whole, or in pieces of SEND_PIECE_BYTES when longer, so that an
    answer cut short is logged with the bytes it sent to within a piece (the server reports nothing of a write
    that failed half-way). A chunk that is not bytes (a flask Response's generator that yields rows) is a TypeError
    raised here, so that the access line names it: the server's own, raised as it writes, was logged as the answer cut
    short (trial AM)."""
    if not isinstance(chunk, bytes):
        raise TypeError(f'a response body yielded {type(chunk).__name__}, not bytes: a generator of a flask Response '
                        'yields str or bytes')
    if len(chunk) <= SEND_PIECE_BYTES:
        return (chunk,)
    return (chunk[start:start + SEND_PIECE_BYTES] for start in range(0, len(chunk), SEND_PIECE_BYTES))


def client_behind(environ):
    """Tell whether the request's client has not yet taken all that was sent to it before (its socket's send queue,
    Linux's SIOCOUTQ, holds bytes): a client that sends requests on a kept-alive connection and reads no answer
    fills the buffers, and then a short answer waits for it too."""
    sock = environ.get(CLIENT_SOCKET_KEY)
    if sock is None:
        return False
    try:
        return struct.unpack('i', fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, SEND_QUEUE_BUFFER))[0] > 0
    except OSError:  # not a socket that has one (a Unix socket's counts too; anything else never waits)
        return False


def answer_may_wait(headers):
    """Tell whether an answer with these headers ((name, value) pairs) may wait for its client to read: a stream (no
    Content-Length), or one longer than SEND_WATCH_BYTES."""
    for name, value in headers:
        if len(name) == 14 and name.lower() == 'content-length':  # the length first: most names are not it
            return not value.isdigit() or int(value) > SEND_WATCH_BYTES
    return True


def sqlstate_of(exc):
    """Return the SQLSTATE of exc or of an error that led to it, or None."""
    for _ in range(MAX_CAUSES):
        if exc is None:
            return None
        if getattr(exc, 'pgcode', None):
            return exc.pgcode
        exc = exc.__cause__ or exc.__context__
    return None


def error_fields(exc, detailed):
    """Return ECS error fields: the SQLSTATE when the database raised, and type, message and trace when detailed."""
    fields = {}
    sqlstate = sqlstate_of(exc)
    if sqlstate:
        fields['code'] = sqlstate
    if detailed:
        kind = type(exc)
        module = '' if kind.__module__ == 'builtins' else f'{kind.__module__}.'
        fields['type'] = module + kind.__qualname__
        fields['message'] = str(exc).rstrip()  # psycopg2's ends in a newline (trial AX)
        fields['stack_trace'] = ''.join(traceback.format_exception(exc))
    return fields


def route_labels(exchange):
    """Return (module, action) of a request: its mounted route, an ops endpoint, or ('', '') for no match."""
    route = exchange.environ.get(ROUTE_KEY)
    if route is not None:
        return route.module, route.name
    if exchange.endpoint:
        blueprint, _, view = exchange.endpoint.rpartition('.')
        return blueprint, view
    return '', ''


def request_path(environ):
    """Return the request's path as sent (a doubled slash kept, as nginx's line has it), decoded as werkzeug decodes
    it; '/' for none."""
    return sent_text(environ.get('PATH_INFO') or '/')


def client_left(exchange):
    """Tell whether the client of a finished exchange left before it got its whole answer: the watcher saw it go
    (GONE_KEY), or the server's write failed first, before the watcher looked (a body closed before its end, neither
    cut past its deadline nor by the worker's stop, whose client socket reads as closed)."""
    environ = exchange.environ
    if environ.get(GONE_KEY):
        return True
    return exchange.cut_short and CUT_KEY not in environ and not environ.get(STOPPING_KEY) and client_gone(environ)


def exchange_fields(exchange, labels):
    """Return the access line's fields of a finished exchange, all read from its WSGI environ; none is None,
    since ecs-logging leaves out a field whose value is None."""
    environ, status = exchange.environ, exchange.status
    fields = {'http': {'request': {'method': environ.get('REQUEST_METHOD')},
                       'response': {'status_code': status, 'body': {'bytes': exchange.bytes}}},
              'url': {'path': request_path(environ)},
              'event': {'dataset': ACCESS_DATASET}}
    if request_id := environ.get(REQUEST_ID_KEY):
        fields['http']['request']['id'] = request_id
    for group, name, key in OPTIONAL_ENVIRON_FIELDS:
        if value := environ.get(key):
            fields[group] = {name: sent_text(value)}
    if client := environ.get(CLIENT_KEY):
        fields['user'] = {'name': client.name}
    if labels[0]:
        fields['labels'] = {'module': labels[0], 'action': labels[1]}
    if error := exchange_error(exchange):
        fields['error'] = error
    return fields


def exchange_error(exchange):
    """Return the error fields of an exchange: a broken stream, a 5xx in full or a 4xx's SQLSTATE, and why a 499
    or a body the server closed before its end failed."""
    if exchange.stream_error is not None and not exchange.cut_short:
        return error_fields(exchange.stream_error, detailed=True)
    if (cut := exchange.environ.get(CUT_KEY)) is not None:
        return error_fields(cut, detailed=True)
    failure = exchange.environ.get(ERROR_KEY)
    error = exchange.stream_error if failure is None else failure[0]  # a stream's: its client left (a 499)
    fields = {} if error is None else error_fields(error, detailed=exchange.status >= 500)
    if exchange.status == CLIENT_CLOSED_REQUEST and exchange.environ.get(COMMITTED_KEY):
        fields['message'] = CLIENT_GONE_AFTER_COMMIT_MESSAGE
    elif exchange.status == CLIENT_CLOSED_REQUEST and not exchange.bytes:  # nothing sent that could be cut short
        fields.setdefault('message', CLIENT_GONE_MESSAGE)
    elif exchange.cut_short:
        fields.setdefault('message', CUT_SHORT_MESSAGE)
    return fields or None


class AccessLog:
    """WSGI middleware: one access line per request once its response has gone out, and the observers told.

    Working on the environ after Flask is done costs far less than Flask hooks and werkzeug's Request
    properties; the handlers leave the route, the client and the error in the environ (lib/http/exchange.py).
    With fast=False (FAST_PATHS off) the line is an ordinary LogRecord through logging's stock path.
    """

    def __init__(self, wsgi_app, observers=(), fast=True, deadline_ms=0):
        self.wsgi_app = wsgi_app
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.observers = tuple(observers)
        self.fast = fast
        self.deadline_ms = deadline_ms

    def __call__(self, environ, start_response):
        exchange = Exchange(environ, start_response, self.finish, self.deadline_ms)
        try:
            exchange.chunks = self.wsgi_app(environ, exchange.start_response)
        except BaseException as exc:  # past Flask's handlers: a SystemExit an action raised, a worker's quick stop
            exchange.status, exchange.stream_error = 500, exc
            self.finish(exchange)  # the server answers nothing, or its own 500: the line says why
            raise
        return exchange

    def finish(self, exchange):
        """Write the line of a finished exchange with its duration, and tell the observers."""
        duration_ns = time.perf_counter_ns() - exchange.started_ns
        if client_left(exchange):  # whatever was started, the client left before it got its answer
            exchange.status = CLIENT_CLOSED_REQUEST
        labels = route_labels(exchange)
        fields = exchange_fields(exchange, labels)
        fields['event']['duration'] = duration_ns
        failed = exchange.status >= 500 or exchange.status == CLIENT_CLOSED_REQUEST or exchange.cut_short \
            or 'stack_trace' in fields.get('error', ())
        fields['event']['outcome'] = 'failure' if failed else 'success'
        message = f"{fields['http']['request']['method']} {fields['url']['path']} {exchange.status}"
        self.write(logging.ERROR if failed else logging.INFO, message, fields)
        # A status that tells no failure on a line that says failure: the body was cut short after the status went.
        cut_short = failed and exchange.status < 500 and exchange.status != CLIENT_CLOSED_REQUEST
        self.tell_observers(*labels, exchange.status, duration_ns / 1e9, cut_short)

    def tell_observers(self, module, action, status, seconds, cut_short=False):
        """Pass the finished request to each observer (cut_short: its body ended early after a status that tells no
        failure went, a stream that broke or a worker stopping); one that fails is logged, never raised to the
        server."""
        for observer in self.observers:
            try:
                observer(module, action, status, seconds, cut_short)
            except Exception:
                log.exception('an access log observer failed')

    def write(self, level, message, fields):
        """Write the line: prebuilt for dbapi's handlers when fast, else as a record through the logger."""
        if not self.logger.isEnabledFor(level):
            return
        if self.fast:
            self.write_prebuilt(level, message, fields)
        else:
            self.logger.log(level, message, extra=dotted(fields))

    def write_prebuilt(self, level, message, fields):
        """Hand dbapi's handlers the line made once per formatter, without a LogRecord or Logger.handle."""
        lines, record = {}, None
        for handler in self.logger.handlers + logging.getLogger().handlers:
            if level < handler.level:
                continue
            if isinstance(handler, LineWriting):
                formatter = handler.formatter
                if formatter not in lines:
                    lines[formatter] = formatter.access_line(ACCESS_LEVELS[level], message, fields)
                handler.write_finished_line(lines[formatter])
            else:  # a handler that is not dbapi's (a test's) gets the record the stock path makes
                record = record or self.logger.makeRecord(ACCESS_LOGGER, level, '', 0, message, None, None,
                                                          extra=dotted(fields))
                handler.handle(record)


def install_access_log(app, observers=()):
    """Time every request of app and write its access line once the response has gone out."""
    app.wsgi_app = access_log = AccessLog(app.wsgi_app, observers, fast=app.config.get('FAST_PATHS', True),
                                          deadline_ms=app.config.get('REQUEST_DEADLINE_MS', 0))
    return access_log


def log_refused_request(status, request_id, body_bytes, client_address):
    """Write the access line of a request gunicorn answered itself, unparsed ("- - 400": no method or path known),
    so that the request id of its problem answer is found in the log like any other."""
    fields = {'http': {'request': {'id': request_id}, 'response': {'status_code': status, 'body': {'bytes': body_bytes}}},
              'event': {'dataset': ACCESS_DATASET, 'outcome': 'failure' if status >= 500 else 'success'}}
    if isinstance(client_address, tuple) and client_address:
        fields['client'] = {'ip': client_address[0]}
    level = logging.ERROR if status >= 500 else logging.INFO
    logging.getLogger(ACCESS_LOGGER).log(level, f'- - {status}', extra=dotted(fields))
