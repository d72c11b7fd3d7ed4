"""ECS JSON logging: the fields of every line, one access line per request, request ids, no secrets, gunicorn,
the ECS version, libraries' extras under labels, long lines split for stdout, lines filebeat cannot decode."""
import contextlib
import hashlib
import io
import itertools
import json
import logging
import os
import random
import re
import select
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import quote
from types import SimpleNamespace

import psycopg2
import pytest
from flask import Flask, Response
from gunicorn.app.base import BaseApplication
from psycopg2.extensions import make_dsn

import settings
from lib.auth import load_clients
from lib.errors import StartupError, print_startup_error
from lib.logs import (KIND_WORDS, AccessLog, check_secrets_spare_every_line, configure_process_logging,
                      install_access_log, settings_config)
from lib.logs.access import Exchange
from lib.logs.formatter import ECS_VERSION, EcsFormatter, ServiceFields, encode_line, service_fields, split_line
from lib.logs.handlers import LineStreamHandler, PipeStreamHandler
from lib.logs.secrets import (REDACTED, STEALABLE, Redactor, configured_secrets, escapes_read,
                              percent_spelling_expression, spelling_clue, stealable_length)
from lib.process import write_line
from lib.http.requestid import REQUEST_ID_KEY
from lib.logs.formatter import dotted as flat  # nested fields by dotted name
from manage import gunicorn_command
from tests.helpers import (ADMIN_TOKEN, AUTH, BEARER_TOKENS, SCOPED_TOKEN, SINGLE_BEARER, gunicorn_logging_to,
                           http_request, server_environment)

REQUIRED_FIELDS = ('@timestamp', 'log.level', 'message', 'ecs.version', 'service.name', 'service.environment',
                   'service.node.name', 'process.pid', 'log.logger', 'labels.elk_index')
ACCESS_FIELDS = ('http.request.method', 'url.path', 'http.response.status_code', 'http.response.body.bytes',
                 'event.duration', 'client.ip', 'http.request.id')
# Quotes, a backslash, spaces, @ / : = %, a non-ASCII letter: every way a password can trip up a DSN or a log.
AWKWARD_PASSWORD = 'p@ss w/o"r\'d\\é:=%41;x'
UNKNOWN_TOKEN = 'never-configured-token-9f8e7d'


def parse_lines(text):
    """Parse ndjson text, failing on any line that is not one JSON object; return the flattened lines."""
    lines = []
    for number, line in enumerate(text.splitlines(), 1):
        document = json.loads(line)
        assert isinstance(document, dict), f'line {number} is not a JSON object: {line[:200]}'
        lines.append(flat(document))
    return lines


def read_log_folder(folder):
    """Return the raw text of every log file in folder, by file name."""
    return {path.name: path.read_text(encoding='utf-8') for path in sorted(folder.glob('*.ndjson*'))}


def logged_lines(folder):
    """Return every line of every log file in folder, flattened."""
    return [line for text in read_log_folder(folder).values() for line in parse_lines(text)]


def access_lines(lines):
    """Keep the access lines."""
    return [line for line in lines if line['log.logger'] == 'dbapi.access']


def line_of_request(lines, request_id):
    """Return the one access line of request_id."""
    found = [line for line in access_lines(lines) if line.get('http.request.id') == request_id]
    assert len(found) == 1, f'{len(found)} access lines for request {request_id}'
    return found[0]


def post(client, path, body=None, headers=None, token=ADMIN_TOKEN, **kwargs):
    """POST JSON and return the response, closed, so that its access line has been written."""
    headers = {**({'Authorization': f'Bearer {token}'} if token else {}), **(headers or {})}
    return client.post(path, json={} if body is None else body, headers=headers, buffered=True, **kwargs)


@pytest.fixture()
def log_folder(tmp_path, make_app):
    """A folder for LOG_PATH; logging is put back as the other tests' apps have it afterwards."""
    folder = tmp_path / 'logs'
    yield folder
    make_app()


@pytest.fixture()
def logged_app(make_app, log_folder):
    """An app that logs at DEBUG to stdout and to its file under log_folder."""
    return make_app(LOG_PATH=str(log_folder), LOG_LEVEL='DEBUG')


def test_every_line_is_one_ecs_json_object_with_the_service_fields(logged_app, log_folder):
    client = logged_app.test_client()
    post(client, '/probe/echo', {'a': 1})
    post(client, '/probe/missing')
    post(client, '/probe/crash')
    client.get('/healthz', buffered=True)
    logging.getLogger('dbapi.test').warning('a line from %s', 'a library')
    lines = logged_lines(log_folder)
    assert len(lines) == 5  # four access lines and the library line
    config = logged_app.config
    for line in lines:
        assert set(REQUIRED_FIELDS) <= line.keys(), line
        assert line['service.name'] == config['APP_ID'] and line['service.environment'] == 'test'
        assert line['service.node.name'] == config['PROCESS_ID'] and line['labels.elk_index'] == config['ELK_INDEX']
        assert line['process.pid'] == os.getpid() and line['@timestamp'].endswith('Z')
    assert any(line['message'] == 'a line from a library' and line['log.level'] == 'warning' for line in lines)
    assert list(read_log_folder(log_folder)) == [f"{config['PROCESS_ID']}-{socket.gethostname()}-{os.getpid()}.ndjson"]


def test_each_request_writes_one_access_line_with_its_fields(logged_app, log_folder):
    client = logged_app.test_client()
    response = post(client, '/probe/echo', {'a': 1}, headers={'X-Request-ID': 'fields-1', 'User-Agent': 'probe/1.0'})
    post(client, '/probe/greet', {'name': 'Ada'}, token=SINGLE_BEARER)
    post(client, '/probe/echo', token=UNKNOWN_TOKEN)
    client.get('/probe/echo', headers=AUTH, buffered=True)
    client.post('/no/such/module', buffered=True)
    client.head('/healthz', buffered=True)
    lines = access_lines(logged_lines(log_folder))
    assert len(lines) == 6
    line = line_of_request(lines, 'fields-1')
    assert set(ACCESS_FIELDS) <= line.keys()
    assert line['http.request.method'] == 'POST' and line['url.path'] == '/probe/echo'
    assert line['http.response.status_code'] == 200
    assert line['http.response.body.bytes'] == len(response.data) and line['event.duration'] > 0
    assert (line['client.ip'], line['user.name'], line['user_agent.original']) == ('127.0.0.1', 'admin', 'probe/1.0')
    assert (line['labels.module'], line['labels.action'], line['event.outcome']) == ('probe', 'echo', 'success')
    assert line['log.level'] == 'info' and line['message'] == 'POST /probe/echo 200'
    statuses = [(line['url.path'], line['http.response.status_code'], line.get('user.name')) for line in lines]
    assert statuses[1:] == [('/probe/greet', 200, 'bearer'), ('/probe/echo', 401, None), ('/probe/echo', 405, None),
                            ('/no/such/module', 404, None), ('/healthz', 200, None)]
    assert lines[-1]['http.response.body.bytes'] == 0, 'a HEAD response sends no body'


@pytest.mark.parametrize('path', ['//healthz', '///probe/echo', '/probe//echo', '*'])
def test_the_access_line_has_the_path_as_sent_never_merged(logged_app, log_folder, path):
    """A leading doubled slash was logged merged (//healthz as /healthz, a 404 of the health check), where nginx's
    line of the same request has it as sent (trial I). PATH_INFO is set as a server sets it: the test client would
    read a leading // as a host."""
    post(logged_app.test_client(), '/unused', environ_overrides={'PATH_INFO': path})
    (line,) = access_lines(logged_lines(log_folder))
    assert (line['url.path'], line['message'], line['http.response.status_code']) == (path, f'POST {path} 404', 404)


def test_client_ip_is_the_real_one_behind_a_trusted_proxy(make_app, log_folder):
    client = make_app(LOG_PATH=str(log_folder), TRUSTED_PROXY_HOPS=1).test_client()
    post(client, '/probe/echo', headers={'X-Forwarded-For': '203.0.113.7', 'X-Request-ID': 'proxied-1'})
    assert line_of_request(logged_lines(log_folder), 'proxied-1')['client.ip'] == '203.0.113.7'


@pytest.mark.parametrize('sent_id', ['client-req.42:x', None])
def test_request_id_is_the_same_in_header_error_body_and_log_lines(logged_app, log_folder, sent_id):
    client = logged_app.test_client()
    missing = post(client, '/probe/missing', headers={'X-Request-ID': sent_id} if sent_id else {})
    crash = post(client, '/probe/crash', headers={'X-Request-ID': f'{sent_id}-crash'} if sent_id else {})
    lines = logged_lines(log_folder)
    for response in (missing, crash):
        request_id = response.headers['X-Request-ID']
        assert request_id == response.get_json()['request_id']
        assert line_of_request(lines, request_id)['http.response.status_code'] == response.status_code
    if sent_id:
        assert missing.headers['X-Request-ID'] == sent_id


@pytest.mark.parametrize('sent_id', [ADMIN_TOKEN, f'trace.{ADMIN_TOKEN}.1'])
def test_a_request_id_holding_a_token_is_replaced_so_that_its_lines_can_be_found(logged_app, log_folder, sent_id):
    """The log redacts every token: an id holding one would read [REDACTED] in the lines, and the answer would echo
    the token. A new id is made instead, the same in the header, the body and the line."""
    response = post(logged_app.test_client(), '/probe/missing', headers={'X-Request-ID': sent_id})
    request_id = response.headers['X-Request-ID']
    assert ADMIN_TOKEN not in request_id and request_id == response.get_json()['request_id']
    assert line_of_request(logged_lines(log_folder), request_id)['http.response.status_code'] == 404


