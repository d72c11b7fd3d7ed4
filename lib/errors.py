"""The ApiError family, the SQLSTATE mapping and the one RFC 9457 problem renderer."""
import math
import re
import select
import sys
import time
import traceback
from contextlib import contextmanager
from http import HTTPStatus

import psycopg2
from flask import current_app, has_app_context, has_request_context, request
from marshmallow import ValidationError, fields
from werkzeug.exceptions import HTTPException

from lib.http.exchange import ERROR_KEY, remember
from lib.jsonenc import KeysWrittenAlike, KeyWithoutName, TooDeepToWrite, dumps_bytes, json_response
from lib.http.requestid import current_request_id
from lib.process import StartInterrupted, write_line

PROBLEM_JSON = 'application/problem+json'
RETRY_AFTER_SECONDS = '1'


class StartupError(Exception):
    """The service cannot start; the message, one line naming the cause and never a secret, says why."""


class ImproperlyConfigured(StartupError):
    """A setting is missing or malformed; the service must not start."""


def utf8_text(text, name):
    """Return text (a str, or bytes read from a file) as UTF-8 text; ImproperlyConfigured naming name (a variable or a
    file, never its text) when it is not."""
    try:
        if isinstance(text, bytes):
            return text.decode()
        text.encode()
    except UnicodeError:
        raise ImproperlyConfigured(f'{name} is not UTF-8 text: write it in UTF-8') from None
    return text


# U+FEFF at the start of a text: a byte order mark, as Windows editors write UTF-8.
BYTE_ORDER_MARK = '\ufeff'


def file_text(data, name):
    """Return a file's bytes as UTF-8 text (utf8_text) without the byte order mark an editor may have written first:
    a mounted secret's would be taken as part of the password or token (trial BL), and a JSON parser may ignore it
    (RFC 8259 section 8.1)."""
    return utf8_text(data, name).removeprefix(BYTE_ORDER_MARK)


def integer_value(text):
    """Return the integer that text of ASCII digits (a setting's, a JSON integer's) spells; one of more digits than
    int() converts (4,300 by default: sys.get_int_max_str_digits) is past every bound a setting has, so infinite,
    with its sign."""
    try:
        return int(text)
    except ValueError:
        return -math.inf if text.strip(' \t').startswith('-') else math.inf


# A detail shows what the caller sent (a 404's module, a 415's charset) up to this many characters of it.
MAX_NAME_SHOWN = 64
# A problem shows this much of PostgreSQL's message (and of a RAISE's DETAIL and HINT): it quotes a value whole, and a
# 20 MB value made a 20 MB problem (trial BD); a 5xx's log line keeps all of it.
MAX_DATABASE_TEXT_SHOWN = 1024


def shown_briefly(text, limit=MAX_NAME_SHOWN):
    """Return text the caller sent as a problem's detail shows it: its tokens and passwords redacted (the gateway's
    redactor), then cut after limit characters with '...': a token cut first would pass the body's redactor, its
    first characters shown (trial AA)."""
    gateway = current_app.extensions.get('dbapi') if has_app_context() else None
    text = gateway.redact.redact(text) if gateway is not None else text
    return text if len(text) <= limit else text[:limit] + '...'


def import_failure(exc):
    """Return how a start error quotes exc, raised while a user's code was imported: `Class: message` (a message that
    cannot be made text said so); raise exc again when it is a stop of the start (Ctrl-C: KeyboardInterrupt,
    StartInterrupted), not that code's failure."""
    if isinstance(exc, (KeyboardInterrupt, StartInterrupted)):
        raise exc
    try:
        message = str(exc)
    except Exception:
        message = '(its message cannot be shown)'
    return f'{type(exc).__name__}: {message}'


def report_startup_errors():
    """Make an uncaught StartupError print as one line on stderr (entry points call it); other exceptions as before."""
    previous_hook = sys.excepthook

    def report(kind, exc, traceback):
        if isinstance(exc, StartupError):
            print_startup_error(exc)
        else:
            previous_hook(kind, exc, traceback)
    sys.excepthook = report


