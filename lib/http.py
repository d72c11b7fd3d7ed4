"""The one JSON body parser of module actions."""
import orjson
from flask import request
from werkzeug.exceptions import UnsupportedMediaType

from .errors import BadRequest


def read_json_body():
    """Parse the request body once: empty means {}, anything but JSON is refused."""
    data = request.get_data(cache=False)
    if not data.strip():
        return {}
    if request.mimetype != 'application/json':
        raise UnsupportedMediaType()
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        raise BadRequest('The request body is not valid JSON.') from None