def test_the_database_password_a_caller_sends_comes_back_as_sent_and_only_the_lines_redact_it(make_app, log_folder,
                                                                                               database_url):
    """Redacted, an X-Request-ID or a 404's module name holding the database's password told a caller without a token
    that its guess was the password (trial BF), and a body's key told any client (trial BG): problems redact tokens
    alone. The lines redact it still."""
    password = 'Pw-guess-9876'
    app = make_app(LOG_PATH=str(log_folder),
                   DATABASES={'default': database_url, 'reports': f'postgresql://u:{password}@127.0.0.1:1/x'})
    response = post(app.test_client(), f'/{password}/get', token='', headers={'X-Request-ID': f'id.{password}'})
    assert response.status_code == 404 and response.headers['X-Request-ID'] == f'id.{password}'
    assert response.get_json()['request_id'] == f'id.{password}'
    named = post(app.test_client(), f'/{password}/get', token=SINGLE_BEARER)  # a 404 quotes the module's name
    assert named.status_code == 404 and f"'{password}'" in named.get_json()['detail']
    keyed = post(app.test_client(), '/probe/greet', {'name': 'x', password: 1}, headers={'X-Request-ID': password})
    assert keyed.status_code == 422 and password in keyed.get_json()['errors']
    assert keyed.headers['X-Request-ID'] == keyed.get_json()['request_id'] == password
    assert password not in ''.join(read_log_folder(log_folder).values())


def test_a_token_known_only_by_its_sha256_is_redacted_once_it_has_authenticated(make_app, log_folder):
    """Trial X: a client configured by its sha256 had its token, sent in the path or as a body's key beside its
    Authorization, come back in the 404's detail, the 422's errors and the access line's url.path."""
    app = make_app(LOG_PATH=str(log_folder))
    client = app.test_client()
    missing = post(client, f'/{SCOPED_TOKEN}/get', token=SCOPED_TOKEN)
    refused = post(client, '/probe/greet', {'name': 'x', SCOPED_TOKEN: 1}, token=SCOPED_TOKEN)
    logging.getLogger('dbapi.test').warning('later, %s', SCOPED_TOKEN)
    assert (missing.status_code, refused.status_code) == (404, 422)
    assert [SCOPED_TOKEN in response.get_data(as_text=True) for response in (missing, refused)] == [False, False]
    assert '[REDACTED]' in missing.get_json()['detail'] and '[REDACTED]' in refused.get_json()['errors']
    text = ''.join(read_log_folder(log_folder).values())
    assert SCOPED_TOKEN not in text and 'later, [REDACTED]' in text


@pytest.mark.parametrize('path, protocol', [('/healthz', 'HTTP/1.1'), (f'/users/{SCOPED_TOKEN}', 'HTTP/1.2')])
def test_a_sha256_clients_token_is_learned_by_a_request_answered_before_authorization(make_app, log_folder, path,
                                                                                      protocol):
    """An operations endpoint never identifies its caller, and a 400 for the HTTP version comes first: the token,
    shown in Authorization, stayed in the line's path and User-Agent (trial Z)."""
    client = make_app(LOG_PATH=str(log_folder)).test_client()
    response = client.open(path, method='GET' if path == '/healthz' else 'POST',
                           environ_overrides={'SERVER_PROTOCOL': protocol}, buffered=True,
                           headers={'Authorization': f'Bearer {SCOPED_TOKEN}', 'User-Agent': f'ua-{SCOPED_TOKEN}'})
    assert response.status_code in (200, 400)
    text = ''.join(read_log_folder(log_folder).values())
    assert SCOPED_TOKEN not in text and 'ua-[REDACTED]' in text


@pytest.mark.parametrize('token', [SCOPED_TOKEN, 'a-token-no-client-has-9'])
def test_a_request_id_holding_the_requests_own_token_is_replaced(make_app, log_folder, token):
    """As nginx does: the id of a request whose Authorization carries the token, known only by its sha256 (trial X:
    echoed on a sha256 client's first request) or not known at all, is a new one."""
    app = make_app(LOG_PATH=str(log_folder))
    response = post(app.test_client(), '/probe/missing', token=token, headers={'X-Request-ID': f'id.{token}'})
    request_id = response.headers['X-Request-ID']
    assert token not in request_id and request_id == response.get_json()['request_id']
    assert line_of_request(logged_lines(log_folder), request_id)['http.response.status_code'] in (401, 404)


@pytest.mark.parametrize('authorization', [f'Bearer {SCOPED_TOKEN}, Bearer x', f'Bearer x, Bearer {SCOPED_TOKEN}',
                                           f'Bearer {SCOPED_TOKEN} extra', f'Bearer:{SCOPED_TOKEN}'])
def test_a_token_in_a_malformed_authorization_is_the_requests_own_and_learned(make_app, log_folder, authorization):
    """Only its last word counted, and a 401's header was never read for a token: a token before another word (two
    Authorization headers join with a comma) was echoed as the id, and stayed in the 401's lines (trial AA)."""
    app = make_app(LOG_PATH=str(log_folder))
    response = post(app.test_client(), '/probe/echo', headers={
        'Authorization': authorization, 'X-Request-ID': f'id.{SCOPED_TOKEN}', 'User-Agent': f'ua-{SCOPED_TOKEN}'})
    assert response.status_code == 401 and SCOPED_TOKEN not in response.headers['X-Request-ID']
    text = ''.join(read_log_folder(log_folder).values())
    assert SCOPED_TOKEN not in text and 'ua-[REDACTED]' in text


LONG_TOKEN = 'Long-Mixed-Case-Token-' + 'x' * 70


@pytest.mark.parametrize('path, headers', [
    (f'/{LONG_TOKEN}/get', {}),
    ('/probe/echo', {'Content-Encoding': LONG_TOKEN}),
    ('/probe/echo', {'Content-Type': f'application/json; charset={LONG_TOKEN}'}),
    ('/probe/echo', {'Transfer-Encoding': LONG_TOKEN}),
    # its escapes' characters encoded too, `-` as %25%32%44 (trial AU)
    ('/probe/echo', {'Content-Type': f'application/json; charset={LONG_TOKEN.replace("-", "%25%32%44")}'}),
])
def test_no_part_of_a_token_the_caller_sent_comes_back_in_a_detail(make_app, path, headers):
    """A detail lowercased what it quoted (a mixed-case token passed the redactor), and cut it at 40 or 64
    characters (a cut token passed it too, its first characters shown; trial AA)."""
    tokens = json.dumps({**BEARER_TOKENS, 'long': {'token': LONG_TOKEN}})
    response = post(make_app(BEARER_TOKENS=tokens).test_client(), path, token=LONG_TOKEN, headers=headers)
    assert response.status_code in (400, 404, 415)
    assert '[REDACTED]' in response.get_json()['detail']
    assert LONG_TOKEN[:12].lower() not in response.get_data(as_text=True).lower()


def test_a_readyz_503_logs_why_the_database_did_not_answer_and_its_answer_names_nothing(make_app, log_folder,
                                                                                      database_url):
    dead = 'host=127.0.0.1 port=1 dbname=secretdb user=secretuser password=pw-secret-9'
    app = make_app(LOG_PATH=str(log_folder), DATABASES={'default': database_url, 'reports': dead})
    response = app.test_client().get('/readyz', headers={'X-Request-ID': 'not-ready-1'})
    response.close()  # the access line is written as the server closes the answer
    line = line_of_request(logged_lines(log_folder), 'not-ready-1')
    assert response.status_code == 503 and 'secretdb' not in response.get_data(as_text=True)
    assert line['error.type'] == 'lib.errors.ServiceUnavailable'
    assert 'psycopg2.OperationalError: Connection refused' in line['error.stack_trace']
    # Not silence: a refusal, a too-many-clients or a wrong password said "did not answer" (trial BE)
    assert ("/readyz: the database 'reports' (DATABASES) failed the probe: it could not be reached, or refused its "
            "connection or its SELECT 1") in line['error.stack_trace']
    assert 'pw-secret-9' not in json.dumps(line)


def test_a_readyz_probe_that_waited_for_another_says_so_when_it_blames_a_database(make_app, log_folder,
                                                                                   database_url):
    """One probe runs at a time: a probe that waited for one stuck on a database that never answers has little of
    its second left for a healthy one, and its line must not put the time out on that database alone."""
    with socket.create_server(('127.0.0.1', 0)) as hole:  # takes connections, never answers
        silent = f'host=127.0.0.1 port={hole.getsockname()[1]} dbname=x user=x'
        app = make_app(LOG_PATH=str(log_folder), DATABASES={'default': database_url, 'silent': silent})
        with ThreadPoolExecutor(3) as probes:
            statuses = list(probes.map(lambda number: get_closed(app, '/readyz', f'probe-{number}'), range(3)))
    assert statuses == [503] * 3
    for number in range(3):
        trace = line_of_request(logged_lines(log_folder), f'probe-{number}')['error.stack_trace']
        assert "the database 'silent'" in trace or 'did not end in time' in trace or 'after waiting' in trace, trace
        assert "the database 'default'" not in trace or 'after waiting' in trace, 'a healthy database blamed'
        assert "the database 'silent'" not in trace or "the database 'silent' (DATABASES) did not answer in time" \
            in trace, trace


