"""Test-only actions of tests/test_types.py: run a SELECT as a module would, store what a body sent, and fail the
ways an adapted value, a marshmallow field or an action's own code can."""
import codecs

from marshmallow import Schema, fields

from lib.db import DEFAULT, Db
from lib.decorators import inject_conn, inject_db, use_schema

# tests/test_types.py creates the table.
STORE = '''INSERT INTO probe.type_roundtrip (text, amount, big, doc) VALUES (%(text)s, %(amount)s, %(big)s, %(doc)s)
           RETURNING id, text, amount, big, doc, doc AS json_doc'''
# psycopg2's own words for a str holding a NUL character.
NUL_MESSAGE = 'A string literal cannot contain NUL (0x00) characters.'

Timed = Schema.from_dict({'pause': fields.TimeDelta(), 'later': fields.Nested(Schema.from_dict(
    {'at': fields.DateTime(format='timestamp')}))})


@inject_db(DEFAULT, autocommit=True)
def select(db, query):
    """Return every row of a query (tests only: the query comes from the test)."""
    return db.fetch_all(query)


@inject_db(DEFAULT)
def select_steps(db, queries):
    """Run each query in turn in one transaction; return every row of each (tests only)."""
    return [db.fetch_all(query) for query in queries]


@inject_conn(DEFAULT)
def stream(conn, query, batch_size):
    """Stream a SELECT's rows with Db.stream_json, in batches of batch_size (tests only)."""
    return Db(conn).stream_json(query, batch_size=batch_size)


@inject_db(DEFAULT, autocommit=True)
def roundtrip(db, text, amount, big):
    """Store a text, a decimal and an integer, and the body itself as jsonb; return the stored row."""
    return db.fetch_one(STORE, dict(text=text, amount=amount, big=big, doc=dict(text=text, amount=amount, big=big)))


@inject_db(DEFAULT, autocommit=True)
def unescaped(db, text):
    """Send a text with its backslash escapes decoded ('a\\\\x00b' holds a NUL then) as a parameter."""
    return db.fetch_value('SELECT %(text)s AS v', {'text': codecs.decode(text, 'unicode_escape')})


def broken(kind):
    """Fail as a bug in an action would: a ValueError with psycopg2's very words, or an OverflowError."""
    if kind == 'overflow':
        return float(10 ** 400)
    raise ValueError(NUL_MESSAGE)


@use_schema(Timed)
def timed(pause=None, later=None):
    """Read a TimeDelta and a nested DateTime timestamp, which stock marshmallow reads with float()."""
    return {'pause': pause, 'later': later}
