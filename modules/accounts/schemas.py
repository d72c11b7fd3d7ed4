"""Bodies of the accounts module."""
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from lib.fields import at_most_places, bigint_id, plain_decimal_text

at_most_two_places = at_most_places(2)


def positive_with_two_places(amount):
    """Refuse an amount that is not a positive, finite number with at most two decimal places."""
    if not amount.is_finite() or amount <= 0:
        raise ValidationError('Must be a positive amount.')
    at_most_two_places(amount)


def amount_field():
    """Return a required amount of money field: positive, at most two decimal places, a JSON number or a string.

    The string is plain (lib/fields.py PLAIN_DECIMAL: "12.50", not "1_000", " 1" or "+1"); "-1" passes it only
    to be told it is not positive. Anything else is a 422 naming the field (contract section 8).
    """
    # One validator, not two: a negative amount with three places gets one message, as it always has.
    return fields.Decimal(required=True, pre_load=plain_decimal_text(2), validate=positive_with_two_places)


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
