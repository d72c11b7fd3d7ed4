"""Slow actions: each keeps one pooled connection busy in PostgreSQL for a while."""
from marshmallow import Schema, fields, validate

from lib.db import DEFAULT
from lib.decorators import inject_conn, use_schema


class Sleep(Schema):
    """How many seconds the statement runs."""

    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=600))


@use_schema(Sleep)
@inject_conn(DEFAULT)
def sleep(conn, seconds):
    """Run one statement of the given length in PostgreSQL: pg_sleep, on a pooled connection."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT pg_sleep(%s)', (seconds,))
    return {'slept': seconds}
