"""ECS JSON logging: one object per line to stdout and, with LOG_PATH, to this process's own file; the access line."""
import json
import logging
import logging.handlers
import os
import socket
import sys
import time
import traceback
import weakref
from functools import partial
from pathlib import Path
from urllib.parse import quote

import ecs_logging
import orjson
import psycopg2
from flask import g, request
from gunicorn import glogging
from psycopg2.extensions import parse_dsn

import settings
from lib.requestid import REQUEST_ID_KEY, current_request_id

log = logging.getLogger('dbapi.logging')

ACCESS_LOGGER = 'dbapi.access'
ACCESS_DATASET = 'dbapi.access'
# Record attributes: an access line's prebuilt fields, and the finished line kept for the next handler.
ACCESS_FIELDS = 'dbapi_access_fields'
FINISHED_LINE = 'dbapi_finished_line'
# log.original repeats the message; the process name and thread say nothing in a gunicorn worker.
EXCLUDED_FIELDS = ('log.original', 'process.name', 'process.thread')
# Loggers whose level does not follow LOG_LEVEL: pgserver narrates every step of starting the embedded
# server, and the access log is the record of every request, so LOG_LEVEL=WARNING keeps it.
FIXED_LEVELS = {'pgserver': logging.WARNING, ACCESS_LOGGER: logging.INFO}
LOG_SETTINGS = ('LOG_LEVEL', 'LOG_PATH', 'LOG_FILE_MAX_BYTES', 'LOG_FILE_BACKUPS', 'APP_ID', 'ENVIRONMENT',
                'PROCESS_ID', 'ELK_INDEX', 'DATABASES', 'BEARER', 'BEARER_TOKENS', 'BEARER_TOKENS_FILE')
REDACTED = '[REDACTED]'
# Shorter "secrets" would blank out ordinary words in every line.
MIN_SECRET_LENGTH = 4
MAX_CAUSES = 10


def dumps(document):
    """Encode a log document as one line of JSON text."""
    try:
        return orjson.dumps(document, default=repr).decode()
    except TypeError:  # integers past 64 bits, which orjson refuses
        return json.dumps(document, default=repr, separators=(',', ':'), ensure_ascii=False)


# --- Secrets: every spelling of a configured token, DSN or password is replaced in every line. ---

def token_tables(options):
    """Yield the parsed JSON objects of BEARER_TOKENS and BEARER_TOKENS_FILE; lib.auth refuses malformed ones."""
    texts = [options['BEARER_TOKENS']]
    if options['BEARER_TOKENS_FILE']:
        try:
            texts.append(Path(options['BEARER_TOKENS_FILE']).read_text())
        except OSError:
            pass
    for text in filter(None, texts):
        try:
            table = json.loads(text)
        except ValueError:
            continue
        if isinstance(table, dict):
            yield table


def configured_tokens(options):
    """Return every plain bearer token the settings hold."""
    tokens = [options['BEARER']]
    for table in token_tables(options):
        tokens += [entry.get('token') for entry in table.values() if isinstance(entry, dict)]
    return [token for token in tokens if isinstance(token, str)]


def dsn_spellings(dsn):
    """Return a DSN and its password as a line could spell them: raw, URL-encoded and libpq-quoted."""
    try:
        password = parse_dsn(dsn).get('password')
    except psycopg2.ProgrammingError:
        password = None
    if not password:
        return [dsn]
    libpq_quoted = password.replace('\\', '\\\\').replace("'", "\\'")
    return [dsn, password, quote(password, safe=''), quote(password), libpq_quoted]


def configured_secrets(options):
    """Return the bearer tokens, the database DSNs and their passwords."""
    dsns = [dsn for dsn in (options['DATABASES'] or {}).values() if dsn]
    return configured_tokens(options) + [spelling for dsn in dsns for spelling in dsn_spellings(dsn)]


