"""gunicorn's own error answers, for requests it cannot parse before the app sees them, are problem+json too."""
import json
import re
import socket
import time

import pytest

from lib.errors import status_phrase
from tests.helpers import ADMIN_TOKEN, gunicorn_logging_to, running_gunicorn

pytestmark = pytest.mark.slow

UNPARSABLE = {
    'a bare CR in a header value': (b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nX-Odd: a\rb\r\n\r\n', 400),
    'a request line past its limit': (b'GET /' + b'a' * 9000 + b' HTTP/1.1\r\nHost: x\r\n\r\n', 414),
    'a malformed request line': (b'NOT A REQUEST\r\n\r\n', 400),
    # gunicorn's 501: the client's mistake, a 400 as nginx answers it
    'an unknown transfer coding': (b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br\r\n\r\n', 400),
}


def raw_exchange(port, request):
    """Send raw bytes to the server and return every byte it sends until it closes the connection."""
    with socket.create_connection(('127.0.0.1', port), timeout=10) as sock:
        sock.sendall(request)
        data = b''
        while chunk := sock.recv(65536):
            data += chunk
    return data


def raw_answer(port, request):
    """Send raw bytes to the server and return (status, headers, body) of its answer."""
    head, _, body = raw_exchange(port, request).partition(b'\r\n\r\n')
    lines = head.decode('latin-1').split('\r\n')
    headers = dict(line.split(': ', 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_requests_gunicorn_cannot_parse_get_problem_details(database_url, worker_class):
    with running_gunicorn(database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1') as port:
        for case, (request, expected) in UNPARSABLE.items():
            status, headers, body = raw_answer(port, request)
            assert status == expected, case
            assert headers['Content-Type'] == 'application/problem+json', case
            problem = json.loads(body)
            assert problem['status'] == expected and problem['request_id'] == headers['X-Request-ID'], case
            assert problem['title'] == status_phrase(expected), case  # the app's titles
            assert int(headers['Content-Length']) == len(body), case
            assert headers['Vary'] == 'Accept-Encoding', case  # as on every answer (contract section 4)


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
@pytest.mark.parametrize('headers_sent', [b'X-Big: ' + b'a' * 17000 + b'\r\n', b'X-A: a\r\n' * 101],
                         ids=['one too large', 'too many'])
def test_a_header_over_gunicorns_limit_is_a_431_problem(database_url, worker_class, headers_sent):
    request = b'POST /probe/echo HTTP/1.1\r\nHost: x\r\n' + headers_sent + b'\r\n'
    with running_gunicorn(database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1') as port:
        status, headers, body = raw_answer(port, request)
    assert status == 431 and headers['Content-Type'] == 'application/problem+json'
    assert json.loads(body)['request_id'] == headers['X-Request-ID']
    assert json.loads(body)['detail'] == 'The request has a header too large, or too many headers.'


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_each_request_gunicorn_refuses_has_an_access_line_with_its_request_id(database_url, tmp_path, worker_class):
    answered = {}
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1',
                             LOG_LEVEL='INFO') as (port, _):
        for request, expected in UNPARSABLE.values():
            status, headers, body = raw_answer(port, request)
            answered[headers['X-Request-ID']] = (status, len(body))
    lines = [json.loads(text) for text in (tmp_path / 'stdout').read_text().splitlines() if text.startswith('{')]
    logged = {line['http']['request']['id']: line for line in lines
              if line.get('log', {}).get('logger') == 'dbapi.access' and 'request' in line.get('http', {})}
    for request_id, (status, body_bytes) in answered.items():
        line = logged[request_id]
        assert line['http']['response'] == {'status_code': status, 'body': {'bytes': body_bytes}}, line
        assert line['message'] == f'- - {status}' and line['client']['ip'] == '127.0.0.1', line
        assert line['event'] == {'dataset': 'dbapi.access', 'outcome': 'success'}, line
    # gunicorn's own line saying why it refused the request carries the id of the answer too
    reasons = [line for line in lines
               if line['log']['logger'] == 'gunicorn.error' and 'Invalid request' in line['message']]
    assert sorted(line['http']['request']['id'] for line in reasons) == sorted(answered), reasons


@pytest.mark.parametrize('request_text', [
    b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nAuthorization Bearer %s\r\n\r\n',  # no colon
    b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nAuthorization=Bearer %s\r\n\r\n',
    b'POST /probe/echo?token=%s HTTP/1.1 x\r\nHost: x\r\n\r\n',  # a malformed request line
    b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nX-Token: %s\rx\r\n\r\n',  # a bare CR
])
def test_gunicorns_line_on_a_request_it_refuses_quotes_nothing_the_client_sent(database_url, tmp_path, request_text):
    """gunicorn's "Invalid request" warning quoted the header line: a token configured by its sha256 alone, which the
    redactor cannot know, was logged whole when its Authorization header was malformed."""
    token = 'unknown-to-the-redactor-3f9a'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1') as (port, _):
        status, headers, _ = raw_answer(port, request_text % token.encode())
    assert status == 400 and headers['Content-Type'] == 'application/problem+json'
    text = (tmp_path / 'stdout').read_text()
    assert token not in text
    reasons = [line for line in map(json.loads, text.splitlines()) if 'Invalid request' in line['message']]
    assert len(reasons) == 1 and 'left out of the log: it may hold a credential' in reasons[0]['message'], reasons


@pytest.mark.parametrize('header, said', [
    (b'Content-Type: application/json; charset=\xc3\xbctf-8', 'charset=\u00fctf-8 is not accepted'),
    (b'Content-Encoding: gz\xc3\xafp', 'Content-Encoding gz\u00efp is not accepted'),
    (b'Content-Encoding: gz\xefp', 'Content-Encoding gz\ufffdp is not accepted')])  # no UTF-8: U+FFFD
def test_a_header_the_client_sent_in_utf8_is_quoted_and_logged_as_its_text(database_url, tmp_path, header, said):
    """WSGI keeps each byte of a header as a latin-1 character: `charset=\u00fctf-8` was quoted as
    `charset=\u00c3\u00bctf-8`, a User-Agent logged so too (trial BQ)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='1') as (port, _):
        status, _, body = raw_answer(port, b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer '
                                     + ADMIN_TOKEN.encode() + b'\r\nUser-Agent: h\xc3\xa9llo\r\nX-Request-ID: utf-8-sent'
                                     b'\r\nConnection: close\r\n' + header + b'\r\nContent-Length: 2\r\n\r\n{}')
    assert status == 415 and said in json.loads(body)['detail'], body
    lines = [json.loads(text) for text in (tmp_path / 'stdout').read_text().splitlines() if text.startswith('{')]
    logged = [line for line in lines if line.get('http', {}).get('request', {}).get('id') == 'utf-8-sent'
              and line['log']['logger'] == 'dbapi.access']
    assert [line['user_agent']['original'] for line in logged] == ['h\u00e9llo'], logged


@pytest.mark.parametrize('version, status', [(b'HTTP/1.1', 400), (b'HTTP/1.0', 200)])
def test_an_http_1_1_request_without_a_host_header_is_a_400_problem(database_url, version, status):
    """RFC 9112 section 3.2: a server MUST; nginx did, a replica met directly answered 200 (trial BQ)."""
    with running_gunicorn(database_url, WEB_CONCURRENCY='1') as port:
        answered, headers, body = raw_answer(port, b'POST /probe/echo ' + version + b'\r\nAuthorization: Bearer '
                                             + ADMIN_TOKEN.encode() + b'\r\nContent-Type: application/json\r\n'
                                             b'Connection: close\r\nContent-Length: 2\r\n\r\n{}')
    assert answered == status, body
    if status == 400:
        assert headers['Content-Type'] == 'application/problem+json'
        assert json.loads(body)['detail'] == 'An HTTP/1.1 request carries a Host header (RFC 9112 section 3.2).'


CHUNKED_HEAD = (b'POST /probe/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n'
                b'Authorization: Bearer ' + ADMIN_TOKEN.encode() + b'\r\n\r\n')
MALFORMED_CHUNKS = {'a chunk size that is not hex': b'zz\r\n{}\r\n0\r\n\r\n',
                    'a negative chunk size': b'-8\r\n{}\r\n0\r\n\r\n',
                    'no CRLF after the chunk data': b'2\r\n{}XX0\r\n\r\n',
                    'a bare CR in a chunk extension': b'2;a=\rb\r\n{}\r\n0\r\n\r\n'}


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread'])
def test_a_malformed_chunked_body_is_a_400_problem_not_a_500(database_url, worker_class):
    """gunicorn parses a chunked body while the app reads it, so its parse errors reach the body reader."""
    with running_gunicorn(database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1') as port:
        for case, chunks in MALFORMED_CHUNKS.items():
            status, headers, body = raw_answer(port, CHUNKED_HEAD + chunks)
            assert status == 400 and headers['Content-Type'] == 'application/problem+json', (case, status, body)
            assert json.loads(body)['detail'] == 'The chunked request body is malformed.', case
        status, _, body = raw_answer(port, CHUNKED_HEAD + b'2\r\n{}\r\n0\r\n\r\n')
        assert status == 200 and json.loads(body) == {}  # a well-formed one is read


def send_ignoring_a_close(port, request):
    """Send request on a new connection and return what the server sends until it closes it; it may close it (and
    reset it) before the request was all sent, when it refuses what it read so far: then what came before the reset."""
    answer = b''
    with socket.create_connection(('127.0.0.1', port), timeout=30) as sock:
        try:
            sock.sendall(request)
            while chunk := sock.recv(65536):
                answer += chunk
        except OSError:
            pass
    return answer


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread'])
def test_a_trailer_section_past_gunicorns_bound_on_a_head_is_a_400(database_url, tmp_path, worker_class):
    """gunicorn scans a trailer section anew at each read until it ends or passes its bound on a head: under
    10000 headers of 16384 bytes, 8 MB of trailers took a worker 4.6 s of CPU and 27 MB its life (trial AV), and 2 MB
    that ended were read to the end and taken (a 200)."""
    trailers = b'X-Long: ' + b'a' * 2_000_000 + b'\r\n\r\n'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1',
                             LOG_LEVEL='INFO') as (port, _):
        first = send_ignoring_a_close(port, CHUNKED_HEAD + b'2\r\n{}\r\n0\r\n' + trailers)
        status, _, body = raw_answer(port, CHUNKED_HEAD + b'2\r\n{}\r\n0\r\nX-Short: a\r\n\r\n')
        assert status == 200 and json.loads(body) == {}  # trailers within the bound are read as before
    lines = [json.loads(text) for text in (tmp_path / 'stdout').read_text().splitlines() if text.startswith('{')]
    statuses = [line['http']['response']['status_code'] for line in lines
                if line.get('log', {}).get('logger') == 'dbapi.access' and line['url']['path'] == '/probe/echo']
    assert statuses == [400, 200], first
    assert not first or b"trailer section is too large." in first  # unless the close reset the answer


@pytest.mark.parametrize('trailers', [b'X-T: a\r\n' * 101, b'X-T: ' + b'a' * 9000 + b'\r\n'],
                         ids=['more fields than 100', 'a field over 8190 bytes'])
def test_a_trailer_section_past_gunicorns_other_bounds_on_a_head_is_a_400(database_url, trailers):
    """docs/contract.md: more than 100 fields, or one over 8190 bytes, as a head's headers."""
    with running_gunicorn(database_url, WORKER_CLASS='gevent', WEB_CONCURRENCY='1') as port:
        status, _, body = raw_answer(port, CHUNKED_HEAD + b'2\r\n{}\r\n0\r\n' + trailers + b'\r\n')
    assert status == 400 and json.loads(body)['detail'] == "The chunked request body's trailer section is too large."


# Chunked bodies a replica reads as their bytes come, waiting for bytes the client never sends.
WAITING_CHUNKS = {'a chunk that announces more than MAX_CONTENT_LENGTH': b'200000\r\n{}',
                  'a chunk line ended by a bare LF': b'2\r\n{}\r\n0\n\n'}


@pytest.mark.parametrize('chunks', WAITING_CHUNKS.values(), ids=WAITING_CHUNKS)
def test_a_chunked_body_waiting_for_bytes_never_sent_is_a_408_at_the_deadline(database_url, chunks):
    """As docs/contract.md says: gunicorn reads a chunk's bytes as they come, and a chunk line to its CRLF."""
    with running_gunicorn(database_url, WORKER_CLASS='gevent', WEB_CONCURRENCY='1', REQUEST_DEADLINE_MS='2000') as port:
        started = time.monotonic()
        status, headers, body = raw_answer(port, CHUNKED_HEAD + chunks)
    assert status == 408 and headers['Content-Type'] == 'application/problem+json'
    assert 1.9 < time.monotonic() - started < 10


def test_a_transfer_coding_besides_chunked_is_a_400_problem_not_a_body_misread(database_url):
    """gunicorn takes the chunks off and leaves the gzip on: the body would be read as what it is not."""
    gzipped = CHUNKED_HEAD.replace(b'Transfer-Encoding: chunked', b'Transfer-Encoding: gzip, chunked')
    with running_gunicorn(database_url, WEB_CONCURRENCY='1') as port:
        status, headers, body = raw_answer(port, gzipped + b'2\r\n{}\r\n0\r\n\r\n')
    assert status == 400 and headers['Content-Type'] == 'application/problem+json'
    assert json.loads(body)['detail'] == ('Transfer-Encoding gzip, chunked is not accepted: send the body with a '
                                          'Content-Length, or chunked alone.')


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_an_http_version_past_1_1_is_a_400_problem_as_nginx_answers_it(database_url, worker_class):
    """gunicorn parses HTTP/1.2 to HTTP/1.9 and passed them on: a 200 in `HTTP/1.2` (trial X), then the app's 400 in
    `HTTP/1.2`, its connection kept alive for a next request (trial AR); nginx answers 400."""
    with running_gunicorn(database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1') as port:
        for request_line in (b'POST /probe/echo HTTP/1.2', b'GET /healthz HTTP/1.9'):
            answer = raw_exchange(port, request_line + b'\r\nHost: x\r\nAuthorization: Bearer ' + ADMIN_TOKEN.encode()
                                  + b'\r\nContent-Length: 2\r\n\r\n{}GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
            assert re.findall(rb'(?m)^HTTP/[0-9.]+ [0-9]{3} ', answer) == [b'HTTP/1.1 400 '], (request_line, answer)
            status, headers, body = raw_answer(port, request_line + b'\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}')
            assert status == 400 and headers['Content-Type'] == 'application/problem+json', (request_line, body)
            assert json.loads(body)['detail'] == 'dbapi speaks HTTP/1.0 and HTTP/1.1 only.'
        # versions gunicorn does not parse: its 400, which said "The request is malformed." (trials AO, AR)
        for head in (b'GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n', b'GET /healthz HTTP/1.10\r\nHost: x\r\n\r\n',
                     b'GET /healthz http/1.1\r\nHost: x\r\n\r\n', b'GET /healthz\r\n',
                     b'PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n'):
            status, _, body = raw_answer(port, head)
            assert status == 400 and json.loads(body)['detail'] == 'dbapi speaks HTTP/1.0 and HTTP/1.1 only.', head
        for head in (b'GET  /healthz HTTP/1.1\r\n\r\n', b'GET /a b HTTP/1.1\r\nHost: x\r\n\r\n',
                     b'GET HTTP/1.1\r\nHost: x\r\n\r\n', b'/healthz HTTP/1.1\r\nHost: x\r\n\r\n',
                     b'hello world\r\n\r\n', b'GET /healthz HTTP/1.1 x\r\nHost: x\r\n\r\n'):
            # request lines malformed otherwise, some of them only ending in words that look like one (trial AU)
            status, _, body = raw_answer(port, head)
            assert status == 400 and json.loads(body)['detail'] == 'The request is malformed.', head
        assert raw_answer(port, b'GET /healthz HTTP/1.0\r\n\r\n')[0] == 200


# Chunked bodies that do not end as RFC 9112 says, each followed by a request that must get no answer of its own.
UNREAD_MALFORMED_CHUNKS = {'a chunk size that is not hex': b'zz\r\nhello\r\n0\r\n\r\n',
                           'a trailer that is no field': b'5\r\nhello\r\n0\r\nbad trailer\r\n\r\n',
                           'a control byte in a trailer': b'5\r\nhello\r\n0\r\nX-T: a\x01b\r\n\r\n',
                           'a trailer past the header limit': b'0\r\nX-T: ' + b'a' * 20000 + b'\r\n\r\n'}


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_a_malformed_chunked_body_left_unread_gets_no_second_answer(database_url, worker_class):
    """Answered without its body read (a 401), the request's malformed chunks (trial AO) or trailers (trial AR), which
    gunicorn read to drop them, got a second answer, a 400 or 431 the client took for its next request's: the
    connection is closed instead."""
    request = CHUNKED_HEAD.replace(b'Authorization: Bearer ' + ADMIN_TOKEN.encode(), b'Authorization: Bearer nope')
    assert request != CHUNKED_HEAD
    with running_gunicorn(database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1') as port:
        for case, chunks in UNREAD_MALFORMED_CHUNKS.items():
            data = raw_exchange(port, request + chunks + b'GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n')
            assert data.startswith(b'HTTP/1.1 401 ') and data.count(b'HTTP/1.1 ') == 1, (case, data)
        # A well-formed one keeps the connection alive.
        data = raw_exchange(port, request + b'5\r\nhello\r\n0\r\nX-T: y\r\n\r\nGET /healthz HTTP/1.1\r\nHost: x\r\n'
                            b'Connection: close\r\n\r\n')
    expected = [b'HTTP/1.1 401 ', b'HTTP/1.1 200 '] if worker_class != 'sync' else [b'HTTP/1.1 401 ']
    assert re.findall(rb'HTTP/1\.1 [0-9]{3} ', data) == expected, data


def test_a_malformed_chunked_body_is_a_400_problem_under_sync_workers_too(database_url):
    with running_gunicorn(database_url, WORKER_CLASS='sync', WEB_CONCURRENCY='1') as port:
        for case, chunks in MALFORMED_CHUNKS.items():
            status, headers, body = raw_answer(port, CHUNKED_HEAD + chunks)
            assert status == 400 and json.loads(body)['detail'] == 'The chunked request body is malformed.', case


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread'])
def test_a_body_left_unread_that_never_ends_closes_its_connection_within_keepalive(database_url, worker_class):
    """The answer (a 401) goes out at once; the rest of the body, never sent, is waited for 5 s (gunicorn's
    keepalive)."""
    request = CHUNKED_HEAD.replace(b'Authorization: Bearer ' + ADMIN_TOKEN.encode(), b'Authorization: Bearer nope')
    with running_gunicorn(database_url, WORKER_CLASS=worker_class, WEB_CONCURRENCY='1') as port:
        with socket.create_connection(('127.0.0.1', port), timeout=15) as sock:
            sock.sendall(request + b'5\r\nhello\r\n')
            first = sock.recv(65536)
            answered = time.monotonic()
            rest = b''
            while chunk := sock.recv(65536):
                rest += chunk
            waited = time.monotonic() - answered
    assert first.startswith(b'HTTP/1.1 401 ') and (first + rest).count(b'HTTP/1.1 ') == 1, (first, rest)
    assert 3 < waited < 10, waited
