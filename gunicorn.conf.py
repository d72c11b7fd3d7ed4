"""gunicorn settings: workers, bind, timeouts, logging and metrics hooks. Pools are per process, made after fork."""
import atexit
import os
import shutil
import signal
from urllib.parse import unquote

from lib.errors import exit_on_startup_error
from lib.process import (METRICS_DIR_PREFIX, hold_stop_signals_for_the_fork, made_held_folder, take_stop_signals,
                         write_lines_whole)

write_lines_whole()  # gunicorn's own lines (and its workers', forked with these streams), each in one write


def remove_metrics_dir(master_pid):
    """Remove the metrics directory made below, in the master only (its forked workers inherit this exit handler)."""
    if os.getpid() == master_pid:
        shutil.rmtree(os.environ['PROMETHEUS_MULTIPROC_DIR'], ignore_errors=True)

# A bad setting, token or module is one 'dbapi: ...' line and exit code 1, checked here in the master before it
# forks (not a traceback per worker); gunicorn would print its own traceback for any exception but SystemExit.
with exit_on_startup_error():
    import settings

    # prometheus_client settles on multiprocess mode when it is first imported, so the workers' shared directory is
    # chosen here, in the master, before lib.logs.metrics imports it; the workers inherit it.
    MADE_METRICS_DIR = not os.environ.get('PROMETHEUS_MULTIPROC_DIR')
    if MADE_METRICS_DIR:
        os.environ['PROMETHEUS_MULTIPROC_DIR'] = made_held_folder(METRICS_DIR_PREFIX)
        # At the master's exit, whatever ends it (a stop, a port it cannot bind, a bad module); one the operator set is
        # left alone. gunicorn's on_exit hook runs after a stop only.
        atexit.register(remove_metrics_dir, os.getpid())

    from lib.logs.metrics import clear_multiprocess_dir, forget_process
    from lib.logs import configure_process_logging
    from lib.db.green import make_psycopg2_cooperative
    from lib.http.disconnect import cancel_queries_at_a_quick_stop, prepare_worker
    from lib.http.workers import WORKER_CLASSES, pace_kept_alive_connection
    from manage import check_before_fork, unmounted_scopes, unread_module_files
    from lib.auth import learn_shown_tokens

    ROUTES, CLIENTS = check_before_fork()

bind = [settings.BIND]
workers = settings.WEB_CONCURRENCY
# The worker model (WORKER_CLASS, docs/performance.md "Worker model"): gevent by default, so a request waiting on
# PostgreSQL holds a greenlet, not a process; gthread runs THREADS threads per worker; sync one request per worker.
# gunicorn's own worker of that model, whose own error answers (a request it cannot parse) are problem+json.
worker_class = WORKER_CLASSES[settings.WORKER_CLASS]
threads = settings.THREADS if settings.WORKER_CLASS == 'gthread' else 1
# Both derived from the request deadline (settings.py, docs/deployment.md "One request deadline"): gunicorn never
# kills a worker whose request may still run, and a stopping worker gives its requests their deadline.
timeout = settings.WORKER_TIMEOUT
graceful_timeout = settings.GRACEFUL_TIMEOUT
keepalive = 5
# nginx decides what is too long (nginx/dbapi.envsh: NGINX_HEADER_BUFFER_SIZE, 8000 bytes for the request line and
# each header) and answers it as problem details; gunicorn's limits sit above, so what nginx passes on reaches the
# app. The request line is at gunicorn's most (8190); a header has room for what nginx adds (", " and an IPv6 address
# to X-Forwarded-For). The count is gunicorn's default, 100 (nginx counts none: a request of more is gunicorn's 431,
# as problem details): gunicorn reads a head, and a chunked body's trailer section, until it ends or passes
# fields x (field size + 2) + 4 bytes (800 KiB here), scanning all of it again at each read, so that bound is the
# CPU one client can take (trial AV: 8 MB of trailers took a worker 4.6 s, 27 MB its life, under 10000 x 16384).
limit_request_line = 8190
limit_request_field_size = 8190
limit_request_fields = 100
# Each sync worker touches its heartbeat file once per request; in memory that is a cheap syscall, on a
# disk (gunicorn's default, the temp dir) it dirties an inode every time. Docker's /dev/shm is 64 MB.
worker_tmp_dir = '/dev/shm' if os.path.isdir('/dev/shm') else None
# Which proxies to believe is dbapi's decision alone (TRUSTED_PROXY_HOPS, lib/http/proxies.py). gunicorn believes
# no header that sets the scheme or the script path, so it can trust every peer with nothing: otherwise it
# checks each request's peer address against a list with `ipaddress`, 2-3% of a worker's CPU.
secure_scheme_headers = {}
forwarder_headers = ''
forwarded_allow_ips = '*'
# dbapi writes its own ECS access line per request; gunicorn's own lines go out as ECS JSON too, through the
# handlers configured here, in the master, before gunicorn makes its logger (its workers inherit them).
# The expressions of every secret's percent-encoded spellings are compiled here, once, for the workers to inherit: each
# compiled them at its first line holding a `%` (about 0.7 ms a secret: 0.7 s with 1,000 clients).
configure_process_logging(settings).compile_spellings()
accesslog = None
errorlog = '-'
logger_class = 'lib.logs.GunicornLogger'
loglevel = settings.LOG_LEVEL.lower()
proc_name = settings.PROCESS_ID
# Several replicas share a host in the native stack: gunicorn's control socket would collide.
control_socket_disable = True


