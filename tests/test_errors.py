"""CONTRACT section 3: every error is RFC 9457 problem details, with the status of the error table."""
import json
import logging
import threading
import uuid

import psycopg2
import pytest

from lib.db import connection
from lib.db.guard import WRITE_IN_OWN_READ_ONLY_TRANSACTION, CommitOfFailedTransaction
from lib.errors import (RETRY_AFTER_SECONDS, ApiError, Conflict, NotFound, ServiceUnavailable, TooManyRequests,
                        handle_error)
from lib.http.exchange import ERROR_KEY
from lib.logs.access import error_fields
from tests.helpers import (ADMIN_TOKEN, AUTH, UNREACHABLE_DSN, Caller, assert_problem, body_of_size,
                           export_in_flight, run_sql, things_with_code)


def test_invalid_json_is_400(client):
    response = client.post('/probe/echo', data=b'{"a": ', headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                                                                    'Content-Type': 'application/json'})
    assert assert_problem(response, 400)['detail'] == 'The request body is not valid JSON.'


def test_invalid_utf8_is_400(client):
    response = client.post('/probe/echo', data=b'{"a": "\xff"}', headers={
        'Authorization': f'Bearer {ADMIN_TOKEN}', 'Content-Type': 'application/json'})
    assert_problem(response, 400)


