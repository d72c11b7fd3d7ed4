"""Problem details at every edge: what nginx and gunicorn decide before the app, how nginx's error log is read,
and the error bodies that say what to do (CONTRACT sections 1 and 3)."""
import os
import re

import pytest

from ops import nginx
from settings import BASE_DIR

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


def test_gunicorns_limits_sit_above_nginxs_so_gunicorn_never_refuses_what_nginx_passes():
    count, size = nginx_header_buffer()
    # The request line nginx passes is at most its buffer less CRLF; each header likewise, plus what nginx
    # appends to X-Forwarded-For (", " and an IPv6 address); the count is bounded by the buffers' bytes.
    assert gunicorn_setting('limit_request_line') >= size - 2
    assert gunicorn_setting('limit_request_field_size') >= size + 2 + 41
    assert gunicorn_setting('limit_request_fields') >= (count * size) // len('a:\r\n')
    assert gunicorn_setting('limit_request_line') <= 8190  # gunicorn's most: above, it silently uses 8190


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
