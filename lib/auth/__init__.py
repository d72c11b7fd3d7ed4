"""Bearer tokens: parse the configuration, check a request's token, name its client, apply scopes."""
import hashlib
import json
import re
import weakref
from dataclasses import dataclass
from functools import lru_cache, partial
from pathlib import Path

from flask import request

from lib.errors import BYTE_ORDER_MARK, ImproperlyConfigured, file_text, integer_value

from lib.errors import BEARER_CHALLENGE, Forbidden, Unauthorized
from lib.http.exchange import CLIENT_KEY, remember

# RFC 6750's b64token: the only characters an Authorization: Bearer header can carry.
B64TOKEN = r'[A-Za-z0-9\-._~+/]+=*'
BEARER_HEADER = re.compile(rf'Bearer +({B64TOKEN}) *', re.IGNORECASE)
TOKEN_WORD = re.compile(B64TOKEN)
SINGLE_TOKEN_CLIENT = 'bearer'
# env/local/.env's BEARER: public, so refused outside the local and test environments (check_not_development_token).
DEVELOPMENT_TOKEN = 'local-dev-token'
# Spellings of valid Authorization headers remembered per process; a caller cannot grow it past this.
MAX_KNOWN_HEADERS = 256
# Every TokenTable of this process (an app's, gunicorn.conf.py's check), for learn_shown_tokens.
TOKEN_TABLES = weakref.WeakValueDictionary()  # id -> TokenTable: a dict is no set member
# The most connections a client's "max_connections" (and DB_CLIENT_MAX_CONNECTIONS, DB_POOL_MAX) may name.
MAX_CLIENT_CONNECTIONS = 1000
# The keys of a client's entry in BEARER_TOKENS (parse_client).
ENTRY_KEYS = frozenset({'token', 'sha256', 'modules', 'max_connections'})


@dataclass(frozen=True)
class Client:
    """A caller known by its token: its name, the modules it may call (None: all) and the most database
    connections of a pool it may hold at once in a process (None: DB_CLIENT_MAX_CONNECTIONS)."""

    name: str
    modules: frozenset | None
    max_connections: int | None = None

    def may_call(self, module):
        """Tell whether this client may call module."""
        return self.modules is None or module in self.modules


def sha256_hex(token):
    """Return the hex SHA-256 digest of a token."""
    return hashlib.sha256(token.encode()).hexdigest()


def parse_client(name, entry):
    """Return (digest, Client) for one entry of BEARER_TOKENS."""
    if not name.strip():
        raise ImproperlyConfigured(f'bearer client {name!r} needs a name: it is user.name in every access line')
    if not name.isprintable():  # "a\nb": a line break in every access line's user.name and in its 403s (trial BF)
        raise ImproperlyConfigured(f'bearer client {name!r}: a name holds no control character (a line break, a '
                                   'tab): it is user.name in every access line')
    if not isinstance(entry, dict):  # {"<token>": "name"}: the name is likely the token itself, not shown
        raise ImproperlyConfigured('a bearer client\'s name maps to an object, {"name": {"token": "..."}}, not to '
                                   f'a {type(entry).__name__} (its name is not shown: it may be a token)')
    if 'token' not in entry and 'sha256' not in entry:  # {"<token>": {...}}: likely keyed by token, not shown
        raise ImproperlyConfigured('a bearer client\'s entry has neither "token" nor "sha256" (its name is not shown: '
                                   'it may be a token; the table maps a name to {"token": "..."})')
    if 'token' in entry and 'sha256' in entry:
        raise ImproperlyConfigured(f'bearer client {name!r} needs exactly one of "token" or "sha256"')
    unknown = entry.keys() - ENTRY_KEYS
    if unknown:
        raise ImproperlyConfigured(f'bearer client {name!r} has unknown keys: {sorted(unknown)}')
    if 'token' in entry and entry['token'] != '':  # a number, null, a list: not a token (it was a traceback)
        check_token_characters(entry['token'], f'bearer client {name!r}')
    digest = sha256_hex(entry['token']) if 'token' in entry else str(entry['sha256']).lower()
    if not re.fullmatch(r'[0-9a-f]{64}', digest) or ('token' in entry and not entry['token']):
        raise ImproperlyConfigured(f'bearer client {name!r} has an empty token or a bad sha256')
    return digest, Client(name, parse_modules(name, entry), parse_max_connections(name, entry))


