"""Settings: Django-style constants read once from the environment after env/<ENVIRONMENT>/.env."""
import errno
import io
import ipaddress
import os
import re
import tempfile
from pathlib import Path

import psycopg2
from dotenv import load_dotenv
from psycopg2.extensions import make_dsn, parse_dsn

from lib.auth import MAX_CLIENT_CONNECTIONS
from lib.errors import (ImproperlyConfigured, file_text, integer_value,  # lib raises it; settings keeps the name
                        utf8_text)

BASE_DIR = Path(__file__).resolve().parent


def env_str(name, default=None):
    """Return the variable's text, or default when it is unset or empty; ImproperlyConfigured when it is not UTF-8
    (Python keeps such bytes as lone surrogates, which psycopg2 and the logs refuse later, with a traceback)."""
    value = os.environ.get(name, '')
    if not value.isascii():
        utf8_text(value, name)
    return value if value != '' else default


# An integer as settings take one: ASCII digits, a sign, spaces and tabs around (int() also reads "5_000" and other
# scripts' digits, "５"; \s would take the separators U+001C-U+001F, which int() refuses).
INTEGER_TEXT = re.compile(r'[ \t]*[+-]?[0-9]+[ \t]*')


def env_int(name, default, minimum=0, maximum=2**31 - 1):
    """Return the variable as an integer within [minimum, maximum]."""
    text = env_str(name)
    if text is None:
        return default
    if not INTEGER_TEXT.fullmatch(text):
        raise ImproperlyConfigured(f'{name} must be an integer, in ASCII digits (a sign before them is allowed)')
    value = integer_value(text)
    if not minimum <= value <= maximum:
        raise ImproperlyConfigured(f'{name} must be between {minimum} and {maximum}')
    return value


def env_choice(name, default, choices):
    """Return the variable as choices spell it: it must be one of them, in any case."""
    spelled = {choice.upper(): choice for choice in choices}
    value = env_str(name, default).upper()
    if value not in spelled:
        raise ImproperlyConfigured(f'{name} must be one of {", ".join(choices)}')
    return spelled[value]


def env_secret(name):
    """Return the variable's text, or the contents of the file named by <name>_FILE (a mounted secret)."""
    value, path = env_str(name), env_str(f'{name}_FILE')
    if value is not None and path is not None:
        raise ImproperlyConfigured(f'set either {name} or {name}_FILE, not both')
    if path is None:
        return value
    try:
        # Secret files usually end with a newline that is not part of the password.
        return file_text(Path(path).read_bytes(), f'{name}_FILE').rstrip('\r\n')
    except OSError as exc:
        raise ImproperlyConfigured(f'{name}_FILE cannot be read ({exc.strerror})') from None


def database_dsn(prefix):
    """Build the DSN of one named database from <PREFIX>_DATABASE_URL or <PREFIX>_DB_*."""
    url = env_str(f'{prefix}_DATABASE_URL') or (env_str('DATABASE_URL') if prefix == 'DEFAULT' else None)
    parts = {key: (env_secret if suffix == 'PASS' else env_str)(f'{prefix}_DB_{suffix}')
             for key, suffix in DB_PARTS.items()}
    if url and any(parts.values()):
        raise ImproperlyConfigured(f'set either a DATABASE_URL or {prefix}_DB_*, not both')
    if url:
        return checked_dsn(f'{prefix}_DATABASE_URL' if env_str(f'{prefix}_DATABASE_URL') else 'DATABASE_URL', url)
    if not any(parts.values()):
        return None
    if parts['port'] is not None:
        check_ports(f'{prefix}_DB_PORT', parts['port'], parts['host'])
    # make_dsn quotes every value, so passwords may hold quotes, spaces, @ or /.
    return make_dsn(**{key: value for key, value in parts.items() if value is not None})


