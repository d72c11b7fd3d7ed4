"""Apply migrations/*.sql once, in order, under an advisory lock so replicas starting together do not race; refuse
to start when an applied file has changed since (its SHA-256 is recorded, as Flyway records a checksum)."""
import contextlib
import functools
import hashlib
import logging
import re
import sys
import time
import warnings
from pathlib import Path

import psycopg2
import sqlparse
from yoyo import read_migrations
from yoyo.backends import get_backend_class
from yoyo.connections import DatabaseURI
from yoyo.exceptions import BadMigration, LockTimeout
from yoyo.topologicalsort import CycleError

from lib.errors import StartupError
from lib.logs.secrets import redacted


log = logging.getLogger('dbapi.migrate')
# The project's migrations/ folder, beside lib/.
PROJECT_DIR = Path(__file__).resolve().parents[2]
MIGRATIONS_DIR = PROJECT_DIR / 'migrations'
MIGRATION_LOCK_KEY = 0x64626170  # "dbap": one key for every dbapi replica of a database
LOCK_POLL_SECONDS = 0.2
MIGRATION_TABLE = '_yoyo_migration'
# The SHA-256 of each applied migration's file, as it was when applied (or first seen applied): yoyo knows a
# migration by its id alone, so an applied file edited later would go unnoticed, its change never run.
CHECKSUM_TABLE = '_dbapi_migration_checksum'
CREATE_CHECKSUM_TABLE = (f'CREATE TABLE IF NOT EXISTS {CHECKSUM_TABLE} (migration_id text PRIMARY KEY, '
                         'sha256 text NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())')




# What may come before a statement's own text: blanks, `--` comments and `/* */` comments (not nested).
LEADING_COMMENTS = re.compile(r'(?:\s+|--[^\n]*|/\*.*?\*/)*', re.DOTALL)


# SQLSTATE 55P03: a lock not obtained within lock_timeout (MIGRATION_LOCK_TIMEOUT_MS).
LOCK_NOT_AVAILABLE = '55P03'
LOCK_TIMEOUT_HINT = (': another session holds a lock it needs (pg_locks and pg_stat_activity say which); run it '
                     'again once that session ends, or set MIGRATION_LOCK_TIMEOUT_MS higher (0: no limit)')
# A statement PostgreSQL runs outside a transaction block only (CREATE INDEX CONCURRENTLY, VACUUM), and what to do.
ACTIVE_SQL_TRANSACTION = '25001'
OUTSIDE_TRANSACTION_HINT = (': put it in a file of its own whose first line is "-- transactional: false" '
                            "(yoyo's directive)")


class MigrationChanged(StartupError):
    """An applied migration's file is not the one that was applied: its change has never run."""


class MigrationOutOfOrder(StartupError):
    """A pending migration that a new database would run before one this database applied already (check_in_order)."""


class MigrationUnrunnable(StartupError):
    """A migration's file cannot run as written, on any database it has not run on: it is not UTF-8 text, holds a
    statement with nothing to run (idle_statement), or controls the transaction it runs in (transaction_control)."""


def yoyo_backend(dsn, lock_timeout_ms=0):
    """Open a yoyo backend on dsn, whose migrations' statements wait lock_timeout_ms for a lock at most (0: as long as
    it takes; backend_class); the DSN goes to psycopg2 whole, so any password works."""
    uri = DatabaseURI('postgresql', None, None, None, None, None, {'dsn': dsn})
    return backend_class(int(lock_timeout_ms))(uri, MIGRATION_TABLE)


@functools.cache
def backend_class(lock_timeout_ms):
    """Return yoyo's PostgreSQL backend class whose copies, on which each migration runs (yoyo's apply_one, and
    apply_recorded), wait lock_timeout_ms for a lock at most: PostgreSQL's lock_timeout, set by init_connection, which
    yoyo calls on each connection and again after a rollback (which undoes a SET made in the transaction). Its own
    connection, the bookkeeping's, waits as long as it takes: it records a `transactional: false` migration after its
    statements committed, and a record that gave up would leave that migration run but unrecorded."""
    postgresql = get_backend_class('postgresql')

    class StepsBackend(postgresql):
        def init_connection(self, connection):
            super().init_connection(connection)
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_catalog.set_config('lock_timeout', %s, false)", (f'{lock_timeout_ms}ms',))

    class BookkeepingBackend(postgresql):
        def copy(self):
            return StepsBackend(self.uri, self.migration_table)
    return BookkeepingBackend


