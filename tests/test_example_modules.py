"""CONTRACT section 8: the example, users and accounts modules, run twice: on the test database directly, and
through a real pgbouncer in transaction mode (the native one `make stack STACK_PGBOUNCER=1` runs)."""
import datetime
import decimal
import itertools
import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.helpers import TRICKY_TEXTS, Caller, app_factory, assert_problem, database_via, run_sql


@pytest.fixture(scope='module', params=['direct', pytest.param('pgbouncer', marks=pytest.mark.slow)])
def database_url(request, database_url):
    """The test database, reached directly or through pgbouncer: the DSN every app of these tests uses."""
    with database_via(request.param, database_url) as dsn:
        yield dsn


@pytest.fixture(scope='module')
def make_app(database_url):
    """A factory of apps on this module's database_url."""
    with app_factory(database_url) as factory:
        yield factory


@pytest.fixture(scope='module')
def app(make_app):
    """The app the call and client fixtures use here."""
    return make_app()


def unique_email(tag='user'):
    """Return an email no other test uses."""
    return f'{tag}-{uuid.uuid4().hex[:12]}@example.com'


def new_user(call, **fields):
    """Create a user and return its row."""
    response = call('/users/create', {'email': unique_email(), 'name': 'Ada', **fields})
    assert response.status_code == 201
    return response.get_json()


def test_example_root_returns_true(call):
    assert call('/example/').get_json() is True


def test_example_foo_echoes_with_time(call):
    body = call('/example/foo', {'name': 'Ada', 'email': 'ada@example.com'}).get_json()
    assert body['name'] == 'Ada' and body['email'] == 'ada@example.com'
    assert datetime.datetime.fromisoformat(body['time']).tzinfo is not None


def test_example_foo_email_is_optional(call):
    assert call('/example/foo', {'name': 'Ada'}).get_json()['email'] is None


def test_example_bar_upserts_by_name(call):
    name = f'bar-{uuid.uuid4().hex[:8]}'
    first = call('/example/bar', {'name': name, 'email': 'one@example.com'}).get_json()
    second = call('/example/bar', {'name': name, 'email': 'two@example.com'}).get_json()
    assert len(first) == len(second) == 1
    assert second[0]['id'] == first[0]['id'] and second[0]['email'] == 'two@example.com'


def test_users_create_returns_201_and_the_row(call):
    email = unique_email()
    response = call('/users/create', {'email': email, 'name': 'Ada'})
    assert response.status_code == 201
    row = response.get_json()
    assert row['email'] == email and row['name'] == 'Ada' and isinstance(row['id'], int)
    assert datetime.datetime.fromisoformat(row['created_at']).tzinfo is not None


def test_users_duplicate_email_is_409(call):
    user = new_user(call)
    assert call('/users/create', {'email': user['email'], 'name': 'B'}).status_code == 409


def test_users_get(call):
    user = new_user(call)
    assert call('/users/get', {'id': user['id']}).get_json() == user
    assert call('/users/get', {'id': 10**12}).status_code == 404


@pytest.mark.parametrize('body', [{'id': '1'}, {'id': 0}, {'id': 1.5}, {}, {'id': None}])
def test_users_get_refuses_bad_ids(call, body):
    assert call('/users/get', body).status_code == 422


def test_users_update(call):
    user = new_user(call)
    updated = call('/users/update', {'id': user['id'], 'name': 'Grace'}).get_json()
    assert updated['name'] == 'Grace' and updated['email'] == user['email']
    assert updated['updated_at'] >= user['updated_at']
    assert call('/users/update', {'id': 10**12, 'name': 'x'}).status_code == 404
    assert call('/users/update', {'id': user['id']}).status_code == 422


def test_users_update_to_a_taken_email_is_409(call):
    first, second = new_user(call), new_user(call)
    assert call('/users/update', {'id': second['id'], 'email': first['email']}).status_code == 409


def test_users_delete(call):
    user = new_user(call)
    assert call('/users/delete', {'id': user['id']}).get_json() == {'deleted': True}
    assert call('/users/delete', {'id': user['id']}).status_code == 404
    assert call('/users/get', {'id': user['id']}).status_code == 404


def test_users_upsert_inserts_then_updates_by_email(call):
    email = unique_email()
    first = call('/users/upsert', {'email': email, 'name': 'One'}).get_json()
    second = call('/users/upsert', {'email': email, 'name': 'Two'}).get_json()
    assert first['id'] == second['id'] and second['name'] == 'Two'


