"""ECS JSON logging: one object per line to stdout and, with LOG_PATH, to this process's own file.

    formatter.py  the lines: ecs-logging's formatter, dbapi's fields added by a logging.Filter
    secrets.py    the redactor: tokens, DSNs and passwords out of every line
    handlers.py   stdout and the per-process files
    access.py     the access line, one per request (WSGI middleware)
    metrics.py    Prometheus metrics and GET /metrics

This module wires them: configure_logging (an app, or settings for a process without one) and gunicorn's logger.
"""
import json
import logging
import socket

from gunicorn import glogging
from gunicorn.http.errors import NoMoreData

from lib.auth import load_clients
from lib.errors import StartupError
from lib.logs.access import ACCESS_DATASET, AccessLog, install_access_log
from lib.logs.formatter import ACCESS_LOGGER, EcsFormatter, ServiceFields, service_fields
from lib.logs.handlers import build_handlers
from lib.logs.secrets import UNQUOTED, Redactor, configured_secrets, dsn_spellings

__all__ = ['AccessLog', 'GunicornLogger', 'check_secrets_spare_every_line', 'configure_logging',
           'configure_process_logging', 'install_access_log', 'settings_config']

# Loggers whose level does not follow LOG_LEVEL: pgserver narrates every step of starting the embedded
# server, and the access log is the record of every request, so LOG_LEVEL=WARNING keeps it.
FIXED_LEVELS = {'pgserver': logging.WARNING, ACCESS_LOGGER: logging.INFO}
# The settings the handlers are built from; a change of any of them (not of LOG_LEVEL) builds new ones.
HANDLER_SETTINGS = ('LOG_PATH', 'LOG_FILE_MAX_BYTES', 'LOG_FILE_BACKUPS', 'APP_ID', 'ENVIRONMENT', 'PROCESS_ID',
                    'ELK_INDEX', 'DATABASES')
INSTALLED = {'key': None, 'handlers': [], 'redactor': None}


def configure_logging(config, secrets=()):
    """Send every log record as an ECS JSON line to stdout and, with LOG_PATH, to this process's file.

    config holds the settings (app.config, or settings_config(settings)); secrets are the plain bearer tokens
    (lib.auth's TokenTable.secrets), kept out of every line with the DSNs and passwords of config['DATABASES'].
    Return the lines' redactor (lib.logs.secrets.Redactor), which an app teaches the tokens it learns.
    """
    root = logging.getLogger()
    root.setLevel(config['LOG_LEVEL'])
    for name, level in FIXED_LEVELS.items():
        logging.getLogger(name).setLevel(level)
    options = {name: config[name] for name in HANDLER_SETTINGS}
    options['FAST_PATHS'] = config.get('FAST_PATHS', True)
    key = repr((options, sorted(secrets)))
    if key != INSTALLED['key']:
        redactor = Redactor(configured_secrets(options['DATABASES'], secrets))
        replace_handlers(root, dbapi_handlers(options, redactor))
        INSTALLED.update(key=key, redactor=redactor)
    return INSTALLED['redactor']


def dbapi_handlers(options, redactor):
    """Return dbapi's handlers, sharing one formatter (its lines redacted by redactor) and one filter that adds
    dbapi's fields."""
    hostname = socket.gethostname()
    fields = service_fields(options, hostname)
    formatter = EcsFormatter(fields, redactor)
    fields_filter = ServiceFields(fields)
    handlers = build_handlers(options, f"{options['PROCESS_ID']}-{hostname}", options['FAST_PATHS'])
    for handler in handlers:
        handler.setFormatter(formatter)
        handler.addFilter(fields_filter)
    return handlers


# An access line with every field the lines' fixed text holds: their names, and the values that are the same in each.
SAMPLE_ACCESS_FIELDS = {
    'http': {'request': {'method': 'POST', 'id': ''}, 'response': {'status_code': 200, 'body': {'bytes': 0}}},
    'url': {'path': '/'}, 'client': {'ip': ''}, 'user_agent': {'original': ''}, 'user': {'name': ''},
    'event': {'dataset': ACCESS_DATASET, 'duration': 0, 'outcome': 'success'}, 'labels': {'module': '', 'action': ''},
    'error': {'type': '', 'message': '', 'code': '', 'stack_trace': ''}}


