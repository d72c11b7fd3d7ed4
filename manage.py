"""Command line: `python manage.py migrate` applies migrations; `python manage.py repair` takes applied migrations'
files as they are now; `python manage.py serve` is what `make run` runs.

Each checks everything before anything starts: a bad setting, token, module or migration stops it with one line
on stderr that names it (never a secret) and a non-zero exit code.
"""
import contextlib
import signal
import sys
from functools import partial

from lib.process import (COMMAND_STOP, METRICS_DIR_PREFIX, STOP_CAUSES, hangup_ignored, made_held_folder,
                         stop_on_terminal_hangup, write_line, write_lines_whole)

COMMAND_PURPOSES = {'migrate': 'apply the migrations still pending', 'repair': 'record the checksums still changed'}


def start_stopped_line(command, signum):
    """Return the one line of a command (serve, migrate, repair) that signum stopped before it served."""
    if command in ('migrate', 'repair'):
        return f'dbapi: {command} stopped by {STOP_CAUSES[signum]}; run it again to {COMMAND_PURPOSES[command]}'
    return f'dbapi: stopped by {STOP_CAUSES[signum]} before it served'


if __name__ == '__main__':
    write_lines_whole()  # print()'s lines, yoyo's and the libraries', each in one write
    # First: the imports below take a quarter of a second. The terminal's watch comes before SIGHUP's handler, and
    # under nohup (SIGHUP ignored) neither is set.
    stop_on_terminal_hangup()
    # Before gunicorn runs (imports, the embedded PostgreSQL's start, migrations): one line, not a traceback nor a
    # death by the signal; what started (the embedded PostgreSQL) is stopped by its own exit handlers.
    COMMAND_STOP.take_stop_signals(partial(start_stopped_line, sys.argv[1:2] and sys.argv[1]))

import argparse  # noqa: E402
import inspect  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

from lib.errors import StartupError, report_startup_errors  # noqa: E402

if __name__ == '__main__':
    # Before settings is imported, whose checks run at import: their failure is one line, not a traceback.
    report_startup_errors()

import psycopg2  # noqa: E402
import psycopg2.extensions  # noqa: E402
from psycopg2.extensions import make_dsn  # noqa: E402
from dotenv import dotenv_values  # noqa: E402

import settings  # noqa: E402
from lib.db.embedded import start_embedded  # noqa: E402
from lib.db.migrate import apply_migrations, one_line, repair_checksums  # noqa: E402
from lib.db.waiting import connect_timeout_of, interruptible_wait  # noqa: E402
from lib.logs import configure_process_logging, settings_config  # noqa: E402
from lib.logs.secrets import redacted  # noqa: E402
from lib.modules import ModuleError, discover_modules, load_module, module_files  # noqa: E402

# The development token shipped in env/local/.env: the only one a terminal may show.
SHIPPED_LOCAL_ENV = settings.BASE_DIR / 'env' / 'local' / '.env'
SERVE_WAIT_SECONDS = 60


def default_dsn():
    """Return the default database's DSN, starting the embedded server when none is configured: a stop waits for its
    start, since pgserver counts this process among the server's users only once it has started, and a stop before
    that left it running."""
    if settings.DATABASES['default']:
        return settings.DATABASES['default']
    with COMMAND_STOP.held_back():
        return start_embedded(settings.EMBEDDED_DB_DIR, stopping=COMMAND_STOP.stopping)


def migrate_database(dsn):
    """Apply the pending migrations to dsn within its connect timeout (with_connect_timeout) and
    MIGRATION_LOCK_TIMEOUT_MS; return their ids; StartupError of one line for any failure. A stop asked before is
    raised first (one Python ignored where it came)."""
    COMMAND_STOP.raise_if_asked()
    return apply_migrations(with_connect_timeout(dsn), lock_timeout_ms=settings.MIGRATION_LOCK_TIMEOUT_MS)


def with_connect_timeout(dsn):
    """Return dsn with the connect_timeout the pools use (lib.db.waiting's connect_timeout_of: its own above 0, else
    DB_CONNECT_TIMEOUT): a server that accepts and never answers then fails the migrations and the start's checks,
    where it held them for good."""
    return make_dsn(dsn, connect_timeout=connect_timeout_of(dsn, settings.DB_CONNECT_TIMEOUT))