@contextlib.contextmanager
def advisory_lock(conn, key=MIGRATION_LOCK_KEY, poll_seconds=LOCK_POLL_SECONDS):
    """Hold a session advisory lock on conn for the block; the server drops it if the process dies. It is waited for
    by trying again every poll_seconds, not by pg_advisory_lock: a statement waiting for the lock holds a snapshot,
    which a CREATE INDEX CONCURRENTLY of the holder's migrations would wait for, and neither would ever end."""
    if not try_advisory_lock(conn, key):
        log.info('waiting for the migration lock: another process migrates this database')
        while not try_advisory_lock(conn, key):
            time.sleep(poll_seconds)
    try:
        yield
    finally:
        if not conn.closed:  # closed (a stop during a statement, lib/db/waiting.py): the lock went with its session
            with conn.cursor() as cursor:
                cursor.execute('SELECT pg_advisory_unlock(%s)', (key,))


def try_advisory_lock(conn, key):
    """Take the session advisory lock key on conn if it is free; tell whether it was taken."""
    with conn.cursor() as cursor:
        cursor.execute('SELECT pg_try_advisory_lock(%s)', (key,))
        return cursor.fetchone()[0]


@contextlib.contextmanager
def migration_lock(dsn, directory, lock_timeout_ms=0):
    """Open a yoyo backend on dsn and hold the migrations' locks (the advisory lock, then yoyo's own, a stale one
    broken) for the block; yield (the backend, the migrations of directory, those pending, the SHA-256s recorded).
    lock_timeout_ms: PostgreSQL's lock_timeout for the migrations' statements, on yoyo's copies (0: none)."""
    backend = yoyo_backend(dsn, lock_timeout_ms)
    try:
        with advisory_lock(backend.connection):
            backend.init_database()
            # We hold the advisory lock, so a yoyo lock row left now is stale (its process died).
            backend.break_lock()
            with backend.lock():
                migrations = read_migrations(str(directory))
                check_utf8(migrations)
                check_loadable(migrations)
                yield backend, migrations, backend.to_apply(migrations), recorded_checksums(backend)
    finally:
        backend.connection.close()


def applied_of(migrations, pending):
    """Return those of migrations (yoyo's) that are not pending: applied before."""
    pending_ids = {migration.id for migration in pending}
    return [migration for migration in migrations if migration.id not in pending_ids]


def migrate(dsn, directory=MIGRATIONS_DIR, lock_timeout_ms=0):
    """Apply every pending migration in directory to the database at dsn; return their ids. A migration's statement
    that waits longer than lock_timeout_ms for a lock fails (55P03), rather than queue every query of the table behind
    it (0: it waits as long as it takes)."""
    with migration_lock(dsn, directory, lock_timeout_ms) as (backend, migrations, pending, recorded):
        applied_before = applied_of(migrations, pending)
        gone = sorted(set(recorded) - {migration.id for migration in migrations})
        check_applied_unchanged(recorded, applied_before)
        check_directives(pending)
        check_in_order([migration.id for migration in applied_before] + gone, gone, pending)
        warn_of_unread_files(directory, gone)
        # Those applied before checksums were kept (a database an older dbapi migrated, rows deleted as the
        # changed-files line offers): recorded once, as repair takes them, if they can run on a new database.
        unrecorded = [migration for migration in applied_before if migration.id not in recorded]
        check_runnable(unrecorded)
        record_checksums(backend, unrecorded)
        check_runnable(pending)
        warn_of_empty(pending)
        # yoyo prints the rows of a migration's SELECT as a table on stdout, which holds JSON lines alone.
        with contextlib.redirect_stdout(sys.stderr):
            apply_each(backend, pending)
    applied = [migration.id for migration in pending]
    log.info('migrations applied', extra={'labels': {'applied': ','.join(applied) or 'none'}})
    return applied


