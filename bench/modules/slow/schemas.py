"""Bodies of the slow module."""
from marshmallow import Schema, fields, validate

# Long enough for the bench's 1 s calls, well under the gateway's statement timeout.
MAX_SECONDS = 10


class Sleep(Schema):
    """How long to hold the connection."""

    seconds = fields.Float(required=True, validate=validate.Range(min=0, max=MAX_SECONDS))
