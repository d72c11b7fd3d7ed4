"""What a request's handlers leave in its WSGI environ for the access line, which is written after Flask is done."""
from flask import request

ROUTE_KEY = 'dbapi.route'
CLIENT_KEY = 'dbapi.client'
ERROR_KEY = 'dbapi.error'


def remember(key, value):
    """Keep value in the current request's environ under key, for the access line."""
    request.environ[key] = value
