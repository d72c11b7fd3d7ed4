"""Scenario 6: users/export of every seeded user through the gateway, against psql's COPY of the same rows."""
import importlib.util
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from modules.users import sql as users_sql

from .client import count_marks, post
from .sampling import PeakSampler, rss_reader

# pgserver's own psql; found without importing pgserver, which warns when XDG_RUNTIME_DIR is unset.
PSQL = Path(importlib.util.find_spec('pgserver').submodule_search_locations[0]) / 'pginstall' / 'bin' / 'psql'
# orjson keeps a row's keys in order, so each exported row starts with this.
ROW_START = b'{"id":'
MB = 1 << 20


@dataclass(frozen=True)
class ExportResult:
    """Rows read, the seconds it took, and the serving worker's peak RSS and growth (MB; None for psql)."""

    rows: int
    seconds: float
    peak_rss_mb: float | None = None
    rss_growth_mb: float | None = None

    @property
    def rate(self):
        """Rows per second."""
        return self.rows / self.seconds

    def as_dict(self):
        """Return the numbers as a dict, with rows/s, for the raw log."""
        return {**asdict(self), 'rows_per_s': round(self.rate)}


def export_through_gateway(workers, port):
    """Stream users/export from the gateway on port, sampling its workers' RSS; return the ExportResult."""
    with PeakSampler(rss_reader(workers)) as rss:
        started = time.perf_counter()
        response = post(port, '/users/export', {}, timeout=300)
        if response.status != 200:
            raise RuntimeError(f'users/export answered {response.status}')
        rows = count_marks(response.read, ROW_START)
        seconds = time.perf_counter() - started
    peak, growth = rss.most_grown()
    return ExportResult(rows, seconds, peak / MB, growth / MB)


def copy_through_psql(dsn):
    """Run psql's COPY (<the export's query>) TO STDOUT and count its lines; return the ExportResult."""
    command = [str(PSQL), '-X', '-q', '-d', dsn, '-c', f'COPY ({users_sql.ALL_USERS}) TO STDOUT']
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE) as psql:
        rows = count_marks(psql.stdout.read, b'\n')
    if psql.returncode:
        raise RuntimeError(f'psql COPY failed with code {psql.returncode}')
    return ExportResult(rows, time.perf_counter() - started)
