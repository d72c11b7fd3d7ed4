"""Logs that always index: every line a real `make stack` writes (the app's access and library lines, gunicorn's
lines, nginx's access lines), the event filebeat makes of nginx's error log and of a line it cannot decode, all
fit one Elasticsearch index: no field is both an object and a value, or both text and a number, and each ECS
field has the type ECS gives it in the version the lines state."""
import ipaddress
import json
import logging
import re
from datetime import datetime

import pytest
import yaml

from lib.logs.formatter import ECS_VERSION
from lib.logs.formatter import dotted as flat_fields  # nested fields by dotted name
from settings import BASE_DIR
from tests.helpers import ADMIN_TOKEN, body_of_size, http_request

from .helpers import running_stack

pytestmark = pytest.mark.slow

# The type ECS 1.12.0 gives each field dbapi, nginx and filebeat's nginx-error input write (generated/csv/
# fields.csv of elastic/ecs at v1.12.0), as the JSON kind that indexes into it.
ECS_FIELDS = {
    '@timestamp': 'date', 'message': 'text', 'ecs.version': 'text', 'log.level': 'text', 'log.logger': 'text',
    'log.origin.file.name': 'text', 'log.origin.file.line': 'number', 'log.origin.function': 'text',
    'service.name': 'text', 'service.environment': 'text', 'service.node.name': 'text', 'service.type': 'text',
    'host.hostname': 'text', 'process.pid': 'number', 'process.thread.id': 'number', 'process.exit_code': 'number',
    'event.dataset': 'text', 'event.kind': 'text', 'event.outcome': 'text', 'event.duration': 'number',
    'http.request.id': 'text', 'http.request.method': 'text', 'http.request.bytes': 'number',
    'http.response.status_code': 'number', 'http.response.bytes': 'number', 'http.response.body.bytes': 'number',
    'url.path': 'text', 'url.query': 'text', 'url.original': 'text', 'client.ip': 'ip',
    'user.name': 'text', 'user_agent.original': 'text',
    'error.type': 'text', 'error.message': 'text', 'error.stack_trace': 'text', 'error.code': 'text',
}
# What a value of each JSON kind may index into.
INDEXES_INTO = {'text': {'text', 'date', 'ip'}, 'number': {'number'}, 'boolean': {'boolean'}}
STATEMENT_TIMEOUT_MS = 1000
BODY_LIMIT = 4096


def kind_of(value):
    """Return the JSON kind of a value: text, number, boolean, object, or None for null."""
    if value is None:
        return None
    if isinstance(value, dict):
        return 'object'
    if isinstance(value, bool):
        return 'boolean'
    return 'number' if isinstance(value, (int, float)) else 'text'


def add_to_mapping(mapping, event, source, prefix=''):
    """Record each field of event in mapping, {dotted name: {kind: source}}, as filebeat's expand_keys nests
    dotted keys: every prefix of a name is an object. An array counts as each of its values."""
    for key, value in event.items():
        *groups, last = f'{prefix}{key}'.split('.')
        for depth in range(1, len(groups) + 1):
            mapping.setdefault('.'.join(groups[:depth]), {}).setdefault('object', source)
        name = '.'.join([*groups, last])
        if isinstance(value, dict):
            mapping.setdefault(name, {}).setdefault('object', source)
            add_to_mapping(mapping, value, source, f'{name}.')
            continue
        for item in value if isinstance(value, list) else [value]:
            if kind_of(item) is not None:
                mapping.setdefault(name, {}).setdefault(kind_of(item), (source, item))


def source_of(line):
    """Name the source of a decoded line, for the test's messages."""
    fields = flat_fields(line)
    logger = fields.get('log.logger', '')
    if logger in ('dbapi.access', 'nginx.access', 'nginx.error'):
        return logger
    return 'gunicorn' if logger.startswith('gunicorn') else 'app library'


def nginx_error_event(config):
    """Return the event filebeat's nginx-error input makes of a line of nginx's error log: the dissect keys as
    text, the ones its convert processor names as numbers, and the fields it adds."""
    error_input = {entry['id']: entry for entry in config['filebeat.inputs']}['nginx-error']
    processors = [(name, options) for processor in error_input['processors'] for name, options in processor.items()]
    [tokenizer] = [options['tokenizer'] for name, options in processors if name == 'dissect']
    event = {key: 'text' for key in re.findall(r'%\{\+?([^}]+)\}', tokenizer)}
    for name, options in processors:
        if name == 'drop_fields':
            for field in options['fields']:
                event.pop(field, None)
        elif name == 'convert':
            event.update({field['from']: 1234 for field in options['fields']})
        elif name == 'add_fields':
            event.update({f"{options['target']}.{key}".lstrip('.'): value for key, value in options['fields'].items()})
    return {'@timestamp': '2026-11-29T17:35:21.000Z', **event}


