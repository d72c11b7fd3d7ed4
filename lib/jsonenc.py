"""The JSON type registry and the JSON provider: one place says how each Python type becomes JSON.

Responses, streamed exports and log lines all encode through `dumps_bytes`, so a type taught here once
(`register_json_type`) is written the same way everywhere. orjson writes the types it knows itself
(str, int, float, bool, None, dict, list, tuple, UUID, dataclasses, enums), NaN and Infinity as null. The
registry covers the rest, as docs/contract.md section 5 says, dates, datetimes and times included (orjson's
OPT_PASSTHROUGH_DATETIME): orjson 3.13 writes a time's 10000-99999 microseconds with five digits (.10000 for
.010000) and rounds an offset's seconds away. What orjson refuses without asking the registry, integers past 64 bits
and dict keys that are no str, is rewritten exactly and written again (orjson_ready).

Numbers stay exact both ways: loads_exact reads a JSON number that is not an integer as an ExactNumber
(a Decimal), and an ExactNumber is written back as the very number, not as a string like a Decimal.
"""
import base64
import collections.abc
import dataclasses
import datetime
import decimal
import enum
import ipaddress
import json
import os
import re
import sys
import uuid

import orjson
from flask import Response
from flask.json.provider import JSONProvider

JSON_MIMETYPE = 'application/json'

# orjson's errors for an int it cannot write and for a dict key that is no str (orjson_ready names such keys itself,
# so that two keys written alike are found).
REFUSED_BY_ORJSON = ('Integer exceeds 64-bit range', 'Dict key must be str')
INT64_MIN, UINT64_MAX = -2 ** 63, 2 ** 64 - 1
ORJSON_RECURSION_LIMIT = 'Recursion limit reached'  # orjson's error past 254 levels of arrays and objects
# The digits a request body's numbers may take written out in full (1e-16383 is 16,384 of them): as many as the
# default MAX_CONTENT_LENGTH has bytes.
PLAIN_DIGITS_PER_BODY = 2 ** 20
# A number in plain notation this long or shorter has fewer digits than any integer text limit Python may be set to
# (sys.set_int_max_str_digits takes none lower) and than numeric holds after its point.
PLAIN_NUMBER_LENGTH = sys.int_info.str_digits_check_threshold
SURROGATE = re.compile('[\ud800-\udfff]')
# The escape of a surrogate, "\ud800": without one (or a surrogate itself), the parsed value holds none.
ESCAPED_SURROGATE = re.compile(r'\\u[dD][89a-fA-F]')

# Python type -> function returning a value orjson can write. Looked up along the value's class hierarchy.
JSON_TYPES = {}


# What orjson writes itself, subclasses included: it never asks the registry for them.
ORJSON_NATIVE_TYPES = (str, int, dict, list, enum.Enum, type(None))
# What orjson writes itself, but not a subclass of it (orjson 3.13: a float subclass such as numpy.float64, a UUID
# or tuple subclass, a named tuple), which it hands to the registry: the registry writes those (JSON_TYPES below).
ORJSON_EXACT_TYPES = (float, tuple, uuid.UUID)


def register_json_type(python_type, encode):
    """Teach every JSON output (responses, streams, log lines) to write python_type as encode(value) does: a value
    orjson writes, or RawJson(text) for JSON text written as it is (an exact number). An orjson.Fragment is refused
    (TypeError when written): orjson 3.13 overruns its buffer with one nested deep (RAW_MARK). TypeError for a type
    that has an encoder already (dbapi's are the contract's, docs/contract.md section 5: another would change every
    module's answers) or that orjson writes itself (ORJSON_NATIVE_TYPES, ORJSON_EXACT_TYPES but their subclasses, a
    dataclass: the entry would never be asked); a subclass of dbapi's types (a Decimal of your own) may have its
    own."""
    if python_type in JSON_TYPES:
        raise TypeError(f'{python_type.__name__} has a JSON encoder already (dbapi\'s types are written as '
                        'docs/contract.md section 5 says, for every module): register a type of your own')
    if issubclass(python_type, ORJSON_NATIVE_TYPES) or python_type in ORJSON_EXACT_TYPES or \
            dataclasses.is_dataclass(python_type):
        raise TypeError(f'{python_type.__name__} is written by orjson itself (a str, int, float, dict, list, tuple, '
                        'Enum, UUID or dataclass, or a subclass of a str, int, dict, list or Enum), which never asks '
                        'the registry: convert the value in the action')
    JSON_TYPES[python_type] = encode
    return encode


