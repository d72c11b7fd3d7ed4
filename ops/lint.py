"""`make lint`: offline checks of the deployment files. Each check can fail; tests/topology proves it."""
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from settings import BASE_DIR

from . import kustomize, nginx
from .render import TemplateError, program

COMPOSE_FILE = BASE_DIR / 'docker-compose.yml'
COMPOSE_FILES = [COMPOSE_FILE, BASE_DIR / 'docker-compose.elk.yml']
# Kubernetes objects that are not part of a kustomization: the examples people copy (cert-manager's issuer
# needs its CRD, so it is left out).
K8S_FILES = [BASE_DIR / 'k8s' / 'examples' / 'secret.example.yaml']
# Every check checkov skips, each with its reason, is in this one file.
CHECKOV_CONFIG = BASE_DIR / '.checkov.yaml'
# checkov asks its vendor's servers for guidelines and PyPI for a newer version unless told not to.
CHECKOV_OFFLINE = dict(BC_SKIP_MAPPING='TRUE', CKV_SKIP_PACKAGE_UPDATE_CHECK='true', CKV_PARSE_ERROR_FAIL='true')
PROMETHEUS_CONFIG = BASE_DIR / 'monitoring' / 'prometheus.yml'
ALERT_RULES = BASE_DIR / 'monitoring' / 'alerts.yml'
ALERT_TESTS = BASE_DIR / 'monitoring' / 'alerts.test.yml'
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


def run(name, argv, environment=None):
    """Run argv (with environment added to ours) and return its Result."""
    completed = subprocess.run(argv, capture_output=True, text=True, env={**os.environ, **(environment or {})})
    return Result(name, completed.returncode == 0, (completed.stdout + completed.stderr).strip())


def check_compose(path=COMPOSE_FILE):
    """Validate the compose file against the Compose Specification's schema."""
    return run(f'compose schema: {shown(path)}', [tool('check-jsonschema'), '--builtin-schema', 'vendor.compose-spec', str(path)])


def check_kubernetes(paths=K8S_FILES):
    """Validate Kubernetes manifests against the API schemas, rejecting unknown fields."""
    return run('kubernetes-validate: ' + ' '.join(map(shown, paths)),
               [tool('kubernetes-validate'), '--strict', *map(str, paths)])


def built_kustomizations(directories, run_dir):
    """Write what `kubectl apply -k` would apply for each directory into run_dir; return the files."""
    files = []
    for directory in directories:
        files.append(Path(run_dir) / f'{Path(directory).name}.rendered.yaml')
        files[-1].write_text(kustomize.build(directory))
    return files


def check_kustomization(directory):
    """Build a kustomization as `kubectl apply -k` would and validate every object it makes."""
    name = f'kustomize + kubernetes-validate: {shown(directory)}'
    with tempfile.TemporaryDirectory(prefix='dbapi-lint-') as run_dir:
        try:
            files = built_kustomizations([directory], run_dir)
        except (kustomize.KustomizeError, FileNotFoundError) as exc:
            return Result(name, False, str(exc))
        validated = check_kubernetes(files)
        return Result(name, validated.ok, validated.output)


def checkov(name, framework, paths, config):
    """Run checkov offline on paths with one framework's checks and the skips of config."""
    files = [argument for path in paths for argument in ('--file', str(path))]
    return run(name, [tool('checkov'), '--config-file', str(config), '--skip-download', '--framework', framework,
                      '--compact', '--quiet', *files], CHECKOV_OFFLINE)


def check_checkov_kubernetes(directories=kustomize.KUSTOMIZATIONS, config=CHECKOV_CONFIG):
    """Run checkov's Kubernetes checks on what `kubectl apply -k` applies for each kustomization."""
    name = 'checkov kubernetes: ' + ' '.join(map(shown, directories))
    with tempfile.TemporaryDirectory(prefix='dbapi-lint-') as run_dir:
        try:
            files = built_kustomizations(directories, run_dir)
        except (kustomize.KustomizeError, FileNotFoundError) as exc:
            return Result(name, False, str(exc))
        return checkov(name, 'kubernetes', files, config)


def check_checkov_dockerfiles(paths=DOCKERFILES, config=CHECKOV_CONFIG):
    """Run checkov's Dockerfile checks on the Dockerfiles."""
    return checkov('checkov dockerfile: ' + ' '.join(map(shown, paths)), 'dockerfile', paths, config)


def check_prometheus_config(path=PROMETHEUS_CONFIG):
    """Check the monitoring profile's Prometheus configuration, and the rule files it loads, with promtool."""
    return run(f'promtool check config: {shown(path)}', [tool('promtool'), 'check', 'config', str(path)])


def check_alert_rules(path=ALERT_RULES):
    """Check the alert rules' syntax and expressions with promtool."""
    return run(f'promtool check rules: {shown(path)}', [tool('promtool'), 'check', 'rules', str(path)])


def check_alert_tests(path=ALERT_TESTS):
    """Run the alert rules' unit tests with promtool."""
    return run(f'promtool test rules: {shown(path)}', [tool('promtool'), 'test', 'rules', str(path)])


def check_dockerfile(path):
    """Lint one Dockerfile with hadolint (any finding fails)."""
    return run(f'hadolint: {shown(path)}', [tool('hadolint'), str(path)])


def check_shell(path):
    """Parse a POSIX shell script with sh -n."""
    return run(f'sh -n: {shown(path)}', ['sh', '-n', str(path)])


def check_nginx(template=nginx.TEMPLATE, envsh=nginx.ENVSH):
    """Render the nginx template as the native stack does and run nginx -t on it: an error or a warning fails."""
    name = f'nginx -t: {shown(template)}'
    environment = {'PATH': '/usr/local/bin:/usr/bin:/bin', **SAMPLE_NGINX_ENVIRONMENT}
    with tempfile.TemporaryDirectory(prefix='dbapi-lint-') as run_dir:
        try:
            main_config = nginx.write_config(run_dir, environment, template, envsh)
        except TemplateError as exc:
            return Result(name, False, str(exc))
        result = run(name, nginx.command(main_config, test=True))
    # nginx -t passes with warnings, which a running nginx writes as plain text on every start and reload.
    return Result(name, result.ok and '[warn]' not in result.output, result.output)


def all_checks():
    """Run every check and return the Results."""
    return [*map(check_compose, COMPOSE_FILES), *map(check_kustomization, kustomize.KUSTOMIZATIONS),
            check_kubernetes(), *map(check_dockerfile, DOCKERFILES), *map(check_shell, SHELL_SCRIPTS), check_nginx(),
            check_checkov_kubernetes(), check_checkov_dockerfiles(), check_prometheus_config(), check_alert_rules(),
            check_alert_tests()]


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
