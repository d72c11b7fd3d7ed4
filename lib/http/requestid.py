"""Request ids: a WSGI middleware picks each request's id; the header step (lib/http/headers.py) sends it back."""
import contextvars
import os
import re

from flask import has_request_context, request

SANE_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}')
REQUEST_ID_KEY = 'dbapi.request_id'
# The id of a request gunicorn refused unparsed (lib/http/workers.py), while gunicorn logs why: no app serves it.
REFUSED_REQUEST_ID = contextvars.ContextVar('dbapi_refused_request_id', default=None)


def new_request_id():
    """Return a fresh random request id: 32 hex characters, like a UUID4 without its dashes."""
    return os.urandom(16).hex()


def current_request_id():
    """Return the id of the request being served or refused (REFUSED_REQUEST_ID), or None outside a request."""
    return request.environ.get(REQUEST_ID_KEY) if has_request_context() else REFUSED_REQUEST_ID.get()


class RequestIds:
    """WSGI middleware: take the caller's X-Request-ID when it is sane (1-128 of [A-Za-z0-9._:-]) and holds no
    secret (holds_secret(id, environ): lib.auth's holds_a_token, a bearer token sent as the id), else make one. An
    id the logs would redact could not be found there, and the answer's header would echo the secret."""

    def __init__(self, wsgi_app, holds_secret=lambda text, environ: False):
        self.wsgi_app = wsgi_app
        self.holds_secret = holds_secret

    def __call__(self, environ, start_response):
        incoming = environ.get('HTTP_X_REQUEST_ID')
        sane = incoming and SANE_REQUEST_ID.fullmatch(incoming) and not self.holds_secret(incoming, environ)
        environ[REQUEST_ID_KEY] = incoming if sane else new_request_id()
        return self.wsgi_app(environ, start_response)
