"""Fields modules share: bigint ids, exact decimals and bytea as base64, refused with a 422 before any SQL runs."""
import base64
import binascii
import re
from decimal import Decimal

from marshmallow import ValidationError, fields, validate

from lib.jsonenc import NUMERIC_MAX_DIGITS_AFTER_POINT, NUMERIC_MAX_DIGITS_BEFORE_POINT

BIGINT_MIN, BIGINT_MAX = -2 ** 63, 2 ** 63 - 1
# A decimal as people write one: ASCII digits, optionally a leading minus and a fraction (at_most_places counts it).
PLAIN_DECIMAL = re.compile(r'-?[0-9]+(\.[0-9]+)?')


def bigint(**options):
    """Return a strictly integer field within PostgreSQL's bigint range (one past it would compare as numeric)."""
    return fields.Integer(strict=True, validate=validate.Range(min=BIGINT_MIN, max=BIGINT_MAX), **options)


def bigint_id(**options):
    """Return a strictly integer id field of a bigserial column: 1 to the largest bigint."""
    return fields.Integer(strict=True, validate=validate.Range(min=1, max=BIGINT_MAX), **options)


def places_needed(value):
    """Return how many digits after the point a finite Decimal needs: trailing zeros need none (1.500 needs 1)."""
    _, digits, exponent = value.as_tuple()
    significant = ''.join(map(str, digits)).rstrip('0')
    if not significant:
        return 0
    return max(-(exponent + len(digits) - len(significant)), 0)


def at_most_places(places):
    """Return a validator refusing a Decimal that needs more than places digits after the point, as a number or a
    string alike; trailing zeros are no digits it needs (1.000 is 1.00), so a serializer's padding is no error."""
    def validate_places(value):
        if isinstance(value, Decimal) and value.is_finite() and places_needed(value) > places:
            raise ValidationError(f'Must have at most {places} decimal places.')
    return validate_places


def plain_decimal_text(places):
    """Return a pre_load refusing a string that is not a plain decimal (PLAIN_DECIMAL) with a ValidationError.

    Decimal() also reads '1_000', '١٢', '１', ' 1', '+1', '1e3' and 'NaN'; a money API must not. Nor may it take
    more digits than numeric holds, zeros or not (past_numeric). Anything but a string passes unchanged: a JSON
    number comes from the body parser as an exact int or ExactNumber already.
    """
    example = f'{Decimal("12.5"):.{places}f}'
    message = f'Not a valid number: use digits with at most {places} decimal places, such as "{example}".'

    def refuse_unplain(value):
        if isinstance(value, str) and (not PLAIN_DECIMAL.fullmatch(value) or past_numeric(value)):
            raise ValidationError(message)
        return value
    return refuse_unplain


def past_numeric(text):
    """Tell whether a plain decimal string has more digits than PostgreSQL numeric holds, zeros too: 131072 before
    its point or 16383 after it, the bounds a JSON number of the body has (lib/jsonenc.py)."""
    whole, _, fraction = text.lstrip('-').partition('.')
    return len(whole) > NUMERIC_MAX_DIGITS_BEFORE_POINT or len(fraction) > NUMERIC_MAX_DIGITS_AFTER_POINT


def exact_decimal(places, validators=(), validate=None, **options):
    """Return a Decimal field of a plain decimal string or a JSON number, refusing extra digits instead of rounding;
    validate (one validator or a list, as marshmallow's fields take it) and validators run after the places check."""
    extra = [] if validate is None else [validate] if callable(validate) else list(validate)
    return fields.Decimal(pre_load=plain_decimal_text(places),
                          validate=[at_most_places(places), *validators, *extra], **options)


BASE64_INVALID = 'Not valid base64 text.'


def decode_base64(text):
    """Return the bytes of standard base64 text (RFC 4648 section 4, padded, its pad bits zero as section 3.5 asks
    of an encoder: the one text of those bytes, which is what dbapi writes them back as); ValidationError for anything
    else ("AB==" decodes to the byte "AA==" stands for)."""
    if not isinstance(text, str):
        raise ValidationError(BASE64_INVALID)
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):  # ValueError: a character outside ASCII
        raise ValidationError(BASE64_INVALID) from None
    if base64.b64encode(decoded) != text.encode():
        raise ValidationError(BASE64_INVALID)
    return decoded


def base64_bytes(**options):
    """Return a field for a bytea column: standard base64 text, the form dbapi writes bytea in, loaded as bytes
    (psycopg2 sends them as bytea); anything else, non-zero pad bits included, is a 422 "Not valid base64 text."."""
    return fields.Function(deserialize=decode_base64, **options)
