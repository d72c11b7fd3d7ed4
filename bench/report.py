"""The results table of `make bench`, as Markdown for the terminal and bench/results/<date>.md."""
import json
from statistics import median

from .scenarios import CAPACITY_CONNECTIONS, COLD_START, EXPORT, JSON_EXPORT_GOAL

COLD_START_GOAL_SECONDS = 3.0
EXPORT_RSS_GOAL_MB = 64
HEADER = ('| # | scenario | gateway | p50 ms | p99 ms | compared with | its rate | p50 ms | p99 ms '
          '| gateway/it (rounds) | goal |')
RULE = '|---|---|--:|--:|--:|---|--:|--:|--:|--:|---|'


def verdict(met):
    """Say whether a goal was met."""
    return 'met' if met else '**not met**'


def ratio_goal(ratio, goal):
    """Return the goal cell of a ratio: the goal and whether it was met."""
    return '-' if goal is None else f'>= {goal:.2f}: {verdict(ratio >= goal)}'


def ratio_cell(comparison, reference=None):
    """Return the ratio to reference (by default the first) and the range of the rounds' ratios."""
    ratios = comparison.round_ratios(reference)
    return f'{comparison.ratio(reference):.2f} ({min(ratios):.2f}-{max(ratios):.2f})'


def load_row(comparison):
    """Return the table row of a scenario measured with wrk."""
    gateway, reference = comparison.sides()
    side_cells = []
    for side in (gateway, reference):
        side_cells += [f'{comparison.mean(side):,.0f} req/s', f'{comparison.mean(side, "p50_ms"):.1f}',
                       f'{comparison.mean(side, "p99_ms"):.1f}']
    ratio = comparison.ratio()
    scenario = comparison.scenario
    return (f'| {scenario.number} | {scenario.title} | {" | ".join(side_cells[:3])} | {reference} | '
            f'{" | ".join(side_cells[3:])} | {ratio_cell(comparison)} | {ratio_goal(ratio, scenario.goal)} |')


def export_rows(comparison):
    """Return the table rows of the export: rows/s against each reference (psql's COPY, then PostgreSQL's own
    JSON when measured), and the worker's memory."""
    gateway = comparison.sides()[0]
    growth = max(result.rss_growth_mb for result in comparison.runs[gateway])
    peak = max(result.peak_rss_mb for result in comparison.runs[gateway])
    memory = (f'RSS growth +{growth:.0f} MB (peak {peak:.0f} MB) < {EXPORT_RSS_GOAL_MB} MB: '
              f'{verdict(growth < EXPORT_RSS_GOAL_MB)}')
    references = list(comparison.runs)[1:]
    rows = []
    for reference, goal in zip(references, (EXPORT.goal, JSON_EXPORT_GOAL)):
        ratio = comparison.ratio(reference)
        goal_cell = ratio_goal(ratio, goal) + ('; ' + memory if reference == references[-1] else '')
        rows.append(f'| {EXPORT.number} | {EXPORT.title} | {comparison.mean(gateway):,.0f} rows/s | - | - | '
                    f'{reference} | {comparison.mean(reference):,.0f} rows/s | - | - | '
                    f'{ratio_cell(comparison, reference)} | {goal_cell} |')
    return rows


def cold_start_row(seconds):
    """Return the table row of the cold start: the median of the runs, and each run."""
    runs = ', '.join(f'{value:.2f}' for value in seconds)
    middle = median(seconds)
    return (f'| {COLD_START.number} | {COLD_START.title} | {middle:.2f} s (runs: {runs}) | - | - | - | - | - | - | - '
            f'| < {COLD_START_GOAL_SECONDS:.0f} s: {verdict(middle < COLD_START_GOAL_SECONDS)} |')


def log_summary(problems):
    """Return how many problem lines a server logged, and the first one's message."""
    if not problems:
        return 'clean'
    first = problems[0].split(': ', 1)[-1].replace('|', '/')[:90]
    return f'{len(problems)} problem lines, e.g. "{first}"'


def capacity_table(checks):
    """Return the lines of the 256-connection checks."""
    lines = ['| target | req/s | p99 ms | 5xx | other non-2xx | refused | timeouts | peak PG connections | budget '
             '| server log | goal |', '|---|--:|--:|--:|--:|--:|--:|--:|--:|---|---|']
    for check in checks:
        run = check.result
        lines.append(f'| {check.target} | {run.rate:,.0f} | {run.p99_ms:.1f} | {run.server_errors} | '
                     f'{run.non_2xx - run.server_errors} | {run.connect_errors} | {run.timeouts} | '
                     f'{check.peak_connections} | {check.budget} (max_connections {check.max_connections}) | '
                     f'{log_summary(check.log_problems)} | {verdict(check.passed())} |')
    return lines


def cpu_table(comparisons):
    """Return the lines of the worker CPU per request of the scenarios that measured it."""
    lines = ['| # | scenario | gateway CPU us/request | baseline CPU us/request | gateway/baseline |',
             '|---|---|--:|--:|--:|']
    for comparison in comparisons:
        gateway, reference = comparison.sides()
        if comparison.runs[gateway][0].worker_cpu_us is None:
            continue
        ours, theirs = comparison.mean(gateway, 'worker_cpu_us'), comparison.mean(reference, 'worker_cpu_us')
        lines.append(f'| {comparison.scenario.number} | {comparison.scenario.title} | {ours:.0f} | {theirs:.0f} | '
                     f'{ours / theirs:.2f} |')
    return lines


def render(context, comparisons, export, cold_seconds, checks):
    """Return the whole report as Markdown."""
    rows = [load_row(comparison) for comparison in comparisons]
    rows += export_rows(export) if export else []
    rows += [cold_start_row(cold_seconds)] if cold_seconds else []
    lines = [f'# make bench, {context["started"]}', '', *context['notes'], '', HEADER, RULE, *rows]
    cpu = cpu_table(comparisons)
    if len(cpu) > 2:
        lines += ['', 'CPU time of the gunicorn workers per request (psutil, measured runs only); less disturbed by '
                  'the machine\'s other load than req/s, and lower is better:', '', *cpu]
    if checks:
        lines += ['', f'At {CAPACITY_CONNECTIONS} connections (users/get, wrk -t2 -c{CAPACITY_CONNECTIONS}, '
                  '5xx counted by the wrk script; PostgreSQL connections sampled from pg_stat_activity):', '',
                  *capacity_table(checks)]
    return '\n'.join(lines) + '\n'


def write(results_dir, day, markdown, raw_lines):
    """Write <day>.md and the raw runs as JSON lines to <day>.raw; return the .md path."""
    results_dir.mkdir(parents=True, exist_ok=True)
    path = results_dir / f'{day}.md'
    path.write_text(markdown)
    (results_dir / f'{day}.raw').write_text(''.join(json.dumps(line) + '\n' for line in raw_lines))
    return path