def test_body_over_max_content_length_is_413(make_app):
    client = make_app(MAX_CONTENT_LENGTH=100).test_client()
    response = client.post('/probe/echo', json={'pad': 'x' * 200}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert_problem(response, 413)


def test_problem_titles_are_rfc_9110s_phrases_whatever_the_python(make_app, client):
    """Python 3.11 names 413 and 422 as RFC 7231 did ("Request Entity Too Large", "Unprocessable Entity"), 3.13 as
    RFC 9110 does: a title changed with the Python that ran the service (trial BZ)."""
    too_large = make_app(MAX_CONTENT_LENGTH=100).test_client().post(
        '/probe/echo', json={'pad': 'x' * 200}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    unprocessable = client.post('/probe/echo', json=[1], headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert assert_problem(too_large, 413)['title'] == 'Content Too Large'
    assert assert_problem(unprocessable, 422)['title'] == 'Unprocessable Content'
    assert unprocessable.status == '422 UNPROCESSABLE ENTITY'  # the status line's reason phrase: werkzeug's


def test_default_max_content_length_is_one_mebibyte(client):
    def post(body):
        return client.post('/probe/echo', data=body, headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                                                              'Content-Type': 'application/json'})
    assert post(body_of_size(2**20)).status_code == 200
    assert_problem(post(body_of_size(2**20 + 1)), 413)


def test_wrong_content_type_is_415(client):
    response = client.post('/probe/echo', data=b'a=1', headers={'Authorization': f'Bearer {ADMIN_TOKEN}',
                                                                 'Content-Type': 'text/plain'})
    assert_problem(response, 415)


def test_schema_validation_is_422_with_the_field_map(call):
    body = assert_problem(call('/probe/register', {'email': 'not-an-email'}), 422)
    assert body['detail'] == 'The request body failed validation.'
    assert body['errors'] == {'email': ['Not a valid email address.'], 'name': ['Missing data for required field.']}


@pytest.mark.parametrize('status', [400, 402, 404, 409, 410, 418, 422, 429, 503])
def test_api_error_raised_by_an_action_keeps_its_status(call, status):
    assert_problem(call('/probe/fail', {'status': status}), status)


def test_not_found_from_an_action_carries_its_detail(call):
    assert assert_problem(call('/probe/missing'), 404)['detail'] == 'No such probe.'


@pytest.mark.parametrize('case, status, sqlstate', [
    ('unique', 409, '23505'),
    ('foreign_key', 409, '23503'),
    ('not_null', 422, '23502'),
    ('check', 422, '23514'),
    ('data', 422, '22012'),
    ('bad_input', 422, '22P02'),
    ('raise', 400, 'P0001'),
    ('privilege', 403, '42501'),
    ('timeout', 504, '57014'),
    ('exclusion', 409, '23P01'),
    ('deferred_foreign_key', 409, '23503'),
    ('too_long_for_index', 422, '54000'),
    ('no_data_found', 404, 'P0002'),
    ('read_only', 500, '25006'),
    ('restrict', 409, '23001'),
    ('twice_in_one_upsert', 422, '21000'),
    ('check_option', 422, '44000'),
    ('too_deep_for_the_server', 422, '54001'),
    ('too_many_arguments', 422, '54023'),
    ('disk_full', 503, '53100'),
    ('out_of_memory', 503, '53200'),
])
def test_sqlstate_maps_to_its_status(call, case, status, sqlstate):
    body = assert_problem(call('/probe/sqlstate', {'case': case}), status)
    assert body['sqlstate'] == sqlstate


def test_raise_exception_message_is_the_detail(call):
    assert assert_problem(call('/probe/sqlstate', {'case': 'raise'}), 400)['detail'] == 'Stock is frozen for audit.'


def test_a_raise_exceptions_detail_and_hint_are_the_problems_details_and_hint(call):
    """RAISE ... USING DETAIL, HINT were dropped: the caller saw the message alone (trial AX)."""
    body = assert_problem(call('/probe/sqlstate', {'case': 'raise_with_detail_and_hint'}), 400)
    assert (body['detail'], body['details'], body['hint']) == (
        'Stock is frozen.', 'Audit 7 runs until Friday.', 'Try again on Monday.')
    body = assert_problem(call('/probe/sqlstate', {'case': 'no_data_found_with_hint'}), 404)
    assert (body['detail'], body['hint']) == ('No such order.', 'Orders older than a year are archived.')
    assert 'details' not in body


CAST_ROUTES = '''
    from lib.decorators import inject_db

    @inject_db()
    def cast(db, text):
        return db.fetch_value('SELECT %(text)s::int', {'text': text})

    @inject_db()
    def refuse(db, text):
        db.execute("DO $$ BEGIN RAISE EXCEPTION '%', repeat('m', 5000) USING DETAIL = repeat('d', 5000), "
                   "HINT = repeat('h', 5000); END $$")

    routes = [dict(route='cast', action=cast), dict(route='refuse', action=refuse)]
'''


def test_a_problem_shows_a_kibibyte_of_postgresqls_message(make_app, module_package):
    """PostgreSQL's message quotes a value whole: a 20 MB value was a 20 MB problem (trial BD)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'casting/routes.py': CAST_ROUTES})]).test_client())
    body = assert_problem(call('/casting/cast', {'text': 'x' * 100_000}), 422)
    assert body['detail'] == 'invalid input syntax for type integer: "' + 'x' * (1024 - 40) + '...'
    body = assert_problem(call('/casting/refuse', {'text': ''}), 400)
    assert (body['detail'], body['details'], body['hint']) == ('m' * 1024 + '...', 'd' * 1024 + '...',
                                                              'h' * 1024 + '...')


def test_other_errors_keep_postgresqls_detail_from_the_caller(call):
    """A foreign key's DETAIL names rows and values ("Key (parent_id)=(-1) is not present"): no details member."""
    body = assert_problem(call('/probe/sqlstate', {'case': 'foreign_key'}), 409)
    assert 'details' not in body and 'hint' not in body and 'Key (' not in json.dumps(body)


def test_no_data_found_is_a_404_whose_detail_is_the_message(call):
    assert assert_problem(call('/probe/sqlstate', {'case': 'no_data_found'}), 404)['detail'] == 'query returned no rows'


def test_a_connection_that_met_a_read_only_database_is_closed_not_lent_again(make_app, database_url):
    """A session keeps the default_transaction_read_only its database had when it started: after ALTER DATABASE ...
    SET it to on and back, every write on the pool's old connections stayed a 503 (trial BE); the idle ones, which
    began as it did, go with it."""
    name = psycopg2.extensions.parse_dsn(database_url)['dbname']
    run_sql(database_url, f'ALTER DATABASE "{name}" SET default_transaction_read_only = on')
    try:
        app = make_app(DB_POOL_MAX=4)
        pool = app.extensions['dbapi'].pools['default']
        with connection(pool), connection(pool):  # two idle read-only sessions (trial BG: each failed one write)
            pass
        call = Caller(app.test_client())
        with connection(pool):  # one in use meanwhile, given back later (trial BI: it failed a write after)
            refused = call('/users/create', {'email': f'{uuid.uuid4()}@example.com', 'name': 'Ro'})
            assert pool.gauges()['idle'] == 0
    finally:  # a session of its own, writable first: a new one starts read-only
        run_sql(database_url, f"SELECT set_config('default_transaction_read_only', 'off', false); "
                f'COMMIT; ALTER DATABASE "{name}" RESET default_transaction_read_only')
    body = assert_problem(refused, 503)
    assert body['sqlstate'] == '25006' and body['detail'].startswith('The database accepts no writes now')
    assert refused.headers['Retry-After'] == '1' and pool.gauges()['idle'] == 0
    for _ in range(3):
        assert call('/users/create', {'email': f'{uuid.uuid4()}@example.com', 'name': 'Rw'}).status_code == 201


def test_an_actions_own_read_only_transaction_keeps_the_pools_connections(make_app):
    """A 25006 from `SET TRANSACTION READ ONLY` is the action's own: it closed the pool's every connection at each
    call (trial BI), and it was a 503 "Try again shortly", which no retry could mend: a 500 that says so."""
    app = make_app(DB_POOL_MAX=3)
    pool = app.extensions['dbapi'].pools['default']
    with connection(pool), connection(pool):
        pass
    discarded = pool.gauges()['discarded']
    body = assert_problem(Caller(app.test_client())('/probe/sqlstate', {'case': 'read_only'}), 500)
    assert pool.gauges()['discarded'] == discarded and pool.gauges()['idle'] == 2
    assert (body['detail'], body['sqlstate']) == (WRITE_IN_OWN_READ_ONLY_TRANSACTION, '25006')


@pytest.mark.parametrize('case, sqlstate, constraint, datatype', [
    ('domain_check', '23514', 'positive_case_above_zero', 'positive_case'),
    ('domain_not_null', '23502', None, 'needed_case')])
def test_a_domains_constraint_names_the_domain_as_no_column_is_known(call, case, sqlstate, constraint, datatype):
    """A domain NOT NULL's 422 named nothing that failed (trial R): PostgreSQL names the domain, not a column."""
    body = assert_problem(call('/probe/sqlstate', {'case': case}), 422)
    assert (body['sqlstate'], body.get('constraint'), body['datatype']) == (sqlstate, constraint, datatype), body
    assert 'errors' not in body


def test_unique_violation_names_the_constraint(call):
    assert assert_problem(call('/probe/sqlstate', {'case': 'unique'}), 409)['constraint'] == 'things_code_key'


def attempts(database_url):
    """Return the probe's attempt counter (a sequence: it survives rollbacks)."""
    return run_sql(database_url, 'SELECT last_value FROM probe.attempts')[0][0]


@pytest.mark.parametrize('case, sqlstate', [('serialization', '40001'), ('deadlock', '40P01')])
def test_serialization_failure_and_deadlock_are_503_once_retries_are_spent(make_app, database_url, case, sqlstate):
    caller = make_app(DB_RETRIES=3).test_client()
    run_sql(database_url, "SELECT setval('probe.attempts', 100)")
    response = caller.post('/probe/sqlstate', json={'case': case}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    body = assert_problem(response, 503)
    assert response.headers['Retry-After'] == '1'
    assert body['sqlstate'] == sqlstate
    assert attempts(database_url) == 104  # the first try and three retries


def test_serialization_failure_is_retried_until_it_succeeds(call, database_url, caplog):
    run_sql(database_url, "SELECT setval('probe.attempts', 2)")
    with caplog.at_level(logging.WARNING, logger='lib.decorators'):
        response = call('/probe/flaky')
    assert response.status_code == 200
    assert response.get_json() == {'attempt': 4}
    retries = [record for record in caplog.records if record.name == 'lib.decorators']
    assert [(record.getMessage(), getattr(record, 'error.code')) for record in retries] == [
        ('The transaction is retried (1 of at most 3) after SQLSTATE 40001', '40001')]


REPLAY_ROUTES = '''
    from marshmallow import Schema, fields
    from lib.decorators import inject_conn, use_schema

    class Items(Schema):
        items = fields.List(fields.String(), required=True)

    def take_all(conn, items):
        """Empty items as it goes; fail with a serialization failure on every odd attempt."""
        taken = []
        while items:
            taken.append(items.pop(0))
        with conn.cursor() as cursor:
            cursor.execute("SELECT nextval('probe.attempts')")
            if cursor.fetchone()['nextval'] % 2 == 1:
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        return {'taken': taken}

    take = use_schema(Items)(inject_conn()(take_all))
    routes = [dict(route='take', action=take)]
'''


def test_a_retried_transaction_gets_the_arguments_as_the_first_attempt_got_them(make_app, module_package,
                                                                                database_url):
    """The first attempt emptied the list it was given: the retry must not see it empty (an order with no items)."""
    client = make_app(DB_RETRIES=3, MODULE_PACKAGES=[module_package({'replay/routes.py': REPLAY_ROUTES})]).test_client()
    run_sql(database_url, "SELECT setval('probe.attempts', 2)")
    response = client.post('/replay/take', json={'items': ['a', 'b']}, headers=AUTH)
    assert response.status_code == 200 and response.get_json() == {'taken': ['a', 'b']}
    assert attempts(database_url) == 4  # the first attempt failed, the retry committed


HELPER_ROUTES = '''
    import psycopg2
    from marshmallow import Schema, fields
    from lib.db import transactional
    from lib.decorators import inject_conn, inject_db, use_schema
    from lib.errors import Conflict

    @inject_db()
    def record(db, code):
        """A helper that asks for a transaction: called alone, it commits its row."""
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})

    @inject_db(autocommit=True)
    def record_at_once(db, code):
        """A helper that asks for autocommit: its row commits at once."""
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})

    @inject_conn(named=False)
    def count(conn, code):
        """A helper whose cursors give tuples."""
        with conn.cursor() as cursor:
            cursor.execute('SELECT count(*) FROM probe.things WHERE code = %s', (code,))
            return cursor.fetchone()

    class Call(Schema):
        code = fields.String(required=True)
        then = fields.String(load_default='return')
        helper = fields.String(load_default='record')

    def go_on(conn, code, then, helper):
        {'record': record, 'record_at_once': record_at_once}[helper](code=code)
        seen = count(code=code)
        with conn.cursor() as cursor:
            cursor.execute("SELECT nextval('probe.attempts') AS attempt")
            attempt = cursor.fetchone()['attempt']  # the action's own cursors give dicts again
            if then == 'conflict once' and attempt % 2 == 1:
                cursor.execute("DO $$ BEGIN RAISE EXCEPTION 'conflict' USING ERRCODE = '40001'; END $$")
        if then == 'fail':
            raise Conflict('The action failed after its helper ran.')
        return {'seen': list(seen)}

    in_transaction = use_schema(Call)(inject_conn()(go_on))
    in_autocommit = use_schema(Call)(inject_conn(autocommit=True)(go_on))

    @use_schema(Call)
    @inject_conn(autocommit=True)
    def in_block(conn, code, then, helper):
        with transactional(conn):
            {'record': record, 'record_at_once': record_at_once}[helper](code=code)  # the block's first statement
            if then == 'fail':
                raise Conflict('The block failed after its helper ran.')
        return {}

    @inject_db()
    def record_then_fail(db, code):
        """A helper that writes, then raises."""
        record(code=code)
        raise Conflict('The helper failed after it wrote.')

    @inject_conn()
    def roll_back(conn, code):
        """A helper that writes, then rolls back."""
        record(code=code)
        conn.rollback()

    @inject_db()
    def in_turn(db, code):
        """Call helpers in turn, one with a connection of its own between them, then fail."""
        record(code=f'{code}-a')
        record_at_once(code=f'{code}-b')
        record(code=f'{code}-c')
        raise Conflict('The action failed after its helpers ran.')

    @inject_db()
    def catching(db, code):
        """Write, call a helper that writes and raises, catch that, and return."""
        record(code=code)
        try:
            record_then_fail(code=f'{code}-x')
        except Conflict:
            pass
        return {}

    @inject_db()
    def rolling_back(db, code):
        record(code=code)
        roll_back(code=f'{code}-r')
        return {}

    @inject_db()
    def streaming(db, code):
        yield 1
        record(code=code)
        yield 2

    @inject_db()
    def streaming_first(db, code):
        """Stream items a helper writes: the first is made inside the request, the second after it."""
        def items():
            yield record(code=f'{code}-g0')
            yield record(code=f'{code}-g1')
        return items()

    @inject_db()
    def streaming_empty_first(db, code):
        """A stream whose first batch is empty: the answer's head takes the second too, inside the request."""
        def batches():
            yield []
            yield [record(code=f'{code}-2')]
        return batches()

    @inject_db()
    def record_catching_its_own(db, code):
        """A helper that writes, writes the same again, catches the unique violation and returns."""
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
        try:
            db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
        except psycopg2.IntegrityError:
            return 'caught'

    @inject_db()
    def after_one_caught_its_own(db, code):
        record(code=f'{code}-before')
        try:
            record_catching_its_own(code=f'{code}-x')
        except Exception:
            pass
        record(code=f'{code}-after')
        return {}

    routes = [dict(route='in_transaction', action=in_transaction), dict(route='in_autocommit', action=in_autocommit),
              dict(route='in_block', action=in_block), dict(route='in_turn', action=in_turn),
              dict(route='catching', action=catching), dict(route='rolling_back', action=rolling_back),
              dict(route='streaming', action=streaming), dict(route='streaming_first', action=streaming_first),
              dict(route='after_one_caught_its_own', action=after_one_caught_its_own),
              dict(route='streaming_empty_first', action=streaming_empty_first)]
'''


def helper_client(build, module_package, **config):
    """A client of an app with HELPER_ROUTES that build (make_app) makes, config overriding its settings."""
    return build(MODULE_PACKAGES=[module_package({'helpers/routes.py': HELPER_ROUTES})], **config).test_client()


# A second connection per request would wait out a pool of one (a 503), or be the client's second (a 429).
ONE_CONNECTION = [{}, {'DB_POOL_MAX': 1, 'DB_POOL_TIMEOUT_MS': 300}, {'DB_CLIENT_MAX_CONNECTIONS': 1}]


@pytest.mark.parametrize('config', ONE_CONNECTION)
@pytest.mark.parametrize('then, status, rows', [('return', 200, 1), ('fail', 409, 0), ('conflict once', 200, 1)])
def test_a_decorated_helper_an_action_calls_joins_its_transaction(make_app, module_package, database_url,
                                                                  config,
                                                                  then, status, rows):
    """Its rows commit with the action's, once: before, it borrowed a connection of its own, which committed them
    when the action then failed, and again at each retry."""
    client = helper_client(make_app, module_package, DB_RETRIES=3, **config)
    run_sql(database_url, "SELECT setval('probe.attempts', 2)")
    code = f'helper-{uuid.uuid4()}'
    response = client.post('/helpers/in_transaction', json={'code': code, 'then': then}, headers=AUTH)
    assert response.status_code == status
    if status == 200:
        assert response.get_json() == {'seen': [1]}  # its own row, in the action's transaction; tuples as it asked
    assert things_with_code(database_url, code) == rows


@pytest.mark.parametrize('config', ONE_CONNECTION)
@pytest.mark.parametrize('helper', ['record', 'record_at_once'])
def test_a_helper_called_by_an_autocommit_action_commits_on_the_actions_connection(make_app, module_package,
                                                                                   database_url, config, helper):
    """A helper that asks for a transaction gets one of its own there, committed when it returns."""
    client = helper_client(make_app, module_package, **config)
    code = f'helper-{uuid.uuid4()}'
    response = client.post('/helpers/in_autocommit', json={'code': code, 'then': 'fail', 'helper': helper},
                           headers=AUTH)
    assert response.status_code == 409
    assert things_with_code(database_url, code) == 1


@pytest.mark.parametrize('helper, rows', [('record', 0), ('record_at_once', 1)])
def test_a_helper_called_first_in_a_transactional_block_joins_the_block(make_app, module_package, database_url,
                                                                        helper, rows):
    """Before the block's first statement libpq tells no transaction: the helper opened a transactional() of its own
    inside it (psycopg2's 500). One that asks for autocommit borrows its own connection, as in any transaction."""
    client = helper_client(make_app, module_package)
    code = f'helper-{uuid.uuid4()}'
    response = client.post('/helpers/in_block', json={'code': code, 'then': 'fail', 'helper': helper}, headers=AUTH)
    assert response.status_code == 409
    assert things_with_code(database_url, code) == rows


def test_helpers_after_one_with_a_connection_of_its_own_still_join_the_action(make_app, module_package,
                                                                               database_url):
    """The autocommit helper's own lease gave up the action's place when it ended: the helper after it borrowed a
    second connection and committed when the action failed (trial AY)."""
    client = helper_client(make_app, module_package)
    code = f'helper-{uuid.uuid4()}'
    assert client.post('/helpers/in_turn', json={'code': code}, headers=AUTH).status_code == 409
    assert [things_with_code(database_url, f'{code}-{part}') for part in 'abc'] == [0, 1, 0]


def test_a_helper_that_raises_is_rolled_back_and_its_caller_may_go_on(make_app, module_package, database_url):
    """It runs in a savepoint, as it would have run in a transaction of its own: its rows go, the caller's stay."""
    client = helper_client(make_app, module_package)
    code = f'helper-{uuid.uuid4()}'
    assert client.post('/helpers/catching', json={'code': code}, headers=AUTH).status_code == 200
    assert (things_with_code(database_url, code), things_with_code(database_url, f'{code}-x')) == (1, 0)


def test_a_helper_may_not_roll_back_its_callers_transaction(make_app, module_package, database_url):
    """Its conn.rollback() threw away what the action wrote before it, and the answer was a 200 (trial AY)."""
    client = helper_client(make_app, module_package)
    code = f'helper-{uuid.uuid4()}'
    body = assert_problem(client.post('/helpers/rolling_back', json={'code': code}, headers=AUTH), 500)
    assert "called connection.rollback in a helper joined to its caller's transaction" in body['detail']
    assert (things_with_code(database_url, code), things_with_code(database_url, f'{code}-r')) == (0, 0)


def test_a_helper_called_from_a_stream_after_its_action_returned_says_why_it_cannot_run(make_app,
                                                                                       module_package,
                                                                                       caplog):
    """Flask's "Working outside of application context" told a module author nothing (trial AY)."""
    client = helper_client(make_app, module_package)
    response = client.post('/helpers/streaming', json={'code': f'helper-{uuid.uuid4()}'}, headers=AUTH)
    with pytest.raises(RuntimeError, match='borrows a pooled connection, which only an action running has'):
        response.get_data()


def test_a_helper_a_streams_first_item_calls_joins_the_action_and_nothing_commits_alone(make_app,
                                                                                        module_package,
                                                                                        database_url):
    """The first item is made before the answer starts: its helper found nothing to join and committed its row on a
    connection of its own while the action's failed (trial BB)."""
    client = helper_client(make_app, module_package)
    code = f'helper-{uuid.uuid4()}'
    response = client.post('/helpers/streaming_first', json={'code': code}, headers=AUTH)
    with pytest.raises(RuntimeError, match='borrows a pooled connection'):
        response.get_data()  # the second item's helper, after the action returned
    assert [things_with_code(database_url, f'{code}-{item}') for item in ('g0', 'g1')] == [0, 0]


@pytest.mark.parametrize('config', ONE_CONNECTION[:2])
def test_a_helper_a_streams_later_item_calls_inside_the_request_borrows_nothing(make_app, module_package,
                                                                                 database_url, config):
    """The answer's head takes the second item when the first batch is empty, inside the request: its helper committed
    its row on a connection of its own (or waited out a pool of one for a 503) while the action's failed (trial BC)."""
    client = helper_client(make_app, module_package, **config)
    code = f'helper-{uuid.uuid4()}'
    assert_problem(client.post('/helpers/streaming_empty_first', json={'code': code}, headers=AUTH), 500)
    assert things_with_code(database_url, f'{code}-2') == 0


def test_a_helper_that_caught_its_own_error_is_rolled_back_and_its_caller_may_go_on(make_app, module_package,
                                                                                      database_url):
    """Its savepoint's RELEASE failed (25P02) outside the rollback to it, and the caller's next statement was a bare
    500 (trial BB)."""
    client = helper_client(make_app, module_package)
    code = f'helper-{uuid.uuid4()}'
    assert client.post('/helpers/after_one_caught_its_own', json={'code': code}, headers=AUTH).status_code == 200
    assert [things_with_code(database_url, f'{code}-{part}') for part in ('before', 'x', 'after')] == [1, 0, 1]


def test_a_helper_that_asks_for_autocommit_inside_a_transaction_borrows_a_connection_of_its_own(
        make_app, module_package, database_url):
    """It asked for statements that commit at once, which a transaction cannot give it."""
    client = helper_client(make_app, module_package)
    code = f'helper-{uuid.uuid4()}'
    response = client.post('/helpers/in_transaction', json={'code': code, 'then': 'fail', 'helper': 'record_at_once'},
                           headers=AUTH)
    assert response.status_code == 409
    assert things_with_code(database_url, code) == 1


CAUGHT_ROUTES = '''
    import psycopg2
    from lib.db import transactional
    from lib.decorators import inject_conn, inject_db

    def insert_twice(db, code, savepoint):
        """Insert code, then insert it again and catch the unique violation, in a savepoint or not."""
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
        try:
            if savepoint:
                db.execute('SAVEPOINT again')
            db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
        except psycopg2.IntegrityError:
            if savepoint:
                db.execute('ROLLBACK TO SAVEPOINT again')
        return {'saved': code}

    @inject_db()
    def in_action(db, code, savepoint=False):
        return insert_twice(db, code, savepoint)

    @inject_conn(autocommit=True)
    def in_transactional(conn, code, savepoint=False):
        with transactional(conn) as db:
            return insert_twice(db, code, savepoint)

    @inject_db()
    def in_stream(db, code, savepoint=False):
        yield insert_twice(db, code, savepoint)

    @inject_db()
    def going_on(db, code, savepoint=False):
        insert_twice(db, code, savepoint)
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': f'{code}-next'})
        return {'saved': code}

    routes = [dict(route='in_action', action=in_action), dict(route='in_transactional', action=in_transactional),
              dict(route='in_stream', action=in_stream), dict(route='going_on', action=going_on)]
'''


@pytest.mark.parametrize('route', ['in_action', 'in_transactional', 'in_stream', 'going_on'])
def test_an_action_that_catches_a_database_error_and_returns_is_a_500_not_a_success_with_nothing_written(
        make_app, module_package, database_url, route):
    """PostgreSQL answers the COMMIT of a transaction a statement failed in with a ROLLBACK, which psycopg2 takes
    silently: a 200 whose row was gone (trial AW). A stream's 200 has gone out: its end is cut short. One that sends
    another statement meets PostgreSQL's 25P02, a generic 500 before (trial BB)."""
    client = make_app(MODULE_PACKAGES=[module_package({'caught/routes.py': CAUGHT_ROUTES})]).test_client()
    code = f'caught-{uuid.uuid4()}'
    if route == 'in_stream':
        response = client.post(f'/caught/{route}', json={'code': code}, headers=AUTH)
        with pytest.raises(psycopg2.ProgrammingError, match='went on after a statement failed'):
            response.get_data()
    else:
        body = assert_problem(client.post(f'/caught/{route}', json={'code': code}, headers=AUTH), 500)
        assert 'went on after a statement failed in its transaction' in body['detail']
        assert body['sqlstate'] == '25P02', 'the refused commit and the refused statement answer alike'
    assert things_with_code(database_url, code) == 0
    savepoint = client.post(f'/caught/{route}', json={'code': code, 'savepoint': True}, headers=AUTH)
    assert savepoint.status_code == 200 and code in savepoint.get_data(as_text=True)
    assert things_with_code(database_url, code) == 1


def test_the_refused_commit_of_a_failed_transaction_carries_its_sqlstate_to_the_access_line():
    """The problem said 25P02, the access line no error.code (trial BR), where a statement's 25P02 had both."""
    assert error_fields(CommitOfFailedTransaction('went on'), detailed=False) == {'code': '25P02'}


LEFT_OPEN_ROUTES = '''
    from lib.db import Db
    from lib.decorators import inject_conn

    @inject_conn(autocommit=True)
    def begin_only(conn, code, stream=None):
        with conn.cursor() as cursor:
            cursor.execute('BEGIN; INSERT INTO probe.things (code) VALUES (%s) RETURNING id', (code,))
            row = cursor.fetchone()
        query = ('SELECT id FROM probe.things WHERE code = %s', (code,))
        if stream == 'db':
            return Db(conn).stream(*query)
        if stream == 'db json':
            return Db(conn).stream_json(*query)
        return iter([row]) if stream else row
    routes = [dict(route='begin_only', action=begin_only)]
'''


@pytest.mark.parametrize('stream', [None, 'iterator', 'db', 'db json'])
def test_an_autocommit_action_that_leaves_a_transaction_open_is_a_500_not_a_success_rolled_back_unseen(
        make_app, module_package, database_url, stream):
    """A stream too: refused before its 200 goes out, not cut short at its end; a Db stream, which opens a
    transaction of its own, committed the BEGIN's work with a 200 (trial AM)."""
    client = make_app(MODULE_PACKAGES=[module_package({'open/routes.py': LEFT_OPEN_ROUTES})]).test_client()
    code = f'left-open-{stream}'
    response = client.post('/open/begin_only', json={'code': code, 'stream': stream}, headers=AUTH)
    assert_problem(response, 500)
    assert response.get_json()['detail'].startswith('The action left a transaction open (a BEGIN without its COMMIT)')
    assert things_with_code(database_url, code) == 0


MADE_RESPONSE_ROUTES = '''
    from flask import Response
    from lib.decorators import inject_conn

    @inject_conn()
    def made(conn, code, status):
        with conn.cursor() as cursor:
            cursor.execute('INSERT INTO probe.things (code) VALUES (%s)', (code,))
        return Response('made', status=status, mimetype='text/plain')
    routes = [dict(route='made', action=made)]
'''


@pytest.mark.parametrize('status, answer, kept', [(500, 500, 0), (404, 500, 0), (204, 204, 1), (201, 201, 1)])
def test_a_response_an_action_makes_has_its_status_held_to_the_success_statuses(make_app, module_package,
                                                                              database_url, status, answer, kept):
    """Its own 500 went out as it was, its transaction committed, and a 204 kept its body's content type (trial AM):
    an error is raised, and a 204 has no body, whoever made the answer."""
    client = make_app(MODULE_PACKAGES=[module_package({'made/routes.py': MADE_RESPONSE_ROUTES})]).test_client()
    code = f'made-{status}'
    response = client.post('/made/made', json={'code': code, 'status': status}, headers=AUTH)
    if answer == 500:
        assert_problem(response, 500)
    else:
        assert (response.status_code, response.get_data(), response.content_type) == (
            (204, b'', None) if answer == 204 else (201, b'made', 'text/plain; charset=utf-8'))
    assert things_with_code(database_url, code) == kept


def test_arguments_that_cannot_be_copied_are_not_replayed():
    from lib.decorators import replayable_arguments
    lock = threading.Lock()
    assert replayable_arguments((lock,), {}, 3)[0] == 0
    retries, arguments = replayable_arguments(([1],), {'k': {'v': [2]}}, 3)
    first, replay = arguments(), arguments()
    assert retries == 3 and first == replay and first[0][0] is not replay[0][0]


def test_a_serialization_failure_in_an_autocommit_action_is_not_retried(make_app, database_url):
    call = Caller(make_app(DB_RETRIES=3).test_client())
    run_sql(database_url, "SELECT setval('probe.attempts', 500)")
    response = call('/types/select', {'query': "SELECT nextval('probe.attempts'); "
                                               "DO $$ BEGIN RAISE EXCEPTION 'c' USING ERRCODE = '40001'; END $$"})
    assert assert_problem(response, 503)['sqlstate'] == '40001'
    assert attempts(database_url) == 501


def test_database_down_is_503_with_retry_after(make_app):
    client = make_app(DATABASES={'default': UNREACHABLE_DSN}).test_client()
    response = client.post('/probe/things/get', json={'id': 1}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    body = assert_problem(response, 503)
    assert response.headers['Retry-After'] == '1'
    assert body['detail'] == 'The database cannot be reached. Nothing was sent to it; try again shortly.'


@pytest.mark.parametrize('case, sqlstate', [('connection_failure', '08006'), ('too_many_connections', '53300'),
                                            ('admin_shutdown', '57P01'), ('crash_shutdown', '57P02'),
                                            ('cannot_connect_now', '57P03')])
def test_a_server_going_away_or_full_is_503_with_retry_after(call, case, sqlstate):
    response = call('/probe/sqlstate', {'case': case})
    assert assert_problem(response, 503)['sqlstate'] == sqlstate
    assert response.headers['Retry-After'] == '1'


def test_a_lock_not_obtained_within_the_actions_lock_timeout_is_503_with_retry_after(call, database_url):
    holder = psycopg2.connect(database_url)
    try:
        with holder.cursor() as cursor:  # its transaction stays open, the table locked, until the rollback
            cursor.execute('LOCK TABLE probe.things IN ACCESS EXCLUSIVE MODE')
        response = call('/types/select_steps', {'queries': ["SET LOCAL lock_timeout = '100ms'",
                                                            'SELECT count(*) AS n FROM probe.things']})
    finally:
        holder.rollback()
        holder.close()
    body = assert_problem(response, 503)
    assert (body['sqlstate'], body['detail']) == ('55P03', 'The data is locked by another transaction. Try again shortly.')
    assert response.headers['Retry-After'] == '1'


def test_no_connection_free_in_time_is_503(make_app):
    app = make_app(DB_POOL_MAX=1, DB_POOL_TIMEOUT_MS=100)
    headers = {'Authorization': f'Bearer {ADMIN_TOKEN}'}
    holder = threading.Thread(target=lambda: app.test_client().post('/probe/hold', json={'seconds': 1.5},
                                                                    headers=headers))
    holder.start()
    try:
        threading.Event().wait(0.4)
        response = app.test_client().post('/probe/things/get', json={'id': 1}, headers=headers)
        assert_problem(response, 503)
        assert response.headers['Retry-After'] == '1'
    finally:
        holder.join()


def test_a_process_at_its_limit_sheds_before_authorization(make_app):
    app = make_app(MAX_REQUESTS_IN_FLIGHT=1)
    with export_in_flight(Caller(app.test_client())):
        shed = app.test_client().post('/probe/echo', json={})
    assert_problem(shed, 503)
    assert shed.headers['Retry-After'] == '1'


@pytest.mark.parametrize('path, body', [('/probe/crash', {}), ('/probe/sqlstate', {'case': 'syntax'}),
                                        ('/probe/sqlstate', {'case': 'undefined_table'}),
                                        # class 22, but the server's own state: no body could do better
                                        ('/probe/sqlstate', {'case': 'sequence_exhausted'})])
def test_anything_else_is_a_generic_500(call, path, body):
    response = call(path, body)
    problem = assert_problem(response, 500)
    assert problem['detail'] == 'The server could not complete the request.'
    text = response.get_data(as_text=True)
    for leak in ('hunter2', 'db.internal', 'SELECT', 'SELEC', 'Traceback', 'File "', ADMIN_TOKEN, 'no_such_table',
                 'password', 'host='):
        assert leak not in text


def test_a_database_errors_message_is_logged_without_psycopg2s_trailing_newline(call, caplog):
    """"syntax error at or near ...\n" made exact matches on error.message miss (trial AX)."""
    assert_problem(call('/probe/sqlstate', {'case': 'syntax'}), 500)
    logged = [record for record in caplog.records if record.name == 'dbapi.access'][-1]
    assert vars(logged)['error.message'].startswith('syntax error at or near "SELEC"')
    assert vars(logged)['error.message'] == vars(logged)['error.message'].rstrip()


def test_a_value_json_cannot_encode_is_a_500_with_nothing_committed(call, database_url):
    """The answer is encoded before the commit: a client told 500 must not find the write done."""
    code = f'unencodable-{threading.get_ident()}'
    assert_problem(call('/probe/things/create-unencodable', {'code': code}), 500)
    assert things_with_code(database_url, code) == 0
    assert call('/probe/things/create', {'code': code}).status_code == 201  # the same insert, encodable, commits


def test_transactional_inside_an_action_that_is_one_transaction_is_a_500_with_nothing_committed(call, database_url):
    """Its commit ended the action's own transaction half-way: a 500 left both rows written, a retry wrote them
    twice."""
    code = f'nested-{threading.get_ident()}'
    assert_problem(call('/probe/things/create-nested', {'code': code}), 500)
    assert run_sql(database_url, 'SELECT count(*) FROM probe.things WHERE code LIKE %s', (f'{code}%',)) == [(0,)]


@pytest.mark.parametrize('options', [{'status': 418}, {'title': 'Teapot'}, {'type': 'x'}, {'request_id': 'forged'},
                                     {'headers': {'Content-Type': 'text/html'}}, {'headers': {'X-Request-ID': 'f'}},
                                     {'headers': {'content-length': '3'}}])
def test_an_error_cannot_replace_what_the_framework_writes(options):
    """The body's status is the answer's, one request id, the problem's content type and the body's own length."""
    with pytest.raises(TypeError, match='the framework'):
        NotFound('No such thing.', **options)


def test_an_errors_detail_is_text():
    """RFC 9457 section 3.1.4: a detail is a string."""
    with pytest.raises(TypeError, match='NotFound takes a detail of text, not int'):
        NotFound(123)


@pytest.mark.parametrize('errors, fault', [(['taken'], 'list'), ('taken', 'str'), (('taken',), 'tuple'),
                                           ({'email': 'taken'}, "str at 'email'"),
                                           ({'items': {0: {'sku': None}}}, "NoneType at 'sku' at 0 at 'items'")])
def test_an_errors_field_map_is_a_dict_of_message_lists(errors, fault):
    """The contract's errors member is a field map, {field: [messages]}, whatever raised it."""
    with pytest.raises(TypeError) as raised:
        Conflict('Taken.', errors=errors)
    assert str(raised.value) == f'Conflict takes errors as a field map, {{field: [messages]}}, not {fault}'
    Conflict('Taken.', errors={'email': ['taken'], 'items': {0: {'sku': ['unknown']}}})  # nested fields' own maps


VALIDATION_ROUTES = '''
    from marshmallow import ValidationError

    def refuse(field=None):
        if field == 'map':
            raise ValidationError({'a': 'Too big.', 'b': {'c': 'Too small.'}})
        raise ValidationError('Not this one.', **({'field_name': field} if field else {}))
    routes = [dict(route='refuse', action=refuse)]
'''


@pytest.mark.parametrize('body, errors', [({}, {'_schema': ['Not this one.']}),
                                          ({'field': 'email'}, {'email': ['Not this one.']}),
                                          ({'field': 'map'}, {'a': ['Too big.'], 'b': {'c': ['Too small.']}})])
def test_a_validation_error_an_action_raises_keeps_the_field_map_shape(make_app, module_package, body, errors):
    """marshmallow's own shape for a message without a field (normalized_messages), and the field it was given."""
    client = make_app(MODULE_PACKAGES=[module_package({'checks/routes.py': VALIDATION_ROUTES})]).test_client()
    response = client.post('/checks/refuse', json=body, headers=AUTH)
    assert response.status_code == 422
    assert response.get_json()['errors'] == errors


ABORT_ROUTES = '''
    from flask import abort
    from werkzeug.exceptions import MethodNotAllowed, TooManyRequests
    from lib.errors import Conflict

    def stop(status, words=None):
        if status == 4051:
            raise MethodNotAllowed(['GET'])
        if status == 4291:
            raise TooManyRequests(retry_after=7)
        if status == 4091:  # errors set after the error was made, past its constructor's check
            error = Conflict('Taken.')
            error.errors = ['late']
            raise error
        abort(status, words) if words else abort(status)
    routes = [dict(route='stop', action=stop)]
'''


@pytest.mark.parametrize('body, status, detail, headers', [
    ({'status': 404}, 404, 'Not Found.', {}),
    ({'status': 404, 'words': 'No such order.'}, 404, 'No such order.', {}),
    ({'status': 405}, 405, 'Use POST: this path does not accept this method.', {'Allow': 'POST'}),
    ({'status': 4051}, 405, 'Use GET: this path does not accept this method.', {'Allow': 'GET'}),
    ({'status': 401}, 401, 'Unauthorized.', {'WWW-Authenticate': 'Bearer realm="dbapi"'}),
    ({'status': 409, 'words': 'Taken.'}, 409, 'Taken.', {}),
    ({'status': 405, 'words': 'Not this way.'}, 405, 'Not this way.', {'Allow': 'POST'}),  # abort's words, not methods
    ({'status': 4291}, 429, 'Too Many Requests.', {'Retry-After': '7'}),
    ({'status': 4091}, 500, 'The server could not complete the request.', {}),
])
def test_flask_abort_in_an_action_keeps_its_meaning_and_not_the_routers(make_app, module_package, body, status,
                                                                        detail, headers):
    """abort(404) in an action listed the very action that ran as missing; abort(401) had no challenge."""
    client = make_app(MODULE_PACKAGES=[module_package({'aborts/routes.py': ABORT_ROUTES})]).test_client()
    response = client.post('/aborts/stop', json=body, headers=AUTH)
    assert assert_problem(response, status)['detail'] == detail
    assert {name: response.headers.get(name) for name in headers} == headers


RAISED_ANSWER_ROUTES = '''
    from flask import Response, abort
    from werkzeug.exceptions import HTTPException
    from werkzeug.routing import RequestRedirect
    from lib.decorators import inject_db

    @inject_db()
    def write_then_raise(db, code, kind):
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
        if kind == 'abort 200':
            abort(Response('{"ok": true}', status=200, content_type='application/json'))
        if kind == 'response 201':
            raise HTTPException(response=Response('{"created": true}', status=201))
        if kind == 'abort html 500':
            abort(Response('<html>oops</html>', status=500, content_type='text/html'))
        raise RequestRedirect('http://127.0.0.1/elsewhere')
    routes = [dict(route='write', action=write_then_raise)]
'''


@pytest.mark.parametrize('kind', ['abort 200', 'response 201', 'abort html 500', 'redirect'])
def test_an_answer_an_action_raises_is_a_500_problem_with_nothing_committed(make_app, module_package, database_url,
                                                                            kind):
    """Flask sent it as it was: a 200 or 201 whose row the raise had rolled back, an HTML 500, werkzeug's HTML
    redirect page (trial BR)."""
    client = make_app(MODULE_PACKAGES=[module_package({'raising/routes.py': RAISED_ANSWER_ROUTES})]).test_client()
    code = f'raised-{uuid.uuid4()}'
    response = client.post('/raising/write', json={'code': code, 'kind': kind}, headers=AUTH)
    assert assert_problem(response, 500)['detail'] == 'The server could not complete the request.'
    assert things_with_code(database_url, code) == 0


EXITING_HOOK_ROUTES = '''
    import sys
    from marshmallow import Schema, fields, post_load
    from lib.decorators import use_schema

    class Body(Schema):
        a = fields.Integer()

        @post_load
        def leave(self, data, **kwargs):
            sys.exit(3)

    @use_schema(Body)
    def act(a=None):
        return {'a': a}
    routes = [dict(route='act', action=act)]
'''


def test_sys_exit_in_a_schemas_hook_is_a_500_like_one_in_the_action(make_app, module_package):
    """Any module code the view runs, not the action alone: the worker would otherwise end."""
    client = make_app(MODULE_PACKAGES=[module_package({'exits/routes.py': EXITING_HOOK_ROUTES})]).test_client()
    assert assert_problem(client.post('/exits/act', json={'a': 1}, headers=AUTH), 500)


@pytest.mark.parametrize('headers', [{'Content-Type ': 'text/plain'}, {'X Foo': 'a'}, {'X-Foo': 'a\r\nSet-Cookie: x'},
                                     {'X-Foo': 'a\x00'},
                                     # what gunicorn drops or sends raw (trial BW): hop-by-hop, its own, not ASCII
                                     {'Trailer': 'X-Sum'}, {'Keep-Alive': '5'}, {'Server': 'x'}, {'X-Foo': 'caf\u00e9'}])
def test_an_error_header_that_cannot_be_sent_is_refused_where_it_is_raised(headers):
    """gunicorn refused it when it wrote the answer: a 500 under a new request id, with no line of the request."""
    with pytest.raises(TypeError, match='takes no header'):
        NotFound('No such thing.', headers=headers)


def test_an_errors_own_retry_after_is_kept_in_any_case_and_its_dict_left_alone():
    headers = {'retry-after': '30'}
    assert ServiceUnavailable('Busy.', headers=headers).headers == {'retry-after': '30'}
    assert TooManyRequests(headers=headers).headers == {'retry-after': '30'} and headers == {'retry-after': '30'}
    assert ServiceUnavailable().headers == {'Retry-After': RETRY_AFTER_SECONDS}


class Success(ApiError):
    """An error class with a success status: a module's bug."""

    status = 200


@pytest.mark.parametrize('error', [Success('ok?'), NotFound('x', when=object()), NotFound('x', big=2 ** 70 * 1.0j)])
def test_an_error_that_cannot_be_answered_as_it_says_is_a_500_that_says_why(app, error):
    with app.test_request_context('/probe/echo', method='POST') as context:
        response = handle_error(error)
        logged, _ = context.request.environ[ERROR_KEY]
    assert response.status_code == 500 and response.get_json()['detail'] == ApiError.detail
    assert isinstance(logged, TypeError) and logged.__cause__ is error
    assert str(logged).startswith(f'{type(error).__name__}: ')


def test_an_error_takes_extension_members_and_its_own_headers(app):
    error = NotFound('No such order.', order_id=7, headers={'Retry-After': '5'})
    with app.test_request_context('/probe/echo', method='POST'):
        response = handle_error(error)
    assert response.headers['Retry-After'] == '5' and response.content_type == 'application/problem+json'
    assert response.get_json()['order_id'] == 7 and response.get_json()['status'] == 404
