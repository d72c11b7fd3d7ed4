"""Actions that change a connection's session, and one that reports it: the reset seam's test module."""
from lib.db import DEFAULT
from lib.decorators import inject_conn

SESSION_STATE = '''
    SELECT pg_backend_pid() AS pid, current_setting('statement_timeout') AS statement_timeout,
           current_setting('TimeZone') AS time_zone, current_setting('search_path') AS search_path,
           current_setting('application_name') AS application_name,
           current_user AS role,
           (SELECT count(*) FROM pg_prepared_statements) AS prepared,
           (SELECT count(*) FROM pg_listening_channels()) AS listening,
           (SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()) AS advisory_locks,
           (SELECT count(*) FROM pg_class WHERE relpersistence = 't') AS temp_tables
'''


@inject_conn(DEFAULT, autocommit=True)
def change_everything(conn):
    """Leave every kind of session state behind; return the backend's pid."""
    with conn.cursor() as cursor:
        cursor.execute("SET statement_timeout = 1234; SET search_path = pg_catalog; SET TimeZone = 'Asia/Tokyo'")
        cursor.execute("SELECT set_config('application_name', 'leaked', false)")
        cursor.execute('PREPARE leaked_statement AS SELECT 1')
        cursor.execute('LISTEN leaked_channel')
        cursor.execute('SELECT pg_advisory_lock(4242)')
        cursor.execute('CREATE TEMP TABLE leaked_table (id int)')
        cursor.execute('SET ROLE pg_read_all_settings')
        cursor.execute('SELECT pg_backend_pid() AS pid')
        return cursor.fetchone()


@inject_conn(DEFAULT, autocommit=True)
def state(conn):
    """Return what the session looks like now."""
    with conn.cursor() as cursor:
        cursor.execute(SESSION_STATE)
        return cursor.fetchone()


@inject_conn(DEFAULT, autocommit=True)
def local_outside_transaction(conn):
    """Run SET LOCAL in autocommit, where PostgreSQL ignores it with a warning."""
    with conn.cursor() as cursor:
        cursor.execute('SET LOCAL statement_timeout = 5')
        cursor.execute("SELECT current_setting('statement_timeout') AS statement_timeout")
        return cursor.fetchone()
