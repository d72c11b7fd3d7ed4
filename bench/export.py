"""Scenario 6: users/export of every seeded user through the gateway, against psql's COPY of the same rows, and
against PostgreSQL writing the same rows as JSON itself (COPY of row_to_json)."""
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
# The export's rows as PostgreSQL writes them in JSON, one object a line: exact by construction, and the rate
# that the gateway's export, which writes the same JSON, should at least reach.
ROW_TO_JSON = f'SELECT row_to_json(q) FROM ({users_sql.ALL_USERS}) AS q'
JSON_REFERENCE = 'psql COPY of row_to_json'


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


def copy_through_psql(dsn, query=users_sql.ALL_USERS):
    """Run psql's COPY (<query>, by default the export's) TO STDOUT and count its lines; return the ExportResult."""
    command = [str(PSQL), '-X', '-q', '-d', dsn, '-c', f'COPY ({query}) TO STDOUT']
    started = time.perf_counter()
    with subprocess.Popen(command, stdout=subprocess.PIPE) as psql:
        rows = count_marks(psql.stdout.read, b'\n')
    if psql.returncode:
        raise RuntimeError(f'psql COPY failed with code {psql.returncode}')
    return ExportResult(rows, time.perf_counter() - started)


def json_through_psql(dsn):
    """Run psql's COPY of the export's rows as row_to_json writes them; return the ExportResult."""
    return copy_through_psql(dsn, ROW_TO_JSON)
