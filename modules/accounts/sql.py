"""SQL of the accounts module."""
ACCOUNT_COLUMNS = 'id, owner, balance'

OPEN_ACCOUNT = f'INSERT INTO accounts (owner) VALUES (%(owner)s) RETURNING {ACCOUNT_COLUMNS}'
ACCOUNT_BY_ID = f'SELECT {ACCOUNT_COLUMNS} FROM accounts WHERE id = %(account_id)s'
ADD_TO_BALANCE = f'''
    UPDATE accounts SET balance = balance + %(delta)s WHERE id = %(account_id)s RETURNING {ACCOUNT_COLUMNS}'''
# Locking both rows in id order means two opposite transfers cannot deadlock.
LOCK_ACCOUNTS = 'SELECT id FROM accounts WHERE id IN (%(from_id)s, %(to_id)s) ORDER BY id FOR UPDATE'