def repair(dsn, directory=MIGRATIONS_DIR):
    """Record the SHA-256 of every applied migration's file in directory as it is now, as Flyway's repair does: the
    files changed since they were applied are taken as they are (a comment fixed), and nothing runs. Return the ids
    recorded anew."""
    with migration_lock(dsn, directory) as (backend, migrations, pending, recorded):
        changed = [migration for migration in applied_of(migrations, pending)
                   if recorded.get(migration.id) != file_checksum(migration)]
        check_runnable(changed)  # taken as they are now, they must run on a new database
        record_checksums(backend, changed, replace=True)
    repaired = [migration.id for migration in changed]
    log.info('migration checksums repaired', extra={'labels': {'repaired': ','.join(repaired) or 'none'}})
    return repaired


def check_utf8(migrations):
    """Raise MigrationUnrunnable for the first of migrations (yoyo's) whose file, or its .rollback.sql, is not UTF-8
    text, naming the line of the first byte that is not, before yoyo reads it (a UnicodeDecodeError's traceback)."""
    for migration in migrations:
        path = Path(migration.path)
        for each in (path, path.with_suffix('.rollback.sql')):
            data = each.read_bytes() if each == path or each.is_file() else b''
            try:
                data.decode()
            except UnicodeDecodeError as exc:
                line = data.count(b'\n', 0, exc.start) + 1
                raise MigrationUnrunnable(f'migration {shown_path(each)}:{line} is not UTF-8 text (byte '
                                          f'0x{data[exc.start]:02x}): save it as UTF-8') from None


# yoyo's `-- transactional:` directive (it takes true or false, in any case, and fails with a KeyError on others).
TRANSACTIONAL_DIRECTIVE = re.compile(r'\s*--\s*transactional\s*:\s*(.*)')


def check_loadable(migrations):
    """Raise MigrationUnrunnable for the first of migrations (yoyo's `.sql` ones) yoyo cannot load, naming its line,
    before yoyo loads any (trial AZ: tracebacks): one that starts with a UTF-8 byte order mark, or whose .rollback.sql
    does, which PostgreSQL reads as text (a syntax error on every database, and repair took it), or whose
    `-- transactional:` is neither true nor false, or given twice."""
    for migration in migrations:
        path = Path(migration.path)
        if path.suffix != '.sql':
            continue
        rollback = path.with_suffix('.rollback.sql')
        for each in (path, rollback) if rollback.is_file() else (path,):  # yoyo rollback runs the second
            if each.read_text().startswith('\ufeff'):
                raise MigrationUnrunnable(f'migration {shown_path(each)}:1 starts with a byte order mark, which '
                                          'PostgreSQL would read as text: save it as UTF-8 without one')
        text = path.read_text()
        given = False
        for number, line in enumerate(HEADER_LINES.match(text).group().splitlines(), 1):
            if (directive := TRANSACTIONAL_DIRECTIVE.fullmatch(line.rstrip('\r'))) is None:
                continue
            if given:  # yoyo joins the values, 'false false' (trial BB)
                raise MigrationUnrunnable(f'migration {shown_path(path)}:{number}: transactional is given twice; '
                                          'keep one')
            if directive.group(1).lower() not in ('true', 'false'):
                raise MigrationUnrunnable(f'migration {shown_path(path)}:{number}: transactional takes true or false, '
                                          f'not {directive.group(1)!r}')
            given = True


def check_runnable(migrations):
    """Raise MigrationUnrunnable for the first of migrations (yoyo's) whose file holds a statement with nothing to run
    (idle_statement) or, run in a transaction, one that controls it (transaction_control), naming its line, before
    anything runs."""
    for migration in migrations:
        path = Path(migration.path)
        if path.suffix != '.sql':  # yoyo's Python migrations run their own steps, not statements split from text
            continue
        text = path.read_text()
        migration.load()
        control = transaction_control(text) if migration.use_transactions else None
        if control is not None:
            line, keyword = control
            raise MigrationUnrunnable(
                f'migration {shown_path(path)}:{line} holds {keyword}, which ends or begins a transaction: dbapi runs '
                'the file, and records it, in one transaction of its own. Remove it, or run the file without one (a '
                'first line "-- transactional: false")')
        idle = idle_statement(text)
        if idle is None:
            continue
        line, semicolon = idle
        if semicolon:
            raise MigrationUnrunnable(
                f'migration {shown_path(path)}:{line} holds an empty statement (a ";" with nothing to run before it), '
                'which yoyo sends as a statement of its own and which fails: remove that ";"')
        raise MigrationUnrunnable(
            f'migration {shown_path(path)}:{line} ends with a comment after its last statement, which yoyo sends as '
            'a statement of its own and which fails: end the file with a statement, or remove the comment')


