"""The deployment files agree with each other and with the app: one template, the same limits, the
same health endpoints, and the image renders the template as the native stack does."""
import json
import logging
import os
import re
import subprocess

import pytest

import settings

from ops import healthcheck, kustomize, nginx, pgbouncer
from ops.render import TemplateError, fill_template, program
from ops.stack import (MAX_REPLICAS, Child, Stack, StackConfig, StackError, nginx_environment, replica_environment,
                       report_exit, server_budgets, workers_per_replica)

yaml = pytest.importorskip('yaml', reason='PyYAML comes with requirements-lint.txt (make lint)')

BASE_DIR = nginx.BASE_DIR
NATIVE = dict(DBAPI_UPSTREAMS='127.0.0.1:8001 127.0.0.1:8002', NGINX_LISTEN='127.0.0.1:8000')


def rendered(**environment):
    """Render the nginx template from a clean environment plus environment."""
    return nginx.render({'PATH': os.environ['PATH'], **NATIVE, **environment})


def directive(text, name):
    """Return the values of every `name value;` directive in an nginx config."""
    return re.findall(rf'^\s*{name} ([^;]*);', text, re.MULTILINE)


def test_nginx_takes_its_limits_from_the_app_settings():
    text = rendered(MAX_CONTENT_LENGTH='4096', DB_STATEMENT_TIMEOUT_MS='30000')
    assert directive(text, 'client_max_body_size') == ['4096']
    assert directive(text, 'proxy_read_timeout') == directive(text, 'proxy_send_timeout') == ['40000ms']
    assert directive(text, 'listen') == ['127.0.0.1:8000']


def test_nginx_defaults_are_the_app_defaults():
    text = rendered()
    assert directive(text, 'client_max_body_size') == ['1048576']
    assert directive(text, 'proxy_read_timeout') == ['40000ms']


def test_nginx_waits_past_the_pool_wait_and_the_request_deadline():
    assert directive(rendered(REQUEST_DEADLINE_MS='20000', DB_POOL_TIMEOUT_MS='3000'), 'proxy_read_timeout') == ['28000ms']
    assert directive(rendered(DB_STATEMENT_TIMEOUT_MS='0'), 'proxy_read_timeout') == ['40000ms']


def test_no_deadline_and_no_statement_timeout_gives_nginx_a_minute():
    assert directive(rendered(REQUEST_DEADLINE_MS='0', DB_STATEMENT_TIMEOUT_MS='0'), 'proxy_read_timeout') == ['60s']


def test_each_replica_is_one_upstream_server_never_rested_for_failing():
    servers = re.findall(r'server (\S+) max_fails=0;', rendered())
    assert servers == ['127.0.0.1:8001', '127.0.0.1:8002']


def test_a_resolver_makes_nginx_follow_the_replica_name():
    text = rendered(DBAPI_UPSTREAMS='api:8000', NGINX_RESOLVER='127.0.0.11')
    assert directive(text, 'resolver') == ['127.0.0.11 valid=5s ipv6=off']
    assert 'server api:8000 resolve max_fails=0' in text


def test_without_a_resolver_names_resolve_once():
    text = rendered()
    assert not directive(text, 'resolver') and ' resolve ' not in text


@pytest.mark.parametrize('environment, complaint', [
    (dict(DBAPI_UPSTREAMS=''), 'DBAPI_UPSTREAMS'),
    (dict(MAX_CONTENT_LENGTH='1mb'), 'MAX_CONTENT_LENGTH'),
    (dict(DB_STATEMENT_TIMEOUT_MS='-1'), 'DB_STATEMENT_TIMEOUT_MS'),
])
def test_bad_settings_stop_nginx_from_starting(environment, complaint):
    with pytest.raises(TemplateError, match=complaint):
        rendered(**environment)