def print_startup_error(exc):
    """Print a StartupError as its one line on stderr (shown_on_one_line), cut with '...' where it would pass what a
    pipe takes in one write (PIPE_BUF): a name of 200,000 characters in a bearer table made a line other processes'
    lines could tear (trial BL)."""
    line = f'dbapi: {shown_on_one_line(str(exc))}'
    encoded = line.encode(errors='backslashreplace')  # as stderr writes what UTF-8 cannot
    if len(encoded) >= select.PIPE_BUF:
        line = encoded[:select.PIPE_BUF - 4].decode(errors='ignore') + '...'
    write_line(line)


def shown_on_one_line(text):
    """Return text with each character a terminal would not show as it is (a newline, the escape that starts a
    colour: a start error can quote a module's own exception) written as a Python string literal writes it."""
    return ''.join(char if char.isprintable() else repr(char)[1:-1] for char in text)


@contextmanager
def exit_on_startup_error():
    """Turn a StartupError raised in the block into its one line and exit code 1, where an excepthook cannot help
    (gunicorn reads its config file under `except Exception` and prints a traceback)."""
    try:
        yield
    except StartupError as exc:
        print_startup_error(exc)
        raise SystemExit(1) from None


# RFC 9110's names (section 15) of the statuses Python before 3.13 names otherwise: HTTPStatus(422).phrase is
# "Unprocessable Entity" on 3.11, "Unprocessable Content" from 3.13. A problem's title is the standard's phrase
# whatever the Python (RFC 9457 section 3.1.3), as nginx's own are (nginx/dbapi.conf.template; trial BZ).
RFC_9110_PHRASES = {413: 'Content Too Large', 414: 'URI Too Long', 416: 'Range Not Satisfiable',
                    422: 'Unprocessable Content'}


def status_phrase(status):
    """Return RFC 9110's phrase of an HTTP status (an int HTTPStatus knows; ValueError otherwise)."""
    return RFC_9110_PHRASES.get(status) or HTTPStatus(status).phrase


# Members of a problem document the framework writes (RFC 9457's, and the request's id): an error's extension
# members cannot replace them, so the body's status is always the answer's.
STANDARD_MEMBERS = frozenset({'type', 'title', 'status', 'detail', 'instance', 'errors', 'request_id'})
# Headers the server sets or drops, which no answer of an action may set: the request's id, dbapi's (docs/contract.md
# section 4), the hop-by-hop headers (RFC 9110 section 7.6.1; PEP 3333 forbids a WSGI application to set them), and
# the others gunicorn drops from an application's answer, unsent (trial BW: Server, Date, Trailers).
SERVER_HEADERS = frozenset({'x-request-id', 'connection', 'keep-alive', 'proxy-connection', 'proxy-authenticate',
                            'proxy-authorization', 'te', 'trailer', 'trailers', 'transfer-encoding', 'upgrade',
                            'server', 'date'})
# Headers the framework sets on every answer, and the server's: an error's own headers cannot replace them (a
# Content-Length that is not the body's would break the connection).
FRAMEWORK_HEADERS = SERVER_HEADERS | {'content-type', 'content-length', 'content-encoding', 'vary'}


class ApiError(Exception):
    """An error with an HTTP status that renders as problem details: detail (text), errors (a field map) and
    extension members (RFC 9457 section 3.2: sqlstate=...) go in the body, headers (Retry-After, Allow) on the
    answer. A member named as a standard one, or a header the framework sets, is a TypeError: a module's bug."""

    status = 500
    title = None  # the status's phrase, unless it has none (nginx's 499)
    detail = 'The server could not complete the request.'

    def __init__(self, detail=None, errors=None, headers=None, **members):
        if detail is not None and not isinstance(detail, str):
            raise TypeError(f'{type(self).__name__} takes a detail of text, not {type(detail).__name__}')
        if errors is not None and (fault := field_map_fault(errors)):
            raise TypeError(f'{type(self).__name__} takes errors as a field map, {{field: [messages]}}, not {fault}')
        if taken := sorted(STANDARD_MEMBERS & members.keys()):
            raise TypeError(f'{type(self).__name__} takes no member {taken[0]!r}: the framework writes it (subclass '
                            'the error class for another status or title)')
        headers = dict(headers or {})  # the caller's own dict is left as it is
        if fault := header_fault(headers):
            raise TypeError(f'{type(self).__name__} takes no header {fault}')
        super().__init__(detail or self.detail)
        self.detail = detail or self.detail
        self.errors = errors
        self.headers = headers
        self.members = members

    def retry_after(self, seconds):
        """Have the answer say when to try again, unless the error's own headers say it, in any case."""
        if not any(name.lower() == 'retry-after' for name in self.headers):
            self.headers['Retry-After'] = seconds


