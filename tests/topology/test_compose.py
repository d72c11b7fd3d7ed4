"""docker-compose.yml and docker-compose.elk.yml, offline: the documented .env starts the API, every service's log
rotates, each service has one restart policy, the elk profile stays on its own network, the monitoring profile
runs Prometheus with the alert rules, and pgbouncer's settings are the ones derived from the connection budget."""
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
from dotenv import dotenv_values

from ops import pgbouncer, swarm
from tests.topology.helpers import NGINX_STOP_MARGIN_SECONDS, nginx_longest_wait_seconds, seconds_of

yaml = pytest.importorskip('yaml', reason='PyYAML comes with requirements-lint.txt (make lint)')

BASE_DIR = pgbouncer.BASE_DIR
ENV_EXAMPLE = BASE_DIR / 'env' / 'production' / '.env.example'
# ${NAME:-default} and ${NAME}, as compose interpolates them.
INTERPOLATION = re.compile(r'\$\{([A-Z0-9_]+)(?::-([^}]*))?\}')


def compose_file(name='docker-compose.yml'):
    """Return a compose file as YAML reads it (anchors and merge keys resolved)."""
    return yaml.safe_load((BASE_DIR / name).read_text())


def interpolated(value, variables=None):
    """Return a compose value with ${NAME:-default} filled from variables, else from its default."""
    return INTERPOLATION.sub(lambda match: (variables or {}).get(match[1], match[2] or ''), str(value))


def container_environment(service, tmp_path, env_file=ENV_EXAMPLE):
    """Return the environment compose gives a service's container: its env_file, then `environment:` over it.

    The container's paths (secrets under /run/secrets, LOG_PATH's volume) are swapped for files in tmp_path.
    """
    environment = {**dotenv_values(env_file), **{key: interpolated(value) for key, value in service['environment'].items()}}
    (tmp_path / 'db_password').write_text('a-long-random-password\n')
    (tmp_path / 'bearer_tokens').write_text(json.dumps({'billing': {'token': 'a-long-random-token-0123456789'}}))
    (tmp_path / 'logs').mkdir(exist_ok=True)
    swapped = {'/run/secrets/': f'{tmp_path}/', '/var/log/dbapi': str(tmp_path / 'logs')}
    for key, value in environment.items():
        for container_path, host_path in swapped.items():
            if value.startswith(container_path):
                environment[key] = value.replace(container_path, host_path, 1)
    return environment


def settings_start(environment):
    """Import settings in a fresh interpreter with exactly this environment (and PATH); return the process."""
    return subprocess.run([sys.executable, '-c', 'import settings'], cwd=BASE_DIR, capture_output=True, text=True,
                          env={'PATH': os.environ['PATH'], **environment}, timeout=60)


@pytest.mark.parametrize('name', ['api', 'migrate'])
def test_the_documented_env_file_starts_the_api_and_the_migration(tmp_path, name):
    """docs/deployment.md: copy .env.example to env/production/.env, make the secrets, docker compose up."""
    environment = container_environment(compose_file()['services'][name], tmp_path)
    assert 'DEFAULT_DB_PASS' not in environment and environment['DEFAULT_DB_PASS_FILE'].startswith(str(tmp_path))
    started = settings_start(environment)
    assert started.returncode == 0, started.stderr


def test_a_password_beside_its_file_still_stops_the_start(tmp_path):
    """What the old .env.example did (DEFAULT_DB_PASS beside compose's DEFAULT_DB_PASS_FILE) is caught here."""
    old_example = tmp_path / 'old.env'
    old_example.write_text(ENV_EXAMPLE.read_text() + 'DEFAULT_DB_PASS=change-me\n')
    started = settings_start(container_environment(compose_file()['services']['api'], tmp_path, old_example))
    assert started.returncode != 0 and 'DEFAULT_DB_PASS or DEFAULT_DB_PASS_FILE' in started.stderr


def own_services(file):
    """Return {name: service} of the services file defines, not those it only adds to (the elk file's api)."""
    return {name: service for name, service in compose_file(file)['services'].items()
            if 'image' in service or 'build' in service}


