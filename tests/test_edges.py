"""Problem details at every edge: what nginx and gunicorn decide before the app, how nginx's error log is read,
and the error bodies that say what to do (CONTRACT sections 1 and 3)."""
import os
import re

import pytest

from ops import nginx
from settings import BASE_DIR
from tests.helpers import ADMIN_TOKEN, AUTH, SCOPED_TOKEN, assert_problem, run_sql

yaml = pytest.importorskip('yaml', reason='PyYAML comes with requirements-lint.txt (make lint)')

# A line of nginx 1.22's error log, as the native stack's stderr shows it.
NGINX_ERROR_LINE = ('2026/11/29 17:35:21 [error] 26022#26022: *2 connect() failed (111: Connection refused) while '
                    'connecting to upstream, client: 127.0.0.1, server: _, request: "POST /probe/ HTTP/1.1"')


def gunicorn_setting(name):
    """Return an integer setting of gunicorn.conf.py, read from its text (importing it configures logging)."""
    text = (BASE_DIR / 'gunicorn.conf.py').read_text()
    return int(re.search(rf'^{name} = (\d+)$', text, re.MULTILINE).group(1))


def nginx_header_buffer():
    """Return the size of nginx's large header buffers in the rendered template."""
    text = nginx.render({'PATH': os.environ['PATH'], 'DBAPI_UPSTREAMS': '127.0.0.1:8001'})
    count, size = re.search(r'^\s*large_client_header_buffers (\d+) (\d+);', text, re.MULTILINE).groups()
    return int(count), int(size)


def test_gunicorns_limits_sit_above_nginxs_so_gunicorn_never_refuses_a_line_nginx_passes():
    _, size = nginx_header_buffer()
    # The request line nginx passes is at most its buffer less CRLF; each header likewise, plus what nginx
    # appends to X-Forwarded-For (", " and an IPv6 address).
    assert gunicorn_setting('limit_request_line') >= size - 2
    assert gunicorn_setting('limit_request_field_size') >= size + 2 + 41
    assert gunicorn_setting('limit_request_line') <= 8190  # gunicorn's most: above, it silently uses 8190


def test_gunicorns_bound_on_a_head_or_a_trailer_section_is_about_800_kib():
    """gunicorn reads a head, or a chunked body's trailers, up to fields x (field size + 2) + 4 bytes, scanning all of it
    again at each read: under 10000 headers of 16384 bytes (164 MB), 8 MB of trailers took a worker 4.6 s (trial AV).
    Its default count, 100, as docs/deployment.md says."""
    fields, field_size = gunicorn_setting('limit_request_fields'), gunicorn_setting('limit_request_field_size')
    assert fields == 100
    assert fields * (field_size + 2) + 4 <= 820 * 1024


def dissect(tokenizer, text):
    """Split text as filebeat's dissect does for the simple keys used here (%{key} and %{+key} appends)."""
    keys = re.findall(r'%\{(\+?)([^}]*)\}', tokenizer)
    literals = re.split(r'%\{[^}]*\}', tokenizer)
    pattern = ''.join(re.escape(literal) + ('(.+?)' if index < len(keys) - 1 else '(.*)')
                      for index, literal in enumerate(literals[:-1])) + re.escape(literals[-1])
    values = {}
    for (append, key), value in zip(keys, re.fullmatch(pattern, text).groups()):
        values[key] = f'{values[key]} {value}' if append else value
    return values


def test_filebeat_splits_nginxs_plain_text_error_log_into_ecs_fields():
    config = yaml.safe_load((BASE_DIR / 'filebeat' / 'filebeat.yml').read_text())
    inputs = {entry['id']: entry for entry in config['filebeat.inputs']}
    error_input = inputs['nginx-error']
    assert error_input['paths'] == inputs['nginx']['paths']
    assert error_input['parsers'] == [{'container': {'stream': 'stderr'}}]
    processors = {name: options for processor in error_input['processors'] for name, options in processor.items()}
    fields = dissect(processors['dissect']['tokenizer'], NGINX_ERROR_LINE)
    assert fields['nginx.error.time'] == '2026/11/29 17:35:21' and fields['log.level'] == 'error'
    assert fields['process.pid'] == '26022' and fields['message'].startswith('*2 connect() failed')
    assert processors['timestamp']['layouts'] == ['2006/01/02 15:04:05']  # Go's layout of that time
    added = [processor['add_fields'] for processor in error_input['processors'] if 'add_fields' in processor]
    assert {'service.name': 'dbapi', 'service.type': 'nginx', 'event.dataset': 'nginx.error'}.items() <= \
        added[0]['fields'].items()
    assert added[-1] == [p['add_fields'] for p in inputs['nginx']['processors'] if 'add_fields' in p][0]


