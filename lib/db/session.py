"""A connection's session: what every connection is set up with (configure) and returns to (reset)."""
import logging
import os
import threading
import time

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from lib.db.cancel import cancel_request_for
from lib.db.guard import (ActionMisusedConnection, check_guarded, guarded, refuse_action_commit,
                          refuse_commit_of_failed_transaction, refuse_mode_switch, refuse_session_change,
                          refuse_transaction_left_open, refuse_when_request_over, transaction_ended_in_sql)
from lib.db.types import READING_STYLES
from lib.errors import GatewayTimeout

log = logging.getLogger('dbapi.db')

# Everything a request can leave behind in a session, undone in one round trip: the statements DISCARD ALL stands
# for (PostgreSQL's documentation of DISCARD): open cursors (WITH HOLD), role and session authorization, settings
# (SET, set_config), prepared statements, LISTEN, session advisory locks, cached plans, temporary tables and
# sequence state. The settings are then SET again, since RESET ALL returns to the session's defaults.
RESET_SESSION = ('CLOSE ALL; SET SESSION AUTHORIZATION DEFAULT; RESET ALL; DEALLOCATE ALL; UNLISTEN *; '
                 'SELECT pg_advisory_unlock_all(); DISCARD PLANS; DISCARD TEMP; DISCARD SEQUENCES')
# The same in one statement, and no SET after it: enough when the session's defaults are the settings, because
# they came as startup options (libpq `options`), which RESET ALL returns to. On a direct connection it costs
# PostgreSQL about 25 us less than the statements above (docs/performance.md); it must run alone, so it cannot
# take SETs with it.
DISCARD_ALL = 'DISCARD ALL'


# psycopg2's documented autocommit attribute, a data descriptor of its connection class: PooledConnection's own
# property reads and sets it through the descriptor protocol.
DRIVER_AUTOCOMMIT = psycopg2.extensions.connection.autocommit


