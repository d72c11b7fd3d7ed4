"""Request plumbing: request ids and the one JSON body parser."""
import os
import re

import orjson
from flask import g, request
from werkzeug.exceptions import UnsupportedMediaType

from .errors import BadRequest

SANE_REQUEST_ID = re.compile(r'[A-Za-z0-9._:-]{1,128}')
EMPTY_BODY = {}


def new_request_id():
    """Return a fresh random request id: 32 hex characters, like a UUID4 without its dashes."""
    return os.urandom(16).hex()


def assign_request_id():
    """Echo the caller's X-Request-ID when it is sane, else make a new one."""
    incoming = request.headers.get('X-Request-ID')
    if incoming and SANE_REQUEST_ID.fullmatch(incoming):
        g.request_id = incoming
    else:
        g.request_id = new_request_id()


def send_request_id(response):
    """Add X-Request-ID to the response."""
    response.headers['X-Request-ID'] = g.get('request_id') or new_request_id()
    return response


def read_json_body():
    """Parse the request body once: empty means {}, anything but JSON is refused."""
    data = request.get_data(cache=False)
    if not data.strip():
        return dict(EMPTY_BODY)
    if request.mimetype != 'application/json':
        raise UnsupportedMediaType()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest('The request body is not valid JSON.') from None
