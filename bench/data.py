"""The bench database: its own embedded PostgreSQL under .data/bench, migrated and seeded."""
from contextlib import closing

import psycopg2

from lib.db.embedded import start_embedded
from lib.db.migrate import migrate

from .servers import BENCH_DIR

USERS = 1_000_000
ACCOUNTS = 1_000
SEED_USERS = """
    INSERT INTO users (email, name)
    SELECT 'seed-' || n || '@seed.bench', 'Seed User ' || n FROM generate_series(1, %(count)s) AS n"""
SEED_ACCOUNTS = """
    INSERT INTO accounts (owner, balance)
    SELECT 'Bench Owner ' || n, 1000000 FROM generate_series(1, %(count)s) AS n"""


def start_database():
    """Start (or join) the bench's embedded PostgreSQL, stopped when the bench exits; return a migrated DSN."""
    dsn = start_embedded(BENCH_DIR / 'pg', database='dbapi_bench', stop_at_exit=True)
    migrate(dsn)
    return dsn


def run_sql(dsn, *statements, params=None):
    """Run statements outside a transaction (VACUUM needs that); return the last one's first row."""
    with closing(psycopg2.connect(dsn)) as conn:
        conn.autocommit = True
        with conn.cursor() as cursor:
            for statement in statements:
                cursor.execute(statement, params)
            return cursor.fetchone() if cursor.description else None


def seed_is_intact(dsn):
    """Tell whether users 1..USERS are exactly the seeded rows."""
    count, lowest, highest = run_sql(dsn, 'SELECT count(*), min(id), max(id) FROM users WHERE id <= %(count)s',
                                     params={'count': USERS})
    return (count, lowest, highest) == (USERS, 1, USERS)


def reset_users(dsn):
    """Leave exactly the USERS seeded users: drop the rows earlier runs created, or seed anew."""
    if seed_is_intact(dsn):
        run_sql(dsn, 'DELETE FROM users WHERE id > %(count)s', 'VACUUM ANALYZE users', params={'count': USERS})
    else:
        print(f'bench: seeding {USERS:,} users (once; later runs reuse them)', flush=True)
        run_sql(dsn, 'TRUNCATE users RESTART IDENTITY CASCADE', SEED_USERS, 'VACUUM ANALYZE users',
                params={'count': USERS})


def reset_accounts(dsn):
    """Replace the accounts with ACCOUNTS rich ones, so transfers of 0.01 never overdraw."""
    run_sql(dsn, 'TRUNCATE accounts RESTART IDENTITY CASCADE', SEED_ACCOUNTS, 'VACUUM ANALYZE accounts',
            params={'count': ACCOUNTS})
