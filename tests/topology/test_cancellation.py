"""Cancellation through nginx (issue 11): a client that goes away while its query runs makes nginx close its
upstream connection, and the replica cancels the query in PostgreSQL and logs a 499."""
import json
import random
import socket

import pytest

from tests.helpers import ADMIN_TOKEN, run_sql, wait_for, whole_or_first_piece

from .helpers import read_json_lines, running_stack

pytestmark = pytest.mark.slow


def running_backend(database_url, query):
    """Return the pid of the backend running query now, or None."""
    rows = run_sql(database_url, "SELECT pid FROM pg_stat_activity WHERE query = %s AND state = 'active'", (query,))
    return rows[0][0] if rows else None


def app_access_lines(stack, request_id):
    """Return the replicas' access lines of one request (a split line's first piece)."""
    return [line for line in read_json_lines(stack.log_path)
            if line.get('log', {}).get('logger') == 'dbapi.access' and whole_or_first_piece(line)
            and line.get('http', {}).get('request', {}).get('id') == request_id]


def test_a_client_that_leaves_through_nginx_has_its_query_cancelled(tmp_path_factory, topology_database_url):
    seconds = 30 + random.randint(1, 999) / 1000  # a query text of this test's own in pg_stat_activity
    query = f'SELECT pg_sleep({seconds})'
    body = json.dumps({'seconds': seconds}).encode()
    with running_stack(tmp_path_factory, topology_database_url, replicas=2) as stack:
        client = socket.create_connection(('127.0.0.1', stack.port))
        client.sendall(f'POST /slow/sleep HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {ADMIN_TOKEN}\r\n'
                       f'Content-Type: application/json\r\nContent-Length: {len(body)}\r\n'
                       'X-Request-ID: left-through-nginx\r\n\r\n'.encode() + body)
        wait_for(lambda: running_backend(topology_database_url, query), 10, 'the query did not start')
        client.close()
        wait_for(lambda: not running_backend(topology_database_url, query), 2, 'the query still runs')
        [line] = wait_for(lambda: app_access_lines(stack, 'left-through-nginx'), 5, 'the replica logged nothing')
    assert line['http']['response']['status_code'] == 499 and line['event']['outcome'] == 'failure'