# The words a line holds in the place of its kind, which filters and alerts read: the levels, the outcomes, the loggers
# of dbapi's own lines and gunicorn's, and the client address of a request from this host. Not every line holds each,
# but every line of that kind does (trial AX: a token `warning` made every warning's log.level [REDACTED]).
KIND_WORDS = {'log': {'level': ['debug', 'info', 'warning', 'error', 'critical'],
                      # tests/test_logging.py holds it to every logger dbapi's code names, and to yoyo's and gunicorn's
                      'logger': ['dbapi.access', 'dbapi.db', 'dbapi.headers', 'dbapi.logging', 'dbapi.metrics',
                                 'dbapi.migrate', 'dbapi.stack', 'lib.decorators', 'pgserver', 'root',
                                 'yoyo.migrations', 'gunicorn.error', 'gunicorn.access']},
              'event': {'outcome': ['success', 'failure', 'unknown']}, 'client': {'ip': ['127.0.0.1', '::1']}}


def check_secrets_spare_every_line(config, tokens):
    """Raise StartupError when a secret the lines are redacted of (a database's DSN or password, a bearer token of
    tokens) is text every line holds (a field name, the service's name, environment and node, the host name, the
    index: labels.elk_index), or every line of a kind (KIND_WORDS: a level, an outcome, a logger), or that the
    @timestamp of some moment holds (Redactor.marks_every_line).
    Redacted, every line would lose those words (an index name or a date that Elasticsearch refuses); kept, every
    line would show the secret. The message never names the secret."""
    fields = service_fields({name: config[name] for name in HANDLER_SETTINGS}, socket.gethostname())
    every_line = json.loads(EcsFormatter(fields, str).access_line('info', '', SAMPLE_ACCESS_FIELDS))
    del every_line['@timestamp']
    every_line['kinds'] = KIND_WORDS
    for name, dsn in (config['DATABASES'] or {}).items():
        if dsn and Redactor(dsn_spellings(dsn)).marks_every_line(every_line):
            raise StartupError(f'the password of database {name!r} {EVERY_LINE_HOLDS}. Choose another password, or '
                               'change the setting that holds it')
    if Redactor(tokens).marks_every_line(every_line):
        raise StartupError(f'a bearer token {EVERY_LINE_HOLDS}. Choose another token')


# Why a secret is refused at the start (check_secrets_spare_every_line); never the secret itself.
EVERY_LINE_HOLDS = ('is a word that every log line holds (in a field name, or APP_ID, ENVIRONMENT, PROCESS_ID, the '
                    'host name or ELK_INDEX), or every line of a kind (a level, an outcome, a logger, a client on this '
                    'host), or part of a date and time its timestamp can hold (2027, T06:35): the lines would show '
                    'it, or lose that word to [REDACTED]')


def replace_handlers(logger, handlers):
    """Replace the handlers dbapi installed on logger before with handlers, leaving others (pytest's) alone."""
    for old in INSTALLED['handlers']:
        logger.removeHandler(old)
        old.close()
    for handler in handlers:
        logger.addHandler(handler)
    INSTALLED['handlers'] = handlers


def settings_config(settings_module):
    """Return a settings module's upper-case names as a config mapping, the names Flask's from_object reads."""
    return {name: getattr(settings_module, name) for name in dir(settings_module) if name.isupper()}


def configure_process_logging(settings_module):
    """Configure logging for a process without an app (manage.py's every command, gunicorn's master) from the
    settings module; a secret every line would hold stops it first (check_secrets_spare_every_line: `migrate` wrote
    its lines with the service's environment as [REDACTED], trial AA). Return the lines' redactor."""
    config = settings_config(settings_module)
    secrets = load_clients(config).secrets
    check_secrets_spare_every_line(config, secrets)
    return configure_logging(config, secrets=secrets)


def without_request_bytes(record):
    """Keep record, gunicorn's, with its NoMoreData arguments named alone: its text quotes the bytes of a request that
    ended unfinished (gunicorn's DEBUG "Ignored premature client disconnection. No more data after: b'...
    Authorization: Bearer ...'"), a credential no Redactor may know (trial AN)."""
    if isinstance(record.args, tuple) and any(isinstance(arg, NoMoreData) for arg in record.args):
        record.args = tuple(f'NoMoreData {UNQUOTED}' if isinstance(arg, NoMoreData) else arg for arg in record.args)
    return True


class GunicornLogger(glogging.Logger):
    """gunicorn's logger with its lines (master and workers) written as ECS JSON by the root logger's handlers,
    which gunicorn.conf.py installs with configure_process_logging."""

    def setup(self, cfg):
        """Let gunicorn set its levels and handlers, then send its error log through the root logger's instead."""
        before = set(self.error_log.handlers)
        super().setup(cfg)
        # The handlers gunicorn's setup added are its own (stderr, or the errorlog file).
        for handler in [handler for handler in self.error_log.handlers if handler not in before]:
            self.error_log.removeHandler(handler)
            handler.close()
        self.error_log.propagate = True
        self.error_log.addFilter(without_request_bytes)
