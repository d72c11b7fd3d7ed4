"""Test-only actions of tests/test_types.py: run a SELECT as a module would, and store what a body sent."""
from lib.db import DEFAULT
from lib.decorators import inject_db

# tests/test_types.py creates the table.
STORE = '''INSERT INTO probe.type_roundtrip (text, amount, big, doc) VALUES (%(text)s, %(amount)s, %(big)s, %(doc)s)
           RETURNING id, text, amount, big, doc, doc AS json_doc'''


@inject_db(DEFAULT, autocommit=True)
def select(db, query):
    """Return every row of a query (tests only: the query comes from the test)."""
    return db.fetch_all(query)


@inject_db(DEFAULT, autocommit=True)
def roundtrip(db, text, amount, big):
    """Store a text, a decimal and an integer, and the body itself as jsonb; return the stored row."""
    return db.fetch_one(STORE, dict(text=text, amount=amount, big=big, doc=dict(text=text, amount=amount, big=big)))
