"""`make bench` keeps every run's results: a second run on the same day writes beside the first, never over it; its
servers get the environment they run with."""
from bench.results_files import write
from bench.servers import server_environment


def test_a_second_run_on_the_same_day_keeps_the_first_ones_results(tmp_path):
    first = write(tmp_path, '2026-11-29', '# full run\n', [{'round': 1}])
    second = write(tmp_path, '2026-11-29', '# short run\n', [{'round': 2}])
    assert (first.name, second.name) == ('2026-11-29.md', '2026-11-29-2.md')
    assert first.read_text() == '# full run\n' and second.read_text() == '# short run\n'
    assert first.with_suffix('.raw').read_text() == '{"round": 1}\n'
    assert second.with_suffix('.raw').read_text() == '{"round": 2}\n'


def test_a_bench_server_gets_a_replicas_environment_with_the_benchs_settings(tmp_path):
    """make stack's replica_environment took the workers as well (session 26), and `make bench` stopped at its first
    server with a TypeError, unseen until it was run (session 27)."""
    env = server_environment('bench-gateway', 18999, 'host=/tmp dbname=bench', tmp_path, 4, 2)
    assert (env['BIND'], env['WEB_CONCURRENCY'], env['DB_POOL_MAX']) == ('127.0.0.1:18999', '4', '2')
    assert (env['ENVIRONMENT'], env['DATABASE_URL']) == ('production', 'host=/tmp dbname=bench')
    assert env['TRUSTED_PROXY_HOPS'] == '0'  # the bench calls it directly