class PooledConnection(psycopg2.extensions.connection):
    """psycopg2's connection (passed as connection_factory, psycopg2's documented way to extend it), with room for
    the statement the default reset chose for it after its first reset, for when to stop waiting for answers, and
    for its cancel request, which lib/db/cancel.py sends without the GIL (and whether one sent was not taken)."""

    reset_statement = None
    cancel_request = None
    cancel_unacknowledged = False
    # True once a write was refused by the read-only default its session began with (lib/db/guard.py's sent): the
    # pool closes it when it comes back.
    stale_session = False
    # The pool's generation when it was opened (lib/db/pool.py): one older than the pool's is closed when it comes back.
    pool_generation = 0
    # How many times the pool lent it: a type's fields read in one use are read again in the next
    # (lib/db/types.py's Composite).
    uses = 0
    # A time.monotonic() value: past it, the gevent wait callback (lib/db/green.py) stops waiting for PostgreSQL to
    # answer and raises DatabaseNotAnswering, and psycopg2 closes the connection. None: wait as long as it takes.
    answer_deadline = None
    # A time.monotonic() value: the deadline of the request the connection serves, which transactional()
    # (lib/db/unit.py) commits nothing past and no statement starts past (lib/db/guard.py). None: no request, or no
    # deadline.
    request_deadline = None
    # While an action's lease holds it (lib/decorators.py's run_leased to lib/db/unit.py's Lease.end, a stream's end
    # included): True in autocommit, False as one transaction, which dbapi commits; None: no action runs. Such a
    # transaction's escape (its commit by the action, SQL that ends it), and the connection's close or reset by any
    # action, are refused (lib/db/guard.py's ActionMisusedConnection), and so is any statement it sends while the
    # session's client_encoding is not psycopg2's.
    action_autocommit = None
    # The error class of the request the connection serves once lib/http/disconnect.py's watcher marked it over (its
    # client gone, its worker stopping): no statement starts from then on (lib/db/guard.py). None: not over.
    request_over = None
    # The PlainDigitsBudget (lib.jsonenc) of the json values the connection reads for its lease (lib/db/types.py's
    # json_budget): its answer's stored 1e131071s are written plain for a mebibyte of digits in all. None: none read.
    json_budget = None
    # How many decorated helpers joined to the action's transaction run now, each in a savepoint (lib/decorators.py).
    joined_helpers = 0

    def __init__(self, dsn, *args, **kwargs):
        """Connect (psycopg2 calls it with the whole DSN); under gevent, waiting for the server no longer than the
        DSN's connect_timeout (seconds), which libpq does not apply to the asynchronous connect a wait callback
        drives."""
        timeout = psycopg2.extensions.parse_dsn(dsn).get('connect_timeout')
        self.answer_deadline = time.monotonic() + int(timeout) if timeout and int(timeout) > 0 else None
        try:
            super().__init__(dsn, *args, **kwargs)
        except BaseException as exc:
            # The socket of a connect given up on closes now, not when the garbage collector finds the connection
            # in the exception's frames: a server that wakes up would find it waiting and make a session of it.
            self.close()
            if isinstance(exc, GatewayTimeout):  # the wait callback's: libpq's own connect_timeout says this
                raise psycopg2.OperationalError('timeout expired') from None
            raise
        self.answer_deadline = None
        self.cancel_request = cancel_request_for(self)
        # Taken around a query run while another thread may run one on the same connection (lib/db/types.py).
        self.query_turn = threading.Lock()

    def cursor(self, name=None, cursor_factory=None, scrollable=None, withhold=False):
        """Return psycopg2's cursor, of cursor_factory (else the connection's, else psycopg2's cursor), with
        RequestGuard in front (NamedCursorGuard for a named cursor, whose fetches are statements too): it starts no
        statement once the request the connection serves is over. NotACursorClass for a factory that is no cursor
        class, or whose class hands out cursors of another kind."""
        factory = guarded(cursor_factory or self.cursor_factory or psycopg2.extensions.cursor, name is not None)
        cursor = super().cursor(name, cursor_factory=factory, scrollable=scrollable, withhold=withhold)
        return check_guarded(cursor, factory)

    def commit(self):
        """Commit, unless the request the connection serves is over (lib/db/guard.py): then raise its error, and the
        transaction is rolled back when the connection goes back (also for `with conn:`); or unless an action that
        runs as one transaction commits it itself, or a statement failed in the transaction, which PostgreSQL would
        roll back for the COMMIT (ActionMisusedConnection)."""
        self.refuse_commit()
        super().commit()

    def rollback(self):
        """Roll back, unless a helper joined to its caller's transaction runs (ActionMisusedConnection): it would end
        the caller's transaction, what the caller wrote before it included (trial AY: a 200 with those rows gone)."""
        if self.joined_helpers:
            raise ActionMisusedConnection('called connection.rollback in a helper joined to its caller\'s transaction, '
                                          'which would roll back what the caller wrote too: raise instead, and dbapi '
                                          'rolls the helper\'s part back (it runs in a savepoint)')
        super().rollback()

    def tpc_prepare(self):
        """Prepare the two-phase transaction, unless its commit would be refused (as commit)."""
        self.refuse_commit()
        super().tpc_prepare()

    def tpc_commit(self, *xid):
        """Commit the two-phase transaction, unless its commit would be refused (as commit)."""
        self.refuse_commit()
        super().tpc_commit(*xid)

    def refuse_commit(self):
        """Raise the error of a commit the connection may not make now (the request over, the action's own, a
        transaction a statement failed in)."""
        refuse_when_request_over(self)
        refuse_action_commit(self)
        refuse_commit_of_failed_transaction(self)

    def close(self):
        """Close, unless an action runs on the connection: it is the pool's (ActionMisusedConnection; it was taken
        for the database gone, a 503)."""
        self.refuse_pools_own('close')
        super().close()

    def reset(self):
        """Reset (psycopg2's ABORT and RESET ALL), unless an action runs on the connection: the pool resets it."""
        self.refuse_pools_own('reset')
        super().reset()

    def refuse_pools_own(self, what):
        """Raise ActionMisusedConnection when an action runs on the connection: what (a method) is the pool's."""
        if self.action_autocommit is not None:
            raise ActionMisusedConnection(f"called connection.{what}, which is the pool's: dbapi gives the connection "
                                          'back, and resets it, when the action returns')

    @property
    def autocommit(self):
        """psycopg2's autocommit: True, each statement commits alone; False, the first one opens a transaction."""
        return DRIVER_AUTOCOMMIT.__get__(self)

    @autocommit.setter
    def autocommit(self, autocommit):
        """Set psycopg2's autocommit, unless an action runs on the connection in the other mode (refuse_mode_switch)."""
        refuse_mode_switch(self, autocommit)
        DRIVER_AUTOCOMMIT.__set__(self, autocommit)

    def set_session(self, *args, **kwargs):
        """psycopg2's set_session, refused in an action's one transaction (refuse_session_change)."""
        refuse_session_change(self, 'set_session')
        super().set_session(*args, **kwargs)

    def set_isolation_level(self, level):
        """psycopg2's set_isolation_level, refused in an action's one transaction (refuse_session_change)."""
        refuse_session_change(self, 'set_isolation_level')
        super().set_isolation_level(level)

    def set_client_encoding(self, encoding):
        """psycopg2's set_client_encoding, refused in an action's one transaction, which it would roll back unseen
        (refuse_session_change)."""
        refuse_session_change(self, 'set_client_encoding')
        super().set_client_encoding(encoding)


