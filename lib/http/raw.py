"""Answers written straight to a client's socket, outside the app: gunicorn's own refusals, and a 500 in place of an
answer that broke before its first byte."""
from lib.errors import ApiError
from lib.http.headers import RESPONSE_HEADERS
from lib.http.requestid import REQUEST_ID_KEY
from lib.jsonenc import dumps_bytes

# The detail of each status such an answer has; a 500's is the app's own (lib.errors.ApiError).
PROBLEM_DETAILS = {400: 'The request is malformed.', 414: 'The request line is too long.',
                   431: 'The request has a header too large, or too many headers.', 500: ApiError.detail}


def problem_answer(status, reason, request_id, detail=None):
    """Return (a whole HTTP answer carrying a problem document of status, with request_id and the headers every
    answer of dbapi has, lib/http/headers.py's steps: X-Request-ID, Vary; its body's bytes). detail: the status's
    own (PROBLEM_DETAILS) when None."""
    body = dumps_bytes({'type': 'about:blank', 'title': reason, 'status': status,
                        'detail': detail or PROBLEM_DETAILS.get(status, 'The server could not handle the request.'),
                        'request_id': request_id})
    headers = [('Connection', 'close'), ('Content-Type', 'application/problem+json'),
               ('Content-Length', str(len(body)))]
    environ = {REQUEST_ID_KEY: request_id}
    for step in RESPONSE_HEADERS:
        headers += step(environ, headers)
    head = f'HTTP/1.1 {status} {reason}\r\n' + ''.join(f'{name}: {value}\r\n' for name, value in headers) + '\r\n'
    return head.encode('latin-1') + body, len(body)
