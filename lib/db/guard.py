"""The statements a request starts once it is over are refused before they reach PostgreSQL.

A request is over at its deadline (REQUEST_DEADLINE_MS), and when lib/http/disconnect.py's watcher marks it so (its
client went away, its worker is stopping). Every cursor of a pooled connection (lib/db/session.py's PooledConnection
hands out only RequestGuard cursors, whatever cursor class is asked for as cursor_factory; a named cursor's fetches
and scrolls, which send FETCH and MOVE, are checked too), and the connection's own commit, check before each
statement they send: one the request starts once it is over raises that request's error
instead (504 past the deadline, 499 for a client gone, 503 for a stopping worker), so that nothing it would write
commits for nobody. A statement still running then is the watcher's to cancel. The cursors also refuse a statement
once the session's client_encoding is not the one psycopg2 encodes its text in (an action's SQL `SET LOCAL
client_encoding`): PostgreSQL would misread it, and store the text it holds garbled.
"""
import functools
import time

import psycopg2.errors
import psycopg2.extensions

from lib.db.types import check_client_encoding
from lib.errors import (IN_FAILED_SQL_TRANSACTION, WENT_ON_AFTER_A_FAILURE, ApiError, GatewayTimeout,
                        from_database_error, translates)


class StatementPastDeadline(GatewayTimeout):
    """A statement still running at the request's deadline (REQUEST_DEADLINE_MS), however many ran before it in its
    transaction, is cancelled there (lib/http/disconnect.py), and one started past it is refused (RequestGuard)
    (504): its transaction is rolled back; an autocommit action's statements before it stay committed."""

    detail = 'The request ran past its deadline: the statement running then was cancelled, and its transaction ' \
             'rolled back.'
    # An autocommit action's: each statement is its transaction, so those that ran before it are committed; those
    # of one query string are one transaction, rolled back with the statement cancelled (trial BZ: "insert ...;
    # select pg_sleep(10)" committed nothing, where the detail said the insert stayed committed).
    autocommit_detail = 'The request ran past its deadline: the statement running then was cancelled, with those ' \
                        'sent with it in one query string; the statements sent before it stay committed.'

    @classmethod
    def of(cls, autocommit):
        """Return the error of a transaction's statement, or (autocommit) of an autocommit action's."""
        return cls(cls.autocommit_detail) if autocommit else cls()


def refuse_when_request_over(conn):
    """Raise the error of the request conn serves when that request is over: the class its request_over names (set
    by the watcher), or StatementPastDeadline past its request_deadline (a time.monotonic() value)."""
    if conn.request_over is not None:
        raise conn.request_over()
    deadline = conn.request_deadline
    if deadline is not None and time.monotonic() > deadline:
        raise StatementPastDeadline.of(conn.autocommit)


def before_statement(conn):
    """Refuse a statement conn's request may not send: the request is over (refuse_when_request_over), its session
    encodes text otherwise than psycopg2 (check_client_encoding: the statement's text would be misread), or its
    action, one transaction, escaped that transaction (refuse_transaction_escape). Statements no action sends (the
    pool's own: its reset undoes the encoding) are not checked for either."""
    refuse_when_request_over(conn)
    if conn.action_autocommit is not None:
        check_client_encoding(conn)
        if conn.action_autocommit is False:
            refuse_transaction_escape(conn)


class ActionMisusedConnection(psycopg2.ProgrammingError):
    """An action ended what is dbapi's to end (trials AG, AH): the one transaction it runs as (autocommit=False), which
    dbapi commits when it returns and retries whole after a conflict, so that a part it committed ran again on each
    retry (a write committed four times behind a 503); or its connection, the pool's. A 500 that says which."""


@translates(ActionMisusedConnection)
def from_action_misused_connection(exc):
    """The module's bug: a 500 whose detail says what the action did and what to do instead."""
    return ApiError(f'The action {exc}.')


