"""How PostgreSQL's values become Python values: exactly, for every built-in type (docs/contract.md section 5).

psycopg2 reads most types well. Where it changes a value in silence or fails, a typecaster registered on
each connection (register_types, from the connection's configure) reads it instead:

- dates and timestamps Python cannot hold (±infinity, BC, years past 9999), and time 24:00:00, come as
  PgText: PostgreSQL's own text, in the form to_jsonb writes it. Ordinary ones stay date and datetime.
- interval: a timedelta of exactly EXTRACT(epoch FROM value) seconds (a month is 30 days, a year 365.25,
  as PostgreSQL counts them); one past timedelta's range comes as that many seconds, an ExactNumber.
- json and jsonb: parsed with their numbers exact (lib.jsonenc.loads_exact).
- ranges and multiranges: PostgreSQL's text, "[1,10)", as to_jsonb writes them.
- arrays of every type psycopg2 does not know (money[], inet[] of a domain, enum[], ...): lists.

Parameters: a dict adapts to JSON (for json and jsonb columns); a list stays an ARRAY. A value psycopg2
cannot send (a NUL character, a lone surrogate) is a 422, not a server fault.
"""
import datetime
import re

import psycopg2.extensions
import psycopg2.extras

from lib.errors import Unprocessable, translates
from lib.jsonenc import ExactNumber, dumps_bytes, loads_exact

DATE, TIME, TIMETZ, TIMESTAMP, TIMESTAMPTZ, INTERVAL, JSON, JSONB = 1082, 1083, 1266, 1114, 1184, 1186, 114, 3802
# The built-in ranges, which psycopg2.extras reads as Range objects that no JSON encoder knows.
BUILTIN_RANGES = (3904, 3906, 3908, 3910, 3912, 3926)
ARRAYS_OF_TYPES = '''
    SELECT t.typarray, t.typname, coalesce(base.oid, t.oid), coalesce(base.typtype, t.typtype), t.typdelim
    FROM pg_type t LEFT JOIN pg_type base ON t.typtype = 'd' AND base.oid = t.typbasetype
    WHERE t.typarray <> 0'''

SECONDS_PER_DAY, DAYS_PER_MONTH, SECONDS_PER_YEAR = 86400, 30, 31557600  # PostgreSQL's year: 365.25 days
INTERVAL_UNITS = re.compile(r'([+-]?\d+) (year|mon|day)s?')
INTERVAL_TIME = re.compile(r'([+-])?(\d+):(\d\d):(\d\d)(?:\.(\d{1,6}))?$')
# The offset at the end of a stamp: PostgreSQL's text writes +02 where its JSON writes +02:00.
SHORT_OFFSET = re.compile(r'([+-]\d\d)((?::\d\d)*)( BC)?$')


class PgText(str):
    """PostgreSQL's own text of a value no Python type holds exactly; JSON writes it as a string."""


def is_ordinary_stamp(text):
    """Tell whether a date or timestamp text is one Python's date and datetime hold: a four-digit year AD."""
    return text[4:5] == '-' and not text.endswith(' BC')


def json_stamp(text, with_offset):
    """Return a timestamp's text as to_jsonb writes it: "10000-01-01T00:00:00+00:00", "0044-03-15T12:00:00 BC"."""
    if text.endswith('infinity'):
        return PgText(text)
    text = text.replace(' ', 'T', 1)
    if with_offset:
        text = SHORT_OFFSET.sub(lambda match: match[1] + (match[2] or ':00') + (match[3] or ''), text)
    return PgText(text)


def cast_date(text, cursor):
    """Read a date: a datetime.date, or PgText for ±infinity, BC and years past 9999."""
    if text is None or not is_ordinary_stamp(text):
        return None if text is None else PgText(text)
    return psycopg2.extensions.DATE(text, cursor)


def cast_timestamp(text, cursor):
    """Read a timestamp: a datetime, or PgText for ±infinity, BC and years past 9999."""
    if text is None or not is_ordinary_stamp(text):
        return None if text is None else json_stamp(text, with_offset=False)
    return psycopg2.extensions.PYDATETIME(text, cursor)


def cast_timestamptz(text, cursor):
    """Read a timestamptz: an aware datetime, or PgText for ±infinity, BC and years past 9999."""
    if text is None or not is_ordinary_stamp(text):
        return None if text is None else json_stamp(text, with_offset=True)
    return psycopg2.extensions.PYDATETIMETZ(text, cursor)


def cast_time(text, cursor):
    """Read a time, with or without a time zone: a datetime.time, or PgText for 24:00:00, which Python lacks."""
    if text is None or not text.startswith('24:'):
        return psycopg2.extensions.PYTIME(text, cursor)
    return PgText(SHORT_OFFSET.sub(lambda match: match[1] + (match[2] or ':00'), text) if len(text) > 8 else text)