class Redactor:
    """Replace known secrets in finished lines: a few substring checks per line, a rewrite only on a hit."""

    def __init__(self, secrets):
        # Longest first, so that a DSN is replaced whole before the password inside it.
        self.secrets = sorted({secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH}, key=len, reverse=True)
        # A finished line holds each secret the way JSON escapes it.
        self.escaped = [orjson.dumps(secret).decode()[1:-1] for secret in self.secrets]

    def __call__(self, line):
        """Return line, rewritten without its secrets when it holds any."""
        for escaped in self.escaped:
            if escaped in line:
                # Decoding first keeps the line valid JSON whatever characters a secret holds.
                return dumps(self.redact(json.loads(line)))
        return line

    def redact(self, value):
        """Return value with every secret in its strings replaced."""
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            return value
        if isinstance(value, dict):
            return {self.redact(key): self.redact(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        return value


# --- The formatter: ecs-logging's, plus dbapi's fields on every line and a fast path for access lines. ---

class EcsFormatter(ecs_logging.StdlibFormatter):
    """Elastic's ECS formatter with the service fields on every line, the request id on lines logged while a
    request is served and secrets redacted; access lines arrive prebuilt and skip its slow generic pass."""

    _LOGRECORD_DICT = ecs_logging.StdlibFormatter._LOGRECORD_DICT | {ACCESS_FIELDS, FINISHED_LINE}

    def __init__(self, service_fields, redactor):
        super().__init__(exclude_fields=EXCLUDED_FIELDS)
        self.service_fields = service_fields
        self.redact = redactor
        self.second = (None, '')

    def format(self, record):
        """Return the record as one JSON line, built once however many handlers write it."""
        finished = record.__dict__.get(FINISHED_LINE)
        if finished is None or finished[0] is not self:
            fields = record.__dict__.get(ACCESS_FIELDS)
            document = self.library_document(record) if fields is None else self.access_document(record, fields)
            finished = record.__dict__[FINISHED_LINE] = (self, self.redact(dumps(document)))
        return finished[1]

    def timestamp(self, created):
        """Return a UTC time with milliseconds, formatting each second only once."""
        second = int(created)
        cached = self.second
        if cached[0] != second:
            cached = self.second = (second, time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second)))
        return f'{cached[1]}.{int((created - second) * 1000):03d}Z'

    def head(self, created, level, message):
        """Return the three fields ECS puts first in a line."""
        return {'@timestamp': self.timestamp(created), 'log.level': level, 'message': message}

    def access_document(self, record, fields):
        """Build an access line from a record carrying the fields the access log prepared."""
        return self.access_fields(record.created, record.levelname.lower(), record.msg, record.process, fields)

    def access_fields(self, created, level, message, pid, fields):
        """Build an access line's document from its parts."""
        document = {**self.head(created, level, message), **self.service_fields, 'log': {'logger': ACCESS_LOGGER},
                    'process': {'pid': pid}, **fields}
        if 'labels' in fields:
            document['labels'] = {**fields['labels'], **self.service_fields['labels']}
        return document

    def access_line(self, level, message, fields):
        """Return an access line as JSON text, made now by this process, without a LogRecord."""
        return self.redact(dumps(self.access_fields(time.time(), level, message, os.getpid(), fields)))

    def library_document(self, record):
        """Build a line with ecs-logging's own pass, then add what every dbapi line carries."""
        ecs = super().format_to_ecs(record)
        del ecs['@timestamp']
        ecs['log'].pop('level', None)
        document = {**self.head(record.created, record.levelname.lower(), ecs.pop('message')), **ecs}
        for key, value in self.service_fields.items():
            mine = document.get(key)
            document[key] = {**value, **mine} if isinstance(value, dict) and isinstance(mine, dict) else mine or value
        request_id = current_request_id()
        if request_id and isinstance(document.setdefault('http', {}), dict):
            document['http'].setdefault('request', {}).setdefault('id', request_id)
        return document

    def _record_error_stack_trace(self, record):
        """Give the whole trace, chained causes and the final line included, not only the frames."""
        if record.exc_info and record.exc_info[1] is not None:
            return ''.join(traceback.format_exception(*record.exc_info))
        return super()._record_error_stack_trace(record)


