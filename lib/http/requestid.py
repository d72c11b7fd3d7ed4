"""Request ids: a WSGI middleware picks each request's id and puts it on every answer."""
import os
import re

from flask import has_request_context, request

SANE_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}')
REQUEST_ID_KEY = 'dbapi.request_id'
VARY = ('Vary', 'Accept-Encoding')


def new_request_id():
    """Return a fresh random request id: 32 hex characters, like a UUID4 without its dashes."""
    return os.urandom(16).hex()


def current_request_id():
    """Return the id of the request being served, or None outside a request."""
    return request.environ.get(REQUEST_ID_KEY) if has_request_context() else None


class RequestIds:
    """WSGI middleware: pick the request id (the caller's when sane) and add X-Request-ID to every answer.

    It also adds `Vary: Accept-Encoding`, which every answer needs because any may be compressed. Working
    on the raw header list here costs far less than werkzeug's Headers in an after_request hook.
    """

    def __init__(self, wsgi_app):
        self.wsgi_app = wsgi_app

    def __call__(self, environ, start_response):
        incoming = environ.get('HTTP_X_REQUEST_ID')
        request_id = incoming if incoming and SANE_REQUEST_ID.fullmatch(incoming) else new_request_id()
        environ[REQUEST_ID_KEY] = request_id

        def start_with_request_id(status, headers, exc_info=None):
            headers.append(('X-Request-ID', request_id))
            if not any(name.lower() == 'vary' for name, _ in headers):
                headers.append(VARY)
            return start_response(status, headers, exc_info)
        return self.wsgi_app(environ, start_with_request_id)
