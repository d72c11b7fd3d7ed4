"""Secrets: every spelling of a bearer token, DSN or database password is replaced in every line."""
import json
import re
from functools import lru_cache
from urllib.parse import quote, unquote

import psycopg2
from psycopg2.extensions import parse_dsn

from lib.logs.formatter import encode

REDACTED = '[REDACTED]'
# Said in place of what a client sent, in a line that would quote it: a header there may hold any credential, one
# no Redactor knows (a token known only by its sha256, a cookie, another service's key).
UNQUOTED = '(what the client sent is left out of the log: it may hold a credential)'
# Shorter "secrets" would blank out ordinary words in every line.
MIN_SECRET_LENGTH = 4
# How many times a text is percent-decoded, at most, in search of a secret spelled in a way any_percent_spelling's
# expression does not know (its escapes' own characters encoded: `%25%32%44`, `-` encoded twice).
MAX_PERCENT_DECODINGS = 8
PERCENT_ESCAPE = re.compile(r'%[0-9A-F]{2}')
# A hex digit, as it is or percent-encoded itself (`%32` for 2, `%44` or `%64` for D or d).
HEX_DIGIT_SPELLING = r'(?:[0-9A-Fa-f]|%3[0-9]|%[46][1-6])'
# An escape whose own characters are percent-encoded: its `%` as `%25`, its digits as they are or encoded too.
ENCODED_ESCAPE = re.compile(f'%25({HEX_DIGIT_SPELLING})({HEX_DIGIT_SPELLING})')
# An escape as any_percent_spelling's expressions read one (percent_encoded): a byte's %XX, its `%` encoded again any
# number of times (%25XX, %2525XX).
NESTED_ESCAPE = re.compile(rb'%(?:25)*([0-9A-Fa-f]{2})')
# What an escape just before a run of a secret's characters may read as its own: the run's first characters, when
# they are literal hex digits (`%Bear...` reads as the escape `%Be`, `%2` + `5Bear...` as `%25Be`).
STEALABLE = re.compile('5?(?:25)*[0-9A-Fa-f]{0,2}')
# The form of every line's @timestamp (lib/logs/formatter.py, as ecs-logging writes it), 0 standing for any digit.
TIMESTAMP_FORM = '0000-00-00T00:00:00.000Z'
DIGITS = frozenset('0123456789')


def dsn_spellings(dsn):
    """Return a DSN and its password as a line could spell them: raw, URL-encoded (percent_spellings) and
    libpq-quoted."""
    try:
        password = parse_dsn(dsn).get('password')
    except psycopg2.ProgrammingError:
        password = None
    if not password:
        return [dsn]
    libpq_quoted = password.replace('\\', '\\\\').replace("'", "\\'")
    return [dsn, password, *percent_spellings(password), libpq_quoted]


def token_spellings(token):
    """Return a bearer token as a line could spell it: raw, and percent-encoded as a URL would carry it
    (percent_spellings)."""
    return [token, *percent_spellings(token)]


def percent_spellings(secret):
    """Return secret percent-encoded as URLs carry it (RFC 3986 section 2.1): every reserved character encoded, or
    all but `/` (urllib.parse.quote's default), `~` kept or encoded too (Java's URLEncoder writes %7E), each in
    upper- and lower-case hex."""
    encoded = {quote(secret, safe=''), quote(secret)}
    encoded |= {text.replace('~', '%7E') for text in encoded}  # quote() keeps `~` whatever safe says
    return sorted(encoded | {PERCENT_ESCAPE.sub(lambda escape: escape[0].lower(), text) for text in encoded})


def any_percent_spelling(secret):
    """Return a regular expression of secret with any of its characters percent-encoded, once or more (each byte of a
    character's UTF-8 as %XX, hex digits in either case: RFC 3986 section 2.1; encoded again, its % as %25), the
    spellings a URL or a header may carry, of which percent_spellings lists the whole ones encoded once (trial AP:
    `Tok%2DAbc`, a path encoded twice and decoded once; trial AR: `Tok%252DAbc` in a User-Agent)."""
    return ''.join(f'(?:{re.escape(char)}|{percent_encoded(char)})' for char in secret)


