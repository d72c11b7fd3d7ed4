"""Bodies of the users module."""
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from lib.fields import BIGINT_MAX, bigint_id


def email_field(**options):
    """Return an email field of at most 320 characters."""
    return fields.Email(validate=validate.Length(max=320), **options)


def name_field(**options):
    """Return a name field of 1 to 200 characters."""
    return fields.String(validate=validate.Length(min=1, max=200), **options)


class NewUser(Schema):
    """An email and a name."""

    email = email_field(required=True)
    name = name_field(required=True)


class UserId(Schema):
    """One user by id."""

    id = bigint_id(required=True)


class UserChange(UserId):
    """A user id with the fields to change."""

    email = email_field()
    name = name_field()

    @validates_schema
    def require_a_change(self, data, **kwargs):
        """Refuse a change that changes nothing."""
        if 'email' not in data and 'name' not in data:
            raise ValidationError('Give email, name or both.', '_schema')


def from_the_start(after_id):
    """Read a null after_id, a last page's next_after_id sent back, as 0: the first page (contract section 8)."""
    return 0 if after_id is None else after_id


class Page(Schema):
    """A keyset page: up to limit users with an id above after_id (0, left out or null: from the start)."""

    limit = fields.Integer(strict=True, load_default=100, validate=validate.Range(min=1, max=1000))
    after_id = fields.Integer(strict=True, load_default=0, allow_none=True, pre_load=from_the_start,
                              validate=validate.Range(min=0, max=BIGINT_MAX))


class Nothing(Schema):
    """An empty body."""