def parse_modules(name, entry):
    """Return the entry's "modules", a frozenset of module names, or None (every module) when it has none; any other
    value, null included, is refused: a scope that fails open would give the client every module (trial AA)."""
    if 'modules' not in entry:
        return None
    modules = entry['modules']
    if not (isinstance(modules, list) and all(isinstance(module, str) for module in modules)):
        raise ImproperlyConfigured(f'bearer client {name!r}: "modules" must be a list of module names')
    return frozenset(modules)


def check_token_characters(token, owner):
    """Refuse a token no Authorization: Bearer header can carry (every call with it would be a 401), or one too short
    for the log redactor to take out of lines and error bodies (MIN_SECRET_LENGTH, trial BF: `abc` was echoed)."""
    if not isinstance(token, str):  # a number, null, a list: said as what it is, not as its characters
        raise ImproperlyConfigured(f'{owner}: a token is a JSON string, not {json_type(token)}')
    if not re.fullmatch(B64TOKEN, token):
        raise ImproperlyConfigured(f'{owner}: a token may hold only letters, digits, -._~+/ and trailing = '
                                   '(RFC 6750 b64token)')
    from lib.logs.secrets import MIN_SECRET_LENGTH  # lib.logs imports lib.auth: at the top, a cycle
    if len(token.rstrip('=')) < MIN_SECRET_LENGTH:  # nginx, too, redacts 4 characters before the padding or more
        raise ImproperlyConfigured(f'{owner}: a token of fewer than {MIN_SECRET_LENGTH} characters could not be kept '
                                   'out of log lines and error bodies: use a long random one')


def check_not_development_token(clients, environment):
    """Refuse DEVELOPMENT_TOKEN (env/local/.env's, printed in the README) in clients (a TokenTable, by its digest: a
    sha256 entry's too, trial BG) outside the local and test environments: anyone who read the repository could call
    with it (trial BF: accepted in production)."""
    if sha256_hex(DEVELOPMENT_TOKEN) in clients and environment not in ('local', 'test'):
        raise ImproperlyConfigured(f'the development token {DEVELOPMENT_TOKEN!r} (env/local/.env, public in the '
                                   f'repository) is configured in ENVIRONMENT={environment}: give a secret one')


def json_type(value):
    """Return the JSON name of a parsed value's type, with its article: 'a number', 'null', 'an array'."""
    if value is None:
        return 'null'
    if isinstance(value, bool):
        return 'a boolean'
    return {int: 'a number', float: 'a number', list: 'an array', dict: 'an object'}.get(type(value), 'a string')


def parse_max_connections(name, entry):
    """Return the entry's "max_connections", an integer from 1 to MAX_CLIENT_CONNECTIONS (DB_CLIENT_MAX_CONNECTIONS's
    bound, which DB_POOL_MAX shares: a limit past the pool limits nothing), or None when it has none."""
    if 'max_connections' not in entry:
        return None
    limit = entry['max_connections']
    # not a bool (an int subclass), nor a float: 1.5, or an integer of more digits than int() converts (integer_value)
    if type(limit) is not int or not 1 <= limit <= MAX_CLIENT_CONNECTIONS:
        raise ImproperlyConfigured(f'bearer client {name!r}: "max_connections" must be an integer from 1 to '
                                   f'{MAX_CLIENT_CONNECTIONS}')
    return limit


def parse_table_json(text, origin):
    """Return BEARER_TOKENS' (or its file's) JSON object of client name to token entry, a dict; an error's line says
    where and why, never what: the text holds tokens."""
    if text.startswith(BYTE_ORDER_MARK):  # json's own words would say "decode using utf-8-sig" (trial BK)
        raise ImproperlyConfigured(f'{origin} is not valid JSON: a byte order mark (U+FEFF) stands where its object '
                                   'begins (BEARER_TOKENS_FILE may start with one)')
    try:
        table = json.loads(text, object_pairs_hook=partial(keys_once, origin), parse_int=integer_value)
        if holds_lone_surrogate(table):
            raise ImproperlyConfigured(f'{origin} holds a \\u escape of a lone surrogate (\\ud800 to \\udfff), which '
                                       'is no character: write each character whole')
    except json.JSONDecodeError as exc:
        raise ImproperlyConfigured(f'{origin} is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})') \
            from None
    except ValueError:
        raise ImproperlyConfigured(f'{origin} is not valid JSON') from None
    except RecursionError:  # json's decoder recurses per level: a traceback (trial AC)
        raise ImproperlyConfigured(f'{origin} nests too deeply: it is a JSON object of client name to token') from None
    if not isinstance(table, dict):
        raise ImproperlyConfigured(f'{origin} must be a JSON object of client name to token')
    return table