def check_ports(name, ports, hosts):
    """Refuse ports, the text of the variable name, unless it is a port number from 1 to 65535 or a comma-separated
    list of them, one per host of hosts (None: the one default host; libpq's port and host parameters): libpq's
    refusal came at the first connection, as a database that cannot be reached, naming no setting. An empty item is
    libpq's default port (`postgresql://u@a:5432,b/db` gives the ports `5432,`)."""
    if not all(port == '' or (INTEGER_TEXT.fullmatch(port) and 1 <= integer_value(port) <= 65535)
               for port in ports.split(',')):
        raise ImproperlyConfigured(f'{name} must be a port number from 1 to 65535, or a comma-separated list of them '
                                   '(one per host)')
    port_count, host_count = ports.count(',') + 1, hosts.count(',') + 1 if hosts else 1
    if port_count > 1 and port_count != host_count:  # libpq: "could not match 2 port numbers to 1 hosts"
        raise ImproperlyConfigured(f'{name} lists {port_count} ports, not one per host (the hosts: {host_count}): '
                                   'give one port, or one per host')


URL_SCHEMES = ('postgresql://', 'postgres://')
# What a URL looks like, its scheme mistyped or not (postgresq://, postgresql:/, postgres//..., a space before it).
URL_LIKE = re.compile(r'\s*[A-Za-z][A-Za-z0-9+.-]*:?/|\s*[^=\s]*@')
DSN_HINTS = {True: 'in a URL, percent-encode %, @, / and ? in the user and password, and every space (%25, %40, '
                   '%2F, %3F, %20)',
             False: r"in key=value form, quote a value with spaces in single quotes: password='my secret' (\' and \\ inside)"}
SCHEME_HINT = 'a URL starts with postgresql:// or postgres://, nothing before it; '
# The longest wait for a new connection, in seconds: DB_CONNECT_TIMEOUT's bound, and a database URL's connect_timeout's
# (past about 24 days it overflowed the waits that apply it).
MAX_CONNECT_TIMEOUT_SECONDS = 600


def checked_dsn(name, dsn):
    """Return dsn when libpq parses it as meant; otherwise refuse it, naming the variable and never its password."""
    is_url = dsn.startswith(URL_SCHEMES)
    try:
        parts = parse_dsn(dsn)
    except psycopg2.ProgrammingError as exc:
        reason = redacted_libpq_message(str(exc), dsn)
        hint = DSN_HINTS[is_url] if is_url or not URL_LIKE.match(dsn) else SCHEME_HINT + DSN_HINTS[True]
        raise ImproperlyConfigured(f'{name} cannot be parsed ({reason}): {hint}') from None
    # libpq takes a raw space in a URL, and a raw @ or / in the password (raw_at_misread).
    if is_url and (re.search(r'\s', dsn) or raw_at_misread(dsn)):
        raise ImproperlyConfigured(f'{name} is not a valid URL: {DSN_HINTS[True]}')
    if 'port' in parts:  # libpq refused it at the first connection: "the database cannot be reached"
        check_ports(f"{name}'s port", parts['port'], parts.get('host') or parts.get('hostaddr'))
    timeout = parts.get('connect_timeout', '0')
    # Its value is not shown: it may be the password, or hold it (trial AA), as a port's may.
    if not INTEGER_TEXT.fullmatch(timeout) or integer_value(timeout) > MAX_CONNECT_TIMEOUT_SECONDS:  # libpq's form
        raise ImproperlyConfigured(f"{name}'s connect_timeout must be a whole number of seconds, "
                                   f"{MAX_CONNECT_TIMEOUT_SECONDS} at most")
    return dsn


def raw_at_misread(url):
    """Tell whether a postgresql:// URL holds a raw @ that libpq does not read as the end of the user and password
    (libpq's URI parser ends them at the first @ before any /): a second @ before the host (a raw @ in the password,
    the rest read as the host, which a ?host= then hides: trial BF), or an @ after the first / (a raw / in the
    password, the rest read as the database's name, which its error then quoted: trial BF). A raw # there is read as
    meant (trial BG: it was refused)."""
    rest = url.split('://', 1)[1]
    # libpq looks for the user's end up to the first / only; the host ends at a / or a ?
    user, at, after_user = rest.partition('@') if '@' in rest.partition('/')[0] else ('', '', rest)
    host, ended_by, tail = re.match(r'([^/?]*)([/?]?)(.*)', after_user, re.DOTALL).groups()
    database = tail.partition('?')[0] if ended_by == '/' else ''
    # A ? before that @: a query's @ read as the user's end (`h?password=a@b`), or a raw ? in the password; refused
    # as the two cannot be told apart (trial BI: the first's password reached a start error as a host name).
    return '?' in user or '@' in host or '@' in database