# How long the statements that end a use of a connection (its rollback and reset, a stream's CLOSE past its deadline)
# may wait for PostgreSQL, whatever the request's deadline: a connection left waiting longer is thrown away.
END_OF_USE_ANSWER_SECONDS = 5


def count_use(conn):
    """Count one more use of conn by a borrower (a PooledConnection's uses; any other connection counts none)."""
    if isinstance(conn, PooledConnection):
        conn.uses += 1


def bound_answers(conn, deadline):
    """Have conn's waits for PostgreSQL's answers end at deadline (a time.monotonic() value, or None: no end); a
    connection that is not a PooledConnection waits without end."""
    if isinstance(conn, PooledConnection):
        conn.answer_deadline = deadline


def note_action(conn, autocommit):
    """Note on conn that an action runs on it, in autocommit (True) or as one transaction (False), or (None) that
    none runs; a connection that is not a PooledConnection keeps none."""
    if isinstance(conn, PooledConnection):
        conn.action_autocommit = autocommit


def enter_transaction(conn):
    """Have conn's next statement open a transaction where a server-side cursor can live (lib/db/helpers.py's
    streams): a connection in autocommit leaves it, and an action that runs on it in autocommit runs as one
    transaction from then on (note_action), which its lease commits when the stream ends, or rolls back when it
    fails (lib/db/unit.py)."""
    if conn.autocommit:
        refuse_transaction_left_open(conn)  # the stream would commit what the BEGIN began
        if getattr(conn, 'action_autocommit', None):
            note_action(conn, False)
        conn.autocommit = False


def end_action(conn):
    """Note that no action runs on conn any more (note_action); ActionMisusedConnection when the action it ran as one
    transaction ended that transaction in SQL (a COMMIT its last statement, or one before the statement that failed
    in the same query string: what it wrote stays committed, and a retry would run it again)."""
    ended = conn.action_autocommit is False and transaction_ended_in_sql(conn)
    note_action(conn, None)
    if ended:
        raise ActionMisusedConnection('ended its transaction in SQL (COMMIT, END, ROLLBACK or ABORT): what a COMMIT '
                                      'wrote stays committed, and so does what the statements after it in the same '
                                      'query string wrote (PostgreSQL runs them as one transaction, committed unless '
                                      'one fails), whatever the action answered, and it is not run again; return '
                                      'instead, and dbapi commits it')


def note_request(conn, deadline):
    """Note on conn that it serves a request (not over yet) of deadline (a time.monotonic() value, or None), or
    (None) no request, and has read no json value for it yet; a connection that is not a PooledConnection keeps
    none."""
    if isinstance(conn, PooledConnection):
        conn.request_deadline = deadline
        conn.request_over = None
        conn.json_budget = None


def session_settings(config):
    """Return the settings every session has: {PostgreSQL setting: value}."""
    # UTC: buffered answers and streamed exports write the same offsets, whatever the server's default.
    # ISO dates and the postgres interval style: the texts lib/db/types.py and lib/db/copyjson.py read.
    # application_name too: RESET ALL would otherwise return it to what pgbouncer's server connection started with.
    return {'statement_timeout': str(config['DB_STATEMENT_TIMEOUT_MS']), 'TimeZone': 'UTC', **READING_STYLES,
            'application_name': application_name(config)}


