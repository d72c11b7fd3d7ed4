"""Operations endpoints: /healthz (the process serves) and /readyz (every database answers)."""
from flask import Blueprint, current_app

from lib.db import connection
from lib.errors import ServiceUnavailable
from lib.jsonenc import json_response

ops = Blueprint('ops', __name__)
READY_TIMEOUT_MS = 1000


@ops.route('/healthz', methods=['GET', 'HEAD'])
def healthz():
    """Answer while the process serves; touches no database."""
    return json_response({'status': 'ok'})


def database_answers(pool):
    """Tell whether pool's database answers SELECT 1 within a second."""
    try:
        with connection(pool, timeout=READY_TIMEOUT_MS / 1000) as conn, conn.cursor() as cursor:
            cursor.execute('SET LOCAL statement_timeout = %s', (READY_TIMEOUT_MS,))
            cursor.execute('SELECT 1')
            return cursor.fetchone() == (1,)
    except Exception:
        return False


@ops.route('/readyz', methods=['GET'])
def readyz():
    """Answer 200 when every configured database answers, else 503; names nothing."""
    pools = current_app.extensions['dbapi'].pools.values()
    if all(database_answers(pool) for pool in pools):
        return json_response({'status': 'ready'})
    raise ServiceUnavailable('A database is not answering.')
