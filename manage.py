"""Command line: `python manage.py migrate` applies migrations; `python manage.py serve` is what `make run` runs."""
import argparse
import os
import signal
import subprocess
import sys

import settings
from lib.db.embedded import start_embedded
from lib.logs import configure_process_logging
from lib.db.migrate import migrate


def default_dsn():
    """Return the default database's DSN, starting the embedded server when none is configured."""
    return settings.DATABASES['default'] or start_embedded(settings.EMBEDDED_DB_DIR)


def how_to_call():
    """Return a curl line that calls the running service."""
    # Only the development token of env/local/.env is shown; a real one never reaches a terminal or a log.
    token = settings.BEARER if settings.DEVELOPMENT and settings.BEARER else '<token>'
    return (f"curl -s -X POST http://127.0.0.1:{settings.PORT}/example/foo -H 'Authorization: Bearer {token}' "
            "-H 'Content-Type: application/json' -d '{\"name\": \"Ada\"}'")


def serve():
    """Start the database if needed, migrate, and run gunicorn until SIGINT or SIGTERM."""
    dsn = default_dsn()
    migrate(dsn)
    environment = {**os.environ, 'DATABASE_URL': dsn} if not settings.DATABASES['default'] else dict(os.environ)
    gunicorn = subprocess.Popen([sys.executable, '-m', 'gunicorn', '-c', 'gunicorn.conf.py', 'app:create_app()'],
                                cwd=settings.BASE_DIR, env=environment)
    print(f'dbapi serves on http://127.0.0.1:{settings.PORT} with {settings.WEB_CONCURRENCY} workers. Try:\n'
          f'  {how_to_call()}\nCtrl-C stops it.', flush=True)
    # Ctrl-C reaches gunicorn too (same process group); SIGTERM is passed on. Either way, wait for it.
    signal.signal(signal.SIGTERM, lambda *_: gunicorn.terminate())
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return gunicorn.wait()


def main(argv=None):
    """Run the command named on the command line."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument('command', choices=['migrate', 'serve'])
    command = parser.parse_args(argv).command
    configure_process_logging(settings)
    if command == 'migrate':
        migrate(default_dsn())
        return 0
    return serve()


if __name__ == '__main__':
    sys.exit(main())