@pytest.mark.parametrize('timeout', ['1500ms', '90s', '1m30s', '2h', '10d', '2w'])
def test_a_proxy_timeout_in_any_of_nginxs_units_is_taken(timeout):
    """nginx's time units (its documentation, "Syntax"; M and y are past what a proxy timeout holds, 24.8 days): 10d
    and 2w were refused as having no unit (trial Q)."""
    assert directive(rendered(NGINX_PROXY_TIMEOUT=timeout), 'proxy_read_timeout') == [timeout]


def test_the_image_renders_the_template_as_the_native_stack_does():
    """The image's entrypoint: source the envsh, then envsubst with every defined variable's name."""
    environment = nginx.derived_environment({'PATH': os.environ['PATH'], **NATIVE})
    names = ' '.join(f'${{{name}}}' for name in environment)
    image = subprocess.run([program('envsubst'), names], input=nginx.TEMPLATE.read_text(), env=environment,
                           capture_output=True, text=True, check=True).stdout
    assert image == rendered()


def test_the_template_uses_only_braced_placeholders():
    """envsubst would also fill $NAME; the template keeps capitals for its own ${NAME} placeholders."""
    assert not re.search(r'\$[A-Z]', nginx.TEMPLATE.read_text())


def test_fill_template_names_what_is_missing():
    assert fill_template('a ${X} ${lower} $y', {'X': '1'}) == 'a 1 ${lower} $y'
    with pytest.raises(TemplateError, match='f.conf: no value for X, Y'):
        fill_template('${Y} ${X}', {}, 'f.conf')


def test_pgbouncer_config_for_the_native_stack(tmp_path):
    argv, dsn, _ = pgbouncer.write_config(tmp_path / 'bouncer', 'host=/sockets port=5433 dbname=app user=alice',
                                       6543, 2500)
    ini = (tmp_path / 'bouncer' / 'pgbouncer.ini').read_text()
    assert "* = host=/sockets port=5433 connect_query='SET statement_timeout = 2500'" in ini
    assert 'pool_mode = transaction' in ini and 'listen_port = 6543' in ini
    assert 'server_lifetime = 300\n' in ini  # a server session's settings renewed within 5 minutes (trial BI)
    assert 'options' in ini.split('ignore_startup_parameters =')[1].split('\n')[0]
    parts = dict(item.split('=', 1) for item in dsn.split())
    assert (parts['host'], parts['port'], parts['dbname'], parts['user']) == ('127.0.0.1', '6543', 'app', 'alice')
    assert (tmp_path / 'bouncer' / 'users.txt').read_text() == pgbouncer.auth_line('alice', parts['password'])
    assert argv[-1] == str(tmp_path / 'bouncer' / 'pgbouncer.ini')


@pytest.mark.parametrize('replicas', [1, 2, 5])
def test_the_stacks_pgbouncer_pool_is_sized_for_its_replicas(tmp_path, replicas):
    config = StackConfig(port=20000, replicas=replicas, replica_base_port=20001, pgbouncer=True, pgbouncer_port=20100)
    Stack(config, tmp_path).write_pgbouncer_config('host=/sockets port=5433 dbname=app user=alice')
    ini = (tmp_path / 'pgbouncer' / 'pgbouncer.ini').read_text()
    pool = pgbouncer.settings_pool(replicas)
    assert f"default_pool_size = {pool['PGBOUNCER_POOL_SIZE']}\n" in ini
    assert f"max_client_conn = {pool['PGBOUNCER_MAX_CLIENT_CONN']}\n" in ini


def test_the_stacks_pgbouncer_leaves_room_for_the_named_databases_on_its_server(tmp_path, monkeypatch):
    """pgbouncer's pool took 95 of a server's 95 connections, and a named database there 90 more (trial AT)."""
    monkeypatch.setattr(settings, 'DB_POOL_MAX', 10)
    config = StackConfig(port=20000, replicas=3, replica_base_port=20001, pgbouncer=True, pgbouncer_port=20100)
    stack = Stack(config, tmp_path)
    stack.workers = 3
    server, elsewhere = ('2026-12-02 10:00', '5432'), ('2026-12-01 09:00', '5433')
    assert stack.pgbouncer_connections((server, 95), [(server, 95), (elsewhere, 95)]) == 95 - 3 * 3 * 10
    assert server_budgets((server, 95), [(server, 95), (elsewhere, 95)], True) == [(94, 1), (95, 1)]
    assert server_budgets((server, 95), [(server, 95)], False) == [(95, 2)]
    stack.write_pgbouncer_config('host=/sockets port=5433 dbname=app user=alice', 5)
    assert 'default_pool_size = 5\n' in (tmp_path / 'pgbouncer' / 'pgbouncer.ini').read_text()


