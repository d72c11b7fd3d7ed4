"""What a request's handlers leave in its WSGI environ for the access line, which is written after Flask is done."""
from flask import request

ROUTE_KEY = 'dbapi.route'
CLIENT_KEY = 'dbapi.client'
ERROR_KEY = 'dbapi.error'
# Set by lib/http/disconnect.py when the client went away while its query ran: the access line says 499.
GONE_KEY = 'dbapi.client_gone'
# Set when a stopping worker cancelled the request's query just before its graceful timeout ended.
STOPPING_KEY = 'dbapi.stopping'


def remember(key, value):
    """Keep value in the current request's environ under key, for the access line."""
    request.environ[key] = value
