"""Render ops/pgbouncer.ini.template and its auth file for the native stack, as the pgbouncer image does."""
import os
import pwd
import secrets
from pathlib import Path

from psycopg2.extensions import make_dsn, parse_dsn

from settings import BASE_DIR

from .render import fill_template, program

TEMPLATE = BASE_DIR / 'ops' / 'pgbouncer.ini.template'
DEFAULT_SOCKET_DIR = '/var/run/postgresql'


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


def write_config(run_dir, server_dsn, port, statement_timeout_ms, pool_size=10, max_client_conn=500):
    """Write pgbouncer.ini and its auth file into run_dir; return (argv, the DSN clients use, the user to run as)."""
    server = server_parts(server_dsn)
    # A server that trusts its clients has no password; pgbouncer's own login still needs one.
    password = server['password'] or secrets.token_urlsafe(24)
    run_dir = Path(run_dir)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    (run_dir / 'users.txt').write_text(auth_line(server['user'], password))
    values = dict(PGBOUNCER_DB_HOST=server['host'], PGBOUNCER_DB_PORT=str(server['port']),
                  PGBOUNCER_DB_USER=server['user'], PGBOUNCER_LISTEN_ADDR='127.0.0.1', PGBOUNCER_PORT=str(port),
                  PGBOUNCER_AUTH_FILE=str(run_dir / 'users.txt'), PGBOUNCER_POOL_SIZE=str(pool_size),
                  PGBOUNCER_MAX_CLIENT_CONN=str(max_client_conn), DB_STATEMENT_TIMEOUT_MS=str(statement_timeout_ms))
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
