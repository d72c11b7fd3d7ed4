"""The ApiError family, the SQLSTATE mapping and the one RFC 9457 problem renderer."""
import sys
from http import HTTPStatus

import psycopg2
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from lib.http.exchange import ERROR_KEY, remember
from lib.jsonenc import json_response
from lib.http.requestid import current_request_id

PROBLEM_JSON = 'application/problem+json'
RETRY_AFTER_SECONDS = '1'


class StartupError(Exception):
    """The service cannot start; the message, one line naming the cause and never a secret, says why."""


class ImproperlyConfigured(StartupError):
    """A setting is missing or malformed; the service must not start."""


def report_startup_errors():
    """Make an uncaught StartupError print as one line on stderr (entry points call it); other exceptions as before."""
    previous_hook = sys.excepthook

    def report(kind, exc, traceback):
        if isinstance(exc, StartupError):
            print(f'dbapi: {exc}', file=sys.stderr, flush=True)
        else:
            previous_hook(kind, exc, traceback)
    sys.excepthook = report


class ApiError(Exception):
    """An error with an HTTP status that renders as problem details."""

    status = 500
    detail = 'The server could not complete the request.'

    def __init__(self, detail=None, errors=None, headers=None, **members):
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.errors = errors
        self.headers = headers or {}
        self.members = members


class BadRequest(ApiError):
    """The request cannot be understood (400)."""

    status = 400
    detail = 'The request is malformed.'


class Unauthorized(ApiError):
    """No valid bearer token (401)."""

    status = 401
    detail = 'A valid bearer token is required.'


class Forbidden(ApiError):
    """The caller may not do this (403)."""

    status = 403
    detail = 'This client may not call this action.'


class NotFound(ApiError):
    """The thing asked for does not exist (404)."""

    status = 404
    detail = 'The resource was not found.'


class Conflict(ApiError):
    """The request conflicts with the current state (409)."""

    status = 409
    detail = 'The request conflicts with existing data.'


class Unprocessable(ApiError):
    """The body is well-formed but its content is refused (422)."""

    status = 422
    detail = 'The request body failed validation.'


class TooManyRequests(ApiError):
    """The client already holds all it may; try again shortly (429)."""

    status = 429
    detail = 'This client has too many requests in progress. Try again shortly.'

    def __init__(self, detail=None, **kwargs):
        super().__init__(detail, **kwargs)
        self.headers.setdefault('Retry-After', RETRY_AFTER_SECONDS)


class ServiceUnavailable(ApiError):
    """The database cannot be reached now; try again shortly (503)."""

    status = 503
    detail = 'The database is unavailable. Try again shortly.'

    def __init__(self, detail=None, **kwargs):
        super().__init__(detail, **kwargs)
        self.headers.setdefault('Retry-After', RETRY_AFTER_SECONDS)


class GatewayTimeout(ApiError):
    """The statement ran past its time limit (504)."""

    status = 504
    detail = 'The database statement timed out.'


# SQLSTATE (exact code or two-character class) -> (error class, detail or None for the server's own message).
# Source of the codes: PostgreSQL's "Appendix A. PostgreSQL Error Codes".
SQLSTATE_ERRORS = {
    '23505': (Conflict, None),
    '23503': (Conflict, None),
    '23502': (Unprocessable, None),
    '23514': (Unprocessable, None),
    '22': (Unprocessable, None),
    'P0001': (BadRequest, None),
    '42501': (Forbidden, 'The database refused this operation.'),
    '57014': (GatewayTimeout, GatewayTimeout.detail),
    '40001': (ServiceUnavailable, 'The transaction kept conflicting with others. Try again.'),
    '40P01': (ServiceUnavailable, 'The transaction kept conflicting with others. Try again.'),
    '08': (ServiceUnavailable, ServiceUnavailable.detail),
    '53300': (ServiceUnavailable, ServiceUnavailable.detail),
    '57P01': (ServiceUnavailable, ServiceUnavailable.detail),
    '57P02': (ServiceUnavailable, ServiceUnavailable.detail),
    '57P03': (ServiceUnavailable, ServiceUnavailable.detail),
}
# Serialization failure and deadlock: a whole-transaction action is run again before the 503 above.
RETRYABLE_SQLSTATES = frozenset({'40001', '40P01'})

HTTP_DETAILS = {
    404: 'No action is mounted at this path.',
    405: 'This path does not accept this method.',
    413: 'The request body is too large.',
    415: 'The request body must be application/json.',
}

# Exception class -> function(exc) returning its ApiError, or None for "a server fault" (a generic 500).
# Looked up along the exception's class hierarchy, nearest class first.
ERROR_TRANSLATORS = {}


def translates(exception_class):
    """Register the decorated function as the translator of exception_class (and its subclasses) to an ApiError."""
    def register(translate):
        ERROR_TRANSLATORS[exception_class] = translate
        return translate
    return register


@translates(ApiError)
def from_api_error(exc):
    """An ApiError renders as itself."""
    return exc


@translates(ValidationError)
def from_validation_error(exc):
    """A marshmallow ValidationError is a 422 with its field map."""
    return Unprocessable(errors=exc.messages)


@translates(HTTPException)
def from_http_exception(exc):
    """Translate a werkzeug HTTPException (404, 405, 413, 415...) into an ApiError."""
    error = ApiError(HTTP_DETAILS.get(exc.code, exc.description))
    error.status = exc.code
    if exc.code == 405 and exc.valid_methods:
        error.headers['Allow'] = ', '.join(exc.valid_methods)
    return error


@translates(psycopg2.Error)
def from_database_error(exc):
    """Translate a psycopg2 error by its SQLSTATE (exact code, then class), or None when it is a server fault."""
    code = exc.pgcode
    if code is None:
        # No SQLSTATE: the connection broke or could not be made.
        lost = isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
        return ServiceUnavailable() if lost else None
    mapped = SQLSTATE_ERRORS.get(code) or SQLSTATE_ERRORS.get(code[:2])
    if mapped is None:
        return None
    error_class, detail = mapped
    diag = exc.diag
    members = {'constraint': diag.constraint_name} if diag.constraint_name else {}
    return error_class(detail or diag.message_primary, sqlstate=code, **members)


def as_api_error(exc):
    """Return the ApiError that exc stands for, by the nearest registered translator; otherwise a generic 500."""
    for kind in type(exc).__mro__:
        translate = ERROR_TRANSLATORS.get(kind)
        if translate is not None:
            return translate(exc) or ApiError()
    return ApiError()


def problem_body(error, request_id):
    """Build the RFC 9457 problem document for error."""
    body = {'type': 'about:blank', 'title': HTTPStatus(error.status).phrase,
            'status': error.status, 'detail': error.detail}
    if error.errors is not None:
        body['errors'] = error.errors
    body.update(error.members)
    body['request_id'] = request_id
    return body


def handle_error(exc):
    """Render any exception raised while serving a request as problem+json."""
    error = as_api_error(exc)
    # The access line logs it, with the stack trace of a 5xx, under the same request id.
    remember(ERROR_KEY, (exc, error))
    body = problem_body(error, current_request_id())
    response = json_response(body, error.status, PROBLEM_JSON)
    response.headers.update(error.headers)
    return response
