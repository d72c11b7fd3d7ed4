"""Load shedding: a process admits at most MAX_REQUESTS_IN_FLIGHT requests; one more gets a fast 503.

A request is in flight from the moment the server hands it to the app until the server closes its body, so a
streamed export counts until its last byte. The operations endpoints never count and are never refused: a
liveness probe or a scrape must get through exactly when the process is busiest.
"""
import threading

from flask import request

from lib.errors import BadRequest, ServiceUnavailable

# The HTTP versions dbapi answers (RFC 9112); gunicorn parses HTTP/1.2 to HTTP/1.9 too, nginx answers them 400.
HTTP_VERSIONS = frozenset({'HTTP/1.0', 'HTTP/1.1'})
# Set on a shed request's environ: the Admission that refused it.
SHED_KEY = 'dbapi.shed'
# The operations endpoints, with their one trailing slash (as every path takes one: docs/contract.md).
NEVER_SHED_PATHS = frozenset({'/healthz', '/readyz', '/metrics', '/healthz/', '/readyz/', '/metrics/'})


class Overloaded(ServiceUnavailable):
    """The process already serves as many requests as it may (503)."""

    detail = 'This server is serving as many requests as it may. Try again shortly.'


class Admitted:
    """The body of an admitted request: the server iterates it, and closing it ends the request's admission."""

    __slots__ = ('body', 'release')

    def __init__(self, body, release):
        self.body = body
        self.release = release

    def __iter__(self):
        return iter(self.body)

    def close(self):
        """Close the app's body, then let the next request in."""
        try:
            close = getattr(self.body, 'close', None)
            if close is not None:
                close()
        finally:
            self.release()


class Admission:
    """WSGI middleware that counts the requests in flight and marks those over the limit to be shed."""

    def __init__(self, wsgi_app, limit):
        self.wsgi_app = wsgi_app
        self.limit = limit
        self.in_flight = 0
        self.lock = threading.Lock()
        # Notified once per request that ends: a place in flight came free.
        self.room = threading.Condition(self.lock)

    def __call__(self, environ, start_response):
        if environ.get('PATH_INFO') in NEVER_SHED_PATHS:
            return self.wsgi_app(environ, start_response)
        with self.lock:
            admitted = self.in_flight < self.limit
            if admitted:
                self.in_flight += 1
        if not admitted:
            environ[SHED_KEY] = self
            return self.wsgi_app(environ, start_response)
        try:
            return Admitted(self.wsgi_app(environ, start_response), self.release)
        except BaseException:
            self.release()
            raise

    def release(self):
        """Count one request fewer in flight, and wake one waiter for room."""
        with self.lock:
            self.in_flight -= 1
            self.room.notify()

    def wait_for_room(self, timeout):
        """Wait until a place in flight is free, or (each request that ends wakes one waiter) one comes free, timeout
        seconds at most."""
        with self.lock:
            if self.in_flight >= self.limit:
                self.room.wait(timeout)


def refuse_when_shed():
    """Answer a request the admission marked with a 503 before routing, authorization or the body are looked at."""
    if request.environ.get(SHED_KEY):
        raise Overloaded()


# What a request in an HTTP version other than 1.0 and 1.1 is told, whether gunicorn parses its version (HTTP/1.2) or
# not (HTTP/2.0, lib/http/workers.py).
UNKNOWN_VERSION_DETAIL = 'dbapi speaks HTTP/1.0 and HTTP/1.1 only.'


def refuse_unknown_http_version():
    """Answer a request in an HTTP version other than 1.0 and 1.1 (HTTP_VERSIONS) with a 400, as nginx does."""
    if request.environ.get('SERVER_PROTOCOL') not in HTTP_VERSIONS:
        raise BadRequest(UNKNOWN_VERSION_DETAIL)


def refuse_http_1_1_without_host():
    """Answer an HTTP/1.1 request without a Host header with a 400: RFC 9112 section 3.2 says a server MUST, as nginx
    in front does (trial BQ: a replica met directly answered it)."""
    if request.environ.get('SERVER_PROTOCOL') == 'HTTP/1.1' and 'HTTP_HOST' not in request.environ:
        raise BadRequest('An HTTP/1.1 request carries a Host header (RFC 9112 section 3.2).')


def install_admission(app):
    """Refuse an HTTP version dbapi does not speak, and an HTTP/1.1 request without a Host header, then bound the
    requests app serves at once to its MAX_REQUESTS_IN_FLIGHT; return the middleware."""
    admission = app.wsgi_app = Admission(app.wsgi_app, app.config['MAX_REQUESTS_IN_FLIGHT'])
    app.before_request(refuse_unknown_http_version)
    app.before_request(refuse_http_1_1_without_host)
    app.before_request(refuse_when_shed)
    return admission