# Text with nothing to run: blanks, comments and semicolons alone.
NOTHING_TO_RUN = re.compile(r'(?:\s+|--[^\n]*|/\*.*?\*/|;)*', re.DOTALL)
COMMENT = re.compile(r'--[^\n]*|/\*.*?\*/', re.DOTALL)
# What yoyo takes from a file's first statement as its header (directives, a description): `--` and blank lines.
HEADER_LINES = re.compile(r'(?:[ \t]*(?:--[^\n]*)?(?:\n|$))*')



# A statement that ends or begins a transaction (PostgreSQL's transaction control, savepoints and prepared
# transactions' COMMIT or ROLLBACK PREPARED aside): in a file run in a transaction, it commits part of the file, and
# the rest, and the file's record, go in another.
TRANSACTION_CONTROL = re.compile(r'(?:BEGIN|START\s+TRANSACTION|COMMIT|END|ABORT|ROLLBACK|PREPARE\s+TRANSACTION)\b'
                                 r'(?!\s+(?:(?:WORK|TRANSACTION)\s+)?(?:TO|PREPARED)\b)', re.IGNORECASE)


def statements_of(text):
    """Yield (index, offset, statement) of each statement of a migration's text, stripped, as yoyo splits it (with
    sqlparse): offset is where it starts in text."""
    position = 0
    for index, statement in enumerate(part.strip() for part in sqlparse.split(text) if part.strip()):
        start = text.find(statement, position)
        position = start + len(statement)
        yield index, start, statement


def transaction_control(text):
    """Return (line, keyword) of the first statement of a migration's text that controls its transaction
    (TRANSACTION_CONTROL), or None."""
    for _, start, statement in statements_of(text):
        body = LEADING_COMMENTS.match(statement).end()
        control = TRANSACTION_CONTROL.match(statement, body)
        if control:
            return text.count('\n', 0, start + body) + 1, ' '.join(control[0].split()).upper()
    return None


def idle_statement(text):
    """Return (the line of its ";" or comment, whether it holds a ";") of the first statement of a migration's text,
    split by sqlparse as yoyo splits it, that yoyo would send with nothing to run in it (PostgreSQL finds it empty,
    psycopg2 refuses it): a comment after the last statement, or a ";" alone; None when there is none. A first
    statement of `--` lines alone is yoyo's header, which it does not send."""
    for index, start, statement in statements_of(text):
        if NOTHING_TO_RUN.fullmatch(statement) and not (index == 0 and HEADER_LINES.fullmatch(statement)):
            semicolon = ';' in COMMENT.sub('', statement)
            # the ";", or the comment (past the first statement's header lines, which yoyo does not send)
            skipped = LEADING_COMMENTS if semicolon else HEADER_LINES if index == 0 else None
            at = start + (skipped.match(statement).end() if skipped else 0)
            return text.count('\n', 0, at) + 1, semicolon
    return None


def file_checksum(migration):
    """Return the SHA-256 (hex) of a yoyo migration's file as it is now, read as its lines: line endings (CRLF from a
    checkout) and a last newline do not count, as they do not in Flyway's checksum."""
    lines = Path(migration.path).read_bytes().decode('utf-8', 'surrogateescape').splitlines()
    return hashlib.sha256('\n'.join(lines).encode('utf-8', 'surrogateescape')).hexdigest()


def recorded_checksums(backend):
    """Return {migration id: SHA-256} recorded so far, making the table on first use."""
    with backend.transaction():
        backend.execute(CREATE_CHECKSUM_TABLE)
        return dict(backend.execute(f'SELECT migration_id, sha256 FROM {CHECKSUM_TABLE}').fetchall())


def check_applied_unchanged(recorded, applied):
    """Raise MigrationChanged naming every one of applied (yoyo migrations) whose file's SHA-256 is not the one
    recorded ({migration id: SHA-256}) when it was applied."""
    changed = [migration for migration in applied
               if recorded.get(migration.id, checksum := file_checksum(migration)) != checksum]
    if changed:
        files = ', '.join(str(shown_path(Path(migration.path))) for migration in changed)
        ids = ', '.join(sql_literal(migration.id) for migration in changed)
        raise MigrationChanged(
            f'applied migrations changed since (their SHA-256 is not the one recorded when they were applied): '
            f'{files}. A migration runs once, so a change to it has not run: restore each file and put the change in '
            f'a new migration; to take the files as they are now (a comment fixed), run `.venv/bin/python manage.py '
            f'repair` with the same settings, or delete their rows: DELETE FROM {CHECKSUM_TABLE} WHERE migration_id IN '
            f'({ids});')