def preflight(dsn, clients):
    """Build the app once here, as every worker will, so a bad token or module stops the start once; return its routes.
    clients: the bearer clients check_before_fork loaded, whose tokens a module's error is kept from."""
    from app import create_app  # the app's imports are heavy; `migrate` has no use for them
    databases = {**settings.DATABASES, 'default': dsn}
    try:
        app = create_app({'DATABASES': databases})
    except ModuleError as exc:
        raise without_secrets(exc, databases, clients.secrets) from None
    for pool in app.extensions['dbapi'].pools.values():
        pool.close()
    check_reachable({name: dsn for name, dsn in settings.DATABASES.items() if name != 'default'})
    return app.extensions['dbapi'].routes


def check_reachable(databases):
    """Connect once to each of {name: dsn} (the default database was reached by its migrations), within its DSN's
    connect_timeout or else DB_CONNECT_TIMEOUT: one out of reach stops the start, with libpq's reason, the DSN and its
    password taken out."""
    for name, dsn in databases.items():
        try:
            psycopg2.connect(with_connect_timeout(dsn)).close()
        except psycopg2.Error as exc:
            raise StartupError(f'the database {name!r} cannot be reached: {one_line(exc, dsn)}') from None


def check_before_fork():
    """Check the bearer tokens, the secrets against the log lines' fixed text, the session hooks (DB_CONFIGURE,
    DB_RESET) and every module's route table once, without an app or a database: gunicorn's master runs it before it
    forks, so a bad one stops the start with one line instead of once per worker. Return (the routes, the bearer
    clients: lib.auth's TokenTable)."""
    from lib.auth import load_clients
    from lib.db import session_hook
    from lib.logs import check_secrets_spare_every_line
    config = settings_config(settings)
    clients = load_clients(config)
    check_secrets_spare_every_line(config, clients.secrets)
    try:
        for hook in ('DB_CONFIGURE', 'DB_RESET'):
            session_hook(config, hook)
        return discovered_routes(), clients
    except (ModuleError, StartupError) as exc:
        raise without_secrets(exc, config['DATABASES'], clients.secrets) from None


def without_secrets(exc, databases, tokens):
    """Return exc (a ModuleError or StartupError) as the StartupError that stops the start, its message without the
    DSNs and passwords of databases ({name: DSN}) nor the bearer tokens: it can quote a module's own exception."""
    return StartupError(redacted(str(exc), databases, tokens))


def unmounted_scopes(routes, clients):
    """Return a warning for each bearer client of clients (lib.auth's TokenTable) whose "modules" (BEARER_TOKENS)
    names a module that routes do not mount: a misspelt name answers that client 403 where it was meant to reach.
    Not a start error: one tokens file may serve deployments that mount different modules. The client is said as
    start errors say it (TokenTable.said: by place while a client is known by its sha256 alone)."""
    mounted = {route.module for route in routes}
    return [f'bearer client {clients.said(client.name)} may call the module {module!r}, which is not mounted (mounted: '
            f'{", ".join(sorted(mounted))}): if the name is misspelt, the module meant answers that client 403'
            for client in clients.values()
            for module in sorted((client.modules or set()) - mounted)]


def unread_module_files(packages):
    """Return a warning for each `.sql` file in a `migrations` folder of a module folder of packages (MODULE_PACKAGES):
    migrations are the project's `migrations/` files alone (docs/modules.md, Tables), so such a file never runs, and
    was silent (trial AK); and for each Python file beside the module folders, which mounts nothing (module_files)."""
    return [*(f"{path} is not read: a module's tables come in a file of the project's migrations/ folder"
              for _, _, folder in discover_modules(packages)
              for path in sorted(folder.rglob('*.sql')) if 'migrations' in path.relative_to(folder).parts[:-1]),
            *(f'{path} mounts nothing: a module is a folder holding a routes.py (docs/modules.md)'
              for package in packages for path in module_files(package))]