def encode_default(value):
    """Encode a value orjson does not know, with the registry's entry for its type, else as the JSON container it is
    (collection_as_container); TypeError when neither."""
    encode = registered_encoder(value)
    if encode is not None:
        return encode(value)
    container = collection_as_container(value)
    if container is None:
        raise TypeError(f'{type(value).__name__} is not JSON serialisable')
    return container


def registered_encoder(value):
    """Return the registry's encode function for value's type or its nearest base class, or None."""
    for kind in type(value).__mro__:
        encode = JSON_TYPES.get(kind)
        if encode is not None:
            return encode
    return None


# Collections that are texts or bytes, not arrays: orjson or the registry writes them.
NOT_ARRAYS = (str, bytes, bytearray, memoryview)
# What orjson_ready meets most and never rebuilds as a container.
LEAVES = (str, int, float, type(None))


def collection_as_container(value):
    """Return a mapping orjson does not write (MappingProxyType, a Mapping class) as a dict and any other collection
    (range, a dict's keys, values or items, a deque) as a list, or None for a value that is neither."""
    if isinstance(value, collections.abc.Mapping):
        return dict(value)
    if isinstance(value, collections.abc.Collection) and not isinstance(value, NOT_ARRAYS):
        return list(value)
    return None


def base64_text(value):
    """Return bytes as standard base64 text."""
    return base64.b64encode(value).decode('ascii')


class ExactNumber(decimal.Decimal):
    """A JSON number kept exact (0.1000000000000000000001, 1e400): a Decimal written back as that number."""

    __slots__ = ()  # no __dict__: a body's thousands of numbers are then no work for the garbage collector


# PostgreSQL numeric's range (its documentation, "Arbitrary Precision Numbers"): up to 131072 digits before the
# decimal point and up to 16383 after it.
NUMERIC_MAX_DIGITS_BEFORE_POINT, NUMERIC_MAX_DIGITS_AFTER_POINT = 131072, 16383


class RawJson:
    """A JSON number's exact text, written as it is (the registry's answer for ExactNumber and timedelta, and
    orjson_ready's for an integer past 64 bits): dumps_bytes swaps it in for a placeholder string (RawNumbers)."""

    __slots__ = ('text',)

    def __init__(self, text):
        self.text = text


# The placeholder of a RawJson while orjson writes a document, and how to find it in what orjson wrote. orjson's own
# way to write raw JSON, orjson.Fragment, reserves 32 bytes past it and then writes the ']' of the arrays it closes
# without reserving more: a Fragment nested deeper than about 70 arrays overran orjson's buffer (heap corruption,
# the worker aborted; orjson 3.13.0). A string gets room enough. The mark is random per process: no text a client or
# the database sends can spell it. Private-use characters, which orjson writes as they are, never escaped.
RAW_MARK, RAW_END = '\ue000' + os.urandom(8).hex(), '\ue001'
RAW_PLACEHOLDER = re.compile(b'"' + re.escape(RAW_MARK.encode()) + rb'(\d+)' + re.escape(RAW_END.encode()) + b'"')


class RawNumbers:
    """orjson's default for one document: the registry's encoding of each value orjson does not know, a RawJson
    written as a placeholder string whose text fill puts back."""

    __slots__ = ('texts',)

    def __init__(self):
        self.texts = []

    def __call__(self, value):
        encoded = value if isinstance(value, RawJson) else encode_default(value)
        if not isinstance(encoded, RawJson):
            if isinstance(encoded, orjson.Fragment):
                raise TypeError(f'The JSON encoder of {type(value).__name__} returned an orjson.Fragment, which orjson '
                                'overruns its buffer with when nested deep: return lib.jsonenc.RawJson(text)')
            return encoded
        self.texts.append(encoded.text.encode())
        return f'{RAW_MARK}{len(self.texts) - 1}{RAW_END}'

    def fill(self, written):
        """Return the bytes orjson wrote with each placeholder replaced by its number."""
        return RAW_PLACEHOLDER.sub(lambda match: self.texts[int(match[1])], written) if self.texts else written