def get_closed(app, path, request_id):
    """GET path from app with request_id, close the answer (its access line is then written); return its status."""
    response = app.test_client().get(path, headers={'X-Request-ID': request_id})
    response.close()
    return response.status_code


HOOKED_ROUTES = '''
    from marshmallow import Schema, fields, post_load
    from lib.decorators import inject_db, use_schema

    class Body(Schema):
        a = fields.Integer(required=True)

        @post_load
        def wrap(self, data, **kwargs):
            return {returned}

    @use_schema(Body)
    {decorator}
    def act({parameters}):
        return {{'a': 1}}
    routes = [dict(route='act', action=act)]
'''


def hooked_error_line(make_app, log_folder, module_package, **routes):
    """Mount HOOKED_ROUTES filled with routes, call it, assert a 500 problem and return the call's access line."""
    package = module_package({'hooked/routes.py': HOOKED_ROUTES.format(**routes)})
    app = make_app(LOG_PATH=str(log_folder), MODULE_PACKAGES=[package])
    response = post(app.test_client(), '/hooked/act', {'a': 1}, headers={'X-Request-ID': 'hook-500'})
    assert response.status_code == 500 and response.content_type == 'application/problem+json'
    return line_of_request(logged_lines(log_folder), 'hook-500')


@pytest.mark.parametrize('returned', ['[data]', 'None', "data['a']"])
def test_a_post_load_hook_that_returns_no_dict_is_a_500_that_says_so_in_the_log(make_app, log_folder,
                                                                                module_package, returned):
    """A module's bug, so a 500; its line names the hook instead of `act() argument after ** must be a mapping`."""
    line = hooked_error_line(make_app, log_folder, module_package, returned=returned, decorator='',
                             parameters='**body')
    assert line['error.type'] == 'TypeError'
    message = line['error.message']
    assert message.startswith('Body loaded a ') and 'a post_load hook must return one' in message


@pytest.mark.parametrize('returned, decorator, parameters, key', [
    ("{**data, 'y': 1}", '', 'a', "'y'"),
    ("{**data, 'db': 'evil'}", '@inject_db()', 'db, a', "'db'"),
    ("{**data, 'db': 'evil'}", '@inject_db()', 'db, **body', "'db'"),
    ("{**data, 5: 1}", '', '**body', '5'),
])
def test_a_post_load_hook_that_returns_a_key_the_action_does_not_take_is_a_500_that_names_it(
        make_app, log_folder, module_package, returned, decorator, parameters, key):
    """Not "act() got an unexpected keyword argument", "multiple values for argument 'db'" or "keywords must be
    strings"."""
    line = hooked_error_line(make_app, log_folder, module_package, returned=returned, decorator=decorator,
                             parameters=parameters)
    assert line['error.message'] == (f"Body loaded {key}, which the action does not take as a keyword argument: "
                                     'its hooks (a post_load) return what it takes')


TRANSLATED_ROUTES = '''
    from lib.errors import translates

    class Misfiled(Exception):
        """An exception whose translator is broken."""

    @translates(Misfiled)
    def broken(exc):
        return {translated}

    def act():
        raise Misfiled('x')
    routes = [dict(route='act', action=act)]
'''


@pytest.mark.parametrize('translated, why', [('1 / 0', 'its error translator failed (ZeroDivisionError'),
                                             ("{'status': 409}", "returned dict, not an ApiError or None")])
def test_a_translator_that_fails_gives_the_generic_500_and_a_line_that_says_why(make_app, log_folder, module_package,
                                                                               translated, why):
    """Not werkzeug's "The server encountered an internal error ... overloaded" detail."""
    package = module_package({'translated/routes.py': TRANSLATED_ROUTES.format(translated=translated)})
    app = make_app(LOG_PATH=str(log_folder), MODULE_PACKAGES=[package])
    response = post(app.test_client(), '/translated/act', {}, headers={'X-Request-ID': 'translator-500'})
    assert response.status_code == 500
    assert response.get_json()['detail'] == 'The server could not complete the request.'
    line = line_of_request(logged_lines(log_folder), 'translator-500')
    assert line['error.type'] == 'TypeError' and why in line['error.message']


def test_a_line_logged_while_a_request_is_served_carries_its_id(logged_app, log_folder):
    with logged_app.test_request_context('/probe/echo', method='POST',
                                         environ_overrides={REQUEST_ID_KEY: 'served-7'}):
        logging.getLogger('dbapi.test').warning('inside the request')
    logging.getLogger('dbapi.test').warning('outside any request')
    inside, outside = logged_lines(log_folder)
    assert inside['http.request.id'] == 'served-7' and 'http.request.id' not in outside


def test_a_planted_500_logs_its_stack_trace_and_the_body_holds_none_of_it(logged_app, log_folder):
    response = post(logged_app.test_client(), '/probe/crash', headers={'X-Request-ID': 'planted-500'})
    assert response.status_code == 500
    for leak in ('Traceback', 'RuntimeError', 'boom', 'hunter2', 'vault', 'actions.py', 'File "'):
        assert leak not in response.get_data(as_text=True)
    line = line_of_request(logged_lines(log_folder), 'planted-500')
    assert (line['log.level'], line['event.outcome'], line['error.type']) == ('error', 'failure', 'RuntimeError')
    assert 'boom' in line['error.message'] and 'error.code' not in line
    assert line['error.stack_trace'].startswith('Traceback') and 'in crash' in line['error.stack_trace']


@pytest.mark.parametrize('case, status, sqlstate, detailed', [
    ('syntax', 500, '42601', True),
    ('unique', 409, '23505', False),
    ('timeout', 504, '57014', True),
])
def test_the_sqlstate_goes_in_error_code_when_the_database_failed(logged_app, log_folder, case, status, sqlstate,
                                                                  detailed):
    response = post(logged_app.test_client(), '/probe/sqlstate', {'case': case},
                    headers={'X-Request-ID': f'sql-{case}'})
    assert response.status_code == status
    line = line_of_request(logged_lines(log_folder), f'sql-{case}')
    assert line['error.code'] == sqlstate
    assert ('error.stack_trace' in line) == detailed
    if case == 'syntax':
        assert line['error.type'] == 'psycopg2.errors.SyntaxError'


@pytest.mark.parametrize('encoding', ['identity', 'br'])
def test_a_streamed_response_is_logged_once_when_the_stream_ends(logged_app, log_folder, encoding):
    client = logged_app.test_client()
    for number in range(3):
        post(client, '/probe/things/create', {'code': f'stream-{time.time_ns()}-{number}'})
    headers = {**AUTH, 'X-Request-ID': f'export-{encoding}', 'Accept-Encoding': encoding}
    response = client.post('/probe/things/export', json={}, headers=headers)
    body = response.get_data()
    written = [line['http.request.id'] for line in access_lines(logged_lines(log_folder))]
    assert f'export-{encoding}' not in written, 'not before the stream is closed'
    response.close()
    line = line_of_request(logged_lines(log_folder), f'export-{encoding}')
    assert line['http.response.body.bytes'] == len(body) > 0
    assert line['http.response.status_code'] == 200 and line['event.outcome'] == 'success'


def test_a_stream_that_breaks_midway_logs_its_error(make_app, log_folder):
    make_app(LOG_PATH=str(log_folder))
    app = Flask(__name__)
    install_access_log(app)

    @app.post('/broken')
    def broken():
        def chunks():
            yield b'['
            raise RuntimeError('the cursor died')
        return Response(chunks(), mimetype='application/json')
    response = app.test_client().post('/broken')
    with pytest.raises(RuntimeError):
        response.get_data()
    response.close()
    [line] = access_lines(logged_lines(log_folder))
    assert (line['http.response.status_code'], line['http.response.body.bytes']) == (200, 1)
    assert (line['log.level'], line['event.outcome'], line['error.type']) == ('error', 'failure', 'RuntimeError')
    assert line['error.message'] == 'the cursor died' and 'in chunks' in line['error.stack_trace']


def test_access_lines_are_kept_when_log_level_is_warning(make_app, log_folder):
    client = make_app(LOG_PATH=str(log_folder), LOG_LEVEL='WARNING').test_client()
    post(client, '/probe/echo', headers={'X-Request-ID': 'quiet-1'})
    logging.getLogger('dbapi.test').info('below the level')
    lines = logged_lines(log_folder)
    assert line_of_request(lines, 'quiet-1')
    assert not any(line['message'] == 'below the level' for line in lines)


def secret_spellings(secrets):
    """Return each secret as it is and as JSON would escape it inside a line."""
    return {spelling for secret in secrets
            for spelling in (secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1])}


