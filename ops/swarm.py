"""Turn docker-compose.yml into a stack file that `docker stack deploy` accepts.

Swarm's loader reads only the version 3 subset of Compose: it rejects the long form of depends_on and
env_file and the top-level name, and has no use for build, profiles or restart. The compose file states
each service's restart policy once, as `restart`; here it becomes Swarm's deploy.restart_policy.
`docker compose config` resolves variables, anchors and profiles first:

    docker compose config --format json | python -m ops.swarm > dbapi-stack.json
    docker stack deploy -c dbapi-stack.json dbapi
"""
import json
import sys

STACK_VERSION = '3.8'
SWARM_UNKNOWN_SERVICE_KEYS = ('build', 'depends_on', 'profiles', 'restart', 'pull_policy')
SWARM_UNKNOWN_TOP_LEVEL_KEYS = ('name',)
# Compose's restart policy -> Swarm's restart condition.
RESTART_CONDITIONS = {'no': 'none', 'always': 'any', 'unless-stopped': 'any', 'on-failure': 'on-failure'}


def env_files(entries):
    """Return env_file entries as plain paths, leaving out optional ones (Swarm cannot skip a missing file)."""
    paths = []
    for entry in entries:
        if isinstance(entry, str):
            paths.append(entry)
        elif entry.get('required', True):
            paths.append(entry['path'])
    return paths


def restart_policy(restart):
    """Return Swarm's deploy.restart_policy for a compose `restart` value, e.g. on-failure:5."""
    condition, _, attempts = restart.partition(':')
    policy = {'condition': RESTART_CONDITIONS[condition]}
    if attempts:
        policy['max_attempts'] = int(attempts)
    return policy


def swarm_service(service):
    """Return one service without what Swarm's loader refuses, its restart policy moved under deploy."""
    restart = service.get('restart')
    service = {key: value for key, value in service.items() if key not in SWARM_UNKNOWN_SERVICE_KEYS}
    if restart:
        service['deploy'] = {**service.get('deploy', {}), 'restart_policy': restart_policy(restart)}
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