def check_in_order(applied, gone, pending):
    """Raise MigrationOutOfOrder for the first of pending (yoyo migrations) whose name sorts before one of applied
    (ids, those of gone included: applied, their files gone) and that does not depend, through yoyo's `-- depends:`
    or `__depends__` (its own or its dependencies'), on the last of them: a new database runs it before that one, this
    one would run it after (trial AG: a file added later with a lower number ran last here, and failed on a new
    database; trial AM: one that depended on an early migration alone); Flyway refuses out-of-order ones too."""
    for migration in pending:
        later = sorted(each for each in applied if each > migration.id)
        if later and later[-1] not in dependencies(migration):
            raise MigrationOutOfOrder(out_of_order(migration, later[-1], later[-1] in gone))


def dependencies(migration):
    """Return the ids of the migrations a yoyo migration depends on, directly or through theirs."""
    found, waiting = set(), list(migration.depends)
    while waiting:
        each = waiting.pop()
        if each.id not in found:
            found.add(each.id)
            waiting.extend(each.depends)
    return found


def out_of_order(migration, applied, gone):
    """Return the line that refuses migration (yoyo's), which sorts before applied (an id; gone: whether its file is
    gone, so that no dependency on it can be declared)."""
    directive = (f"__depends__ = {{'{applied}'}}" if migration.path.endswith('.py') else f'-- depends: {applied}')
    where = f'migration {shown_path(Path(migration.path))} sorts before {applied}, which this database applied already'
    if gone:
        return (f'{where} and whose file is gone: a new database would not run that one, this one ran it first. '
                f'Rename it to sort after the last migration applied, or restore {applied}\'s file and add '
                f'`{directive}` to it (yoyo\'s directive)')
    return (f'{where}: a new database runs it before that one, this one would run it after. Rename it to sort after '
            f'the last migration applied, or add `{directive}` to it (yoyo\'s directive), so that every database runs '
            f'them in one order')


# A header line (yoyo reads its directives from the `--` lines before a file's first statement) that names one of
# yoyo's directives, and the same in yoyo's exact, case-sensitive form (`-- depends: 0003_users`): yoyo takes any
# other (`-- Depends: 0003_users`) for a comment.
YOYO_DIRECTIVE = re.compile(r'\s*--\s*(depends|transactional)\s*:')
DIRECTIVE_LIKE = re.compile(YOYO_DIRECTIVE.pattern, re.IGNORECASE)


def check_directives(migrations):
    """Raise MigrationUnrunnable for the first of migrations (yoyo's `.sql` ones) whose header holds a line that reads
    like a yoyo directive but is not one (`-- Depends: x`, `-- TRANSACTIONAL: false`): yoyo took it for a comment, so
    a `-- Transactional: false` file ran in a transaction and failed, and a `-- Depends:` one was refused as out of
    order (trial AK)."""
    for migration in migrations:
        path = Path(migration.path)
        if path.suffix != '.sql':
            continue
        text = path.read_text()
        header = HEADER_LINES.match(text).group()
        for number, line in enumerate(header.splitlines(), 1):
            if (directive := DIRECTIVE_LIKE.match(line)) and not YOYO_DIRECTIVE.match(line):
                name = directive.group(1).lower()
                raise MigrationUnrunnable(
                    f'migration {shown_path(path)}:{number} reads like yoyo\'s {name} directive, which yoyo would '
                    f'take for a comment: it is written in lower case, `-- {name}: ...`')


def warn_of_unread_files(directory, gone):
    """Log a warning for each file of directory yoyo does not read although it looks like a migration (`.SQL`: yoyo
    reads `.sql` and `.py`; a `.sql` file in a sub-folder: yoyo reads the folder's own files), and for the ids of
    gone (applied migrations whose file is gone): each was silent (trials AG, AK), and a new database would not run
    them."""
    directory = Path(directory)
    for path in sorted(directory.rglob('*')):
        if path.parent != directory and path.suffix.lower() == '.sql':
            log.warning('%s is not read: yoyo reads the files directly in %s, not those of its sub-folders',
                        shown_path(path), shown_path(directory))
        elif path.suffix.lower() in ('.sql', '.py') and path.suffix not in ('.sql', '.py'):
            log.warning('%s is not read: a migration file ends in .sql or .py, in lower case', shown_path(path))
    if gone:
        log.warning('applied migrations have no file in %s: %s; a new database would not run them',
                    shown_path(directory), ', '.join(gone))


