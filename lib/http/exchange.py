"""What a request's handlers leave in its WSGI environ for the access line, which is written after Flask is done,
and the request's deadline, which every part of its handling reads."""
import signal
import time

from flask import request
from gevent import GreenletExit
from werkzeug.exceptions import HTTPException
from werkzeug.routing import RoutingException

ROUTE_KEY = 'dbapi.route'
CLIENT_KEY = 'dbapi.client'
ERROR_KEY = 'dbapi.error'
# Set by lib/http/disconnect.py when the client went away while its query ran: the access line says 499.
GONE_KEY = 'dbapi.client_gone'
# Set when a stopping worker cancelled the request's query just before its graceful timeout ended.
STOPPING_KEY = 'dbapi.stopping'
# Set when the request's query was cancelled because the request's deadline passed while it ran.
PAST_DEADLINE_KEY = 'dbapi.past_deadline'
# The error for which lib/http/disconnect.py cut a stream short (a client that stopped reading past the deadline).
CUT_KEY = 'dbapi.cut'
# Set when lib/http/disconnect.py ended a body still being read by a thread at the request's deadline (a 408).
BODY_TIMED_OUT_KEY = 'dbapi.body_timed_out'
# Set when the request borrowed a database connection: under gevent its statements waited through the event loop,
# which turned while it ran (lib/http/workers.py paces the others).
WAITED_ON_DATABASE_KEY = 'dbapi.waited_on_database'
# {database name: connection} of the actions of the request that run now, which the decorated helpers they call join.
HELD_CONNECTIONS_KEY = 'dbapi.held_connections'
# Set once a decorated helper ran on a connection of its own while an action held one: what it wrote committed on its
# own, so a transaction of the action that broke does not mean nothing of the request was committed.
COMMITTED_APART_KEY = 'dbapi.committed_apart'
# Whether the last lease of the request to end (its action's: its helpers' end before) committed: a client seen
# gone only after the commit (the watcher looks every 0.1 s) is still logged 499, and its line says so.
COMMITTED_KEY = 'dbapi.committed'
# gunicorn's client socket (the public key its WSGI environ has); absent in-process.
CLIENT_SOCKET_KEY = 'gunicorn.socket'
# When the request must be done (time.monotonic()), set by the first part of its handling that asks.
DEADLINE_KEY = 'dbapi.deadline'


def sent_text(value):
    """Return a WSGI environ string of what the client sent (a header's value, the path: PEP 3333 keeps each byte as
    the latin-1 character of that byte) as the text its bytes spell in UTF-8, each byte no UTF-8 spells as U+FFFD:
    `charset=ütf-8` was quoted `charset=Ã¼tf-8`, a User-Agent logged so too (trial BQ)."""
    if value.isascii():
        return value
    try:
        return value.encode('latin-1').decode('utf-8', 'replace')
    except UnicodeEncodeError:  # text already (a test client's), no server's bytes
        return value


def remember(key, value):
    """Keep value in the current request's environ under key, for the access line."""
    request.environ[key] = value


def deadline_of(environ, deadline_ms):
    """Return when the request of environ must be done (time.monotonic()), set by the first part of its handling
    that asks; None when there is no request (environ None) or no deadline (deadline_ms, REQUEST_DEADLINE_MS, 0)."""
    if environ is None or not deadline_ms:
        return None
    deadline = environ.get(DEADLINE_KEY)
    if deadline is None:
        deadline = environ[DEADLINE_KEY] = time.monotonic() + deadline_ms / 1000
    return deadline


class BrokeBeforeItsFirstByte(Exception):
    """An answer the app started broke before the server had sent any of it (a compressor holds its first output
    back): the server sends answer (bytes: a whole HTTP answer, a 500 problem under the request's id) in its place
    (lib/http/workers.py). The access line logs the error that broke it, and answer's body bytes."""

    def __init__(self, answer):
        super().__init__('the answer broke before its first byte')
        self.answer = answer


class ActionExited(RuntimeError):
    """A module's code (an action, its schema's hooks, the items of its stream) raised a BaseException that is no
    Exception: SystemExit (sys.exit()), a gevent.Timeout it let escape, one of its own. A bug, answered as a 500 (or
    a stream cut short) while the worker serves on; Flask answers Exceptions alone, so the request would otherwise be
    gunicorn's bare 500, written into a stream already under way (trial BR), or end the worker."""


class ResponseRaised(TypeError):
    """An action raised a werkzeug HTTPException that carries a whole answer rather than an error status:
    flask.abort(Response(...)), HTTPException(response=...), a RequestRedirect. Flask sends such an answer as it is (a
    200 or 201, werkzeug's HTML redirect page, an HTML 500), although the raise had rolled the action's transaction
    back (trial BR: a success answered, nothing committed). A bug, answered as a 500 problem (or a stream cut short)."""


def answered_as(exc, stopping=False):
    """Return what a module's code raised (exc: in the view, or in the items of its stream) as dbapi answers it: None
    for the worker stopping (stops_the_worker), to pass through untouched; ActionExited for any other BaseException
    that is no Exception; ResponseRaised for an answer raised (sent_as_it_is); else exc itself."""
    if stops_the_worker(exc, stopping):
        return None
    if not isinstance(exc, Exception):
        return escaped(exc)
    return response_raised(exc) if sent_as_it_is(exc) else exc


def stops_the_worker(exc, stopping):
    """Tell whether a BaseException from a module's code is the worker stopping: gevent killing its greenlets
    (GreenletExit), gunicorn's quick stop (a SystemExit while stopping, lib.http.disconnect's WATCHER.stopping), or
    Ctrl-C where SIGINT raises KeyboardInterrupt (a test, a script). gunicorn's workers take SIGINT themselves, so
    there a KeyboardInterrupt is the module's own raise (trial BR: its answer was gunicorn's 500, under another
    request id, with a second access line)."""
    if isinstance(exc, KeyboardInterrupt):
        return signal.getsignal(signal.SIGINT) is signal.default_int_handler
    return isinstance(exc, GreenletExit) or isinstance(exc, SystemExit) and stopping


def sent_as_it_is(exc):
    """Tell whether Flask sends an exception as the answer it carries, past the error translators: a werkzeug
    HTTPException without a status of its own (flask.abort(Response)), or a routing exception (RequestRedirect)."""
    return isinstance(exc, HTTPException) and (exc.code is None or isinstance(exc, RoutingException))


def response_raised(exc):
    """Return the ResponseRaised of an HTTPException that Flask would send as it is (sent_as_it_is), exc its cause."""
    status = exc.response.status_code if exc.response is not None else exc.code
    error = ResponseRaised(f'the action raised {type(exc).__name__}, an answer of status {status}: a success is '
                           'returned (its transaction is then committed), an error raised as a lib.errors exception '
                           'or flask.abort(status, words), whose answer is problem details; the raise rolled the '
                           'transaction back')
    error.__cause__ = exc
    return error


def escaped(exc):
    """Return the ActionExited a BaseException from a module's code is answered as, exc its cause."""
    if isinstance(exc, SystemExit):  # gunicorn reads exit code 3 as a boot failure and stops the whole service
        error = ActionExited(f'SystemExit({exc.code!r}) was raised while the action ran: a module must not end its '
                             'process')
    else:
        kind = type(exc)
        error = ActionExited(f'{kind.__module__}.{kind.__qualname__} ({exc}) escaped the action: a BaseException '
                             'that is no Exception, which a module must catch')
    error.__cause__ = exc
    return error
