"""ECS lines: ecs-logging's StdlibFormatter builds each document, a logging.Filter adds dbapi's fields,
lib.jsonenc encodes the line; access lines also have a fast path that needs no LogRecord. A line too long for
one write to a pipe can be split into several whole lines (split_line)."""
import copy
import json
import logging
import os
import time
import weakref

import ecs_logging

from lib.http.requestid import current_request_id
from lib.jsonenc import dumps_bytes
from lib.process import after_fork

ACCESS_LOGGER = 'dbapi.access'
# log.original repeats the message; the process name and thread say nothing in a gunicorn worker.
EXCLUDED_FIELDS = ('log.original', 'process.name', 'process.thread')
# An access line is written by the access log, not by a line of code worth pointing at.
ACCESS_EXCLUDED_FIELDS = EXCLUDED_FIELDS + ('log.origin',)
REQUEST_ID_FIELD = 'http.request.id'
# The ECS version of the fields dbapi writes: service.environment came with ECS 1.12.0 (http.request.id with 1.9.0).
# ecs-logging states 1.6.0 on every line, so dbapi's lines state this instead; nginx's access log
# (nginx/dbapi.conf.template) and filebeat's nginx error lines (filebeat/filebeat.yml) copy it, and a test keeps
# the copies equal.
ECS_VERSION = '1.12.0'
# The top-level names of ECS 1.12.0 (its field sets and base fields). A record attribute named otherwise is a
# library's own extra (gunicorn's `metric`, `mtype`, `value`): it goes under labels, where ECS keeps custom
# keywords, instead of taking a top-level name that a later ECS version, or another line, may type differently.
ECS_TOP_LEVEL_NAMES = frozenset({
    '@timestamp', 'agent', 'client', 'cloud', 'container', 'data_stream', 'destination', 'dll', 'dns', 'ecs',
    'error', 'event', 'file', 'group', 'host', 'http', 'labels', 'log', 'message', 'network', 'observer',
    'orchestrator', 'organization', 'package', 'process', 'registry', 'related', 'rule', 'server', 'service',
    'source', 'span', 'tags', 'threat', 'tls', 'trace', 'transaction', 'url', 'user', 'user_agent',
    'vulnerability'})


# --- Encoding: the project's one JSON encoder, and repr for whatever it cannot write. ---

def encode(value):
    """Encode value as JSON text with lib.jsonenc; what it cannot encode is written as its repr."""
    try:
        return dumps_bytes(value).decode()
    except (TypeError, ValueError):
        return dumps_bytes(with_reprs(value)).decode()


