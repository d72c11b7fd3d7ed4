"""What the replica saw: the client address and scheme after TrustedProxies, and the request id it was given."""
import os

from flask import request

from lib.http.requestid import current_request_id


def whoami():
    """Return the request as this replica saw it."""
    return {'remote_addr': request.remote_addr, 'scheme': request.scheme, 'request_id': current_request_id(),
            'x_request_id': request.headers.get('X-Request-ID'),
            'x_forwarded_for': request.environ.get('HTTP_X_FORWARDED_FOR'), 'pid': os.getpid()}