def plain_tokens(table):
    """Return the "token" values of a parsed table's entries, whatever their type (parse_client checks them)."""
    return [entry['token'] for entry in table.values() if isinstance(entry, dict) and 'token' in entry]


def configured_digests(tokens, tables):
    """Return the SHA-256 digests every source configures: of tokens (the plain ones, strings), and each entry's
    "sha256" as written, lower-cased (a bad one matches nothing)."""
    return {sha256_hex(token) for token in tokens} | {
        str(entry['sha256']).lower() for table in tables for entry in table.values()
        if isinstance(entry, dict) and 'sha256' in entry}


def check_no_name_is_a_token(origin, table, digests):
    """Refuse a client named by a configured token (its own, another's, one known by its sha256 alone, of any source):
    the name is user.name in every access line, and a start error would quote it (trial BL: a later-parsed source's
    token, or a sha256 client's, was shown), or one whose name holds such a token as a word (trial BM: `Bearer <the
    token of a sha256 client>`, which no redactor knows before a request shows it). The line counts the client's place
    in its table, never quotes it."""
    for place, name in enumerate(table, 1):
        if any(sha256_hex(word) in digests for word in {name, *TOKEN_WORD.findall(name)}):
            raise ImproperlyConfigured(f'{origin} names its client number {place} by a configured bearer token (not '
                                       'shown): a name is user.name in every access line; name each client by who it '
                                       'is')


def parse_clients(table, known, labels):
    """Parse a table of client name to token entry into ({digest: Client}, [the plain tokens it holds]); an error's
    line shows none of known (every token configured), and each name of labels as its label (name_labels)."""
    try:
        return [parse_client(name, entry) for name, entry in table.items()], plain_tokens(table)
    except ImproperlyConfigured as exc:  # a name may be a token, written where the name goes (trial BF)
        raise without_tokens(exc, known, labels) from None


def name_labels(tables):
    """Return {a client's name: 'number N of ORIGIN', each of its places joined by "and"} for a start error to say in
    place of the name, when a table holds a client known by its sha256 alone: a name may hold its token among other
    characters (`<token>==`, `x/<token>`), which no digest check finds (trial BN: shown); else {}."""
    if not any(isinstance(entry, dict) and 'sha256' in entry for _, table in tables for entry in table.values()):
        return {}
    places = {}
    for origin, table in tables:
        for place, name in enumerate(table, 1):
            if name != SINGLE_TOKEN_CLIENT:  # BEARER's client, a word of the message that names it
                places.setdefault(name, []).append(f'number {place} of {origin}')
    return {name: ' and '.join(said) for name, said in places.items()}  # a name given twice: both places


def holds_lone_surrogate(value):
    """Tell whether parsed JSON holds a string with a lone surrogate, which JSON's \\u escapes can spell (RFC 8259
    section 8.2) but no UTF-8 can: a token or a name holding one broke the start's message with a traceback (trial
    BK)."""
    if isinstance(value, str):
        try:
            value.encode()
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(holds_lone_surrogate(key) or holds_lone_surrogate(item) for key, item in value.items())
    return isinstance(value, list) and any(map(holds_lone_surrogate, value))


def without_tokens(error, tokens, labels=None):
    """Return an ImproperlyConfigured of error's line with each quoted name of labels ({name: label}) said as its
    label, and each of tokens (the strings among them) redacted: a client's name, which a start error quotes, may be
    or hold a token."""
    from lib.logs.secrets import redacted  # lib.logs imports lib.auth: at the top, a cycle
    line = str(error)
    for name, label in sorted((labels or {}).items(), key=lambda item: -len(repr(item[0]))):
        line = line.replace(repr(name), label)
    return ImproperlyConfigured(redacted(line, {}, [token for token in tokens if isinstance(token, str)]))


def keys_once(origin, pairs):
    """Return a JSON object's pairs as a dict; a key given twice (a client named twice) is a configuration error,
    where json.loads would keep the last silently."""
    table = {}
    for key, value in pairs:
        if key in table:  # a client's name may be a token, and no token of the text is known yet (trial BI)
            shown = repr(key) if key in ENTRY_KEYS else 'a client name (or a key of one entry)'
            raise ImproperlyConfigured(f'{origin} gives {shown} twice')
        table[key] = value
    return table



