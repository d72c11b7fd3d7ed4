"""Issue 11: one slow caller never stalls the others: worker timeouts."""
import pytest

import settings
from lib.errors import ImproperlyConfigured
from tests.helpers import post, running_gunicorn


# gunicorn's timeout (WORKER_TIMEOUT)


@pytest.mark.parametrize('statement_ms, expected', [(0, 0), (30000, 45), (1500, 17)])
def test_the_worker_timeout_outlasts_the_statement_timeout_and_is_off_without_one(monkeypatch, statement_ms, expected):
    monkeypatch.delenv('WORKER_TIMEOUT', raising=False)
    assert settings.worker_timeout(statement_ms) == expected


@pytest.mark.parametrize('statement_ms, worker_seconds, allowed', [
    (30000, '0', True), (30000, '31', True), (30000, '30', False), (0, '0', True), (0, '60', False)])
def test_a_worker_timeout_that_could_kill_a_running_statement_is_refused(monkeypatch, statement_ms, worker_seconds,
                                                                        allowed):
    monkeypatch.setenv('WORKER_TIMEOUT', worker_seconds)
    if allowed:
        assert settings.worker_timeout(statement_ms) == int(worker_seconds)
    else:
        with pytest.raises(ImproperlyConfigured, match='WORKER_TIMEOUT'):
            settings.worker_timeout(statement_ms)


@pytest.mark.slow
def test_with_no_statement_timeout_a_20_second_action_gets_its_answer(database_url):
    # gunicorn's timeout used to be derived from the statement timeout: 15 s for none, and the worker was killed.
    with running_gunicorn(database_url, DB_STATEMENT_TIMEOUT_MS='0', WORKER_TIMEOUT='') as port:
        reply = post(port, '/slow/sleep', {'seconds': 20})
    assert reply.status == 200, reply.body
    assert reply.json() == {'slept': 20}

