"""Apply migrations/*.sql once, in order, under an advisory lock so replicas starting together do not race."""
import logging
from pathlib import Path
from contextlib import contextmanager

from yoyo import read_migrations
from yoyo.backends import get_backend_class
from yoyo.connections import DatabaseURI


log = logging.getLogger('dbapi.migrate')
# The project's migrations/ folder, beside lib/.
MIGRATIONS_DIR = Path(__file__).resolve().parents[2] / 'migrations'
MIGRATION_LOCK_KEY = 0x64626170  # "dbap": one key for every dbapi replica of a database
MIGRATION_TABLE = '_yoyo_migration'


def yoyo_backend(dsn):
    """Open a yoyo backend on dsn; the DSN goes to psycopg2 whole, so any password works."""
    uri = DatabaseURI('postgresql', None, None, None, None, None, {'dsn': dsn})
    return get_backend_class('postgresql')(uri, MIGRATION_TABLE)


@contextmanager
def advisory_lock(conn, key=MIGRATION_LOCK_KEY):
    """Hold a session advisory lock on conn for the block; the server drops it if the process dies."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT pg_advisory_lock(%s)', (key,))
    try:
        yield
    finally:
        with conn.cursor() as cursor:
            cursor.execute('SELECT pg_advisory_unlock(%s)', (key,))


def migrate(dsn, directory=MIGRATIONS_DIR):
    """Apply every pending migration in directory to the database at dsn; return their ids."""
    backend = yoyo_backend(dsn)
    try:
        with advisory_lock(backend.connection):
            backend.init_database()
            # We hold the advisory lock, so a yoyo lock row left now is stale (its process died).
            backend.break_lock()
            with backend.lock():
                pending = backend.to_apply(read_migrations(str(directory)))
                backend.apply_migrations(pending)
        applied = [migration.id for migration in pending]
        log.info('migrations applied', extra={'labels': {'applied': ','.join(applied) or 'none'}})
        return applied
    finally:
        backend.connection.close()
