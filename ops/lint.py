"""`make lint`: offline checks of the deployment files. Each check can fail; tests/topology proves it."""
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from settings import BASE_DIR

from . import nginx
from .render import TemplateError, program

COMPOSE_FILE = BASE_DIR / 'docker-compose.yml'
K8S_FILES = sorted((BASE_DIR / 'k8s').glob('*.yaml'))
DOCKERFILES = [BASE_DIR / 'Dockerfile', BASE_DIR / 'nginx' / 'Dockerfile', BASE_DIR / 'ops' / 'pgbouncer.Dockerfile']
SHELL_SCRIPTS = [nginx.ENVSH, BASE_DIR / 'ops' / 'pgbouncer-entrypoint.sh']
# What the native stack feeds the template; the `resolve` flavour of the images needs nginx >= 1.27.3.
SAMPLE_NGINX_ENVIRONMENT = dict(DBAPI_UPSTREAMS='127.0.0.1:8001 127.0.0.1:8002', NGINX_LISTEN='127.0.0.1:8000')


@dataclass
class Result:
    """The outcome of one check."""

    name: str
    ok: bool
    output: str


def tool(name):
    """Return a lint tool from this virtualenv (requirements-lint.txt), else from the system."""
    beside_python = Path(sys.executable).parent / name
    return str(beside_python) if beside_python.exists() else program(name)


def shown(path):
    """Return path relative to the project when it lies inside it (broken copies in tests do not)."""
    path = Path(path)
    return str(path.relative_to(BASE_DIR)) if path.is_relative_to(BASE_DIR) else str(path)


def run(name, argv):
    """Run argv and return its Result."""
    completed = subprocess.run(argv, capture_output=True, text=True)
    return Result(name, completed.returncode == 0, (completed.stdout + completed.stderr).strip())


def check_compose(path=COMPOSE_FILE):
    """Validate the compose file against the Compose Specification's schema."""
    return run(f'compose schema: {shown(path)}', [tool('check-jsonschema'), '--builtin-schema', 'vendor.compose-spec', str(path)])


def check_kubernetes(paths=K8S_FILES):
    """Validate Kubernetes manifests against the API schemas, rejecting unknown fields."""
    return run('kubernetes-validate: ' + ' '.join(map(shown, paths)),
               [tool('kubernetes-validate'), '--strict', *map(str, paths)])


def check_dockerfile(path):
    """Lint one Dockerfile with hadolint (any finding fails)."""
    return run(f'hadolint: {shown(path)}', [tool('hadolint'), str(path)])


def check_shell(path):
    """Parse a POSIX shell script with sh -n."""
    return run(f'sh -n: {shown(path)}', ['sh', '-n', str(path)])


def check_nginx(template=nginx.TEMPLATE, envsh=nginx.ENVSH):
    """Render the nginx template as the native stack does and run nginx -t on it."""
    name = f'nginx -t: {shown(template)}'
    environment = {'PATH': '/usr/local/bin:/usr/bin:/bin', **SAMPLE_NGINX_ENVIRONMENT}
    with tempfile.TemporaryDirectory(prefix='dbapi-lint-') as run_dir:
        try:
            main_config = nginx.write_config(run_dir, environment, template, envsh)
        except TemplateError as exc:
            return Result(name, False, str(exc))
        return run(name, nginx.command(main_config, test=True))


def all_checks():
    """Run every check and return the Results."""
    return [check_compose(), check_kubernetes(), *map(check_dockerfile, DOCKERFILES),
            *map(check_shell, SHELL_SCRIPTS), check_nginx()]


def main():
    """Print each check's outcome; return 1 when any failed."""
    results = all_checks()
    for result in results:
        print(f"{'ok  ' if result.ok else 'FAIL'} {result.name}")
        if not result.ok:
            print('     ' + result.output.replace('\n', '\n     '))
    return 0 if all(result.ok for result in results) else 1


if __name__ == '__main__':
    sys.exit(main())
