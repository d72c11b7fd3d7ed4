"""Watch numbers while a measurement runs: a worker's RSS, PostgreSQL's client connections."""
import threading
from contextlib import closing

import psycopg2


class PeakSampler:
    """Call read() every interval seconds while the block runs; keep each key's first and highest value."""

    def __init__(self, read, interval=0.02):
        self.read = read
        self.interval = interval
        self.first = {}
        self.peak = {}
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)

    def __enter__(self):
        self.sample()
        self.thread.start()
        return self

    def __exit__(self, *exc_info):
        self.stopped.set()
        self.thread.join()
        self.sample()

    def loop(self):
        """Sample until the block ends."""
        while not self.stopped.wait(self.interval):
            self.sample()

    def sample(self):
        """Read the values once and fold them into first and peak."""
        for key, value in self.read().items():
            self.first.setdefault(key, value)
            self.peak[key] = max(value, self.peak.get(key, value))

    def highest(self):
        """Return the highest value of any key."""
        return max(self.peak.values(), default=0)

    def most_grown(self):
        """Return (peak, growth) of the key that grew the most since the first sample."""
        key = max(self.peak, key=lambda name: self.peak[name] - self.first[name])
        return self.peak[key], self.peak[key] - self.first[key]


def rss_reader(processes):
    """Return a read() for PeakSampler: the resident set size of each process, by pid."""
    return lambda: {process.pid: process.memory_info().rss for process in processes}


def connection_reader(dsn, application_prefix):
    """Return a read() for PeakSampler and its connection: how many backends serve application_prefix%."""
    conn = psycopg2.connect(dsn, application_name='bench-sampler')
    conn.autocommit = True

    def read():
        with conn.cursor() as cursor:
            cursor.execute('SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s',
                           (application_prefix + '%',))
            return {'connections': cursor.fetchone()[0]}
    return read, closing(conn)


def max_connections(dsn):
    """Return the server's max_connections."""
    with closing(psycopg2.connect(dsn)) as conn, conn.cursor() as cursor:
        cursor.execute('SHOW max_connections')
        return int(cursor.fetchone()[0])