def redacted_libpq_message(message, dsn):
    """Return libpq's one-line message with each quoted piece of the DSN that may hold its password masked."""
    # libpq quotes the piece it stumbled on, which can be the password, a piece of it, or the whole DSN.
    first_line = message.strip().splitlines()[0] if message.strip() else 'libpq refused it'

    def mask(quoted):
        piece = quoted.group(1)
        return '"***"' if len(piece) > 1 and may_hold_password(piece, dsn) else quoted.group(0)
    return re.sub(r'"([^"]*)"', mask, first_line)


def may_hold_password(piece, dsn):
    """Tell whether piece, found in dsn, overlaps a part of dsn that may hold its password: what comes before a URL's
    last @ (whatever its scheme, a mistyped one too), and a key=value string's `password` and what follows it."""
    spans = ([(0, dsn.rindex('@'))] if '@' in dsn else []) + \
        ([(dsn.index('password'), len(dsn))] if 'password' in dsn else [])
    start = dsn.find(piece)
    while start >= 0:
        if any(start < end and begin < start + len(piece) for begin, end in spans):
            return True
        start = dsn.find(piece, start + 1)
    return False


def writable_folder(name, path):
    """Return path after proving a file can be made and written in it (a read-only or full disk is refused, and so is
    a folder this user cannot reach)."""
    try:
        if Path(path).exists() and not Path(path).is_dir():
            raise ImproperlyConfigured(f'{name} {path} is a file: name a folder, where each process writes its own file')
        Path(path).mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path) as probe:
            probe.write(b'x')
            probe.flush()
            os.fsync(probe.fileno())
    except OSError as exc:
        raise ImproperlyConfigured(f'{name} {path} is not writable ({writing_fault(path, exc)})') from None
    return path


def writing_fault(path, exc):
    """Return why a file could not be made in the folder path (exc, an OSError): its strerror, save for a folder that
    exists and makes no new files (the kernel's ENOENT: /proc, /sys)."""
    if exc.errno == errno.ENOENT and Path(path).is_dir():
        return 'a folder that takes no new files, such as a kernel file system'
    return exc.strerror


# Elasticsearch's rules for an index name (its create index API): lowercase, none of these characters, not starting
# with -, _ or +, not . or .., at most 255 bytes.
INDEX_NAME_FORBIDDEN = set('\\/*?"<>| ,#:')


def elasticsearch_index(name, value):
    """Return value when Elasticsearch accepts it as an index name, else ImproperlyConfigured naming the rule."""
    if value != value.lower():
        fault = 'has upper-case letters'
    elif forbidden := sorted(INDEX_NAME_FORBIDDEN & set(value)):
        fault = f'has {forbidden[0]!r}'
    elif value[:1] in ('-', '_', '+') or value in ('.', '..'):
        fault = 'starts with -, _ or + or is . or ..'
    elif len(value.encode()) > 255:
        fault = 'is longer than 255 bytes'
    else:
        return value
    set_by = '' if os.environ.get(name) else ' (made of APP_ID and ENVIRONMENT)'
    raise ImproperlyConfigured(f'{name} {value!r}{set_by} {fault}: Elasticsearch refuses it as an index name')


def database_names():
    """Return the configured database names: default plus DB_NAMES."""
    names = [name.strip().lower() for name in env_str('DB_NAMES', 'default').split(',') if name.strip()]
    for name in names:
        if not re.fullmatch(r'[a-z][a-z0-9_]*', name):
            raise ImproperlyConfigured(f'DB_NAMES holds a bad name: {name!r}')
    return list(dict.fromkeys(['default', *names]))


DB_PARTS = dict(dbname='NAME', user='USER', password='PASS', host='HOST', port='PORT')

ENVIRONMENT = env_str('ENVIRONMENT', 'local')
if not re.fullmatch(r'[a-z][a-z0-9_-]*', ENVIRONMENT):
    raise ImproperlyConfigured('ENVIRONMENT must be a lower-case name such as local, test or production')


def load_env_file(path, name):
    """Set the variables of the .env file at path (called name in a message) that the environment does not set
    already (real environment variables win: override=False); none when there is no file; ImproperlyConfigured when
    it cannot be read or is not UTF-8 text."""
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise ImproperlyConfigured(f'{name} cannot be read ({exc.strerror})') from None
    load_dotenv(stream=io.StringIO(utf8_text(text, name)), override=False)


