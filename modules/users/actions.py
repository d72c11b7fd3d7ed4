"""CRUD on users: create, get, update, delete, upsert, keyset pages and a streamed export.

Each action but export is one SQL statement, so it runs in autocommit: one round trip, no BEGIN or COMMIT.
"""
import datetime

from lib.db import DEFAULT, Db
from lib.decorators import inject_conn, inject_db, use_schema
from lib.errors import NotFound

from . import sql
from .schemas import NewUser, Nothing, Page, UserChange, UserId


def found(row, user_id):
    """Return row, or raise 404 when there is none."""
    if row is None:
        raise NotFound(f'No user has id {user_id}.')
    return row


@use_schema(NewUser)
@inject_db(DEFAULT, autocommit=True)
def create(db, email, name):
    """Insert a user; a taken email is a 409."""
    return db.fetch_one(sql.INSERT_USER, dict(email=email, name=name)), 201


@use_schema(UserId)
@inject_db(DEFAULT, autocommit=True)
def get(db, id):
    """Return one user."""
    return found(db.fetch_one(sql.USER_BY_ID, dict(id=id)), id)


@use_schema(UserChange)
@inject_db(DEFAULT, autocommit=True)
def update(db, id, **changes):
    """Change a user's email or name."""
    changes['updated_at'] = datetime.datetime.now(datetime.timezone.utc)
    return found(db.update('users', changes, dict(id=id), returning_columns=sql.USER_COLUMNS.split(', ')), id)


@use_schema(UserId)
@inject_db(DEFAULT, autocommit=True)
def delete(db, id):
    """Delete a user."""
    if db.execute(sql.DELETE_USER, dict(id=id)) == 0:
        raise NotFound(f'No user has id {id}.')
    return {'deleted': True}


@use_schema(NewUser)
@inject_db(DEFAULT, autocommit=True)
def upsert(db, email, name):
    """Insert the user, or rename the one with this email; one statement, safe under concurrency."""
    return db.fetch_one(sql.UPSERT_USER, dict(email=email, name=name))


@use_schema(Page)
@inject_db(DEFAULT, autocommit=True)
def list_users(db, limit, after_id):
    """Return a page of users by ascending id and the after_id of the next page, or null at the end."""
    items = db.fetch_all(sql.PAGE_OF_USERS, dict(limit=limit + 1, after_id=after_id))
    more = len(items) > limit
    items = items[:limit]
    return {'items': items, 'next_after_id': items[-1]['id'] if more else None}


@use_schema(Nothing)
@inject_conn(DEFAULT)
def export(conn):
    """Stream every user as one JSON array from a server-side cursor, written as JSON in bulk."""
    return Db(conn).stream_json(sql.ALL_USERS)