def service_fields(options):
    """Return the fields every line carries: who wrote it, and the Elasticsearch index filebeat ships it to."""
    return {'ecs.version': ecs_logging.ECS_VERSION,
            'service': {'name': options['APP_ID'], 'environment': options['ENVIRONMENT'],
                        'node': {'name': options['PROCESS_ID']}},
            'host': {'hostname': socket.gethostname()},
            'labels': {'elk_index': options['ELK_INDEX']}}


# --- Destinations: stdout, and one file per process under LOG_PATH. ---

class LineWriting:
    """A handler that also takes a finished line, so the access log can skip LogRecord and Logger.handle."""

    def emit(self, record):
        """Write the record's line; a failure is reported the way logging reports it, never raised."""
        try:
            self.write_line(self.format(record))
        except Exception:
            self.handleError(record)

    def write_finished_line(self, line):
        """Write a finished line, reporting a failure on stderr instead of raising it."""
        try:
            self.write_line(line)
        except Exception:
            if logging.raiseExceptions:
                traceback.print_exc(file=sys.stderr)


class LineStreamHandler(LineWriting, logging.StreamHandler):
    """stdout, one line at a time."""

    def write_line(self, line):
        """Write one line and flush it."""
        with self.lock:
            self.stream.write(line + self.terminator)
            self.stream.flush()


class ProcessFileHandler(LineWriting, logging.handlers.RotatingFileHandler):
    """An ndjson file that only this process writes and rotates; a forked child switches to a file of its own."""

    def __init__(self, folder, stem, max_bytes, backups):
        self.folder = folder
        self.stem = stem
        self.written = 0
        super().__init__(self.path_for(os.getpid()), maxBytes=max_bytes, backupCount=backups,
                         encoding='utf-8', delay=True)
        PROCESS_FILES.add(self)

    def path_for(self, pid):
        """Return the path of process pid's file."""
        return os.path.join(self.folder, f'{self.stem}-{pid}.ndjson')

    def _open(self):
        """Open the file for appending and note its size."""
        stream = super()._open()
        self.written = stream.tell()
        return stream

    def write_line(self, line):
        """Write one line, rotating first when it would take the file past maxBytes. No other process
        writes this file, so counting what this one wrote replaces the base class's stat calls."""
        size = len(line) + 1  # characters stand in for bytes
        with self.lock:
            if self.stream is None:
                self.stream = self._open()
            if 0 < self.maxBytes < self.written + size:
                self.doRollover()
                self.stream = self.stream or self._open()
            self.stream.write(line + '\n')
            self.stream.flush()
            self.written += size

    def follow_fork(self):
        """In a forked child: leave the parent's file to the parent and write a file of this process's own."""
        if self.stream is not None:
            self.stream.close()  # the child's copy of the descriptor only; every line was flushed when written
            self.stream = None
        self.baseFilename = self.path_for(os.getpid())


PROCESS_FILES = weakref.WeakSet()


def follow_fork_in_process_files():
    """Point every per-process file handler at the new process's own file."""
    for handler in list(PROCESS_FILES):
        handler.follow_fork()


# gunicorn forks its workers from a master that has logged already; each must not write the master's file.
os.register_at_fork(after_in_child=follow_fork_in_process_files)


def log_folder(path):
    """Create LOG_PATH when missing and return it."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise settings.ImproperlyConfigured(f'LOG_PATH cannot be created: {exc.strerror}') from None
    return str(path)


def build_handlers(options):
    """Return the stdout handler and, with LOG_PATH, this process's file handler, sharing one formatter."""
    formatter = EcsFormatter(service_fields(options), Redactor(configured_secrets(options)))
    handlers = [LineStreamHandler(sys.stdout)]
    if options['LOG_PATH']:
        stem = f"{options['PROCESS_ID']}-{socket.gethostname()}"
        handlers.append(ProcessFileHandler(log_folder(options['LOG_PATH']), stem,
                                           options['LOG_FILE_MAX_BYTES'], options['LOG_FILE_BACKUPS']))
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.dbapi = True
    return handlers