def read_tokens_file(path):
    """Return the text of BEARER_TOKENS_FILE (file_text: a byte order mark first is dropped; json said "decode using
    utf-8-sig", a word for Python's own call)."""
    try:
        return file_text(Path(path).read_bytes(), 'BEARER_TOKENS_FILE')
    except OSError as exc:
        raise ImproperlyConfigured(f'BEARER_TOKENS_FILE cannot be read: {exc.strerror}') from None


class TokenTable(dict):
    """The {token digest: Client} table, remembering the exact Authorization headers it has accepted.

    A remembered header skips the regex and the SHA-256 on the next request. Only accepted headers are
    kept, and at most MAX_KNOWN_HEADERS of them, so bad tokens cannot fill it. str hashing is keyed per
    process, so a lookup's timing reveals no more than the digest lookup does.
    """

    def __init__(self):
        super().__init__()
        TOKEN_TABLES[id(self)] = self
        self.known_headers = {}
        # The plain tokens the configuration holds, for the log redactor (a sha256-only client adds none).
        self.secrets = []
        # The digests of clients configured by their sha256 alone whose token no request has shown yet, and what
        # learns such a token once one has (learners: token -> None, the redactors' learn_token).
        self.unshown = set()
        self.learners = []
        # How start lines say a client, by name (name_labels): its place in its table while a client is known by its
        # sha256 alone.
        self.labels = {}

    def add(self, clients, tokens):
        """Add (digest, Client) pairs and the plain tokens they were parsed from. A token two clients share, or a
        client named twice (in BEARER, BEARER_TOKENS or the file), is a configuration error: one token would silently
        lose its name, scope and limit to the other, or one name would stand for two scopes."""
        names = {known.name for known in self.values()}
        for digest, client in clients:
            if client.name in names:
                raise ImproperlyConfigured(f'client {client.name!r} is given twice' + (
                    f' (BEARER, which env/<ENVIRONMENT>/.env may set, is the client {SINGLE_TOKEN_CLIENT!r}: unset '
                    'it or rename the other)' if client.name == SINGLE_TOKEN_CLIENT else ''))
            names.add(client.name)
            if digest in self:
                raise ImproperlyConfigured(f'clients {self[digest].name!r} and {client.name!r} have the same token')
            self[digest] = client
        self.secrets.extend(tokens)
        self.unshown |= {digest for digest, _ in clients} - {sha256_hex(token) for token in tokens}

    def said(self, name):
        """Return how a start line says the client named name: its label (self.labels), else its name quoted."""
        return self.labels.get(name, repr(name))

    def identify(self, header):
        """Return the client whose token the Authorization header carries, or None; raise 401 when malformed."""
        client = self.known_headers.get(header)
        if client is None:
            token = bearer_token(header)
            client = self.get(sha256_hex(token))
            if client is not None:
                self.learn(token)
                if len(self.known_headers) < MAX_KNOWN_HEADERS:
                    self.known_headers[header] = client
        return client

    def learn_shown(self, header):
        """Learn each token an Authorization header shows (authorization_words), unless none is left to learn or the
        header was accepted before (its token was learned then)."""
        if self.unshown and header not in self.known_headers:
            for word in authorization_words(header):
                self.learn(word)

    def learn(self, token):
        """Hand the learners a token that has just authenticated when the configuration held only its sha256: from
        now on this process's log lines and problem bodies redact it (contract section 2)."""
        digest = sha256_hex(token)
        if digest in self.unshown:
            self.unshown.discard(digest)
            for learner in self.learners:
                learner(token)


def add_clients(clients, parsed, known):
    """Add parsed ((digest, Client) pairs, plain tokens) to clients (a TokenTable); an error's line shows none of
    known (every token configured; trial BI: a name given twice, which was a token), and each name by its label
    (clients.labels)."""
    try:
        clients.add(*parsed)
    except ImproperlyConfigured as exc:
        raise without_tokens(exc, known, clients.labels) from None


def token_tables(config):
    """Return [(origin, parsed table)] of BEARER_TOKENS and BEARER_TOKENS_FILE, those set."""
    path = config.get('BEARER_TOKENS_FILE')
    texts = [('BEARER_TOKENS', config.get('BEARER_TOKENS')), ('BEARER_TOKENS_FILE', path and read_tokens_file(path))]
    return [(origin, parse_table_json(text, origin)) for origin, text in texts if text]


