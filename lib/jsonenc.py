"""The JSON type registry and the JSON provider: one place says how each Python type becomes JSON.

Responses, streamed exports and log lines all encode through `dumps_bytes`, so a type taught here once
(`register_json_type`) is written the same way everywhere. orjson writes the types it knows itself
(str, int, float, bool, None, dict, list, tuple, datetime, date, time, UUID, dataclasses, enums):
datetimes as RFC 3339, NaN and Infinity as null. The registry covers the rest, as docs/contract.md
section 5 says.
"""
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

# Python type -> function returning a value orjson can write. Looked up along the value's class hierarchy.
JSON_TYPES = {}


def register_json_type(python_type, encode):
    """Teach every JSON output (responses, streams, log lines) to write python_type as encode(value) does."""
    JSON_TYPES[python_type] = encode
    return encode


def encode_default(value):
    """Encode a value orjson does not know, with the registry's entry for its type; TypeError when none."""
    for kind in type(value).__mro__:
        encode = JSON_TYPES.get(kind)
        if encode is not None:
            return encode(value)
    raise TypeError(f'{type(value).__name__} is not JSON serialisable')


def base64_text(value):
    """Return bytes as standard base64 text."""
    return base64.b64encode(value).decode('ascii')


register_json_type(decimal.Decimal, str)  # exact, as a string: "10.50"
register_json_type(bytes, base64_text)
register_json_type(bytearray, base64_text)
register_json_type(memoryview, base64_text)
register_json_type(datetime.timedelta, datetime.timedelta.total_seconds)
register_json_type(set, list)
register_json_type(frozenset, list)


def plain(value):
    """Rebuild value with only plain JSON types, for the rare cases orjson refuses (integers past 64 bits)."""
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
    """Encode value as UTF-8 JSON bytes; TypeError for a value of a type the registry does not know."""
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
    """Flask's JSON provider (app.json, jsonify) on the same encoder as every other output."""

    def dumps(self, obj, **kwargs):
        """Encode obj as a JSON string."""
        return dumps_bytes(obj).decode()

    def loads(self, s, **kwargs):
        """Decode a JSON document."""
        return orjson.loads(s)