def field_map_fault(errors):
    """Return what makes errors no field map (marshmallow's shape: {field: [messages]}, a nested field's own map in
    its place), or None."""
    if not isinstance(errors, dict):
        return type(errors).__name__
    for field, messages in errors.items():
        fault = field_map_fault(messages) if isinstance(messages, dict) else None
        if fault or not isinstance(messages, (dict, list)):
            return f'{fault or type(messages).__name__} at {field!r}'
    return None


# A header's name is an RFC 9110 token; its value is visible US-ASCII, spaces and tabs (RFC 9110 section 5.5: other
# bytes are obsolete text whose meaning a recipient can only guess; gunicorn refuses a character past U+00FF, and a
# control character, once the action has run: trial BU, a 500 after the commit).
HEADER_NAME = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
HEADER_VALUE = re.compile(r'[ \t\x21-\x7e]*')


def header_fault(headers, taken=FRAMEWORK_HEADERS):
    """Return why headers ({name: value}, or a werkzeug Headers) cannot be sent ("'X Foo': ..."), or None: a name no
    RFC 9110 token, one of taken (lower-case names the framework or the server sets), or a value HEADER_VALUE
    refuses."""
    for name, value in headers.items():
        if not isinstance(name, str) or not HEADER_NAME.fullmatch(name):
            return f'{name!r}: a header name is an RFC 9110 token'
        if name.lower() in taken:
            return f'{name!r}: the framework sets it'
        if not HEADER_VALUE.fullmatch(str(value)):
            return (f'{name!r} with a character other than visible ASCII, a space or a tab in its value (RFC 9110 '
                    'section 5.5: percent-encode other text)')
    return None


def returned_response_fault(response, environ):
    """Return why a werkzeug Response an action returns cannot go out as it is ("carries ..."), or None: a header
    header_fault refuses (SERVER_HEADERS taken), or, for a body held whole, a Content-Length that is not its length
    (a client then waits for bytes that never come, or reads a cut body: trial BU). The headers read are the ones
    werkzeug sends for the request of environ (Response.get_wsgi_headers: a Location percent-encoded and made
    absolute, a 204's Content-Length dropped), so that redirect('/café') goes out (trial BX)."""
    headers = response.get_wsgi_headers(environ)
    if fault := header_fault(headers, SERVER_HEADERS):
        return f'carries the header {fault}'
    said = headers.getlist('Content-Length')
    if len(said) > 1:  # gunicorn sends each, and a client reads one of them (nginx refuses the answer: a 502)
        return f'says Content-Length {len(said)} times ({", ".join(said)})'
    if not said or not response.is_sequence:  # a stream's is dropped (respond): its length is known once sent
        return None
    length = response.calculate_content_length()
    if said[0].strip() == str(length):
        return None
    return f'says Content-Length: {said[0]}, but its body has {length} bytes'


class BadRequest(ApiError):
    """The request cannot be understood (400)."""

    status = 400
    detail = 'The request is malformed.'


# What a 401 asks for (RFC 6750 section 3): a bearer token of this realm.
BEARER_CHALLENGE = 'Bearer realm="dbapi"'


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


class RequestTimeout(ApiError):
    """The client did not send its whole request before the request's deadline (408), as nginx says it too."""

    status = 408
    detail = 'The request was not sent in time.'


class Conflict(ApiError):
    """The request conflicts with the current state (409)."""

    status = 409
    detail = 'The request conflicts with existing data.'


class UnsupportedMediaType(ApiError):
    """The body is not of a type the action reads: JSON, in UTF-8 (415)."""

    status = 415
    detail = 'The request body must be application/json.'


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
        self.retry_after(RETRY_AFTER_SECONDS)


class ServiceUnavailable(ApiError):
    """The database cannot be reached now; try again shortly (503)."""

    status = 503
    detail = 'The database is unavailable. Try again shortly.'

    def __init__(self, detail=None, **kwargs):
        super().__init__(detail, **kwargs)
        self.retry_after(RETRY_AFTER_SECONDS)


