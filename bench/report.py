"""The results table of `make bench`, as Markdown for the terminal and bench/results/<date>.md."""
from statistics import median

from .mixed import percentile
from .scenarios import CAPACITY_CONNECTIONS, COLD_START, EXPORT, HEALTH_P99_GOAL_MS, JSON_EXPORT_GOAL, KEPT_GOAL
from .scenarios import PEER, PEER_GOAL, REFUSAL_P99_GOAL_MS

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


def load_row(comparison, reference=None, title=None, goal=None):
    """Return the table row of a scenario measured with wrk, against reference (by default the first), under title
    and goal (by default the scenario's)."""
    gateway, first_reference = comparison.sides()
    reference = reference or first_reference
    side_cells = []
    for side in (gateway, reference):
        side_cells += [f'{comparison.mean(side):,.0f} req/s', f'{comparison.mean(side, "p50_ms"):.1f}',
                       f'{comparison.mean(side, "p99_ms"):.1f}']
    scenario = comparison.scenario
    goal = scenario.goal if goal is None else goal
    return (f'| {scenario.number} | {title or scenario.title} | {" | ".join(side_cells[:3])} | {reference} | '
            f'{" | ".join(side_cells[3:])} | {ratio_cell(comparison, reference)} | '
            f'{ratio_goal(comparison.ratio(reference), goal)} |')


def load_rows(comparison):
    """Return the rows of a wrk scenario: against its first reference, and against the peer when it ran too."""
    rows = [load_row(comparison)]
    if PEER in comparison.runs:
        rows.append(load_row(comparison, PEER, f'{comparison.scenario.title}, against the peer', PEER_GOAL))
    return rows


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
    """Return the lines of the worker CPU per request of the scenarios that measured it, against each reference."""
    lines = ['| # | scenario | gateway CPU us/request | compared with | its CPU us/request | gateway/it |',
             '|---|---|--:|--:|--:|--:|']
    for comparison in comparisons:
        gateway, *references = comparison.runs
        if getattr(comparison.runs[gateway][0], 'worker_cpu_us', None) is None:
            continue
        ours = comparison.mean(gateway, 'worker_cpu_us')
        for reference in references:
            theirs = comparison.mean(reference, 'worker_cpu_us')
            lines.append(f'| {comparison.scenario.number} | {comparison.scenario.title} | {ours:.0f} | {reference} | '
                         f'{theirs:.0f} | {ours / theirs:.2f} |')
    return lines


def pooled(results, values):
    """Return the values(result) of every round, in one list."""
    return [value for result in results for value in values(result)]


def kept_summary(results):
    """Return the cell of the share of users/get's rate a side kept under the slow load (median of the rounds, and
    their range), and whether it met the goal."""
    kept = [result.kept for result in results]
    return f'{median(kept):.2f} ({min(kept):.2f}-{max(kept):.2f})', median(kept) >= KEPT_GOAL


def health_summary(results):
    """Return the cell of what a side's /healthz probes saw (p99 and max of the answered ones, failures), and
    whether it met the goal."""
    probes = pooled(results, lambda result: result.probes)
    answered = [probe.ms for probe in probes if probe.status == 200]
    failed = len(probes) - len(answered)
    if not answered:
        return f'none of {len(probes)} answered', False
    p99 = percentile(answered, 99)
    return (f'p99 {p99:.1f} ms, max {max(answered):.1f} ms, {failed} of {len(probes)} failed',
            failed == 0 and p99 < HEALTH_P99_GOAL_MS)


def slow_summary(results):
    """Return the cell of what a side's slow callers got (each status counted, how fast the refusals came, how many
    slow calls ran at once on average), and whether the refusals came at once."""
    calls = pooled(results, lambda result: result.slow_calls)
    statuses = {}
    for call in calls:
        statuses[call.status or 'no answer'] = statuses.get(call.status or 'no answer', 0) + 1
    counted = ', '.join(f'{count} x {status}' for status, count in sorted(statuses.items(), key=str))
    held = sum(result.slow_held for result in results) / len(results)
    refusals = [call.ms for call in pooled(results, lambda result: result.refusals())]
    if not refusals:
        return f'{counted}, no refusal; {held:.1f} held on average', False
    p99 = percentile(refusals, 99)
    return (f'{counted}; refusals p99 {p99:.1f} ms, max {max(refusals):.1f} ms; {held:.1f} held on average',
            p99 < REFUSAL_P99_GOAL_MS)


MIXED_ROWS = (
    ('users/get with the slow callers / without them (same side)', kept_summary, f'>= {KEPT_GOAL:.2f}'),
    ('/healthz during it', health_summary, f'p99 < {HEALTH_P99_GOAL_MS} ms, none failed'),
    ('slow callers: their answers; past their limit, 429/503 at once', slow_summary,
     f'refusals p99 < {REFUSAL_P99_GOAL_MS} ms'),
)


def mixed_rows(comparison):
    """Return the rows of scenario 8: users/get against the peer, then the gateway's goals beside the peer's
    numbers: the share of its rate kept, /healthz, the slow callers' answers."""
    gateway, peer = comparison.sides()
    rows = [load_row(comparison)]
    for title, summary, goal in MIXED_ROWS:
        (ours, met), (theirs, _) = summary(comparison.runs[gateway]), summary(comparison.runs[peer])
        rows.append(f'| {comparison.scenario.number} | {title} | {ours} | - | - | {peer} | {theirs} | - | - | - | '
                    f'{goal}: {verdict(met)} |')
    return rows


def render(context, comparisons, export, cold_seconds, checks, mixed=None):
    """Return the whole report as Markdown."""
    rows = [row for comparison in comparisons for row in load_rows(comparison)]
    rows += export_rows(export) if export else []
    rows += [cold_start_row(cold_seconds)] if cold_seconds else []
    rows += mixed_rows(mixed) if mixed else []
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