def test_only_the_elk_profile_has_the_api_write_log_files():
    """Written always, with nothing to read or prune them: up to 400 MiB a process beside Docker's copy (trial BH)."""
    api, added = compose_file()['services']['api'], compose_file('docker-compose.elk.yml')['services']['api']
    assert 'LOG_PATH' not in api['environment'] and 'volumes' not in api
    assert added == {'environment': {'LOG_PATH': '/var/log/dbapi'}, 'volumes': ['dbapi-logs:/var/log/dbapi']}


@pytest.mark.parametrize('file', ['docker-compose.yml', 'docker-compose.elk.yml'])
def test_every_service_rotates_its_log(file):
    for name, service in own_services(file).items():
        logging = service.get('logging', {})
        assert logging.get('driver') == 'json-file', f'{name} logs without rotation'
        assert re.fullmatch(r'\d+m', logging['options']['max-size']) and int(logging['options']['max-file']) > 1


@pytest.mark.parametrize('file', ['docker-compose.yml', 'docker-compose.elk.yml'])
def test_every_service_has_one_restart_policy(file):
    for name, service in own_services(file).items():
        assert 'restart_policy' not in service.get('deploy', {}), f'{name}: deploy.restart_policy beside restart'
        assert service['restart'] in ('unless-stopped', 'on-failure:5'), name


def test_swarm_gets_the_same_restart_policies():
    services = swarm.swarm_stack(compose_file())['services']
    assert services['migrate']['deploy']['restart_policy'] == {'condition': 'on-failure', 'max_attempts': 5}
    assert services['api']['deploy']['restart_policy'] == {'condition': 'any'}
    assert services['api']['deploy']['replicas'] == 3


def test_the_migration_has_no_health_check_for_swarm_to_replace_it_on():
    """It inherited the image's /healthz check, which it never serves: Swarm would call it unhealthy about 45 s in
    and replace it mid-migration (trial BH)."""
    assert swarm.swarm_stack(compose_file())['services']['migrate']['healthcheck'] == {'disable': True}


@pytest.mark.parametrize('file', ['docker-compose.yml', 'docker-compose.elk.yml'])
def test_every_shell_health_check_runs_in_the_foreground(file):
    """Elasticsearch's unquoted `...?a=b&timeout=5s` ran curl in the background: the check passed whatever the
    server said (trial BH)."""
    for name, service in compose_file(file)['services'].items():
        test = service.get('healthcheck', {}).get('test', [])
        if test[:1] == ['CMD-SHELL']:
            words = list(shlex.shlex(test[1], posix=True, punctuation_chars=True))
            assert '&' not in words, f'{name}: {test[1]}'


def test_the_databases_health_check_asks_over_tcp_as_the_services_connect():
    """Over its socket, it answered while the image's first-start server listened on that alone (trial BH)."""
    assert ' -h 127.0.0.1 ' in compose_file()['services']['db']['healthcheck']['test'][1]


def test_the_elk_profile_keeps_to_its_own_network():
    elk = compose_file('docker-compose.elk.yml')
    services = elk['services']
    assert elk['networks']['elk'] == {'internal': True}
    assert services['elasticsearch']['networks'] == services['filebeat']['networks'] == ['elk']
    assert 'ports' not in services['elasticsearch'] and 'ports' not in services['filebeat']
    assert services['kibana']['networks'] == ['elk', 'elk-ui']
    assert all(port.startswith('127.0.0.1:') for port in services['kibana']['ports'])
    # No service of the application joins it: they all stay on compose's default network.
    assert not any('networks' in service for service in compose_file()['services'].values())


def test_the_monitoring_profile_runs_prometheus_with_the_alert_rules():
    prometheus = compose_file()['services']['prometheus']
    assert prometheus['profiles'] == ['monitoring']
    assert './monitoring:/etc/prometheus:ro' in prometheus['volumes']
    assert '--config.file=/etc/prometheus/prometheus.yml' in prometheus['command']
    assert all(port.startswith('127.0.0.1:') for port in prometheus['ports'])
    config = yaml.safe_load((BASE_DIR / 'monitoring' / 'prometheus.yml').read_text())
    assert config['rule_files'] == ['alerts.yml']
    job, = config['scrape_configs']
    assert job['job_name'] == 'dbapi'  # the alerts select job="dbapi"
    assert job['dns_sd_configs'][0]['names'] == ['api'] and job['dns_sd_configs'][0]['port'] == 8000


