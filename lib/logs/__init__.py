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
from pathlib import Path
from urllib.parse import quote

import ecs_logging
import orjson
import psycopg2
from gunicorn import glogging
from psycopg2.extensions import parse_dsn

import settings
from lib.http.exchange import CLIENT_KEY, ERROR_KEY, ROUTE_KEY
from lib.http.requestid import REQUEST_ID_KEY, current_request_id

log = logging.getLogger('dbapi.logging')

ACCESS_LOGGER = 'dbapi.access'
ACCESS_DATASET = 'dbapi.access'
# The levels of access lines, as ECS spells them: a success, a failure.
ACCESS_LEVELS = {logging.INFO: 'info', logging.ERROR: 'error'}
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
# (ECS group, field, WSGI environ key) of what an access line carries when the request has it.
OPTIONAL_ENVIRON_FIELDS = (('client', 'ip', 'REMOTE_ADDR'), ('user_agent', 'original', 'HTTP_USER_AGENT'))


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
        self.service_labels = service_fields['labels']
        self.fixed_access_json = (None, '')
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
        return {**self.head(created, level, message), **self.fixed_access_fields(pid), **self.labelled(fields)}

    def fixed_access_fields(self, pid):
        """Return the fields that every access line of process pid carries."""
        service = {key: value for key, value in self.service_fields.items() if key != 'labels'}
        return {**service, 'log': {'logger': ACCESS_LOGGER}, 'process': {'pid': pid}}

    def labelled(self, fields):
        """Return fields with the service's labels added to the request's."""
        labels = fields.get('labels')
        return {**fields, 'labels': {**labels, **self.service_labels} if labels else self.service_labels}

    def access_line(self, level, message, fields):
        """Return an access line as JSON text, made now by this process, without a LogRecord.

        The fields every access line of this process carries are encoded once; the line is spliced together.
        """
        pid = os.getpid()
        if self.fixed_access_json[0] != pid:
            self.fixed_access_json = (pid, dumps(self.fixed_access_fields(pid))[1:-1])
        head = f'{{"@timestamp":"{self.timestamp(time.time())}","log.level":"{level}","message":{dumps(message)}'
        return self.redact(f'{head},{self.fixed_access_json[1]},{dumps(self.labelled(fields))[1:]}')

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
    """stdout, one line at a time: straight to its file descriptor when it has one, past Python's buffers."""

    def __init__(self, stream):
        super().__init__(stream)
        self.fd = file_descriptor(stream)

    def write_line(self, line):
        """Write one line and flush it."""
        with self.lock:
            if self.fd is None:
                self.stream.write(line + self.terminator)
                self.stream.flush()
                return
            data = (line + self.terminator).encode()
            while data:
                data = data[os.write(self.fd, data):]


def file_descriptor(stream):
    """Return the file descriptor behind stream, with what it buffered written out, or None (a test's capture)."""
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError):
        return None
    return fd


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

class Exchange:
    """One request as the access line sees it, and its body as the server sends it.

    It notes the status when the app starts the response, counts the bytes the body yields, keeps the
    error that cut a stream short, and calls on_close once the server has closed the body, which is also
    when a streamed query's connection goes back.
    """

    __slots__ = ('environ', 'server_start_response', 'on_close', 'started_ns', 'status', 'endpoint', 'bytes',
                 'stream_error', 'chunks')

    def __init__(self, environ, server_start_response, on_close):
        self.environ = environ
        self.server_start_response = server_start_response
        self.on_close = on_close
        self.started_ns = time.perf_counter_ns()
        self.status = 500
        self.endpoint = None
        self.bytes = 0
        self.stream_error = None
        self.chunks = ()

    def start_response(self, status, headers, exc_info=None):
        """Note the status, and the matched endpoint while Flask still serves the request, then start the response."""
        self.status = int(status[:3])
        self.endpoint = getattr(self.environ.get('werkzeug.request'), 'endpoint', None)
        return self.server_start_response(status, headers, exc_info)

    def __iter__(self):
        try:
            for chunk in self.chunks:
                self.bytes += len(chunk)
                yield chunk
        except Exception as exc:
            self.stream_error = exc
            raise

    def close(self):
        """Close the wrapped body, then finish the exchange."""
        try:
            close = getattr(self.chunks, 'close', None)
            if close is not None:
                close()
        finally:
            self.on_close(self)


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


