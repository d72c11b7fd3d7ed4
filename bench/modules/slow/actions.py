"""The slow action: a pooled connection held in PostgreSQL for a while, as a slow report would hold it."""
from lib.db import DEFAULT
from lib.decorators import inject_db, use_schema

from . import sql
from .schemas import Sleep


@use_schema(Sleep)
@inject_db(DEFAULT, autocommit=True)
def sleep(db, seconds):
    """Hold a pooled connection in pg_sleep for seconds."""
    db.execute(sql.SLEEP, dict(seconds=seconds))
    return {'slept': seconds}
