"""The one JSON body parser of module actions: numbers exact, no NUL character anywhere, read within the deadline."""
import codecs
import socket
import time
from email.message import Message
from email.utils import collapse_rfc2231_value

import gevent
from flask import Request, current_app, request
from gevent.monkey import is_module_patched
from gunicorn.http.errors import LimitRequestHeaders, ParseException
from werkzeug.exceptions import RequestEntityTooLarge

from lib.errors import BadRequest, RequestTimeout, Unprocessable, UnsupportedMediaType, shown_briefly
from lib.http.disconnect import WATCHER
from lib.http.exchange import BODY_TIMED_OUT_KEY, CLIENT_SOCKET_KEY, CUT_KEY, deadline_of, sent_text
from lib.jsonenc import JSON_MIMETYPE, BodyPastLimit, loads_exact

# JSON can hold a NUL only escaped; PostgreSQL's text cannot hold one at all.
ESCAPED_NUL = b'\\u0000'
NUL_IN_VALUE = 'Must not contain the NUL character (\\u0000).'
NUL_IN_KEY = 'Keys must not contain the NUL character (\\u0000).'


class BodyCutShort(BadRequest):
    """The body ended before all it announced arrived: fewer bytes than its Content-Length, or a chunked body without
    its last chunk (400). The client went away, or half-closed its connection, while it sent the body."""

    detail = ('The request body ended before all of it arrived: fewer bytes than its Content-Length, or a chunked '
              'body without its last chunk.')


def read_body(environ):
    """Return the raw body, refusing one over MAX_CONTENT_LENGTH with 413 and one still arriving at the request's
    deadline (REQUEST_DEADLINE_MS) with 408."""
    refuse_transfer_coding(environ.get('HTTP_TRANSFER_ENCODING'))
    config = current_app.config
    limit = config['MAX_CONTENT_LENGTH']
    deadline = deadline_of(environ, config['REQUEST_DEADLINE_MS'])
    length = environ.get('CONTENT_LENGTH', '')
    if length.isdigit():
        declared = int(length)
        if declared > limit:
            raise RequestEntityTooLarge()
        data = read_stream(environ, declared, deadline)
        if len(data) < declared:
            raise BodyCutShort()
        return data
    if not environ.get('wsgi.input_terminated'):
        return b''  # no length and a stream with no end of its own: nothing can be read safely
    # A chunked body, whose stream the server ends where the body ends: a byte past the limit is too much.
    data = read_stream(environ, limit + 1, deadline)
    if len(data) > limit:
        raise RequestEntityTooLarge()
    return data


def read_stream(environ, size, deadline):
    """Read up to size bytes of the body, before deadline (a time.monotonic() value, or None) or a 408; a client
    that went away before sending them is a 400, not a server error."""
    client_socket = environ.get(CLIENT_SOCKET_KEY)
    try:
        if client_socket is None or deadline is None:
            return environ['wsgi.input'].read(size)
        return read_before(environ, size, client_socket, deadline)
    except socket.timeout:
        raise RequestTimeout() from None
    except OSError:  # gunicorn's NoMoreData and socket errors alike
        raise BodyCutShort() from None
    except LimitRequestHeaders:  # a chunked body's trailer section past gunicorn's bound on a head (gunicorn.conf.py)
        raise BadRequest("The chunked request body's trailer section is too large.") from None
    except ParseException:  # gunicorn reads a chunked body as it comes: a bad chunk size, extension or trailer
        raise BadRequest('The chunked request body is malformed.') from None


def read_before(environ, size, client_socket, deadline):
    """Read up to size bytes of the body, raising socket.timeout at deadline, as nginx's client_body_timeout does in
    front: a client that sends its body slowly cannot hold a worker's slot (MAX_REQUESTS_IN_FLIGHT) for longer.
    Under gevent a timeout bounds the whole read; with threads, the socket's timeout each wait, and the disconnect
    watcher the whole read (it shuts the socket's reading side down at deadline: BODY_TIMED_OUT_KEY)."""
    stream, left = environ['wsgi.input'], max(deadline - time.monotonic(), 0.001)
    if is_module_patched('socket'):
        with gevent.Timeout(left, socket.timeout):
            return stream.read(size)
    before = client_socket.gettimeout()
    client_socket.settimeout(left)
    watch = WATCHER.watch(environ, None, deadline, reading=True)
    try:
        data = stream.read(size)
    except (OSError, ParseException):  # the read ended at the watcher's shutdown (a trailer cut short), or the client's
        raise_if_watcher_ended(environ)
        raise
    finally:
        WATCHER.forget(watch)
        client_socket.settimeout(before)
    raise_if_watcher_ended(environ)  # the read came back short at the watcher's shutdown
    return data


def raise_if_watcher_ended(environ):
    """Raise socket.timeout when the disconnect watcher ended the body's read at the deadline, and the stopping
    worker's error (ServerStopping) when it cut the request short."""
    if environ.get(BODY_TIMED_OUT_KEY):
        raise socket.timeout()
    if CUT_KEY in environ:
        raise environ[CUT_KEY]


def header_parameters(value):
    """Return [(media type, ''), (name, value)...] of a Content-Type value as the standard library's email package
    reads it: names in lower case, quoted values unquoted (a `;` inside quotes is part of the value), every one kept."""
    header = Message()
    header['Content-Type'] = value
    return header.get_params()


