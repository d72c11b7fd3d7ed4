"""Slow actions: each keeps one pooled connection busy in PostgreSQL for a while."""
import time

from marshmallow import Schema, fields, validate

from lib.db import DEFAULT, Db, transactional
from lib.decorators import inject_conn, use_schema

# Rows of about 220 bytes of JSON; fail_at divides by zero at that row (0: never), pause sleeps in PostgreSQL at
# the first row of each batch. Not 1 / 0 itself: PostgreSQL would fold that constant and fail before any row.
STREAM_SQL = """
    SELECT n, repeat('x', 200) AS pad, 1 / (n - %(fail_at)s) AS inverse,
           pg_sleep(CASE WHEN n %% %(batch)s = 1 THEN %(pause)s ELSE 0 END) AS paused
    FROM generate_series(1, %(rows)s) AS n"""
STREAM_BATCH = 100


class Sleep(Schema):
    """How many seconds the statement runs."""

    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=600))


class Stream(Schema):
    """How many rows to stream, where to fail, how long to pause before each batch."""

    rows = fields.Integer(required=True, validate=validate.Range(min=1, max=10_000_000))
    fail_at = fields.Integer(load_default=0, validate=validate.Range(min=0))
    pause = fields.Float(load_default=0, validate=validate.Range(min=0, max=60))


class WriteThenWait(Schema):
    """The code of the row to write, and how many seconds to wait in Python, no statement running, before the end."""

    code = fields.String(required=True)
    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=60))
    autocommit = fields.Boolean(load_default=False)


class WaitThenWrite(WriteThenWait):
    """As WriteThenWait, and how many seconds the statement run after the wait takes."""

    sleep = fields.Float(required=True, validate=validate.Range(min=0, max=600))


class SwallowCancels(Schema):
    """The code of the row to write, and how many seconds a statement catches every cancel it is sent."""

    code = fields.String(required=True)
    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=60))


# One statement that catches every query_canceled for seconds, then writes how many it caught in a row's code.
SWALLOW_CANCELS_SQL = """
    DO $$
    DECLARE caught int := 0; ends timestamptz := clock_timestamp() + %(seconds)s * interval '1 second';
    BEGIN
        WHILE clock_timestamp() < ends LOOP
            BEGIN
                PERFORM pg_sleep(0.01);
            EXCEPTION WHEN query_canceled THEN
                caught := caught + 1;
            END;
        END LOOP;
        INSERT INTO probe.things (code) VALUES (%(code)s || ':' || caught);
    END $$"""


@use_schema(Sleep)
@inject_conn(DEFAULT)
def sleep(conn, seconds):
    """Run one statement of the given length in PostgreSQL: pg_sleep, on a pooled connection."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT pg_sleep(%s)', (seconds,))
    return {'slept': seconds}


@inject_conn(DEFAULT)
def backend(conn):
    """Return the process id of the PostgreSQL backend behind the pooled connection this request got."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT pg_backend_pid() AS pid')
        return cursor.fetchone()


@use_schema(Stream)
@inject_conn(DEFAULT)
def stream(conn, rows, fail_at, pause):
    """Stream rows from a server-side cursor in batches of STREAM_BATCH, slowly or failing half-way if asked."""
    return Db(conn).stream(STREAM_SQL, dict(rows=rows, fail_at=fail_at, pause=pause, batch=STREAM_BATCH),
                           batch_size=STREAM_BATCH)


@use_schema(WriteThenWait)
def write_then_wait(code, seconds, autocommit):
    """Insert a row of probe.things, then wait in Python (the connection idle in its transaction) before the end."""
    @inject_conn(DEFAULT, autocommit=autocommit)
    def write(conn):
        with conn.cursor() as cursor:
            cursor.execute('INSERT INTO probe.things (code) VALUES (%s)', (code,))
        time.sleep(seconds)
        return {'code': code}
    return write()


class WriteThenAnswer(Schema):
    """The code of the row to write, and the size of the answer, in bytes."""

    code = fields.String(required=True)
    size = fields.Integer(required=True, validate=validate.Range(min=0, max=64 * 2 ** 20))


@use_schema(WriteThenAnswer)
@inject_conn(DEFAULT)
def write_then_answer(conn, code, size):
    """Insert a row of probe.things, then answer a JSON string of about size bytes, written once it is committed."""
    with conn.cursor() as cursor:
        cursor.execute('INSERT INTO probe.things (code) VALUES (%s)', (code,))
    return 'x' * size


@use_schema(WaitThenWrite)
def wait_then_write(code, seconds, sleep, autocommit):
    """Run SELECT code, wait in Python (no statement running), then run pg_sleep(sleep) and insert a row of
    probe.things."""
    @inject_conn(DEFAULT, autocommit=autocommit)
    def write(conn):
        with conn.cursor() as cursor:
            cursor.execute('SELECT %s', (code,))
            time.sleep(seconds)
            cursor.execute('SELECT pg_sleep(%s)', (sleep,))
            cursor.execute('INSERT INTO probe.things (code) VALUES (%s)', (code,))
        return {'code': code}
    return write()


@use_schema(WriteThenWait)
def write_in_a_transaction_then_wait(code, seconds, autocommit):
    """In an autocommit action, write a row of probe.things in a transaction of its own (transactional), and wait in
    Python before its commit."""
    @inject_conn(DEFAULT, autocommit=True)
    def write(conn):
        with transactional(conn) as db:
            db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
            time.sleep(seconds)
        return {'code': code}
    return write()


@use_schema(SwallowCancels)
@inject_conn(DEFAULT, autocommit=True)
def swallow_cancels(conn, code, seconds):
    """Run one statement that catches every cancel for seconds, then writes how many it caught (SWALLOW_CANCELS_SQL)."""
    with conn.cursor() as cursor:
        cursor.execute(SWALLOW_CANCELS_SQL, {'code': code, 'seconds': seconds})
    return {'code': code}
