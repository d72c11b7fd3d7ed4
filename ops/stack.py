"""`make stack`: the production topology on this machine, for people without Docker and for the tests.

PostgreSQL (the embedded one unless configured), pgbouncer in transaction mode when STACK_PGBOUNCER=1,
REPLICAS gunicorn replicas (default 3) on loopback ports from REPLICA_BASE_PORT (default PORT + 1),
and nginx on PORT rendered from nginx/dbapi.conf.template. A replica that dies is restarted, as
compose's restart policy would. SIGHUP restarts every replica, one by one, without failing a request
(a rolling restart, docs/deployment.md). Ctrl-C (or SIGTERM) stops all of it.
"""
import signal

from lib.process import (COMMAND_STOP, STOP_CAUSES, StartInterrupted, hangup_ignored, stop_on_terminal_hangup,
                         write_line, write_lines_whole)


def stopped_line(signum):
    """Return the stack's one line for a stop signal that came before it served."""
    return f'stack: stopped by {STOP_CAUSES[signum]} before it served'


if __name__ == '__main__':
    write_lines_whole()  # print()'s lines and the libraries', each in one write
    # First, before any other import: they take most of a second (a Ctrl-C then was a traceback). Under nohup
    # (SIGHUP ignored) SIGHUP is left alone; main takes it once it has looked for the terminal's hangup.
    COMMAND_STOP.take_stop_signals(stopped_line)

import collections  # noqa: E402
import ctypes  # noqa: E402
import fcntl  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import pwd  # noqa: E402
import re  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import urllib.request  # noqa: E402
from contextlib import closing, contextmanager, nullcontext, suppress  # noqa: E402
from dataclasses import dataclass  # noqa: E402
from functools import partial  # noqa: E402
from pathlib import Path  # noqa: E402

from lib.errors import StartupError, report_startup_errors, shown_on_one_line  # noqa: E402

if __name__ == '__main__':
    # Before settings is imported, whose checks run at import: a bad PORT is one line, not a traceback.
    report_startup_errors()

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402

import settings  # noqa: E402
from lib.db.waiting import interruptible_wait  # noqa: E402
from lib.logs import check_secrets_spare_every_line, configure_process_logging, settings_config  # noqa: E402
from manage import (check_before_fork, check_reachable, counted, default_dsn, gunicorn_command,  # noqa: E402
                    how_to_call, migrate_database, with_connect_timeout)

from . import nginx, pgbouncer  # noqa: E402
from .ports import free_ports, port_is_free  # noqa: E402
from .render import TemplateError  # noqa: E402

# A program that exits is started again after RESTART_DELAY_SECONDS, doubled for each exit in a row that came within
# STABLE_SECONDS of its start, up to MAX_RESTART_DELAY_SECONDS: Docker's restart policy (its delay doubles, and
# resets once the container ran 10 s), so that a replica that cannot start (a broken module) is not started again
# every second without end.
RESTART_DELAY_SECONDS = 1.0
MAX_RESTART_DELAY_SECONDS = 32.0
STABLE_SECONDS = 10.0
STARTUP_TIMEOUT_SECONDS = 60
STOP_TIMEOUT_SECONDS = settings.GRACEFUL_TIMEOUT + 10  # gunicorn's graceful_timeout and a little more
# After nginx was told to stop sending to a replica: time for the requests it had already passed on to arrive.
DRAIN_SECONDS = 1.0
# How long a probe of a replica waits for its answer: one that gave up would be logged by the replica as a client
# gone (499, an error line), as a loaded host's first answers can take more than a second.
PROBE_TIMEOUT_SECONDS = 5
# What `nginx -t` writes around its reason: the time, level and pid before, the scratch config's place after.
NGINX_REFUSAL_NOISE = re.compile(r'^.*\[emerg\] \d+#\d+: | in /\S+$')
NGINX_RELOAD_TIMEOUT_SECONDS = 10
PR_SET_PDEATHSIG = 1

log = logging.getLogger('dbapi.stack')


# The most replicas the stack runs (REPLICAS): nginx's shared upstream zone is sized for them.
MAX_REPLICAS = 64
# nginx/dbapi.envsh's settings that the stack makes from its own (nginx_environment), and what to set instead.
STACK_MADE_NGINX_SETTINGS = {'NGINX_LISTEN': 'from PORT (nginx listens on 127.0.0.1:PORT): set PORT',
                             'DBAPI_UPSTREAMS': 'from REPLICAS and REPLICA_BASE_PORT: set those'}


class StackError(Exception):
    """The stack cannot start or keep running."""


