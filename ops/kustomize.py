"""Build the Kubernetes kustomizations offline, as `kubectl apply -k` would, with kubectl's own kustomize."""
import shutil
import subprocess

from settings import BASE_DIR

# `kubectl apply -k k8s/` is the application; k8s/migrate is the migration Job of one release.
APP = BASE_DIR / 'k8s'
MIGRATE = APP / 'migrate'
KUSTOMIZATIONS = (APP, MIGRATE)


class KustomizeError(Exception):
    """kubectl could not build a kustomization; the message is kubectl's."""


def kubectl():
    """Return the path of kubectl, or raise saying what it is needed for."""
    path = shutil.which('kubectl')
    if path is None:
        raise FileNotFoundError('kubectl is not installed: its built-in kustomize builds k8s/ (no cluster needed)')
    return path


def build(directory=APP):
    """Return the YAML that `kubectl apply -k directory` would send (no cluster is asked)."""
    completed = subprocess.run([kubectl(), 'kustomize', str(directory)], capture_output=True, text=True)
    if completed.returncode != 0:
        raise KustomizeError(f'kubectl kustomize {directory}: {completed.stderr.strip()}')
    return completed.stdout


def objects(directory=APP):
    """Return the objects `kubectl apply -k directory` would apply, as dicts."""
    import yaml  # PyYAML comes with requirements-lint.txt, the tools of `make lint`
    return [document for document in yaml.safe_load_all(build(directory)) if document]
