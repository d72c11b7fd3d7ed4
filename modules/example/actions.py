"""The seed's example actions."""
import datetime

from lib.db import DEFAULT
from lib.decorators import inject_db, use_schema

from . import sql
from .schemas import Bar, Foo


def index():
    """Answer true: the module is mounted and the caller is authorised."""
    return True


@use_schema(Foo)
def foo(name, email):
    """Echo the name and email with the server's time; no database."""
    return dict(name=name, email=email, time=datetime.datetime.now(datetime.timezone.utc))


@use_schema(Bar)
@inject_db(DEFAULT)
def bar(db, name, email):
    """Upsert the person by name and return that person's rows."""
    db.upsert('example_people', dict(name=name, email=email, updated_at=datetime.datetime.now(datetime.timezone.utc)),
              conflict=['name'])
    return db.fetch_all(sql.PEOPLE_BY_NAME, dict(name=name))
