"""Turn docker-compose.yml into a stack file that `docker stack deploy` accepts.

Swarm's loader reads only the version 3 subset of Compose: it rejects the long form of depends_on and
env_file and the top-level name, and has no use for build, profiles or restart (deploy.* replaces
them). `docker compose config` resolves variables, anchors and profiles first:

    docker compose config --format json | python -m ops.swarm > dbapi-stack.json
    docker stack deploy -c dbapi-stack.json dbapi
"""
import json
import sys

STACK_VERSION = '3.8'
SWARM_UNKNOWN_SERVICE_KEYS = ('build', 'depends_on', 'profiles', 'restart', 'pull_policy')
SWARM_UNKNOWN_TOP_LEVEL_KEYS = ('name',)


def env_files(entries):
    """Return env_file entries as plain paths, leaving out optional ones (Swarm cannot skip a missing file)."""
    paths = []
    for entry in entries:
        if isinstance(entry, str):
            paths.append(entry)
        elif entry.get('required', True):
            paths.append(entry['path'])
    return paths


def swarm_service(service):
    """Return one service without what Swarm's loader refuses."""
    service = {key: value for key, value in service.items() if key not in SWARM_UNKNOWN_SERVICE_KEYS}
    if 'env_file' in service:
        service['env_file'] = env_files(service['env_file'])
        if not service['env_file']:
            del service['env_file']
    return service


def swarm_stack(project):
    """Return the stack file of a resolved compose project (the output of `docker compose config`)."""
    stack = {key: value for key, value in project.items() if key not in SWARM_UNKNOWN_TOP_LEVEL_KEYS}
    stack['version'] = STACK_VERSION
    stack['services'] = {name: swarm_service(service) for name, service in project['services'].items()}
    return stack


def main():
    """Read the resolved project as JSON on stdin; write the stack file as JSON on stdout."""
    json.dump(swarm_stack(json.load(sys.stdin)), sys.stdout, indent=2)
    print()
    return 0


if __name__ == '__main__':
    sys.exit(main())