def test_users_concurrent_upserts_make_one_row(app, database_url):
    email = unique_email('race')
    barrier = threading.Barrier(16)

    def upsert(index):
        barrier.wait()
        return Caller(app.test_client())('/users/upsert', {'email': email, 'name': f'n{index}'}).status_code
    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(upsert, range(16)))
    assert statuses == [200] * 16
    assert run_sql(database_url, 'SELECT count(*) FROM users WHERE email = %s', (email,)) == [(1,)]


def test_users_list_pages_by_keyset(call):
    created = [new_user(call)['id'] for _ in range(5)]
    after = created[0] - 1
    page = call('/users/list', {'limit': 2, 'after_id': after}).get_json()
    assert [item['id'] for item in page['items']] == created[:2]
    assert page['next_after_id'] == created[1]
    seen = []
    cursor = after
    while cursor is not None:
        page = call('/users/list', {'limit': 2, 'after_id': cursor}).get_json()
        seen += [item['id'] for item in page['items']]
        cursor = page['next_after_id']
    assert seen[:5] == created and seen == sorted(seen)


def test_users_list_last_page_has_null_next(call):
    user = new_user(call)
    page = call('/users/list', {'after_id': user['id'] - 1, 'limit': 1000}).get_json()
    assert page['items'][-1]['id'] >= user['id'] and page['next_after_id'] is None


def test_users_list_takes_back_the_null_next_after_id_as_the_first_page(call):
    user = new_user(call)
    last = call('/users/list', {'after_id': user['id'] - 1}).get_json()
    assert last['next_after_id'] is None
    first = call('/users/list', {'limit': 2}).get_json()
    assert call('/users/list', {'limit': 2, 'after_id': last['next_after_id']}).get_json() == first


@pytest.mark.parametrize('after_id', [0, None])
def test_users_list_after_id_0_or_null_is_the_first_page(call, after_id):
    first = call('/users/list', {'limit': 2}).get_json()
    assert call('/users/list', {'limit': 2, 'after_id': after_id}).get_json() == first


@pytest.mark.parametrize('after_id, status', [(9223372036854775807, 200), (9223372036854775808, 422), (-1, 422),
                                              ('1', 422)])
def test_users_list_after_id_runs_from_0_to_the_largest_bigint(call, after_id, status):
    response = call('/users/list', {'after_id': after_id})
    assert response.status_code == status
    if status == 200:
        assert response.get_json() == {'items': [], 'next_after_id': None}


def test_users_list_defaults_to_100(call):
    for _ in range(101 - len(call('/users/list', {'limit': 1000}).get_json()['items'])):
        new_user(call)
    assert len(call('/users/list').get_json()['items']) == 100


@pytest.mark.parametrize('limit', [0, 1001, -1, '10'])
def test_users_list_limit_runs_from_1_to_1000(call, limit):
    assert call('/users/list', {'limit': limit}).status_code == 422


def test_users_export_streams_every_user_as_one_array(call, database_url):
    new_user(call)
    response = call('/users/export', buffered=False)
    assert response.status_code == 200 and response.mimetype == 'application/json'
    assert response.is_streamed and 'Content-Length' not in response.headers
    exported = json.loads(response.get_data())
    response.close()
    count = run_sql(database_url, 'SELECT count(*) FROM users')[0][0]
    assert len(exported) == count and [user['id'] for user in exported] == sorted(user['id'] for user in exported)


def open_account(call, balance='0'):
    """Open an account, deposit balance when positive, and return its id."""
    account = call('/accounts/open', {'owner': 'Ada'})
    assert account.status_code == 201
    account_id = account.get_json()['id']
    if decimal.Decimal(balance) > 0:
        assert call('/accounts/deposit', {'account_id': account_id, 'amount': balance}).status_code == 200
    return account_id


def test_accounts_open(call):
    response = call('/accounts/open', {'owner': 'Ada'})
    assert response.status_code == 201
    body = response.get_json()
    assert body['owner'] == 'Ada' and body['balance'] == '0.00' and body['id'] > 0


def test_accounts_deposit_withdraw_get(call):
    account = open_account(call)
    assert call('/accounts/deposit', {'account_id': account, 'amount': '10.50'}).get_json()['balance'] == '10.50'
    assert call('/accounts/withdraw', {'account_id': account, 'amount': 0.5}).get_json()['balance'] == '10.00'
    assert call('/accounts/get', {'account_id': account}).get_json()['balance'] == '10.00'