def interval_microseconds(text):
    """Return EXTRACT(epoch FROM interval) in microseconds, from the interval's text in the postgres style."""
    months = days = 0
    for amount, unit in INTERVAL_UNITS.findall(text):
        if unit == 'day':
            days += int(amount)
        else:
            months += int(amount) * (12 if unit == 'year' else 1)
    years = abs(months) // 12 * (1 if months >= 0 else -1)  # PostgreSQL divides toward zero
    seconds = years * SECONDS_PER_YEAR + ((months - years * 12) * DAYS_PER_MONTH + days) * SECONDS_PER_DAY
    time = INTERVAL_TIME.search(text)
    if time:
        sign, hours, minutes, whole, fraction = time.groups()
        clock = (int(hours) * 3600 + int(minutes) * 60 + int(whole)) * 1_000_000 + int((fraction or '').ljust(6, '0'))
        return seconds * 1_000_000 + (-clock if sign == '-' else clock)
    return seconds * 1_000_000


def cast_interval(text, cursor):
    """Read an interval as a timedelta of its exact seconds; past timedelta's range, as an ExactNumber of seconds."""
    if text is None:
        return None
    microseconds = interval_microseconds(text)
    try:
        return datetime.timedelta(microseconds=microseconds)
    except OverflowError:
        return ExactNumber(f'{microseconds}E-6')


def cast_json(text, cursor):
    """Read json or jsonb with every number exact."""
    return None if text is None else loads_exact(text)


def cast_text(text, cursor):
    """Read a value as PostgreSQL's text of it (ranges, multiranges)."""
    return None if text is None else PgText(text)


CASTERS = {DATE: cast_date, TIMESTAMP: cast_timestamp, TIMESTAMPTZ: cast_timestamptz, TIME: cast_time,
           TIMETZ: cast_time, INTERVAL: cast_interval, JSON: cast_json, JSONB: cast_json,
           **{oid: cast_text for oid in BUILTIN_RANGES}}
TYPECASTERS = {oid: psycopg2.extensions.new_type((oid,), f'DBAPI_{oid}', cast) for oid, cast in CASTERS.items()}


def cast_semicolon_array(text, cursor):
    """Read a one-dimensional array of a type whose elements hold commas and are delimited by ';' (box[])."""
    if text is None or text.startswith('{{'):
        return None if text is None else PgText(text)  # psycopg2 cannot split them; several dimensions stay text
    items = text[1:-1].split(';') if text != '{}' else []
    return [None if item == 'NULL' else PgText(item) for item in items]


def element_caster(base_oid, base_kind):
    """Return the typecaster of an array's elements: ours, psycopg2's, or the text for a range or unknown type."""
    if base_oid in TYPECASTERS:
        return TYPECASTERS[base_oid]
    if base_kind in ('r', 'm'):
        return psycopg2.STRING
    return psycopg2.extensions.string_types.get(base_oid, psycopg2.STRING)


def needs_array_caster(array_oid, base_oid):
    """Tell whether psycopg2 would read an array wrong: as text when it does not know it, or element by element
    with its own caster where ours differs."""
    return array_oid not in psycopg2.extensions.string_types or base_oid in TYPECASTERS


def array_caster(array_oid, name, base_oid, base_kind, delimiter):
    """Return the typecaster of one array type."""
    if delimiter != ',':
        return psycopg2.extensions.new_type((array_oid,), f'DBAPI_{name}_ARRAY', cast_semicolon_array)
    caster = element_caster(base_oid, base_kind)
    return psycopg2.extensions.new_array_type((array_oid,), f'DBAPI_{name}_ARRAY', caster)


def register_types(conn):
    """Teach conn how to read every type exactly: our casters, and every array type the catalog lists."""
    for typecaster in TYPECASTERS.values():
        psycopg2.extensions.register_type(typecaster, conn)
    with conn.cursor() as cursor:
        cursor.execute(ARRAYS_OF_TYPES)
        arrays = cursor.fetchall()
    for array_oid, name, base_oid, base_kind, delimiter in arrays:
        if needs_array_caster(array_oid, base_oid):
            psycopg2.extensions.register_type(array_caster(array_oid, name, base_oid, base_kind, delimiter), conn)


def json_parameter(value):
    """Adapt a dict parameter as JSON text, written by the one JSON encoder, for a json or jsonb column."""
    return psycopg2.extras.Json(value, dumps=lambda document: dumps_bytes(document).decode())


psycopg2.extensions.register_adapter(dict, json_parameter)


# psycopg2's message for a str parameter holding a NUL character, which PostgreSQL's text cannot hold.
NUL_REFUSED = 'A string literal cannot contain NUL'


@translates(ValueError)
def from_unsendable_parameter(exc):
    """A parameter psycopg2 cannot send (a NUL character, a lone surrogate) is a 422; any other ValueError a 500."""
    if isinstance(exc, UnicodeEncodeError) or str(exc).startswith(NUL_REFUSED):
        return Unprocessable(f'A value cannot be stored in the database: {exc}')
    return None