def test_no_token_password_or_dsn_appears_in_any_line_even_at_debug(make_app, log_folder, database_url):
    dsn = make_dsn(database_url, password=AWKWARD_PASSWORD)
    unreachable = make_dsn(host='127.0.0.1', port=1, dbname='vault', user='vault', password=AWKWARD_PASSWORD + '2')
    app = make_app(LOG_PATH=str(log_folder), LOG_LEVEL='DEBUG', DATABASES={'default': dsn, 'vault': unreachable})
    client = app.test_client()
    post(client, '/probe/things/create', {'code': f'secret-{time.time_ns()}'})
    post(client, '/probe/greet', {'name': 'x'}, token=SINGLE_BEARER)
    post(client, '/session/state', token=SCOPED_TOKEN)  # a 403: the client is limited to the probe module
    post(client, '/probe/echo', token=UNKNOWN_TOKEN)
    post(client, '/probe/crash')
    post(client, '/probe/sqlstate', {'case': 'syntax'})
    client.get('/readyz', buffered=True)
    library = logging.getLogger('dbapi.test')
    library.debug('connecting with %s and %s', dsn, unreachable)
    # Plain tokens are known, so even a careless line is redacted (a sha256-only token is only ever sent).
    library.info('tokens %s %s', ADMIN_TOKEN, SINGLE_BEARER)
    try:
        raise psycopg2.OperationalError(f'could not connect with {dsn}')
    except psycopg2.OperationalError:
        library.exception('connection failed')
    text = '\n'.join(read_log_folder(log_folder).values())
    lines = parse_lines(text)
    assert len(access_lines(lines)) == 7 and len(lines) >= 10
    for spelling in secret_spellings([dsn, unreachable, AWKWARD_PASSWORD, ADMIN_TOKEN, SINGLE_BEARER,
                                      SCOPED_TOKEN, UNKNOWN_TOKEN]):
        assert spelling not in text, f'{spelling!r} was logged'
    assert sum('[REDACTED]' in json.dumps(line) for line in lines) == 3


def test_each_process_writes_its_own_file_after_a_fork(make_app, log_folder):
    make_app(LOG_PATH=str(log_folder))
    logging.getLogger('dbapi.test').warning('from the parent, before')
    child = os.fork()
    if child == 0:
        logging.getLogger('dbapi.test').warning('from the child')
        os._exit(0)
    os.waitpid(child, 0)
    logging.getLogger('dbapi.test').warning('from the parent, after')
    files = read_log_folder(log_folder)
    assert len(files) == 2
    for name, text in files.items():
        pid = int(name.rsplit('-', 1)[1].split('.')[0])
        lines = parse_lines(text)
        assert {line['process.pid'] for line in lines} == {pid}
        expected = ['from the child'] if pid == child else ['from the parent, before', 'from the parent, after']
        assert [line['message'] for line in lines] == expected


def test_a_process_rotates_its_own_file_at_the_size_limit(make_app, log_folder):
    make_app(LOG_PATH=str(log_folder), LOG_FILE_MAX_BYTES=4000, LOG_FILE_BACKUPS=2)
    for number in range(60):
        logging.getLogger('dbapi.test').warning('line %d %s', number, 'x' * 100)
    files = read_log_folder(log_folder)
    assert len(files) == 3 and sum(name.endswith(('.ndjson.1', '.ndjson.2')) for name in files) == 2
    for text in files.values():
        assert len(text.encode()) <= 4000 and parse_lines(text)
    newest = [name for name in files if name.endswith('.ndjson')][0]
    assert parse_lines(files[newest])[-1]['message'].startswith('line 59 ')


@pytest.mark.parametrize('fast', [True, False])
def test_a_process_counts_from_the_size_its_file_already_has(make_app, log_folder, fast):
    log_folder.mkdir()
    path = log_folder / f'{settings.PROCESS_ID}-{socket.gethostname()}-{os.getpid()}.ndjson'
    earlier = json.dumps({'message': 'an earlier line', 'padding': 'x' * 3800}) + '\n'
    path.write_text(earlier)
    make_app(LOG_PATH=str(log_folder), LOG_FILE_MAX_BYTES=4000, LOG_FILE_BACKUPS=2, FAST_PATHS=fast)
    logging.getLogger('dbapi.test').warning('a line that does not fit %s', 'y' * 200)
    files = read_log_folder(log_folder)
    assert files[f'{path.name}.1'] == earlier, 'the file was rotated before the line took it past the limit'
    assert [line['message'] for line in parse_lines(files[path.name])] == [f"a line that does not fit {'y' * 200}"]


def test_a_library_line_carries_the_whole_chained_traceback(logged_app, log_folder):
    try:
        try:
            raise KeyError('the first failure')
        except KeyError as exc:
            raise ValueError('the second failure') from exc
    except ValueError:
        logging.getLogger('dbapi.test').exception('it failed')
    [line] = logged_lines(log_folder)
    trace = line['error.stack_trace']
    assert trace.startswith('Traceback (most recent call last):') and "KeyError: 'the first failure'" in trace
    assert 'The above exception was the direct cause' in trace and trace.endswith('ValueError: the second failure')
    assert (line['error.type'], line['error.message']) == ('ValueError', 'the second failure')
    assert line['log.origin.function'] == 'test_a_library_line_carries_the_whole_chained_traceback'


def test_a_line_with_extra_fields_keeps_them_beside_dbapis(logged_app, log_folder):
    logging.getLogger('dbapi.test').warning('with extras', extra={'labels': {'applied': '001,002'}, 'odd': object(),
                                                                  'big': 2 ** 70, 'http.request.bytes': 12})
    [line] = logged_lines(log_folder)
    assert (line['labels.applied'], line['labels.elk_index']) == ('001,002', logged_app.config['ELK_INDEX'])
    assert line['http.request.bytes'] == 12  # an ECS field stays where ECS puts it
    # Anything else is a library's own extra: a label, as text, so that no other line can type it differently.
    assert line['labels.odd'].startswith('<object object') and line['labels.big'] == str(2 ** 70)
    assert not {'odd', 'big'} & line.keys()


@pytest.mark.parametrize('fast', [True, False])
def test_gunicorns_metric_extras_go_under_labels(make_app, log_folder, fast):
    make_app(LOG_PATH=str(log_folder), LOG_LEVEL='DEBUG', FAST_PATHS=fast)
    logger, _ = gunicorn_logger(errorlog='-', loglevel='debug')
    # What gunicorn's arbiter logs whenever its number of workers changes.
    logger.debug('3 workers', extra={'metric': 'gunicorn.workers', 'value': 3, 'mtype': 'gauge'})
    [line] = logged_lines(log_folder)
    assert (line['labels.metric'], line['labels.value'], line['labels.mtype']) == ('gunicorn.workers', '3', 'gauge')
    assert not {'metric', 'value', 'mtype'} & line.keys()


def test_every_line_states_the_ecs_version_of_its_fields(logged_app, log_folder):
    post(logged_app.test_client(), '/probe/echo')
    logging.getLogger('dbapi.test').warning('a library line')
    assert {line['ecs.version'] for line in logged_lines(log_folder)} == {ECS_VERSION} == {'1.12.0'}


def test_nginx_and_filebeat_state_the_same_ecs_version():
    template = (settings.BASE_DIR / 'nginx' / 'dbapi.conf.template').read_text()
    assert re.findall(r'"ecs\.version":"([^"]*)"', template) == [ECS_VERSION]
    error_input = {entry['id']: entry for entry in load_yaml('filebeat/filebeat.yml')['filebeat.inputs']}['nginx-error']
    added = [processor['add_fields']['fields'] for processor in error_input['processors'] if 'add_fields' in processor]
    assert added[0]['ecs.version'] == ECS_VERSION


# --- Long lines on stdout: a pipe takes at most PIPE_BUF bytes in one write without interleaving. ---


def long_trace_line(frames=400, message='it failed'):
    """Return an ECS line with a long stack trace full of characters JSON escapes or encodes in several bytes."""
    trace = ''.join(f'  File "/srv/app{number}.py", line {number}, in f\n    raise Error("caf\u00e9 \\ \t")\n'
                    for number in range(frames))
    return json.dumps({'@timestamp': '2026-11-29T18:00:00.000Z', 'log.level': 'error', 'message': message,
                       'ecs.version': ECS_VERSION, 'labels': {'elk_index': 'dbapi-test'},
                       'error': {'type': 'Error', 'stack_trace': trace}}, ensure_ascii=False)


def test_a_line_longer_than_a_pipe_write_is_split_into_whole_lines_that_fit():
    line = long_trace_line()
    assert len(line.encode()) > 4 * select.PIPE_BUF
    pieces = split_line(line, select.PIPE_BUF)
    documents = [json.loads(piece) for piece in pieces]
    assert all(len(piece.encode()) + 1 <= select.PIPE_BUF for piece in pieces)
    trace = json.loads(line)['error']['stack_trace']
    assert ''.join(document['error']['stack_trace'] for document in documents) == trace
    width = len(str(len(pieces)))
    assert [document['labels']['line_part'] for document in documents] == [f'{n:0{width}}/{len(pieces)}'
                                                                            for n in range(1, len(pieces) + 1)]
    for document in documents:  # every piece is a whole line: the same fields, in ECS logging's order
        assert list(document)[:3] == ['@timestamp', 'log.level', 'message'] and document['message'] == 'it failed'
        assert document['labels']['elk_index'] == 'dbapi-test' and document['error']['type'] == 'Error'
    assert all(document['error']['stack_trace'].endswith('\n') for document in documents)  # cut at line breaks