def install_handlers(logger, handlers):
    """Replace the handlers dbapi installed on logger before with handlers, leaving others (pytest's) alone."""
    for old in [handler for handler in logger.handlers if getattr(handler, 'dbapi', False)]:
        logger.removeHandler(old)
        old.close()
    for handler in handlers:
        logger.addHandler(handler)


_installed = {'key': None}


def configure_logging(config):
    """Send every log record as an ECS JSON line to stdout and, with LOG_PATH, to this process's file."""
    # manage.py passes only LOG_LEVEL: settings.py supplies the rest.
    options = {name: config[name] if name in config else getattr(settings, name) for name in LOG_SETTINGS}
    root = logging.getLogger()
    root.setLevel(options['LOG_LEVEL'])
    for name, level in FIXED_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    key = repr({name: value for name, value in options.items() if name != 'LOG_LEVEL'})
    if key != _installed['key']:
        install_handlers(root, build_handlers(options))
        _installed['key'] = key


class GunicornLogger(glogging.Logger):
    """gunicorn's logger with its lines (master and workers) written as ECS JSON by dbapi's handlers."""

    def setup(self, cfg):
        """Let gunicorn set its levels, then send its error log through the root logger's handlers."""
        super().setup(cfg)
        configure_logging({})
        for handler in [handler for handler in self.error_log.handlers if getattr(handler, '_gunicorn', False)]:
            self.error_log.removeHandler(handler)
        self.error_log.propagate = True


# --- The access line: one per request, written when the server closes the response. ---

class CountedBody:
    """A streamed body that counts the bytes it yields and keeps the error that cut it short."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.bytes = 0
        self.error = None

    def __iter__(self):
        try:
            for chunk in self.chunks:
                self.bytes += len(chunk) if isinstance(chunk, bytes) else len(chunk.encode())
                yield chunk
        except Exception as exc:
            self.error = exc
            raise

    def close(self):
        """Close the wrapped body, which gives a streamed query's connection back."""
        close = getattr(self.chunks, 'close', None)
        if close is not None:
            close()


def count_streamed_body(response):
    """Wrap a streamed body to count what it sends; return the counter, or None for a sized body."""
    if not response.is_streamed:
        return None
    # A passthrough body would be handed to the server as is, and Response.close, our cue, would never run.
    response.direct_passthrough = False
    response.response = body = CountedBody(response.response)
    return body


def sized_body_bytes(method, response):
    """Return the bytes a sized response sends: none for HEAD, 1xx, 204 and 304."""
    status = response.status_code
    if method == 'HEAD' or status < 200 or status in (204, 304):
        return 0
    return response.content_length or 0


def sqlstate_of(exc):
    """Return the SQLSTATE of exc or of an error that led to it, or None."""
    for _ in range(MAX_CAUSES):
        if exc is None:
            return None
        if getattr(exc, 'pgcode', None):
            return exc.pgcode
        exc = exc.__cause__ or exc.__context__
    return None


def error_fields(exc, detailed):
    """Return ECS error fields: the SQLSTATE when the database raised, and type, message and trace when detailed."""
    fields = {}
    sqlstate = sqlstate_of(exc)
    if sqlstate:
        fields['code'] = sqlstate
    if detailed:
        kind = type(exc)
        module = '' if kind.__module__ == 'builtins' else f'{kind.__module__}.'
        fields['type'] = module + kind.__qualname__
        fields['message'] = str(exc)
        fields['stack_trace'] = ''.join(traceback.format_exception(exc))
    return fields


def route_labels(req, ctx):
    """Return (module, action) of a request: its mounted route, an ops endpoint, or ('', '') for no match."""
    route = ctx.get('route')
    if route is not None:
        return route.module, route.name
    if req.endpoint:
        blueprint, _, view = req.endpoint.rpartition('.')
        return blueprint, view
    return '', ''


