"""pgbouncer's settings from dbapi's connection budget, and ops/pgbouncer.ini.template rendered for the native stack.

`python -m ops.pgbouncer --replicas N` prints the settings for N replicas of the current environment's
WEB_CONCURRENCY and DB_POOL_MAX, as KEY=value lines for compose's .env (docs/deployment.md).
"""
import argparse
import os
import pwd
import secrets
import sys
from decimal import Decimal
from pathlib import Path

from psycopg2.extensions import make_dsn, parse_dsn

import settings
from settings import BASE_DIR

from .render import fill_template, program

TEMPLATE = BASE_DIR / 'ops' / 'pgbouncer.ini.template'
DEFAULT_SOCKET_DIR = '/var/run/postgresql'
# Server connections pgbouncer leaves to others: PostgreSQL's 3 superuser slots, a migration run, a psql session.
RESERVED_SERVER_CONNECTIONS = 5
# Client connections beyond the replicas' own: a rolling update runs old and new replicas side by side (twice
# the clients), and admin consoles, SHOW STATS scrapers and test apps come on top.
SPARE_CLIENT_CONNECTIONS = 100


def pool_settings(replicas, workers, pool_max, request_bound_ms, pool_timeout_ms, server_max_connections=100):
    """Return pgbouncer's pool settings (the template's values) from dbapi's connection budget and request deadline."""
    # Each worker runs at most pool_max transactions at once (its pool's size): all of them get a server
    # connection, unless PostgreSQL has fewer to give; then the rest queue in pgbouncer.
    transactions = replicas * workers * pool_max
    # A client waits for a server connection as long as the app waits for a pooled one: at least a second, as
    # pgbouncer checks its timeouts once a second and 0 would mean forever.
    query_wait_ms = max(pool_timeout_ms, 1000)
    # No transaction of a request sits idle longer than the request may take (request_bound_ms, settings'
    # REQUEST_BOUND_MS: its deadline, else its statement timeout; 0: nothing bounds a request, so never).
    return dict(PGBOUNCER_POOL_SIZE=str(min(transactions, server_max_connections - RESERVED_SERVER_CONNECTIONS)),
                PGBOUNCER_MAX_CLIENT_CONN=str(2 * transactions + SPARE_CLIENT_CONNECTIONS),
                PGBOUNCER_QUERY_WAIT_TIMEOUT=seconds(query_wait_ms),
                PGBOUNCER_IDLE_TRANSACTION_TIMEOUT=seconds(request_bound_ms))


def seconds(milliseconds):
    """Return milliseconds as pgbouncer's seconds, exactly: 5000 is '5', 1234 is '1.234'."""
    return str(Decimal(milliseconds) / 1000)


def settings_pool(replicas, statement_timeout_ms=None, server_max_connections=100):
    """Return pool_settings for replicas of this environment's workers, pools and request deadline (settings.py), on
    a server of server_max_connections."""
    if statement_timeout_ms is None:
        statement_timeout_ms = settings.DB_STATEMENT_TIMEOUT_MS
    # settings.REQUEST_BOUND_MS, for this statement timeout: the deadline, else the statement timeout.
    request_bound_ms = settings.REQUEST_DEADLINE_MS or statement_timeout_ms
    return pool_settings(replicas, settings.WEB_CONCURRENCY, settings.DB_POOL_MAX, request_bound_ms,
                         settings.DB_POOL_TIMEOUT_MS, server_max_connections)


def auth_line(user, password):
    """Return one auth_file line; pgbouncer escapes a double quote by doubling it."""
    def quoted(text):
        return '"' + text.replace('"', '""') + '"'
    return f'{quoted(user)} {quoted(password)}\n'


def server_parts(server_dsn):
    """Return host, port, user and password of the server's DSN, with libpq's defaults."""
    parts = parse_dsn(server_dsn)
    return dict(host=parts.get('host') or DEFAULT_SOCKET_DIR, port=parts.get('port') or '5432',
                user=parts.get('user') or pwd.getpwuid(os.getuid()).pw_name, password=parts.get('password'))


def run_as(server):
    """Return the user to run pgbouncer as (it refuses to run as root), or None when we are not root."""
    if os.geteuid() != 0:
        return None
    # A unix socket directory may be private to its owner (the embedded server's is 0700).
    if server['host'].startswith('/') and os.path.isdir(server['host']):
        return pwd.getpwuid(os.stat(server['host']).st_uid).pw_name
    return 'nobody'


def write_config(run_dir, server_dsn, port, statement_timeout_ms, replicas=3, server_max_connections=100):
    """Write pgbouncer.ini and its auth file into run_dir; return (argv, the DSN clients use, the user to run as).

    The pool's settings are those of `replicas` replicas of this environment (3: make stack's default), on a server
    of server_max_connections (make stack: what it leaves pgbouncer).
    """
    server = server_parts(server_dsn)
    # A server that trusts its clients has no password; pgbouncer's own login still needs one.
    password = server['password'] or secrets.token_urlsafe(24)
    run_dir = Path(run_dir)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (run_dir / 'users.txt').write_text(auth_line(server['user'], password))
    values = dict(PGBOUNCER_DB_HOST=server['host'], PGBOUNCER_DB_PORT=str(server['port']),
                  PGBOUNCER_DB_USER=server['user'], PGBOUNCER_LISTEN_ADDR='127.0.0.1', PGBOUNCER_PORT=str(port),
                  PGBOUNCER_AUTH_FILE=str(run_dir / 'users.txt'), DB_STATEMENT_TIMEOUT_MS=str(statement_timeout_ms),
                  **settings_pool(replicas, statement_timeout_ms, server_max_connections))
    ini = run_dir / 'pgbouncer.ini'
    ini.write_text(fill_template(TEMPLATE.read_text(), values, str(TEMPLATE)))
    user = run_as(server)
    if user:
        hand_over(run_dir, user)
    return [program('pgbouncer'), str(ini)], client_dsn(server_dsn, server, port, password), user


def hand_over(run_dir, user):
    """Give run_dir and its files to user, who runs pgbouncer and reads them."""
    uid = pwd.getpwnam(user).pw_uid
    for path in [run_dir, *run_dir.iterdir()]:
        os.chown(path, uid, -1)


def client_dsn(server_dsn, server, port, password):
    """Return the DSN that reaches the server's database through pgbouncer on 127.0.0.1:port."""
    database = parse_dsn(server_dsn).get('dbname') or server['user']
    return make_dsn(host='127.0.0.1', port=port, dbname=database, user=server['user'], password=password)


def main(argv=None):
    """Print the pool settings for --replicas replicas of this environment as KEY=value lines."""
    parser = argparse.ArgumentParser(prog='python -m ops.pgbouncer', description=main.__doc__)
    parser.add_argument('--replicas', type=int, required=True, help='the most API replicas there can be')
    for name, value in settings_pool(parser.parse_args(argv).replicas).items():
        print(f'{name}={value}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