def test_only_the_first_piece_of_a_split_access_line_carries_what_it_measures():
    """A 503's long trace made two pieces, each with the status, outcome and duration: Elasticsearch counted the
    request twice (trial AP)."""
    document = json.loads(long_trace_line())
    document.update({'http': {'request': {'id': 'split-1'}, 'response': {'status_code': 503, 'body': {'bytes': 9}}},
                     'event': {'dataset': 'dbapi.access', 'duration': 5, 'outcome': 'failure'}})
    first, *rest = [json.loads(piece) for piece in split_line(json.dumps(document), select.PIPE_BUF)]
    assert rest and first['http'] == document['http'] and first['event'] == document['event']
    for piece in rest:
        assert piece['http'] == {'request': {'id': 'split-1'}} and piece['event'] == {'dataset': 'dbapi.access'}


def test_a_line_that_fits_is_left_alone():
    line = long_trace_line(frames=3)
    assert split_line(line, select.PIPE_BUF) == [line]


def test_a_long_message_and_a_long_trace_are_both_split():
    line = long_trace_line(frames=100, message='m\u00e9' * 8000)
    documents = [json.loads(piece) for piece in split_line(line, select.PIPE_BUF)]
    assert len(documents) >= 10 and documents[0]['labels']['line_part'] == f'01/{len(documents)}'
    assert sorted(documents, key=lambda document: document['labels']['line_part']) == documents
    assert ''.join(document.get('message', '') for document in documents) == 'm\u00e9' * 8000
    assert ''.join(document['error'].get('stack_trace', '') for document in documents) == \
        json.loads(line)['error']['stack_trace']


def write_long_lines_in_children(handler_class, children=4, lines=25):
    """Fork children that each log lines with long tracebacks through handler_class on one pipe; return what the
    pipe carried, read slowly while they wrote (a busy log collector): the pipe fills up, and a write longer than
    PIPE_BUF then goes in by parts, between which another child's write can land."""
    reading, writing = os.pipe()
    stream = open(writing, 'w', encoding='utf-8', closefd=False)
    handler = handler_class(stream)
    config = {'APP_ID': 'dbapi', 'ENVIRONMENT': 'test', 'PROCESS_ID': 'pipe-test', 'ELK_INDEX': 'dbapi-test'}
    fields = service_fields(config, 'host')
    handler.setFormatter(EcsFormatter(fields, Redactor([])))
    handler.addFilter(ServiceFields(fields))
    logger = logging.getLogger('dbapi.test.pipe')
    pids = []
    for child in range(children):
        pid = os.fork()
        if pid == 0:
            logger.addHandler(handler)
            logger.propagate = False
            for number in range(lines):
                try:
                    raise RuntimeError('x' * 3000 + f' {child}-{number}')
                except RuntimeError:
                    logger.exception('line %s-%s', child, number)
            stream.flush()
            os._exit(0)
        pids.append(pid)
    os.close(writing)
    received = b''
    while chunk := os.read(reading, 1000):
        received += chunk
        time.sleep(0.001)
    os.close(reading)
    for pid in pids:
        os.waitpid(pid, 0)
    return received


@pytest.mark.parametrize('handler_class', [LineStreamHandler, PipeStreamHandler])
def test_processes_sharing_a_pipe_never_tear_each_others_long_lines(handler_class):
    received = write_long_lines_in_children(handler_class)
    documents = [json.loads(raw) for raw in received.splitlines()]  # fails on a torn line
    assert all(len(raw) + 1 <= select.PIPE_BUF for raw in received.splitlines())
    messages = {}
    for document in documents:
        messages.setdefault(document['message'], []).append(document)
    assert len(messages) == 4 * 25
    for message, pieces in messages.items():
        trace = ''.join(piece['error'].get('stack_trace', '') for piece in pieces)
        assert trace.startswith('Traceback') and trace.endswith(message.split()[1])
        assert ''.join(piece['error'].get('message', '') for piece in pieces).endswith(message.split()[1])


def stack_says(text):
    """What make stack says on stderr (ops.stack.say)."""
    from ops.stack import say
    say(text)


def writes_said_on_stderr(monkeypatch, say, text):
    """Return the writes say(text) makes to sys.stderr, each a datagram of a socket (one message per write), stderr
    made as PYTHONUNBUFFERED (the Dockerfile's) makes it: print's text and newline go out as two writes there."""
    reading, writing = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    stderr = io.TextIOWrapper(io.FileIO(os.dup(writing.fileno()), 'w'), write_through=True)
    with reading, writing, stderr:
        with monkeypatch.context() as patched:  # sys.stderr is given back before this one is closed
            patched.setattr('sys.stderr', stderr)
            say(text)
        return datagrams(reading)


def datagrams(reading):
    """Return the messages waiting on a datagram socket, bytes, in order."""
    reading.setblocking(False)
    messages = []
    with contextlib.suppress(BlockingIOError):
        while True:
            messages.append(reading.recv(1 << 20))
    return messages


@pytest.mark.parametrize('say, expected', [
    (write_line, 'the replica exited'), (stack_says, 'stack: the replica exited'),
    (lambda text: print_startup_error(StartupError(text)), 'dbapi: the replica exited')])
def test_a_line_said_on_stderr_goes_in_one_write_that_no_other_process_can_split(monkeypatch, say, expected):
    # A line written in two (print's text, then its newline) let nginx's access lines, appended to make stack's output
    # in between, be glued to it and lost to JSON readers.
    assert writes_said_on_stderr(monkeypatch, say, 'the replica exited') == [f'{expected}\n'.encode()]


def writes_of_process(command, **environ):
    """Run command (a list) under PYTHONUNBUFFERED (the Dockerfile's) with stdout and stderr a datagram socket (one
    message per write); return its writes, bytes, in order."""
    reading, writing = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with reading, writing:
        subprocess.run(command, stdout=writing, stderr=writing, cwd=settings.BASE_DIR, timeout=120,
                       env=server_environment(PYTHONUNBUFFERED='1', **environ))
        return datagrams(reading)


PRINTS = """
import sys, traceback
from lib.process import write_lines_whole
write_lines_whole()
print('a line'); print('an error', file=sys.stderr); sys.stdout.write('without a newline')
try:
    1 / 0
except ZeroDivisionError:
    traceback.print_exc()
"""


def test_prints_of_a_process_that_asked_for_whole_lines_go_in_whole_lines():
    """print() under PYTHONUNBUFFERED wrote a text and its newline apart, a traceback in pieces: another process's
    line could land between them (trial BL: yoyo's, logging's own report, gunicorn's "Failed to read config file")."""
    writes = [write for write in writes_of_process([sys.executable, '-c', PRINTS]) if write]
    assert writes[:3] == [b'a line\n', b'an error\n', b'Traceback (most recent call last):\n']
    assert writes[-2:] == [b'ZeroDivisionError: division by zero\n', b'without a newline']  # the rest at the exit
    assert all(write.endswith(b'\n') for write in writes[:-1]), writes


def test_gunicorn_s_own_prints_go_in_whole_lines():
    """gunicorn.conf.py asks for whole lines: gunicorn's --print-config (print() of many lines) was its lines in one
    write and their last newline in another."""
    writes = [write for write in writes_of_process([*gunicorn_command(), '--print-config']) if write]
    assert b'workers ' in b''.join(writes) and all(write.endswith(b'\n') for write in writes), writes


@pytest.mark.parametrize('character', ['n', 'é'])
def test_a_start_line_longer_than_a_pipe_write_is_cut_to_fit_one(monkeypatch, character):
    """A bearer table's name of 200,000 characters made a line of that size, which a pipe takes in pieces that other
    processes' lines can tear (trial BL)."""
    [written] = writes_said_on_stderr(monkeypatch, lambda text: print_startup_error(StartupError(text)),
                                      f"bearer client '{character * 200_000}' has unknown keys: ['x']")
    assert len(written) <= select.PIPE_BUF and written.startswith(b"dbapi: bearer client '")
    assert written.decode().endswith(f'{character}...\n')


def gunicorn_logger(**options):
    """Return the logger gunicorn makes from its config, the way its arbiter makes it, with dbapi's logger class."""
    class Configured(BaseApplication):
        def load_config(self):
            for name, value in {'logger_class': 'lib.logs.GunicornLogger', **options}.items():
                self.cfg.set(name, value)

        def load(self):
            return None
    application = Configured()
    return application.cfg.logger_class(application.cfg), application.cfg


def test_gunicorn_lines_go_through_dbapis_handlers_after_every_setup(make_app, log_folder):
    make_app(LOG_PATH=str(log_folder))
    logger, cfg = gunicorn_logger(errorlog='-', loglevel='info')
    logger.info('first setup')
    logger.setup(cfg)  # what gunicorn's reload (SIGHUP) runs
    logger.info('after a reload')
    assert logger.error_log.handlers == [] and logger.error_log.propagate
    lines = logged_lines(log_folder)
    assert [(line['log.logger'], line['message']) for line in lines] == [
        ('gunicorn.error', 'first setup'), ('gunicorn.error', 'after a reload')]