def discovered_routes():
    """Return the routes of every module in MODULE_PACKAGES, without building an app."""
    return [route for package, name, folder in discover_modules(settings.MODULE_PACKAGES)
            for route in load_module(package, name, folder, databases=set(settings.DATABASES))]


def shown_token():
    """Return the token a curl example shows: the shipped development token itself, $BEARER for another BEARER,
    $TOKEN for one of BEARER_TOKENS[_FILE]'s, or None when no token is configured (local and test allow that)."""
    if settings.BEARER:
        return settings.BEARER if settings.BEARER == dotenv_values(SHIPPED_LOCAL_ENV).get('BEARER') else '$BEARER'
    return '$TOKEN' if settings.BEARER_TOKENS or settings.BEARER_TOKENS_FILE else None


# The action the "Try:" line prefers: the example module's root action answers true to any authorised call.
EXAMPLE_ROUTE = ('example', '')


def needs_no_field(route):
    """Tell whether route's action answers an empty body: no required schema field, no parameter without a default."""
    from lib.decorators import schema_of  # modules import it anyway; manage's `migrate` has no use for it
    schema = schema_of(route.action)
    if schema is not None:
        return not any(field.required for field in schema.fields.values())
    return all(parameter.default is not parameter.empty or parameter.kind in (parameter.VAR_POSITIONAL,
                                                                                 parameter.VAR_KEYWORD)
               for parameter in inspect.signature(route.action).parameters.values())


def callable_route(routes):
    """Return the route an empty JSON body gets a 2xx from: the example module's root action, else the first action
    with no required field, else None."""
    preferred = [route for route in routes if (route.module, route.name) == EXAMPLE_ROUTE]
    return next(iter(preferred + [route for route in routes if needs_no_field(route)]), None)


def how_to_call(routes=None, base=None):
    """Return a curl line that calls the running service at base (a URL; default: where BIND serves, a Unix socket's
    included) with an answer in 2xx: an action that needs no field, else /healthz."""
    route = callable_route(discovered_routes() if routes is None else routes)
    if base is None:
        unix_socket = f'--unix-socket {unix_socket_path()} ' if settings.BIND_PORT is None else ''
        base = f'{unix_socket}{served_url()}'
    token = shown_token()
    if token is None:
        return f'curl -s {base}/healthz    # no bearer token is configured (BEARER, BEARER_TOKENS): actions answer 401'
    if route is None:
        return f'curl -s {base}/healthz    # no action without required fields is mounted'
    path = f'/{route.module}/{route.name}' if route.name else f'/{route.module}'
    return (f'curl -s -X POST {base}{path} -H "Authorization: Bearer {token}" '
            "-H 'Content-Type: application/json' -d '{}'")


def unix_socket_path():
    """Return the absolute path of the Unix socket BIND names (unix:/path); a relative one is relative to the
    project's folder, where gunicorn runs."""
    return os.path.normpath(os.path.join(settings.BASE_DIR, settings.BIND[len('unix:'):]))


def served_url():
    """Return the base URL of the service: http://<address>:<port>, or http://localhost for a Unix socket."""
    if settings.BIND_PORT is None:
        return 'http://localhost'
    return f'http://{url_host(called_address())}:{settings.BIND_PORT}'


def bound_address():
    """Return the IP address gunicorn binds for BIND's host (its first, for a name); StartupError when the name does
    not resolve."""
    host = settings.BIND_HOST or '0.0.0.0'
    try:
        return socket.getaddrinfo(host, settings.BIND_PORT, type=socket.SOCK_STREAM)[0][4][0]
    except socket.gaierror as exc:
        raise StartupError(f'BIND {settings.BIND}: the host {host} does not resolve ({exc.strerror})') from None