def exchange_fields(req, ctx, response, labels):
    """Return the access line fields that the request (req, its g as ctx) and its response already know."""
    status = response.status_code
    fields = {'http': {'request': {'method': req.method, 'id': req.environ.get(REQUEST_ID_KEY)},
                       'response': {'status_code': status, 'body': {'bytes': 0}}},
              'url': {'path': req.path},
              'event': {'dataset': ACCESS_DATASET}}
    optional = (('client', 'ip', req.remote_addr), ('user_agent', 'original', req.environ.get('HTTP_USER_AGENT')),
                ('user', 'name', getattr(ctx.get('client'), 'name', None)))
    fields.update((group, {name: value}) for group, name, value in optional if value)
    if labels[0]:
        fields['labels'] = {'module': labels[0], 'action': labels[1]}
    failure = ctx.get('error')
    if failure is not None and (status >= 500 or sqlstate_of(failure[0])):
        fields['error'] = error_fields(failure[0], detailed=status >= 500)
    return fields


class AccessLog:
    """Writes one access line per request once its response has gone out, and tells the observers."""

    def __init__(self, observers=()):
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.observers = tuple(observers)

    @staticmethod
    def start_timer():
        """Note when the request began."""
        g.access_started_ns = time.perf_counter_ns()

    def schedule(self, response):
        """Gather the line's fields while the request is at hand; write it when the server closes the response."""
        # The objects behind the proxies: every attribute read through a proxy costs a context lookup.
        req, ctx = request._get_current_object(), g._get_current_object()
        started_ns = ctx.get('access_started_ns') or time.perf_counter_ns()
        body = count_streamed_body(response)
        labels = route_labels(req, ctx)
        fields = exchange_fields(req, ctx, response, labels)
        if body is None:
            fields['http']['response']['body']['bytes'] = sized_body_bytes(req.method, response)
        message = f'{req.method} {req.path} {response.status_code}'
        response.call_on_close(partial(self.finish, started_ns, body, fields, message, labels))
        return response

    def finish(self, started_ns, body, fields, message, labels):
        """Complete the line with the duration and what a stream sent, write it, and tell the observers."""
        duration_ns = time.perf_counter_ns() - started_ns
        fields['event']['duration'] = duration_ns
        status = fields['http']['response']['status_code']
        if body is not None:
            fields['http']['response']['body']['bytes'] = body.bytes
            if body.error is not None:
                fields['error'] = error_fields(body.error, detailed=True)
        failed = status >= 500 or 'stack_trace' in fields.get('error', ())
        fields['event']['outcome'] = 'failure' if failed else 'success'
        self.write(logging.ERROR if failed else logging.INFO, message, fields)
        self.tell_observers(*labels, status, duration_ns / 1e9)

    def tell_observers(self, module, action, status, seconds):
        """Pass the finished request to each observer; one that fails is logged, never raised to the server."""
        for observer in self.observers:
            try:
                observer(module, action, status, seconds)
            except Exception:
                log.exception('an access log observer failed')

    def write(self, level, message, fields):
        """Write the line: dbapi's handlers take it finished; any other handler (a test's) gets a record."""
        if not self.logger.isEnabledFor(level):
            return
        lines, record = {}, None
        for handler in self.logger.handlers + logging.getLogger().handlers:
            if level < handler.level:
                continue
            if isinstance(handler, LineWriting):
                formatter = handler.formatter
                if formatter not in lines:
                    lines[formatter] = formatter.access_line(logging.getLevelName(level).lower(), message, fields)
                handler.write_finished_line(lines[formatter])
            else:
                record = record or self.logger.makeRecord(ACCESS_LOGGER, level, '', 0, message, None, None,
                                                          extra={ACCESS_FIELDS: fields})
                handler.handle(record)


def install_access_log(app, observers=()):
    """Time every request of app and write its access line once the response has gone out."""
    access_log = AccessLog(observers)
    app.before_request(access_log.start_timer)
    app.after_request(access_log.schedule)
    return access_log
