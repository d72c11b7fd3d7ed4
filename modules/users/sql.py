"""SQL of the users module."""
USER_COLUMNS = 'id, email, name, created_at, updated_at'

INSERT_USER = f'INSERT INTO users (email, name) VALUES (%(email)s, %(name)s) RETURNING {USER_COLUMNS}'
USER_BY_ID = f'SELECT {USER_COLUMNS} FROM users WHERE id = %(id)s'
DELETE_USER = 'DELETE FROM users WHERE id = %(id)s'
UPSERT_USER = f'''
    INSERT INTO users (email, name) VALUES (%(email)s, %(name)s)
    ON CONFLICT (email) DO UPDATE SET name = EXCLUDED.name, updated_at = now()
    RETURNING {USER_COLUMNS}'''
PAGE_OF_USERS = f'SELECT {USER_COLUMNS} FROM users WHERE id > %(after_id)s ORDER BY id LIMIT %(limit)s'
ALL_USERS = f'SELECT {USER_COLUMNS} FROM users ORDER BY id'
