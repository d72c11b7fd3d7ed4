"""k8s/ as `kubectl apply -k` builds it, offline: what it applies (and what it leaves out), the NetworkPolicies
against the pods and ports they are about, autoscaling, the per-release migration Job, the Ingress, and the
pods' hardening. `make lint` validates the same objects against the Kubernetes schemas and runs checkov on them."""
import shutil

import pytest

from lib.http.proxies import TrustedProxies
from ops import kustomize
from tests.topology.helpers import NGINX_STOP_MARGIN_SECONDS, nginx_longest_wait_seconds

yaml = pytest.importorskip('yaml', reason='PyYAML comes with requirements-lint.txt (make lint)')

APP_PORT, NGINX_PORT, POSTGRES_PORT, DNS_PORT = 8000, 8080, 5432, 53


@pytest.fixture(scope='module')
def app():
    """The objects `kubectl apply -k k8s/` applies."""
    try:
        return kustomize.objects(kustomize.APP)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


@pytest.fixture(scope='module')
def migration(app):
    """The objects `kubectl apply -k k8s/migrate` applies."""
    return kustomize.objects(kustomize.MIGRATE)


def only(objects, kind, name=None):
    """Return the one object of kind named name (a generated ConfigMap's name is name-<suffixes>)."""
    def named(item):
        actual = item['metadata']['name']
        return name in (None, actual) or (kind == 'ConfigMap' and actual.startswith(f'{name}-'))
    found = [item for item in objects if item['kind'] == kind and named(item)]
    assert len(found) == 1, f'{kind} {name}: {len(found)} found'
    return found[0]


def pod_templates(objects):
    """Return {name: pod template} of every Deployment and Job."""
    return {item['metadata']['name']: item['spec']['template'] for item in objects if item['kind'] in ('Deployment', 'Job')}


def selects(selector, labels):
    """Tell whether a label selector (matchLabels only, as ours are) selects labels."""
    assert set(selector) <= {'matchLabels'}, selector
    return selector.get('matchLabels', {}).items() <= labels.items()


def config_data(objects):
    """Return the settings ConfigMap's data."""
    return only(objects, 'ConfigMap', 'dbapi-config')['data']


def test_apply_k_applies_the_app_and_never_an_example_or_the_job(app):
    kinds = sorted({item['kind'] for item in app})
    assert kinds == ['ConfigMap', 'Deployment', 'HorizontalPodAutoscaler', 'Ingress', 'Namespace', 'NetworkPolicy',
                     'PodDisruptionBudget', 'Service']
    assert all(item['metadata'].get('namespace') == 'dbapi' for item in app if item['kind'] != 'Namespace')


def test_a_settings_change_renames_the_config_map_so_every_pod_rolls(app, tmp_path):
    name = only(app, 'ConfigMap', 'dbapi-config')['metadata']['name']
    assert name.startswith('dbapi-config-') and name != 'dbapi-config'
    for template in pod_templates(app).values():
        container = template['spec']['containers'][0]
        references = [source['configMapRef']['name'] for source in container.get('envFrom', [])]
        references += [entry['valueFrom']['configMapKeyRef']['name'] for entry in container.get('env', [])
                       if 'configMapKeyRef' in entry.get('valueFrom', {})]
        assert references and set(references) == {name}
    copy = shutil.copytree(kustomize.APP, tmp_path / 'k8s')
    settings_file = copy / 'common' / 'settings.env'
    settings_file.write_text(settings_file.read_text().replace('LOG_LEVEL=INFO', 'LOG_LEVEL=DEBUG'))
    assert only(kustomize.objects(copy), 'ConfigMap', 'dbapi-config')['metadata']['name'] != name


