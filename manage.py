"""Command line: `python manage.py migrate` applies migrations; `python manage.py serve` is what `make run` runs.

Both check everything before anything starts: a bad setting, token, module or migration stops them with one line
on stderr that names it (never a secret) and a non-zero exit code.
"""
import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from lib.errors import StartupError, report_startup_errors

if __name__ == '__main__':
    # Before settings is imported, whose checks run at import: their failure is one line, not a traceback.
    report_startup_errors()

import psycopg2  # noqa: E402
from dotenv import dotenv_values  # noqa: E402
from yoyo import read_migrations  # noqa: E402

import settings  # noqa: E402
from lib.db.embedded import start_embedded  # noqa: E402
from lib.db.migrate import MIGRATIONS_DIR, migrate, yoyo_backend  # noqa: E402
from lib.logs import configure_process_logging  # noqa: E402
from lib.logs.secrets import Redactor, configured_secrets  # noqa: E402
from lib.modules import ModuleError, load_module, module_folders  # noqa: E402

# The development token shipped in env/local/.env: the only one a terminal may show.
SHIPPED_LOCAL_ENV = settings.BASE_DIR / 'env' / 'local' / '.env'
SERVE_WAIT_SECONDS = 60


def default_dsn():
    """Return the default database's DSN, starting the embedded server when none is configured."""
    return settings.DATABASES['default'] or start_embedded(settings.EMBEDDED_DB_DIR)


def one_line(text, dsn):
    """Return text on one line with dsn and every spelling of its password taken out."""
    return Redactor(configured_secrets({'default': dsn}, [])).redact(' '.join(str(text).split()))


def apply_migrations(dsn, directory=MIGRATIONS_DIR):
    """Migrate dsn; a database out of reach or a failing migration is a StartupError of one line."""
    try:
        return migrate(dsn, directory)
    except psycopg2.Error as exc:
        if exc.pgcode is None:  # no SQLSTATE: no connection was made, or it broke
            raise StartupError(f'the database cannot be reached: {one_line(exc, dsn)}') from None
        raise StartupError(one_line(migration_failure(exc, dsn, directory), dsn)) from None


def migration_failure(exc, dsn, directory):
    """Describe a failed migration as file:line and PostgreSQL's own message."""
    statement = exc.cursor.query.decode(errors='replace') if exc.cursor is not None and exc.cursor.query else ''
    path, line = locate_statement(statement, exc.diag.statement_position, pending_migration_files(dsn, directory))
    where = f'{path}:{line}' if line else str(path)
    return f'migration {where} failed: {exc.diag.message_primary} (SQLSTATE {exc.pgcode})'


def pending_migration_files(dsn, directory):
    """Return the files of the migrations not applied yet, in order: the failed one is among them."""
    backend = yoyo_backend(dsn)
    try:
        return [Path(migration.path) for migration in backend.to_apply(read_migrations(str(directory)))]
    finally:
        backend.connection.close()


def locate_statement(statement, position, files):
    """Return (file, line) of the character at position (1-based) of statement in the first file holding it."""
    for path in files:
        text = path.read_text()
        start = text.find(statement) if statement else -1
        if start >= 0:
            offset = start + max(int(position or 1), 1) - 1
            return path.relative_to(settings.BASE_DIR) if path.is_relative_to(settings.BASE_DIR) else path, \
                text.count('\n', 0, offset) + 1
    return (files[0] if files else 'migrations/'), None


def preflight(dsn):
    """Build the app once here, as every worker will, so a bad token or module stops the start once; return its routes."""
    from app import create_app  # the app's imports are heavy; `migrate` has no use for them
    try:
        app = create_app({'DATABASES': {**settings.DATABASES, 'default': dsn}})
    except ModuleError as exc:
        raise StartupError(str(exc)) from None
    for pool in app.extensions['dbapi'].pools.values():
        pool.close()
    return app.extensions['dbapi'].routes


def check_before_fork():
    """Check the bearer tokens and every module's route table once, without an app or a database: gunicorn's master
    runs it before it forks, so a bad one stops the start with one line instead of once per worker."""
    from lib.auth import load_clients
    load_clients({name: value for name, value in vars(settings).items() if name.isupper()})
    try:
        return discovered_routes()
    except ModuleError as exc:
        raise StartupError(str(exc)) from None


def discovered_routes():
    """Return the routes of every module in MODULE_PACKAGES, without building an app."""
    return [route for package in settings.MODULE_PACKAGES for name, folder in module_folders(package)
            for route in load_module(package, name, folder)]


def shown_token():
    """Return the token a curl example shows: the shipped development token itself, any other as $BEARER."""
    shipped = dotenv_values(SHIPPED_LOCAL_ENV).get('BEARER')
    return settings.BEARER if settings.BEARER and settings.BEARER == shipped else '$BEARER'


def how_to_call(routes=None):
    """Return a curl line that calls the running service: its first mounted action, else /healthz."""
    routes = discovered_routes() if routes is None else routes
    base = f'http://127.0.0.1:{settings.PORT}'
    if not routes:
        return f'curl -s {base}/healthz    # no module is mounted: add one under modules/'
    path = f'/{routes[0].module}/{routes[0].name}'
    return (f'curl -s -X POST {base}{path} -H "Authorization: Bearer {shown_token()}" '
            "-H 'Content-Type: application/json' -d '{}'")


def wait_until_serving(gunicorn):
    """Wait until gunicorn answers /healthz; return False when it exits first."""
    from ops.stack import answers  # ops.stack imports this module
    deadline = time.monotonic() + SERVE_WAIT_SECONDS
    while gunicorn.poll() is None and time.monotonic() < deadline:
        if answers(settings.PORT):
            return True
        time.sleep(0.1)
    return gunicorn.poll() is None


def serve():
    """Start the database if needed, migrate, check the app, and run gunicorn until SIGINT or SIGTERM."""
    dsn = default_dsn()
    apply_migrations(dsn)
    routes = preflight(dsn)
    environment = {**os.environ, 'DATABASE_URL': dsn} if not settings.DATABASES['default'] else dict(os.environ)
    gunicorn = subprocess.Popen([sys.executable, '-m', 'gunicorn', '-c', 'gunicorn.conf.py', 'app:create_app()'],
                                cwd=settings.BASE_DIR, env=environment)
    # Ctrl-C reaches gunicorn too (same process group); SIGTERM is passed on. Either way, wait for it.
    signal.signal(signal.SIGTERM, lambda *_: gunicorn.terminate())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if wait_until_serving(gunicorn):
        print(f'dbapi serves on http://127.0.0.1:{settings.PORT} with {settings.WEB_CONCURRENCY} workers. Try:\n'
              f'  {how_to_call(routes)}\nCtrl-C stops it.', flush=True)
    return gunicorn.wait()


def main(argv=None):
    """Run the command named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('command', choices=['migrate', 'serve'])
    command = parser.parse_args(argv).command
    configure_process_logging(settings)
    if command == 'migrate':
        apply_migrations(default_dsn())
        return 0
    return serve()


if __name__ == '__main__':
    sys.exit(main())
