"""A connection's session: what every connection is set up with (configure) and returns to (reset)."""
import logging

from psycopg2 import sql

from lib.db.types import READING_STYLES

log = logging.getLogger('dbapi.db')

# Everything a request can leave behind in a session, undone in one round trip: settings (SET, set_config),
# role and session authorization, prepared statements, LISTEN, session advisory locks, temporary tables
# and sequence state. DISCARD ALL does the same, but it also drops cached plans (PL/pgSQL functions' too)
# and must run alone, so the settings below would cost a second round trip.
RESET_SESSION = ('SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; '
                 'SELECT pg_advisory_unlock_all(); DISCARD TEMP; DISCARD SEQUENCES')


def session_settings(config):
    """Return the settings every session has: {PostgreSQL setting: value}."""
    # UTC: buffered answers and streamed exports write the same offsets, whatever the server's default.
    # ISO dates and the postgres interval style: the texts lib/db/types.py and lib/db/copyjson.py read.
    return {'statement_timeout': str(config['DB_STATEMENT_TIMEOUT_MS']), 'TimeZone': 'UTC', **READING_STYLES}


def set_statements(settings):
    """Return SET statements for {setting: value}, names and values quoted."""
    return sql.SQL('; ').join(sql.SQL('SET {} = {}').format(sql.Identifier(name), sql.Literal(value))
                              for name, value in settings.items())


def run_in_autocommit(conn, statement):
    """Run statement (SQL text) on conn outside any transaction."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute(statement)


class SessionStatements:
    """SQL composed once and rendered to text on the first connection it runs on (quoting needs one)."""

    def __init__(self, composed):
        self.composed = composed
        self.text = None

    def __call__(self, conn):
        """Run the statements on conn in autocommit."""
        if self.text is None:
            self.text = self.composed.as_string(conn)
        run_in_autocommit(conn, self.text)


def configure_with(settings):
    """Return the default configure(conn): apply settings to a new connection (the pool then adds the types)."""
    statements = set_statements(settings)

    def configure(conn):
        run_in_autocommit(conn, statements)
    return configure


def reset_with(settings):
    """Return the default reset(conn): undo whatever the request left in the session, then apply settings again.

    The settings are applied again because RESET ALL returns to the server's defaults, and a SET that
    pgbouncer's connect_query made is not one of them.
    """
    return SessionStatements(sql.SQL('; ').join([sql.SQL(RESET_SESSION), set_statements(settings)]))


def report_notices(conn):
    """Log the warnings PostgreSQL sent while conn served a request (SET LOCAL outside a transaction, ...)."""
    for notice in conn.notices:
        if notice.startswith('WARNING'):
            log.warning('PostgreSQL: %s', notice.strip())
    conn.notices.clear()
