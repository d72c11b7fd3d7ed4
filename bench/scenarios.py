"""The scenarios of issues 5 and 11, and how sides are compared: A B A B, then the median of the rounds' ratios."""
from dataclasses import dataclass, replace
from statistics import mean, median

from .load import Load, run_wrk
from .sampling import PeakSampler, connection_reader
from .servers import BENCH_APP_ID, LOG_DIR

# What a server's log holds when it ran short of something (nginx: "[alert] ... worker_connections are not enough").
PROBLEM_MARKS = ('[alert]', '[crit]', '[emerg]', '[error]', 'CRITICAL', 'Traceback')

CAPACITY_CONNECTIONS = 256


@dataclass(frozen=True)
class Scenario:
    """One line of the results table; goal is the least gateway/reference ratio the issue asks for."""

    number: int
    title: str
    load: Load | None = None
    goal: float | None = None


LOAD_SCENARIOS = (
    Scenario(1, 'users/get by primary key (headline)', Load('/users/get', 'get'), 1.0),
    Scenario(2, 'users/create (a write that commits)', Load('/users/create', 'create'), 0.9),
    Scenario(3, 'accounts/transfer (row locks)', Load('/accounts/transfer', 'transfer'), 0.9),
    Scenario(4, 'users/list, 100 rows', Load('/users/list', 'list')),
)
# One wrk thread per replica when they are called directly; nginx gets the same threads and connections.
PROXIED = Scenario(5, 'users/get through nginx, 3 replicas', Load('/users/get', 'get', connections=15, threads=3), 0.9)
EXPORT = Scenario(6, 'users/export, 1,000,000 rows (rows/s)', goal=0.5)
# The export against PostgreSQL writing the same JSON itself (issue 12): at least its rate.
JSON_EXPORT_GOAL = 1.0
COLD_START = Scenario(7, 'cold start: `make run` to first 200')
# Issue 11: users/get while slow callers hold half of the connection budget (bench/mixed.py), against the peer.
MIXED = Scenario(8, 'mixed: users/get while slow callers hold half the connections', LOAD_SCENARIOS[0].load, 1.0)
ALL_NUMBERS = (1, 2, 3, 4, 5, 6, 7, 8)
# The peer (bench/peer_fastapi.py) measured beside the headline and in "mixed"; issue 11: dbapi at or above it.
PEER = 'FastAPI peer'
PEER_GOAL = 1.0
# What "mixed" asks of the gateway: users/get keeps this share of its rate alone, /healthz and the refusals of the
# slow callers past their limit are answered within these milliseconds (p99).
KEPT_GOAL = 0.8
HEALTH_P99_GOAL_MS = 50
REFUSAL_P99_GOAL_MS = 50


@dataclass
class Comparison:
    """Every run of one scenario on each side, by side name; the gateway's side is named first, then the references
    (the first of them is the one a ratio is taken against unless another is named)."""

    scenario: Scenario
    runs: dict

    def sides(self):
        """Return the names of the gateway's side and the first reference side."""
        return tuple(self.runs)[:2]

    def mean(self, side, attribute='rate'):
        """Return the mean of one number over a side's runs."""
        return mean(getattr(result, attribute) for result in self.runs[side])

    def round_ratios(self, reference=None):
        """Return gateway/reference of each round, whose runs were next to each other in time."""
        gateway, first_reference = self.sides()
        theirs = self.runs[reference or first_reference]
        return [ours.rate / their.rate for ours, their in zip(self.runs[gateway], theirs)]

    def ratio(self, reference=None):
        """Return the median of the rounds' ratios: the machine's drifting load cancels out better so."""
        return median(self.round_ratios(reference))


def alternate(scenario, sides, rounds, record):
    """Measure each side in turn, rounds times (A B A B, or A B C A B C); sides maps a name to a function that
    measures it."""
    runs = {name: [] for name in sides}
    for round_number in range(1, rounds + 1):
        for name, measure in sides.items():
            result = measure()
            runs[name].append(result)
            record(scenario, name, round_number, result)
    return Comparison(scenario, runs)


@dataclass(frozen=True)
class CapacityResult:
    """A run at CAPACITY_CONNECTIONS: its numbers, the most PostgreSQL connections seen, and the budget."""

    target: str
    result: object
    peak_connections: int
    budget: int
    max_connections: int
    log_problems: tuple = ()

    def passed(self):
        """Tell whether it met the goal: no 5xx, no refused connection, connections within the budget."""
        return (self.result.server_errors == 0 and self.result.connect_errors == 0
                and self.peak_connections <= min(self.budget, self.max_connections))


def new_problems(log_name, offset):
    """Return the lines past offset in LOG_DIR/<log_name>.log that tell of a problem."""
    with open(LOG_DIR / f'{log_name}.log', 'rb') as log:
        log.seek(offset)
        lines = log.read().decode(errors='replace').splitlines()
    return tuple(line for line in lines if any(mark in line for mark in PROBLEM_MARKS))


def check_capacity(target, url, seconds, dsn, budget, max_connections, log_name):
    """Run the headline at CAPACITY_CONNECTIONS: count 5xx, the gateway's PostgreSQL connections, log problems."""
    load = replace(LOAD_SCENARIOS[0].load, connections=CAPACITY_CONNECTIONS, count_status=True)
    read, conn = connection_reader(dsn, f'{BENCH_APP_ID}:')
    offset = (LOG_DIR / f'{log_name}.log').stat().st_size
    with conn, PeakSampler(read, interval=0.1) as connections:
        result = run_wrk(url, load, seconds)
    return CapacityResult(target, result, connections.highest(), budget, max_connections,
                          new_problems(log_name, offset))