def test_the_stacks_pgbouncer_cuts_an_idle_transaction_at_the_request_deadline(tmp_path, monkeypatch):
    """A statement timeout of 0 leaves the deadline alone to bound a request: pgbouncer cuts at it, not never."""
    monkeypatch.setattr(pgbouncer.settings, 'REQUEST_DEADLINE_MS', 20000)
    monkeypatch.setattr(pgbouncer.settings, 'DB_STATEMENT_TIMEOUT_MS', 0)
    config = StackConfig(port=20000, replicas=3, replica_base_port=20001, pgbouncer=True, pgbouncer_port=20100)
    Stack(config, tmp_path).write_pgbouncer_config('host=/sockets port=5433 dbname=app user=alice')
    ini = (tmp_path / 'pgbouncer' / 'pgbouncer.ini').read_text()
    assert 'idle_transaction_timeout = 20\n' in ini and "SET statement_timeout = 0'" in ini


def test_pgbouncer_keeps_a_real_password():
    server = pgbouncer.server_parts("host=db user=app password='p w'")
    assert server['password'] == 'p w' and server['port'] == '5432'


def test_replicas_trust_one_hop_and_use_the_given_database(monkeypatch):
    monkeypatch.setenv('PROMETHEUS_MULTIPROC_DIR', '/tmp/shared')
    env = replica_environment(2, 8102, 'host=127.0.0.1 port=6432 dbname=dbapi', '/tmp/stack', 3)
    assert env['BIND'] == '127.0.0.1:8102' and env['TRUSTED_PROXY_HOPS'] == '1'
    assert env['DATABASE_URL'].endswith('dbname=dbapi') and env['DEFAULT_DB_HOST'] == ''
    assert env['PROMETHEUS_MULTIPROC_DIR'] == '/tmp/stack/metrics-2'  # one per replica, never shared
    assert env['WEB_CONCURRENCY'] == '3'


def eight_cores_of_workers(monkeypatch, set_by_hand):
    """Give the replicas 17 workers (2 x 8 cores + 1) of 2 connections, WEB_CONCURRENCY set by hand or the default."""
    monkeypatch.setattr(settings, 'WEB_CONCURRENCY', 17)
    monkeypatch.setattr(settings, 'DB_POOL_MAX', 2)
    if set_by_hand:
        monkeypatch.setenv('WEB_CONCURRENCY', '17')
    else:
        monkeypatch.delenv('WEB_CONCURRENCY', raising=False)


@pytest.mark.parametrize('set_by_hand, replicas, budgets, workers', [
    (False, 3, [(95, 1)], 15), (False, 3, [(200, 1)], 17), (True, 3, [(200, 1)], 17),
    (False, 1, [(95, 1)], 17),  # a lone replica and its stand-in: 2 x 17 x 2 = 68
    (False, 1, [(60, 1)], 15),
    (False, 3, [(95, 2)], 7),  # a named database on the same server: twice the pools (trial AS)
    (False, 3, [(200, 1), (40, 1)], 6),  # one on a server of its own that takes fewer
    (True, 3, [], 17)])  # every database behind pgbouncer
def test_replicas_get_the_workers_postgresql_can_take(monkeypatch, set_by_hand, replicas, budgets, workers):
    """2 connections per worker and database: 17 workers (2 x 8 cores + 1) by default, fewer when a server takes
    fewer connections; the stand-in counts only beside a lone replica, the only one that has one (trial AS)."""
    eight_cores_of_workers(monkeypatch, set_by_hand)
    assert workers_per_replica(replicas, budgets) == workers