def load_clients(config):
    """Build the {token digest: Client} table (and its plain tokens) from BEARER, BEARER_TOKENS[_FILE]. Every source
    is read before any client is parsed, so that no start error quotes a name that is a token of a later one."""
    bearer = config.get('BEARER')
    if bearer:
        check_token_characters(bearer, 'BEARER')
    tables = token_tables(config)
    known = [token for token in [bearer, *(token for _, table in tables for token in plain_tokens(table))]
             if isinstance(token, str) and token]
    digests = configured_digests(known, [table for _, table in tables])
    for origin, table in tables:
        check_no_name_is_a_token(origin, table, digests)
    clients = TokenTable()
    if bearer:
        clients.add([(sha256_hex(bearer), Client(SINGLE_TOKEN_CLIENT, None))], [bearer])
    clients.labels = name_labels(tables)
    for _, table in tables:
        add_clients(clients, parse_clients(table, known, clients.labels), known)
    if not clients and config['ENVIRONMENT'] not in ('local', 'test'):
        raise ImproperlyConfigured('no bearer token configured: set BEARER, BEARER_TOKENS or BEARER_TOKENS_FILE')
    check_not_development_token(clients, config['ENVIRONMENT'])
    return clients


def bearer_token(header):
    """Return the token of an Authorization header of the Bearer scheme (RFC 6750 section 2.1); raise 401 when the
    header is missing or malformed. The client is found by the token's SHA-256 (TokenTable): the lookup is O(1) and
    timing-safe, since a caller cannot steer the digest, so its timing reveals nothing about stored tokens."""
    match = BEARER_HEADER.fullmatch(header)
    if match is None:
        raise Unauthorized(headers={'WWW-Authenticate': BEARER_CHALLENGE})
    return match.group(1)


@lru_cache(maxsize=MAX_KNOWN_HEADERS)  # through nginx every request has an id to check: a few headers repeat
def authorization_words(header):
    """Return the words of an Authorization header that may be a token, a tuple: each run of b64token characters
    (RFC 6750) but the scheme's name, Bearer, whatever the header's shape (`Bearer T, Bearer x` as two headers join,
    `Bearer T extra`, `Bearer:T`, `Basic T`): what a caller showed there is its own, a client's or not."""
    return tuple(word for word in TOKEN_WORD.findall(header) if word.lower() != 'bearer')


def holds_a_token(redactor, text, environ):
    """Tell whether text (a request's X-Request-ID) holds a token: one redactor (lib.logs.secrets.Redactor, the
    gateway's: not the database's password, which an id replaced for it confirmed to a caller without a token, trial
    BF) knows, or the request's own (a word of its Authorization header of 4 characters or more,
    authorization_words), as nginx tells it (nginx/dbapi.conf.template)."""
    return redactor.holds(text, also=authorization_words(environ.get('HTTP_AUTHORIZATION', '')))


def identify_quietly(clients):
    """Return the client the request's bearer token names, or None (no header, a malformed one, an unknown token)."""
    try:
        return clients.identify(request.environ.get('HTTP_AUTHORIZATION', ''))
    except Unauthorized:
        return None


def learn_shown_token(clients):
    """Have clients (a TokenTable) learn each token the request's Authorization header shows (authorization_words)
    that is one known only by its sha256 and still unshown, whatever the request (an operations endpoint, a 400
    before authorization, a 401 for a malformed header): its lines and error body are then redacted of it. Nothing to
    do, one check, once every such token is learned (or none is configured), or for a header accepted before (its
    token was learned then)."""
    if clients.unshown:  # the one check of every request once none is left to learn
        clients.learn_shown(request.environ.get('HTTP_AUTHORIZATION', ''))


def learn_shown_tokens(header):
    """Have every TokenTable of this process learn the tokens an Authorization header shows (TokenTable.learn_shown),
    before a request reaches an app: gunicorn's DEBUG line quotes its path first (gunicorn.conf.py's pre_request)."""
    for table in list(TOKEN_TABLES.values()):
        table.learn_shown(header)


def authorize(clients, module):
    """Identify the caller of module by its token and check its scope; keep the client for the access line."""
    client = clients.identify(request.environ.get('HTTP_AUTHORIZATION', ''))
    if client is None:
        raise Unauthorized('The bearer token is not valid.',
                           headers={'WWW-Authenticate': f'{BEARER_CHALLENGE}, error="invalid_token"'})
    remember(CLIENT_KEY, client)
    if not client.may_call(module):
        raise Forbidden(f'Client {client.name!r} may not call module {module!r}.',
                        headers={'WWW-Authenticate': f'{BEARER_CHALLENGE}, error="insufficient_scope"'})
    return client
