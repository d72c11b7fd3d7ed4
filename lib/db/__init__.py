"""Pools per named database, connection(), transactional() and the Db helper."""
import collections
import os
import select
import threading
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions
from psycopg2 import sql

from lib.db import copyjson
from lib.errors import ServiceUnavailable

DEFAULT = 'default'
IDLE = psycopg2.extensions.TRANSACTION_STATUS_IDLE
BROKEN = psycopg2.extensions.TRANSACTION_STATUS_UNKNOWN


class PoolTimeout(ServiceUnavailable):
    """No connection came free in time (503)."""

    detail = 'No database connection came free in time. Try again shortly.'


def connection_is_stale(conn):
    """Tell whether an idle pooled connection was closed or told to go away by the server."""
    if conn.closed:
        return True
    # An idle connection has nothing to read; anything readable is a FATAL goodbye or EOF.
    readable, _, _ = select.select([conn], [], [], 0)
    return bool(readable)


def close_quietly(conn):
    """Close conn, ignoring errors from an already broken connection."""
    try:
        conn.close()
    except psycopg2.Error:
        pass


class Pool:
    """A bounded, thread-safe, per-process pool of raw psycopg2 connections to one database."""

    def __init__(self, dsn, max_size, timeout_ms, **connect_kwargs):
        self.dsn = dsn
        self.max_size = max_size
        self.timeout = timeout_ms / 1000
        self.connect_kwargs = connect_kwargs
        self.stats = collections.Counter(waits=0, timeouts=0, connects=0, discarded=0)
        self._reset_for(os.getpid())

    def _reset_for(self, pid):
        """Forget connections inherited from another process (pools are made after fork)."""
        self._pid = pid
        self._idle = collections.deque()
        self._slots = threading.BoundedSemaphore(self.max_size)
        self._in_use = 0

    def borrow(self, timeout=None):
        """Take a live connection, waiting up to timeout (default: the pool's) seconds for a free slot."""
        if self._pid != os.getpid():
            self._reset_for(os.getpid())
        self._take_slot(self.timeout if timeout is None else timeout)
        try:
            conn = self._take_idle() or self._connect()
        except BaseException:
            self._slots.release()
            raise
        self._in_use += 1
        return conn

    def _take_slot(self, timeout):
        """Take a free slot, waiting up to timeout seconds for one; count the waits and the timeouts."""
        if self._slots.acquire(blocking=False):
            return
        self.stats['waits'] += 1
        if not self._slots.acquire(timeout=timeout):
            self.stats['timeouts'] += 1
            raise PoolTimeout()

    def _take_idle(self):
        """Pop the most recently used live idle connection, dropping stale ones."""
        while self._idle:
            conn = self._idle.pop()
            if not connection_is_stale(conn):
                return conn
            self.stats['discarded'] += 1
            close_quietly(conn)
        return None

    def _connect(self):
        """Open a new connection with the pool's session settings."""
        self.stats['connects'] += 1
        return psycopg2.connect(self.dsn, **self.connect_kwargs)

    def give_back(self, conn):
        """Return conn to the pool, or throw it away when it is broken."""
        try:
            if self._pid == os.getpid() and self._reusable(conn):
                self._idle.append(conn)
            else:
                self.stats['discarded'] += 1
                close_quietly(conn)
        finally:
            self._in_use -= 1
            self._slots.release()

    @staticmethod
    def _reusable(conn):
        """Roll back any open transaction; tell whether conn can serve again."""
        if conn.closed or conn.info.transaction_status == BROKEN:
            return False
        try:
            if conn.info.transaction_status != IDLE:
                conn.rollback()
        except psycopg2.Error:
            return False
        return True

    def gauges(self):
        """Return the pool's current numbers for metrics."""
        return dict(in_use=self._in_use, idle=len(self._idle), max=self.max_size, **self.stats)

    def close(self):
        """Close every idle connection."""
        while self._idle:
            close_quietly(self._idle.pop())


def session_options(statement_timeout_ms):
    """Return the libpq options string that sets the statement timeout for the whole session."""
    return f'-c statement_timeout={int(statement_timeout_ms)}'


def make_pools(config):
    """Build one pool per configured database from the app config."""
    connect_kwargs = dict(
        application_name=f"{config['APP_ID']}:{config['PROCESS_ID']}"[:63],
        connect_timeout=config['DB_CONNECT_TIMEOUT'],
        options=session_options(config['DB_STATEMENT_TIMEOUT_MS']),
    )
    return {name: Pool(dsn, config['DB_POOL_MAX'], config['DB_POOL_TIMEOUT_MS'], **connect_kwargs)
            for name, dsn in config['DATABASES'].items()}


class Lease:
    """One borrowed connection; end() commits on success, rolls back otherwise, and gives it back once."""

    def __init__(self, pool, autocommit=False, cursor_factory=None, timeout=None):
        self.pool = pool
        self.conn = pool.borrow(timeout)
        self.open = True
        self.conn.autocommit = autocommit
        self.conn.cursor_factory = cursor_factory

    def end(self, success):
        """Finish the lease: commit when success and not autocommit, then give the connection back."""
        if not self.open:
            return
        self.open = False
        try:
            if success and not self.conn.autocommit:
                self.conn.commit()
        finally:
            self.pool.give_back(self.conn)


@contextmanager
def connection(pool, autocommit=False, cursor_factory=None, timeout=None):
    """Borrow a connection: commit when the block ends, roll back on error, always give it back."""
    lease = Lease(pool, autocommit, cursor_factory, timeout)
    try:
        yield lease.conn
    except BaseException:
        lease.end(success=False)
        raise
    lease.end(success=True)