@pytest.mark.parametrize('set_by_hand, replicas, budgets, refusal', [
    (True, 3, [(95, 1)], "3 replicas, each with 17 workers (WEB_CONCURRENCY) of 2 connections (DB_POOL_MAX), would "
                         'open 102 connections; PostgreSQL takes 95 (its max_connections less 5 for others): lower '
                         'REPLICAS, WEB_CONCURRENCY or DB_POOL_MAX, or set STACK_PGBOUNCER=1'),
    (True, 1, [(95, 2)], "1 replica and a rolling restart's stand-in, each with 17 workers (WEB_CONCURRENCY) of 2 "
                         'connections (DB_POOL_MAX) to each of 2 databases there, would open 136 connections; '
                         'PostgreSQL takes 95 (its max_connections less 5 for others): lower REPLICAS, WEB_CONCURRENCY '
                         'or DB_POOL_MAX, or set STACK_PGBOUNCER=1'),
    # Not one worker fits: WEB_CONCURRENCY, set or not, is no way out (trial AS).
    (False, 48, [(95, 1)], 'not even 1 worker per replica fits: 48 replicas, each with 1 worker of 2 connections '
                           '(DB_POOL_MAX), would open 96 connections; PostgreSQL takes 95 (its max_connections less 5 '
                           'for others): at most 47 replicas fit; lower REPLICAS or DB_POOL_MAX, or set '
                           'STACK_PGBOUNCER=1'),
    (False, 1, [(3, 1)], "not even 1 worker per replica fits: 1 replica and a rolling restart's stand-in, each with 1 "
                         'worker of 2 connections (DB_POOL_MAX), would open 4 connections; PostgreSQL takes 3 (its '
                         'max_connections less 5 for others): not even 1 replica fits; lower DB_POOL_MAX to 1 or '
                         'less, or set STACK_PGBOUNCER=1')])
def test_workers_postgresql_cannot_take_stop_the_stack(monkeypatch, set_by_hand, replicas, budgets, refusal):
    """Workers set by hand are never lowered unsaid, and not one worker per replica is no stack."""
    eight_cores_of_workers(monkeypatch, set_by_hand)
    with pytest.raises(StackError) as refused:
        workers_per_replica(replicas, budgets)
    assert str(refused.value) == refusal


def test_nginx_of_the_stack_points_at_every_replica():
    config = StackConfig(port=9000, replicas=3, replica_base_port=9001, pgbouncer=False, pgbouncer_port=6432)
    env = nginx_environment(config)
    assert env['DBAPI_UPSTREAMS'] == '127.0.0.1:9001 127.0.0.1:9002 127.0.0.1:9003'
    assert env['NGINX_LISTEN'] == '127.0.0.1:9000'


def test_nginx_takes_the_most_replicas_the_stack_allows(tmp_path):
    """Each upstream server takes room in the shared zone: the stack's most replicas must fit, or nginx stops."""
    most = MAX_REPLICAS
    config = StackConfig(port=9000, replicas=most, replica_base_port=9001, pgbouncer=False, pgbouncer_port=6432)
    main_config = nginx.write_config(tmp_path, {'PATH': os.environ['PATH'], **nginx_environment(config)})
    checked = subprocess.run(nginx.command(main_config, test=True), capture_output=True, text=True)
    assert checked.returncode == 0 and '[warn]' not in checked.stderr, checked.stderr
    assert len(re.findall(r'server 127.0.0.1:\d+ max_fails=0;', (tmp_path / 'dbapi.conf').read_text())) == most


@pytest.mark.parametrize('environment, port', [({}, '8000'), ({'PORT': '9000'}, '9000'),
                                               ({'BIND': '0.0.0.0:8080', 'PORT': '9000'}, '8080')])
def test_healthcheck_asks_the_port_gunicorn_binds(monkeypatch, environment, port):
    for name in ('BIND', 'PORT'):
        monkeypatch.delenv(name, raising=False)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    assert healthcheck.local_port() == port