# Set by `make run` (manage.py) and `make stack` (ops/stack.py), which supervise the master they started.
SUPERVISOR = os.environ.get('DBAPI_SUPERVISOR')


def pre_exec(server):
    """Refuse a binary upgrade (SIGUSR2) under make run or make stack: they follow the master they started, and once
    it quit they stopped (make run, PostgreSQL with it) or restarted it, and left the new master serving, unsupervised.
    The forked child ends before it runs a new master; the master serves on."""
    if SUPERVISOR:
        server.log.error('SIGUSR2 (a binary upgrade) is refused under %s, which supervises this master: restart it '
                         'instead', SUPERVISOR)
        os._exit(0)


def on_starting(server):
    """Start the metrics from zero: files of an earlier run would be summed in; warn of what may be misspelt or
    misplaced."""
    clear_multiprocess_dir()
    for warning in unmounted_scopes(ROUTES, CLIENTS) + unread_module_files(settings.MODULE_PACKAGES):
        server.log.warning(warning)


def pre_fork(server, worker):
    """Hold a stop signal sent while a worker is forked for the worker (lib.process)."""
    hold_stop_signals_for_the_fork()


def post_fork(server, worker):
    """Let a stop signal end a worker that is still booting at once, as it has no request in flight yet."""
    # Until gunicorn installs the worker's own handlers (after gevent has patched the standard library, which
    # takes a while), the child keeps the master's, which only queue the signal for a master loop the child never
    # runs: a SIGTERM then would be lost, and the worker would linger until the master's graceful timeout.
    take_stop_signals()


def post_worker_init(worker):
    """Once the worker is set up (gevent, if any, has patched the standard library by now): psycopg2 waits
    cooperatively in a gevent worker, a watcher cancels the queries of clients that left, and a SIGTERM cancels
    the queries still running before the master's kill."""
    if settings.WORKER_CLASS == 'gevent':
        make_psycopg2_cooperative()
    prepare_worker(graceful_timeout, queries_block_signals=settings.WORKER_CLASS == 'sync')


def pre_request(worker, req):
    """Write gunicorn's own DEBUG line of a request (its default pre_request), once the tokens its Authorization shows
    are learned (lib.auth): the line quotes the path, where a token known by its sha256 alone would be shown. The
    path is percent-decoded, as the access line's url.path is: a token partly encoded (`~+%2F9==`, any of its 2^n
    spellings) is then the token the redactor knows (trial AE)."""
    if settings.LOG_LEVEL == 'DEBUG':
        learn_shown_tokens(', '.join(value for name, value in req.headers if name == 'AUTHORIZATION'))
    worker.log.debug('%s %s', req.method, unquote(req.path, errors='replace'))


def post_request(worker, req, environ, resp):
    """Pace a gevent worker's kept-alive connections between their requests (lib/http/workers.py)."""
    if settings.WORKER_CLASS == 'gevent':
        pace_kept_alive_connection(environ, resp, behind_proxy=settings.TRUSTED_PROXY_HOPS > 0)


# Set in a worker once it stops: Ctrl-C reaches a worker twice (SIGINT from the terminal, SIGQUIT from the master), and
# a second quit would raise SystemExit while the first is exiting, a traceback on stderr (under gevent, in the
# interpreter's own shutdown, where gevent's patched threading yields to the greenlet gunicorn spawned for it).
STOPPING = []


def ignore_signal(signum, frame):
    """Do nothing: the worker is stopping already."""


def stop_once():
    """Ignore stop signals from now on; tell whether this worker was already stopping."""
    # A handler that does nothing, not SIG_IGN: a signal already caught but not yet handled would be reported.
    for stop_signal in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
        signal.signal(stop_signal, ignore_signal)
    already = bool(STOPPING)
    STOPPING.append(True)
    return already


def worker_int(worker):
    """Quit once, the queries still running cancelled first (cancel_queries_at_a_quick_stop): a second quit, already on
    its way (gevent runs each in a greenlet of its own), ends quietly."""
    if not stop_once():
        cancel_queries_at_a_quick_stop()
    elif settings.WORKER_CLASS == 'gevent':
        from gevent import GreenletExit  # a greenlet that raises it ends without a report
        raise GreenletExit


def worker_exit(server, worker):
    """Take no stop signal once the worker's loop is over: it is exiting already."""
    stop_once()


def child_exit(server, worker):
    """Drop a dead worker's live pool gauges from the metrics."""
    forget_process(worker.pid)