def test_the_hpa_alone_sets_the_api_replicas_on_pool_saturation_and_cpu(app):
    hpa = only(app, 'HorizontalPodAutoscaler')
    target = only(app, 'Deployment', hpa['spec']['scaleTargetRef']['name'])
    assert 'replicas' not in target['spec']
    metrics = {metric['type']: metric for metric in hpa['spec']['metrics']}
    assert metrics['Pods']['pods']['metric']['name'] == 'dbapi_pool_busy_ratio'
    assert metrics['Resource']['resource']['name'] == 'cpu'
    adapter = yaml.safe_load((kustomize.APP / 'examples' / 'prometheus-adapter-values.yaml').read_text())
    rule = adapter['rules']['custom'][0]
    assert rule['name']['as'] == 'dbapi_pool_busy_ratio'
    metrics_source = (kustomize.BASE_DIR / 'lib' / 'logs' / 'metrics.py').read_text()
    for metric in ('dbapi_pool_connections', 'dbapi_pool_max_connections'):
        assert metric in rule['metricsQuery'] and f"'{metric}'" in metrics_source


def test_the_connection_budget_counts_the_most_pods_there_can_be(app):
    config = config_data(app)
    most = only(app, 'HorizontalPodAutoscaler')['spec']['maxReplicas']
    surge = only(app, 'Deployment', 'dbapi-api')['spec']['strategy']['rollingUpdate']['maxSurge']
    budget = (most + surge) * int(config['WEB_CONCURRENCY']) * int(config['DB_POOL_MAX'])
    assert budget == 44 and budget < 100 - 3  # PostgreSQL's default max_connections, less its superuser slots


def test_the_migration_job_is_named_for_its_release_and_goes_to_postgresql_itself(app, migration):
    job = only(migration, 'Job')
    container = job['spec']['template']['spec']['containers'][0]
    release = container['image'].rpartition(':')[2]
    assert job['metadata']['name'] == f'dbapi-migrate-{release}'
    assert container['image'] == pod_templates(app)['dbapi-api']['spec']['containers'][0]['image']
    config = only(migration, 'ConfigMap', 'dbapi-config')
    direct = {entry['name']: entry['valueFrom']['configMapKeyRef'] for entry in container['env']}
    assert direct == {'DEFAULT_DB_HOST': {'name': config['metadata']['name'], 'key': 'MIGRATE_DB_HOST'},
                      'DEFAULT_DB_PORT': {'name': config['metadata']['name'], 'key': 'MIGRATE_DB_PORT'}}
    assert config['data']['MIGRATE_DB_PORT'] == '5432'
    assert config_data(app) == config['data']


def test_every_pod_runs_unprivileged_on_a_read_only_root_with_pinned_images(app, migration):
    for name, template in pod_templates(app + migration).items():
        spec = template['spec']
        assert spec['securityContext']['runAsNonRoot'] and spec['securityContext']['runAsUser'] >= 10000, name
        assert spec['automountServiceAccountToken'] is False, name
        assert spec['enableServiceLinks'] is False, name  # a Service's <NAME>_PORT met a setting's name (trial BH)
        volumes = {volume['name']: volume for volume in spec['volumes']}
        for container in spec['containers']:
            security = container['securityContext']
            assert security['readOnlyRootFilesystem'] and not security['allowPrivilegeEscalation'], name
            assert security['capabilities']['drop'] == ['ALL'], name
            image, _, tag = container['image'].rpartition(':')
            assert image and tag not in ('', 'latest') and '/' not in tag, container['image']
            writable = [mount for mount in container['volumeMounts'] if not mount.get('readOnly')]
            assert writable and all('emptyDir' in volumes[mount['name']] for mount in writable), name


def test_nginx_worker_processes_follow_its_cpu_limit(app):
    container = pod_templates(app)['dbapi-nginx']['spec']['containers'][0]
    source = {entry['name']: entry.get('valueFrom', {}) for entry in container['env']}['NGINX_WORKER_PROCESSES']
    assert source['resourceFieldRef'] == {'containerName': container['name'], 'resource': 'limits.cpu', 'divisor': '1'}
    assert container['resources']['limits']['cpu'] == '1'