def exact_number(value):
    """Return an ExactNumber as the JSON number it is, in plain notation as PostgreSQL writes numeric (1E-30 is
    0.000000000000000000000000000001 in to_jsonb), past numeric's range in exponent notation (decimal_text). One an
    action made NaN or infinite, which no JSON number spells (RFC 8259 section 6), is numeric's string of it, as a
    Decimal's: "NaN", "-Infinity" (trial AF: it was written bare, no JSON)."""
    return RawJson(decimal_text(value)) if value.is_finite() else numeric_text(value)


def decimal_text(value):
    """Return a Decimal as exact text in plain notation, as PostgreSQL writes numeric: "0.0000001". One past
    numeric's range, which only json text can hold, is written in exponent notation ("1E-999999999"), whose plain
    text could take gigabytes."""
    if value.is_finite() and not within_numeric_range(value):
        return str(value)
    return format(value, 'f')


def numeric_text(value):
    """Return a Decimal (not an ExactNumber, a JSON number written back as sent, -0 too) as PostgreSQL writes numeric
    (decimal_text): its one NaN for a signalling or signed one ("sNaN" is no numeric), and a zero without a sign
    ("-0.00" is "0.00": numeric has no negative zero; trial AD)."""
    if value.is_nan():
        return 'NaN'
    return decimal_text(value.copy_abs() if value.is_zero() and value.is_signed() else value)


def within_numeric_range(value):
    """Tell whether a finite Decimal's plain notation has no more digits before or after its point than PostgreSQL
    numeric holds."""
    return ((value.is_zero() or value.adjusted() < NUMERIC_MAX_DIGITS_BEFORE_POINT)  # a zero is "0" before it
            and -value.as_tuple().exponent <= NUMERIC_MAX_DIGITS_AFTER_POINT)


def seconds_of(microseconds):
    """Return a whole number of microseconds as an ExactNumber of seconds with no trailing zeros: 86400, 1.5."""
    return ExactNumber(decimal.Decimal(microseconds).scaleb(-6).normalize(decimal.Context(prec=40)))


def exact_seconds(value):
    """Return a timedelta as its exact number of seconds (a float would round past 2**53 microseconds)."""
    return RawJson(decimal_text(seconds_of((value.days * 86400 + value.seconds) * 1_000_000 + value.microseconds)))


def iso_text(value):
    """Return a date, datetime or time as ISO 8601 text, as to_jsonb writes one: a fraction in six digits, an offset
    with its seconds when it has any ("1959-12-31T23:15:30-00:44:30", "12:30:00.010000", "2026-11-21"). One whose
    offset holds a fraction of a second, which neither ISO 8601 nor PostgreSQL writes (Python's "+00:00:01.000005"
    was refused by PostgreSQL, trial BO), is the same instant in UTC (a time's wraps around midnight, as timetz's)."""
    offset = value.utcoffset() if isinstance(value, (datetime.datetime, datetime.time)) else None
    return (in_utc(value) if offset is not None and offset.microseconds else value).isoformat()


def in_utc(value):
    """Return an aware datetime or time as the same instant in UTC (a time's date taken as any day); ValueError for a
    datetime whose instant in UTC is past year 9999 or before year 1, which Python's datetime cannot hold (trial BT:
    "not JSON serializable")."""
    if isinstance(value, datetime.time):
        return datetime.datetime.combine(datetime.date(2000, 1, 1), value).astimezone(datetime.timezone.utc).timetz()
    try:
        return value.astimezone(datetime.timezone.utc)
    except OverflowError:
        raise ValueError(f'the datetime {value!r} has an offset with a fraction of a second, and its instant in UTC, '
                         'which it would be written as, is outside the years 1 to 9999 Python holds') from None