@dataclass(frozen=True)
class StackConfig:
    """What to run: ports, replica count and whether pgbouncer sits between the replicas and PostgreSQL."""

    port: int
    replicas: int
    replica_base_port: int
    pgbouncer: bool
    pgbouncer_port: int

    @classmethod
    def from_environment(cls):
        """Read PORT, REPLICAS, REPLICA_BASE_PORT, STACK_PGBOUNCER and PGBOUNCER_PORT; StackError for a setting of
        the nginx image that the stack makes itself (STACK_MADE_NGINX_SETTINGS), which it would replace unsaid."""
        for name, instead in STACK_MADE_NGINX_SETTINGS.items():
            if settings.env_str(name) is not None:
                raise StackError(f'{name} is the nginx image\'s setting: make stack sets it itself, {instead}')
        replicas = settings.env_int('REPLICAS', 3, 1, MAX_REPLICAS)
        if not settings.env_str('REPLICA_BASE_PORT') and settings.PORT + replicas > 65535:
            raise StackError(f'the {counted(replicas, "replica")} after PORT {settings.PORT} would need ports past '
                             f'65535: set PORT or REPLICA_BASE_PORT lower')
        return cls(port=settings.PORT, replicas=replicas,
                   replica_base_port=settings.env_int('REPLICA_BASE_PORT', settings.PORT + 1, 1, 65535 - replicas + 1),
                   pgbouncer=settings.env_int('STACK_PGBOUNCER', 0, 0, 1) == 1,
                   pgbouncer_port=settings.env_int('PGBOUNCER_PORT', 6432, 1, 65535))

    @property
    def replica_ports(self):
        """Return the loopback port of each replica."""
        return [self.replica_base_port + index for index in range(self.replicas)]

    def port_owners(self):
        """Return {port: which server listens there (and the setting that moves it)}; StackError when two share one."""
        wanted = [(self.port, 'nginx (PORT)')]
        wanted += [(port, f'replica {index} (REPLICA_BASE_PORT)') for index, port in enumerate(self.replica_ports, 1)]
        wanted += [(self.pgbouncer_port, 'pgbouncer (PGBOUNCER_PORT)')] if self.pgbouncer else []
        owners = {}
        for port, owner in wanted:
            if (first := owners.setdefault(port, owner)) != owner:
                raise StackError(f'port {port} would serve both {first} and {owner}: move one of them')
        return owners


def check_ports_free(config):
    """Raise StackError, before anything starts, when something listens on a port of the stack: its servers would
    fail to bind while their readiness checks took the other server's answers for their own."""
    taken = [f'{port} ({owner})' for port, owner in config.port_owners().items() if not port_is_free(port)]
    if taken:
        raise StackError(f'{counted(len(taken), "port")} in use: {", ".join(taken)}: stop what listens there, or '
                         f'move the stack')


def die_with_parent():
    """Ask the kernel to stop this child when the stack's process dies, even by SIGKILL."""
    if sys.platform.startswith('linux'):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def identity(user):
    """Return the Popen arguments that run a child as user with that user's groups only (none: as we are)."""
    if user is None:
        return {}
    account = pwd.getpwnam(user)
    return dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[])


def signal_group(pid, signum):
    """Send signum to the process group led by pid, when it still exists."""
    try:
        os.killpg(pid, signum)
    except ProcessLookupError:
        pass


class Child:
    """One supervised program, in its own process group so that a stop or a kill reaches all of it."""

    def __init__(self, name, argv, env, stop_signal=signal.SIGTERM, restart=False, user=None):
        self.name, self.argv, self.env = name, argv, env
        self.stop_signal, self.restart, self.user = stop_signal, restart, user
        self.process = None
        self.exited_at = None
        self.started_at = None
        self.quick_exits = 0  # exits in a row within STABLE_SECONDS of a start
        self.restart_delay = RESTART_DELAY_SECONDS

    def start(self):
        """Start the program (again)."""
        self.exited_at = None
        self.started_at = time.monotonic()
        # Popen switches user before preexec_fn runs; a switch after it would clear the death signal. A stop that
        # came while Popen ran (the child forked, not yet ours to stop) comes once it is.
        with COMMAND_STOP.held_back():
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=settings.BASE_DIR, start_new_session=True,
                                            preexec_fn=die_with_parent, **identity(self.user))
        return self

    def exit_code(self):
        """Return the exit code, or None while the program runs."""
        return self.process.poll()

    def note_exit(self):
        """Note that the program exited, now, and set restart_delay: RESTART_DELAY_SECONDS after a run of
        STABLE_SECONDS or more, else doubled for each exit in a row, at most MAX_RESTART_DELAY_SECONDS."""
        self.exited_at = time.monotonic()
        self.quick_exits = self.quick_exits + 1 if self.exited_at - self.started_at < STABLE_SECONDS else 0
        self.restart_delay = min(RESTART_DELAY_SECONDS * 2 ** max(self.quick_exits - 1, 0), MAX_RESTART_DELAY_SECONDS)

    def stop(self, timeout=STOP_TIMEOUT_SECONDS, meanwhile=None):
        """Ask the program's leader to stop gracefully, calling meanwhile() (when given) while it does; kill the whole
        group after timeout."""
        if self.process is None:  # never started: Popen failed
            return
        if self.process.poll() is None:
            os.kill(self.process.pid, self.stop_signal)
            deadline = time.monotonic() + timeout
            while self.process.poll() is None and time.monotonic() < deadline:
                if meanwhile is not None:
                    meanwhile()
                with suppress(subprocess.TimeoutExpired):
                    self.process.wait(0.2)
        # Whatever is left of the group (stray workers, or all of it after the timeout) goes now.
        signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait()


