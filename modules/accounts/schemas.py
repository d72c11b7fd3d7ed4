"""Bodies of the accounts module."""
from marshmallow import Schema, ValidationError, fields, validate, validates_schema


class Amount(fields.Decimal):
    """A positive amount of money with at most two decimal places, from a string or a number."""

    def _deserialize(self, value, attr, data, **kwargs):
        amount = super()._deserialize(value, attr, data, **kwargs)
        if not amount.is_finite() or amount <= 0:
            raise ValidationError('Must be a positive amount.')
        if amount.as_tuple().exponent < -2:
            raise ValidationError('Must have at most 2 decimal places.')
        return amount


def account_id():
    """Return a required, strictly integer account id field."""
    return fields.Integer(required=True, strict=True, validate=validate.Range(min=1))


class NewAccount(Schema):
    """The owner of a new account."""

    owner = fields.String(required=True, validate=validate.Length(min=1, max=200))


class AccountRef(Schema):
    """One account."""

    account_id = account_id()


class Movement(AccountRef):
    """Money into or out of one account."""

    amount = Amount(required=True)


class Transfer(Schema):
    """Money from one account to another."""

    from_id = account_id()
    to_id = account_id()
    amount = Amount(required=True)

    @validates_schema
    def distinct_accounts(self, data, **kwargs):
        """Refuse a transfer from an account to itself."""
        if data.get('from_id') == data.get('to_id'):
            raise ValidationError('Must differ from from_id.', 'to_id')