register_json_type(decimal.Decimal, numeric_text)  # exact, as a string: "10.50"
register_json_type(ExactNumber, exact_number)
register_json_type(bytes, base64_text)
register_json_type(bytearray, base64_text)
register_json_type(memoryview, base64_text)
register_json_type(datetime.timedelta, exact_seconds)
register_json_type(datetime.datetime, iso_text)
register_json_type(datetime.date, iso_text)
register_json_type(datetime.time, iso_text)
register_json_type(set, list)
register_json_type(frozenset, list)


def inet_text(value):
    """Return the text PostgreSQL writes for an ipaddress network (as a cidr's: with its prefix length), interface (as
    an inet's: with its prefix length unless it spans the whole address) or address, so that a value an action
    returns, or passes as a parameter, reads as the column holding it does."""
    if isinstance(value, (ipaddress.IPv4Network, ipaddress.IPv6Network)):
        return f'{address_text(value.network_address)}/{value.prefixlen}'
    if isinstance(value, (ipaddress.IPv4Interface, ipaddress.IPv6Interface)):
        prefix = value.network.prefixlen
        return address_text(value.ip) + ('' if prefix == value.max_prefixlen else f'/{prefix}')
    return address_text(value)


def address_text(address):
    """Return PostgreSQL's text of an ipaddress address (inet_net_ntop_ipv6 of its inet_net_ntop.c): Python's, but
    for the IPv6 addresses that hold an IPv4 one, whose last 32 bits PostgreSQL writes as a dotted quad, where Python
    3.11 writes hextets (PostgreSQL's "::ffff:1.2.3.4" and "::1.2.3.4", Python's "::ffff:102:304": trial BW)."""
    number = int(address)
    if address.version == 6 and number >> 32 == 0xffff:  # IPv4-mapped
        return f'::ffff:{ipaddress.IPv4Address(number & 0xffffffff)}'
    if address.version == 6 and number >> 32 == 0 and number >> 16:  # IPv4-compatible (::1 and ::ffff stay hextets)
        return f'::{ipaddress.IPv4Address(number)}'
    return str(address)


# An ipaddress address, interface or network as its text, as PostgreSQL writes an inet or cidr (trial BU: a 500).
for ip_type in (ipaddress.IPv4Address, ipaddress.IPv6Address, ipaddress.IPv4Network, ipaddress.IPv6Network):
    register_json_type(ip_type, inet_text)
# Asked only for subclasses (ORJSON_EXACT_TYPES), which register_json_type would refuse for the types themselves: a
# float or UUID subclass was a 500, "not JSON serializable" (trial BO). A tuple subclass is a collection.
# The base type's own methods: a subclass's __float__ or __str__ says something else (trial BT: `U2!`).
JSON_TYPES[float] = float.__float__
JSON_TYPES[uuid.UUID] = uuid.UUID.__str__


