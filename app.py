"""The application factory: gunicorn runs "app:create_app()"; nothing runs at import.

How a request flows and where each concern lives: docs/architecture.md.
"""
from dataclasses import dataclass, field
from functools import partial

from flask import Flask, request
from flask.sessions import NullSession, SessionInterface
from flask_compress import Compress
from werkzeug.exceptions import NotFound

import settings
from lib.auth import holds_a_token, identify_quietly, learn_shown_token, load_clients
from lib.db import make_pools, session_hook
from lib.db.embedded import start_embedded
from lib.errors import ERROR_TRANSLATORS, handle_error
from lib.http.admission import install_admission
from lib.http.body import BodyOnlyRequest
from lib.http.headers import RESPONSE_HEADERS, ResponseHeaders, acceptable_codings
from lib.http.health import ops
from lib.http.proxies import TrustedProxies
from lib.http.requestid import RequestIds
from lib.http.routing import FixedRulesFirst, fixed_rules
from lib.jsonenc import JSON_TYPES, OrjsonProvider
from lib.logs import configure_logging, install_access_log
from lib.logs.metrics import RequestMetrics, metrics_endpoint
from lib.logs.secrets import Redactor, configured_secrets
from lib.modules import mount_modules

COMPRESSED_TYPES = ['application/json', 'application/problem+json']
COMPRESS_MIN_SIZE = 500
COMPRESS_ALGORITHMS = ['br', 'gzip']


@dataclass
class Gateway:
    """dbapi's extension points, one place per concern (docs/architecture.md), and what it keeps per app.

    - configure(conn) / reset(conn): a new connection's session setup, and what returns a connection to it
      (app config DB_CONFIGURE / DB_RESET; the defaults apply and restore the session settings).
    - json_types: {Python type: encode(value)}, how responses, streams and log lines write a type.
    - error_translators: {exception class: translate(exc) -> ApiError or None}, beside the SQLSTATE table.
    - response_headers: [step(environ, headers) -> [(name, value)]], the one header step.
    """

    pools: dict
    clients: dict
    metrics: RequestMetrics
    routes: list = field(default_factory=list)
    json_types: dict = field(default_factory=lambda: JSON_TYPES)
    error_translators: dict = field(default_factory=lambda: ERROR_TRANSLATORS)
    response_headers: list = field(default_factory=lambda: RESPONSE_HEADERS)
    # redact(json_text) -> json_text without the configured tokens: problem bodies (log lines have a redactor of their
    # own, which knows the databases' DSNs and passwords too). Not the passwords: a [REDACTED] where a caller's text
    # held one confirmed a guess of the database's password (trial BF: a 404's name, an X-Request-ID; trial BG: a
    # body's key, with any token).
    redact: Redactor = field(default_factory=lambda: Redactor([]))

    def caller(self):
        """Return the client the current request's bearer token names, or None; never an error."""
        return identify_quietly(self.clients)


class NoSessions(SessionInterface):
    """dbapi keeps no sessions: every request shares one empty, read-only session, and nothing is saved."""

    null_session = NullSession()

    def open_session(self, app, request):
        """Return the shared empty session."""
        return self.null_session

    def save_session(self, app, session, response):
        """Save nothing."""


# The host name the URL map is bound to for every request (GatewayFlask.bind_url_map).
ROUTING_HOST = 'dbapi'


class GatewayFlask(Flask):
    """Flask, less per-request work dbapi has no use for, through Flask's public overridable methods:
    the coroutine check on every view and hook call (dbapi's are plain functions), the cookie session,
    and werkzeug's matcher for fixed paths. With FAST_PATHS off, Flask's stock behaviour is kept, but for the URL map
    bound without the Host header (bind_url_map), as it is with them on."""

    fixed_rule_table = None
    request_class = BodyOnlyRequest

    def ensure_sync(self, func):
        """Return func as it is when fast paths are on; dbapi registers no async views or hooks."""
        return func if self.config['FAST_PATHS'] else super().ensure_sync(func)

    def create_url_adapter(self, request):
        """Match a request's fixed path in one dict lookup; the URL map is bound only when more is needed.

        A path with a doubled slash anywhere is a 404 here, before werkzeug, which drops leading slashes from
        request.path (`//users/get` would run users/get) and merges the others with a redirect. The map is bound to
        the request's path and method, never its Host (bind_url_map)."""
        if request is not None and '//' in request.environ.get('PATH_INFO', ''):
            raise NotFound()
        config = self.config
        if request is None or config['SERVER_NAME'] or config['TRUSTED_HOSTS'] is not None \
                or self.url_map.host_matching or self.subdomain_matching:
            return super().create_url_adapter(request)
        if not config['FAST_PATHS']:
            return self.bind_url_map(request)
        if self.fixed_rule_table is None:  # routes cannot change once the first request came
            self.fixed_rule_table = fixed_rules(self.url_map)
        return FixedRulesFirst(self.fixed_rule_table, request.path, request.method,
                               lambda: self.bind_url_map(request))

    def bind_url_map(self, request):
        """Return werkzeug's adapter of the URL map for request, bound (werkzeug's public Map.bind_to_environ) to
        ROUTING_HOST instead of its Host header. dbapi routes by path and method and builds no URL; werkzeug
        refuses, as a 400, a Host it cannot IDNA-encode (an empty label, one over 63 characters), which nginx
        passes on, so an unknown path, a 405 or a trailing slash depended on the Host."""
        return self.url_map.bind_to_environ(request.environ, server_name=ROUTING_HOST,
                                            subdomain=self.url_map.default_subdomain or '')


