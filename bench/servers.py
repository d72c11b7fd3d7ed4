"""The programs `make bench` measures: the gateway and baseline gunicorns, replicas behind nginx, `make run`.

Process supervision, the replicas' environment and the nginx config come from ops/ (`make stack`), so
the bench runs the very topology the stack runs; only the output goes to a log file, not the terminal.
"""
import os
import signal
import sys
import time

import psutil

import settings
from ops import nginx
from ops.stack import Child, StackConfig, gunicorn_command, nginx_environment, replica_environment
from ops.stack import wait_until_serving

BENCH_DIR = settings.BASE_DIR / '.data' / 'bench'
LOG_DIR = BENCH_DIR / 'logs'
# A fixed token: the bench database and servers live on loopback only, for the length of one run.
BENCH_TOKEN = 'bench-token-not-a-secret'
BENCH_APP_ID = 'dbapi'


def quiet(name, argv):
    """Wrap argv so that its stdout is thrown away and its stderr is appended to LOG_DIR/<name>.log."""
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    # exec keeps the program's pid, so Child's signals reach it and not a shell.
    return ['sh', '-c', 'exec "$@" >/dev/null 2>>"$0"', str(LOG_DIR / f'{name}.log'), *argv]


def production_environment(env, process_id, workers, pool_max):
    """Add the production settings of the issue to a replica's environment: token, INFO logs, no files."""
    blanks = ('BEARER_TOKENS', 'BEARER_TOKENS_FILE', 'LOG_PATH', 'EMBEDDED_DB_DIR')
    env.update({name: '' for name in blanks})
    env.update(ENVIRONMENT='production', BEARER=BENCH_TOKEN, LOG_LEVEL='INFO', APP_ID=BENCH_APP_ID,
               PROCESS_ID=process_id, WEB_CONCURRENCY=str(workers), DB_POOL_MAX=str(pool_max))
    return env


def start_gateway(name, port, dsn, run_dir, workers, pool_max, proxied=False):
    """Start dbapi's gunicorn on port with production settings; return it once it serves."""
    env = production_environment(replica_environment(name, port, dsn, run_dir), name, workers, pool_max)
    env['TRUSTED_PROXY_HOPS'] = '1' if proxied else '0'
    return serving(Child(name, quiet(name, gunicorn_command()), env), port)


def start_baseline(port, dsn, workers, pool_max):
    """Start bench/baseline.py under gunicorn with the gateway's worker count; return it once it serves."""
    env = dict(os.environ, BASELINE_DSN=dsn, BASELINE_POOL_MAX=str(pool_max))
    # python:bench.baseline as the config keeps gunicorn from reading the gateway's ./gunicorn.conf.py.
    argv = [sys.executable, '-m', 'gunicorn', '-c', 'python:bench.baseline', '-k', 'sync', '-w', str(workers),
            '-b', f'127.0.0.1:{port}', 'bench.baseline:create_app()']
    return serving(Child('baseline', quiet('baseline', argv), env), port)


def start_nginx(run_dir, port, replica_ports):
    """Render nginx/dbapi.conf.template as `make stack` does, in front of replica_ports; return it serving."""
    config = StackConfig(port=port, replicas=len(replica_ports), replica_base_port=replica_ports[0],
                         pgbouncer=False, pgbouncer_port=0)
    main_config = nginx.write_config(run_dir, nginx_environment(config))
    argv = quiet('nginx', nginx.command(main_config))
    return serving(Child('nginx', argv, dict(os.environ), stop_signal=signal.SIGQUIT), port)


def serving(child, port):
    """Start child and wait until it answers GET /healthz on port."""
    child.start()
    try:
        wait_until_serving(child, port)
    except BaseException:
        child.stop()
        raise
    return child


def kept(exit_stack, child):
    """Have exit_stack stop child when its block ends; return child."""
    exit_stack.callback(child.stop)
    return child


def worker_processes(child, count, timeout=30):
    """Return the psutil processes of a gunicorn's count workers, waiting until it has forked them all."""
    deadline = time.monotonic() + timeout
    while len(workers := psutil.Process(child.process.pid).children()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f'{child.name} has {len(workers)} workers, not {count}, after {timeout} s')
        time.sleep(0.05)
    return workers
