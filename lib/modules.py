"""Discover modules/*, check each route table, and mount one authorised blueprint per module."""
import functools
import importlib
import inspect
import itertools
import re
import traceback
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from flask import Blueprint, Response
from marshmallow import INCLUDE, fields, missing

from lib.auth import authorize
from lib.db.unit import close_iterated
from lib.decorators import SCHEMA_ATTRIBUTE, UNVALIDATED_ROUTE, answering_layer, borrows_of, databases_of, marks_of, \
    respond, schema_of, wrapped_chain
from lib.errors import Unprocessable, import_failure
from lib.http.disconnect import WATCHER
from lib.http.exchange import ROUTE_KEY, answered_as, remember
from lib.fastschema import fast_loader, has_no_hooks
from lib.http.body import read_json_body

MODULE_NAME = re.compile(r'[a-z][a-z0-9_]*')
# What a 422 says of a key a body left out, in marshmallow's own words.
MISSING_FIELD = 'Missing data for required field.'
ROUTE_NAME = re.compile(r'([A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*)?')
# The operations endpoints' paths and the app's own blueprints' names (ops: /healthz and /readyz).
RESERVED_NAMES = frozenset({'healthz', 'readyz', 'metrics', 'static', 'ops'})
ROUTE_KEYS = frozenset({'route', 'action'})


class ModuleError(Exception):
    """A module cannot be mounted; the message names its file."""


@dataclass(frozen=True)
class Route:
    """One mounted action: its module, its name, the callable and how its body becomes arguments."""

    module: str
    name: str
    action: object
    load_arguments: object
    answering: object  # the action's answering_layer


def module_folders(package):
    """Yield (name, folder) for each module folder inside a package of MODULE_PACKAGES; ModuleError when it cannot
    be imported or is no package."""
    for folder in sorted(package_root(package).iterdir()):
        if folder.is_dir() and not folder.name.startswith(('_', '.')) and not only_bytecode(folder):
            yield folder.name, folder


def package_root(package):
    """Return the folder of a package of MODULE_PACKAGES; ModuleError when it cannot be imported or is no package."""
    try:
        return Path(importlib.import_module(package).__path__[0])
    except (ImportError, AttributeError, IndexError, TypeError, ValueError) as exc:  # a relative or empty name too
        raise ModuleError(f'MODULE_PACKAGES names {package!r}, which is no importable package '
                          f'({type(exc).__name__}: {exc})') from exc


def module_files(package):
    """Return the Python files beside the module folders of a package (`modules/orders.py`), which mount nothing: a
    module is a folder (trial BU: a module written as one file was a 404 without a word)."""
    return [path for path in sorted(package_root(package).glob('*.py')) if not path.name.startswith('_')]


def only_bytecode(folder):
    """Tell whether folder holds files, all of them in __pycache__ folders (its own, its sub-folders'): what git
    leaves of a module after a switch to a branch without it (it removes the tracked files, not the bytecode Python
    wrote). Not a module; one that holds any other file is, and must have its routes.py (trials AG, AH)."""
    files = [path.relative_to(folder) for path in folder.rglob('*') if not path.is_dir()]
    return bool(files) and all('__pycache__' in path.parts for path in files)


def import_route_table(package, name, folder):
    """Import <package>.<name>.routes and return its routes list, naming the file on any failure."""
    routes_file = folder / 'routes.py'
    if not MODULE_NAME.fullmatch(name) or name in RESERVED_NAMES:
        raise ModuleError(f'{folder}: a module folder name must match [a-z][a-z0-9_]* and not be one of '
                          f'{", ".join(sorted(RESERVED_NAMES))} (paths of their own)')
    if not routes_file.is_file():
        raise ModuleError(f'{routes_file}: missing; every module folder needs a routes.py')
    try:
        routes_module = importlib.import_module(f'{package}.{name}.routes')
    except BaseException as exc:  # sys.exit() at import would end the start with no word, even as success
        raise ModuleError(f'{routes_file}: import failed ({import_failure(exc)}, at {failed_at(exc, folder)})') from exc
    return routes_file, getattr(routes_module, 'routes', None)


def failed_at(exc, folder):
    """Return file:line where an import failed: a SyntaxError's own place (its traceback ends in importlib's
    machinery), else the last frame of the traceback in the module's folder (the line that called into lib, when lib
    raised), else its last frame."""
    if isinstance(exc, SyntaxError) and exc.filename:
        return f'{exc.filename}:{exc.lineno}'
    frames = traceback.extract_tb(exc.__traceback__)
    own = [frame for frame in frames if Path(frame.filename).is_relative_to(folder)]
    where = (own or frames)[-1]
    return f'{where.filename}:{where.lineno}'