class GatewayTimeout(ApiError):
    """The statement ran past its time limit (504)."""

    status = 504
    detail = 'The database statement timed out.'


# SQLSTATE (exact code or two-character class) -> (error class, detail or None for the server's own message), or
# None for a code of a mapped class that is a server fault all the same.
# Source of the codes: PostgreSQL's "Appendix A. PostgreSQL Error Codes".
# A connection that broke (or a server that shut down) while the request used it: what it had sent may have run.
CONNECTION_LOST = ('The database cannot be reached, or the connection to it broke. A request that writes may have '
                   'run: check before trying again.')
# CONNECTION_LOST's detail for an action run as one transaction whose connection broke before its COMMIT was sent.
TRANSACTION_LOST = ('The connection to the database broke before the transaction was committed: nothing it wrote was '
                    'committed. Try again.')
# What an action did that left its transaction failed: PostgreSQL refuses each statement after the one that failed
# (25P02) and answers the COMMIT with a ROLLBACK (lib/db/guard.py refuses that commit with the same words).
WENT_ON_AFTER_A_FAILURE = ('went on after a statement failed in its transaction, which PostgreSQL then rolls back '
                           'whole: nothing that transaction wrote was committed (an autocommit action\'s statements '
                           'outside it stay committed); to go on after an error, run the statement that may fail in a '
                           'savepoint (SAVEPOINT, then ROLLBACK TO SAVEPOINT when it fails), or let the error end the '
                           'action')
# SQLSTATE of a statement sent in a transaction after one of its statements failed.
IN_FAILED_SQL_TRANSACTION = '25P02'
SQLSTATE_ERRORS = {
    # a 500: the module's bug, said (trial BB)
    IN_FAILED_SQL_TRANSACTION: (ApiError, f'The action {WENT_ON_AFTER_A_FAILURE}.'),
    '23505': (Conflict, None),
    '23503': (Conflict, None),
    '23502': (Unprocessable, None),
    '23514': (Unprocessable, None),
    '23': (Conflict, None),  # 23P01 exclusion, 23001 restrict: the row conflicts with others
    '22': (Unprocessable, None),
    '2200H': None,  # a sequence at its limit: the server's own state, not the request's data (a generic 500)
    'P0001': (BadRequest, None),
    'P0002': (NotFound, None),  # PL/pgSQL's SELECT INTO STRICT found no row, or RAISE no_data_found
    '54': (Unprocessable, None),  # a value past a limit of the server's: "index row requires 9616 bytes", "stack
    # depth limit exceeded" (54001), "cannot pass more than 100 arguments" (54023), too many columns (54011)
    '53100': (ServiceUnavailable, 'The database is short of disk or memory. Try again shortly.'),
    '53200': (ServiceUnavailable, 'The database is short of disk or memory. Try again shortly.'),
    '21000': (Unprocessable, None),  # a row met twice ("ON CONFLICT DO UPDATE ... a second time"), a subquery's rows
    '44000': (Unprocessable, None),  # a row a view's WITH CHECK OPTION refuses, as a CHECK constraint would
    '25006': (ServiceUnavailable, 'The database accepts no writes now (a standby, or a read-only transaction). Try '
                                  'again shortly.'),
    '42501': (Forbidden, 'The database refused this operation.'),
    '57014': (GatewayTimeout, GatewayTimeout.detail),
    '40001': (ServiceUnavailable, 'The transaction kept conflicting with others. Try again.'),
    '40P01': (ServiceUnavailable, 'The transaction kept conflicting with others. Try again.'),
    '08': (ServiceUnavailable, CONNECTION_LOST),
    '53300': (ServiceUnavailable, ServiceUnavailable.detail),
    '57P01': (ServiceUnavailable, CONNECTION_LOST),
    '57P02': (ServiceUnavailable, CONNECTION_LOST),
    '57P03': (ServiceUnavailable, ServiceUnavailable.detail),
    '55P03': (ServiceUnavailable, 'The data is locked by another transaction. Try again shortly.'),  # lock_timeout
}
# The SQLSTATEs of a module's own RAISE EXCEPTION (P0001, and P0002 for `RAISE no_data_found`), whose message is
# the caller's: its `USING DETAIL` and `HINT` are the problem's `details` and `hint` members too (PostgREST's names).
# Other codes' DETAIL quotes rows and values the caller may not see ("Key (id)=(7) is still referenced").
RAISED_FOR_THE_CALLER = frozenset({'P0001', 'P0002'})
# Serialization failure and deadlock: a whole-transaction action is run again before the 503 above.
RETRYABLE_SQLSTATES = frozenset({'40001', '40P01'})

