"""The bare baseline of `make bench`: Flask, a psycopg2 pool and jsonify, running the gateway's own SQL.

No auth, no schema, no logging, no compression: what a hand-written endpoint does. gunicorn loads the
app in each worker, so each worker gets its own pool (BASELINE_DSN, BASELINE_POOL_MAX). It runs under the
gateway's own gunicorn.conf.py (bench/servers.py), so with the same worker class and settings: under gevent, its
post_worker_init hook makes psycopg2 wait cooperatively here too, before the pool opens its first connection.
"""
import os
import queue
from contextlib import contextmanager
from decimal import Decimal
from functools import partial

import psycopg2
from flask import Flask, abort, jsonify, request
from psycopg2.extras import RealDictCursor

from modules.accounts import sql as accounts_sql
from modules.users import sql as users_sql


class BoundedPool:
    """At most size connections, each opened when first needed and then kept: a borrower waits for one when all are
    out, as a thread or, under gevent (whose monkey patching makes queue's locks cooperative), as a greenlet.

    psycopg2's own pools do not fit: they raise instead of waiting, close every connection given back past minconn,
    and open minconn connections at once, before a gevent worker has made psycopg2 cooperative."""

    def __init__(self, size, connect):
        self.slots = queue.LifoQueue()
        for _ in range(size):
            self.slots.put(None)  # a free slot whose connection is not open yet
        self.connect = connect

    @contextmanager
    def connection(self):
        """Lend a connection, waiting for a free slot when all are out; always take the slot back."""
        conn = self.slots.get()
        try:
            conn = conn or self.connect()
            yield conn
        finally:
            self.slots.put(conn)


def make_pool():
    """Make this worker's pool from the environment the bench driver sets."""
    return BoundedPool(int(os.environ.get('BASELINE_POOL_MAX', '2')),
                       partial(psycopg2.connect, os.environ['BASELINE_DSN'], application_name='bench-baseline'))


@contextmanager
def cursor_in_transaction(pool):
    """Borrow a connection, yield a dict cursor in one transaction, always give the connection back."""
    with pool.connection() as conn, conn, conn.cursor(cursor_factory=RealDictCursor) as cursor:
        yield cursor


def fetch_one(pool, query, params):
    """Run query and return its first row, or None."""
    with cursor_in_transaction(pool) as cursor:
        cursor.execute(query, params)
        return cursor.fetchone()


def register_users(app, pool):
    """Mount users/get, users/create and users/list."""
    @app.post('/users/get')
    def get_user():
        row = fetch_one(pool, users_sql.USER_BY_ID, {'id': request.get_json()['id']})
        return jsonify(row) if row else abort(404)

    @app.post('/users/create')
    def create_user():
        body = request.get_json()
        return jsonify(fetch_one(pool, users_sql.INSERT_USER, {'email': body['email'], 'name': body['name']})), 201

    @app.post('/users/list')
    def list_users():
        body = request.get_json()
        limit = body.get('limit', 100)
        with cursor_in_transaction(pool) as cursor:
            cursor.execute(users_sql.PAGE_OF_USERS, {'limit': limit + 1, 'after_id': body.get('after_id', 0)})
            items = cursor.fetchall()
        more = len(items) > limit
        return jsonify(items=items[:limit], next_after_id=items[limit - 1]['id'] if more else None)


def register_accounts(app, pool):
    """Mount accounts/transfer."""
    @app.post('/accounts/transfer')
    def transfer():
        body = request.get_json()
        amount = Decimal(str(body['amount']))
        moves = {'from': (body['from_id'], -amount), 'to': (body['to_id'], amount)}
        with cursor_in_transaction(pool) as cursor:
            cursor.execute(accounts_sql.LOCK_ACCOUNTS, {'from_id': body['from_id'], 'to_id': body['to_id']})
            if cursor.rowcount != 2:
                abort(404)
            result = {}
            for side, (account_id, delta) in moves.items():
                cursor.execute(accounts_sql.ADD_TO_BALANCE, {'account_id': account_id, 'delta': delta})
                result[side] = cursor.fetchone()
        return jsonify(result)


def create_app():
    """Build the baseline app; gunicorn calls this once per worker."""
    app = Flask(__name__)
    pool = make_pool()
    app.get('/healthz')(lambda: 'ok')
    register_users(app, pool)
    register_accounts(app, pool)
    return app