def load_config(app, overrides):
    """Fill app.config from settings.py, then overrides."""
    app.config.from_object(settings)
    app.config.update(overrides or {})
    app.config.update(COMPRESS_MIMETYPES=COMPRESSED_TYPES, COMPRESS_MIN_SIZE=COMPRESS_MIN_SIZE,
                      COMPRESS_ALGORITHM=COMPRESS_ALGORITHMS, COMPRESS_ALGORITHM_STREAMING=COMPRESS_ALGORITHMS)


def drop_refused_codings():
    """Take the codings the client refuses (q=0) out of Accept-Encoding before flask-compress reads it."""
    header = request.environ.get('HTTP_ACCEPT_ENCODING')
    if header and (';' in header or '*' in header):  # a parameter (q) or a wildcard; a bare list is taken as it is
        request.environ['HTTP_ACCEPT_ENCODING'] = acceptable_codings(header, COMPRESS_ALGORITHMS)


def install_compression(app):
    """Compress successful JSON bodies of 500 bytes or more with flask-compress, never in a coding the client
    refuses; small ones skip it when fast."""
    compress = Compress()
    app.config['COMPRESS_REGISTER'] = not app.config['FAST_PATHS']
    compress.init_app(app)
    if not app.config['FAST_PATHS']:
        app.before_request(drop_refused_codings)
        return

    def compress_large(response):
        # flask-compress parses Accept-Encoding for every answer; a small body it would leave as it is.
        if not response.is_streamed and (response.content_length or 0) < COMPRESS_MIN_SIZE:
            return response
        drop_refused_codings()
        return compress.after_request(response)
    app.after_request(compress_large)


def resolve_databases(config):
    """Point an unconfigured default database at the embedded PostgreSQL (local and test only)."""
    if config['DATABASES'].get('default') is None:
        config['DATABASES'] = {**config['DATABASES'],
                               'default': start_embedded(config['EMBEDDED_DB_DIR'], stop_at_exit=False)}


def install_middleware(app, gateway):
    """Wrap the WSGI app, innermost first: admission, access line, header step, request id, trusted proxies."""
    install_admission(app)
    install_access_log(app, observers=[gateway.metrics])
    app.wsgi_app = ResponseHeaders(app.wsgi_app, gateway.response_headers)
    app.wsgi_app = RequestIds(app.wsgi_app, partial(holds_a_token, gateway.redact))
    if app.config['TRUSTED_PROXY_HOPS']:
        app.wsgi_app = TrustedProxies(app.wsgi_app, app.config['TRUSTED_PROXY_HOPS'])


def create_app(overrides=None):
    """Build the dbapi Flask app from settings and optional config overrides."""
    app = GatewayFlask(__name__, static_folder=None)
    # A doubled slash is a path of its own (404), never a 308 to the merged one: a redirect would be HTML, and
    # built from the caller's Host header.
    app.url_map.merge_slashes = False
    app.session_interface = NoSessions()
    load_config(app, overrides)
    clients = load_clients(app.config)
    lines_redactor = configure_logging(app.config, secrets=clients.secrets)
    resolve_databases(app.config)
    app.json = OrjsonProvider(app)
    pools = make_pools(app.config, session_hook(app.config, 'DB_CONFIGURE'), session_hook(app.config, 'DB_RESET'))
    gateway = Gateway(pools, clients, RequestMetrics(pools, fast_paths=app.config['FAST_PATHS']),
                      redact=Redactor(configured_secrets({}, clients.secrets)))
    app.extensions['dbapi'] = gateway
    clients.learners.extend([lines_redactor.learn_token, gateway.redact.learn_token])
    app.register_error_handler(Exception, handle_error)
    app.register_blueprint(ops)
    app.register_blueprint(metrics_endpoint)
    gateway.routes = mount_modules(app, app.config['MODULE_PACKAGES'], gateway.clients)
    install_compression(app)
    app.before_request(partial(learn_shown_token, gateway.clients))  # first: before any answer is decided
    install_middleware(app, gateway)
    return app
