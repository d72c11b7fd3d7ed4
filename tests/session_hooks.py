"""Session hooks named by DB_CONFIGURE and DB_RESET in the tests: a setting every session has, set again after each
reset, as docs/architecture.md shows."""
import settings
from lib.db.session import reset_with, session_settings

default_reset = reset_with(session_settings(vars(settings)))
NOT_A_FUNCTION = 'configure'


def configure(conn):
    """Give a new connection's session the test's own setting."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SET dbapi_test.hooked = 'yes'")


def reset(conn):
    """Undo what a request left, then set the test's setting again."""
    default_reset(conn)
    configure(conn)