def test_accounts_overdraft_is_422(call):
    account = open_account(call, '5')
    response = call('/accounts/withdraw', {'account_id': account, 'amount': '5.01'})
    assert response.status_code == 422
    assert response.get_json()['constraint'] == 'balance_not_negative'
    assert call('/accounts/get', {'account_id': account}).get_json()['balance'] == '5.00'


def test_accounts_unknown_account_is_404(call):
    assert call('/accounts/get', {'account_id': 10**12}).status_code == 404
    assert call('/accounts/deposit', {'account_id': 10**12, 'amount': '1'}).status_code == 404


@pytest.mark.parametrize('body', [{'account_id': 0}, {'account_id': -1}, {'account_id': '1'}, {'account_id': 1.5},
                                  {'account_id': 9223372036854775808}])
def test_accounts_ids_are_positive_json_integers_within_bigint(call, body):
    assert assert_problem(call('/accounts/get', body), 422)['errors'].keys() == {'account_id'}


@pytest.mark.parametrize('amount', ['0', '-1', '1.001', 'abc', 'NaN', 'Infinity', 0, -3, 1.234, True, None, '1e-3'])
def test_accounts_amount_must_be_positive_with_at_most_two_places(call, amount):
    account = open_account(call)
    assert call('/accounts/deposit', {'account_id': account, 'amount': amount}).status_code == 422


def test_accounts_amount_too_large_for_the_column_is_422(call):
    account = open_account(call)
    assert call('/accounts/deposit', {'account_id': account, 'amount': '1000000000000.00'}).status_code == 422


# Strings Decimal() reads but a money API must not: only ASCII digits with an optional fraction are an amount.
UNPLAIN_AMOUNTS = ['1_000', '\u0661\u0662', '\uff11', ' 1.00', '1.00 ', '1\n', '+1', '1e2', '1.', '.5', '1,00', '',
                   pytest.param('1.' + '0' * 16384, id='more-zeros-after-the-point-than-numeric-holds'),
                   pytest.param('0' * 131073, id='more-digits-before-the-point-than-numeric-holds')]
UNPLAIN_MESSAGE = 'Not a valid number: use digits with at most 2 decimal places, such as "12.50".'
# A plain amount, as a string or a JSON number, and the balance it makes in an empty account.
PLAIN_AMOUNTS = [('12.50', '12.50'), ('0.01', '0.01'), (12, '12.00'), (12.5, '12.50'), ('100', '100.00'),
                 ('007.5', '7.50'), ('12.500', '12.50'), ('1.000000', '1.00'), ('0.010', '0.01')]


def moving(path, amount, source, target):
    """Return the body of path (deposit, withdraw or transfer) moving amount out of source or into it."""
    accounts = {'from_id': source, 'to_id': target} if path.endswith('transfer') else {'account_id': source}
    return {**accounts, 'amount': amount}


def balance(call, account_id):
    """Return the balance of one account."""
    return call('/accounts/get', {'account_id': account_id}).get_json()['balance']


@pytest.mark.parametrize('path', ['/accounts/deposit', '/accounts/withdraw', '/accounts/transfer'])
@pytest.mark.parametrize('amount', UNPLAIN_AMOUNTS)
def test_accounts_amount_string_is_ascii_digits_with_an_optional_fraction(call, path, amount):
    source, target = open_account(call, '2000'), open_account(call)
    problem = assert_problem(call(path, moving(path, amount, source, target)), 422)
    assert problem['errors'] == {'amount': [UNPLAIN_MESSAGE]}
    assert (balance(call, source), balance(call, target)) == ('2000.00', '0.00')


@pytest.mark.parametrize('amount, message', [('-1', 'Must be a positive amount.'), (-1, 'Must be a positive amount.'),
                                             ('-1.001', 'Must be a positive amount.'),
                                             ('1.001', 'Must have at most 2 decimal places.')])
def test_accounts_amount_sign_and_places_keep_their_messages(call, amount, message):
    account = open_account(call)
    problem = assert_problem(call('/accounts/deposit', {'account_id': account, 'amount': amount}), 422)
    assert problem['errors'] == {'amount': [message]}


@pytest.mark.parametrize('amount, stored', [(b'1.000', '1.00'), (b'12.500', '12.50'), (b'1.50e0', '1.50'),
                                            (b'1.001', None), (b'1.0010', None)])