def warn_of_empty(migrations):
    """Log a warning for each of migrations (pending, yoyo's `.sql` ones) with no statement to run (blank, comments):
    it is recorded as applied, so what is written in it later never runs; its edit stops the next start (trial AK)."""
    for migration in migrations:
        path = Path(migration.path)
        if path.suffix == '.sql' and NOTHING_TO_RUN.fullmatch(path.read_text()):
            log.warning('%s has no statement to run: it is recorded as applied, and what is written in it later '
                        'never runs (an applied file that changed stops the start)', shown_path(path))


def sql_literal(text):
    """Return text as an SQL string literal (standard_conforming_strings: a quote doubled)."""
    return "'" + text.replace("'", "''") + "'"


def apply_each(backend, pending):
    """Apply pending (a yoyo MigrationList) in order, each recorded with its SHA-256 as soon as it is applied (a later
    one may fail, and the file of one applied may be edited before the next run), then yoyo's post-apply hooks."""
    for migration in pending:
        migration.load()
        if migration.use_transactions:
            apply_recorded(backend, migration)
        else:  # `-- transactional: false`: yoyo's way, its statements committed one by one, then its record
            backend.apply_migrations_only([migration])
            record_checksums(backend, [migration], replace=True)
    if pending:
        backend.run_post_apply(pending)


def apply_recorded(backend, migration):
    """Apply migration (yoyo's, with a transaction) and record it, yoyo's log and mark and its SHA-256, in one
    transaction on a copy of backend, whose statements wait lock_timeout for a lock (backend_class): yoyo commits the
    steps and then records them on its own connection, and a stop or failure in between left the file run but
    unrecorded, failing every run after. yoyo nests the steps' own transaction as a savepoint."""
    log.info('applying migration', extra={'labels': {'migration': migration.id}})
    backend.ensure_internal_schema_updated()
    with backend.copy() as steps, steps.transaction():
        migration.process_steps(steps, 'apply')
        steps.log_migration(migration, 'apply')
        steps.mark_one(migration, log=False)
        record_checksums(steps, [migration], replace=True)


def record_checksums(backend, migrations, replace=False):
    """Record the SHA-256 of each of migrations (yoyo's) that has none yet, or, with replace, whatever it had (a file
    applied again after yoyo's own rollback); none: no round trip."""
    if not migrations:
        return
    on_conflict = 'UPDATE SET sha256 = EXCLUDED.sha256, recorded_at = now()' if replace else 'NOTHING'
    with backend.transaction():
        for migration in migrations:
            backend.execute(f'INSERT INTO {CHECKSUM_TABLE} (migration_id, sha256) VALUES (:id, :sha256) '
                            f'ON CONFLICT (migration_id) DO {on_conflict}',
                            {'id': migration.id, 'sha256': file_checksum(migration)})


def shown_path(path):
    """Return path relative to the project when it is inside it."""
    return path.relative_to(PROJECT_DIR) if path.is_relative_to(PROJECT_DIR) else path


def one_line(text, dsn):
    """Return text on one line with dsn and every spelling of its password taken out."""
    return redacted(' '.join(str(text).split()), {'default': dsn}, [])


def apply_migrations(dsn, directory=MIGRATIONS_DIR, lock_timeout_ms=0):
    """Migrate dsn (migrate); a database out of reach or a failing migration is a StartupError of one line."""
    return in_one_line(functools.partial(migrate, lock_timeout_ms=lock_timeout_ms), dsn, directory)


def repair_checksums(dsn, directory=MIGRATIONS_DIR):
    """Repair dsn's recorded checksums (repair); a database out of reach is a StartupError of one line."""
    return in_one_line(repair, dsn, directory)


