"""Money moved in transactions; a CHECK constraint keeps balances at zero or above.

Single-statement actions run in autocommit; transfer, which locks and updates two rows, is one transaction.
"""
from lib.db import DEFAULT
from lib.decorators import inject_db, use_schema
from lib.errors import NotFound

from . import sql
from .schemas import AccountRef, Movement, NewAccount, Transfer


def found(row, account_id):
    """Return row, or raise 404 when there is none."""
    if row is None:
        raise NotFound(f'No account has id {account_id}.')
    return row


def add_to_balance(db, account_id, delta):
    """Add delta (negative to take money out) to one account and return it; an overdraft is a 422."""
    return found(db.fetch_one(sql.ADD_TO_BALANCE, dict(account_id=account_id, delta=delta)), account_id)


@use_schema(NewAccount)
@inject_db(DEFAULT, autocommit=True)
def open_account(db, owner):
    """Open an account with a zero balance."""
    return db.fetch_one(sql.OPEN_ACCOUNT, dict(owner=owner)), 201


@use_schema(Movement)
@inject_db(DEFAULT, autocommit=True)
def deposit(db, account_id, amount):
    """Put money into an account."""
    return add_to_balance(db, account_id, amount)


@use_schema(Movement)
@inject_db(DEFAULT, autocommit=True)
def withdraw(db, account_id, amount):
    """Take money out of an account."""
    return add_to_balance(db, account_id, -amount)


@use_schema(Transfer)
@inject_db(DEFAULT)
def transfer(db, from_id, to_id, amount):
    """Move money between two accounts in one transaction and return both."""
    locked = {row['id'] for row in db.fetch_all(sql.LOCK_ACCOUNTS, dict(from_id=from_id, to_id=to_id))}
    for account_id in (from_id, to_id):
        found(account_id if account_id in locked else None, account_id)
    return {'from': add_to_balance(db, from_id, -amount), 'to': add_to_balance(db, to_id, amount)}


@use_schema(AccountRef)
@inject_db(DEFAULT, autocommit=True)
def get(db, account_id):
    """Return one account."""
    return found(db.fetch_one(sql.ACCOUNT_BY_ID, dict(account_id=account_id)), account_id)