HTTP_DETAILS = {
    404: 'No action is mounted at this path.',
    405: 'This path does not accept this method.',
    413: 'The request body is too large.',
    415: UnsupportedMediaType.detail,
}

# Exception class -> function(exc) returning its ApiError, or None for "a server fault" (a generic 500).
# Looked up along the exception's class hierarchy, nearest class first.
ERROR_TRANSLATORS = {}


def translates(exception_class):
    """Register the decorated function as the translator of exception_class (and its subclasses) to an ApiError.

    The table is the process's, not a module's: a class has one translator, and the classes whose answers
    docs/contract.md section 3 fixes for every module (CONTRACT_ERRORS, their subclasses too) are translated by the
    framework's own code (lib/) alone. Anything else is a TypeError where the translator is declared."""
    def register(translate):
        if exception_class in (Exception, BaseException):
            raise TypeError(f'a translator of {exception_class.__name__} would answer every module\'s bugs: translate '
                            'your own exception classes')
        if exception_class in ERROR_TRANSLATORS:
            raise TypeError(f'{exception_class.__name__} has a translator already '
                            f'({ERROR_TRANSLATORS[exception_class].__qualname__}): a class has one, for every module')
        if issubclass(exception_class, CONTRACT_ERRORS) and not translate.__module__.startswith('lib.'):
            raise TypeError(f'{exception_class.__name__} is answered as docs/contract.md section 3 says, for every '
                            'module: catch it in the action and raise an ApiError of your own instead')
        ERROR_TRANSLATORS[exception_class] = translate
        return translate
    return register


# The errors whose answers the contract fixes (section 3): a module translating one, or a subclass (a psycopg2
# UniqueViolation), would change the answer of every module's.
CONTRACT_ERRORS = (ApiError, ValidationError, HTTPException, psycopg2.Error)


@translates(ApiError)
def from_api_error(exc):
    """An ApiError renders as itself."""
    return exc


@translates(ValidationError)
def from_validation_error(exc):
    """A marshmallow ValidationError is a 422 with its field map: marshmallow's normalized_messages, so one raised
    with a message alone ({"_schema": [...]}) or with a field_name keeps the shape."""
    return Unprocessable(errors=message_lists(exc.normalized_messages()))


def message_lists(messages):
    """Return marshmallow's messages with each message a module gave alone ({"a": "Too big."}) in a list, the field
    map's shape."""
    if isinstance(messages, dict):
        return {field: message_lists(value) for field, value in messages.items()}
    return messages if isinstance(messages, list) else [messages]


@translates(OverflowError)
@translates(ValueError)
def from_unreadable_field_value(exc):
    """An OverflowError or ValueError raised while a marshmallow field read a client's value is a 422 naming the
    field; raised anywhere else (an action's own code), a 500.

    Some stock fields let them through: TimeDelta and DateTime(format='timestamp') call float() on an
    integer past a float's range unguarded. The field's deserialize on the traceback tells where it was raised.
    """
    keys = [frame.f_locals.get('attr') for frame, _ in traceback.walk_tb(exc.__traceback__)
            if frame.f_code is fields.Field.deserialize.__code__]
    if not keys:
        return None
    errors = [f'Not a valid value: {exc}.']
    for key in reversed([key for key in keys if key is not None] or ['_schema']):
        errors = {key: errors}
    return Unprocessable(errors=errors)


# The order the methods of an Allow header are named in: werkzeug gathers them in a set, whose order changes from one
# process to the next; RFC 9110's order, then any other by name.
METHOD_ORDER = ('GET', 'HEAD', 'POST', 'PUT', 'DELETE', 'CONNECT', 'OPTIONS', 'TRACE', 'PATCH')


def method_order(method):
    """Return the sort key of a method in an Allow header."""
    return (METHOD_ORDER.index(method), '') if method in METHOD_ORDER else (len(METHOD_ORDER), method)


# The 404 of a path with a doubled slash, which may name an action it does not call (docs/contract.md, section 1).
DOUBLED_SLASH_DETAIL = 'The path has a doubled slash: paths are matched as sent, never merged. Actions are called ' \
                       'as POST /<module>/<action>.'