def undecodable_event(raw, config):
    """Return the event filebeat's ndjson parser makes of a line that is not JSON (add_error_key), with the
    index label its processors add."""
    dbapi_input = {entry['id']: entry for entry in config['filebeat.inputs']}['dbapi']
    [added] = [processor['add_fields'] for processor in dbapi_input['processors'] if 'add_fields' in processor]
    return {'@timestamp': '2026-11-29T17:35:21.000Z', 'message': raw,
            'error': {'message': 'Error decoding JSON: invalid character', 'type': 'json'},
            added['target']: added['fields']}


def send_every_kind_of_request(stack):
    """Answers of every kind, from the app and from nginx, and a library line or two."""
    auth = {'Authorization': f'Bearer {ADMIN_TOKEN}', 'Content-Type': 'application/json',
            'User-Agent': 'mapping/1 caf\u00e9'}
    calls = [('/probe/echo?x=1', b'{"a": 1}'), ('/probe/missing', b''), ('/probe/crash', b''),
             ('/probe/sqlstate', b'{"case": "unique"}'), ('/probe/sqlstate', b'{"case": "syntax"}'),
             ('/probe/hold', b'{"seconds": 3}'), ('/probe/things/export', b''), ('/no/such/module', b''),
             ('/probe/echo', body_of_size(BODY_LIMIT + 1))]
    for path, body in calls:
        http_request(stack.port, 'POST', path, body, auth)
    http_request(stack.port, 'GET', '/probe/echo', headers=auth)
    http_request(stack.port, 'GET', '/metrics')
    http_request(stack.port, 'POST', '/probe/echo', b'{}', {'Authorization': 'Bearer wrong-token-123'})
    return http_request(stack.replica_ports[0], 'GET', '/metrics')


def library_lines(make_app, folder):
    """Return the lines libraries log through dbapi's handlers in this process: extras of their own, an exception
    with its chained trace, a message longer than a pipe write."""
    make_app(LOG_PATH=str(folder), LOG_LEVEL='DEBUG')
    library = logging.getLogger('some.library')
    try:
        library.info('pool %s', 'ready', extra={'metric': 'pool.size', 'value': 3, 'retry': {'after': 1.5}})
        try:
            raise KeyError('the first failure')
        except KeyError as exc:
            raise ValueError('the second failure') from exc
    except ValueError:
        library.exception('it failed', extra={'flag': True, 'http.request.bytes': 12})
    library.warning('x' * 10000)
    make_app()  # logging back as the other tests have it
    return [json.loads(raw) for path in sorted(folder.glob('*.ndjson')) for raw in path.read_bytes().splitlines()]


def test_every_source_indexes_into_one_mapping(tmp_path_factory, topology_database_url, make_app, tmp_path):
    with running_stack(tmp_path_factory, topology_database_url, replicas=2, LOG_LEVEL='DEBUG',
                       DB_STATEMENT_TIMEOUT_MS=str(STATEMENT_TIMEOUT_MS), MAX_CONTENT_LENGTH=str(BODY_LIMIT)) as stack:
        send_every_kind_of_request(stack)
    raw_lines = stack.log_path.read_bytes().splitlines()
    lines = [json.loads(raw) for raw in raw_lines if raw.startswith(b'{')] + library_lines(make_app, tmp_path / 'logs')
    sources = {source_of(line) for line in lines}
    assert sources == {'dbapi.access', 'nginx.access', 'gunicorn', 'app library'}, sources
    assert any('labels.line_part' in flat_fields(line) for line in lines)  # pieces of a line too long for a pipe
    config = yaml.safe_load((BASE_DIR / 'filebeat' / 'filebeat.yml').read_text())
    plain = next(raw.decode(errors='replace') for raw in raw_lines if not raw.startswith(b'{'))
    events = [(source_of(line), line) for line in lines] + [
        ('nginx.error', nginx_error_event(config)), ('undecodable line', undecodable_event(plain, config))]
    mapping = {}
    for source, event in events:
        add_to_mapping(mapping, event, source)
    conflicts = {name: kinds for name, kinds in mapping.items() if len(kinds) > 1}
    assert not conflicts, conflicts
    for name, kinds in mapping.items():
        [(kind, (source, example))] = kinds.items() if 'object' not in kinds else [('object', (None, None))]
        if kind == 'object' or name.startswith('nginx.'):  # nginx.*: nginx's own fields, outside ECS
            continue
        if name.startswith('labels.'):
            assert kind == 'text', (name, source, example)  # ECS labels are keywords
            continue
        assert name in ECS_FIELDS, f'{name} (from {source}) is not a field of ECS {ECS_VERSION} dbapi writes'
        assert ECS_FIELDS[name] in INDEXES_INTO[kind], (name, source, example)
    for line in lines:
        fields = flat_fields(line)
        assert fields['ecs.version'] == ECS_VERSION
        ipaddress.ip_address(fields.get('client.ip', '127.0.0.1'))
        datetime.fromisoformat(fields['@timestamp'].replace('Z', '+00:00'))
