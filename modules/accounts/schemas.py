"""Bodies of the accounts module."""
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from lib.fields import bigint_id


def positive_with_two_places(amount):
    """Refuse an amount that is not a positive, finite number with at most two decimal places."""
    if not amount.is_finite() or amount <= 0:
        raise ValidationError('Must be a positive amount.')
    if amount.as_tuple().exponent < -2:
        raise ValidationError('Must have at most 2 decimal places.')


def amount_field():
    """Return a required amount of money field: positive, at most two decimal places, from a string or a number."""
    # One validator, not two: a negative amount with three places gets one message, as it always has.
    return fields.Decimal(required=True, validate=positive_with_two_places)


def account_id():
    """Return a required account id field: an integer from 1 to the largest bigint."""
    return bigint_id(required=True)


class NewAccount(Schema):
    """The owner of a new account."""

    owner = fields.String(required=True, validate=validate.Length(min=1, max=200))


class AccountRef(Schema):
    """One account."""

    account_id = account_id()


class Movement(AccountRef):
    """Money into or out of one account."""

    amount = amount_field()


class Transfer(Schema):
    """Money from one account to another."""

    from_id = account_id()
    to_id = account_id()
    amount = amount_field()

    @validates_schema
    def distinct_accounts(self, data, **kwargs):
        """Refuse a transfer from an account to itself."""
        if data.get('from_id') == data.get('to_id'):
            raise ValidationError('Must differ from from_id.', 'to_id')