load_env_file(BASE_DIR / 'env' / ENVIRONMENT / '.env', f'env/{ENVIRONMENT}/.env')
# Empty means unset here, as for every setting; prometheus_client alone would take an empty
# PROMETHEUS_MULTIPROC_DIR as set and write its files to the working directory.
if env_str('PROMETHEUS_MULTIPROC_DIR') is None:
    os.environ.pop('PROMETHEUS_MULTIPROC_DIR', None)
else:  # prometheus_client would fail at the first metric, with a traceback, after the migrations
    writable_folder('PROMETHEUS_MULTIPROC_DIR', os.environ['PROMETHEUS_MULTIPROC_DIR'])
DEVELOPMENT = ENVIRONMENT in ('local', 'test')

APP_ID = env_str('APP_ID', 'dbapi')
PROCESS_ID = env_str('PROCESS_ID', 'dbapi')
# The start of each process's log file name under LOG_PATH: a '/' or '..' would put it elsewhere, or nowhere.
if not re.fullmatch(r'[A-Za-z0-9_-][A-Za-z0-9._-]*', PROCESS_ID):
    raise ImproperlyConfigured(f'PROCESS_ID {PROCESS_ID!r} must be letters, digits, ".", "_" and "-", not starting '
                               'with ".": it starts each log file name under LOG_PATH')
PORT = env_int('PORT', 8000, 1, 65535)
# What gunicorn binds (gunicorn.conf.py): BIND when set ("host:port", "unix:/path"), else PORT on loopback; and
# the TCP port of that, which `make run` checks and calls (None for a Unix socket).
BIND = env_str('BIND', f'127.0.0.1:{PORT}')


def bind_port(bind):
    """Return the TCP port of a gunicorn bind address ("host:port", port 1-65535), None for "unix:/path";
    ImproperlyConfigured for anything else."""
    if bind.startswith('unix:') and len(bind) > len('unix:'):
        return None
    host, colon, port = bind.rpartition(':')
    odd_host = any(c in host for c in ', \t') or any(c in host for c in '[]:') and not ipv6_in_brackets(host)
    if not colon or not (port.isascii() and port.isdigit()) or not 1 <= integer_value(port) <= 65535 or odd_host:
        raise ImproperlyConfigured('BIND must be one host:port (a port from 1 to 65535, an IPv6 address in brackets: '
                                   '[::1]:8000) or unix:/path')
    return int(port)


def ipv6_in_brackets(host):
    """Tell whether host is an IPv6 address in brackets, "[::1]", as a URL writes one (RFC 3986, 3.2.2)."""
    if not (host.startswith('[') and host.endswith(']')):
        return False
    try:
        ipaddress.IPv6Address(host[1:-1])
    except ValueError:
        return False
    return True


def bind_host(bind):
    """Return the host of a gunicorn bind address "host:port" without an IPv6 address's brackets ('' for all of the
    machine's addresses, as ":8000" says), None for "unix:/path"."""
    return None if bind_port(bind) is None else bind.rpartition(':')[0].strip('[]')


BIND_PORT = bind_port(BIND)
BIND_HOST = bind_host(BIND)
WEB_CONCURRENCY = env_int('WEB_CONCURRENCY', 2 * (os.cpu_count() or 1) + 1, 1, 256)
# gevent (the default): each request is a greenlet, so one waiting on PostgreSQL holds no process and /healthz
# never queues behind actions (docs/performance.md, "Worker model"). gthread: THREADS threads per worker. sync: one
# request per worker, as before.
WORKER_CLASS = env_choice('WORKER_CLASS', 'gevent', ('gevent', 'gthread', 'sync'))
THREADS = env_int('THREADS', 8, 1, 1000)
TRUSTED_PROXY_HOPS = env_int('TRUSTED_PROXY_HOPS', 0, 0, 5)

BEARER = env_str('BEARER')
BEARER_TOKENS = env_str('BEARER_TOKENS')
BEARER_TOKENS_FILE = env_str('BEARER_TOKENS_FILE')

# None means "not configured"; local and test then use the embedded PostgreSQL.
DATABASES = {name: database_dsn(name.upper()) for name in database_names()}
EMBEDDED_DB_DIR = Path(env_str('EMBEDDED_DB_DIR', str(BASE_DIR / '.data' / f'pg-{ENVIRONMENT}')))
if DATABASES['default'] is None and not DEVELOPMENT:
    raise ImproperlyConfigured('DATABASE_URL or DEFAULT_DB_* must be set outside local and test')
