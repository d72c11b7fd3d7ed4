"""The application factory: gunicorn runs "app:create_app()"; nothing runs at import."""
from dataclasses import dataclass, field

from flask import Flask
from flask.sessions import NullSession, SessionInterface
from flask_compress import Compress

import settings
from lib.auth import load_clients
from lib.db import make_pools
from lib.db.embedded import start_embedded
from lib.errors import handle_error
from lib.http.health import ops
from lib.http.requestid import RequestIds
from lib.jsonenc import OrjsonProvider
from lib.logs import configure_logging, install_access_log
from lib.logs.metrics import RequestMetrics, metrics_endpoint
from lib.modules import mount_modules
from lib.http.proxies import TrustedProxies
from lib.http.routing import FixedRulesFirst, fixed_rules

COMPRESSED_TYPES = ['application/json', 'application/problem+json']
COMPRESS_MIN_SIZE = 500


@dataclass
class Gateway:
    """What dbapi keeps per app: the pools, the token table, the request metrics and the mounted routes."""

    pools: dict
    clients: dict
    metrics: RequestMetrics
    routes: list = field(default_factory=list)


class NoSessions(SessionInterface):
    """dbapi keeps no sessions: every request shares one empty, read-only session, and nothing is saved."""

    null_session = NullSession()

    def open_session(self, app, request):
        """Return the shared empty session."""
        return self.null_session

    def save_session(self, app, session, response):
        """Save nothing."""


class GatewayFlask(Flask):
    """Flask, less per-request work dbapi has no use for: the coroutine check on every view and hook call
    (dbapi's are plain functions), the cookie session, and host parsing before each route lookup."""

    session_interface = NoSessions()
    fixed_rule_table = None

    def ensure_sync(self, func):
        """Return func as it is; dbapi registers no async views or hooks."""
        return func

    def create_url_adapter(self, request):
        """Match a request's fixed path in one lookup, skipping werkzeug's host parsing, when nothing needs hosts.

        werkzeug's bind_to_environ and matcher cost about 90k instructions, 15% of a users/get; dbapi's routes
        are fixed paths and it matches no host or subdomain. With SERVER_NAME, TRUSTED_HOSTS or host or
        subdomain matching set, Flask binds as usual.
        """
        config = self.config
        if request is None or config['SERVER_NAME'] or config['TRUSTED_HOSTS'] is not None \
                or self.url_map.host_matching or self.subdomain_matching:
            return super().create_url_adapter(request)
        if self.fixed_rule_table is None:  # routes cannot change once the first request came
            self.fixed_rule_table = fixed_rules(self.url_map)
        return FixedRulesFirst(self.fixed_rule_table, self.url_map, request)


def load_config(app, overrides):
    """Fill app.config from settings.py, then overrides."""
    app.config.from_object(settings)
    app.config.update(overrides or {})
    app.config.update(COMPRESS_MIMETYPES=COMPRESSED_TYPES, COMPRESS_MIN_SIZE=COMPRESS_MIN_SIZE,
                      COMPRESS_ALGORITHM=['br', 'gzip'], COMPRESS_ALGORITHM_STREAMING=['br', 'deflate'])


def compress_every_status(app):
    """Compress bodies of 500 bytes or more whatever their status; flask-compress alone skips errors."""
    compress = Compress()
    app.config['COMPRESS_REGISTER'] = False
    compress.init_app(app)

    def compress_response(response):
        if not response.is_streamed and (response.content_length or 0) < COMPRESS_MIN_SIZE:
            # Too small to compress (RequestIds adds the Vary header): skip flask-compress's parsing.
            return response
        status = response.status_code
        response.status_code = 200
        try:
            return compress.after_request(response)
        finally:
            response.status_code = status
    app.after_request(compress_response)


def resolve_databases(config):
    """Point an unconfigured default database at the embedded PostgreSQL (local and test only)."""
    if config['DATABASES'].get('default') is None:
        config['DATABASES'] = {**config['DATABASES'],
                               'default': start_embedded(config['EMBEDDED_DB_DIR'], stop_at_exit=False)}


def create_app(overrides=None):
    """Build the dbapi Flask app from settings and optional config overrides."""
    app = GatewayFlask(__name__, static_folder=None)
    load_config(app, overrides)
    configure_logging(app.config)
    resolve_databases(app.config)
    app.json = OrjsonProvider(app)
    pools = make_pools(app.config)
    gateway = Gateway(pools, load_clients(app.config), RequestMetrics(pools))
    app.extensions['dbapi'] = gateway
    app.register_error_handler(Exception, handle_error)
    app.register_blueprint(ops)
    app.register_blueprint(metrics_endpoint)
    gateway.routes = mount_modules(app, app.config['MODULE_PACKAGES'], gateway.clients)
    compress_every_status(app)
    install_access_log(app, observers=[gateway.metrics])
    app.wsgi_app = RequestIds(app.wsgi_app)
    if app.config['TRUSTED_PROXY_HOPS']:
        app.wsgi_app = TrustedProxies(app.wsgi_app, app.config['TRUSTED_PROXY_HOPS'])
    return app