# --- pgbouncer: settings derived from the connection budget, waits within the request deadline. ---

def test_pgbouncer_gives_every_transaction_the_replicas_can_run_a_server_connection():
    settings = pgbouncer.pool_settings(replicas=3, workers=3, pool_max=2, request_bound_ms=30000,
                                       pool_timeout_ms=5000)
    assert settings == dict(PGBOUNCER_POOL_SIZE='18', PGBOUNCER_MAX_CLIENT_CONN='136',
                            PGBOUNCER_QUERY_WAIT_TIMEOUT='5', PGBOUNCER_IDLE_TRANSACTION_TIMEOUT='30')
    deadline = 30  # REQUEST_DEADLINE_MS's default, in seconds
    assert float(settings['PGBOUNCER_QUERY_WAIT_TIMEOUT']) < deadline
    assert float(settings['PGBOUNCER_IDLE_TRANSACTION_TIMEOUT']) == deadline


def test_pgbouncer_never_asks_postgresql_for_more_than_it_has():
    settings = pgbouncer.pool_settings(replicas=20, workers=4, pool_max=4, request_bound_ms=1500,
                                       pool_timeout_ms=0, server_max_connections=200)
    assert settings['PGBOUNCER_POOL_SIZE'] == str(200 - pgbouncer.RESERVED_SERVER_CONNECTIONS)
    assert settings['PGBOUNCER_MAX_CLIENT_CONN'] == str(2 * 20 * 4 * 4 + pgbouncer.SPARE_CLIENT_CONNECTIONS)
    # pgbouncer's 0 would mean "wait forever": a second at least. Fractions are exact.
    assert (settings['PGBOUNCER_QUERY_WAIT_TIMEOUT'], settings['PGBOUNCER_IDLE_TRANSACTION_TIMEOUT']) == ('1', '1.5')


def test_pgbouncer_never_cuts_an_idle_transaction_when_nothing_bounds_a_request():
    settings = pgbouncer.pool_settings(1, 1, 1, request_bound_ms=0, pool_timeout_ms=2500)
    assert (settings['PGBOUNCER_QUERY_WAIT_TIMEOUT'], settings['PGBOUNCER_IDLE_TRANSACTION_TIMEOUT']) == ('2.5', '0')


@pytest.mark.parametrize('deadline_ms, statement_timeout_ms, idle_transaction_timeout', [
    ('20000', '0', '20'),  # the deadline alone bounds statements: it bounds the transaction too
    ('20000', '10000', '20'),  # a transaction runs several statements, up to the deadline
    ('0', '10000', '10'),  # no deadline: the statement timeout bounds a request (settings.REQUEST_BOUND_MS)
    ('0', '0', '0'),  # nothing bounds a request
])
def test_pgbouncer_cuts_an_idle_transaction_at_the_request_deadline(deadline_ms, statement_timeout_ms,
                                                                    idle_transaction_timeout):
    """docs/deployment.md "One request deadline": a transaction past the deadline is rolled back, so pgbouncer may
    cut one idle that long, and only with nothing bounding a request does it never (trial: a statement timeout of
    0 under a 30 s deadline gave idle_transaction_timeout = 0)."""
    environment = {**os.environ, 'WEB_CONCURRENCY': '3', 'DB_POOL_MAX': '2', 'REQUEST_DEADLINE_MS': deadline_ms,
                   'DB_STATEMENT_TIMEOUT_MS': statement_timeout_ms, 'DB_POOL_TIMEOUT_MS': '5000'}
    printed = subprocess.run([sys.executable, '-m', 'ops.pgbouncer', '--replicas', '3'], cwd=BASE_DIR, text=True,
                             capture_output=True, check=True, env=environment).stdout
    assert f'PGBOUNCER_IDLE_TRANSACTION_TIMEOUT={idle_transaction_timeout}' in printed.splitlines()