def answers(port, path='/healthz', host='127.0.0.1'):
    """Tell whether host:port (an address, IPv6 in brackets) answers GET path with 200 within PROBE_TIMEOUT_SECONDS."""
    try:
        with urllib.request.urlopen(f'http://{host}:{port}{path}', timeout=PROBE_TIMEOUT_SECONDS) as response:
            response.read()  # read whole: an answer closed unread is logged as cut short, a failure
            return response.status == 200
    except OSError:
        return False


def port_open(port):
    """Tell whether something accepts TCP connections on 127.0.0.1:port."""
    with socket.socket() as probe:
        probe.settimeout(0.5)
        return probe.connect_ex(('127.0.0.1', port)) == 0


def wait_until(child, ready, what, timeout=STARTUP_TIMEOUT_SECONDS, meanwhile=None):
    """Wait until ready() is true, calling meanwhile() (when given) at every look; raise when child exits first or
    takes longer than timeout to `what`."""
    deadline = time.monotonic() + timeout
    while not ready():
        if child.exit_code() is not None:
            raise StackError(f'{child.name} exited with code {child.exit_code()} while starting')
        if time.monotonic() > deadline:
            raise StackError(f'{child.name} did not {what} within {timeout} s')
        if meanwhile is not None:
            meanwhile()
        time.sleep(0.1)


def pause(seconds, meanwhile):
    """Sleep for seconds, calling meanwhile() every tenth of a second."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        meanwhile()
        time.sleep(0.1)


def listening_sockets(port):
    """Return the sockets listening on TCP port (IPv4 and IPv6) as /proc/<pid>/fd links name them, 'socket:[inode]',
    from Linux's /proc/net tables (their columns: local address, state 0A is LISTEN, inode)."""
    sockets = set()
    for table in ('/proc/net/tcp', '/proc/net/tcp6'):
        for row in Path(table).read_text().splitlines()[1:]:
            columns = row.split()
            if columns[3] == '0A' and int(columns[1].rsplit(':', 1)[1], 16) == port:
                sockets.add(f'socket:[{columns[9]}]')
    return sockets


def holds_listener(child, port):
    """Tell whether child's own process listens on port: not another program that took the port meanwhile."""
    sockets = listening_sockets(port)
    folder = Path(f'/proc/{child.process.pid}/fd')
    try:
        return any(os.readlink(folder / fd) in sockets for fd in os.listdir(folder))
    except OSError:  # the process is gone, or closed that descriptor while it was looked at
        return False


def serves(child, port, path):
    """Tell whether child, and not another program on its port, answers GET path on port with 200."""
    return holds_listener(child, port) and answers(port, path)


def wait_until_serving(child, port):
    """Wait until child answers /healthz on port."""
    wait_until(child, lambda: serves(child, port, '/healthz'), f'answer on port {port}')


def wait_until_ready(child, port, meanwhile=None):
    """Wait until child answers /readyz on port: it serves and reaches its databases (wait_until's meanwhile)."""
    wait_until(child, lambda: serves(child, port, '/readyz'),
               f'become ready on port {port} (GET /readyz answered no 200: is every database reachable?)',
               meanwhile=meanwhile)


def child_pids(pid):
    """Return the process ids of pid's children (Linux's /proc)."""
    return set(Path(f'/proc/{pid}/task/{pid}/children').read_text().split())


def replica_process_id(index):
    """Return the PROCESS_ID of replica index (from 1; a lone replica's stand-in is 2): the stack's, numbered."""
    return f'{settings.PROCESS_ID}-{index}'


def check_replica_secrets(config, clients):
    """Stop the start when a secret is a word of a replica's every log line through its own PROCESS_ID
    (lib.logs.check_secrets_spare_every_line), as each replica would stop itself, one by one, once the stack runs."""
    base = settings_config(settings)
    for index in range(1, config.replicas + 2):  # and a stand-in's
        check_secrets_spare_every_line({**base, 'PROCESS_ID': replica_process_id(index)}, clients.secrets)


def server_facts(dsn):
    """Return (the PostgreSQL server at dsn as it names itself, its start time and port, however DSNs spell its
    address: trial AT; the connections it takes from the replicas, its max_connections less
    pgbouncer.RESERVED_SERVER_CONNECTIONS for its superuser slots, a migration, a psql session)."""
    with closing(psycopg2.connect(with_connect_timeout(dsn))) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT pg_postmaster_start_time(), current_setting('port'), "
                       "current_setting('max_connections')::int")
        started, port, max_connections = cursor.fetchone()
    return (started, port), max_connections - pgbouncer.RESERVED_SERVER_CONNECTIONS


def named_databases():
    """Return the DSNs of the named databases (DB_NAMES), which the replicas reach themselves, pgbouncer or not."""
    return [dsn for name, dsn in settings.DATABASES.items() if name != 'default']


def server_budgets(default, named, through_pgbouncer):
    """Return [(connections a server takes, databases the replicas reach there themselves)] for the servers of the
    default database and the named ones (their server_facts): the default counts only without pgbouncer, which then
    keeps a connection of its server at least (pgbouncer_connections gives it the rest)."""
    databases = collections.Counter(server for server, _ in named)
    taken = dict([default, *named])
    if through_pgbouncer:
        taken[default[0]] -= 1
    else:
        databases[default[0]] += 1
    return [(taken[server], count) for server, count in databases.items()]