def test_bearer_tokens_file_tokens_are_redacted_as_auths_table_holds_them(make_app, log_folder, tmp_path):
    file_token = 'token-from-a-mounted-file-3b7'
    tokens_file = tmp_path / 'tokens.json'
    tokens_file.write_text(json.dumps({'mounted': {'token': file_token}}))
    app = make_app(LOG_PATH=str(log_folder), BEARER_TOKENS_FILE=str(tokens_file))
    assert file_token in load_clients(app.config).secrets
    assert post(app.test_client(), '/probe/echo', token=file_token).status_code == 200
    logging.getLogger('dbapi.test').warning('called with %s', file_token)
    # A process without an app (manage.py, gunicorn's master) takes its tokens from the same table.
    standalone = SimpleNamespace(**{**settings_config(settings), 'LOG_PATH': str(log_folder / 'standalone'),
                                    'BEARER_TOKENS_FILE': str(tokens_file)})
    configure_process_logging(standalone)
    logging.getLogger('dbapi.test').warning('again with %s', file_token)
    texts = [*read_log_folder(log_folder).values(), *read_log_folder(log_folder / 'standalone').values()]
    lines = [line for text in texts for line in parse_lines(text)]
    assert [line['message'] for line in lines if line['log.logger'] == 'dbapi.test'] == [
        'called with [REDACTED]', 'again with [REDACTED]']
    assert [line['user.name'] for line in access_lines(lines)] == ['mounted']
    assert not any(file_token in text for text in texts)


@pytest.mark.parametrize('spelling', ['tok+en/with=', 'tok%2Ben%2Fwith%3D', 'tok%2ben%2fwith%3d',
                                      'tok%2Ben/with%3D', 'tok%2ben/with%3d'])  # quote()'s default keeps '/' (trial L)
def test_a_token_in_a_url_is_redacted_however_the_url_escapes_it(spelling):
    """gunicorn's DEBUG line quotes the request line as sent: a token there was percent-encoded and kept."""
    redact = Redactor(configured_secrets({}, ['tok+en/with=']))
    line = encode_line({'message': f'POST /probe/echo?access_token={spelling} HTTP/1.1'})
    assert json.loads(redact(line))['message'] == 'POST /probe/echo?access_token=[REDACTED] HTTP/1.1'


@pytest.mark.parametrize('spelling', ['tok%7Een%2Bx', 'tok%7een%2bx', 'tok~en%2Bx'])
def test_a_token_whose_tilde_a_url_encodes_is_redacted(spelling):
    """Java's URLEncoder writes `~` as %7E, where Python's quote() keeps it: such a User-Agent or target kept the
    token (trial AA)."""
    redact = Redactor(configured_secrets({}, ['tok~en+x']))
    line = encode_line({'message': f'GET /?t={spelling}'})
    assert json.loads(redact(line))['message'] == 'GET /?t=[REDACTED]'


def every_character_encoded(text, times):
    """Return text with every character percent-encoded, times times (`-` twice is `%25%32%44`)."""
    for _ in range(times):
        text = ''.join(f'%{ord(char):02X}' for char in text)
    return text


@pytest.mark.parametrize('secret, spelling', [('PlainTok-Abc123xyz', 'PlainTok%2DAbc123xyz'),
                                              ('HashTokNr01-Zq', '%48ashTokNr01-Z%71'),
                                              ('S3cr@tPw/d~x', '%533cr%40tPw%2Fd~x'),
                                              ('caf\u00e9-token', 'caf%C3%a9-token'),
                                              ('local-dev-token', 'local%252Ddev%252Dtoken'),
                                              ('local-dev-token', '%25256Cocal-dev-toke%2525256E'),
                                              # the escapes' own characters encoded (trial AU): `-` twice, then thrice
                                              ('local-dev-token', 'local%25%32%44dev%25%32%44token'),
                                              ('local-dev-token', every_character_encoded('local-dev-token', 2)),
                                              ('local-dev-token', every_character_encoded('local-dev-token', 3)),
                                              # a `%` encoded more times than MAX_PERCENT_DECODINGS decodes
                                              ('local-dev-token', f"local%{'25' * 12}2Ddev-token")])
def test_a_secret_with_any_of_its_characters_percent_encoded_is_redacted(secret, spelling):
    """Only whole encodings were known: a token with one character encoded (a path encoded twice and decoded once, a
    User-Agent) was logged as sent (trial AP); then one encoded twice or more, `%252D`, which no server decodes in a
    header (trial AR)."""
    redact = Redactor([secret])
    line = encode_line({'message': f'POST /users/{spelling} 404', 'user_agent': {'original': f'x {spelling}'}})
    redacted = json.loads(redact(line))
    assert (redacted['message'], redacted['user_agent']) == ('POST /users/[REDACTED] 404', {'original': 'x [REDACTED]'})
    untouched = encode_line({'message': 'a 100% plain line'})
    assert redact(untouched) == untouched


@pytest.mark.parametrize('secret, sent, logged', [
    # what stands before a token, read as an escape with its first characters (`%Be`, `%2B`), hid it (trial BM)
    ('Bear-Tok.5555~x', '%Bear%2DTok.5555~x', '%[REDACTED]'),
    ('Bear-Tok.5555~x', '100%25Bear%2DTok.5555~x', '100%25[REDACTED]'),
    ('Bear-Tok.5555~x', '/x%Bear%252DTok.5555~x/get', '/x%[REDACTED]/get'),
    ('Bear-Tok.5555~x', '%2Bear%2DTok.5555~x', '%2[REDACTED]'),
    ('deadbeef-cafe42', '%deadbeef%2Dcafe42', '%[REDACTED]'),
    # the same, an escape's own characters encoded (trial BN)
    ('Bear-Tok.5555~x', '%Bear%25%32%44Tok.5555~x', '%[REDACTED]'),
    ('Bear-Tok.5555~x', '%dBear%25%32%44Tok.5555~x', '%d[REDACTED]'),
    ('deadbeef-cafe42', '%25deadbeef%25%32%44cafe42', '%[REDACTED]'),
    ('Ab+cd/ef==', '%Ab%25%32%42cd/ef==', '%[REDACTED]'),
    ('ab%41cd-xyz', 'ab%41cd%25%32%44xyz', '[REDACTED]'),
    ('ab%41cd-xyz', 'ab%2541cd%25%32%44xyz', '[REDACTED]'),
    ('q"we%41r-t', 'q"we%41r%25%32%44t', '[REDACTED]'),
    # a password holding `%41`, its `%` encoded and another character too (trial BM)
    ('ab%41cd-xyz', 'ab%2541cd%2Dxyz', '[REDACTED]'),
    ('ab%41cd-xyz', 'ab%2541c%64-xyz', '[REDACTED]'),
    # a password holding characters JSON escapes, one of them percent-encoded and another not (trial BM)
    ('q"w"e%41r-t', 'q%22w"e%41r-t', '[REDACTED]'),
    ('a"b"c-d', 'a%22b"c-d', '[REDACTED]'),
    ('p"x\\y-zz', 'p"x%5Cy-zz', '[REDACTED]')])
def test_a_secret_percent_encoded_after_a_percent_sign_or_beside_json_escapes_is_redacted(secret, sent, logged):
    redact = Redactor([secret])
    redacted = redact(encode_line({'message': f'POST {sent} 404', 'user_agent': {'original': sent}}))
    assert json.loads(redacted)['message'] == f'POST {logged} 404'
    assert json.loads(redacted)['user_agent']['original'] == logged


# Secrets whose spellings an escape before them may read into (hex digits first, `25`s), that hold `%`, or characters
# of several UTF-8 bytes, and what may stand before a spelling: for the clue test below.
CLUE_SECRETS = ['Bear-Tok.5555~x', 'deadbeef-cafe42', '2525Ab-cd9', '5Be+ar/t=', 'ab%41cd-xyz', '%%2Bx%', 'Zo\u00eb-t\u00f6k',
                'Ab+cd/ef==', '2525', 'e%e%']
CLUE_PREFIXES = ['', '%', '%2', '%25', '%4', '%252', 'x%', '%%', '%%25', 'a%B']


def random_spelling(secret, rng):
    """Return secret with each character as it is or percent-encoded (any_percent_spelling's forms: each byte's
    escape, its `%` encoded again 0-2 times, hex digits in either case)."""
    def escape(byte):
        digits = f'{byte:02X}'
        return '%' + '25' * rng.randrange(3) + ''.join(rng.choice((digit, digit.lower())) for digit in digits)
    return ''.join(char if rng.random() < 0.5 else ''.join(map(escape, char.encode())) for char in secret)


def test_a_spelling_the_expressions_find_always_holds_its_clue():
    """The redactor searches a string with a `%` with a secret's expression only when the string's escapes_read holds
    the secret's spelling_clue (trial BN: every expression ran over every such string, 176 ms for an 8,000-byte
    User-Agent with 300 clients): a string the expression matches must hold the clue, or the secret would be logged."""
    rng = random.Random(20261203)
    for _ in range(4000):
        secret = rng.choice(CLUE_SECRETS)
        text = rng.choice(CLUE_PREFIXES) + random_spelling(secret, rng) + rng.choice(CLUE_PREFIXES)
        assert percent_spelling_expression(secret).search(text), (secret, text)
        assert spelling_clue(secret) in escapes_read(text), (secret, text)
        assert Redactor([secret]).redact(text).count(REDACTED) >= 1, (secret, text)


@pytest.mark.parametrize('secret, clue', [('Bear-Tok.5555~x', b'ar-Tok.5555~x'), ('2525Ab-cd9', b'-cd9'),
                                          ('5Be+ar/t=', b'+ar/t='), ('ab%41cd-xyz', b'cd-xyz'), ('2525', b''),
                                          ('Zo\u00eb-t\u00f6k', 'Zo\u00eb-t\u00f6k'.encode())])