class TransactionLeftOpen(ActionMisusedConnection):
    """An autocommit action left a transaction open on its connection (a BEGIN it never committed), at its end or
    before a stream that opens one of its own (lib/db/session.py's enter_transaction), which would have committed it
    (trial AM): the transaction is rolled back and the request is a 500 that says so, the module's bug, rather than
    a success whose writes the give-back would roll back unseen."""


# libpq's transaction states (psycopg2's conn.get_transaction_status()) of a session in a transaction block.
IN_TRANSACTION = (psycopg2.extensions.TRANSACTION_STATUS_INTRANS, psycopg2.extensions.TRANSACTION_STATUS_INERROR)


def refuse_transaction_left_open(conn):
    """Raise TransactionLeftOpen when conn is in autocommit and yet inside a transaction block (a BEGIN sent in SQL,
    which psycopg2 does not see)."""
    if conn.autocommit and conn.get_transaction_status() in IN_TRANSACTION:
        raise TransactionLeftOpen('left a transaction open (a BEGIN without its COMMIT): it was rolled back; in an '
                                  "autocommit=True action a transaction is transactional()'s")


# What ActionMisusedConnection's messages about an action's one transaction go on to say.
ONE_TRANSACTION = ('dbapi commits it when the action returns and runs the whole action again after a conflict, which '
                   'would run a committed part again; return instead, or use autocommit=True with transactional() for '
                   'parts that commit on their own')


def refuse_action_commit(conn):
    """Raise ActionMisusedConnection when conn runs an action as one transaction (its action_autocommit False):
    that transaction is dbapi's to commit."""
    if conn.action_autocommit is False:
        raise ActionMisusedConnection(f'tried to commit its transaction itself (connection.commit, `with conn:`): '
                                      f'{ONE_TRANSACTION}')


class CommitOfFailedTransaction(ActionMisusedConnection):
    """An action caught a statement's error and returned in the failed transaction, whose COMMIT PostgreSQL would
    answer with a ROLLBACK: refused, the 500 a statement sent there gets (SQLSTATE 25P02), its sqlstate too, in the
    problem and in the access line's error.code (pgcode, as psycopg2's errors carry it)."""

    pgcode = IN_FAILED_SQL_TRANSACTION


@translates(CommitOfFailedTransaction)
def from_commit_of_failed_transaction(exc):
    """The 500 of PostgreSQL's 25P02 (lib/errors.py's SQLSTATE_ERRORS): one fault, one answer."""
    return ApiError(f'The action {exc}.', sqlstate=exc.pgcode)


def refuse_commit_of_failed_transaction(conn):
    """Raise CommitOfFailedTransaction when a statement failed in conn's transaction and the action went on (it
    caught the error): PostgreSQL answers that transaction's COMMIT with a ROLLBACK, which psycopg2 takes silently,
    so the answer would be a success with nothing written (trial AW: a caught unique violation, a 200, no row)."""
    if conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INERROR:
        raise CommitOfFailedTransaction(WENT_ON_AFTER_A_FAILURE)


def refuse_session_change(conn, what):
    """Raise ActionMisusedConnection when conn runs an action as one transaction and the action calls what (a
    psycopg2 method's name) on it: psycopg2 ends or changes the transaction (set_client_encoding rolls it back
    unseen, set_session fails once dbapi's statement timeout opened it, an autocommit commits each statement)."""
    if conn.action_autocommit is False:
        hint = '' if what == 'set_client_encoding' else (' (an isolation level is set in SQL, `SET TRANSACTION '
                                                         'ISOLATION LEVEL SERIALIZABLE` as the first statement)')
        raise ActionMisusedConnection(f'called connection.{what} in its one transaction, which psycopg2 would end or '
                                      f'change mid-way: use autocommit=True for it{hint}')


def transaction_ended_in_sql(conn):
    """Tell whether conn's transaction, open for psycopg2, was ended by SQL it sent (COMMIT, END, ROLLBACK, in any
    statement of a query string): PostgreSQL has none. One that opened another at once (COMMIT AND CHAIN, `COMMIT;
    BEGIN`) is not seen: no transaction status tells it, and no client-side split of the SQL is sound (trial AJ)."""
    return (conn.status == psycopg2.extensions.STATUS_BEGIN
            and conn.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_IDLE)