@translates(HTTPException)
def from_http_exception(exc):
    """Translate a werkzeug HTTPException into an ApiError. The router's own (request.routing_exception: a 404, a
    405) say what the path takes; one an action raised (flask.abort) keeps its own words, or says its status's
    phrase, since the path did match. A 405 always names what is allowed, a 401 the challenge (RFC 9110 15.5.6,
    RFC 6750 section 3)."""
    routed = has_request_context() and request.routing_exception is exc
    if exc.code == 405 and isinstance(exc.valid_methods, str):  # flask.abort(405, 'words') passes them as methods
        exc.description, exc.valid_methods = exc.valid_methods, None
    error = ApiError(http_exception_detail(exc, routed))
    error.status = exc.code
    for name, value in exc.get_headers():  # TooManyRequests' Retry-After, RequestedRangeNotSatisfiable's
        if name.lower() not in FRAMEWORK_HEADERS:  # Content-Range (RFC 9110 15.5.17), checked when answered
            error.headers[name] = value
    if exc.code == 404 and routed and 'dbapi' in current_app.extensions:
        gateway = current_app.extensions['dbapi']
        error.detail = (DOUBLED_SLASH_DETAIL if '//' in request.environ.get('PATH_INFO', '')  # request.path drops a
                        else not_found_detail(request.path, gateway.routes, gateway.caller()))  # leading one
    if exc.code == 405:
        allowed = ', '.join(sorted(exc.valid_methods or ['POST'], key=method_order))
        error.headers['Allow'] = allowed
        if routed or exc.description == type(exc).description:
            error.detail = f"Use {allowed}: this path does not accept this method."
    if exc.code == 401:
        error.headers['WWW-Authenticate'] = BEARER_CHALLENGE
    return error


def http_exception_detail(exc, routed):
    """Return the detail of a werkzeug HTTPException: the words it was raised with (flask.abort(404, 'No such
    order.')), else dbapi's own for the router's and the body reader's (HTTP_DETAILS), else its status's phrase."""
    if exc.description != type(exc).description:
        return exc.description
    if routed or exc.code in (413, 415):
        return HTTP_DETAILS.get(exc.code, exc.description)
    return f'{status_phrase(exc.code)}.'


def not_found_detail(path, routes, client):
    """Say what is mounted where path points, as far as client (an auth Client or None) may know: the module's
    actions to a client that may call it, that no such module exists to a known client, and nothing more to an
    unknown caller, so that the 404s answered before authorization list no actions to anyone (its statuses still tell
    a path that exists from one that does not: a 401 for the first; routing comes before authorization)."""
    module = path.strip('/').partition('/')[0]
    if client is None:
        return 'Nothing is mounted at this path for this caller. Actions are called as POST /<module>/<action> ' \
               'with a bearer token.'
    actions = sorted(f'/{route.module}/{route.name}' for route in routes if route.module == module)
    if actions and client.may_call(module):
        return f'Module {module!r} has no action at this path. Its actions (POST): {", ".join(actions)}.'
    if actions:
        return f'Client {client.name!r} may not call module {module!r}, and it has no action at this path.'
    if not module:
        return 'The path names no module. Actions are called as POST /<module>/<action>.'
    return f'No module {shown_briefly(module)!r} is mounted. Actions are called as POST /<module>/<action>.'


@translates(TooDeepToWrite)
def from_too_deep_to_write(exc):
    """An answer nesting deeper than orjson writes (a jsonb value stored so) is a 500 that says so."""
    return ApiError('The answer nests arrays and objects deeper than 254 levels, more than dbapi writes.')


@translates(KeysWrittenAlike)
def from_keys_written_alike(exc):
    """An answer with two keys written as one name ({1: 'a', '1': 'b'}) is a 500 that says so, never a value lost."""
    return ApiError('The answer holds an object with two keys written as one name (such as 1 and "1"), which would '
                    'lose one of their values.')


@translates(KeyWithoutName)
def from_key_without_name(exc):
    """An answer with a dict key that is a collection ({(1, 2): 3}) is a 500 that says so (trial BD: a bare 500)."""
    return ApiError('The answer holds an object with a key that is a collection (a tuple or a frozenset), which no '
                    'JSON name spells.')


