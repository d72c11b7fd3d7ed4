"""Bodies of the example module."""
from marshmallow import Schema, fields


class Foo(Schema):
    """A name and, optionally, an email."""

    name = fields.String(required=True)
    email = fields.Email(load_default=None)


class Bar(Schema):
    """A person to upsert by name."""

    name = fields.String(required=True)
    email = fields.Email(required=True)
