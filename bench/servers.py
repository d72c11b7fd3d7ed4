"""The programs `make bench` measures: the gateway and baseline gunicorns, the FastAPI peer, replicas behind nginx,
`make run`.

Process supervision, the replicas' environment and the nginx config come from ops/ (`make stack`), so
the bench runs the very topology the stack runs; only the output goes to a log file, not the terminal.
The gateway, the baseline and the peer get one environment: the same workers, pool, tokens and worker class.
"""
import json
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
# The slow callers' client of scenario 8 ("mixed"), with a token of its own and a bulkhead (slow_client_tokens).
SLOW_TOKEN = 'bench-slow-token-not-a-secret'
# The gateway also mounts the bench's own modules (bench/modules/: the slow action).
BENCH_MODULE_PACKAGES = 'modules,bench.modules'
BASELINE_APP = 'bench.baseline:create_app()'
PEER_APP = 'bench.peer_fastapi:app'


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


def slow_client_limit(pool_max):
    """Return how many of a worker's pooled connections the slow callers' client may hold: half (at least one)."""
    return max(pool_max // 2, 1)


def slow_client_tokens(pool_max):
    """Return BEARER_TOKENS holding the slow callers' client, with its limit."""
    return json.dumps({'slow': {'token': SLOW_TOKEN, 'max_connections': slow_client_limit(pool_max)}})


def server_environment(name, port, dsn, run_dir, workers, pool_max, proxied=False):
    """Return the environment of a server of the bench: a replica's, production settings, the bench's modules and
    clients."""
    env = production_environment(replica_environment(name, port, dsn, run_dir, workers), name, workers, pool_max)
    # The driver's own WORKER_CLASS (the default, gevent, unless set), so every side runs the same one.
    env.update(TRUSTED_PROXY_HOPS='1' if proxied else '0', MODULE_PACKAGES=BENCH_MODULE_PACKAGES,
               BEARER_TOKENS=slow_client_tokens(pool_max), WORKER_CLASS=settings.WORKER_CLASS)
    return env


def start_gateway(name, port, dsn, run_dir, workers, pool_max, proxied=False):
    """Start dbapi's gunicorn on port with production settings; return it once it serves."""
    env = server_environment(name, port, dsn, run_dir, workers, pool_max, proxied)
    return serving(Child(name, quiet(name, gunicorn_command()), env), port)


def start_baseline(port, dsn, run_dir, workers, pool_max):
    """Start bench/baseline.py under the gateway's gunicorn command and gunicorn.conf.py (so with its worker class,
    keep-alive and hooks), with the gateway's worker count and pool size; return it once it serves."""
    env = server_environment('bench-baseline', port, dsn, run_dir, workers, pool_max)
    env.update(BASELINE_DSN=dsn, BASELINE_POOL_MAX=str(pool_max))
    argv = [*gunicorn_command()[:-1], BASELINE_APP]  # the gateway's command, serving the baseline's app
    return serving(Child('baseline', quiet('baseline', argv), env), port)


def start_peer(port, dsn, run_dir, workers, pool_max):
    """Start bench/peer_fastapi.py under uvicorn (uvloop, httptools) with the gateway's worker count, pool size and
    tokens; return it once it serves."""
    env = server_environment('bench-peer', port, dsn, run_dir, workers, pool_max)
    argv = [sys.executable, '-m', 'uvicorn', PEER_APP, '--host', '127.0.0.1', '--port', str(port),
            '--workers', str(workers), '--loop', 'uvloop', '--http', 'httptools', '--no-access-log',
            '--log-level', 'warning']
    return serving(Child('peer', quiet('peer', argv), env), port)


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


def is_worker(process):
    """Tell whether a server's child process serves requests (uvicorn's spawned workers come with
    multiprocessing's resource tracker, which does not)."""
    return 'multiprocessing.resource_tracker' not in ' '.join(process.cmdline())


def worker_processes(child, count, timeout=30):
    """Return the psutil processes of a server's count workers, waiting until it has started them all."""
    deadline = time.monotonic() + timeout
    while len(workers := list(filter(is_worker, psutil.Process(child.process.pid).children()))) < count:
        if time.monotonic() > deadline:
            raise RuntimeError(f'{child.name} has {len(workers)} workers, not {count}, after {timeout} s')
        time.sleep(0.05)
    return workers
