"""`make lint` passes on the project's deployment files and fails on a broken copy of each one."""
import shutil

import pytest

from ops import lint, nginx
from ops.render import program


@pytest.fixture(scope='module', autouse=True)
def lint_tools():
    """Skip unless the lint tools are installed (`make lint` installs them)."""
    try:
        for name in ('check-jsonschema', 'kubernetes-validate', 'hadolint'):
            lint.tool(name)
        program('nginx')
    except FileNotFoundError as exc:
        pytest.skip(str(exc))


def test_every_check_passes_on_the_project_files():
    failed = [result for result in lint.all_checks() if not result.ok]
    assert not failed, failed


# (file, check, what to break, broken version): each break is one a person could really make.
BREAKS = {
    'compose unknown key': ('docker-compose.yml', lint.check_compose, '  api:\n', '  api:\n    replicaz: 3\n'),
    'k8s wrong type': ('k8s/deployment.yaml', lambda path: lint.check_kubernetes([path]),
                       'replicas: 3', 'replicas: three'),
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