def load_yaml_documents(relative):
    """Return every YAML document of a project file."""
    return list(yaml.safe_load_all((BASE_DIR / relative).read_text()))


def test_compose_gives_nginx_and_the_api_the_same_limits():
    services = load_yaml_documents('docker-compose.yml')[0]['services']
    for name in ('MAX_CONTENT_LENGTH', 'DB_STATEMENT_TIMEOUT_MS'):
        assert services['nginx']['environment'][name] == services['api']['environment'][name]
    assert services['api']['environment']['TRUSTED_PROXY_HOPS'] == '1'
    assert services['api']['depends_on']['migrate']['condition'] == 'service_completed_successfully'
    assert services['pgbouncer']['profiles'] == ['pgbouncer']
    assert 'ports' not in services['api'] and services['nginx']['ports'] == ['${EXPOSED_PORT:-8000}:8080']


def kubernetes_objects():
    """Return every object `kubectl apply -k k8s/` applies by (kind, name), a generated ConfigMap without its hash."""
    try:
        documents = kustomize.objects()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    objects = {}
    for document in documents:
        name = document['metadata']['name']
        objects[document['kind'], name.rsplit('-', 1)[0] if document['kind'] == 'ConfigMap' else name] = document
    return objects


def test_kubernetes_probes_and_security():
    pod = kubernetes_objects()['Deployment', 'dbapi-api']['spec']['template']['spec']
    container = pod['containers'][0]
    # A shared database's outage must not take every pod out of the Service (trial K), nor restart pods in a loop
    # (trial M): started and ready while it serves.
    assert container['readinessProbe']['httpGet']['path'] == '/healthz'
    assert container['startupProbe']['httpGet']['path'] == '/healthz'
    assert container['livenessProbe']['httpGet']['path'] == '/healthz'
    assert container['lifecycle']['preStop']['exec']['command'] == ['sleep', '10']
    # nginx drains too before its stop (trial K: it had no pause while the endpoints caught up)
    nginx = kubernetes_objects()['Deployment', 'dbapi-nginx']['spec']['template']['spec']['containers'][0]
    assert nginx['lifecycle']['preStop']['exec']['command'] == ['sleep', '5']
    assert pod['securityContext']['runAsNonRoot'] is True
    assert container['securityContext']['allowPrivilegeEscalation'] is False


def test_kubernetes_connection_budget_fits_the_documented_max_connections():
    objects = kubernetes_objects()
    config = objects['ConfigMap', 'dbapi-config']['data']
    most = objects['HorizontalPodAutoscaler', 'dbapi-api']['spec']['maxReplicas']
    budget = most * int(config['WEB_CONCURRENCY']) * int(config['DB_POOL_MAX'])
    assert budget == 40 and budget < 100  # PostgreSQL's default max_connections


def test_the_image_gets_what_the_healthcheck_and_the_app_need():
    allowed = (BASE_DIR / '.dockerignore').read_text()
    for needed in ('app.py', 'settings.py', 'gunicorn.conf.py', 'manage.py', 'lib/', 'modules/', 'migrations/',
                   'ops/healthcheck.py'):
        assert f'!{needed}\n' in allowed
    assert 'CMD ["python", "-m", "ops.healthcheck"]' in (BASE_DIR / 'Dockerfile').read_text()


def test_the_swarm_stack_file_keeps_only_what_swarm_reads(tmp_path):
    from ops import lint, swarm
    project = load_yaml_documents('docker-compose.yml')[0]
    stack = swarm.swarm_stack(project)
    assert stack['version'] == '3.8' and 'name' not in stack
    for service in stack['services'].values():
        assert not set(service) & {'build', 'depends_on', 'profiles', 'restart'}
        assert all(isinstance(path, str) for path in service.get('env_file', []))
    assert stack['services']['api']['deploy']['endpoint_mode'] == 'dnsrr'
    stack_file = tmp_path / 'dbapi-stack.json'
    stack_file.write_text(json.dumps(stack))
    assert lint.check_compose(stack_file).ok


