"""The one header step: every header dbapi adds to every answer is added here, by one WSGI middleware.

Each entry of RESPONSE_HEADERS is a function (environ, headers) -> [(name, value), ...] of headers to add;
headers is the answer's own list, read-only. A new header is one more entry.
"""
from lib.http.requestid import REQUEST_ID_KEY


def request_id_header(environ, headers):
    """X-Request-ID: the id the request was served under (docs/contract.md section 4)."""
    return [('X-Request-ID', environ[REQUEST_ID_KEY])]


def vary_header(environ, headers):
    """Vary: Accept-Encoding on every answer, since any may be compressed; flask-compress may have set it."""
    if any(name.lower() == 'vary' for name, _ in headers):
        return []
    return [('Vary', 'Accept-Encoding')]


RESPONSE_HEADERS = [request_id_header, vary_header]


def refuses(coding):
    """Tell whether one Accept-Encoding entry ("gzip;q=0") refuses its coding: a q of 0 (RFC 9110 section 12.4.2)."""
    for parameter in coding.split(';')[1:]:
        name, _, value = parameter.partition('=')
        if name.strip().lower() == 'q':
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False


def acceptable_codings(accept_encoding):
    """Return an Accept-Encoding header without the codings it refuses: flask-compress (1.25) keeps q=0 entries and
    picks one when nothing else is listed, so "gzip;q=0" would get gzip."""
    return ','.join(coding for coding in accept_encoding.split(',') if not refuses(coding))


class ResponseHeaders:
    """WSGI middleware: add the headers of every step to each answer, whoever made it (a view, an error)."""

    def __init__(self, wsgi_app, steps=None):
        self.wsgi_app = wsgi_app
        self.steps = tuple(RESPONSE_HEADERS if steps is None else steps)

    def __call__(self, environ, start_response):
        def start_with_headers(status, headers, exc_info=None):
            for step in self.steps:
                headers.extend(step(environ, headers))
            return start_response(status, headers, exc_info)
        return self.wsgi_app(environ, start_with_headers)