def route_labels(exchange):
    """Return (module, action) of a request: its mounted route, an ops endpoint, or ('', '') for no match."""
    route = exchange.environ.get(ROUTE_KEY)
    if route is not None:
        return route.module, route.name
    if exchange.endpoint:
        blueprint, _, view = exchange.endpoint.rpartition('.')
        return blueprint, view
    return '', ''


def request_path(environ):
    """Return the request's path as werkzeug decodes it."""
    path = environ.get('PATH_INFO') or ''
    if not path.isascii():
        path = path.encode('latin-1').decode('utf-8', 'replace')
    return '/' + path.lstrip('/')


def exchange_fields(exchange, labels):
    """Return the access line's fields of a finished exchange, all read from its WSGI environ."""
    environ, status = exchange.environ, exchange.status
    fields = {'http': {'request': {'method': environ.get('REQUEST_METHOD'), 'id': environ.get(REQUEST_ID_KEY)},
                       'response': {'status_code': status, 'body': {'bytes': exchange.bytes}}},
              'url': {'path': request_path(environ)},
              'event': {'dataset': ACCESS_DATASET}}
    for group, name, key in OPTIONAL_ENVIRON_FIELDS:
        if value := environ.get(key):
            fields[group] = {name: value}
    if client := environ.get(CLIENT_KEY):
        fields['user'] = {'name': client.name}
    if labels[0]:
        fields['labels'] = {'module': labels[0], 'action': labels[1]}
    error = exchange_error(exchange)
    if error:
        fields['error'] = error
    return fields


def exchange_error(exchange):
    """Return the error fields of an exchange: a stream cut short, a 5xx in full, or a 4xx's SQLSTATE."""
    if exchange.stream_error is not None:
        return error_fields(exchange.stream_error, detailed=True)
    failure = exchange.environ.get(ERROR_KEY)
    if failure is None:
        return None
    return error_fields(failure[0], detailed=exchange.status >= 500)


class AccessLog:
    """WSGI middleware: one access line per request once its response has gone out, and the observers told.

    Working on the environ after Flask is done costs far less than Flask hooks and werkzeug's Request
    properties; the handlers leave the route, the client and the error in the environ (lib/http/exchange.py).
    """

    def __init__(self, wsgi_app, observers=()):
        self.wsgi_app = wsgi_app
        self.logger = logging.getLogger(ACCESS_LOGGER)
        self.observers = tuple(observers)

    def __call__(self, environ, start_response):
        exchange = Exchange(environ, start_response, self.finish)
        exchange.chunks = self.wsgi_app(environ, exchange.start_response)
        return exchange

    def finish(self, exchange):
        """Write the line of a finished exchange with its duration, and tell the observers."""
        duration_ns = time.perf_counter_ns() - exchange.started_ns
        labels = route_labels(exchange)
        fields = exchange_fields(exchange, labels)
        fields['event']['duration'] = duration_ns
        failed = exchange.status >= 500 or 'stack_trace' in fields.get('error', ())
        fields['event']['outcome'] = 'failure' if failed else 'success'
        message = f"{fields['http']['request']['method']} {fields['url']['path']} {exchange.status}"
        self.write(logging.ERROR if failed else logging.INFO, message, fields)
        self.tell_observers(*labels, exchange.status, duration_ns / 1e9)

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
                    lines[formatter] = formatter.access_line(ACCESS_LEVELS[level], message, fields)
                handler.write_finished_line(lines[formatter])
            else:
                record = record or self.logger.makeRecord(ACCESS_LOGGER, level, '', 0, message, None, None,
                                                          extra={ACCESS_FIELDS: fields})
                handler.handle(record)


def install_access_log(app, observers=()):
    """Time every request of app and write its access line once the response has gone out."""
    app.wsgi_app = access_log = AccessLog(app.wsgi_app, observers)
    return access_log