def test_a_secrets_clue_leaves_out_what_an_escape_before_it_may_read(secret, clue):
    assert spelling_clue(secret) == clue


def test_what_an_escape_may_read_of_a_run_is_its_greedy_match():
    """stealable_length takes STEALABLE's greedy match as the longest prefix it matches whole: every run of 2, 5, a
    hex and a non-hex letter up to 8 characters long."""
    for size in range(9):
        for run in map(''.join, itertools.product('25ax', repeat=size)):
            assert stealable_length(run) == max(length for length in range(size + 1)
                                                if STEALABLE.fullmatch(run, 0, length)), run


@pytest.mark.parametrize('spelling', ['pw%25x%40y%2Fz', 'pw%25x%40y%2fz', 'pw%25x%40y/z'])
def test_a_database_password_in_a_url_is_redacted_however_the_url_escapes_it(spelling):
    """Lower-case hex was missed (trial L)."""
    redact = Redactor(configured_secrets({'default': 'postgresql://u:pw%25x%40y%2Fz@db/app'}, []))
    line = encode_line({'message': f'connecting with {spelling} now'})
    assert json.loads(redact(line))['message'] == 'connecting with [REDACTED] now'


@pytest.mark.parametrize('secret, fits', [
    ('2027', True), ('0000', True), ('T23:59', True), ('12-31T23', True), ('59.999Z', True), ('1970-01-01T00', True),
    ('12345', False), ('2027a', False), ('T2359', False), ('12:31:0000', False)])
def test_a_secret_that_some_moments_timestamp_holds_marks_every_line_whatever_the_time_now(secret, fits):
    """A password 2027 passed the check in 2026, then broke every line's @timestamp from the first of January."""
    assert Redactor([secret]).marks_every_line({'message': ''}) is fits


def test_a_secret_that_only_a_number_of_every_line_holds_does_not_mark_it():
    """Numbers are never redacted: a password holding the checking process's pid was refused by the pid's text."""
    line = {'process': {'pid': 123456}, 'http': {'response': {'status_code': 200}}, 'message': 'dbapi'}
    assert not Redactor(['123456']).marks_every_line(line)
    assert Redactor(['dbapi']).marks_every_line(line)


@pytest.mark.parametrize('token', ['warning', 'critical', 'debug', 'failure', 'unknown', 'gunicorn.error',
                                   'dbapi.stack', 'lib.decorators', 'yoyo.migrations', '127.0.0.1'])
def test_a_token_that_every_line_of_a_kind_holds_stops_the_start(token):
    """A level, an outcome, a logger: the start went on, and every warning line's log.level read [REDACTED] (trial
    AX), which no filter or alert on warnings then found."""
    with pytest.raises(StartupError, match='every line of a kind'):
        check_secrets_spare_every_line(settings_config(settings), [token])


def test_every_logger_the_code_names_is_a_word_of_its_kind():
    """A token `lib.decorators` (the retries' warnings) started the server (trial AY)."""
    named = set()
    for path in [*settings.BASE_DIR.glob('lib/**/*.py'), *settings.BASE_DIR.glob('ops/*.py'),
                 *(settings.BASE_DIR / name for name in ('app.py', 'manage.py', 'gunicorn.conf.py'))]:
        text = path.read_text()
        named.update(re.findall(r"getLogger\('([^']+)'\)", text))
        if 'getLogger(__name__)' in text:
            named.add('.'.join(path.relative_to(settings.BASE_DIR).with_suffix('').parts))
    named.update({'yoyo.migrations', 'gunicorn.error', 'root'})  # yoyo's, gunicorn's, and the root logger's lines
    assert named - {'dbapi.access'} and named <= set(KIND_WORDS['log']['logger'])


def test_the_start_check_leaves_the_timestamp_of_the_moment_out():
    """Only what every line holds counts: not the date and time of the start, which another moment's lines lack."""
    moment = time.strftime('%Y-%m-%dT%H:%M', time.gmtime())
    config = {**settings_config(settings), 'DATABASES': {'default': f'postgresql://u:a{moment}@127.0.0.1:1/db'}}
    check_secrets_spare_every_line(config, [f'b{moment}'])


# The same requests on an app with fast paths and on one without; a line's timing is its own.
SAME_REQUESTS = [('/probe/echo', ADMIN_TOKEN), ('/probe/echo', UNKNOWN_TOKEN), ('/probe/missing', ADMIN_TOKEN),
                 ('/probe/crash', SINGLE_BEARER), ('/no/such/module', None)]