def map_rules(text, variable):
    """Return (regex, value) of each pattern of the nginx map that sets variable, in order, and its default."""
    body = re.search(rf'^map "[^"]*" \${variable} {{\n(.*?)^}}', text, re.MULTILINE | re.DOTALL)[1]
    rules = re.findall(r'^\s*"~(.*)" (\S+);$', body, re.MULTILINE)
    return [(pattern.replace('\\\\', '\\'), value) for pattern, value in rules], re.search(r'default (\S+);', body)[1]


# The key: [$request_completion] method $status $sent_http_content_length $body_bytes_sent |$upstream_response_length
@pytest.mark.parametrize('key, outcome', [
    ('[OK] POST 200 85 85 |85', 'success'),
    ('[OK] POST 200 85 110 |85', 'success'),  # after nginx's "100 Continue", which $body_bytes_sent counts
    ('[OK] POST 200 85 85 |0, 85', 'success'),  # a second replica answered after a failed connect
    ('[OK] POST 200 1000 10 |10', 'failure'),  # a body that ended before its Content-Length
    ('[OK] POST 200 1000 35 |10', 'failure'),  # the same after a "100 Continue"
    ('[OK] HEAD 200 1000 0 |0', 'success'),
    ('[] POST 200 - 4000000 |4000000', 'failure'),  # an answer nginx could not finish sending
    ('[] POST 301 - 0 |0', 'failure'),
    ('[] POST 408 - 0 |', 'success'),  # nginx's own 408: the request did not arrive, nothing was sent
    ('[] POST 400  0 |', 'failure'),  # the client left while it sent its body: nothing was answered
    ('[] POST 400  25 |', 'failure'),  # the same after nginx's "100 Continue"
    ('[OK] POST 400 369 369 |', 'success'),  # nginx's own 400 problem, sent whole
    ('[OK] POST 404 120 120 |120', 'success'),
    ('[] POST 499 - 0 |', 'failure'),
    ('[OK] POST 502 200 200 |', 'failure'),
])
def test_nginx_logs_the_outcome_the_app_would(key, outcome):
    rules, default = map_rules(rendered(), 'dbapi_event_outcome')
    assert next((value for pattern, value in rules if re.search(pattern, key)), default) == outcome


# The key: [$request_completion] $sent_http_content_length |$upstream_response_length
@pytest.mark.parametrize('key, logged', [
    ('[OK] 12 |12', '12'),  # a replica's answer, read and sent whole
    ('[OK] 12 |0, 12', '12'),  # the same from a second replica
    ('[OK] 355 |', '355'),  # nginx's own answer, sent whole
    ('[OK] 1000 |10', '$body_bytes_sent'),  # a replica that died half-way
    ('[] 355 |', '$body_bytes_sent'),  # an answer the client did not take whole
    ('[OK] - |4000', '$body_bytes_sent'),  # a stream: its chunk framing is counted
])
def test_nginx_logs_the_body_bytes_without_its_100_continue(key, logged):
    rules, default = map_rules(rendered(), 'dbapi_body_bytes')
    # PCRE's named groups and back references as Python's re spells them
    patterns = [re.sub(r'\\k<(\w+)>', r'(?P=\1)', pattern.replace('(?<', '(?P<')) for pattern, _ in rules]
    match = next((found for pattern in patterns if (found := re.search(pattern, key))), None)
    assert (match['dbapi_whole_body'] if match else default) == logged


@pytest.mark.parametrize('code, level', [(0, logging.WARNING), (1, logging.ERROR), (-9, logging.ERROR)])
def test_a_replica_that_exited_is_logged_as_an_error_unless_it_was_stopped_gracefully(caplog, code, level):
    """Exit code 0 is a stop someone else asked of it (a SIGTERM), no crash: it was an error line (trial BP)."""
    child = Child('replica 2 (port 8002)', ['true'], {})
    with caplog.at_level(logging.INFO, logger='dbapi.stack'):
        report_exit(child, code)
    assert [(record.levelno, record.getMessage()) for record in caplog.records] == [
        (level, f'replica 2 (port 8002) exited with code {code}; restarting it in 1 s')]