@lru_cache(maxsize=None)
def percent_spelling_expression(secret):
    """Return any_percent_spelling(secret) compiled, once a process, when a text with a `%` is first checked for it:
    one expression of every secret, compiled at each start and again at each token learned from a request, took
    0.7 ms a token (trial BL: 10,000 clients, 9 s; a learned token stalled its worker 0.7 s with 1,000)."""
    return re.compile(any_percent_spelling(secret))


@lru_cache(maxsize=None)
def spelling_clue(secret):
    """Return UTF-8 bytes that escapes_read(text) holds whenever text holds a spelling of secret that
    any_percent_spelling's expression matches, or b'' when no bytes are sure to: the longest run of secret without a
    `%`, less the first characters an escape before it may read as its own (STEALABLE). Within such a run, every `%` of
    a spelling starts an escape of the run's own character, which escapes_read decodes to it, and no escape of text
    can reach over a `%`: only the run's start can be read otherwise."""
    runs = [run[stealable_length(run):] for run in secret.split('%')]
    return max(runs, key=len).encode('utf-8', 'surrogatepass')


def stealable_length(run):
    """Return the length of run's longest prefix that STEALABLE matches whole: its greedy match's (tests check it)."""
    return STEALABLE.match(run).end()


def escapes_read(text):
    """Return text's UTF-8 with every escape (NESTED_ESCAPE) decoded to its byte, left to right, once: what
    spelling_clue's bytes are sought in, so that only the secrets it may hold are searched for with their expressions
    (trial BN: an 8,000-byte User-Agent of `a%` cost 45 ms with 300 clients, 176 ms with tokens holding `+` or `=`)."""
    return NESTED_ESCAPE.sub(lambda escape: bytes.fromhex(escape[1].decode()), text.encode('utf-8', 'surrogatepass'))


def percent_encoded(char):
    """Return a regular expression of char percent-encoded once or more, byte by byte, hex digits in either case."""
    return ''.join('%(?:25)*' + ''.join(f'[{digit}{digit.lower()}]' if digit.isalpha() else digit
                                        for digit in f'{byte:02X}') for byte in char.encode())


def percent_decodings(text):
    """Yield text percent-decoded once, twice... (urllib's unquote, as a server decodes a path) while that changes
    it, at most MAX_PERCENT_DECODINGS times."""
    for _ in range(MAX_PERCENT_DECODINGS):
        decoded = unquote(text)
        if decoded == text:
            return
        yield decoded
        text = decoded


def escapes_decoded(text):
    """Return text with each escape whose own characters are percent-encoded (ENCODED_ESCAPE: `%25%32%44`, `-`
    encoded twice) written as that escape (`%2D`), again while that changes it, at most MAX_PERCENT_DECODINGS times.
    Nothing else is decoded: a `%` before a secret whose first characters are hex digits (`%Bear...`) is not read
    with them as a whole decoding reads it (trial BN)."""
    for _ in range(MAX_PERCENT_DECODINGS):
        decoded = ENCODED_ESCAPE.sub(lambda escape: '%' + unquote(escape[1]) + unquote(escape[2]), text)
        if decoded == text:
            break
        text = decoded
    return text


def configured_secrets(databases, tokens):
    """Return the plain bearer tokens (lib.auth's TokenTable.secrets) and their spellings in a URL, the database DSNs
    and their passwords."""
    dsns = [dsn for dsn in (databases or {}).values() if dsn]
    return [*(spelling for token in tokens for spelling in token_spellings(token)),
            *(spelling for dsn in dsns for spelling in dsn_spellings(dsn))]


def redacted(text, databases, tokens):
    """Return text with the DSNs and passwords of databases ({name: DSN}) and the bearer tokens (plain) taken out, in
    every spelling configured_secrets knows: for a message shown once, such as a start error."""
    return Redactor(configured_secrets(databases, tokens)).redact(text)