def replicas_at_once(replicas):
    """Return how many replicas run at once: a lone replica's stand-in runs beside it in a rolling restart; with
    more, each is stopped before it starts again."""
    return replicas + 1 if replicas == 1 else replicas


def workers_per_replica(replicas, budgets):
    """Return each replica's WEB_CONCURRENCY such that the replicas running at once (replicas_at_once), each with that
    many workers of DB_POOL_MAX connections per database, fit each server's budget ((connections it takes,
    databases of the replicas there): server_budgets; docs/deployment.md, "The connection budget"):
    settings.WEB_CONCURRENCY, its default (2 x cores + 1) lowered to fit; StackError when one set does not fit, or
    not one worker would (trial AQ: 8 cores made 3 x 17 x 2 = 102 of PostgreSQL's 100)."""
    running = replicas_at_once(replicas)
    fits = {budget: budget[0] // (running * settings.DB_POOL_MAX * budget[1]) for budget in budgets}
    fitting = min([settings.WEB_CONCURRENCY, *fits.values()])
    if fitting == settings.WEB_CONCURRENCY or (fitting >= 1 and settings.env_str('WEB_CONCURRENCY') is None):
        return fitting
    taken, databases = min(fits, key=fits.get)
    raise StackError(budget_refusal(replicas, settings.WEB_CONCURRENCY if fitting >= 1 else 0, taken, databases))


def budget_refusal(replicas, workers, taken, databases):
    """Return why replicas of workers (0: not one fits) each cannot run on a server that takes taken connections,
    the replicas using databases there."""
    running = replicas_at_once(replicas)
    per_worker = settings.DB_POOL_MAX * databases
    who = replicas_named(replicas)
    pools = f'{settings.DB_POOL_MAX} connections (DB_POOL_MAX)' + (f' to each of {databases} databases there'
                                                                    if databases > 1 else '')
    server = f'PostgreSQL takes {taken} (its max_connections less {pgbouncer.RESERVED_SERVER_CONNECTIONS} for others)'
    if workers:
        return (f'{who}, each with {counted(workers, "worker")} (WEB_CONCURRENCY) of {pools}, would open '
                f'{running * workers * per_worker} connections; {server}: lower REPLICAS, WEB_CONCURRENCY or '
                'DB_POOL_MAX, or set STACK_PGBOUNCER=1')
    most = taken // per_worker if taken // per_worker > 1 else int(2 * per_worker <= taken)
    fix = (f'at most {counted(most, "replica")} fit; lower REPLICAS or DB_POOL_MAX' if most else
           f'not even 1 replica fits; lower DB_POOL_MAX to {taken // (replicas_at_once(1) * databases)} or less')
    return (f'not even 1 worker per replica fits: {who}, each with 1 worker of {pools}, would open '
            f'{running * per_worker} connections; {server}: {fix}, or set STACK_PGBOUNCER=1')


def replicas_named(replicas):
    """Return the replicas that run at once (replicas_at_once) in words: `3 replicas`, `1 replica and a rolling
    restart's stand-in`."""
    stand_in = " and a rolling restart's stand-in" if replicas_at_once(replicas) > replicas else ''
    return counted(replicas, 'replica') + stand_in


def replica_environment(index, port, dsn, run_dir, workers):
    """Return a replica's environment: its bind address and process id, the database, one proxy hop, its workers."""
    env = dict(os.environ, WEB_CONCURRENCY=str(workers))
    # Empty values keep env/<ENVIRONMENT>/.env from adding DEFAULT_DB_* next to DATABASE_URL.
    env.update({f'DEFAULT_DB_{part}': '' for part in [*settings.DB_PARTS.values(), 'PASS_FILE']})
    # Metrics files of its own, inside the stack's directory: gone with the stack (a SIGKILL leaves the directory).
    env.update(DATABASE_URL=dsn, BIND=f'127.0.0.1:{port}', PROCESS_ID=replica_process_id(index),
               TRUSTED_PROXY_HOPS='1', PROMETHEUS_MULTIPROC_DIR=str(Path(run_dir) / f'metrics-{index}'),
               DBAPI_SUPERVISOR='make stack')  # no binary upgrade (gunicorn.conf.py's pre_exec): it follows its master
    return env


def nginx_environment(config, replica_ports=None):
    """Return what nginx/dbapi.envsh reads, from the same settings the replicas use; nginx sends requests to
    replica_ports (default: every replica)."""
    env = {key: value for key, value in os.environ.items() if key != 'NGINX_RESOLVER'}
    ports = config.replica_ports if replica_ports is None else replica_ports
    # None to send to (every replica exited: a lone one): nginx needs a server, so each is listed `down` (trial AT:
    # a lone replica's port, listed, sent requests to whatever program took it meanwhile).
    env.update(DBAPI_UPSTREAMS_DOWN='1' if not ports else '')
    env.update(DBAPI_UPSTREAMS=' '.join(f'127.0.0.1:{port}' for port in ports or config.replica_ports),
               NGINX_LISTEN=f'127.0.0.1:{config.port}', MAX_CONTENT_LENGTH=str(settings.MAX_CONTENT_LENGTH),
               DB_STATEMENT_TIMEOUT_MS=str(settings.DB_STATEMENT_TIMEOUT_MS))
    # Derived from the request deadline (settings.NGINX_PROXY_TIMEOUT_MS); one set in the environment wins (tests).
    env.setdefault('NGINX_PROXY_TIMEOUT', f'{settings.NGINX_PROXY_TIMEOUT_MS}ms')
    return env


class Stack:
    """The running topology: start in order, restart replicas that die, stop in reverse order."""

    def __init__(self, config, run_dir):
        self.config = config
        self.run_dir = Path(run_dir)
        self.children = []
        self.replicas = []
        self.proxy = None
        self.restart_wanted = False
        self.restarting = False  # a rolling restart runs
        self.app_dsn = None  # the DSN the replicas use: PostgreSQL's, or pgbouncer's in front of it
        self.workers = settings.WEB_CONCURRENCY  # each replica's: lowered to fit PostgreSQL's connections
        # (Child, port) of a stand-in still serving for a lone replica that did not come back from a rolling restart
        self.standing_in = None
        self.nginx_ports = []  # the ports nginx sends requests to now
        self.reloads = 0  # of nginx's config, since the stack started
        self.down = set()  # the ports of the replicas that exited and are not ready again: nginx sends them nothing

    def launch(self, child):
        """Start child and keep it for supervision and stopping (kept first: a stop during its start stops it too)."""
        self.children.append(child)
        return child.start()

    def start(self):
        """Start the database, migrate, then pgbouncer, the replicas and nginx; wait until each serves."""
        check_ports_free(self.config)
        dsn = default_dsn()
        # a failing migration is one StartupError line: file:line and PostgreSQL's message
        migrate_database(dsn)
        default, named = server_facts(dsn), [server_facts(named_dsn) for named_dsn in named_databases()]
        self.workers = self.fit_workers(server_budgets(default, named, self.config.pgbouncer))
        self.app_dsn = self.start_pgbouncer(dsn, self.pgbouncer_connections(default, named)) \
            if self.config.pgbouncer else dsn
        self.replicas = [self.launch(Child(f'replica {index} (port {port})', gunicorn_command(),
                                           self.environment_of(index, port), restart=True))
                         for index, port in enumerate(self.config.replica_ports, start=1)]
        for replica, port in zip(self.replicas, self.config.replica_ports):
            wait_until_serving(replica, port)
        main_config = self.write_nginx_config(self.config.replica_ports)
        self.nginx_ports = list(self.config.replica_ports)
        # SIGQUIT is nginx's graceful stop: requests in flight are finished first.
        self.proxy = self.launch(Child('nginx', nginx.command(main_config), dict(os.environ), signal.SIGQUIT))
        wait_until_serving(self.proxy, self.config.port)

    def pgbouncer_connections(self, default, named):
        """Return the connections of the default database's server pgbouncer's pool may take: what it takes from the
        replicas (server_facts) less the pools of the named databases there (trial AT: 95 and 90 of 95)."""
        server, taken = default
        there = sum(1 for other, _ in named if other == server)
        return taken - replicas_at_once(self.config.replicas) * self.workers * settings.DB_POOL_MAX * there

    def fit_workers(self, budgets):
        """Return each replica's workers (workers_per_replica), saying so when the default had to be lowered."""
        workers = workers_per_replica(self.config.replicas, budgets)
        if workers < settings.WEB_CONCURRENCY:
            say(f'{counted(workers, "worker")} per replica, not {settings.WEB_CONCURRENCY} (2 x cores + 1), so that '
                f'the pools of {replicas_named(self.config.replicas)}, {settings.DB_POOL_MAX} connections a worker '
                'per database (DB_POOL_MAX), fit the connections PostgreSQL takes (its max_connections less '
                f'{pgbouncer.RESERVED_SERVER_CONNECTIONS}): set WEB_CONCURRENCY, or STACK_PGBOUNCER=1')
        return workers

    def environment_of(self, index, port):
        """Return the environment of replica index on port (replica_environment, with this stack's places)."""
        return replica_environment(index, port, self.app_dsn, self.run_dir, self.workers)

    def write_nginx_config(self, replica_ports):
        """Write nginx's config with requests going to replica_ports; return the main config file."""
        return nginx.write_config(self.run_dir / 'nginx', nginx_environment(self.config, replica_ports))

    def send_requests_to(self, replica_ports):
        """Have nginx send new requests to replica_ports only; return once its new workers run with that list.
        SIGHUP reloads nginx's config gracefully: its old workers finish the requests they hold."""
        nginx_pid = self.proxy.process.pid
        workers_before = child_pids(nginx_pid)
        self.write_nginx_config(replica_ports)
        self.nginx_ports = list(replica_ports)
        self.reloads += 1
        os.kill(nginx_pid, signal.SIGHUP)
        # nginx starts new workers only once it has read the whole new config; the next rewrite must wait for that.
        wait_until(self.proxy, lambda: child_pids(nginx_pid) - workers_before, 'reload its config',
                   NGINX_RELOAD_TIMEOUT_SECONDS)

    def rolling_restart(self):
        """Restart every replica, one at a time, so that no request fails: nginx stops sending to it first, it
        finishes what it accepted (gunicorn's graceful stop), and it gets requests again once it is ready. A lone
        replica gets a stand-in to take its requests meanwhile. A replica (or stand-in) that cannot start ends the
        restart there; the stack keeps serving with the replicas that do (a lone replica's stand-in), and the one left
        out rejoins once it is ready again (rejoin). A restart asked for before that is refused."""
        left_out = [replica.name for replica, port in self.replicas_and_ports() if port not in self.nginx_ports]
        if left_out:
            say(f'rolling restart refused: {left_out[0]} is not ready again yet')
            return
        ports = self.config.replica_ports
        say(f'rolling restart of {counted(len(ports), "replica")} started')
        reloads_before = self.reloads
        for replica, port in zip(self.replicas, ports):
            try:
                self.restart_replica(replica, port)
            except StackError as error:
                say(f'rolling restart stopped: {error}')
                serving = self.serving_ports()
                if port not in serving:  # out until it is ready again (rejoin); a lone one whose stand-in failed is not
                    self.down.add(port)
                self.send_requests_to(serving)
                return
        if self.nginx_ports != self.up(ports):
            self.send_requests_to(self.up(ports))
        say(f'rolling restart of {counted(len(ports), "replica")} finished '
            f'({counted(self.reloads - reloads_before, "reload")} of nginx)')

    def restart_replica(self, replica, port):
        """Take replica out of nginx's list, restart it gracefully, and wait until it is ready; the other replicas
        that exit meanwhile are restarted as at any other time (tend_others). The reload that takes the next replica
        out puts this one back (rolling_restart puts the last back): each reload of nginx closes its idle kept-alive
        client connections, and n replicas take n + 1 reloads, not 2n. A lone replica is put back before its
        stand-in stops."""
        ports = self.config.replica_ports
        others = [other for other in ports if other != port and other not in self.down]
        tend_others = partial(self.tend_others, replica)
        with self.stand_in(replica) if not others else nullcontext(others) as serving_meanwhile:
            self.send_requests_to(serving_meanwhile)
            pause(DRAIN_SECONDS, tend_others)
            replica.stop(meanwhile=tend_others)
            replica.start()
            wait_until_ready(replica, port, tend_others)
            if not others:
                self.send_requests_to(self.up(ports))

    def up(self, ports):
        """Return ports but those of the replicas that are down (none, when every one is: nginx then lists them
        `down`, nginx_environment, and answers its 502 at once)."""
        return [port for port in ports if port not in self.down]

    def take_out(self, replica):
        """Note that replica exited, and have nginx send it nothing until it is ready again (rejoin): during its
        restart's pause nginx sent it requests that failed (a rolling restart's too, the other replica taken out, all
        of them: trial AS), and another program that took its port got them."""
        port = dict(self.replicas_and_ports())[replica]
        self.down.add(port)
        if port in self.nginx_ports and self.up(self.nginx_ports) != self.nginx_ports:
            self.send_requests_to(self.up(self.nginx_ports))

    def tend_others(self, replica):
        """Restart the replicas but replica (which a rolling restart stops and starts itself) that exited."""
        for other in self.replicas:
            if other is not replica:
                self.check(other)

    @contextmanager
    def stand_in(self, replica):
        """Run one more replica, on a free port, while the block runs; yield [its port] once it is ready, and stop
        it gracefully (it finishes what it accepted) when the block ends. When the block fails once it serves
        (replica, the one it stands in for, did not come back), it keeps serving (standing_in); replica is stopped
        if it still runs, so that the supervisor starts it again. When the stack stops meanwhile (Ctrl-C, SIGTERM),
        the stand-in is stopped in the stack's order, after nginx (Stack.stop): nginx may be sending to it alone."""
        (port,) = free_ports(1)
        index = len(self.replicas) + 1
        stand_in = Child(f'stand-in replica {index} (port {port})', gunicorn_command(),
                         self.environment_of(index, port))
        try:
            stand_in.start()
            wait_until_ready(stand_in, port)
        except BaseException:
            stand_in.stop()
            raise
        try:
            yield [port]
        except (StackError, StartInterrupted) as stop:
            self.standing_in = (stand_in, port)
            if isinstance(stop, StackError):
                replica.stop()
            raise
        except BaseException:
            stand_in.stop()
            raise
        stand_in.stop()

    def replicas_and_ports(self):
        """Return (replica, its port) of every replica."""
        return list(zip(self.replicas, self.config.replica_ports))

    def serving_ports(self):
        """Return the ports nginx may send requests to after a failed restart: a stand-in's still serving, else those
        it sent to meanwhile (the replicas the restart had not stopped) whose own process listens on them (another
        program that took a port must get none), or every replica's when none does. The replica that failed is not
        among them, even when it listens (not ready: a database that hangs keeps its /readyz at 503): it rejoins
        once it is ready (rejoin)."""
        if self.standing_in is not None:
            return [self.standing_in[1]]
        listening = [port for replica, port in self.replicas_and_ports()
                     if port in self.nginx_ports and holds_listener(replica, port)]
        return listening or self.config.replica_ports

    def rejoin(self):
        """Put each replica left out of nginx's list (it exited, or a rolling restart failed at it) back in once it is
        ready again (its own process serves /readyz on its port); a lone replica's stand-in then stops."""
        back = [(replica, port) for replica, port in self.replicas_and_ports()
                if (port not in self.nginx_ports or port in self.down) and replica.exit_code() is None
                and serves(replica, port, '/readyz')]
        if not back:
            return
        self.down -= {port for _, port in back}
        sending = self.up(self.config.replica_ports)
        if sending != self.nginx_ports:
            self.send_requests_to(sending)
        done = 'nginx sends to it again'
        if self.standing_in is not None:
            time.sleep(DRAIN_SECONDS)
            self.standing_in[0].stop()
            self.standing_in = None
            done = 'its stand-in stopped'
        for replica, _ in back:
            say(f'{replica.name} is ready again; {done}')

    def write_pgbouncer_config(self, dsn, server_connections=100 - pgbouncer.RESERVED_SERVER_CONNECTIONS):
        """Write pgbouncer's config in front of dsn, its pool sized for this stack's replicas and at most
        server_connections; return what pgbouncer.write_config returns."""
        return pgbouncer.write_config(self.run_dir / 'pgbouncer', dsn, self.config.pgbouncer_port,
                                      settings.DB_STATEMENT_TIMEOUT_MS, replicas=self.config.replicas,
                                      server_max_connections=server_connections + pgbouncer.RESERVED_SERVER_CONNECTIONS)

    def start_pgbouncer(self, dsn, server_connections):
        """Start pgbouncer in front of dsn, its pool at most server_connections, and return the DSN that goes
        through it."""
        argv, bouncer_dsn, user = self.write_pgbouncer_config(dsn, server_connections)
        bouncer = self.launch(Child('pgbouncer', argv, dict(os.environ), signal.SIGINT, user=user))
        port = self.config.pgbouncer_port
        wait_until(bouncer, lambda: port_open(port), f'listen on port {port}')
        return bouncer_dsn

    def supervise(self):
        """Restart replicas that exit, after a short pause, and every replica when asked; raise when anything
        else exits."""
        while True:
            if self.restart_wanted:
                self.restart_wanted = False
                self.restarting = True
                try:
                    self.rolling_restart()
                finally:
                    self.restarting = False
            for child in self.children:
                self.check(child)
            if self.down or self.nginx_ports != self.config.replica_ports:
                self.rejoin()
            time.sleep(0.2)

    def want_rolling_restart(self, signum=None, frame=None):
        """Ask the supervisor for a rolling restart (the SIGHUP handler); refuse while one runs."""
        if self.restarting:
            say('rolling restart refused: one is running')
            return
        self.restart_wanted = True

    def check(self, child):
        """Notice that child exited, and restart it when it may be restarted and its pause is over."""
        code = child.exit_code()
        if code is None:
            return
        if not child.restart:
            raise StackError(f'{child.name} exited with code {code}')
        if child.exited_at is None:
            child.note_exit()
            report_exit(child, code)
            if child in self.replicas:
                self.take_out(child)
        elif time.monotonic() - child.exited_at >= child.restart_delay:
            child.start()

    def stop(self):
        """Stop nginx first, then the replicas (a stand-in too), then pgbouncer, each gracefully."""
        for child in reversed(self.children):
            child.stop()
            if child is self.proxy and self.standing_in is not None:
                self.standing_in[0].stop()


def announce(config):
    """Say on stderr where the stack serves and how to call it (stdout holds the log lines alone)."""
    ports = '-'.join(str(port) for port in sorted({config.replica_ports[0], config.replica_ports[-1]}))
    chain = f'nginx -> {counted(config.replicas, "replica")} on {"ports" if config.replicas > 1 else "port"} {ports}'
    if config.pgbouncer:
        chain += f' -> pgbouncer on port {config.pgbouncer_port}'
    url = f'http://127.0.0.1:{config.port}'  # nginx's: BIND is each replica's own, which the stack sets
    say(f'dbapi stack serves on {url} ({chain} -> PostgreSQL). Try:\n'
        f'  {how_to_call(base=url)}\nRolling restart of the replicas: kill -HUP {os.getpid()}. Ctrl-C stops it.',
        prefix='')


def report_exit(child, code):
    """Say on stderr that child exited and when it starts again, and log it as an ECS line on stdout, with
    `process.exit_code` (negative: the signal that killed it), where the replicas' own lines are: an error, or a
    warning for exit code 0, a stop someone else asked of it (a SIGTERM), no crash (trial BP: an error)."""
    line = f'{child.name} exited with code {code}; restarting it in {child.restart_delay:g} s'
    say(line)
    log.log(logging.WARNING if code == 0 else logging.ERROR, line, extra={'process.exit_code': code})


def say(text, prefix='stack: '):
    """Write a line of the stack's own on stderr; a terminal gone (its writes fail, EIO) loses it, and nothing else:
    a rolling restart asked for then must still run."""
    with suppress(OSError):
        write_line(f'{prefix}{text}')


def append_to_output_files():
    """Have every writer of the stack's stdout and stderr add at the file's end, when they are files: nginx reopens
    /dev/stdout with O_APPEND, while the replicas write through the offset they share with the stack, which a file
    opened without it (a shell's `>`, systemd's StandardOutput=file:) keeps behind nginx's lines, so that the
    replicas' lines would overwrite them. Setting O_APPEND (fcntl F_SETFL) on the open file reaches every process
    that inherits it."""
    for stream in (sys.stdout, sys.stderr):
        descriptor = stream.fileno()
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            fcntl.fcntl(descriptor, fcntl.F_SETFL, fcntl.fcntl(descriptor, fcntl.F_GETFL) | os.O_APPEND)


def on_sighup(stack, terminal, nohup, signum, frame):
    """Take a SIGHUP: a rolling restart, unless it is the stack's terminal hanging up (lib.process's
    ControllingTerminal; a shell passes its hangup on to its jobs), which stops the stack as SIGTERM does, or it
    comes before the stack serves, which it stops as it stops `make run` (sent to the whole group, it killed initdb or
    pg_ctl). Under nohup, which is to outlive the terminal, every SIGHUP is a rolling restart, once the stack
    serves."""
    if nohup or (COMMAND_STOP.served and not terminal.hung_up()):
        stack.want_rolling_restart()
        return
    interrupt(signum, frame)


def interrupt(signum, frame):
    """Turn SIGTERM, Ctrl-C (and a hangup of the stack's terminal) into the stack's orderly stop: lib.process's
    CommandStop, which raises nothing once the stop has begun (a second signal, `timeout` signalling make and the stack
    both, raised in main's `finally` before anything was stopped, and left nginx behind: trial P) and holds a stop back
    while the embedded PostgreSQL starts."""
    COMMAND_STOP.take(signum, frame)


def check_nginx_settings(config):
    """Render nginx's config once into a scratch folder and have nginx test it (`nginx -t`): a bad NGINX_* setting
    (TemplateError, or StackError with nginx's own words) stops the stack before anything starts, not once the
    replicas run."""
    with tempfile.TemporaryDirectory(prefix='dbapi-nginx-check-') as scratch:
        os.chmod(scratch, 0o711)  # nginx's workers (nobody, under root) reach their folders in here
        tested = subprocess.run(nginx.command(nginx.write_config(scratch, nginx_environment(config)), test=True),
                                capture_output=True, text=True)
    if tested.returncode:
        refusal = next((line for line in tested.stderr.splitlines() if '[emerg]' in line), tested.stderr.strip())
        raise StackError(f'nginx refuses its settings: {NGINX_REFUSAL_NOISE.sub("", refusal)}')


def main():
    """Run the stack until Ctrl-C or SIGTERM; return the exit status."""
    configure_process_logging(settings)
    psycopg2.extensions.set_wait_callback(interruptible_wait)  # a stop cancels a migration's statement at once
    try:
        config = StackConfig.from_environment()
        # Tokens, secrets, session hooks, modules: a bad one stops the stack once, before anything starts.
        check_replica_secrets(config, check_before_fork()[1])
        # A named database out of reach stops the stack as it stops `make run`: its replicas would never be ready, and
        # a rolling restart would stop at the first one. (The default database is reached by the migrations.)
        check_reachable({name: dsn for name, dsn in settings.DATABASES.items() if name != 'default'})
        check_nginx_settings(config)
    except (StackError, StartupError, TemplateError, FileNotFoundError) as exc:  # FileNotFoundError: no nginx
        say(f'{shown_on_one_line(str(exc))}')
        return 1
    append_to_output_files()
    nohup = hangup_ignored()  # the early SIGHUP handler is set only when it is not ignored
    signal.signal(signal.SIGTERM, interrupt)
    # A shell starts a background job with SIGINT ignored, and Python then keeps ignoring it: Ctrl-C (or a test's
    # SIGINT) must stop the stack however it was started.
    signal.signal(signal.SIGINT, interrupt)
    terminal = stop_on_terminal_hangup()
    with tempfile.TemporaryDirectory(prefix='dbapi-stack-') as run_dir:
        # Traversable, not listable: nginx workers (nobody) keep request bodies in here.
        os.chmod(run_dir, 0o711)
        stack = Stack(config, run_dir)
        signal.signal(signal.SIGHUP, partial(on_sighup, stack, terminal, nohup))
        try:
            stack.start()
            announce(config)
            COMMAND_STOP.served = True
            stack.supervise()
        except StartInterrupted as stop:  # its line said before it served (COMMAND_STOP.stopped_line)
            status = 0 if COMMAND_STOP.served else stop.code
        except (StackError, StartupError, FileNotFoundError) as exc:
            say(f'{shown_on_one_line(str(exc))}')
            status = 1
        finally:
            COMMAND_STOP.end()
            stack.stop()
    return status


if __name__ == '__main__':
    sys.exit(main())