def check_route_table(routes_file, table):
    """Raise ModuleError, naming routes_file, unless table is a list of {route, action} dicts without duplicates."""
    if not isinstance(table, list):
        raise ModuleError(f'{routes_file}: must define routes = [dict(route=..., action=...), ...]')
    if not table:
        raise ModuleError(f'{routes_file}: routes is empty: a module mounts at least one action, '
                          'routes = [dict(route=..., action=...), ...]')
    seen = set()
    for index, entry in enumerate(table):
        where = f'{routes_file}: routes[{index}]'
        if not isinstance(entry, dict) or set(entry) != ROUTE_KEYS:
            named = f' (it has {", ".join(map(repr, entry))})' if isinstance(entry, dict) else ''
            raise ModuleError(f'{where} must be a dict with exactly the keys route and action{named}')
        if not isinstance(entry['route'], str) or not ROUTE_NAME.fullmatch(entry['route']):
            raise ModuleError(f'{where}: route must be a string like "create" or "reports/daily": letters, digits, '
                              f'"_" and "-", parts joined by single "/", no leading or trailing "/" '
                              f'(got {entry["route"]!r})')
        if not callable(entry['action']):
            raise ModuleError(f'{where}: action is not callable')
        if entry['route'] in seen:
            raise ModuleError(f'{where}: route {entry["route"]!r} appears twice')
        seen.add(entry['route'])


def injected_names(action, reached):
    """Return the names of the parameters decorators pass to action, which a body must never set (inject_db's db,
    inject_conn's conn): those of the function they wrap that the action's own signature no longer shows, those
    inject_db or inject_conn pass to what the action reaches (reachable_callables), which a wrapper written without
    functools.wraps hides (trial BY: `{"db": 1}` reached one as a second value, a 500), and the keywords a
    functools.partial of the action pins (trial BY: `partial(search, tenant='acme')` took the body's tenant)."""
    chain = list(wrapped_chain(action))
    hidden = {name for value in reached if is_routine(value) for name in parameters_injected_into(value)}
    pinned = {name for layer in chain if isinstance(layer, functools.partial) for name in layer.keywords}
    return set(inspect.signature(chain[-1]).parameters) - set(inspect.signature(action).parameters) | hidden | pinned


def parameters_injected_into(value):
    """Return the names of the parameters inject_db or inject_conn pass to value (a routine): the first ones of the
    function they wrap, as many as they borrow, whatever their names (trial CC: `def f(database, **body)` took
    `database` from the body), else, when Python cannot read them, the names the docs give (`db`, `conn`)."""
    borrows = borrows_of(value)
    try:
        return set(first_parameters(value, len(borrows)))
    except (TypeError, ValueError):
        return {borrow.parameter for borrow in borrows}


def first_parameters(action, count):
    """Return the names of the first count parameters of the function action wraps (its innermost layer), which
    inject_db and inject_conn fill, the innermost decorator's first."""
    return list(inspect.signature(list(wrapped_chain(action))[-1]).parameters)[:count]


def check_injected_first(action, where):
    """Raise ModuleError for an action whose parameters do not match what its decorators pass, by the names
    docs/modules.md gives them (`db` for inject_db, `conn` for inject_conn). Each decorator passes its connection by
    position, as the first parameter left, the innermost's first: an action that still takes such a name from the
    body had another parameter get the connection, and the body could set that name (trial AW: `def f(name, db)`);
    one whose `conn` gets inject_db's Db, or `db` inject_conn's connection, has them swapped (trial BC). Checked on
    the action as mounted: under inject_db() and inject_db('other'), `def f(other, db)` is right; the line names
    where each connection goes (trial BB: "put it first" was wrong under two decorators)."""
    borrows = list(reversed(borrows_of(action)))  # innermost first, as they take the parameters
    if not borrows:
        return
    places = first_parameters(action, len(borrows))
    late = [borrow.parameter for borrow in borrows if borrow.parameter in inspect.signature(action).parameters]
    swapped = [place for borrow, place in zip(borrows, places) if place in ('db', 'conn') and place != borrow.parameter]
    if not (late or swapped):
        return
    decorators = ', '.join(f'inject_{borrow.parameter}({borrow.database!r}) to {place!r}'
                           for borrow, place in zip(borrows, places))
    problem = f'takes {late[0]!r} as a body key' if late else f'names {swapped[0]!r} a parameter another kind gets'
    raise ModuleError(f'{where}: the action {problem}, while its decorators pass their connections as its first '
                      f'parameters, the innermost decorator\'s first ({decorators}): name each as its decorator\'s '
                      '(`db` for inject_db, `conn` for inject_conn, any other name), and the body keys otherwise')