def application_name(config):
    """Return the name pg_stat_activity shows for this process's connections: APP_ID:PROCESS_ID, at most 63 bytes
    (PostgreSQL's NAMEDATALEN - 1)."""
    return f"{config['APP_ID']}:{config['PROCESS_ID']}".encode()[:63].decode(errors='ignore')


def startup_options(settings, dsn):
    """Return libpq's `options` for a connection to dsn: the DSN's own (else the PGOPTIONS environment variable's,
    as libpq would use) followed by `-c name=value` for each of settings, which then win; spaces and backslashes
    in values are escaped with a backslash, libpq's rule for this parameter."""
    own = psycopg2.extensions.parse_dsn(dsn).get('options') or os.environ.get('PGOPTIONS', '')
    ours = ' '.join(f'-c {name}={escape_option(value)}' for name, value in settings.items())
    return f'{own} {ours}'.strip()


def escape_option(value):
    """Return value (text) as one word of libpq's `options`: backslash and space escaped."""
    return value.replace('\\', '\\\\').replace(' ', '\\ ')


def set_statements(settings):
    """Return SET statements for {setting: value}, names and values quoted."""
    return sql.SQL('; ').join(sql.SQL('SET {} = {}').format(sql.Identifier(name), sql.Literal(value))
                              for name, value in settings.items())


def run_in_autocommit(conn, statement):
    """Run statement (SQL text) on conn outside any transaction."""
    conn.autocommit = True
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
        cursor.execute(statement)


class SessionStatements:
    """SQL composed once and rendered to text on the first connection it runs on (quoting needs one)."""

    def __init__(self, composed):
        self.composed = composed
        self.text = None

    def text_for(self, conn):
        """Return the SQL text, rendered on conn the first time."""
        if self.text is None:
            self.text = self.composed.as_string(conn)
        return self.text


def configure_with(settings):
    """Return the default configure(conn): apply settings to a new connection (the pool then adds the types)."""
    statements = set_statements(settings)

    def configure(conn):
        run_in_autocommit(conn, statements)
    return configure


def reset_with(settings):
    """Return the default reset(conn): undo whatever the request left in the session and return it to settings."""
    return SessionReset(settings)


class SessionReset:
    """The default reset(conn), one round trip: RESET_SESSION and the settings SET again, or DISCARD ALL alone on a
    connection whose reset values are the settings (startup options that reached PostgreSQL; pgbouncer, for one,
    drops them, and sets the timeout by its connect_query, which DISCARD ALL would undo). A connection's first
    reset is always the full one; then, in the session it left clean, one query decides the later ones, and a
    PooledConnection keeps the answer (a plain psycopg2 connection always gets the full one)."""

    def __init__(self, settings):
        self.settings = settings
        self.statements = SessionStatements(sql.SQL('; ').join([sql.SQL(RESET_SESSION), set_statements(settings)]))

    def __call__(self, conn):
        """Run the reset on conn in autocommit."""
        known = getattr(conn, 'reset_statement', None)
        if known is not None:
            run_in_autocommit(conn, known)
            return
        full = self.statements.text_for(conn)
        run_in_autocommit(conn, full)
        if isinstance(conn, PooledConnection):
            conn.reset_statement = DISCARD_ALL if reset_values_are(conn, self.settings) else full


def reset_values_are(conn, settings):
    """Tell whether RESET ALL returns conn's session to settings ({name: value}): pg_settings.reset_val of each,
    the value before any SET, is the one wanted, in PostgreSQL's own spelling (milliseconds for statement_timeout).
    The names are schema-qualified: a temporary view of the same name must not answer instead."""
    conn.autocommit = True
    with conn.cursor(cursor_factory=psycopg2.extensions.cursor) as cursor:
        cursor.execute('SELECT pg_catalog.lower(name), reset_val FROM pg_catalog.pg_settings '
                       'WHERE pg_catalog.lower(name) = ANY(%s)', ([name.lower() for name in settings],))
        reset_values = dict(cursor.fetchall())
    return all(reset_values.get(name.lower()) == value for name, value in settings.items())


def report_notices(conn):
    """Log the warnings PostgreSQL sent while conn served a request (SET LOCAL outside a transaction, ...)."""
    for notice in conn.notices:
        if notice.startswith('WARNING'):
            log.warning('PostgreSQL: %s', notice.strip())
    conn.notices.clear()