def refuse_transaction_escape(conn):
    """Raise ActionMisusedConnection when an action run as one transaction on conn is about to send a statement
    outside it: its SQL ended the transaction (transaction_ended_in_sql); a switch of autocommit is refused as it is
    made (refuse_mode_switch)."""
    if transaction_ended_in_sql(conn):
        raise ActionMisusedConnection(f'ended its transaction in SQL (COMMIT, END, ROLLBACK or ABORT) and went on: '
                                      f'each statement after it would commit alone; {ONE_TRANSACTION}')


def refuse_mode_switch(conn, autocommit):
    """Raise ActionMisusedConnection when an action runs on conn in the other mode than autocommit (a bool): its
    decorator's autocommit says how dbapi ends and retries it. Switched on, one transaction would commit each statement
    alone (psycopg2 refuses it once a statement ran, a bare 500 before); switched off, an autocommit action's
    transaction, committed by its lease with a 200, where one its BEGIN left open is rolled back (trial AK)."""
    if conn.action_autocommit is False and autocommit:
        raise ActionMisusedConnection(f'switched autocommit on in its one transaction, which would commit each '
                                      f'statement alone; {ONE_TRANSACTION}')
    if conn.action_autocommit and not autocommit:
        raise ActionMisusedConnection('switched autocommit off in an autocommit=True action: a transaction there is '
                                      "transactional()'s (`with transactional(conn) as db:`), or declare the action "
                                      'autocommit=False')


class RequestGuard:
    """A psycopg2 cursor mixin (psycopg2's documented way to extend a cursor is a subclass): each way of sending a
    statement first refuses it when the request the connection serves is over, its session's text encoding is not
    psycopg2's, or its action would escape its one transaction (before_statement), and notes the failures that leave
    the session unfit to serve again (sent)."""

    def execute(self, query, vars=None):
        return sent(self, super().execute, query, vars)

    def executemany(self, query, vars_list):
        return sent(self, super().executemany, query, vars_list)

    def callproc(self, procname, *parameters):
        return sent(self, super().callproc, procname, *parameters)

    def copy_expert(self, *args, **kwargs):
        return sent(self, super().copy_expert, *args, **kwargs)

    def copy_from(self, *args, **kwargs):
        return sent(self, super().copy_from, *args, **kwargs)

    def copy_to(self, *args, **kwargs):
        return sent(self, super().copy_to, *args, **kwargs)


# SQLSTATE 25006: a write refused as read-only. From the session's own state, fixed when it started, when the
# database or role had default_transaction_read_only on then (ALTER DATABASE ... SET, undone since: trial BE, writes
# failed with 503s until the pool's connections were closed), or the server was a standby (before a failover).
READ_ONLY_SQL_TRANSACTION = '25006'


# The 500 of a write in a transaction the action made read-only itself: a module's fault, which no retry mends.
WRITE_IN_OWN_READ_ONLY_TRANSACTION = (
    'The action wrote in a transaction it had made read-only itself (SET TRANSACTION READ ONLY, BEGIN READ ONLY), '
    'which PostgreSQL refuses: trying again cannot help.')


def sent(cursor, send, *args, **kwargs):
    """Send a statement with send (a cursor's bound psycopg2 method) once before_statement allows it; a write refused
    as read-only by the session's own start (started_read_only) marks the connection stale, for the pool to close
    rather than lend again, and any other such refusal as the action's own (from_read_only_write)."""
    before_statement(cursor.connection)
    try:
        return send(*args, **kwargs)
    except psycopg2.Error as exc:
        if exc.pgcode == READ_ONLY_SQL_TRANSACTION:
            exc.read_only_by_the_action = not started_read_only(cursor.connection)
            if not exc.read_only_by_the_action:
                cursor.connection.stale_session = True
        raise