def test_accounts_amount_as_a_json_number_counts_the_places_it_needs(call, amount, stored):
    """Trailing zeros are no places an amount needs, as a JSON number too (an exact number: 1.000, not 1.0)."""
    account = open_account(call)
    body = b'{"account_id": %d, "amount": %s}' % (account, amount)
    response = call.client.post('/accounts/deposit', data=body, content_type='application/json',
                                headers={'Authorization': f'Bearer {call.token}'})
    if stored is None:
        assert assert_problem(response, 422)['errors'] == {'amount': ['Must have at most 2 decimal places.']}
    else:
        assert response.status_code == 200 and response.get_json()['balance'] == stored


@pytest.mark.parametrize('amount, stored', PLAIN_AMOUNTS)
def test_accounts_plain_amounts_move_exactly(call, amount, stored):
    source, target = open_account(call), open_account(call)
    assert call('/accounts/deposit', {'account_id': source, 'amount': amount}).get_json()['balance'] == stored
    call('/accounts/transfer', {'from_id': source, 'to_id': target, 'amount': amount})
    assert (balance(call, source), balance(call, target)) == ('0.00', stored)
    call('/accounts/withdraw', {'account_id': target, 'amount': amount})
    assert balance(call, target) == '0.00'


def test_accounts_transfer_moves_money_and_returns_both(call):
    source, target = open_account(call, '20'), open_account(call)
    body = call('/accounts/transfer', {'from_id': source, 'to_id': target, 'amount': '7.25'}).get_json()
    assert body['from'] == {'id': source, 'owner': 'Ada', 'balance': '12.75'}
    assert body['to'] == {'id': target, 'owner': 'Ada', 'balance': '7.25'}


def test_accounts_transfer_overdraft_is_422_and_moves_nothing(call):
    source, target = open_account(call, '1'), open_account(call)
    assert call('/accounts/transfer', {'from_id': source, 'to_id': target, 'amount': '2'}).status_code == 422
    assert call('/accounts/get', {'account_id': target}).get_json()['balance'] == '0.00'


def test_accounts_transfer_unknown_account_is_404(call):
    source = open_account(call, '1')
    assert call('/accounts/transfer', {'from_id': source, 'to_id': 10**12, 'amount': '1'}).status_code == 404
    assert call('/accounts/transfer', {'from_id': 10**12, 'to_id': source, 'amount': '1'}).status_code == 404
    assert call('/accounts/get', {'account_id': source}).get_json()['balance'] == '1.00'


def test_accounts_transfer_to_itself_is_422(call):
    account = open_account(call, '1')
    assert call('/accounts/transfer', {'from_id': account, 'to_id': account, 'amount': '1'}).status_code == 422


def test_accounts_concurrent_transfers_conserve_money(make_app, database_url):
    app = make_app(DB_POOL_MAX=8)
    call = Caller(app.test_client())
    accounts = [open_account(call, '100') for _ in range(4)]
    pairs = [(a, b) for a, b in itertools.permutations(accounts, 2)] * 10

    def transfer(pair):
        body = {'from_id': pair[0], 'to_id': pair[1], 'amount': '7.50'}
        return Caller(app.test_client())('/accounts/transfer', body).status_code
    with ThreadPoolExecutor(8) as pool:
        statuses = list(pool.map(transfer, pairs))
    assert set(statuses) <= {200, 422} and statuses.count(200) > len(pairs) // 2
    total = run_sql(database_url, 'SELECT sum(balance), min(balance) FROM accounts WHERE id = ANY(%s)', (accounts,))[0]
    assert total[0] == decimal.Decimal('400.00') and total[1] >= 0


def test_users_export_writes_each_user_as_users_get_does(call, database_url):
    ids = [call('/users/create', {'email': f'tricky-{uuid.uuid4().hex}@example.com', 'name': name}).get_json()['id']
           for name in TRICKY_TEXTS if name]
    run_sql(database_url, "UPDATE users SET created_at = '2026-11-21 20:54:17+00', "
                          "updated_at = '2026-11-21 20:54:17.12+00' WHERE id = ANY(%s)", (ids[:3],))
    response = call('/users/export', buffered=False)
    exported = response.get_data()
    response.close()
    users = json.loads(exported)
    assert [user['id'] for user in users] == sorted(user['id'] for user in users)
    for user_id in ids:
        assert call('/users/get', {'id': user_id}).get_data() in exported