# Bytes of a Kubernetes quantity's and an nginx size's suffixes.
SIZE_UNITS = {'Mi': 1 << 20, 'Gi': 1 << 30, 'm': 1 << 20, 'g': 1 << 30}


def size_bytes(text):
    """Return the bytes of a size written as a number and one of SIZE_UNITS."""
    number = text.rstrip('MGmgi')
    return int(number) * SIZE_UNITS[text[len(number):]]


def test_nginx_temp_volume_holds_eight_slow_answers_and_64_request_bodies(app):
    """Each slow client of a large answer may hold NGINX_MAX_TEMP_FILE_SIZE of nginx's tmp volume, each request body
    MAX_CONTENT_LENGTH: kubelet may evict a pod past the volume's sizeLimit (trial AQ: 256Mi against nginx's
    default 1024m)."""
    spec = pod_templates(app)['dbapi-nginx']['spec']
    literal = {entry['name']: entry['value'] for entry in spec['containers'][0]['env'] if 'value' in entry}
    volume = {item['name']: item for item in spec['volumes']}['tmp']
    bodies = 64 * int(config_data(app).get('MAX_CONTENT_LENGTH', 1 << 20))
    assert 8 * size_bytes(literal['NGINX_MAX_TEMP_FILE_SIZE']) + bodies <= size_bytes(volume['emptyDir']['sizeLimit'])


def test_nginx_pods_finish_their_requests_in_flight_before_the_kill(app):
    """After the preStop pause nginx gets SIGQUIT and finishes what it sent to a replica: the grace period covers
    the pause, its longest wait on one (dbapi.envsh's proxy timeout, from the pods' settings) and the margin (trial:
    45 s against 5 + 40)."""
    spec = pod_templates(app)['dbapi-nginx']['spec']
    container = spec['containers'][0]
    literal = {entry['name']: entry['value'] for entry in container['env'] if 'value' in entry}
    longest_wait = nginx_longest_wait_seconds({**config_data(app), **literal})
    sleep, pause = container['lifecycle']['preStop']['exec']['command']
    assert sleep == 'sleep'
    assert spec['terminationGracePeriodSeconds'] >= int(pause) + longest_wait + NGINX_STOP_MARGIN_SECONDS


@pytest.mark.parametrize('name', ['dbapi-api', 'dbapi-nginx'])
def test_nginx_and_the_api_keep_pods_through_drains_and_spread_over_nodes_and_zones(app, name):
    deployment = only(app, 'Deployment', name)
    labels = deployment['spec']['template']['metadata']['labels']
    budget = only(app, 'PodDisruptionBudget', name)['spec']
    fewest = deployment['spec'].get('replicas') or only(app, 'HorizontalPodAutoscaler')['spec']['minReplicas']
    assert selects(budget['selector'], labels) and 1 <= budget['minAvailable'] < fewest
    spread = deployment['spec']['template']['spec']['topologySpreadConstraints']
    assert {rule['topologyKey'] for rule in spread} == {'kubernetes.io/hostname', 'topology.kubernetes.io/zone'}
    assert all(selects(rule['labelSelector'], labels) for rule in spread)


def test_services_reach_their_pods_on_named_ports(app):
    templates = pod_templates(app)
    for service in (item for item in app if item['kind'] == 'Service' and item['spec'].get('selector')):
        pods = [template for template in templates.values()
                if selects({'matchLabels': service['spec']['selector']}, template['metadata']['labels'])]
        assert len(pods) == 1, service['metadata']['name']
        port_names = {port['name'] for port in pods[0]['spec']['containers'][0]['ports']}
        assert {port['targetPort'] for port in service['spec']['ports']} <= port_names