# --- Error bodies that say what to do. ---


def test_a_404_in_a_mounted_module_lists_its_actions(call):
    body = assert_problem(call('/probe/no-such-action'), 404)
    assert "Module 'probe' has no action" in body['detail']
    assert '/probe/echo' in body['detail'] and '/probe/things/create' in body['detail']


@pytest.mark.parametrize('token', ['', 'not-a-known-token', 'bad token with spaces'])
def test_a_404_lists_nothing_to_a_caller_without_a_valid_token(call, token):
    """The 404 comes before authorization: an unknown caller learns neither the actions nor which modules exist."""
    details = {assert_problem(call(path, token=token), 404)['detail'] for path in ('/probe/nope', '/nothing/here')}
    assert len(details) == 1
    (detail,) = details
    assert 'probe' not in detail and '/echo' not in detail and "'nothing'" not in detail


def test_a_404_lists_a_modules_actions_only_to_a_client_that_may_call_it(call):
    body = assert_problem(call('/users/nope', token=SCOPED_TOKEN), 404)  # this client may call probe only
    assert '/users/' not in body['detail'] and 'may not call' in body['detail']
    assert '/probe/echo' in assert_problem(call('/probe/nope', token=SCOPED_TOKEN), 404)['detail']


@pytest.mark.parametrize('path', ['/probe//echo', '/probe/echo//', '/probe///', '/probe//things/create', '//probe/echo',
                                  '///probe/echo', '/probe//', '//probe', '//healthz', '//metrics'])
@pytest.mark.parametrize('token', [ADMIN_TOKEN, ''])
def test_a_doubled_slash_anywhere_is_a_404_problem_never_a_redirect_or_the_merged_path(call, path, token):
    """werkzeug merges inner slashes with a 308 (an HTML body, a Location built from the Host header) and drops
    leading ones from request.path, which ran //probe/echo as /probe/echo. PATH_INFO is set as a server sets it:
    the test client would read a leading // as a host."""
    response = call('/unused', {}, token=token, headers={'Host': 'elsewhere.example'},
                    environ_overrides={'PATH_INFO': path})
    assert assert_problem(response, 404)['detail'].startswith('The path has a doubled slash: paths are matched as '
                                                              'sent, never merged.')
    assert 'Location' not in response.headers


@pytest.mark.parametrize('host', ['a..b', '.', 'a' * 64 + '.example', 'a' * 5000, 'exa mple'])
@pytest.mark.parametrize('fast_paths', [True, False])
def test_the_host_header_plays_no_part_in_routing(make_app, host, fast_paths):
    """werkzeug refuses a Host it cannot IDNA-encode with a 400 when it binds its URL map, which the fixed routes
    skip: a trailing slash, a 405 or a 404 answered otherwise than with a plain Host, FAST_PATHS=0 every request."""
    client = make_app(FAST_PATHS=fast_paths).test_client()
    cases = [('POST', '/probe/echo'), ('POST', '/probe/echo/'), ('GET', '/probe/echo'), ('POST', '/nosuch/x'),
             ('GET', '/healthz'), ('POST', '/healthz'), ('GET', '/healthz/')]

    def statuses(headers):
        return [client.open(path, method=method, json={'a': 1}, headers={**AUTH, **headers}).status_code
                for method, path in cases]
    assert statuses({'Host': host}) == statuses({}) == [200, 200, 405, 404, 200, 405, 200]


@pytest.mark.parametrize('path, status', [('/probe%2Fecho', 200), ('/probe/ech%6F', 200), ('/probe%2F%2Fecho', 404)])
def test_a_path_is_matched_with_its_percent_escapes_decoded_as_wsgi_hands_it_over(call, path, status):
    assert call(path, {'a': 1}).status_code == status


def test_a_404_of_an_unknown_module_says_it_does_not_exist(call):
    body = assert_problem(call('/no_such_module/x'), 404)
    assert body['detail'] == "No module 'no_such_module' is mounted. Actions are called as POST /<module>/<action>."
    long_name = assert_problem(call('/' + 'm' * 5000), 404)['detail']
    assert len(long_name) < 200
    root = assert_problem(call('/'), 404)['detail']
    assert root == 'The path names no module. Actions are called as POST /<module>/<action>.'