def in_one_line(work, dsn, directory):
    """Return work(dsn, directory), its database errors raised as a StartupError of one line, without dsn's
    password."""
    try:
        with warnings.catch_warnings():
            # yoyo's word on a BEGIN in a transaction (a stop's unwinding), about databases that are not PostgreSQL
            warnings.filterwarnings('ignore', 'Nested transaction requested', UserWarning)
            return work(dsn, directory)
    except BadMigration as exc:  # a `-- depends:` naming no migration: yoyo's traceback before
        reason = unresolved_dependency(directory) or exc
        raise StartupError(f'the migrations cannot be ordered: {one_line(reason, dsn)}') from None
    except CycleError as exc:  # files that depend on each other, or one on itself (trial AZ: a traceback)
        cycle = ', '.join(sorted(migration.id for migration in exc.args[1])) if len(exc.args) > 1 else ''
        raise StartupError(f'the migrations cannot be ordered: their -- depends: directives make a loop ({cycle})') \
            from None
    except LockTimeout as exc:  # its lock row stays taken: one made after ours was broken, under the advisory lock
        raise StartupError(f'the migrations did not take yoyo\'s lock: {exc}; a yoyo command run beside them (it takes '
                           'no advisory lock) holds it: run them again once it ends') from None
    except psycopg2.Error as exc:
        if (stop := stop_behind(exc)) is not None:
            raise stop from None
        # No SQLSTATE: no connection was made, or it broke; but psycopg2 refuses an empty statement itself.
        if exc.pgcode is None and not isinstance(exc, psycopg2.ProgrammingError):
            raise StartupError(f'the database cannot be reached: {one_line(exc, dsn)}') from None
        raise StartupError(one_line(migration_failure(exc, dsn, directory), dsn)) from None


# yoyo's `-- depends:` directive: migration ids separated by blanks (yoyo joins the values of several such lines).
DEPENDS_DIRECTIVE = re.compile(r'\s*--\s*depends\s*:(.*)')


def unresolved_dependency(directory):
    """Return a line naming the first id a `-- depends:` of directory's `.sql` migrations gives that is no migration
    of directory (yoyo's BadMigration names only the file), or None (a `.py` migration's __depends__, not read)."""
    directory = Path(directory)
    paths = sorted(path for path in directory.iterdir() if path.suffix in ('.sql', '.py'))
    ids = {path.stem for path in paths if not path.name.endswith('.rollback.sql')}
    for path in paths:
        if path.suffix != '.sql' or path.stem not in ids:
            continue
        for number, line in enumerate(HEADER_LINES.match(path.read_text()).group().splitlines(), 1):
            directive = DEPENDS_DIRECTIVE.fullmatch(line.rstrip('\r'))
            missing = [each for each in (directive.group(1).split() if directive else ()) if each not in ids]
            if missing:
                return (f'migration {shown_path(path)}:{number} depends on {missing[0]}, which is no migration in '
                        f'{shown_path(directory)}')
    return None


def stop_behind(exc):
    """Return the stop (KeyboardInterrupt, or a SystemExit such as manage.py's StartInterrupted) that exc was raised
    while unwinding, if any: a stop during a statement closes its connection (lib/db/waiting.py), and a `finally` that
    uses the connection then (yoyo's lock release) raises the closed connection's error in the stop's place."""
    while exc is not None and not isinstance(exc, (KeyboardInterrupt, SystemExit)):
        exc = exc.__context__
    return exc


def migration_failure(exc, dsn, directory):
    """Describe a failed migration as file:line (or the bookkeeping statement, yoyo's or the checksums', that no
    file holds) and PostgreSQL's own message, with its detail when it has one."""
    statement = exc.cursor.query.decode(errors='replace') if exc.cursor is not None and exc.cursor.query else ''
    try:
        pending = pending_migrations(dsn, directory)
    except psycopg2.Error:  # the bookkeeping fails again (yoyo's tables cannot be made or read): no file ran
        pending = []
    path, lines = locate_statement(statement, exc.diag.statement_position, [Path(each.path) for each in pending])
    if path is None:
        hint = BOOKKEEPING_HINT if exc.pgcode in (UNDEFINED_TABLE, INSUFFICIENT_PRIVILEGE) else ''
        return (f'migrations failed on a bookkeeping statement, in no migration file ({statement_start(statement)}): '
                f'{database_message(exc)}{hint}')
    where = f'{path}:{lines[0]}' if lines else str(path)
    if len(lines) > 1:  # the same text twice: which one ran is not known
        where += f' (or {", ".join(map(str, lines[1:]))}: the same statement stands there too)'
    if exc.pgcode is None:  # psycopg2's own refusal: yoyo sends the comments after the last statement alone
        return (f'migration {where} failed: {str(exc).strip()} (a statement with nothing to run, a comment after '
                'the file\'s last statement or a ";" alone, is sent as a statement of its own: remove it)')
    return f'migration {where} failed: {database_message(exc)}{statements_kept(pending, path, statement)}'


