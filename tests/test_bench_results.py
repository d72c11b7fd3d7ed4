"""`make bench` keeps every run's results: a second run on the same day writes beside the first, never over it."""
from bench.results_files import write


def test_a_second_run_on_the_same_day_keeps_the_first_ones_results(tmp_path):
    first = write(tmp_path, '2026-11-29', '# full run\n', [{'round': 1}])
    second = write(tmp_path, '2026-11-29', '# short run\n', [{'round': 2}])
    assert (first.name, second.name) == ('2026-11-29.md', '2026-11-29-2.md')
    assert first.read_text() == '# full run\n' and second.read_text() == '# short run\n'
    assert first.with_suffix('.raw').read_text() == '{"round": 1}\n'
    assert second.with_suffix('.raw').read_text() == '{"round": 2}\n'
