"""Fields modules share: bigint ids and exact decimals, refused with a 422 before any SQL runs."""
from decimal import Decimal

from marshmallow import ValidationError, fields, validate

BIGINT_MIN, BIGINT_MAX = -2 ** 63, 2 ** 63 - 1


def bigint(**options):
    """Return a strictly integer field within PostgreSQL's bigint range (one past it would compare as numeric)."""
    return fields.Integer(strict=True, validate=validate.Range(min=BIGINT_MIN, max=BIGINT_MAX), **options)


def bigint_id(**options):
    """Return a strictly integer id field of a bigserial column: 1 to the largest bigint."""
    return fields.Integer(strict=True, validate=validate.Range(min=1, max=BIGINT_MAX), **options)


def at_most_places(places):
    """Return a validator refusing a Decimal with more than places digits after the point, however it was spelt."""
    def validate_places(value):
        if isinstance(value, Decimal) and value.is_finite() and value.as_tuple().exponent < -places:
            raise ValidationError(f'Must have at most {places} decimal places.')
    return validate_places


def exact_decimal(places, validators=(), **options):
    """Return a Decimal field that refuses extra digits instead of rounding them away as places= would."""
    return fields.Decimal(validate=[at_most_places(places), *validators], **options)