for _name, _dsn in DATABASES.items():
    if _dsn is None and _name != 'default':
        raise ImproperlyConfigured(f'DB_NAMES names {_name!r}: set {_name.upper()}_DATABASE_URL or {_name.upper()}_DB_*')
DB_POOL_MAX = env_int('DB_POOL_MAX', 2, 1, MAX_CLIENT_CONNECTIONS)
# One deadline per request (0: none), from which the other timeouts are derived or against which they are checked
# (docs/deployment.md, "One request deadline"): the pool wait and each transaction's statement timeout end at it,
# a retry does not start past it, a transaction past it is rolled back, not committed, and nginx waits longer.
REQUEST_DEADLINE_MS = env_int('REQUEST_DEADLINE_MS', 30000, 0, 3600000)
DB_POOL_TIMEOUT_MS = env_int('DB_POOL_TIMEOUT_MS', min(5000, REQUEST_DEADLINE_MS // 2) if REQUEST_DEADLINE_MS else 5000, 0, 600000)
DB_CONNECT_TIMEOUT = env_int('DB_CONNECT_TIMEOUT', 5, 1, MAX_CONNECT_TIMEOUT_SECONDS)
DB_STATEMENT_TIMEOUT_MS = env_int('DB_STATEMENT_TIMEOUT_MS', REQUEST_DEADLINE_MS, 0, 2**31 - 1)
# How long a migration's statement waits for a lock (PostgreSQL's lock_timeout; 0: as long as it takes): while it
# waits, every query of that table queues behind it, so a migration behind a long transaction stalls the service.
MIGRATION_LOCK_TIMEOUT_MS = env_int('MIGRATION_LOCK_TIMEOUT_MS', 5000, 0, 2**31 - 1)
# A custom configure(conn) and reset(conn) for the pools' connections (docs/architecture.md), each named
# 'package.module:function' (lib.db.session_hook imports it); unset: the defaults.
DB_CONFIGURE = env_str('DB_CONFIGURE')
DB_RESET = env_str('DB_RESET')


def check_deadline(deadline_ms, pool_timeout_ms, statement_timeout_ms):
    """Refuse a pool wait or a statement timeout that the request deadline could not hold (0: no deadline)."""
    if deadline_ms and pool_timeout_ms >= deadline_ms:
        raise ImproperlyConfigured(f'DB_POOL_TIMEOUT_MS ({pool_timeout_ms}) must be below REQUEST_DEADLINE_MS '
                                   f'({deadline_ms}): a request waiting that long for a connection has no time left')
    if deadline_ms and statement_timeout_ms > deadline_ms:
        raise ImproperlyConfigured(f'DB_STATEMENT_TIMEOUT_MS ({statement_timeout_ms}) must be at most '
                                   f'REQUEST_DEADLINE_MS ({deadline_ms}) (0: the deadline alone bounds statements)')


check_deadline(REQUEST_DEADLINE_MS, DB_POOL_TIMEOUT_MS, DB_STATEMENT_TIMEOUT_MS)
# The longest a request may keep a worker busy: its deadline, else (no deadline) its statement timeout (0: none).
REQUEST_BOUND_MS = REQUEST_DEADLINE_MS or DB_STATEMENT_TIMEOUT_MS
# nginx's proxy_read_timeout: the longest wait for a pooled connection, the deadline and five seconds more, so the
# app's own answer (a 504 at worst) arrives first, and a request never commits after nginx has given up on it (an
# autocommit action may wait for its connection, then run one statement up to the statement timeout); with no
# bound at all, a minute.
NGINX_PROXY_TIMEOUT_MS = REQUEST_BOUND_MS + DB_POOL_TIMEOUT_MS + 5000 if REQUEST_BOUND_MS else 60000
DB_RETRIES = env_int('DB_RETRIES', 3, 0, 100)
# Each client may hold at most this many connections of a pool at once (its BEARER_TOKENS entry's
# "max_connections" wins): one client's slow calls cannot take every connection. Over it: 429.
# None (unset) means DB_POOL_MAX, the app's own, so nothing is limited unless it is set.
DB_CLIENT_MAX_CONNECTIONS = env_int('DB_CLIENT_MAX_CONNECTIONS', None, 1, MAX_CLIENT_CONNECTIONS)


def worker_timeout(bound_ms):
    """Return WORKER_TIMEOUT: seconds gunicorn lets a worker stay silent before killing it (0: never)."""
    # The rule: gunicorn never kills a worker whose request may still run (REQUEST_BOUND_MS: the deadline, else the
    # statement timeout). So with no bound there is no worker timeout, and otherwise it outlasts the bound.
    default = 0 if bound_ms == 0 else -(-bound_ms // 1000) + 15
    seconds = env_int('WORKER_TIMEOUT', default, 0, 2**31 - 1)
    if seconds and (bound_ms == 0 or seconds * 1000 <= bound_ms):
        raise ImproperlyConfigured('WORKER_TIMEOUT must be 0 (never) or longer than REQUEST_DEADLINE_MS (or, with '
                                   'no deadline, DB_STATEMENT_TIMEOUT_MS), and 0 when neither bounds a request')
    return seconds


WORKER_TIMEOUT = worker_timeout(REQUEST_BOUND_MS)
# Seconds a stopping worker has to finish the requests it accepted (gunicorn's graceful_timeout): by default the
# deadline, so a request accepted just before the stop can finish. Less is allowed: the queries still running a
# second before it ends are cancelled (503, rolled back), never killed half-committed.
GRACEFUL_TIMEOUT = env_int('GRACEFUL_TIMEOUT', -(-REQUEST_DEADLINE_MS // 1000) or 30, 1, 3600)


def max_requests_in_flight(worker_class, threads, pool_max):
    """Return MAX_REQUESTS_IN_FLIGHT: how many requests one process serves at once; one more gets a fast 503."""
    # gevent: 64 per pooled connection. A request past the pool waits for a connection (DB_POOL_TIMEOUT_MS at
    # most); 64 queued on a connection that serves 5 ms queries are through in a third of a second, and a longer
    # queue only holds requests that would time out anyway. gthread runs THREADS at once, sync one.
    default = {'gevent': 64 * pool_max, 'gthread': threads, 'sync': 1}[worker_class]
    return env_int('MAX_REQUESTS_IN_FLIGHT', default, 1, 1000000)


MAX_REQUESTS_IN_FLIGHT = max_requests_in_flight(WORKER_CLASS, THREADS, DB_POOL_MAX)

MAX_CONTENT_LENGTH = env_int('MAX_CONTENT_LENGTH', 1048576, 1, 2**31 - 1)
LOG_LEVEL = env_choice('LOG_LEVEL', 'INFO', ('DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL'))
LOG_PATH = env_str('LOG_PATH')
if LOG_PATH:
    writable_folder('LOG_PATH', LOG_PATH)
# Each process rotates its own file under LOG_PATH at this size (0: never), keeping this many old ones.
LOG_FILE_MAX_BYTES = env_int('LOG_FILE_MAX_BYTES', 100 * 1024 * 1024)
LOG_FILE_BACKUPS = env_int('LOG_FILE_BACKUPS', 3, 1, 1000)
ELK_INDEX = elasticsearch_index('ELK_INDEX', env_str('ELK_INDEX', f'{APP_ID}-{ENVIRONMENT}'))

# Off (0) runs every request through the libraries' stock code paths only: the test suite runs both ways. Any other
# value stops the start: `FALSE` or `disable` left them on unsaid (trial AS).
FAST_PATHS_WORDS = {'1': True, 'true': True, 'yes': True, 'on': True, '0': False, 'false': False, 'no': False,
                    'off': False}
FAST_PATHS = FAST_PATHS_WORDS[env_choice('FAST_PATHS', '1', list(FAST_PATHS_WORDS))]


def module_packages():
    """Return MODULE_PACKAGES's comma-separated package names; a value that names none (" , "), or one package more
    than once, stops the start."""
    names = [name.strip() for name in env_str('MODULE_PACKAGES', 'modules').split(',') if name.strip()]
    if not names:
        raise ImproperlyConfigured('MODULE_PACKAGES names no package: list one or more, separated by commas')
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:  # its modules would be mounted twice: "a module named 'accounts' is already mounted" (trial Y)
        raise ImproperlyConfigured(f'MODULE_PACKAGES names {", ".join(twice)} more than once')
    return names


MODULE_PACKAGES = module_packages()