def called_address():
    """Return the address this machine calls the service on: the loopback one when gunicorn binds them all."""
    return {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(bound_address(), bound_address())


def url_host(address):
    """Return an IP address as a URL writes it: an IPv6 one in brackets."""
    return f'[{address}]' if ':' in address else address


def serving_answers():
    """Tell whether gunicorn answers GET /healthz with 200 where BIND puts it: a TCP port or a Unix socket."""
    from ops.stack import answers  # ops.stack imports this module
    if settings.BIND_PORT is not None:
        return answers(settings.BIND_PORT, host=url_host(called_address()))
    return unix_socket_answers(unix_socket_path())


def unix_socket_answers(path):
    """Tell whether the HTTP server on the Unix socket at path answers GET /healthz with 200."""
    try:
        with unix_socket_connection(path) as probe:
            probe.sendall(b'GET /healthz HTTP/1.0\r\nHost: localhost\r\n\r\n')
            answer = b''
            while chunk := probe.recv(4096):  # HTTP/1.0: the server closes once the whole answer is sent
                answer += chunk
    except OSError:
        return False
    return answer.split(b' ', 2)[1:2] == [b'200']


def wait_until_serving(gunicorn):
    """Wait until gunicorn answers /healthz; return False when it exits first."""
    deadline = time.monotonic() + SERVE_WAIT_SECONDS
    while gunicorn.poll() is None and time.monotonic() < deadline:
        if serving_answers():
            return True
        time.sleep(0.1)
    return gunicorn.poll() is None


def check_bind_free():
    """Stop the start, before anything runs, when gunicorn cannot bind where BIND (else PORT) says: a port something
    listens on (gunicorn would retry for seconds and exit, and the other server's answers would pass for its own),
    or a Unix socket path that is taken, live (gunicorn would take it over), or no place for a socket."""
    if settings.BIND_PORT is None:
        check_unix_socket_path(unix_socket_path())
    else:
        check_port_free(bound_address())


def check_port_free(address):
    """Raise StartupError when the machine has no such address, or something listens on BIND's port there."""
    from ops.ports import port_is_free
    try:
        free = port_is_free(settings.BIND_PORT, address)
    except OSError as exc:
        raise StartupError(f'BIND {settings.BIND}: cannot bind {address} ({exc.strerror})') from None
    if not free:
        setting = 'BIND' if settings.env_str('BIND') else 'PORT'
        raise StartupError(f'port {settings.BIND_PORT} ({settings.BIND}) is in use: stop what listens there, or set '
                           f'{setting}')


# The longest path a Unix socket address holds (sun_path's 108 bytes, its final NUL included), on Linux.
MAX_UNIX_SOCKET_PATH_BYTES = 107


def check_unix_socket_path(path):
    """Raise StartupError unless a new Unix socket can be bound at path: its folder exists, the path is short enough,
    and nothing but a socket nobody listens on (one a stopped server left) is there already."""
    folder = os.path.dirname(path)
    if not os.path.isdir(folder):
        raise StartupError(f'BIND {settings.BIND}: the folder {folder} does not exist')
    if len(os.fsencode(path)) > MAX_UNIX_SOCKET_PATH_BYTES:
        raise StartupError(f'BIND {settings.BIND}: a Unix socket path takes {MAX_UNIX_SOCKET_PATH_BYTES} bytes at most')
    if not os.path.lexists(path):
        return
    if not stat.S_ISSOCK(os.lstat(path).st_mode):
        raise StartupError(f'BIND {settings.BIND}: {path} exists and is not a socket')
    if unix_socket_accepts(path):
        raise StartupError(f'{path} ({settings.BIND}) is in use: stop what listens there, or set BIND')


def unix_socket_accepts(path):
    """Tell whether something listens on the Unix socket at path."""
    try:
        unix_socket_connection(path).close()
    except OSError:
        return False
    return True


def unix_socket_connection(path):
    """Return a socket connected to the Unix socket at path, with a timeout of a second; OSError when none listens."""
    probe = socket.socket(socket.AF_UNIX)
    probe.settimeout(1)
    try:
        probe.connect(path)
    except OSError:
        probe.close()
        raise
    return probe


def serve():
    """Check what needs no database, start the database if needed, migrate, check the app, and run gunicorn until
    SIGINT or SIGTERM."""
    check_bind_free()
    # tokens and modules: a bad one stops the start before the database or a migration
    clients = check_before_fork()[1]
    dsn = default_dsn()
    migrate_database(dsn)
    routes = preflight(dsn, clients)
    environment = {**os.environ, 'DATABASE_URL': dsn} if not settings.DATABASES['default'] else dict(os.environ)
    with metrics_dir(environment):
        return run_gunicorn(environment, routes)


@contextlib.contextmanager
def metrics_dir(environment):
    """Give gunicorn a metrics directory (PROMETHEUS_MULTIPROC_DIR) made here and removed once it has ended, however
    it ended: a gunicorn stopped before it has set its signal handlers dies without running its exit handlers, which
    would remove one it made itself. One the operator set is left alone."""
    if environment.get('PROMETHEUS_MULTIPROC_DIR'):
        yield
        return
    environment['PROMETHEUS_MULTIPROC_DIR'] = made_held_folder(METRICS_DIR_PREFIX)
    try:
        yield
    finally:
        shutil.rmtree(environment['PROMETHEUS_MULTIPROC_DIR'], ignore_errors=True)


def run_gunicorn(environment, routes):
    """Run gunicorn until it ends; print where it serves once it answers; return make run's exit code."""
    # A session of its own: the terminal's Ctrl-C comes here, never straight to gunicorn, which takes SIGINT for a
    # quick stop that drops the requests in flight unanswered and unlogged.
    # It stops (SIGTERM) when this process dies, even by SIGKILL: no orphan keeps the port.
    from ops.stack import die_with_parent  # ops.stack imports this module
    stops = Stops(COMMAND_STOP)
    COMMAND_STOP.raise_if_asked()
    # From here a stop is this one's: before gunicorn runs it is kept, and gunicorn stopped as soon as it runs.
    signal.signal(signal.SIGTERM, stops.graceful)
    if not hangup_ignored():  # nohup's: the terminal's end must not stop it
        signal.signal(signal.SIGHUP, stops.graceful)
    signal.signal(signal.SIGINT, stops.ctrl_c)
    COMMAND_STOP.raise_if_asked()  # one that came before the handlers above
    gunicorn = subprocess.Popen(gunicorn_command(), cwd=settings.BASE_DIR, env={**environment, **SUPERVISED},
                                start_new_session=True, preexec_fn=die_with_parent)
    stops.follow(gunicorn)
    if wait_until_serving(gunicorn) and COMMAND_STOP.asked is None:
        COMMAND_STOP.served = True
        where = served_url() if settings.BIND_PORT is not None else f'unix:{unix_socket_path()}'
        write_line(f'dbapi serves on {where} with {counted(settings.WEB_CONCURRENCY, "worker")}. Try:\n'
                   f'  {how_to_call(routes)}\nCtrl-C stops it.')
    code = stops.exit_code(gunicorn.wait())
    wait_for_session_end(gunicorn.pid, settings.GRACEFUL_TIMEOUT + 5)
    return code


def wait_for_session_end(session_id, seconds):
    """Wait until no process of the session (gunicorn's, whose id is its master's pid) is left, seconds at most:
    workers whose master was killed finish their requests first (docs/deployment.md), and the embedded PostgreSQL
    must outlive them."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            os.killpg(session_id, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)


# What gunicorn.conf.py's pre_exec reads: a supervisor follows the master it started, so no binary upgrade.
SUPERVISED = {'DBAPI_SUPERVISOR': 'make run'}


def gunicorn_command():
    """Return the argv that serves the app with gunicorn, as the Dockerfile's CMD does: gunicorn's own script beside
    this Python. Not `python -m gunicorn`: a SIGUSR2 upgrade runs the same argv again, gunicorn's __main__.py by its
    path, and the new master then imported gunicorn's `http` package for the standard library's, and failed."""
    return [str(Path(sys.executable).with_name('gunicorn')), '-c', 'gunicorn.conf.py', 'app:create_app()']


def counted(count, noun):
    """Return '1 worker', '3 workers': count and noun, plural unless count is 1."""
    return f'{count} {noun}' + ('' if count == 1 else 's')


class Stops:
    """The stops `make run` asks of gunicorn: the first Ctrl-C, SIGTERM or SIGHUP stops it gracefully (SIGTERM: the
    requests in flight are answered and logged, within GRACEFUL_TIMEOUT), a Ctrl-C after that at once (SIGINT,
    gunicorn's quick stop). Which stop came, and whether it served, is command_stop's (lib.process's CommandStop)."""

    def __init__(self, command_stop):
        self.gunicorn = None
        self.command_stop = command_stop

    def follow(self, gunicorn):
        """Take gunicorn as the process to stop; stop it at once if a stop came while it was started."""
        self.gunicorn = gunicorn
        if self.command_stop.asked is not None:
            gunicorn.terminate()

    def graceful(self, signum, _frame=None):
        """Stop gunicorn once the requests in flight are done (keep the stop for follow before it runs); the first
        stop once it served says so, a SIGTERM's or SIGHUP's as a Ctrl-C's (it said nothing: trial AA), after the
        stop is under way: a hangup's terminal is gone, and the write fails (EIO)."""
        first = self.command_stop.asked is None and self.command_stop.served
        self.command_stop.keep(signum)
        if self.gunicorn is not None:
            self.gunicorn.terminate()
        if first:
            again = ' Ctrl-C again stops at once.' if signum == signal.SIGINT else ''
            with contextlib.suppress(OSError):
                write_line(f'Stopping: the requests in flight finish first.{again}')

    def ctrl_c(self, *_):
        """Stop gracefully the first time, at once after that."""
        if self.command_stop.asked is not None:
            if self.gunicorn is not None:
                self.gunicorn.send_signal(signal.SIGINT)
            return
        self.graceful(signal.SIGINT)

    def exit_code(self, code):
        """Return gunicorn's exit code as make run's: a stop asked here once it served is a success, one that ended
        gunicorn by the signal itself too (it came before gunicorn had set its handlers); one asked before it served
        is the start's stop (its one line said when it came, 128 + the signal's number). A signal nobody asked for
        here (a SIGKILL of gunicorn's master) is said in one line, and is 128 + its number, as a shell says a
        process killed by it (Popen's -9 made exit code 247); a stop of the master alone once it served (SIGTERM:
        gunicorn ends gracefully, code 0) is said too."""
        asked = self.command_stop.asked
        if asked is not None and not self.command_stop.served:
            return 128 + asked
        if asked is not None and code in (-signal.SIGTERM, -signal.SIGINT):
            return 0
        if code < 0:
            write_line(f'dbapi: gunicorn was stopped by {signal.Signals(-code).name}, which make run did not send: its '
                       'workers finish the requests in flight, then stop')
            return 128 - code
        if code == 0 and asked is None and self.command_stop.served:  # another code: gunicorn's lines said why
            write_line('dbapi: gunicorn stopped, which make run did not ask: a stop signal sent to its master alone '
                       '(a SIGTERM lets its workers finish the requests in flight, a SIGINT or SIGQUIT cuts them)')
        return code


def main(argv=None):
    """Run the command named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('command', choices=['migrate', 'repair', 'serve'])
    command = parser.parse_args(argv).command
    COMMAND_STOP.raise_if_asked()  # one that came while the modules above were imported, which Python can ignore
    configure_process_logging(settings)
    psycopg2.extensions.set_wait_callback(interruptible_wait)  # a stop cancels a migration's statement at once
    if command == 'migrate':
        migrate_database(default_dsn())
        return 0
    if command == 'repair':
        repaired = repair_checksums(with_connect_timeout(default_dsn()))
        write_line(f'dbapi: {counted(len(repaired), "applied migration")} taken as now written: {", ".join(repaired)}'
                   if repaired else 'dbapi: every applied migration is as its file is: nothing to repair')
        return 0
    return serve()


if __name__ == '__main__':
    try:
        exit_code = main()
        if not COMMAND_STOP.served:  # once it serves, a stop is gunicorn's graceful one (Stops), its code main's
            COMMAND_STOP.raise_if_asked()  # one that Python ignored where the handler raised it
    finally:
        COMMAND_STOP.end()
    sys.exit(exit_code)