def test_the_ingress_serves_tls_and_keeps_the_operations_endpoints_inside(app):
    ingress = only(app, 'Ingress')
    assert 'cert-manager.io/cluster-issuer' in ingress['metadata']['annotations']
    rule, = ingress['spec']['rules']
    assert ingress['spec']['tls'] == [{'hosts': [rule['host']], 'secretName': 'dbapi-tls'}]
    paths = {path['path']: path for path in rule['http']['paths']}
    assert paths['/']['pathType'] == 'Prefix' and paths['/']['backend']['service']['name'] == 'dbapi'
    nginx_service = only(app, 'Service', 'dbapi')
    assert nginx_service['spec']['selector']['app.kubernetes.io/component'] == 'nginx'
    for private in ('/healthz', '/readyz', '/metrics'):
        assert paths[private]['pathType'] == 'Exact'
        nowhere = only(app, 'Service', paths[private]['backend']['service']['name'])
        assert 'selector' not in nowhere['spec'], 'the operations paths must lead to no pod'


def test_the_api_believes_two_proxies_the_ingress_and_nginx(app):
    """The ingress controller writes the address it saw to X-Forwarded-For, nginx appends the ingress pod's."""
    seen = {}

    def app_seeing(environ, start_response):
        seen.update(address=environ['REMOTE_ADDR'], scheme=environ['wsgi.url_scheme'])
    hops = int(config_data(app)['TRUSTED_PROXY_HOPS'])
    TrustedProxies(app_seeing, hops)({'REMOTE_ADDR': '10.0.3.9', 'wsgi.url_scheme': 'http',
                                      'HTTP_X_FORWARDED_FOR': '198.51.100.1, 203.0.113.7, 10.0.2.5',
                                      'HTTP_X_FORWARDED_PROTO': 'https, http'}, None)
    assert seen == {'address': '203.0.113.7', 'scheme': 'https'}


# --- NetworkPolicies: every selector selects the pods it is about, every port is one they listen on. ---

def policy(app, component):
    """Return the NetworkPolicy of one component, after checking it selects exactly that component's pods."""
    found = only(app, 'NetworkPolicy', f'dbapi-{component}')
    templates = pod_templates(app + kustomize.objects(kustomize.MIGRATE))
    selected = [name for name, template in templates.items()
                if selects(found['spec']['podSelector'], template['metadata']['labels'])]
    assert selected == [name for name in templates if name.startswith(f'dbapi-{component}')], selected
    assert found['spec']['policyTypes'] == ['Ingress', 'Egress']
    return found['spec']


def container_ports(app, deployment):
    """Return the TCP ports a Deployment's containers listen on."""
    containers = only(app, 'Deployment', deployment)['spec']['template']['spec']['containers']
    return {port['containerPort'] for container in containers for port in container['ports']}


def peer_pods(app, peer):
    """Return the names of this namespace's pod templates a NetworkPolicy peer selects (None for another namespace)."""
    if 'namespaceSelector' in peer or 'ipBlock' in peer:
        return None
    return sorted(name for name, template in pod_templates(app).items()
                  if selects(peer['podSelector'], template['metadata']['labels']))


def ports_of(rule):
    """Return {(protocol, port)} of one ingress or egress rule."""
    return {(port['protocol'], port['port']) for port in rule['ports']}


def is_dns(rule):
    """Tell whether an egress rule opens DNS, and only DNS, to kube-dns."""
    peer, = rule['to']
    return (peer['namespaceSelector']['matchLabels'] == {'kubernetes.io/metadata.name': 'kube-system'}
            and peer['podSelector']['matchLabels'] == {'k8s-app': 'kube-dns'}
            and ports_of(rule) == {('UDP', DNS_PORT), ('TCP', DNS_PORT)})


def is_postgresql(rule):
    """Tell whether an egress rule opens PostgreSQL's port, and only it, to the PostgreSQL pods."""
    peer, = rule['to']
    return peer == {'podSelector': {'matchLabels': {'app.kubernetes.io/name': 'postgresql'}}} and \
        ports_of(rule) == {('TCP', POSTGRES_PORT)}