def check_schema(schema, action, where, injected):
    """Raise ModuleError for a schema that cannot work with its action: one loading a field into a parameter a
    decorator injects (every call would be a 500), one whose loaded keys the action cannot take
    (check_parameters), or one that lets a body key through over a validated field (check_include_schemas);
    injected is injected_names'."""
    if not schema.many and (clash := sorted(injected & loaded_names(schema))):
        raise ModuleError(f'{where}: {type(schema).__name__} loads field {clash[0]!r}, the parameter a decorator '
                          'injects or a functools.partial pins: rename the field (data_key keeps its key in the body)')
    check_parameters(schema, action, where, injected)
    check_include_schemas(schema, where)


def check_parameters(schema, action, where, injected):
    """Raise ModuleError when the action cannot take what schema loads, which would make every such call a
    TypeError (a 500): for many=True, an action that cannot take the list as its one argument; a positional-only
    parameter without a default; and, for a schema without hooks (whose loaded keys are its fields' attributes
    alone, lib/fastschema.py's has_no_hooks), a field loaded into a parameter the action does not take, or, unless
    unknown keys may bring it (INCLUDE), a parameter without a default whose field a body may leave out (not
    required and no load_default, or partial)."""
    signature = inspect.signature(action)
    if schema.many:  # the action takes the loaded list as its one positional argument
        try:
            signature.bind([])
        except TypeError:
            raise ModuleError(f'{where}: {type(schema).__name__}(many=True) passes the loaded list as one positional '
                              'argument, which the action must take (and need no other)') from None
        return
    parameters = signature.parameters.values()
    if any(p.kind == p.POSITIONAL_ONLY and p.default is p.empty for p in parameters):
        raise ModuleError(f'{where}: the action takes the loaded body as keyword arguments: a positional-only '
                          'parameter needs a default')
    if not has_no_hooks(schema):
        return
    takes = keyword_test(action, injected)  # the injected parameter's clash was reported before (check_schema)
    if untaken := sorted(name for name in loaded_names(schema) if not takes(name)):
        raise ModuleError(f'{where}: {type(schema).__name__} loads {untaken[0]!r}, which the action does not take: '
                          'add the parameter, or rename the field (data_key keeps its key in the body)')
    if schema.unknown != INCLUDE and (unsure := sorted(needed_keywords(parameters) - always_loaded(schema))):
        raise ModuleError(f'{where}: the action\'s parameter {unsure[0]!r} has no default, but '
                          f'{why_it_may_be_left_out(schema, unsure[0])}')


def why_it_may_be_left_out(schema, name):
    """Return why a valid body may bring no value for the parameter name, and what to do (trial BU: a field named by
    partial, or no field at all, was told to be made required)."""
    kind, partial = type(schema).__name__, schema.partial
    keys = [key for key, field in schema.fields.items() if (field.attribute or key).split('.')[0] == name]
    if not keys:
        return f'no field of {kind} loads it: add one, required or with a load_default, or give the parameter a default'
    if partial is True or isinstance(partial, (tuple, list, set, frozenset)) and any(key in partial for key in keys):
        return (f'{kind}\'s partial lets a body leave its field out (and skips its load_default then): give the '
                'parameter a default')
    return (f'a body may leave out what {kind} loads into it: make its field required or give it a load_default, or '
            'give the parameter a default')


