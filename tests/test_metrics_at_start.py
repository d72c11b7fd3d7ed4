"""The pool counters exist from a process's first scrape, at 0 for each configured database: rate() then sees
their first event (a counter that appears at 1 has no rate), and absent() stays quiet on a healthy replica."""
import os
import subprocess
import sys

import pytest
from prometheus_client.parser import text_string_to_metric_families

import settings
from lib.logs.metrics import POOL_EVENTS
from tests.helpers import gunicorn_logging_to, http_request, wait_for

POOL_COUNTERS = [f'dbapi_pool_{event}_total' for event in POOL_EVENTS]


def pool_samples(text):
    """Return {(sample name, database): value} of the pool counters in a scrape."""
    return {(sample.name, sample.labels.get('database')): sample.value
            for family in text_string_to_metric_families(text) for sample in family.samples
            if sample.name in POOL_COUNTERS}


def test_a_new_app_shows_every_pool_counter_of_every_database(make_app, database_url):
    app = make_app(DATABASES={'default': database_url, 'scraped_at_start': database_url})
    samples = pool_samples(app.test_client().get('/metrics', buffered=True).get_data(as_text=True))
    assert {name for name, database in samples if database == 'scraped_at_start'} == set(POOL_COUNTERS)
    assert samples['dbapi_pool_timeouts_total', 'scraped_at_start'] == 0
    assert samples['dbapi_pool_waits_total', 'scraped_at_start'] == 0


@pytest.mark.slow
def test_gunicorns_first_scrape_shows_every_pool_counter(tmp_path, database_url):
    """Under gunicorn each worker keeps its numbers in files (multiprocess mode): the zeros are in them too."""
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url,
                             PROMETHEUS_MULTIPROC_DIR=str(tmp_path / 'metrics')) as (port, _):
        samples = pool_samples(http_request(port, 'GET', '/metrics').body.decode())
    assert {name for name, database in samples if database == 'default'} == set(POOL_COUNTERS)
    assert samples['dbapi_pool_timeouts_total', 'default'] == 0


def test_an_empty_multiprocess_directory_means_unset(tmp_path, database_url):
    """As for every setting, an empty value is no value: prometheus_client must not write its files to the
    working directory (the preflight of `make run` once left counter_<pid>.db files in the project)."""
    script = ('import settings, app; client = app.create_app().test_client(); '
              'print(client.get("/metrics").status_code)')
    result = subprocess.run([sys.executable, '-c', script], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, 'PYTHONPATH': str(settings.BASE_DIR), 'ENVIRONMENT': 'test',
                                 'DATABASE_URL': database_url, 'PROMETHEUS_MULTIPROC_DIR': ''})
    assert result.stdout.split() == ['200'], result.stderr
    assert list(tmp_path.iterdir()) == []


def pool_gauge(text, name, database):
    """Return the value of one pool gauge of database in a scrape."""
    return next(sample.value for family in text_string_to_metric_families(text) for sample in family.samples
                if sample.name == name and sample.labels.get('database') == database)


@pytest.mark.slow
def test_every_workers_pool_gauges_count_from_its_start(tmp_path, database_url):
    """The pool gauges are sums over the live workers: one that has served nothing yet (just started, or started
    again after its predecessor stopped) counts too, before its first request."""
    metrics_dir = tmp_path / 'metrics'
    with gunicorn_logging_to(tmp_path, DATABASE_URL=database_url, WEB_CONCURRENCY='2', DB_POOL_MAX='3',
                             PROMETHEUS_MULTIPROC_DIR=str(metrics_dir)) as (port, _):
        wait_for(lambda: len(list(metrics_dir.glob('gauge_livesum_*.db'))) == 2, 15,
                 'a worker wrote no gauge before its first request')
        text = http_request(port, 'GET', '/metrics').body.decode()
    assert pool_gauge(text, 'dbapi_pool_max_connections', 'default') == 6
    assert pool_gauge(text, 'dbapi_pool_connections', 'default') == 0