def test_everything_of_dbapi_starts_from_no_traffic_at_all(app):
    deny = only(app, 'NetworkPolicy', 'dbapi-default-deny')['spec']
    assert deny['policyTypes'] == ['Ingress', 'Egress'] and 'ingress' not in deny and 'egress' not in deny
    templates = pod_templates(app + kustomize.objects(kustomize.MIGRATE))
    assert all(selects(deny['podSelector'], template['metadata']['labels']) for template in templates.values())


def test_nginx_takes_traffic_from_the_ingress_controller_only_and_sends_it_to_the_api(app):
    spec = policy(app, 'nginx')
    rule, = spec['ingress']
    peer, = rule['from']
    assert peer['namespaceSelector']['matchLabels'] == {'kubernetes.io/metadata.name': 'ingress-nginx'}
    assert peer['podSelector']['matchLabels'] == {'app.kubernetes.io/name': 'ingress-nginx'}
    assert ports_of(rule) == {('TCP', port) for port in container_ports(app, 'dbapi-nginx')} == {('TCP', NGINX_PORT)}
    to_api, dns = spec['egress']
    assert [peer_pods(app, peer) for peer in to_api['to']] == [['dbapi-api']]
    assert ports_of(to_api) == {('TCP', port) for port in container_ports(app, 'dbapi-api')}
    assert is_dns(dns)
    upstreams = {entry['name']: entry.get('value') for entry in
                 pod_templates(app)['dbapi-nginx']['spec']['containers'][0]['env']}['DBAPI_UPSTREAMS']
    assert upstreams.endswith(f':{APP_PORT}') and APP_PORT in container_ports(app, 'dbapi-api')


def test_the_api_takes_traffic_from_nginx_and_prometheus_only_and_reaches_postgresql_and_dns_only(app):
    spec = policy(app, 'api')
    rule, = spec['ingress']
    from_nginx, from_prometheus = rule['from']
    assert peer_pods(app, from_nginx) == ['dbapi-nginx']
    assert from_prometheus == {'namespaceSelector': {'matchLabels': {'kubernetes.io/metadata.name': 'monitoring'}},
                               'podSelector': {'matchLabels': {'app.kubernetes.io/name': 'prometheus'}}}
    assert ports_of(rule) == {('TCP', port) for port in container_ports(app, 'dbapi-api')} == {('TCP', APP_PORT)}
    annotations = pod_templates(app)['dbapi-api']['metadata']['annotations']
    assert int(annotations['prometheus.io/port']) == APP_PORT
    to_postgresql, dns = spec['egress']
    assert is_postgresql(to_postgresql) and is_dns(dns)
    assert config_data(app)['DEFAULT_DB_PORT'] == str(POSTGRES_PORT)


def test_the_migration_job_reaches_postgresql_and_dns_only(app, migration):
    spec = policy(app, 'migrate')
    assert 'ingress' not in spec
    to_postgresql, dns = spec['egress']
    assert is_postgresql(to_postgresql) and is_dns(dns)
    assert config_data(migration)['MIGRATE_DB_PORT'] == str(POSTGRES_PORT)


def test_nginx_reads_every_setting_the_api_reads(app):
    """nginx/dbapi.envsh derives nginx's body limit and timeouts from dbapi's settings: from the same ConfigMap,
    whole, so a setting added there (REQUEST_DEADLINE_MS, say) reaches both."""
    templates = pod_templates(app)
    api, nginx = (templates[name]['spec']['containers'][0] for name in ('dbapi-api', 'dbapi-nginx'))
    assert api['envFrom'] == nginx['envFrom'] == [{'configMapRef': {'name': config_name(app)}}]


def config_name(app):
    """Return the generated name of the settings ConfigMap."""
    return only(app, 'ConfigMap', 'dbapi-config')['metadata']['name']