def refuse_unless_json(content_type):
    """Raise 415 unless the Content-Type header is application/json, with no charset or charset=utf-8: JSON
    exchanged between systems is UTF-8 (RFC 8259 section 8.1), so a body declared in another charset is refused
    rather than read as what it says it is not."""
    if content_type == JSON_MIMETYPE:
        return
    (media_type, _), *parameters = header_parameters(content_type)
    if media_type.strip().lower() != JSON_MIMETYPE:
        raise UnsupportedMediaType()
    for name, value in parameters:
        charset = collapse_rfc2231_value(value)  # RFC 2231's charset*=utf-8''utf-8 comes as a tuple
        if name == 'charset' and charset.lower() not in ('utf-8', 'utf8'):
            raise UnsupportedMediaType('JSON bodies are UTF-8 (RFC 8259 section 8.1); '
                                       f'charset={shown_briefly(sent_text(charset))} is not accepted.')


def refuse_content_coding(content_encoding):
    """Raise 415 for a body sent compressed (any Content-Encoding but identity): dbapi reads bodies as sent, and
    RFC 9110 section 15.5.16 has the 415 say, in Accept-Encoding, which codings a request may use."""
    coding = content_encoding.strip()
    if coding and coding.lower() != 'identity':
        raise UnsupportedMediaType(f'Content-Encoding {shown_briefly(sent_text(coding))} is not accepted: send the '
                                   'body uncompressed.', headers={'Accept-Encoding': 'identity'})


def refuse_transfer_coding(transfer_encoding):
    """Raise 400 for a Transfer-Encoding other than chunked alone (None: no header): the server takes the chunks
    off, and nothing would undo another coding (gzip), so the body would be read as something it is not. nginx in
    front answers the same 400."""
    if transfer_encoding is not None and transfer_encoding.strip().lower() != 'chunked':
        shown = shown_briefly(sent_text(transfer_encoding.strip()))
        raise BadRequest(f'Transfer-Encoding {shown} is not accepted: send the body with a Content-Length, or chunked '
                         'alone.')


class BodyReadAlready:
    """The request's wsgi.input once dbapi has read the body: a read (flask's request.get_json(), request.data) is a
    RuntimeError that says where the body went, a 500, where it got an empty stream and answered the caller 400 "Bad
    Request." for a valid body (trial BU)."""

    def read(self, *args):
        raise RuntimeError('dbapi has read the request body already: an action gets it as its arguments, validated '
                           '(use_schema, or its keyword parameters), not from flask.request')

    readline = readlines = read


BODY_READ_ALREADY = BodyReadAlready()


class BodyOnlyRequest(Request):
    """flask's Request, whose query string plays no part (docs/contract.md section 1): request.args, and
    request.values that holds it, is a RuntimeError that says so, a 500, where an action read arguments no schema
    validated from the query string (trial BY)."""

    @property
    def args(self):
        """Refuse: the body alone carries an action's arguments."""
        raise RuntimeError('the query string plays no part in a call (docs/contract.md section 1): an action gets '
                           'its arguments from the body, validated, not from flask.request.args')


def read_json_body():
    """Parse the request body once: empty means {}, anything but JSON is refused; a later read of wsgi.input is
    BodyReadAlready's error."""
    environ = request.environ
    data = read_body(environ)
    environ['wsgi.input'] = BODY_READ_ALREADY
    # Any byte in a body of another type is a 415, whitespace too: only an empty body needs no content type.
    refuse_content_coding(environ.get('HTTP_CONTENT_ENCODING', ''))
    if not data:
        return {}
    refuse_unless_json(environ.get('CONTENT_TYPE', ''))
    try:
        body = loads_exact(data)
    except BodyPastLimit as exc:  # JSON, but nested too deep or with too long a number
        raise BadRequest(str(exc)) from None
    except ValueError:  # orjson's and the json module's decode errors, and invalid UTF-8
        raise BadRequest(not_json_detail(data)) from None
    if ESCAPED_NUL in data:
        refuse_nul_characters(body)
    return body


def not_json_detail(data):
    """Return the detail of a body (bytes) that is not JSON, saying so when its encoding is why: JSON text is UTF-8
    without a byte order mark (RFC 8259 section 8.1)."""
    if data.startswith(codecs.BOM_UTF8):
        return 'The request body is not valid JSON: it starts with a byte order mark (RFC 8259 section 8.1).'
    try:
        data.decode()
    except UnicodeDecodeError as exc:
        return f'The request body is not valid JSON: it is not UTF-8 (byte {exc.start}; RFC 8259 section 8.1).'
    return 'The request body is not valid JSON.'


def nul_errors(value):
    """Return the field map of every NUL character in a parsed body, as marshmallow nests its errors; {} for none."""
    if isinstance(value, str):
        return [NUL_IN_VALUE] if '\x00' in value else {}
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    errors = {}
    for key, item in items:
        found = nul_errors(item)
        if isinstance(key, str) and '\x00' in key:
            found = [NUL_IN_KEY]
        if found:
            errors[key] = found
    return errors


def refuse_nul_characters(body):
    """Refuse with 422 a body holding a NUL character in a value or a key, however deep, naming where."""
    errors = nul_errors(body)
    if errors:
        raise Unprocessable(errors=errors if isinstance(errors, dict) else {'_schema': errors})
