"""`make lint` passes on the project's deployment files and fails on a broken copy of each one."""
import re
import shutil

import pytest

from ops import kustomize, lint, nginx
from ops.render import program


@pytest.fixture(scope='module', autouse=True)
def lint_tools():
    """Skip unless the lint tools are installed (`make lint` installs them)."""
    try:
        for name in ('check-jsonschema', 'kubernetes-validate', 'hadolint', 'checkov', 'promtool'):
            lint.tool(name)
        program('nginx')
        kustomize.kubectl()
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_every_check_passes_on_the_project_files():
    failed = [result for result in lint.all_checks() if not result.ok]
    assert not failed, failed


# (file, check, what to break, broken version): each break is one a person could really make.
BREAKS = {
    'compose unknown key': ('docker-compose.yml', lint.check_compose, '  api:\n', '  api:\n    replicaz: 3\n'),
    'k8s wrong type': ('k8s/deployment.yaml', lambda path: lint.check_kubernetes([path]),
                       'revisionHistoryLimit: 5', 'revisionHistoryLimit: five'),
    'k8s unknown field': ('k8s/nginx.yaml', lambda path: lint.check_kubernetes([path]),
                          'maxSurge: 1', 'maxSurgeon: 1'),
    'api image on latest': ('Dockerfile', lint.check_dockerfile, 'FROM python:3.11.13-slim-bookworm AS build',
                            'FROM python:latest AS build'),
    'nginx image untagged': ('nginx/Dockerfile', lint.check_dockerfile, 'nginx-unprivileged:1.28.0-alpine',
                             'nginx-unprivileged'),
    'pgbouncer unpinned': ('ops/pgbouncer.Dockerfile', lint.check_dockerfile, 'pgbouncer=1.18.0-1+deb12u1',
                           'pgbouncer'),
    'envsh syntax': ('nginx/dbapi.envsh', lint.check_shell, '\nfi\n', '\n'),
    'entrypoint syntax': ('ops/pgbouncer-entrypoint.sh', lint.check_shell, '"$PGBOUNCER_RUN_DIR/pgbouncer.ini"\n',
                          '"$PGBOUNCER_RUN_DIR/pgbouncer.ini\n'),
    'nginx missing semicolon': ('nginx/dbapi.conf.template', lint.check_nginx, 'proxy_pass http://dbapi;',
                                'proxy_pass http://dbapi'),
    'nginx unknown placeholder': ('nginx/dbapi.conf.template', lint.check_nginx, 'listen ${NGINX_LISTEN};',
                                  'listen ${NGINX_PORT};'),
    'elk compose unknown key': ('docker-compose.elk.yml', lint.check_compose, '  kibana:\n', '  kibana:\n    portz: []\n'),
    'api image runs as root': ('Dockerfile', lambda path: lint.check_checkov_dockerfiles([path]),
                               'USER 10001:10001\n', ''),
    'alert expression': ('monitoring/alerts.yml', lint.check_alert_rules, 'up{job="dbapi"} == 0',
                         'up{job="dbapi" == 0'),
}


@pytest.mark.parametrize('name', BREAKS)
def test_a_broken_copy_fails_its_check(tmp_path, name):
    relative, check, original, broken = BREAKS[name]
    source = lint.BASE_DIR / relative
    copy = tmp_path / source.name
    shutil.copy(source, copy)
    assert check(copy).ok, 'the intact copy must pass where the broken one is checked'
    text = copy.read_text()
    assert original in text
    copy.write_text(text.replace(original, broken, 1))
    result = check(copy)
    assert not result.ok and result.output


def test_a_broken_envsh_fails_the_nginx_check(tmp_path):
    envsh = tmp_path / 'dbapi.envsh'
    envsh.write_text(nginx.ENVSH.read_text().replace('DBAPI_UPSTREAMS:-', 'NO_SUCH_VARIABLE:-'))
    result = lint.check_nginx(envsh=envsh)
    assert not result.ok and 'DBAPI_UPSTREAMS' in result.output



# (folder copied whole, file in it to break, check of the copied folder, what to break, broken version).
FOLDER_BREAKS = {
    'kustomization names a missing file': ('k8s', 'kustomization.yaml', lint.check_kustomization,
                                           '  - ingress.yaml\n', '  - ingres.yaml\n'),
    'migration Job wrong type': ('k8s', 'migrate/job.yaml', lambda folder: lint.check_kustomization(folder / 'migrate'),
                                 'backoffLimit: 4', 'backoffLimit: four'),
    'nginx root filesystem writable': ('k8s', 'nginx.yaml',
                                       lambda folder: lint.check_checkov_kubernetes([folder, folder / 'migrate']),
                                       'readOnlyRootFilesystem: true', 'readOnlyRootFilesystem: false'),
    'network policies left out': ('k8s', 'kustomization.yaml',
                                  lambda folder: lint.check_checkov_kubernetes([folder, folder / 'migrate']),
                                  '  - networkpolicy.yaml\n', ''),
    'prometheus loads a missing rule file': ('monitoring', 'prometheus.yml',
                                             lambda folder: lint.check_prometheus_config(folder / 'prometheus.yml'),
                                             '  - alerts.yml', '  - alert.yml'),
    'alert threshold moved under its tests': ('monitoring', 'alerts.yml',
                                              lambda folder: lint.check_alert_tests(folder / 'alerts.test.yml'),
                                              '> 0.01', '> 0.05'),
}


@pytest.mark.parametrize('name', FOLDER_BREAKS)
def test_a_broken_copy_of_a_folder_fails_its_check(tmp_path, name):
    folder, relative, check, original, broken = FOLDER_BREAKS[name]
    copy = tmp_path / folder
    shutil.copytree(lint.BASE_DIR / folder, copy)
    assert check(copy).ok, 'the intact copy must pass where the broken one is checked'
    path = copy / relative
    text = path.read_text()
    assert original in text
    path.write_text(text.replace(original, broken, 1))
    result = check(copy)
    assert not result.ok and result.output


def test_checkov_skips_only_what_the_skip_file_lists(tmp_path, monkeypatch):
    """Without .checkov.yaml's skips the rendered manifests fail exactly the checks it lists."""
    listed = set(re.findall(r'^  - (CKV\w+)$', lint.CHECKOV_CONFIG.read_text(), re.MULTILINE))
    assert listed
    monkeypatch.chdir(tmp_path)  # checkov also reads a .checkov.yaml of the current folder, the project's
    no_skips = tmp_path / 'checkov.yaml'
    no_skips.write_text('skip-check: []\n')
    result = lint.check_checkov_kubernetes(config=no_skips)
    assert not result.ok
    assert set(re.findall(r'Check: (CKV\w+)', result.output)) == listed


def test_every_skipped_check_says_why_and_no_check_is_skipped_elsewhere():
    lines = lint.CHECKOV_CONFIG.read_text().splitlines()
    for number, line in enumerate(lines):
        if re.fullmatch(r'  - CKV\w+', line):
            assert lines[number - 1].strip().startswith('#'), f'{line.strip()} is skipped without a reason above it'
    checked = [*lint.DOCKERFILES, *(lint.BASE_DIR / 'k8s').rglob('*.yaml')]
    assert not [path for path in checked if re.search(r'checkov:skip|checkov\.io/skip', path.read_text())]
