"""CONTRACT section 6: /healthz and /readyz."""
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.helpers import assert_problem


def test_healthz_get(client):
    response = client.get('/healthz')
    assert response.status_code == 200
    assert response.get_json() == {'status': 'ok'}


def test_healthz_head(client):
    response = client.head('/healthz')
    assert response.status_code == 200
    assert response.get_data() == b''


@pytest.mark.parametrize('path', ['/readyz', '/metrics'])
def test_readyz_and_metrics_answer_head(client, path):
    response = client.head(path)
    assert response.status_code == 200 and response.get_data() == b''


def test_healthz_needs_no_database(make_app):
    client = make_app(DATABASES={'default': 'host=127.0.0.1 port=1 dbname=x user=x'}).test_client()
    assert client.get('/healthz').status_code == 200


def test_readyz_is_200_when_the_database_answers(client):
    response = client.get('/readyz')
    assert response.status_code == 200
    assert response.get_json() == {'status': 'ready'}


def test_readyz_is_503_problem_naming_nothing_when_a_database_is_down(make_app, database_url):
    dead = 'host=127.0.0.1 port=1 dbname=secretdb user=secretuser'
    client = make_app(DATABASES={'default': database_url, 'reports': dead}).test_client()
    response = client.get('/readyz')
    assert response.status_code == 503
    assert response.mimetype == 'application/problem+json'
    text = response.get_data(as_text=True)
    for name in ('127.0.0.1', 'secretdb', 'secretuser', 'reports', 'port'):
        assert name not in text


@pytest.mark.parametrize('path', ['/healthz', '/readyz'])
def test_ops_endpoints_need_no_token(client, path):
    assert client.get(path).status_code == 200


def test_ops_endpoints_refuse_post(client):
    assert client.post('/healthz').status_code == 405


@pytest.mark.parametrize('path', ['/healthz', '/readyz', '/metrics'])
@pytest.mark.parametrize('method', ['OPTIONS', 'POST', 'PUT', 'DELETE'])
def test_an_operations_endpoint_answers_other_methods_with_a_405_problem(client, path, method):
    response = client.open(path, method=method)
    assert_problem(response, 405)
    assert response.headers['Allow'] == 'GET, HEAD'  # as the contract writes it, whatever the process's hash seed


def database_up_samples(client):
    """Return {database: value} of dbapi_database_up in a scrape of client's app."""
    families = text_string_to_metric_families(client.get('/metrics').get_data(as_text=True))
    return {sample.labels['database']: sample.value for family in families if family.name == 'dbapi_database_up'
            for sample in family.samples}


def test_a_scrape_says_whether_each_database_answers_now(make_app, database_url):
    """Only requests' connection attempts showed an outage: in quiet hours, with /readyz answering 503 to its probes
    alone, no alert could fire (trial BV)."""
    dead = 'host=127.0.0.1 port=1 dbname=x user=x'
    client = make_app(DATABASES={'default': database_url, 'reports': dead}).test_client()
    assert database_up_samples(client) == {'default': 1.0, 'reports': 0.0}
    assert database_up_samples(make_app().test_client()) == {'default': 1.0}