def with_reprs(value):
    """Return value with every part lib.jsonenc cannot encode replaced by its repr."""
    if isinstance(value, dict):
        return {key if isinstance(key, str) else repr(key): with_reprs(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [with_reprs(item) for item in value]
    try:
        dumps_bytes(value)
    except (TypeError, ValueError):
        return repr(value)
    return value


def encode_line(document):
    """Encode an ecs-logging document as one line, @timestamp, log.level and message first as ECS asks."""
    log = document.get('log', {})
    head = {'@timestamp': document.pop('@timestamp', None), 'log.level': log.pop('level', None),
            'message': document.pop('message', None)}
    if not log:
        document.pop('log', None)
    return encode({**head, **document})


def dotted(fields, prefix=''):
    """Return nested ECS fields as {dotted name: value}, the form record attributes take."""
    flat = {}
    for key, value in fields.items():
        if isinstance(value, dict):
            flat.update(dotted(value, f'{prefix}{key}.'))
        else:
            flat[prefix + key] = value
    return flat


def nested(fields):
    """Return {dotted name: value} fields as nested objects, the form a line takes."""
    tree = {}
    for name, value in fields.items():
        *groups, last = name.split('.')
        node = tree
        for group in groups:
            node = node.setdefault(group, {})
        node[last] = value
    return tree


def labelled_extras(document):
    """Return an ecs-logging document with each top-level field that ECS does not name moved under labels, as
    text: labels.<name>, or labels.<name>_<key> for each leaf of an object."""
    extras = [name for name in document if name.partition('.')[0] not in ECS_TOP_LEVEL_NAMES]
    if not extras:
        return document
    labels = document.setdefault('labels', {})
    for name in extras:
        value = document.pop(name)
        leaves = dotted(value, f'{name}.') if isinstance(value, dict) else {name: value}
        for key, leaf in leaves.items():
            labels[key.replace('.', '_')] = label_text(leaf)
    return document


def label_text(value):
    """Return value as the text an ECS label holds (labels are keywords): a string as it is, else its JSON."""
    value = with_reprs(value)
    return value if isinstance(value, str) else encode(value)


# --- Lines too long for one write to a pipe. ---

LINE_PART_LABEL = 'line_part'


def split_line(line, limit):
    """Return line as lines that each take at most limit bytes with their newline: [line] when it fits, else one
    line per piece of its long texts (a stack trace, a long message), each with every other field (the MEASURES in
    the first piece alone) and labels.line_part "n/N" (n zero-padded). A text is cut after a line break where one is
    near; its pieces joined are the text."""
    if len(line) < limit // 4 or len(line.encode()) < limit:
        return [line]
    try:
        document = json.loads(line)
    except ValueError:
        return [line]  # not a line of this formatter's: written as it is
    base, texts = without_long_texts(document, limit // 2) if isinstance(document, dict) else (None, [])
    if base is None:
        return [line]  # short fields alone fill the line: nothing to gain from pieces
    pieces = [(path, piece) for path, text in texts
              for piece in text_pieces(text, limit - 1 - piece_overhead(base, texts, path))]
    width = len(str(len(pieces)))  # "02/12": the parts sort as text too
    rest = without_measures(base)
    return [encode(line_piece(base if number == 1 else rest, texts, path, piece, f'{number:0{width}}/{len(pieces)}'))
            for number, (path, piece) in enumerate(pieces, 1)]


# The fields that measure the event a line tells of: the first piece of a split line alone carries them, so that an
# aggregation of statuses, outcomes or durations counts a request's access line once (trial AP: a 503's long trace
# made two pieces, each counted as a 503).
MEASURES = (('http', 'response'), ('event', 'outcome'), ('event', 'duration'))


def without_measures(base):
    """Return a copy of a split line's base document without its MEASURES."""
    rest = copy.deepcopy(base)
    for *parents, key in MEASURES:
        holder = rest
        for parent in parents:
            holder = holder.get(parent) if isinstance(holder, dict) else None
        if isinstance(holder, dict):
            holder.pop(key, None)
    return rest


def without_long_texts(document, room):
    """Return (document with its longest strings emptied until it encodes in room bytes, [(path, string)] in the
    document's order), or (None, []) when emptying every string is not enough."""
    texts = sorted(string_leaves(document), key=lambda item: len(item[1]), reverse=True)
    base = copy.deepcopy(document)
    base.setdefault('labels', {})[LINE_PART_LABEL] = '0000/0000'
    taken = []
    for path, text in texts:
        if encoded_size(base) <= room:
            break
        set_leaf(base, path, '')
        taken.append(path)
    if encoded_size(base) > room:
        return None, []
    return base, [(path, text) for path, text in string_leaves(document) if path in taken]


def string_leaves(document, path=()):
    """Yield (path, string) for every string in a decoded line, path being the keys that lead to it."""
    for key, value in document.items():
        if isinstance(value, dict):
            yield from string_leaves(value, (*path, key))
        elif isinstance(value, str):
            yield (*path, key), value


def parent_of(document, path):
    """Return the object of a nested document that holds the value at path, and the value's key."""
    for key in path[:-1]:
        document = document[key]
    return document, path[-1]


def set_leaf(document, path, value):
    """Set the value at path in a nested document."""
    parent, key = parent_of(document, path)
    parent[key] = value


def line_piece(base, texts, path, piece, part):
    """Return the document of one piece: base with the text at path set to piece and the other texts left out."""
    document = copy.deepcopy(base)
    for other, _ in texts:
        if other != path:
            parent, key = parent_of(document, other)
            del parent[key]
    set_leaf(document, path, piece)
    document['labels'][LINE_PART_LABEL] = part
    return document


def piece_overhead(base, texts, path):
    """Return the bytes a line holding a piece of the text at path takes besides the piece's JSON string."""
    return encoded_size(line_piece(base, texts, path, '', '0000/0000')) - len('""')


def encoded_size(value):
    """Return the bytes of value's JSON."""
    return len(encode(value).encode())


def text_pieces(text, budget):
    """Yield consecutive pieces of text whose JSON strings take at most budget bytes each, quotes included."""
    start = 0
    while start < len(text):
        end = min(len(text), start + max(1, budget - 2))  # a character takes a byte at least; two quotes
        while end - start > 1 and encoded_size(text[start:end]) > budget:
            end = start + max(1, (end - start) * 3 // 4)
        line_break = text.rfind('\n', start, end)
        if end < len(text) and line_break > start + (end - start) // 2:
            end = line_break + 1
        yield text[start:end]
        start = end


# --- dbapi's fields on every record, and the formatter. ---

def service_fields(config, hostname):
    """Return the fields every line carries, by dotted name: who wrote it, and the index filebeat ships it to."""
    return {'service.name': config['APP_ID'], 'service.environment': config['ENVIRONMENT'],
            'service.node.name': config['PROCESS_ID'], 'host.hostname': hostname,
            'labels.elk_index': config['ELK_INDEX']}


class ServiceFields(logging.Filter):
    """Add dbapi's fields to each record a handler writes, as the dotted extra attributes ecs-logging writes:
    the service fields, and the request id of a line logged while a request is served."""

    def __init__(self, fields):
        super().__init__()
        self.fields = fields

    def filter(self, record):
        """Add the fields the record does not carry already; keep every record."""
        for name, value in self.fields.items():
            add_field(record, name, value)
        request_id = current_request_id()
        if request_id:
            add_field(record, REQUEST_ID_FIELD, request_id)
        return True


def add_field(record, name, value):
    """Give record a dotted field it lacks; a nested extra of the same group (extra={'labels': {...}}) takes it
    in, since ecs-logging refuses one field spelt both ways."""
    group, _, rest = name.partition('.')
    given = getattr(record, group, None)
    if isinstance(given, dict):
        setattr(record, group, merged(nested({rest: value}), given))
    elif not hasattr(record, name):
        setattr(record, name, value)


def merged(defaults, given):
    """Return the nested fields given, with defaults filling in what they lack."""
    result = dict(given)
    for key, value in defaults.items():
        if isinstance(value, dict) and isinstance(result.get(key), dict):
            result[key] = merged(value, result[key])
        else:
            result.setdefault(key, value)
    return result


class EcsFormatter(logging.Formatter):
    """Lines as ecs-logging's own formatter builds them (an access line without log.origin), encoded with
    lib.jsonenc and redacted; the whole traceback, chained causes included, goes in error.stack_trace."""

    def __init__(self, fields, redact):
        super().__init__()
        # stack_trace_limit=0: ecs-logging's trace is the frames alone; full_trace writes the whole one.
        self.library = ecs_logging.StdlibFormatter(exclude_fields=EXCLUDED_FIELDS, stack_trace_limit=0)
        self.access = ecs_logging.StdlibFormatter(exclude_fields=ACCESS_EXCLUDED_FIELDS, stack_trace_limit=0)
        self.redact = redact
        self.last = (lambda: None, '')
        self.fast_access = FastAccessLines(fields, redact)

    def format(self, record):
        """Return the record as one JSON line, built once however many handlers write it."""
        last = self.last
        if last[0]() is not record:
            # A weak reference: a record's traceback holds frames, and their locals, that must not outlive it.
            last = self.last = (weakref.ref(record), self.redact(encode_line(self.document(record))))
        return last[1]

    def document(self, record):
        """Return the record's ECS document."""
        ecs = self.access if record.name == ACCESS_LOGGER else self.library
        document = labelled_extras(ecs.format_to_ecs(record))
        document['ecs.version'] = ECS_VERSION
        if record.exc_info and record.exc_info[1] is not None:
            document.setdefault('error', {})['stack_trace'] = self.full_trace(record)
        return document

    def full_trace(self, record):
        """Return the record's traceback, chained causes and the final line included, and its stack if any."""
        trace = self.formatException(record.exc_info)
        return f'{trace}\n{record.stack_info}' if record.stack_info else trace

    def access_line(self, level, message, fields):
        """Return an access line as JSON text, made now by this process, without a LogRecord."""
        return self.fast_access.line(level, message, fields)


class FastAccessLines:
    """Access lines spliced together from text: the fields every line of this process carries are encoded once.

    The line holds what EcsFormatter writes for the same access record; tests/test_logging.py compares them.
    """

    def __init__(self, fields, redact):
        service = nested(fields)
        self.labels = service.pop('labels', {})
        self.service = service
        self.redact = redact
        self.fixed_json = None
        self.second = (None, '')
        ACCESS_FORMATTERS.add(self)

    def line(self, level, message, fields):
        """Return the access line of a request: level ('info', 'error'), message and its nested fields."""
        if self.fixed_json is None:  # once per process: a forked worker forgets its parent's (after_fork below)
            self.fixed_json = encode(self.fixed_fields(os.getpid()))[1:-1]
        head = f'{{"@timestamp":"{self.timestamp(time.time())}","log.level":"{level}","message":{encode(message)}'
        return self.redact(f'{head},{self.fixed_json},{encode(self.labelled(fields))[1:]}')

    def fixed_fields(self, pid):
        """Return the fields that every access line of process pid carries."""
        return {'ecs.version': ECS_VERSION, **self.service, 'log': {'logger': ACCESS_LOGGER},
                'process': {'pid': pid}}

    def labelled(self, fields):
        """Return fields with the service's labels added to the request's."""
        labels = fields.get('labels')
        return {**fields, 'labels': {**labels, **self.labels} if labels else self.labels}

    def timestamp(self, created):
        """Return a UTC time with milliseconds as ecs-logging writes it, formatting each second only once."""
        second = int(created)
        cached = self.second
        if cached[0] != second:
            cached = self.second = (second, time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(second)))
        return f'{cached[1]}.{int((created - second) * 1000):03d}Z'


ACCESS_FORMATTERS = weakref.WeakSet()


@after_fork
def forget_fixed_access_fields():
    """In a forked worker, encode the fixed fields again: they hold the process id."""
    for formatter in list(ACCESS_FORMATTERS):
        formatter.fixed_json = None