class LeasedStream:
    """An iterator that keeps its lease until it is exhausted or closed, for streamed responses."""

    def __init__(self, items, lease):
        self.items = iter(items)
        self.lease = lease

    def __iter__(self):
        return self

    def __next__(self):
        try:
            return next(self.items)
        except StopIteration:
            self.lease.end(success=True)
            raise
        except BaseException:
            self.lease.end(success=False)
            raise

    def close(self):
        """Give the connection back even when the stream was never read (client gone, error)."""
        close_items = getattr(self.items, 'close', None)
        if close_items:
            close_items()
        self.lease.end(success=False)


@contextmanager
def transactional(conn):
    """Run the block in one transaction on conn and yield a Db helper for it."""
    # psycopg2 2.9 opens a transaction here even on an autocommit connection.
    with conn:
        yield Db(conn)


def table_name(name):
    """Quote a table or function name, schema-qualified ("schema.table") or not."""
    return sql.Identifier(*name.split('.'))


def identifiers(names):
    """Quote a list of column names, comma-separated."""
    return sql.SQL(', ').join(map(sql.Identifier, names))


def equals(names, joiner, prefix=''):
    """Build "col" = %(<prefix>col)s terms joined by joiner."""
    return sql.SQL(joiner).join(
        sql.SQL('{} = {}').format(sql.Identifier(name), sql.Placeholder(prefix + name)) for name in names)


def returning(columns):
    """Build a RETURNING clause: '*' or quoted column names."""
    if columns == '*':
        return sql.SQL(' RETURNING *')
    return sql.SQL(' RETURNING ') + identifiers(columns)


def where_params(values, where):
    """Merge SET values and WHERE values into one parameter dict, keeping them apart."""
    params = dict(values)
    params.update({f'w_{key}': value for key, value in where.items()})
    return params


class Db:
    """Small query helpers over one connection; rows come back as dicts."""

    def __init__(self, conn):
        self.conn = conn

    def _run(self, query, params):
        """Execute query and return its cursor."""
        cursor = self.conn.cursor(cursor_factory=psycopg2.extensions.cursor)
        cursor.execute(query, params)
        return cursor

    @staticmethod
    def _rows(cursor):
        """Return every row of cursor as a dict."""
        if cursor.description is None:
            return []
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]

    def fetch_all(self, query, params=None):
        """Return every row of query as a list of dicts."""
        return self._rows(self._run(query, params))

    def fetch_one(self, query, params=None):
        """Return the first row of query as a dict, or None."""
        rows = self.fetch_all(query, params)
        return rows[0] if rows else None

    def fetch_value(self, query, params=None):
        """Return the first column of the first row of query, or None."""
        row = self._run(query, params).fetchone()
        return row[0] if row else None

    def execute(self, query, params=None):
        """Run a statement and return the number of rows it touched."""
        return self._run(query, params).rowcount

    def insert(self, table, values, returning_columns='*'):
        """Insert one row and return it."""
        query = sql.SQL('INSERT INTO {} ({}) VALUES ({})').format(
            table_name(table), identifiers(values), sql.SQL(', ').join(map(sql.Placeholder, values)))
        return self.fetch_one(query + returning(returning_columns), values)

    def upsert(self, table, values, conflict, update=None, returning_columns='*'):
        """Insert a row or, when conflict columns clash, update it; safe under concurrency."""
        update = [name for name in values if name not in conflict] if update is None else update
        # DO UPDATE with no column would be DO NOTHING, which returns no row: touch a key column instead.
        assignments = sql.SQL(', ').join(
            sql.SQL('{0} = EXCLUDED.{0}').format(sql.Identifier(name)) for name in (update or conflict[:1]))
        query = sql.SQL('INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}').format(
            table_name(table), identifiers(values), sql.SQL(', ').join(map(sql.Placeholder, values)),
            identifiers(conflict), assignments)
        return self.fetch_one(query + returning(returning_columns), values)

    def update(self, table, values, where, returning_columns='*'):
        """Update the rows matching where; return the first updated row or None."""
        query = sql.SQL('UPDATE {} SET {} WHERE {}').format(
            table_name(table), equals(values, ', '), equals(where, ' AND ', 'w_'))
        return self.fetch_one(query + returning(returning_columns), where_params(values, where))

    def delete(self, table, where, returning_columns='*'):
        """Delete the rows matching where; return the first deleted row or None."""
        query = sql.SQL('DELETE FROM {} WHERE {}').format(table_name(table), equals(where, ' AND ', 'w_'))
        return self.fetch_one(query + returning(returning_columns), where_params({}, where))

    def call(self, function, *args):
        """Call a stored function with positional arguments and return its value."""
        query = sql.SQL('SELECT {}({})').format(
            table_name(function), sql.SQL(', ').join(sql.Placeholder() * len(args)))
        return self.fetch_value(query, args)

    def stream(self, query, params=None, batch_size=5000):
        """Yield lists of row dicts from a server-side cursor, keeping memory flat."""
        with self.conn.cursor(name='dbapi_stream', cursor_factory=psycopg2.extensions.cursor) as cursor:
            cursor.itersize = batch_size
            cursor.execute(query, params)
            columns = None
            while rows := cursor.fetchmany(batch_size):
                columns = columns or [column.name for column in cursor.description]
                yield [dict(zip(columns, row)) for row in rows]

    def stream_json(self, query, params=None, batch_size=2000):
        """Yield the rows of query as ready JSON, for json_array_chunks: lists holding one fragment of many rows.

        The same bytes as stream's dicts through dumps_bytes, about four times faster: PostgreSQL writes the
        values as text, lib/db/copyjson.py turns a whole batch into JSON at once, and a helper thread fetches
        the next batch meanwhile. Needs a transaction, like stream; timestamptz values come in UTC.
        """
        return copyjson.json_stream(self.conn, query, params, batch_size)
