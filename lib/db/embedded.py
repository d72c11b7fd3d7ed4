"""The embedded PostgreSQL (pgserver, from PyPI) used by local and test when no database is configured."""
import atexit
import logging
import os
import signal
import threading
import time
import warnings

import psycopg2
from psycopg2 import sql
from psycopg2.extensions import make_dsn

from lib.errors import StartupError, shown_on_one_line
from lib.process import write_line

# How long a start cut short waits for the server it started to end (stop_postmaster).
STOP_SECONDS = 15
# How long the stop of the server at exit may take before a line says what the process waits for.
SLOW_STOP_SECONDS = 3


def start_embedded(data_dir, database='dbapi', stop_at_exit=True, stopping=lambda: False):
    """Start (or join) the embedded server under data_dir and return the DSN of database in it. With stop_at_exit, a
    start cut short (a stop signal that killed pg_ctl, or raised here) stops the server it started: pgserver counts
    this process among the server's users, and stops the server at exit, only once the server answers. stopping():
    whether the process was asked to stop, which drops pgserver's report of a failed command (initdb's output,
    kilobytes of it, at level error): a terminal's Ctrl-C or hangup reaches the whole group and kills initdb or
    pg_ctl, and the command's one line says it stopped."""
    started_here = not (data_dir / 'postmaster.pid').exists()
    pgserver_log = logging.getLogger('pgserver')

    def unless_stopping(_record):
        """Keep a record of pgserver's unless a stop was asked (a logging filter)."""
        return not stopping()
    pgserver_log.addFilter(unless_stopping)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')  # platformdirs warns when XDG_RUNTIME_DIR is unset
            import pgserver
            data_dir.parent.mkdir(parents=True, exist_ok=True)
            server = pgserver.get_server(data_dir, cleanup_mode='stop' if stop_at_exit else None)
    except BaseException as exc:
        if stop_at_exit and started_here:
            stop_postmaster(data_dir)
        if isinstance(exc, Exception):  # initdb or pg_ctl failed, or died of a signal sent to the whole group
            raise StartupError(f'the embedded PostgreSQL in {data_dir} did not start: '
                               f'{shown_on_one_line(str(exc))}') from None
        raise
    finally:
        pgserver_log.removeFilter(unless_stopping)
    if stop_at_exit:
        atexit.register(say_when_the_stop_is_slow, data_dir)  # runs before pgserver's stop, registered before it
    return ensure_database(server.get_uri(), database)


def say_when_the_stop_is_slow(data_dir, seconds=SLOW_STOP_SECONDS):
    """At exit, have a thread say on stderr, once seconds have passed, that the process waits for the server of
    data_dir to stop: pgserver's pg_ctl waits up to 60 s for one that does not answer (a stopped or hung postmaster),
    then kills it, and nothing said why a Ctrl-C took a minute (trial BP). A stop that ends sooner (or none, the server
    having other users) ends the process, and the thread with it, unsaid."""
    def say_unless_stopped():
        time.sleep(seconds)
        if (data_dir / 'postmaster.pid').exists():
            write_line(f'dbapi: waiting for the embedded PostgreSQL in {data_dir} to stop: it has not answered for '
                       f'{seconds} s; pg_ctl waits up to 60 s for it, then it is killed')
    threading.Thread(target=say_unless_stopped, name='dbapi-slow-stop', daemon=True).start()


def stop_postmaster(data_dir, seconds=STOP_SECONDS):
    """Ask the server of data_dir, if one runs, for a fast shutdown (SIGINT to the postmaster that postmaster.pid
    names, PostgreSQL's documented signal) and wait for it to end, seconds at most."""
    try:
        pid = int((data_dir / 'postmaster.pid').read_text().split()[0])
        os.kill(pid, signal.SIGINT)
    except (OSError, ValueError, IndexError):  # none runs, or it has just gone
        return
    deadline = time.monotonic() + seconds
    while (data_dir / 'postmaster.pid').exists() and time.monotonic() < deadline:
        time.sleep(0.05)


def ensure_database(server_dsn, database):
    """Create database on the server when it is missing; return its DSN. A connection or statement the server refuses
    (PGOPTIONS naming an unknown setting, say: libpq sends the environment's) is a StartupError of one line."""
    try:
        conn = psycopg2.connect(server_dsn)
        try:
            conn.autocommit = True
            with conn.cursor() as cursor:
                cursor.execute('SELECT 1 FROM pg_database WHERE datname = %s', (database,))
                if cursor.fetchone() is None:
                    cursor.execute(sql.SQL('CREATE DATABASE {}').format(sql.Identifier(database)))
        finally:
            conn.close()
    except psycopg2.Error as exc:
        message = ' '.join(str(exc).split())  # PostgreSQL's: "FATAL:  unrecognized ...\n"
        raise StartupError(f'the embedded PostgreSQL refused database {database!r}: {message}') from None
    return make_dsn(server_dsn, dbname=database)