@translates(psycopg2.errors.ReadOnlySqlTransaction)
def from_read_only_write(exc):
    """A write refused in a transaction the action made read-only (sent saw the session begin writable) is a 500
    saying so, with sqlstate 25006 (trial BI's note: it was a 503 "Try again shortly", which could never succeed); the
    server's own read-only state (a standby, default_transaction_read_only) stays SQLSTATE_ERRORS' 503."""
    if getattr(exc, 'read_only_by_the_action', False):
        return ApiError(WRITE_IN_OWN_READ_ONLY_TRANSACTION, sqlstate=exc.pgcode)
    return from_database_error(exc)


def started_read_only(conn):
    """Tell whether conn's session began read-only, as the server reported it (PostgreSQL 14 and later report
    default_transaction_read_only and in_hot_standby; an older server, or a pooler that passes neither on, counts as
    read-only): not an action's own `SET TRANSACTION READ ONLY`, which closed the pool's every connection at each call
    (trial BI)."""
    reported = [conn.info.parameter_status(name) for name in ('default_transaction_read_only', 'in_hot_standby')]
    return 'on' in reported or reported == [None, None]


class NamedCursorGuard(RequestGuard):
    """RequestGuard for a named (server-side) cursor, whose fetches and scrolls send statements too (FETCH, MOVE):
    each is refused as execute is, iterating row by row included."""

    def fetchone(self):
        before_statement(self.connection)
        return super().fetchone()

    def fetchmany(self, size=None):
        before_statement(self.connection)
        return super().fetchmany(self.arraysize if size is None else size)

    def fetchall(self):
        before_statement(self.connection)
        return super().fetchall()

    def scroll(self, value, mode='relative'):
        before_statement(self.connection)
        return super().scroll(value, mode)

    def __next__(self):
        before_statement(self.connection)
        return super().__next__()


class NotACursorClass(TypeError):
    """A cursor_factory that is no cursor class (a function, a functools.partial), or whose class makes cursors that
    are not its own (a metaclass or __new__ handing out another cursor): psycopg2 documents the factory as a subclass
    of its cursor, and the statements of a cursor made another way could not be refused once the request is over. A
    module's bug (a 500), raised where the cursor is asked for."""


def guarded(cursor_class, named=False):
    """Return cursor_class (psycopg2's cursor or a subclass of it) with RequestGuard in front, or NamedCursorGuard
    for a named cursor (named); NotACursorClass for anything else."""
    if not (isinstance(cursor_class, type) and issubclass(cursor_class, psycopg2.extensions.cursor)):
        raise NotACursorClass(f'cursor_factory must be psycopg2.extensions.cursor or a subclass of it, not '
                              f'{cursor_class!r}: the statements of a cursor another callable makes cannot be refused '
                              'once the request is over (lib/db/guard.py)')
    try:
        return guarded_class(cursor_class, NamedCursorGuard if named else RequestGuard)
    except TypeError as exc:  # a class its metaclass made unhashable, or that no guard can subclass
        raise NotACursorClass(f'cursor_factory {cursor_class!r} cannot be guarded: {exc} (lib/db/guard.py)') from exc


@functools.cache
def guarded_class(cursor_class, guard):
    """Return cursor_class with guard (a RequestGuard class) in front, made once per class and guard."""
    if issubclass(cursor_class, guard):
        return cursor_class
    return type(f'Guarded{cursor_class.__name__}', (guard, cursor_class), {'__doc__': cursor_class.__doc__})


def check_guarded(cursor, factory):
    """Return cursor when it is of factory, the guarded class it was asked of; NotACursorClass (the cursor closed)
    when that class handed out a cursor of another class (its metaclass or __new__), whose guard, if any, is not
    the one asked for."""
    if type(cursor) is factory:
        return cursor
    cursor.close()
    raise NotACursorClass(f'cursor_factory made a {type(cursor).__qualname__}, not a cursor of its own class: its '
                          'statements could not be refused once the request is over (lib/db/guard.py)')