def needed_keywords(parameters):
    """Return the names of the keyword parameters without a default among parameters: what every call must pass."""
    return {p.name for p in parameters if p.default is p.empty and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def always_loaded(schema):
    """Return the keys schema loads from every valid body: those of its fields that are required or have a
    load_default, unless partial lets a body leave them out (marshmallow then skips the field, load_default too)."""
    partial = schema.partial
    return {(field.attribute or name).split('.')[0] for name, field in schema.fields.items()
            if not field.dump_only and (field.required or field.load_default is not missing)
            and not (partial is True or isinstance(partial, (tuple, list, set, frozenset)) and name in partial)}


def loaded_names(schema):
    """Return the keys schema's loaded values come under: its fields' attributes (else names), a dotted one's first
    part, which marshmallow loads as a dict."""
    return {attribute.split('.')[0] for attribute in loaded_fields(schema)}


def loaded_fields(schema):
    """Return {the name a field loads into (its attribute, else its name): field} of schema's fields loaded from a
    body (not dump_only)."""
    return {field.attribute or name: field for name, field in schema.fields.items() if not field.dump_only}


def check_include_schemas(schema, where, unknown=None, seen=None):
    """Raise ModuleError when schema, or a schema nested in it (Nested, Pluck, and those a List, Tuple or Dict
    holds), lets unknown keys through (unknown = INCLUDE, its own or its Nested field's) and declares a field whose
    body key would come through unvalidated: one read from another key than it loads it as (data_key, a dotted
    attribute), over which marshmallow puts a body key spelled as the loaded name, or one dump_only, whose key it
    takes as unknown."""
    unknown = unknown or schema.unknown
    # only, exclude and an instance's dump_only make another schema of a class
    signature = (type(schema), unknown, tuple((name, field.dump_only, field.data_key, field.attribute)
                                              for name, field in schema.fields.items()))
    seen = set() if seen is None else seen
    if signature in seen:
        return
    seen.add(signature)
    if unknown == INCLUDE:
        for name, field in schema.fields.items():
            key, attribute = field.data_key or name, field.attribute or name
            if field.dump_only or key != attribute or '.' in attribute:
                how = 'dump_only' if field.dump_only else f'read from {key!r} into {attribute!r}'
                raise ModuleError(f'{where}: {type(schema).__name__} lets unknown keys through (unknown = INCLUDE) '
                                  f'and its field {name!r} is {how}: a body key {attribute!r} would reach the action '
                                  'unvalidated. Use unknown = RAISE or EXCLUDE, or a plain field')
    for field in loaded_fields(schema).values():
        for nested, nested_unknown in nested_schemas(field):
            check_include_schemas(nested, where, nested_unknown, seen)


def nested_schemas(field):
    """Yield (schema, the unknown its field loads it with, or None) of each schema field loads values with. A Pluck
    loads a value it makes itself, {its one field's key: the body's value}: its schema counts only when that field
    is dump_only, whose key marshmallow takes as unknown."""
    if isinstance(field, fields.Pluck):
        plucked = field.schema.fields.get(field.field_name)
        if plucked is not None and plucked.dump_only:
            yield field.schema, field.unknown
    elif isinstance(field, fields.Nested):
        yield field.schema, field.unknown
    inner = [getattr(field, name, None) for name in ('inner', 'key_field', 'value_field')]
    for held in [*inner, *getattr(field, 'tuple_fields', ())]:
        if held is not None:
            yield from nested_schemas(held)


def required_arguments(schema, action):
    """Return the keyword parameters without a default of an action whose schema the start could not check for
    them (check_parameters): one that lets unknown keys through (unknown = INCLUDE), or has hooks or methods. A
    valid body may leave any of them out. None for any other schema."""
    if schema.many or (schema.unknown != INCLUDE and has_no_hooks(schema)):
        return None
    return frozenset(needed_keywords(inspect.signature(action).parameters.values()))


def argument_refusal(schema, action, injected):
    """Return a test of the keys a schema with unknown = INCLUDE loads for the action (the call's keyword arguments),
    true for an undeclared one to refuse as unknown (422): a parameter a decorator injects (injected_names), and,
    for an action without **kwargs, one it does not take by keyword, which would be a TypeError (500). None for a
    schema that loads no key it does not declare, or a list (many)."""
    if schema.unknown != INCLUDE or schema.many:
        return None
    declared = set(loaded_fields(schema))  # validated: the action's to take
    takes = keyword_test(action, injected)
    return lambda key: key not in declared and not takes(key)


def keyword_test(action, injected):
    """Return a test of a key as a keyword argument of action: true when it is a string the action takes by keyword
    (or any, with **kwargs) and no decorator injects it (injected: injected_names')."""
    parameters = inspect.signature(action).parameters.values()
    takes_any = any(p.kind == p.VAR_KEYWORD for p in parameters)
    by_keyword = {p.name for p in parameters if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return lambda key: isinstance(key, str) and key not in injected and (takes_any or key in by_keyword)


def hooked_keys_test(schema, action, injected):
    """Return keyword_test(action, injected) for a schema whose hooks decide the keys it loads (a post_load returns the
    action's keyword arguments), which the start could not check; None for any other schema, or a list (many)."""
    return None if schema.many or has_no_hooks(schema) else keyword_test(action, injected)


def schema_loader(schema, action, injected, fast_paths=True):
    """Return a function that validates a body with schema into call arguments; a schema that lets unknown keys
    through (unknown = INCLUDE) passes the action only those it may take (argument_refusal), and a body that leaves
    out an argument the start could not check for (required_arguments) is a 422 too."""
    load_valid_body = fast_loader(schema, enabled=fast_paths) or (lambda body: None)
    refused = argument_refusal(schema, action, injected)
    required = required_arguments(schema, action)
    takes = hooked_keys_test(schema, action, injected)

    def load_arguments(body):
        if schema.many != isinstance(body, list) or not isinstance(body, (list, dict)):
            shape = 'array' if schema.many else 'object'
            raise Unprocessable(f'The request body must be a JSON {shape}.')
        loaded = load_valid_body(body)
        if loaded is None:
            loaded = schema.load(body)
            if not schema.many and not isinstance(loaded, dict):
                raise TypeError(f'{type(schema).__name__} loaded a {type(loaded).__name__}, not a dict of the '
                                "action's keyword arguments: a post_load hook must return one")
        if refused is not None and isinstance(loaded, dict):
            if found := sorted(key for key in loaded if refused(key)):
                raise Unprocessable(errors={key: ['Unknown field.'] for key in found})
        if required is not None and isinstance(loaded, dict):
            if absent := sorted(required - loaded.keys()):
                raise Unprocessable(errors={key: [MISSING_FIELD] for key in absent})
        if takes is not None and (untaken := sorted(key for key in loaded if not takes(key))):
            raise TypeError(f'{type(schema).__name__} loaded {untaken[0]!r}, which the action does not take as a '
                            'keyword argument: its hooks (a post_load) return what it takes')
        return ((loaded,), {}) if schema.many else ((), loaded)
    return load_arguments


def signature_loader(action, where, injected):
    """Return a function that checks a body's keys against action's keyword parameters."""
    parameters = inspect.signature(action).parameters.values()
    if any(p.kind in (p.POSITIONAL_ONLY, p.VAR_POSITIONAL) for p in parameters):
        raise ModuleError(f'{where}: an action without use_schema takes keyword parameters only')
    takes = keyword_test(action, injected)  # never the injected parameter, **kwargs or not
    required = needed_keywords(parameters)

    def load_arguments(body):
        if not isinstance(body, dict):
            raise Unprocessable('The request body must be a JSON object.')
        errors = {key: ['Unknown field.'] for key in body if not takes(key)}
        errors.update({key: [MISSING_FIELD] for key in required if key not in body})
        if errors:
            raise Unprocessable(errors=errors)
        return (), body
    return load_arguments


def is_async(layer):
    """Tell whether calling layer (a function, or an object with a __call__) makes a coroutine or an async
    generator, which dbapi would never run."""
    return any(inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)
               for target in (layer, getattr(layer, '__call__', None)))


def check_decorated_once(action, where):
    """Raise ModuleError for an action with two schemas (use_schema twice through a layer that copies no marks, a
    functools.partial or a staticmethod: use_schema refuses the rest itself) or two connections from one database
    (inject_conn and inject_db together: each request would hold two of the pool's connections, and under load every
    request would hold one while it waits for its second). functools.wraps copies a mark outward: the same object,
    counted once."""
    if len({id(schema) for schema in marks_of(action, SCHEMA_ATTRIBUTE)}) > 1:
        raise ModuleError(f'{where}: the action has use_schema twice; give it one schema')
    borrowed = databases_of(action)
    if twice := sorted({name for name in borrowed if borrowed.count(name) > 1}):
        raise ModuleError(f'{where}: the action borrows two connections from the database {twice[0]!r} (inject_conn '
                          'or inject_db twice); one is enough for any number of statements and transactions')


def check_signature_readable(action, where):
    """Raise ModuleError for an action whose signature Python cannot read (a built-in such as time.time or dict):
    every check of its parameters needs it (trial BU: a traceback naming neither the file nor the route)."""
    try:
        inspect.signature(action)
    except (ValueError, TypeError) as exc:
        raise ModuleError(f'{where}: dbapi cannot read the action\'s parameters ({exc}): wrap it in a function of '
                          'your own') from None


# The most values one action's start checks look at (reachable_callables), and the most items of one container:
# a module's big tables cost nothing at start.
MOST_VALUES_REACHED = 2000
MOST_ITEMS_LOOKED_AT = 100
# The most values each action's own look takes, for a hidden use_schema mark and the parameters a hidden inject_db
# passes, so that its outcome does not hang on the order of the routes (what earlier routes reached is not skipped:
# trial CA, a second route of the same action took `db` from the body).
MOST_VALUES_SEARCHED_FOR_A_MARK = 100


def held_values(value):
    """Return what value (a function, bound method, functools.partial, staticmethod, or an instance of the module's
    own classes) holds that it may call: a function's closure cells, default arguments and attributes; a bound
    method's function and object; a partial's function and arguments; a staticmethod's function (trial CB: an action
    mounted as one was not looked into); an instance's attributes and its class's __call__. The items of
    a tuple, list, set or dict among them too. Read without running the module's code: no __getattr__ is asked."""
    if isinstance(value, types.FunctionType):
        held = [cell_value(cell) for cell in value.__closure__ or ()]
        held += [*(value.__defaults__ or ()), *(value.__kwdefaults__ or {}).values(), *vars(value).values()]
    elif isinstance(value, types.MethodType):
        held = [value.__func__, value.__self__]
    elif isinstance(value, functools.partial):
        held = [value.func, *value.args, *value.keywords.values()]
    elif isinstance(value, staticmethod):
        held = [value.__func__]
    else:
        held = [*instance_attributes(value), inspect.getattr_static(type(value), '__call__', None)]
    return [item for entry in held for item in container_items(entry)]


def cell_value(cell):
    """Return a closure cell's value, or None for a cell not filled yet."""
    try:
        return cell.cell_contents
    except ValueError:
        return None


def instance_attributes(value):
    """Return the values of an instance's own __dict__, read as object does (no __getattr__ of the module's)."""
    try:
        return list(object.__getattribute__(value, '__dict__').values())
    except (AttributeError, TypeError):  # slots, or no dict
        return []


def container_items(entry):
    """Return entry's first MOST_ITEMS_LOOKED_AT items when it is a tuple, list, set or dict (its values), else
    [entry]."""
    if type(entry) in (tuple, list, set, frozenset):
        return list(itertools.islice(entry, MOST_ITEMS_LOOKED_AT))
    if type(entry) is dict:
        return list(itertools.islice(entry.values(), MOST_ITEMS_LOOKED_AT))
    return [entry]


def is_code(value, package):
    """Tell whether value is code the start checks look into: a function, a bound method, a functools.partial, a
    staticmethod, or an instance of a class of package's (a class-based decorator) with a __call__. Nothing else is
    touched: a werkzeug proxy (flask.request) would look for its request."""
    if isinstance(value, (types.FunctionType, types.MethodType, functools.partial, staticmethod)):
        return True
    kind = type(value)
    return kind.__module__.partition('.')[0] == package and inspect.getattr_static(kind, '__call__', None) is not None


def code_module(value):
    """Return the module of value's code: a partial's function's, a bound method's or staticmethod's function's, a
    function's own, or an instance's class's."""
    while isinstance(value, functools.partial):
        value = value.func
    value = value.__func__ if isinstance(value, (types.MethodType, staticmethod)) else value
    return (value if isinstance(value, types.FunctionType) else type(value)).__module__ or ''


def reachable_callables(action, seen, most=MOST_VALUES_REACHED):
    """Return the functions, bound methods and partials action reaches (its layers, and what they hold: held_values),
    and the callable instances of its own package's classes, each once, most (values) at most, none whose id
    is in seen (the ids of what the module's earlier routes reached, whose checks covered it: a registry every action
    holds made the start quadratic, trial BY), to which it adds theirs. What a start check of one layer cannot see,
    another layer may hide (trial BW: a class-based decorator, a default argument). A global the action's code calls
    is not looked into: a module's tables and registries made its start slow (trial BX), and one it reaches so goes
    unchecked (a function marked by use_schema refuses to run under an unmarked action: SchemaHidden)."""
    package = code_module(action).partition('.')[0]
    found, todo, queued = [], [action], {id(action)}
    while todo and len(found) < most:
        value = todo.pop()
        if id(value) in seen or not is_code(value, package):
            continue
        seen.add(id(value))
        found.append(value)
        held = [item for item in held_values(value) if id(item) not in queued]  # once each: a registry every
        queued.update(map(id, held))  # function holds was queued again by each (trial CA: 4 million pops)
        todo.extend(held)
    return found


def is_routine(value):
    """Tell whether value is a function, a bound method or a functools.partial: what dbapi's marks are asked of."""
    return isinstance(value, (types.FunctionType, types.MethodType, functools.partial))


def takes_unvalidated_keys(schema):
    """Tell whether an action with schema (None: no use_schema) may be called with keys no field validated: without
    a schema, with unknown = INCLUDE, or with hooks that decide the keys (so that a hidden mark or injected parameter
    matters); a plain schema refuses every key it does not declare."""
    return schema is None or schema.unknown == INCLUDE or not has_no_hooks(schema)


def looks_on_its_own(schema, action):
    """Tell whether action's start checks take a look of their own (reachable_callables, not skipping what earlier
    routes reached): when a body key may reach it unvalidated (takes_unvalidated_keys), or its schema loads a name its
    signature takes by **kwargs alone, as a hidden inject_db's parameter may be (trial CC: hung on the routes'
    order). A plain schema loading only named parameters (the usual action) needs none."""
    if takes_unvalidated_keys(schema):
        return True
    named = {p.name for p in inspect.signature(action).parameters.values()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return not schema.many and bool(loaded_names(schema) - named)


def check_schema_seen(action, reached, where):
    """Raise ModuleError for an action without use_schema's mark that reaches a function with it (reached: its own
    reachable_callables, MOST_VALUES_SEARCHED_FOR_A_MARK of them): a decorator written without functools.wraps (a
    class-based one, a default argument) hides the mark, and the body would reach the function unvalidated (trial
    BU: `{"n": "999; DROP"}` for an Integer field); calling such a function from another action skips its schema
    the same way (use_schema only marks the route's own action). What the look misses refuses to run when called
    (SchemaHidden)."""
    if schema_of(action) is not None:
        return
    if hidden := next((value for value in reached if is_routine(value) and schema_of(value) is not None), None):
        raise ModuleError(f'{where}: the action reaches {getattr(hidden, "__qualname__", hidden)!r}, marked by '
                          'use_schema, which the action is not: a decorator written without functools.wraps hides '
                          'the mark, and dbapi would not validate the body; write the wrapper under '
                          '@functools.wraps(the function it wraps) (a class-based decorator: '
                          'functools.update_wrapper(self, the function) in its __init__); an action that only holds '
                          'such functions (a registry it lists) takes a schema of its own, use_schema(Schema)')


def check_not_a_method(reached, where):
    """Raise ModuleError for a method (bound, a classmethod, or an instance's __call__) under inject_db or
    inject_conn, as the action or anything it reaches (a partial of one, a helper): their connection goes to the
    first parameter, which a method's object takes (trial BU: every call a 500, `self.fetch_value`)."""
    for value in reached:
        if inspect.ismethod(value):
            method = value.__func__
        elif is_routine(value):  # a function or a partial: its first parameter is its own
            continue
        else:  # a callable instance of the module's
            method = inspect.getattr_static(type(value), '__call__')
        if isinstance(method, types.FunctionType) and borrows_of(method):
            raise ModuleError(f'{where}: the action is or reaches a method ({method.__qualname__}) under inject_db or '
                              'inject_conn, which pass the connection as the first parameter, where the method takes '
                              'its object: use a function or a staticmethod')


def check_databases(reached, databases, where):
    """Raise ModuleError when the action or what it reaches borrows from a database databases (the configured names)
    does not hold, saying how to name it."""
    unknown = [name for value in reached if is_routine(value) for name in databases_of(value) if name not in databases]
    if not unknown:
        return
    fix = (f'name it in lower case, {unknown[0].lower()!r}, as DB_NAMES is read' if unknown[0].lower() in databases
           else f'add it to DB_NAMES and set {unknown[0].upper()}_DATABASE_URL' if MODULE_NAME.fullmatch(unknown[0])
           else 'a database\'s name is a lower-case letter, then lower-case letters, digits and "_", as DB_NAMES '
                'takes it')  # settings.database_names: a module's name's form (trial BW: "MY-REPORTS_DATABASE_URL")
    raise ModuleError(f'{where}: the action borrows from the database {unknown[0]!r}, which is not configured '
                      f'(databases: {", ".join(sorted(databases))}): {fix}')


def make_route(module, routes_file, entry, fast_paths=True, databases=None, seen=None):
    """Build the Route of one route-table entry (checked_route); an error the module's objects raise as they are
    looked at (a Nested field naming no schema, an attribute that raises) is a ModuleError naming the route, one
    line, where a traceback named neither it nor the file (trial BY). seen: reachable_callables'."""
    where = f'{routes_file}: route {entry["route"]!r}'
    try:
        return checked_route(module, entry, where, fast_paths, databases, set() if seen is None else seen)
    except ModuleError:
        raise
    except BaseException as exc:  # SystemExit too: it ended the start without a word (trial CA); Ctrl-C goes on
        raise ModuleError(f'{where}: dbapi could not check the action ({import_failure(exc)})') from exc


def checked_route(module, entry, where, fast_paths, databases, seen):
    """Build the Route of one route-table entry; databases (the configured names), when given, must hold every
    database its action borrows from."""
    action = entry['action']
    schema = schema_of(action)
    check_signature_readable(action, where)
    if any(map(is_async, wrapped_chain(action))):
        raise ModuleError(f'{where}: the action is async def; dbapi calls actions as plain functions (its workers '
                          'wait for PostgreSQL cooperatively already)')
    reached = reachable_callables(action, seen)
    own_reach = reachable_callables(action, set(), MOST_VALUES_SEARCHED_FOR_A_MARK) if looks_on_its_own(
        schema, action) else []  # the same whatever the routes' order
    check_schema_seen(action, own_reach, where)
    check_not_a_method(reached, where)
    check_decorated_once(action, where)
    check_injected_first(action, where)
    if databases is not None:
        check_databases(reached, databases, where)
    injected = injected_names(action, own_reach)
    if schema is not None:
        check_schema(schema, action, where, injected)
    load = (schema_loader(schema, action, injected, fast_paths) if schema is not None
            else signature_loader(action, where, injected))
    return Route(module, entry['route'], action, load, answering_layer(action))


def answering(route):
    """Return a function that calls route's action and makes its response (respond). For an action without
    use_schema's mark, both run with UNVALIDATED_ROUTE set, so that a function marked by use_schema it calls (from
    its code, a JSON encoder it registered) refuses to run (SchemaHidden: its body was not validated); so are the
    items of a stream it returns made (an iterator, a streamed Response's body: WatchedItems)."""
    if schema_of(route.action) is not None:
        return lambda *args, **kwargs: respond(route.action(*args, **kwargs))

    def answer(*args, **kwargs):
        result = route.action(*args, **kwargs)
        if isinstance(result, tuple) and len(result) == 2:  # (value, status)
            return respond((watched_stream(result[0], route), result[1]))
        return respond(watched_stream(result, route))
    return lambda *args, **kwargs: watched(route, answer, *args, **kwargs)


def watched_stream(value, route):
    """Return value, an iterator as WatchedItems, a streamed Response with its body so (not send_file's: its file's
    bytes run no module code, and the server sends the file itself)."""
    if isinstance(value, Iterator):
        return WatchedItems(value, route)
    if isinstance(value, Response) and value.is_streamed and not value.direct_passthrough:
        value.response = WatchedItems(value.response, route)
    return value


def watched(route, function, *args, **kwargs):
    """Call function with UNVALIDATED_ROUTE set to route."""
    token = UNVALIDATED_ROUTE.set(route)
    try:
        return function(*args, **kwargs)
    finally:
        UNVALIDATED_ROUTE.reset(token)


class WatchedItems:
    """The stream a route action without use_schema's mark returned, whose items its code makes as they are asked
    for, after it returned (a generator action, a map): each is made with UNVALIDATED_ROUTE set (trial CA: a
    generator action handed the body to a marked function unvalidated). Closing it closes the stream."""

    def __init__(self, items, route):
        self.body = items
        self.items = watched(route, iter, items)  # an iterable's __iter__ is the module's code too
        self.route = route

    def __iter__(self):
        return self

    def __next__(self):
        return watched(self.route, next, self.items)

    def close(self):
        """Close the stream (a generator, a LeasedStream, which gives its connection back), its finally blocks run
        with UNVALIDATED_ROUTE set."""
        watched(self.route, close_iterated, self.items, self.body)


def make_view(route, clients):
    """Build the view of one route: authorise, parse the body once, validate, call, respond."""
    answer = answering(route)

    def view():
        remember(ROUTE_KEY, route)
        authorize(clients, route.module)
        try:  # the module's code: its schema's hooks, the action, the JSON encoders it registered
            args, kwargs = route.load_arguments(read_json_body())
            return answer(*args, **kwargs)
        except BaseException as exc:
            error = answered_as(exc, WATCHER.stopping)
            if error is None or error is exc:
                raise
            raise error
    view.__name__ = f'{route.module}:{route.name}'
    return view


def build_blueprint(module, routes):
    """Build the blueprint of one module with one POST-only URL rule per route."""
    blueprint = Blueprint(module, __name__, url_prefix=f'/{module}')
    for route, view in routes:
        rules = ['', '/'] if route.name == '' else [f'/{route.name}']
        for rule in rules:
            blueprint.add_url_rule(rule, endpoint=route.name or '/', view_func=view,  # '/': no route's name
                                   methods=['POST'], provide_automatic_options=False, strict_slashes=False)
    return blueprint


def load_module(package, name, folder, fast_paths=True, databases=None):
    """Import and check one module folder (databases: the configured names, make_route); return its Routes."""
    routes_file, table = import_route_table(package, name, folder)
    check_route_table(routes_file, table)
    seen = set()  # what the module's routes reached (reachable_callables)
    return [make_route(name, routes_file, entry, fast_paths, databases, seen) for entry in table]


def discover_modules(packages):
    """Return (package, name, folder) of every module folder in packages. Packages that hold no module folder at all
    are a ModuleError: there would be nothing to serve (one package may wait for its first module; all of them empty
    is a wrong name); so are two folders of one name (a module's name is its URL's first segment)."""
    found, names = [], set()
    for package in packages:
        for name, folder in module_folders(package):
            if name in names:
                raise ModuleError(f'{folder}: a module named {name!r} is already mounted')
            names.add(name)
            found.append((package, name, folder))
    if not found:
        raise ModuleError(f'MODULE_PACKAGES ({", ".join(packages)}) holds no module folder: name the packages whose '
                          'folders are modules (each with a routes.py), such as modules')
    return found


def mount_modules(app, packages, clients):
    """Discover every module in packages (discover_modules) and mount it on app; return the mounted Routes."""
    mounted = []
    for package, name, folder in discover_modules(packages):
        routes = load_module(package, name, folder, app.config['FAST_PATHS'], set(app.config['DATABASES']))
        app.register_blueprint(build_blueprint(name, [(route, make_view(route, clients)) for route in routes]))
        mounted.extend(routes)
    return mounted