# SQLSTATEs of bookkeeping that yoyo's tables are not there for, or not the user's to write, and what to do then.
UNDEFINED_TABLE, INSUFFICIENT_PRIVILEGE = '42P01', '42501'
BOOKKEEPING_HINT = ("; the database user must create and write yoyo's tables (yoyo_lock, _yoyo_migration...) and "
                    "_dbapi_migration_checksum in the first schema of its search_path: PostgreSQL 15 grants no CREATE "
                    "on public but to its owner (GRANT CREATE ON SCHEMA public, or the schema the user's search_path "
                    "names, TO the user; or migrate as the owner)")


def database_message(exc):
    """Return PostgreSQL's message of exc (a psycopg2 error with a SQLSTATE), its detail, SQLSTATE and, for a lock
    not obtained in time, what to do."""
    detail = f': {exc.diag.message_detail}' if exc.diag.message_detail else ''  # which key, which row
    hint = {LOCK_NOT_AVAILABLE: LOCK_TIMEOUT_HINT, ACTIVE_SQL_TRANSACTION: OUTSIDE_TRANSACTION_HINT}.get(exc.pgcode, '')
    return f'{exc.diag.message_primary}{detail} (SQLSTATE {exc.pgcode}){hint}'


# How much of a bookkeeping statement a failure line quotes.
STATEMENT_SHOWN_CHARACTERS = 60


def statement_start(statement):
    """Return the statement's first STATEMENT_SHOWN_CHARACTERS characters on one line, '...' after them if cut."""
    text = ' '.join(statement.split())
    return text if len(text) <= STATEMENT_SHOWN_CHARACTERS else f'{text[:STATEMENT_SHOWN_CHARACTERS]}...'


def pending_migrations(dsn, directory):
    """Return the migrations (yoyo's) not applied yet, in order: the failed one is among them."""
    backend = yoyo_backend(dsn)
    try:
        return list(backend.to_apply(read_migrations(str(directory))))
    finally:
        backend.connection.close()


# What a failure line adds for a file yoyo runs without a transaction (`-- transactional: false`).
STATEMENTS_KEPT = ('; the file is not transactional (transactional: false): its statements before this one stay '
                   'applied, so make them safe to run again first (IF NOT EXISTS; for an index built CONCURRENTLY, '
                   'DROP INDEX CONCURRENTLY IF EXISTS before it: a failed build leaves an invalid index)')


def statements_kept(migrations, path, statement):
    """Return STATEMENTS_KEPT when the migration of migrations (yoyo's) whose file is path runs without a transaction
    (yoyo's use_transactions) and statement, the failed one, comes after its first (where the file holds it first),
    else ''."""
    for migration in migrations:
        if shown_path(Path(migration.path)) == path:
            migration.load()
            text = Path(migration.path).read_text()
            first_end = next((start + len(each) for _, start, each in statements_of(text)
                              if not NOTHING_TO_RUN.fullmatch(each)), 0)
            return STATEMENTS_KEPT if not migration.use_transactions and text.find(statement) >= first_end else ''
    return ''


def locate_statement(statement, position, files):
    """Return (file, lines) of the character at position (1-based) of statement in the first file holding it, one
    line for each place the file holds it; without a position (an error of the whole statement, a duplicate key), of
    the statement's first line that is not blank or a comment (yoyo's statement begins with the comments before it).
    (None, []) for a statement no file holds: the bookkeeping's; the first file (or migrations/) for an error that
    names no statement."""
    at = int(position) - 1 if position and int(position) > 0 else LEADING_COMMENTS.match(statement).end()
    for path in files:
        text = path.read_text()
        starts = [found.start() for found in re.finditer(re.escape(statement), text)] if statement else []
        if starts:
            return shown_path(path), [text.count('\n', 0, start + at) + 1 for start in starts]
    if statement:
        return None, []
    return (shown_path(files[0]) if files else 'migrations/'), []