def test_a_404_tells_a_scoped_client_that_an_unknown_module_is_not_mounted(call):
    body = assert_problem(call('/no_such_module/x', token=SCOPED_TOKEN), 404)
    assert body['detail'].startswith("No module 'no_such_module' is mounted.")


def test_a_405_says_to_use_post(client):
    response = client.get('/probe/echo')
    assert assert_problem(response, 405)['detail'].startswith('Use POST:')
    assert response.headers['Allow'] == 'POST'


@pytest.mark.parametrize('method', ['OPTIONS', 'PUT', 'PATCH', 'DELETE'])
def test_a_405_says_to_use_post_whatever_the_method(client, method):
    response = client.open('/probe/echo', method=method, headers=AUTH)
    assert assert_problem(response, 405)['detail'].startswith('Use POST:')


def test_a_body_of_the_wrong_shape_says_so_plainly(call):
    assert assert_problem(call('/probe/echo', [1]), 422)['detail'] == 'The request body must be a JSON object.'


@pytest.mark.parametrize('body', [b' ', b'\n\t '])
def test_a_whitespace_json_body_is_a_400_not_an_empty_one(client, body):
    """JSON text is a value between optional whitespace (RFC 8259 section 2): whitespace alone is not JSON."""
    response = client.post('/probe/echo', data=body, headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                                                              'Content-Type': 'application/json'})
    assert assert_problem(response, 400)['detail'] == 'The request body is not valid JSON.'


@pytest.mark.parametrize('body', [b' ', b'\n\t '])
def test_a_whitespace_body_of_another_content_type_is_415(client, body):
    response = client.post('/probe/echo', data=body, headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                                                              'Content-Type': 'text/plain'})
    assert_problem(response, 415)


def test_an_empty_body_needs_no_content_type(client):
    response = client.post('/probe/echo', data=b'', headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert response.status_code == 200 and response.get_json() == {}


@pytest.mark.parametrize('case, status, errors', [
    ('unique', 409, {'code': ['already exists']}),
    ('foreign_key', 409, {'parent_id': ['must refer to an existing row (or is still referred to)']}),
    ('not_null', 422, {'label': ['must not be null']}),
    ('check', 422, {'quantity': ['fails the check things_quantity_check']}),
    ('exclusion', 409, {'during': ['conflicts with an existing row (bookings_during_excl)']}),
    ('deferred_foreign_key', 409, {'parent_id': ['must refer to an existing row (or is still referred to)']}),
    ('restrict', 409, {'parent_id': ['violates things_parent_id_fkey']}),
])
def test_a_constraint_violation_names_its_columns_from_the_catalog(call, case, status, errors):
    assert assert_problem(call('/probe/sqlstate', {'case': case}), status)['errors'] == errors


def test_a_duplicate_email_names_the_email_field(call):
    user = {'email': 'edges-duplicate@example.com', 'name': 'Ada'}
    call('/users/create', user)
    body = assert_problem(call('/users/create', user), 409)
    assert body['errors'] == {'email': ['already exists']} and body['constraint'] == 'users_email_key'


def test_a_unique_index_that_is_no_constraint_names_its_columns_too(call, database_url):
    run_sql(database_url, 'CREATE UNIQUE INDEX IF NOT EXISTS things_label_quantity ON probe.things (label, quantity) '
                          'WHERE quantity = 424242')
    try:
        call('/probe/things/create', {'code': 'edges-index-1', 'quantity': 424242})
        response = call('/probe/things/create', {'code': 'edges-index-2', 'quantity': 424242})
    finally:
        run_sql(database_url, 'DROP INDEX probe.things_label_quantity')
    assert assert_problem(response, 409)['errors'] == {'label': ['already exists'], 'quantity': ['already exists']}


def test_a_unique_expression_index_is_a_409_naming_the_constraint_without_errors(call, database_url):
    run_sql(database_url, 'CREATE UNIQUE INDEX IF NOT EXISTS things_lower_code ON probe.things (lower(code)) '
                          'WHERE quantity = 515151')
    try:
        assert call('/probe/things/create', {'code': 'Edges-Lower', 'quantity': 515151}).status_code == 201
        response = call('/probe/things/create', {'code': 'edges-lower', 'quantity': 515151})
    finally:
        run_sql(database_url, 'DROP INDEX probe.things_lower_code')
    body = assert_problem(response, 409)
    assert body['constraint'] == 'things_lower_code' and body['sqlstate'] == '23505' and 'errors' not in body
