"""The Db helper: small query helpers over one connection, every identifier quoted with psycopg2.sql."""
import psycopg2.extensions
from psycopg2 import sql

from lib.db import copyjson
from lib.db.session import enter_transaction


def identifier(*parts):
    """Quote a name (its parts dotted) for a query run with parameters, which psycopg2 %-formats: a `%` in it is
    doubled, as psycopg2.sql.Identifier leaves it (trial BD: a column `pct%` was a 500). An empty part (`''`,
    `'sales.'`) is a ValueError: PostgreSQL has no zero-length name."""
    if '' in parts:
        raise ValueError('a name given to a Db helper is empty (a table, column or function name, or a part of one)')
    return sql.Identifier(*(part.replace('%', '%%') for part in parts))


def table_name(name):
    """Quote a table or function name, schema-qualified ("schema.table") or not; a (schema, name) tuple or list for
    a name that holds a dot itself ("schema.table" would be split there)."""
    return identifier(*name) if isinstance(name, (tuple, list)) else identifier(*name.split('.'))


def some(names, what):
    """Return names (a mapping or list of column names), or raise ValueError when there is none, or one is empty: SQL
    has no empty column list or name, and what (the helper's argument) said nothing to do."""
    if not names or '' in names:
        raise ValueError(f'{what} names no column')
    return names


def column_names(names):
    """Return a list of column names given as a list or as one name ("reference": one column, not its letters; None:
    none)."""
    return [names] if isinstance(names, str) else list(names or ())


def identifiers(names):
    """Quote column names (a list, or one name), comma-separated."""
    return sql.SQL(', ').join(map(identifier, column_names(names)))


def placeholders(values):
    """Build one positional placeholder per value, comma-separated: positional, since a column name (the key of a
    named one) may hold `%` or `)`, which a named placeholder cannot (trial BD: 500s)."""
    return sql.SQL(', ').join(sql.Placeholder() * len(values))


def assignments(values):
    """Build "col" = %s, one per key of values, comma-separated."""
    return sql.SQL(', ').join(sql.SQL('{} = %s').format(identifier(name)) for name in values)


def conditions(where):
    """Build the AND of "col" = %s per key of where, or "col" IS NULL for a None (= NULL would match no row); a where
    that is empty is a ValueError: it would touch every row of the table."""
    if not where or '' in where:
        raise ValueError('the where of Db.update and Db.delete names no column: it would touch every row; use '
                         'Db.execute for that')
    return sql.SQL(' AND ').join(
        sql.SQL('{} IS NULL' if value is None else '{} = %s').format(identifier(name))
        for name, value in where.items())


def condition_params(where):
    """Return the parameters of conditions(where): its values but None."""
    return [value for value in where.values() if value is not None]


def returning(columns):
    """Build a RETURNING clause: '*' or quoted column names."""
    if columns == '*':
        return sql.SQL(' RETURNING *')
    return sql.SQL(' RETURNING ') + identifiers(some(column_names(columns), 'the returning_columns of a Db helper'))


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
        """Return the first column of the first row of query, or None (no row, or a statement that returns none)."""
        cursor = self._run(query, params)
        row = cursor.fetchone() if cursor.description is not None else None
        return row[0] if row else None

    def execute(self, query, params=None):
        """Run a statement and return the number of rows it touched."""
        return self._run(query, params).rowcount

    def insert(self, table, values, returning_columns='*'):
        """Insert one row and return it; no values: a row of the columns' defaults."""
        if not values:  # INSERT INTO t () VALUES () is a syntax error
            query = sql.SQL('INSERT INTO {} DEFAULT VALUES').format(table_name(table))
        else:
            query = sql.SQL('INSERT INTO {} ({}) VALUES ({})').format(
                table_name(table), identifiers(some(values, 'the values of Db.insert')), placeholders(values))
        return self.fetch_one(query + returning(returning_columns), list(values.values()))

    def upsert(self, table, values, conflict, update=None, returning_columns='*'):
        """Insert a row or, when conflict columns clash, update it; safe under concurrency. conflict and update are
        lists of column names, or one name each."""
        some(values, 'the values of Db.upsert')
        conflict = some(column_names(conflict), 'the conflict of Db.upsert')
        update = [name for name in values if name not in conflict] if update is None else column_names(update)
        # DO UPDATE with no column would be DO NOTHING, which returns no row: touch a key column instead.
        excluded = sql.SQL(', ').join(
            sql.SQL('{0} = EXCLUDED.{0}').format(identifier(name)) for name in (update or conflict[:1]))
        query = sql.SQL('INSERT INTO {} ({}) VALUES ({}) ON CONFLICT ({}) DO UPDATE SET {}').format(
            table_name(table), identifiers(values), placeholders(values), identifiers(conflict), excluded)
        return self.fetch_one(query + returning(returning_columns), list(values.values()))

    def update(self, table, values, where, returning_columns='*'):
        """Update the rows matching where (a None there matches NULL; empty: a ValueError); return the first updated
        row or None."""
        query = sql.SQL('UPDATE {} SET {} WHERE {}').format(
            table_name(table), assignments(some(values, 'the values of Db.update')), conditions(where))
        return self.fetch_one(query + returning(returning_columns), [*values.values(), *condition_params(where)])

    def delete(self, table, where, returning_columns='*'):
        """Delete the rows matching where (a None there matches NULL; empty: a ValueError); return the first deleted
        row or None."""
        query = sql.SQL('DELETE FROM {} WHERE {}').format(table_name(table), conditions(where))
        return self.fetch_one(query + returning(returning_columns), condition_params(where))

    def call(self, function, *args):
        """Call a stored function with positional arguments and return its value."""
        query = sql.SQL('SELECT {}({})').format(table_name(function), placeholders(args))
        return self.fetch_value(query, args)

    def stream(self, query, params=None, batch_size=5000):
        """Yield lists of row dicts from a server-side cursor, keeping memory flat; in a transaction
        (enter_transaction). batch_size: rows fetched at a time, an int of 1 or more (else ValueError)."""
        check_batch_size(batch_size)
        enter_transaction(self.conn)
        name = copyjson.new_cursor_name('stream')  # a name of its own: streams may be open at once
        with self.conn.cursor(name=name, cursor_factory=psycopg2.extensions.cursor) as cursor:
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
        the next batch meanwhile. In a transaction, like stream; runs in the session as it is (TimeZone, DateStyle).
        batch_size: as stream's.
        """
        check_batch_size(batch_size)
        enter_transaction(self.conn)
        return copyjson.json_stream(self.conn, query, params, batch_size)


# The most rows one FETCH takes: its count is PostgreSQL's int4.
MAX_BATCH_SIZE = 2**31 - 1


def check_batch_size(batch_size):
    """Raise ValueError unless batch_size is an int from 1 to MAX_BATCH_SIZE: 0 streamed no rows at all,
    stream_json's FETCH FORWARD 0 fetched none for ever, until the deadline (trial AW), and 2**31 was a syntax
    error (trial AY)."""
    if type(batch_size) is not int or not 1 <= batch_size <= MAX_BATCH_SIZE:
        raise ValueError(f'batch_size must be an int from 1 to {MAX_BATCH_SIZE} (rows fetched at a time), not '
                         f'{batch_size!r}')
