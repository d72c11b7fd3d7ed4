"""The database layer: pools per named database, units of work, the Db helper and the session seams.

What modules import from here (docs/modules.md): DEFAULT, Db, connection, transactional, json_parameter.
"""
import importlib

from lib.db.helpers import Db
from lib.db.pool import Pool, PoolTimeout
from lib.db.session import PooledConnection, configure_with, reset_with, session_settings, startup_options
from lib.db.types import json_parameter, with_types
from lib.db.unit import Lease, LeasedStream, connection, transactional
from lib.db.waiting import connect_timeout_of
from lib.errors import ImproperlyConfigured, import_failure

DEFAULT = 'default'

__all__ = ['DEFAULT', 'Db', 'Lease', 'LeasedStream', 'Pool', 'PoolTimeout', 'connection', 'json_parameter',
           'make_pools', 'transactional']


def session_hook(config, name):
    """Return config's DB_CONFIGURE or DB_RESET (name): None, the callable itself, or the function its
    'package.module:function' path names, imported now; raise ImproperlyConfigured, in one line, for a path that
    names none."""
    value = config.get(name)
    if value is None or callable(value):
        return value
    module_name, _, attribute = str(value).partition(':')
    if not module_name or not attribute:
        raise ImproperlyConfigured(f'{name} must name a function as package.module:function, not {value!r}')
    try:
        function = getattr(importlib.import_module(module_name), attribute)
    except BaseException as exc:  # sys.exit() at import would end the start with no word
        raise ImproperlyConfigured(f'{name}: {value} cannot be imported ({import_failure(exc)})') from None
    if not callable(function):
        raise ImproperlyConfigured(f'{name}: {value} is not a function')
    return function


def make_pools(config, configure=None, reset=None):
    """Build one pool per configured database; configure and reset default to the session settings' own.

    Whatever configure does, the pool then registers the types (lib/db/types.py): a custom one cannot lose them.
    The settings also go as startup options, which makes them the values RESET ALL returns to (the default reset
    is then DISCARD ALL alone, lib/db/session.py).
    """
    settings = session_settings(config)
    # application_name also as its own parameter: pgbouncer, which drops options, passes that one on.
    connect_kwargs = dict(application_name=settings['application_name'], connection_factory=PooledConnection)
    return {name: Pool(dsn, config['DB_POOL_MAX'], config['DB_POOL_TIMEOUT_MS'],
                       configure=with_types(configure or configure_with(settings)),
                       reset=reset or reset_with(settings), options=startup_options(settings, dsn),
                       connect_timeout=connect_timeout_of(dsn, config['DB_CONNECT_TIMEOUT']), **connect_kwargs)
            for name, dsn in config['DATABASES'].items()}