@translates(psycopg2.Error)
def from_database_error(exc):
    """Translate a psycopg2 error by its SQLSTATE (exact code, then class), or None when it is a server fault."""
    code = exc.pgcode
    if isinstance(exc, psycopg2.InterfaceError) and isinstance(exc.__context__, ApiError):
        # "connection already closed" while an error that closed it was handled (a with-block's rollback after the
        # database stopped answering): that error is the answer.
        return exc.__context__
    if code is None:
        # No SQLSTATE: the connection broke or could not be made.
        lost = isinstance(exc, (psycopg2.OperationalError, psycopg2.InterfaceError))
        return ServiceUnavailable(CONNECTION_LOST) if lost else None
    mapped = SQLSTATE_ERRORS[code] if code in SQLSTATE_ERRORS else SQLSTATE_ERRORS.get(code[:2])
    if mapped is None:
        return None
    error_class, detail = mapped
    diag = exc.diag
    # PostgreSQL's names of what refused the value: a domain's constraint names no column, only the domain.
    members = {member: name for member, name in (('constraint', diag.constraint_name), ('datatype', diag.datatype_name))
               if name}
    if code in RAISED_FOR_THE_CALLER:
        members.update((member, shown_briefly(text, MAX_DATABASE_TEXT_SHOWN)) for member, text in (
            ('details', diag.message_detail), ('hint', diag.message_hint)) if text)
    detail = detail or shown_briefly(diag.message_primary, MAX_DATABASE_TEXT_SHOWN)
    return error_class(detail, errors=constraint_errors(exc), sqlstate=code, **members)


def lost_before_commit(exc):
    """Return the 503 of an action run as one transaction whose connection broke (CONNECTION_LOST) before dbapi sent
    its COMMIT, or None: PostgreSQL rolls back the transaction of a session that ends, so nothing it wrote was
    committed, where CONNECTION_LOST says a write may have run (trial BE)."""
    translated = from_database_error(exc) if isinstance(exc, psycopg2.Error) else None
    if isinstance(translated, ServiceUnavailable) and translated.detail == CONNECTION_LOST:
        return ServiceUnavailable(TRANSACTION_LOST, **({'sqlstate': exc.pgcode} if exc.pgcode else {}))
    return None


def database_unavailable(exc):
    """Tell whether a psycopg2 error is the database's state, answered 503 or 504 (a connection lost, a timeout, a
    server short of resources or shutting down: SQLSTATE_ERRORS), rather than a refusal of what a statement asked."""
    return isinstance(from_database_error(exc), (ServiceUnavailable, GatewayTimeout))


# What an integrity violation says of each column of its constraint, by SQLSTATE.
CONSTRAINT_WORDS = {'23505': 'already exists', '23503': 'must refer to an existing row (or is still referred to)',
                    '23514': 'fails the check {constraint}', '23502': 'must not be null',
                    '23P01': 'conflicts with an existing row ({constraint})'}
# The rest of class 23 (23001 restrict, 23000).
OTHER_CONSTRAINT_WORDS = 'violates {constraint}'
CONSTRAINT_COLUMNS_SQL = """
    SELECT a.attname FROM pg_constraint c JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = ANY (c.conkey)
     WHERE c.conrelid = %(table)s::regclass AND c.conname = %(name)s
    UNION ALL  -- a unique index that is no constraint
    SELECT a.attname FROM pg_index i JOIN pg_class x ON x.oid = i.indexrelid
      JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY (i.indkey)
     WHERE i.indrelid = %(table)s::regclass AND x.relname = %(name)s
       AND NOT EXISTS (SELECT FROM pg_constraint c WHERE c.conrelid = i.indrelid AND c.conname = %(name)s)
"""


def constraint_errors(exc):
    """Return the field map of an integrity violation, {column: [what is wrong]}, or None for other errors."""
    words = CONSTRAINT_WORDS.get(exc.pgcode) or (OTHER_CONSTRAINT_WORDS if exc.pgcode[:2] == '23' else None)
    if words is None:
        return None
    diag = exc.diag
    columns = [diag.column_name] if diag.column_name else constraint_columns(exc)
    message = words.format(constraint=diag.constraint_name)
    return {column: [message] for column in columns} or None