class Redactor:
    """Replace known secrets in finished lines: a few substring checks per line, a rewrite only on a hit."""

    def __init__(self, secrets):
        self.secrets = self.escaped = self.clued = []
        self.learn(secrets)

    def learn(self, secrets):
        """Redact secrets too, from now on."""
        # Longest first, so that a DSN is replaced whole before the password inside it. secrets is set before escaped:
        # a line another thread checks meanwhile that finds a new secret's escaped form also finds the secret.
        self.secrets = sorted({*self.secrets, *kept_secrets(secrets)}, key=len, reverse=True)
        # A finished line holds each secret the way JSON escapes it.
        self.escaped = [encode(secret)[1:-1] for secret in self.secrets]
        # Each secret with its spelling_clue, in one list: another thread's learn replaces it whole.
        self.clued = [(spelling_clue(secret), secret) for secret in self.secrets]

    def compile_spellings(self):
        """Compile the expressions of every secret's percent-encoded spellings now (percent_spelling_expression):
        a process that forks workers, gunicorn's master, has them compiled once for all."""
        for secret in self.secrets:
            percent_spelling_expression(secret)

    def learn_token(self, token):
        """Redact a bearer token too, from now on, in every spelling token_spellings knows (lib.auth's TokenTable
        calls it for a token known only by its sha256, once a request has shown it)."""
        self.learn(token_spellings(token))

    def __call__(self, line):
        """Return line, rewritten without its secrets when it holds any."""
        for escaped in self.escaped:
            if escaped in line:
                # Decoding first keeps the line valid JSON whatever characters a secret holds.
                return encode(self.redact(json.loads(line)))
        if '%' in line:  # sought in the decoded strings: a JSON escape in the line's text hid a spelling (trial BM)
            document = json.loads(line)
            redacted = self.redact(document)
            return line if redacted == document else encode(redacted)
        return line

    def decoding_with_a_secret(self, text):
        """Return the first percent-decoding of text (percent_decodings) that holds a secret, as a finished line or a
        string of one holds it, or None: a spelling any_percent_spelling's expression misses (trial AU)."""
        return next((decoded for decoded in percent_decodings(text)
                     if any(secret in decoded for secret in (*self.secrets, *self.escaped))), None)

    def spelled_in(self, text):
        """Return the expressions (percent_spelling_expression) of the secrets text holds a percent-encoded spelling
        of, longest secret first: only a secret whose spelling_clue text's escapes_read holds is searched for."""
        read = escapes_read(text)
        return [expression for expression in (percent_spelling_expression(secret) for clue, secret in self.clued
                                              if clue in read) if expression.search(text)]

    def without_spellings(self, text):
        """Return text with each percent-encoded spelling of a secret replaced (spelled_in), those whose escapes have
        their own characters encoded too (escapes_decoded: text is then kept with those escapes written once)."""
        text = replaced(text, self.spelled_in(text))
        decoded = escapes_decoded(text)
        spelled = self.spelled_in(decoded) if decoded != text else []
        return replaced(decoded, spelled) if spelled else text

    def holds(self, text, also=()):
        """Tell whether text holds a secret (would be redacted), or one of also (secrets of this moment)."""
        return any(secret in text for secret in self.secrets) or any(secret in text for secret in kept_secrets(also))

    def marks_every_line(self, document):
        """Tell whether a secret is in a string of document (a decoded line that holds what every line does, its
        @timestamp left out), or fits the @timestamp of some moment (2027, T06:35): every line, or every line of that
        moment, would show it, or lose those characters to REDACTED (a date an index refuses). Numbers (a pid) are
        never redacted, so never count."""
        return self.redact(document) != document or any(fits_a_timestamp(secret) for secret in self.secrets)

    def redact(self, value):
        """Return value with every secret in its strings replaced."""
        if isinstance(value, str):
            for secret in self.secrets:
                value = value.replace(secret, REDACTED)
            if '%' not in value:
                return value
            value = self.without_spellings(value)
            decoded = self.decoding_with_a_secret(value)  # a secret past the expression's reach: logged decoded
            return value if decoded is None else self.redact(decoded)
        if isinstance(value, dict):
            return {self.redact(key): self.redact(item) for key, item in value.items()}
        if isinstance(value, list):
            return [self.redact(item) for item in value]
        return value


def replaced(text, expressions):
    """Return text with every match of each of expressions replaced by REDACTED."""
    for expression in expressions:
        text = expression.sub(REDACTED, text)
    return text


def kept_secrets(secrets):
    """Return the secrets long enough to redact (MIN_SECRET_LENGTH)."""
    return [secret for secret in secrets if len(secret) >= MIN_SECRET_LENGTH]


def fits_a_timestamp(text):
    """Tell whether text is part of some moment's @timestamp (TIMESTAMP_FORM)."""
    def fits_at(start):
        return all(char in DIGITS if form == '0' else char == form for char, form in zip(text, TIMESTAMP_FORM[start:]))
    return any(fits_at(start) for start in range(len(TIMESTAMP_FORM) - len(text) + 1))
