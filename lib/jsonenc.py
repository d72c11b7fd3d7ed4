"""The JSON provider: ISO 8601 dates, exact decimals, base64 bytes, and always valid RFC 8259 JSON."""
import base64
import datetime
import decimal
import json
import math

import orjson
from flask import Response
from flask.json.provider import JSONProvider

ORJSON_OPTIONS = orjson.OPT_NON_STR_KEYS
JSON_MIMETYPE = 'application/json'


def encode_default(value):
    """Encode the values orjson does not know natively, as CONTRACT section 5 says."""
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(value).decode('ascii')
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    if isinstance(value, (set, frozenset)):
        return list(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def plain(value):
    """Rebuild value with only plain JSON types, for the rare cases orjson refuses (huge ints)."""
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    # orjson itself renders dates, UUIDs and the like as JSON strings.
    return plain(orjson.loads(orjson.dumps(value, default=encode_default)))


def dumps_bytes(value):
    """Encode value as UTF-8 JSON bytes."""
    try:
        return orjson.dumps(value, default=encode_default, option=ORJSON_OPTIONS)
    except TypeError as exc:
        if 'Integer exceeds 64-bit range' not in str(exc):
            raise
        return json.dumps(plain(value), allow_nan=False, separators=(',', ':')).encode()


def json_array_chunks(batches):
    """Yield one JSON array, in byte chunks, from an iterable of batches (lists of values) or single values."""
    yield b'['
    separator = b''
    for batch in batches:
        items = batch if isinstance(batch, list) else [batch]
        if items:
            yield separator + dumps_bytes(items)[1:-1]
            separator = b','
    yield b']'


def json_response(value, status=200, mimetype=JSON_MIMETYPE):
    """Build a response whose body is value encoded as JSON."""
    return Response(dumps_bytes(value), status=status, mimetype=mimetype)


class OrjsonProvider(JSONProvider):
    """Flask JSON provider backed by orjson with the contract's encodings."""

    def dumps(self, obj, **kwargs):
        """Encode obj as a JSON string."""
        return dumps_bytes(obj).decode()

    def loads(self, s, **kwargs):
        """Decode a JSON document."""
        return orjson.loads(s)

    def response(self, *args, **kwargs):
        """Build a JSON response the way jsonify does."""
        return json_response(self._prepare_response_obj(args, kwargs))