def constraint_columns(exc):
    """Return the columns of the violated constraint, read from the catalog (pg_constraint.conkey), never the message."""
    diag = exc.diag
    pool = pool_of(exc.cursor.connection if exc.cursor is not None else None) if has_request_context() else None
    if pool is None or not (diag.constraint_name and diag.table_name):
        return []
    from lib.db.unit import connection  # lib.db imports this module
    table = f'{quote_identifier(diag.schema_name or "public")}.{quote_identifier(diag.table_name)}'
    try:
        with connection(pool, autocommit=True, deadline=time.monotonic() + CATALOG_WAIT_SECONDS) as conn, \
                conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
            cursor.execute(CONSTRAINT_COLUMNS_SQL, {'table': table, 'name': diag.constraint_name})
            return [column for column, in cursor.fetchall()]
    except Exception:  # the detail is a courtesy: without a free connection the answer goes out without it
        return []


# The failed request's own connection went back to its pool; another may have it now: borrow one (or connect),
# briefly.
CATALOG_WAIT_SECONDS = 0.5


def pool_of(conn):
    """Return the app's pool of the database conn is connected to, or None. Without conn (an error raised by a
    commit, a deferred constraint's, has no cursor), the app's one pool, or None when it has several."""
    pools = current_app.extensions['dbapi'].pools.values() if 'dbapi' in current_app.extensions else []
    matching = [pool for pool in pools
                if conn is None or psycopg2.extensions.parse_dsn(pool.dsn).get('dbname') == conn.info.dbname]
    return matching[0] if len(matching) == 1 else None


def quote_identifier(name):
    """Quote an identifier as PostgreSQL's quote_ident always may, for a regclass literal."""
    return '"' + name.replace('"', '""') + '"'


def as_api_error(exc):
    """Return the ApiError that exc stands for, by the nearest registered translator; otherwise a generic 500."""
    for kind in type(exc).__mro__:
        translate = ERROR_TRANSLATORS.get(kind)
        if translate is not None:
            translated = translate(exc)
            if translated is not None and not isinstance(translated, ApiError):
                raise TypeError(f'returned {type(translated).__name__}, not an ApiError or None')
            return translated or ApiError()
    return ApiError()


def problem_body(error, request_id):
    """Build the RFC 9457 problem document for error."""
    body = {'type': 'about:blank', 'title': error.title or status_phrase(error.status),
            'status': error.status, 'detail': error.detail}
    if error.errors is not None:
        body['errors'] = error.errors
    body.update(error.members)
    body['request_id'] = request_id
    return body


def problem_fault(error):
    """Return why error cannot be answered as it says (a module's bug: a status that is no error's, a member JSON
    cannot write), or None."""
    if not isinstance(error.status, int) or not 400 <= error.status <= 599:
        return f'its status {error.status!r} is no error status (400-599)'
    if error.errors is not None and (fault := field_map_fault(error.errors)):  # set after it was made
        return f'its errors are no field map ({fault})'
    try:
        if error.members:
            dumps_bytes(error.members)
    except (TypeError, ValueError) as exc:
        return f'a member JSON cannot write ({exc})'
    if fault := header_fault(error.headers):  # changed after it was made, or a werkzeug exception's (trial BW)
        return f'it takes no header {fault}'
    return None


def handle_error(exc):
    """Render any exception raised while serving a request as problem+json; an error that cannot be answered as it
    says is a 500 whose log line says why."""
    try:
        error = as_api_error(exc)
        fault = problem_fault(error)
    except Exception as translator_fault:  # a module's translator that raised, or returned something else
        error, fault = ApiError(), f'its error translator failed ({translator_fault!r})'
    if fault is not None:
        cause, exc, error = exc, TypeError(f'{type(exc).__name__}: {fault}'), ApiError()
        exc.__cause__ = cause
    # The access line logs it, with the stack trace of a 5xx, under the same request id.
    remember(ERROR_KEY, (exc, error))
    body = problem_body(error, current_request_id())
    response = json_response(body, error.status, PROBLEM_JSON)
    # A detail PostgreSQL wrote can quote what the caller sent, a token among it: the log's redactor cleans it.
    gateway = current_app.extensions.get('dbapi')
    if gateway is not None:
        response.set_data(gateway.redact(response.get_data(as_text=True)))
    response.headers.update(error.headers)
    return response