def orjson_ready(value):
    """Rebuild value with what orjson refuses outright made exact: big integers as numbers, and dates and times as
    their text (iso_text), which orjson would write itself as dict keys."""
    if isinstance(value, dict):
        return ready_object(value)
    if isinstance(value, (list, tuple, set, frozenset)):
        return [orjson_ready(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not INT64_MIN <= value <= UINT64_MAX:
        return RawJson(decimal_text(decimal.Decimal(value)))  # str() refuses more than 4300 digits
    if isinstance(value, (datetime.date, datetime.time)):
        return iso_text(value)
    container = None if isinstance(value, LEAVES) or registered_encoder(value) else collection_as_container(value)
    return value if container is None else orjson_ready(container)


class KeysWrittenAlike(TypeError):
    """Two keys of one object would be written as one name (`1` and `"1"`): a JSON reader would keep one value."""


class KeyWithoutName(TypeError):
    """A dict key that is a collection (a tuple, a frozenset): written as an array, which no JSON name spells."""


def ready_object(mapping):
    """Return a dict with every key as the name it is written as, each value orjson_ready; KeysWrittenAlike when two
    keys would be written as one name."""
    ready = {}
    for key, value in mapping.items():
        name = key if isinstance(key, str) else key_name(key)
        if name in ready:
            raise KeysWrittenAlike(f'two keys of one object are written as the name {name!r}')
        ready[name] = orjson_ready(value)
    return ready


def key_name(key):
    """Return the name a dict key that is no str is written as: orjson's text of it (its OPT_NON_STR_KEYS: 1 is
    "1", True "true"), big integers, dates and times as their text ("2026-11-21"), a type the registry knows as its
    JSON text there (a Decimal "2.50", bytes as base64; trial AF: a Decimal key was a 500). TypeError for a key
    neither can name (a tuple)."""
    ready = orjson_ready(key)
    if registered_encoder(ready) is not None:
        ready = encode_default(ready)
    if isinstance(ready, RawJson):
        return ready.text
    if isinstance(ready, str):
        return ready
    try:
        return next(iter(orjson.loads(orjson.dumps({ready: None}, option=orjson.OPT_NON_STR_KEYS))))
    except TypeError:  # a tuple's or frozenset's list, which is no key: orjson's words named the list
        raise KeyWithoutName(f'a dict key of type {type(key).__name__} has no JSON name: use a str') from None


class TooDeepToWrite(TypeError):
    """A value nests arrays and objects deeper than orjson writes (its recursion limit, 254 levels)."""


def dumps_bytes(value):
    """Encode value as UTF-8 JSON bytes; TypeError for a value of a type the registry does not know, TooDeepToWrite
    for one nesting deeper than orjson writes (a jsonb value PostgreSQL stored, say)."""
    try:
        return written_by_orjson(value)
    except TooDeepToWrite:
        raise
    except TypeError as exc:
        if not str(exc).startswith(REFUSED_BY_ORJSON):
            raise
    try:
        ready = orjson_ready(value)
    except RecursionError:  # its walk of a value nested deeper than the call stack has room for
        raise TooDeepToWrite(ORJSON_RECURSION_LIMIT) from None
    return written_by_orjson(ready)


def written_by_orjson(value):
    """Return orjson's JSON of value, exact numbers filled in (RawNumbers); TooDeepToWrite past its nesting limit."""
    raw_numbers = RawNumbers()
    try:
        return raw_numbers.fill(orjson.dumps(value, default=raw_numbers, option=orjson.OPT_PASSTHROUGH_DATETIME))
    except TypeError as exc:
        if str(exc).startswith(ORJSON_RECURSION_LIMIT):
            raise TooDeepToWrite(str(exc)) from None
        raise


TOO_DEEP_FOR_PYTHON = 'a JSON value nests arrays and objects deeper than Python reads'


def loads_exact(data, bounded=True, plain_digits=None):
    """Parse JSON with every number exact: integers as int, other numbers as ExactNumber.

    orjson parses first, as it is fast; it reads a non-integer or an integer past 64 bits as a float, so a
    document where it found one is parsed again by the json module, which hands the number's text over.
    Raises ValueError for a document that is not JSON (NaN and Infinity are not).

    bounded (a request body): a number with more digits before its point than Python writes as text
    (sys.get_int_max_str_digits(), 4300) is refused with ValueError, 1e999999 as well as such an integer;
    made an int, it would take a minute to build and could never be sent. So is one with more digits after its
    point than PostgreSQL numeric holds (16383), 1e-999999999 as well as 0.000...1. Unbounded (json and jsonb
    that PostgreSQL stored): such an integer is an ExactNumber, and any number is read, its plain digits counted in
    plain_digits (a PlainDigitsBudget the documents of one answer share; by default the document's own).
    """
    try:
        value, refused = orjson.loads(data), False
    except orjson.JSONDecodeError:
        # orjson refuses numbers past a float's range, which the json module reads, and lone surrogates, which it
        # reads too: then every value is looked at, those that a key given twice loses included.
        value, refused = None, True
    try:
        if not refused and not has_float(value, MAX_BODY_DEPTH if bounded else None):
            return value
    except RecursionError:  # unbounded: nested deeper than the call stack has room for here
        raise ValueError(TOO_DEEP_FOR_PYTHON) from None
    text = data if isinstance(data, str) else data.decode('utf-8')
    try:
        value = json.loads(text, parse_float=BoundedNumbers() if bounded else plain_digits or PlainDigitsBudget(),
                           parse_int=bounded_int if bounded else int_or_exact, parse_constant=refuse_constant,
                           object_pairs_hook=dict_refusing_lost_surrogates if refused else None)
    except RecursionError:
        if bounded:
            raise TooDeep(f'The request body nests arrays and objects deeper than {MAX_BODY_DEPTH} levels.') from None
        raise ValueError(TOO_DEEP_FOR_PYTHON) from None
    if refused and bounded:
        has_float(value, MAX_BODY_DEPTH)  # for its depth check, which orjson's document had above
    if SURROGATE.search(text) or ESCAPED_SURROGATE.search(text):
        refuse_lone_surrogates(value)  # the json module lets through what orjson refuses
    return value


def dict_refusing_lost_surrogates(pairs):
    """Return the object of a JSON text's (key, value) pairs, the last of a key given twice counting; raise
    ValueError when a value the object loses holds a lone surrogate, which the check of the parsed value never sees."""
    result = dict(pairs)
    if len(result) < len(pairs):
        # The lost values alone: the kept ones are looked at with the whole document, so a value is walked once
        # however many of the objects around it repeat a key.
        last = {key: index for index, (key, _) in enumerate(pairs)}
        refuse_lone_surrogates([value for index, (key, value) in enumerate(pairs) if last[key] != index])
    return result


def refuse_lone_surrogates(value):
    """Raise ValueError when a string or key anywhere in a parsed JSON value holds a lone surrogate ("\\ud800"),
    which is no Unicode and which no UTF-8 answer can hold; the strings alone are looked at, never the numbers."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if SURROGATE.search(item):
                raise ValueError('A string holds a lone surrogate, which is not Unicode')
        elif isinstance(item, dict):
            pending.extend(item)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)


class BoundedNumbers:
    """Read the numbers of one request body that are not integers as ExactNumbers (json.loads' parse_float),
    refusing with NumberTooLong one past Python's integer text limit before its point, one past numeric's digits after
    it (1e-999999999 would be a gigabyte of text written plain), and a body whose numbers written plain take more
    than PLAIN_DIGITS_PER_BODY digits (so an answer echoing them is no bigger than a body may be)."""

    def __init__(self):
        self.digits = 0

    def __call__(self, text):
        if len(text) <= PLAIN_NUMBER_LENGTH and 'e' not in text and 'E' not in text:
            # Plain notation (JSON's has a point here): every character is a digit but the point and a sign, and
            # so few digits are within both limits.
            self.count(len(text) - 1 - (text[0] == '-'))
            return ExactNumber(text)
        number = exponent_within_decimals(text)
        limit = sys.get_int_max_str_digits()
        if limit and digits_before_point(number) > limit:
            raise too_long('before')
        if -number.as_tuple().exponent > NUMERIC_MAX_DIGITS_AFTER_POINT:
            raise too_long('after')
        self.count(plain_digits(number))
        return number

    def count(self, digits):
        """Count a number's digits written plain against the body's PLAIN_DIGITS_PER_BODY."""
        self.digits += digits
        if self.digits > PLAIN_DIGITS_PER_BODY:
            raise NumberTooLong(f'The numbers of the request body take more than {PLAIN_DIGITS_PER_BODY} digits '
                                'written out.')


def digits_before_point(number):
    """Return how many digits a finite Decimal has before its point written plain: a zero has one ("0"), whatever
    its exponent (0e999999)."""
    return 1 if number.is_zero() else max(number.adjusted() + 1, 1)


def plain_digits(number):
    """Return how many digits a finite Decimal takes written plain: 1e3 is 1000, 1e-3 is 0.001."""
    return digits_before_point(number) + max(-number.as_tuple().exponent, 0)


class WrittenNumber(ExactNumber):
    """A number of stored json text written in exponent notation, Decimal's 1E+131071, where plain notation would
    take its document past PLAIN_DIGITS_PER_BODY digits (PlainDigitsBudget)."""

    __slots__ = ()


register_json_type(WrittenNumber, lambda value: RawJson(str(value)))


class PlainDigitsBudget:
    """Read the numbers of json or jsonb text PostgreSQL stored that are not integers (json.loads' parse_float) as
    ExactNumbers, written plain as to_jsonb writes them (a zero without a sign: numeric has no negative zero), as long
    as the numbers in exponent notation of the documents it reads take PLAIN_DIGITS_PER_BODY digits written plain;
    past that, as WrittenNumbers, in exponent notation: json text keeps 1e131071 as written (8 bytes), whose plain
    notation is 131,072 digits, so that a stored document of a mebibyte would be an answer of gigabytes. A number past
    what a Decimal holds (an exponent of 10**18 or more) is its RawJson text, written as stored; a zero, 0."""

    __slots__ = ('digits',)

    def __init__(self):
        self.digits = 0

    def __call__(self, text):
        try:
            number = ExactNumber(text)
        except decimal.InvalidOperation:  # numeric's range is far smaller: past it, exponent notation anyway
            return RawJson(text) if text.lower().partition('e')[0].strip('-+0.') else ExactNumber(0)
        if number.is_zero() and number.is_signed():
            number = ExactNumber(number.copy_abs())
        # Plain already, written no longer than stored; or past numeric's range, written in exponent notation anyway.
        if 'e' not in text and 'E' not in text or not within_numeric_range(number):
            return number
        self.digits += plain_digits(number)
        return number if self.digits <= PLAIN_DIGITS_PER_BODY else WrittenNumber(number)


def too_long(side):
    """Return the NumberTooLong of a body number with more digits on side ('before', 'after') of its point than
    dbapi reads: Python's integer text limit before it, PostgreSQL numeric's after it."""
    limit = sys.get_int_max_str_digits() if side == 'before' else NUMERIC_MAX_DIGITS_AFTER_POINT
    return NumberTooLong(f'The request body holds a number with more than {limit} digits {side} its point.')


def exponent_within_decimals(text):
    """Return a JSON number's ExactNumber; one whose exponent is past what a Decimal holds (1e99999999999999999999)
    is NumberTooLong on the side of the point its exponent puts it, or, with a positive exponent and only zeros, the
    zero it is (as 0e999999 within a Decimal's range)."""
    try:
        return ExactNumber(text)
    except decimal.InvalidOperation:
        digits, _, exponent = text.lower().partition('e')
        side = 'after' if exponent.startswith('-') else 'before'
        if side == 'before' and not digits.strip('-+0.'):  # a zero, written "0" (0e-20000 is refused, as within)
            return ExactNumber('-0' if digits.startswith('-') else '0')
        raise too_long(side) from None


def bounded_int(text):
    """Read a request body's JSON integer as an int; NumberTooLong past Python's integer text limit."""
    try:
        return int(text)
    except ValueError:
        raise too_long('before') from None


def int_or_exact(text):
    """Read a JSON integer as an int, or as an ExactNumber past Python's integer text limit."""
    try:
        return int(text)
    except ValueError:
        return ExactNumber(text)


def refuse_constant(name):
    """Refuse NaN, Infinity and -Infinity, which are not JSON."""
    raise ValueError(f'{name} is not a JSON value')


# Levels of arrays and objects a request body may nest: orjson writes at most 254, so whatever a client stores
# can be answered; deeper is a 400, not a value that fails later.
MAX_BODY_DEPTH = 128


class BodyPastLimit(ValueError):
    """A request body that is JSON but past what dbapi reads; the message is the detail of its 400."""


class TooDeep(BodyPastLimit):
    """A JSON document nests arrays and objects deeper than MAX_BODY_DEPTH levels."""


class NumberTooLong(BodyPastLimit):
    """A request body's number has more digits than dbapi reads (BoundedNumbers), or its numbers together do."""


def has_float(value, depth_left=None):
    """Tell whether a parsed JSON document holds a float anywhere; ValueError when it nests deeper than depth_left
    levels (None: no limit)."""
    kind = type(value)
    if kind is float:
        return True
    if kind is dict:
        value = value.values()
    elif kind is not list:
        return False
    if depth_left == 0:
        raise TooDeep(f'The request body nests arrays and objects deeper than {MAX_BODY_DEPTH} levels.')
    deeper = None if depth_left is None else depth_left - 1
    found = False
    for item in value:
        found = type(item) is float or type(item) in (dict, list) and has_float(item, deeper) or found
    return found


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
        """Decode a JSON document, its numbers exact."""
        return loads_exact(s)
