"""The embedded PostgreSQL (pgserver, from PyPI) used by local and test when no database is configured."""
import warnings

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn


def start_embedded(data_dir, database='dbapi', stop_at_exit=True):
    """Start (or join) the embedded server under data_dir and return the DSN of database in it."""
    with warnings.catch_warnings():
        warnings.simplefilter('ignore')  # platformdirs warns when XDG_RUNTIME_DIR is unset
        import pgserver
        data_dir.parent.mkdir(parents=True, exist_ok=True)
        server = pgserver.get_server(data_dir, cleanup_mode='stop' if stop_at_exit else None)
    return ensure_database(server.get_uri(), database)


def ensure_database(server_dsn, database):
    """Create database on the server when it is missing; return its DSN."""
    conn = psycopg2.connect(server_dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute('SELECT 1 FROM pg_database WHERE datname = %s', (database,))
            if cursor.fetchone() is None:
                cursor.execute(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(database)))
    finally:
        conn.close()
    return make_dsn(server_dsn, dbname=database)