TIMESTAMP = re.compile(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z')


def without_timing(line, *names):
    """Return a flattened line less its @timestamp and event.duration (checked for their form) and names."""
    assert TIMESTAMP.fullmatch(line['@timestamp']) and line['event.duration'] > 0
    return {name: value for name, value in line.items() if name not in ('@timestamp', 'event.duration', *names)}


def test_access_lines_are_the_same_with_fast_paths_on_and_off(make_app, log_folder):
    lines = {}
    for fast in (True, False):
        client = make_app(LOG_PATH=str(log_folder / str(fast)), FAST_PATHS=fast).test_client()
        for number, (path, token) in enumerate(SAME_REQUESTS):
            post(client, path, token=token, headers={'X-Request-ID': f'same-{number}', 'User-Agent': 'same/1'})
        # Which frames a trace holds depends on the app's own fast paths; test_an_access_line_... compares it.
        lines[fast] = [without_timing(line, 'error.stack_trace')
                       for line in access_lines(logged_lines(log_folder / str(fast)))]
    assert len(lines[True]) == len(SAME_REQUESTS) and lines[True] == lines[False]


def finished_exchange():
    """Return an exchange whose stream broke, as the server leaves it when it closes the response."""
    environ = {'REQUEST_METHOD': 'POST', 'PATH_INFO': '/probe/export', 'REMOTE_ADDR': '192.0.2.1',
               'HTTP_USER_AGENT': 'unit/1', REQUEST_ID_KEY: 'unit-1'}
    exchange = Exchange(environ, None, None)
    exchange.status, exchange.bytes = 200, 17
    try:
        raise RuntimeError('the cursor died midway')
    except RuntimeError as exc:
        exchange.stream_error = exc
    return exchange


@pytest.mark.parametrize('fast_handlers', [True, False])
def test_an_access_line_is_the_same_through_the_fast_path_and_a_log_record(make_app, log_folder, fast_handlers):
    make_app(LOG_PATH=str(log_folder), FAST_PATHS=fast_handlers)
    exchange = finished_exchange()
    AccessLog(None, fast=True).finish(exchange)
    AccessLog(None, fast=False).finish(exchange)
    prebuilt, from_record = [without_timing(line) for line in logged_lines(log_folder)]
    assert prebuilt == from_record and prebuilt['error.stack_trace'].startswith('Traceback')
    assert prebuilt['message'] == 'POST /probe/export 200' and prebuilt['log.level'] == 'error'
    assert not any(name.startswith('log.origin') for name in from_record)


def load_yaml(relative_path):
    """Parse a YAML file of the repository (PyYAML comes with requirements-lint.txt, which make test installs)."""
    yaml = pytest.importorskip('yaml', reason='PyYAML comes with requirements-lint.txt (make lint)')
    return yaml.safe_load((settings.BASE_DIR / relative_path).read_text())


def test_filebeat_config_parses_ndjson_into_the_fields_dbapi_writes():
    config = load_yaml('filebeat/filebeat.yml')
    inputs = {entry['id']: entry for entry in config['filebeat.inputs']}
    assert set(inputs) == {'dbapi', 'nginx', 'nginx-error'}  # nginx's plain-text error log: tests/test_edges.py
    for entry in (inputs['dbapi'], inputs['nginx']):
        assert entry['type'] == 'filestream' and entry['enabled'] is True
        parser = [parser['ndjson'] for parser in entry['parsers'] if 'ndjson' in parser]
        assert parser == [{'target': '', 'overwrite_keys': True, 'add_error_key': True, 'expand_keys': True,
                           'message_key': 'message'}]
    assert inputs['dbapi']['paths'] == ['/var/log/dbapi/*.ndjson*']
    output = config['output.elasticsearch']
    # The index comes from labels.elk_index, which every dbapi line carries; nginx lines get it from filebeat.
    assert output['index'] == '%{[labels.elk_index]}'
    assert config['setup.template.pattern'].startswith(config['setup.template.name'])
    added = [processor['add_fields'] for processor in inputs['nginx']['processors'] if 'add_fields' in processor]
    assert added[0]['target'] == 'labels' and added[0]['fields'] == {'elk_index': '${ELK_INDEX:dbapi-production}'}


def test_elk_compose_profile_runs_filebeat_elasticsearch_and_kibana():
    compose = load_yaml('docker-compose.elk.yml')
    services = {name: service for name, service in compose['services'].items() if 'image' in service}
    assert set(services) == {'elasticsearch', 'kibana', 'filebeat'}
    assert all(service['profiles'] == ['elk'] for service in services.values())
    # beside them, its addition to the api service: the files filebeat reads (trial BH: written without the profile)
    assert compose['services']['api'] == {'environment': {'LOG_PATH': '/var/log/dbapi'},
                                          'volumes': ['dbapi-logs:/var/log/dbapi']}
    mounts = services['filebeat']['volumes']
    assert './filebeat/filebeat.yml:/usr/share/filebeat/filebeat.yml:ro' in mounts
    assert {'dbapi-logs:/var/log/dbapi:ro', '/var/lib/docker/containers:/var/lib/docker/containers:ro'} <= set(mounts)
    assert 'dbapi-logs' in compose['volumes']


# --- Real gunicorn: three workers under load, every line checked. ---

LOAD_TOKEN = 'load-test-token-5c1d'
# (method, path, body, token, expected status): successes, errors of every kind, a stream, a crash.
LOAD_MIX = [
    ('POST', '/probe/echo', b'{"n": 1}', LOAD_TOKEN, 200),
    ('POST', '/probe/missing', b'', ADMIN_TOKEN, 404),
    ('POST', '/probe/crash', b'', LOAD_TOKEN, 500),
    ('POST', '/probe/things/export', b'', ADMIN_TOKEN, 200),
    ('GET', '/healthz', None, None, 200),
    ('POST', '/probe/echo', b'{}', UNKNOWN_TOKEN, 401),
    ('GET', '/probe/echo', None, LOAD_TOKEN, 405),
    ('POST', '/probe/sqlstate', b'{"case": "unique"}', ADMIN_TOKEN, 409),
]
LOAD_ROUNDS = 30


def send_load_request(port, number):
    """Send request number of the load mix with its own request id; return (id, expected, status, headers, body)."""
    method, path, body, token, expected = LOAD_MIX[number % len(LOAD_MIX)]
    headers = {'Content-Type': 'application/json', 'X-Request-ID': f'load-{number}',
               **({'Authorization': f'Bearer {token}'} if token else {})}
    reply = http_request(port, method, path, body, headers)
    return f'load-{number}', expected, reply.status, reply.headers, reply.body


@pytest.mark.slow
def test_three_gunicorn_workers_under_load_write_one_valid_line_per_request(tmp_path, database_url):
    logs = tmp_path / 'logs'
    dsn = make_dsn(database_url, password=AWKWARD_PASSWORD)
    # Sync workers serve one request each at a time, so eight callers at once reach at least two of them; three
    # gevent workers need not take turns at accepting, and one took every request in a CI run.
    environment = dict(DATABASE_URL=dsn, BEARER=LOAD_TOKEN, LOG_PATH=str(logs), LOG_LEVEL='DEBUG',
                       PROCESS_ID='dbapi-load', PROMETHEUS_MULTIPROC_DIR=str(tmp_path / 'metrics'), WORKER_CLASS='sync')
    with gunicorn_logging_to(tmp_path, **environment) as (port, server):
        with ThreadPoolExecutor(8) as pool:
            results = list(pool.map(lambda number: send_load_request(port, number), range(LOAD_ROUNDS * len(LOAD_MIX))))
    files = read_log_folder(logs)
    lines = [line for text in files.values() for line in parse_lines(text)]
    for line in lines:
        assert set(REQUIRED_FIELDS) <= line.keys(), line
    access = access_lines(lines)
    # Besides one line per load request, only the start-up polls of /healthz were served.
    polls = [line for line in access if not line['http.request.id'].startswith('load-')]
    assert {line['url.path'] for line in polls} == {'/healthz'}
    assert len(access) == len(polls) + len(results)
    for request_id, expected, status, headers, body in results:
        assert status == expected and headers['X-Request-ID'] == request_id
        line = line_of_request(access, request_id)
        assert set(ACCESS_FIELDS) <= line.keys() and line['http.response.status_code'] == status
        if status >= 400:
            assert json.loads(body)['request_id'] == request_id
        if status == 500:
            assert line['error.stack_trace'].startswith('Traceback') and b'Traceback' not in body
    worker_pids = {line['process.pid'] for line in access}
    assert len(worker_pids) >= 2 and server.pid not in worker_pids
    assert all(name == f'dbapi-load-{socket.gethostname()}-{name.rsplit("-", 1)[1]}' for name in files)
    assert {int(name.rsplit('-', 1)[1].split('.')[0]) for name in files} >= worker_pids | {server.pid}
    stdout = (tmp_path / 'stdout').read_text(encoding='utf-8')
    stdout_lines = parse_lines(stdout)
    # stdout carries every line too, a long one (a 500's trace) in pieces of at most PIPE_BUF bytes.
    assert all(len(raw.encode()) + 1 <= select.PIPE_BUF for raw in stdout.splitlines())
    first_pieces = [line for line in access_lines(stdout_lines) if line.get('labels.line_part', '1/').startswith('1/')]
    assert len(first_pieces) == len(access), 'stdout carries every line too'
    assert any('labels.line_part' in line for line in stdout_lines)
    assert any(line['log.logger'] == 'gunicorn.error' for line in stdout_lines)
    # gunicorn's worker count, logged with extras of its own: labels, not top-level fields.
    counts = [line for line in stdout_lines if line.get('labels.metric') == 'gunicorn.workers']
    assert counts and all(line['labels.mtype'] == 'gauge' and 'metric' not in line for line in counts)
    stderr = (tmp_path / 'stderr').read_text(encoding='utf-8')
    assert 'Booting worker' not in stderr, "gunicorn's own handler was left in place"
    everything = stdout + stderr + '\n'.join(files.values())
    for spelling in secret_spellings([dsn, AWKWARD_PASSWORD, LOAD_TOKEN, ADMIN_TOKEN, UNKNOWN_TOKEN]):
        assert spelling not in everything, f'{spelling!r} was logged'


SHA_ONLY_TOKEN = 'Sha-Only.Token~In+Path/77=='


@pytest.mark.slow
@pytest.mark.parametrize('worker_class', ['gevent', 'sync'])
def test_gunicorns_debug_line_never_shows_a_sha256_clients_token_its_request_shows(tmp_path, database_url,
                                                                                    worker_class):
    """gunicorn's DEBUG line of a request ("POST /<path>") is written before the app learns the token the request
    shows in Authorization: a token known by its sha256 alone, sent in the path too, was there in full (trial AC);
    one partly percent-encoded was there as sent (trial AE), as a plain token's was."""
    tokens = json.dumps({'hidden': {'sha256': hashlib.sha256(SHA_ONLY_TOKEN.encode()).hexdigest()}})
    partly = SHA_ONLY_TOKEN.replace('-', '%2D').replace('/', '%2f', 1)
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, BEARER_TOKENS=tokens, LOG_LEVEL='DEBUG',
                             WORKER_CLASS=worker_class, WEB_CONCURRENCY='1') as (port, _):
        replies = [http_request(port, 'POST', f'/{spelling}x/get', b'{}', {
            'Authorization': f'Bearer {SHA_ONLY_TOKEN}', 'Content-Type': 'application/json'})
            for spelling in (SHA_ONLY_TOKEN, partly, partly + 'x/' + quote(SHA_ONLY_TOKEN, safe=''))]
    assert [reply.status for reply in replies] == [404] * 3
    stdout = (tmp_path / 'stdout').read_text(encoding='utf-8')
    assert stdout.count('"POST /[REDACTED]x/get"') == 2 and '"POST /[REDACTED]x/[REDACTED]x/get"' in stdout
    assert not [spelling for spelling in ('Sha-Only', 'Sha%2DOnly', 'Path%2f77', 'Only.Token') if spelling in stdout]


@pytest.mark.parametrize('worker_class', ['gevent', 'gthread', 'sync'])
def test_gunicorns_debug_line_of_a_request_ended_unfinished_quotes_none_of_it(tmp_path, database_url, worker_class):
    """gunicorn's "Ignored premature client disconnection. No more data after: b'...'" quoted the head sent so far,
    Authorization and Cookie included (trial AN)."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, LOG_LEVEL='DEBUG', WORKER_CLASS=worker_class,
                             WEB_CONCURRENCY='1') as (port, _):
        with socket.create_connection(('127.0.0.1', port), timeout=10) as client:
            client.sendall(f'POST /example HTTP/1.1\r\nAuthorization: Bearer {SHA_ONLY_TOKEN}\r\n'
                           'Cookie: session=cookie-secret-42\r\n'.encode())
            time.sleep(0.5)  # the worker is reading the head
        assert http_request(port, 'GET', '/healthz').status == 200
        time.sleep(0.5)
    output = (tmp_path / 'stdout').read_text(encoding='utf-8') + (tmp_path / 'stderr').read_text(encoding='utf-8')
    assert 'Ignored premature client disconnection. NoMoreData (what the client sent is left out' in output
    assert 'Only.Token' not in output and 'cookie-secret-42' not in output


@pytest.mark.parametrize('handler_class', [LineStreamHandler, PipeStreamHandler])
def test_a_line_to_a_stdout_whose_reader_is_gone_is_dropped_without_a_report_on_stderr(handler_class, capfd):
    """With the terminal hung up (EIO) or the pipe's reader gone (EPIPE), logging wrote `--- Logging error ---` and a
    traceback to stderr for every line (trial N); nobody reads either. Another failure is still reported."""
    reader, writer = os.pipe()
    os.close(reader)
    stream = os.fdopen(writer, 'w')
    handler = handler_class(stream)
    handler.emit(logging.makeLogRecord({'msg': 'to nobody'}))
    assert capfd.readouterr().err == ''
    with contextlib.suppress(OSError):  # what the stream still buffers cannot be written either
        stream.close()
    handler.emit(logging.makeLogRecord({'msg': 'closed'}))  # a closed stream (EBADF, ValueError): reported
    assert '--- Logging error ---' in capfd.readouterr().err