def test_compose_and_the_image_default_to_the_derived_pgbouncer_settings():
    services = compose_file()['services']
    api = services['api']['environment']
    # The default deadline (30 s) bounds a request: compose's statement timeout is at most that.
    deadline_ms = int(interpolated(api.get('REQUEST_DEADLINE_MS', '30000')))
    assert int(interpolated(api['DB_STATEMENT_TIMEOUT_MS'])) <= deadline_ms
    derived = pgbouncer.pool_settings(services['api']['deploy']['replicas'], int(interpolated(api['WEB_CONCURRENCY'])),
                                      int(interpolated(api['DB_POOL_MAX'])), deadline_ms, pool_timeout_ms=5000)
    bouncer = services['pgbouncer']['environment']
    assert {name: interpolated(bouncer[name]) for name in derived} == derived
    entrypoint = (BASE_DIR / 'ops' / 'pgbouncer-entrypoint.sh').read_text()
    assert {name: re.search(rf': "\$\{{{name}:=([^}}]*)\}}"', entrypoint)[1] for name in derived} == derived
    template = pgbouncer.TEMPLATE.read_text()
    assert all(f'${{{name}}}' in template for name in derived)


def test_the_pgbouncer_settings_command_prints_them_for_a_replica_count():
    printed = subprocess.run([sys.executable, '-m', 'ops.pgbouncer', '--replicas', '10'], cwd=BASE_DIR, text=True,
                             capture_output=True, check=True, env={**os.environ, 'WEB_CONCURRENCY': '3',
                                                                   'DB_POOL_MAX': '2'}).stdout
    assert printed.splitlines()[:2] == ['PGBOUNCER_POOL_SIZE=60', 'PGBOUNCER_MAX_CLIENT_CONN=220']


def test_nginx_reads_every_setting_the_api_reads():
    """nginx/dbapi.envsh derives nginx's body limit and timeouts from dbapi's settings: nginx gets the API's env_file
    and the same values of every setting both are given in `environment:`."""
    services = compose_file()['services']
    api, nginx = services['api'], services['nginx']
    assert nginx['env_file'] == api['env_file']
    assert {key: api['environment'][key] for key in nginx['environment'] if key in api['environment']} == {
        key: nginx['environment'][key] for key in nginx['environment'] if key in api['environment']}
    assert {'MAX_CONTENT_LENGTH', 'DB_STATEMENT_TIMEOUT_MS'} <= set(nginx['environment'])


def test_nginx_finishes_its_requests_in_flight_before_compose_kills_it(tmp_path):
    """On its stop signal (the image's SIGQUIT) nginx finishes what it sent to a replica: its stop_grace_period
    outlasts its longest wait on one (dbapi.envsh's proxy timeout) by the margin (trial: 35 s against 40 s)."""
    service = compose_file()['services']['nginx']
    longest_wait = nginx_longest_wait_seconds(container_environment(service, tmp_path))
    assert seconds_of(service['stop_grace_period']) >= longest_wait + NGINX_STOP_MARGIN_SECONDS


def docs_swarm_commands():
    """Return the commands of docs/deployment.md's "Docker Swarm" section that turn this file into a stack."""
    docs = (BASE_DIR / 'docs' / 'deployment.md').read_text()
    section = docs.split('## Docker Swarm', 1)[1].split('\n## ', 1)[0]
    return [line.strip() for line in section.splitlines() if line.startswith('    ') and 'compose build' not in line]


def test_the_compose_files_header_deploys_to_swarm_as_the_docs_do():
    """`docker stack deploy` rejects this file itself; its header said to deploy it as it is (trial)."""
    header = [line[1:].strip() for line in (BASE_DIR / 'docker-compose.yml').read_text().splitlines()
              if line.startswith('#')]
    commands = docs_swarm_commands()
    assert len(commands) == 2 and all(any(line.endswith(command) for line in header) for command in commands)
    assert not any('stack deploy -c docker-compose.yml' in line for line in header)
