"""The one header step: every header dbapi adds to every answer is added here, by one WSGI middleware.

Each entry of RESPONSE_HEADERS is a function (environ, headers) -> [(name, value), ...] of headers to add;
headers is the answer's own list, read-only. A new header is one more entry.
"""
import logging
import re

from lib.errors import header_fault
from lib.http.requestid import REQUEST_ID_KEY

log = logging.getLogger('dbapi.headers')


def request_id_header(environ, headers):
    """X-Request-ID: the id the request was served under (docs/contract.md section 4)."""
    return [('X-Request-ID', environ[REQUEST_ID_KEY])]


def vary_header(environ, headers):
    """Vary: Accept-Encoding on every answer, since any may be compressed; flask-compress may have set it."""
    if any(name.lower() == 'vary' for name, _ in headers):
        return []
    return [('Vary', 'Accept-Encoding')]


RESPONSE_HEADERS = [request_id_header, vary_header]
# A qvalue as RFC 9110 section 12.4.2 spells one: 0 to 1 with at most three decimals.
QVALUE = re.compile(r'0(\.[0-9]{0,3})?|1(\.0{0,3})?')


def coding_and_q(entry):
    """Return (coding name, q-value) of one Accept-Encoding entry ("gzip;q=0.5"), the name lower-case, q 1 unless
    given (RFC 9110 section 12.4.2; parameter names are case-insensitive) and 1 when it is no qvalue of the RFC's
    grammar (`nan`, `inf`, `-1`, `1.5`)."""
    name, *parameters = entry.split(';')
    for parameter in parameters:
        key, _, value = parameter.partition('=')
        if key.strip().lower() == 'q':
            value = value.strip()
            return name.strip().lower(), float(value) if QVALUE.fullmatch(value) else 1.0
    return name.strip().lower(), 1.0


def acceptable_codings(accept_encoding, supported):
    """Return an Accept-Encoding header that names only codings the client accepts, with `*` spelled out as the
    supported codings it does not name: flask-compress (1.25) keeps q=0 entries, picks one when nothing else is
    listed ("gzip;q=0" got gzip), and reads `*` as its first coding even when the client refused that one."""
    entries = [coding_and_q(entry) for entry in accept_encoding.split(',') if entry.strip()]
    named = {name for name, _ in entries}
    kept = []
    for name, q in entries:
        if q <= 0:
            continue
        if name == '*':
            kept.extend(f'{coding};q={q}' for coding in supported if coding not in named)
        else:
            kept.append(f'{name};q={q}')
    return ', '.join(kept)


class ResponseHeaders:
    """WSGI middleware: add the headers of every step to each answer, whoever made it (a view, an error). A step
    other than dbapi's own that raises, or returns anything but a list of (name, value) strings an answer can carry
    (lib.errors.header_fault: no header the framework sets), adds nothing: an error line names it and its fault, and
    the answer, whose status and body are made already, goes without them (gunicorn logged it a second time, and its
    post_request hook failed on it: trial Y)."""

    def __init__(self, wsgi_app, steps=None):
        self.wsgi_app = wsgi_app
        self.steps = tuple((step, step in DBAPI_STEPS) for step in (RESPONSE_HEADERS if steps is None else steps))

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            for step, trusted in self.steps:
                headers.extend(step(environ, headers) if trusted else checked_step_headers(step, environ, headers))
            return start_response(status, headers, exc_info)
        return self.wsgi_app(environ, start_with_headers)


# The header steps of dbapi's own, whose answers are not checked.
DBAPI_STEPS = frozenset(RESPONSE_HEADERS)


def checked_step_headers(step, environ, headers):
    """Return the headers step(environ, headers) adds, or [] when it raises or they cannot be sent (step_fault),
    with an error line that names the step."""
    try:
        added = step(environ, headers)
    except Exception:
        log.exception('The header step %s failed: the answer goes without its headers', step_name(step))
        return []
    fault = step_fault(added)
    if fault is not None:
        log.error('The header step %s returned %s: the answer goes without its headers', step_name(step), fault)
        return []
    return added


def step_fault(added):
    """Return why a header step's answer cannot be sent ("a tuple, not a list of (name, value) strings"), or None."""
    if not isinstance(added, list) or not all(isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[1], str)
                                              for pair in added):
        return f'{type(added).__name__}, not a list of (name, value) strings'
    return header_fault(dict(added))


def step_name(step):
    """Return a header step's module and name, as a log line names it."""
    return f'{getattr(step, "__module__", "?")}.{getattr(step, "__qualname__", repr(step))}'
