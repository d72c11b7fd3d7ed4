"""The session hooks of docs/architecture.md, as the tests name them in DB_CONFIGURE and DB_RESET: a search_path
every session has, set again after each reset."""
import settings
from lib.db.session import reset_with, session_settings

default_reset = reset_with(session_settings(vars(settings)))
NOT_A_FUNCTION = 'configure'


def configure(conn):
    """Give a new connection's session its search_path."""
    conn.autocommit = True
    with conn.cursor() as cursor:
        cursor.execute("SET search_path = app, public")


def reset(conn):
    """Undo what a request left, then set the search_path again."""
    default_reset(conn)
    configure(conn)
