"""Drive a target with wrk and bench/wrk/post.lua, and read the numbers its done() prints."""
import json
import os
import subprocess
import uuid
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from .data import ACCOUNTS, USERS
from .servers import BENCH_TOKEN

WRK_SCRIPT = Path(__file__).with_name('wrk') / 'post.lua'
RESULT_MARK = 'BENCH_JSON '


class LoadError(Exception):
    """wrk failed or printed no numbers."""


@dataclass(frozen=True)
class Load:
    """What wrk sends and how hard: the action's path, the body kind, connections and threads."""

    path: str
    body: str
    connections: int = 16
    threads: int = 2
    count_status: bool = False


@dataclass(frozen=True)
class LoadResult:
    """One wrk run's numbers."""

    requests: int
    seconds: float
    p50_ms: float
    p99_ms: float
    non_2xx: int
    server_errors: int
    connect_errors: int
    read_errors: int
    write_errors: int
    timeouts: int
    worker_cpu_us: float | None = None

    @property
    def rate(self):
        """Requests per second."""
        return self.requests / self.seconds

    @classmethod
    def from_wrk(cls, numbers):
        """Build from the JSON object post.lua's done() prints."""
        return cls(requests=numbers['requests'], seconds=numbers['duration_us'] / 1e6,
                   p50_ms=numbers['p50_us'] / 1000, p99_ms=numbers['p99_us'] / 1000, non_2xx=numbers['non_2xx'],
                   server_errors=numbers['server_errors'], connect_errors=numbers['connect_errors'],
                   read_errors=numbers['read_errors'], write_errors=numbers['write_errors'],
                   timeouts=numbers['timeouts'])

    def as_dict(self):
        """Return the numbers as a dict, with req/s, for the raw log."""
        return {**asdict(self), 'rps': round(self.rate, 1)}


def wrk_environment(load, targets):
    """Return the environment post.lua reads; targets pins each wrk thread to one host:port."""
    env = dict(os.environ, BENCH_PATH=load.path, BENCH_BODY=load.body, BENCH_TOKEN=BENCH_TOKEN,
               BENCH_USERS=str(USERS), BENCH_ACCOUNTS=str(ACCOUNTS), BENCH_RUN=uuid.uuid4().hex[:12],
               BENCH_TARGETS=' '.join(targets))
    if load.count_status:
        env['BENCH_COUNT_STATUS'] = '1'
    return env


def run_wrk(url, load, seconds, targets=()):
    """Run wrk against url for seconds and return its LoadResult."""
    argv = ['wrk', f'-t{load.threads}', f'-c{load.connections}', f'-d{seconds}s', '--timeout', '5s',
            '-s', str(WRK_SCRIPT), url]
    done = subprocess.run(argv, env=wrk_environment(load, targets), capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_MARK)]
    if done.returncode or not lines:
        raise LoadError(f'wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}')
    return LoadResult.from_wrk(json.loads(lines[-1][len(RESULT_MARK):]))


def cpu_seconds(processes):
    """Return the user and system CPU seconds that processes have used so far."""
    return sum(sum(process.cpu_times()[:2]) for process in processes)


def measure(url, load, seconds, warmup, targets=(), workers=()):
    """Warm the target up for warmup seconds (numbers thrown away), then measure it for seconds; with the
    target's worker processes, also their CPU microseconds per request, which a noisy machine disturbs less."""
    if warmup:
        run_wrk(url, load, warmup, targets)
    used_before = cpu_seconds(workers)
    result = run_wrk(url, load, seconds, targets)
    if not workers:
        return result
    return replace(result, worker_cpu_us=(cpu_seconds(workers) - used_before) / max(result.requests, 1) * 1e6)
