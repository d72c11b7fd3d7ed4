"""House rule: the project uses only the public API of its dependencies. No attribute whose name starts
with `_` is read from another package's object or module, and no class overrides a dependency's private
method. The scan reads the project's own Python files as syntax trees; it runs nothing of theirs."""
import ast
import importlib
import importlib.util
import sys
import types
from dataclasses import dataclass
from pathlib import Path

import pytest

import settings

BASE_DIR = settings.BASE_DIR
SCANNED = ['app.py', 'settings.py', 'manage.py', 'gunicorn.conf.py', 'lib', 'modules', 'ops', 'bench', 'tests']
# The project's own top-level modules and packages: names bound from them are the project's objects.
PROJECT = '<project>'  # what a file's own classes and functions are bound from
PROJECT_ROOTS = frozenset({path.stem for path in BASE_DIR.glob('*.py')} | {PROJECT} | {
    path.name for path in BASE_DIR.iterdir() if path.is_dir() and (path / '__init__.py').exists()})
# Names with a leading underscore that are documented, public API; each says where it is documented.
PUBLIC_UNDERSCORE_NAMES = {
    '_exit': 'os._exit: documented in the os module (exit without cleanup, for a forked child)',
    '_replace': 'namedtuple._replace: documented public method (the underscore avoids field-name clashes)',
    '_asdict': 'namedtuple._asdict: documented public method',
    '_fields': 'namedtuple._fields: documented public attribute',
    '_make': 'namedtuple._make: documented public class method',
    '_get_current_object': "werkzeug's LocalProxy._get_current_object: documented way to reach the proxied object",
}
# Dunder names Python itself defines (the object, type, function, module and exception protocols, context
# managers, iterators, module attributes); any other __name__ is some library's private one.
STANDARD_DUNDERS = frozenset(
    name for kind in (object, type, types.FunctionType, types.MethodType, types.ModuleType, BaseException, int, dict,
                      list, property, staticmethod, classmethod)
    for name in dir(kind) if name.startswith('__')) | {
    '__enter__', '__exit__', '__aenter__', '__aexit__', '__await__', '__next__', '__slots__', '__all__', '__version__',
    '__path__', '__file__', '__spec__', '__loader__', '__package__'}


@dataclass(frozen=True)
class Offence:
    """One breach of the rule, where it is."""

    path: str
    line: int
    message: str

    def __str__(self):
        return f'{self.path}:{self.line}: {self.message}'


def is_private(name):
    """Tell whether an attribute name is private: `_name`, or a dunder Python does not define."""
    if name.startswith('__') and name.endswith('__'):
        return name not in STANDARD_DUNDERS
    return name.startswith('_') and name not in PUBLIC_UNDERSCORE_NAMES


def origin(module):
    """Classify an absolute module name: 'project', 'stdlib' or 'third-party'."""
    root = module.split('.')[0]
    if root in PROJECT_ROOTS:
        return 'project'
    return 'stdlib' if root in sys.stdlib_module_names or root == 'builtins' else 'third-party'


def bound_names(tree, package):
    """Return {name: dotted source} for each name a file binds by import (relative ones made absolute against
    its package), and for its own classes and functions ('<project>.name')."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:  # `import a.b` binds a; `import a.b as c` binds c to a.b
                bound = alias.name if alias.asname else alias.name.split('.')[0]
                names[alias.asname or bound] = bound
        elif isinstance(node, ast.ImportFrom):
            module = importlib.util.resolve_name('.' * node.level + (node.module or ''), package) if node.level \
                else node.module
            for alias in node.names:
                names[alias.asname or alias.name] = f'{module}.{alias.name}'
        elif isinstance(node, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            names[node.name] = f'{PROJECT}.{node.name}'
    return names


def root_source(expression, names):
    """Return the dotted source of the name an expression's attribute chain starts from, or None."""
    while isinstance(expression, ast.Attribute):
        expression = expression.value
    if isinstance(expression, ast.Name):
        return names.get(expression.id, f'builtins.{expression.id}')
    return None


def is_project_object(base, names):
    """Tell whether an attribute's base is a project module, class or function (or a chain of a project
    module's attributes)."""
    source = root_source(base, names)
    return source is not None and origin(source) == 'project'


def is_self(expression):
    """Tell whether an expression is the plain name self or cls."""
    return isinstance(expression, ast.Name) and expression.id in ('self', 'cls')


def private_accesses(tree, names, path):
    """Yield an Offence for each private attribute read from something that is neither the project's nor
    self or cls (whose private names are judged with their class)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr) and not is_self(node.value) \
                and not is_project_object(node.value, names):
            yield Offence(path, node.lineno, f'private attribute {ast.unparse(node)!r}')


def private_imports(tree, path):
    """Yield an Offence for each import of another package's private module or name (pgserver._commands)."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and not node.level:
            modules = [f'{node.module}.{alias.name}' for alias in node.names]
        else:
            continue
        for module in modules:
            if origin(module) != 'project' and any(is_private(part) for part in module.split('.')):
                yield Offence(path, node.lineno, f'private module or name {module!r}')


def load(dotted):
    """Import what a dotted name names (the longest importable module, then its attributes), or None."""
    parts = dotted.split('.')
    for cut in range(len(parts), 0, -1):
        try:
            value = importlib.import_module('.'.join(parts[:cut]))
        except ImportError:
            continue
        for part in parts[cut:]:
            value = getattr(value, part, None)
        return value
    return None


def dependency_ancestors(base, names, classes):
    """Return the classes of other packages that a base-class expression brings in (its non-project ancestry,
    through classes of the same file too), or its text when it cannot be imported here but is third-party's."""
    source = root_source(base, names)
    if source is None:
        return []
    if source.startswith(PROJECT + '.'):
        node = classes.get(source.removeprefix(PROJECT + '.'))
        return [ancestor for parent in getattr(node, 'bases', []) for ancestor in dependency_ancestors(
            parent, names, classes)]
    found = load('.'.join([source, *ast.unparse(base).split('.')[1:]]))
    if not isinstance(found, type):
        return [ast.unparse(base)] if origin(source) == 'third-party' else []
    return [ancestor for ancestor in found.__mro__
            if ancestor is not object and origin(ancestor.__module__) != 'project']


def owner_of(name, ancestors):
    """Return the name of the dependency class that owns a private name, or None. A third-party class owns every
    private name (its next release may add it); a stdlib class owns those it has."""
    for ancestor in ancestors:
        if isinstance(ancestor, str) or origin(ancestor.__module__) == 'third-party' or hasattr(ancestor, name):
            return ancestor if isinstance(ancestor, str) else f'{ancestor.__module__}.{ancestor.__qualname__}'
    return None


def members(node):
    """Yield (name, line) of each method and class attribute a class body defines."""
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield item.name, item.lineno
        for target in getattr(item, 'targets', [getattr(item, 'target', None)]):
            if isinstance(target, ast.Name):
                yield target.id, item.lineno


def own_names(node):
    """Return the names a class body defines: its methods and class attributes, and what it assigns to self."""
    names = {name for name, _ in members(node)}
    for item in ast.walk(node):
        for target in getattr(item, 'targets', [getattr(item, 'target', None)]):
            if isinstance(target, ast.Attribute) and is_self(target.value):
                names.add(target.attr)
    return names


def class_offences(node, names, classes, path):
    """Yield an Offence for each private method a class defines over a dependency's class, and each private
    name of a dependency's class it reaches through self or cls."""
    ancestors = [ancestor for base in node.bases for ancestor in dependency_ancestors(base, names, classes)]
    for member, line in members(node):
        if is_private(member) and (owner := owner_of(member, ancestors)):
            yield Offence(path, line, f'{node.name}.{member} overrides a private name of {owner}')
    defined = own_names(node)
    for item in ast.walk(node):
        if isinstance(item, ast.Attribute) and is_self(item.value) and is_private(item.attr) \
                and item.attr not in defined and (owner := owner_of(item.attr, ancestors)):
            yield Offence(path, item.lineno, f'{ast.unparse(item)!r} is a private name of {owner}')


def scan_source(text, path='snippet.py'):
    """Return every Offence in one file's source; path is relative to the project."""
    tree = ast.parse(text)
    names = bound_names(tree, '.'.join(Path(path).parent.parts))
    classes = {node.name: node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    return [*private_imports(tree, path), *private_accesses(tree, names, path),
            *(offence for node in classes.values() for offence in class_offences(node, names, classes, path))]


def project_files():
    """Yield every Python file the rule covers, relative to the project."""
    for entry in SCANNED:
        path = BASE_DIR / entry
        for file in ([path] if path.is_file() else sorted(path.rglob('*.py'))):
            if '__pycache__' not in file.parts:
                yield file.relative_to(BASE_DIR)


def test_the_project_uses_no_private_name_of_a_dependency():
    offences = [offence for path in project_files()
                for offence in scan_source((BASE_DIR / path).read_text(), str(path))]
    assert not offences, 'private names of dependencies used:\n' + '\n'.join(map(str, offences))


# The scanner itself, on snippets: each kind of offence it must find, with the words of its message.
OFFENCES = {
    'private attribute of a package': ('import flask\nflask.g._cache', "private attribute 'flask.g._cache'"),
    'private module': ('from pgserver._commands import pg_ctl', "private module or name 'pgserver._commands.pg_ctl'"),
    'private name imported': ('from yoyo.backends import _hidden', "private module or name 'yoyo.backends._hidden'"),
    "a dunder Python doesn't define": ('import os\nos.__secret__', "private attribute 'os.__secret__'"),
    'private attribute of a local': ('def total(histogram):\n    return histogram._sum',
                                     "private attribute 'histogram._sum'"),
    'private method through super()': (
        'from marshmallow import fields\n'
        'class Amount(fields.Decimal):\n'
        '    def load(self, value):\n'
        '        return super()._deserialize(value, None, None)', "private attribute 'super()._deserialize'"),
    'private method overridden': (
        'from marshmallow import fields\n'
        'class Amount(fields.Decimal):\n'
        '    def _deserialize(self, value, attr, data, **kwargs):\n'
        '        return value', 'Amount._deserialize overrides a private name of marshmallow.fields.Decimal'),
    'private class attribute overridden': (
        'import ecs_logging\nclass Formatter(ecs_logging.StdlibFormatter):\n    _LOGRECORD_DICT = set()',
        'Formatter._LOGRECORD_DICT overrides a private name of ecs_logging'),
    'a stdlib private method overridden': (
        'import logging.handlers\n'
        'class Handler(logging.handlers.RotatingFileHandler):\n'
        '    def _open(self):\n'
        '        return None', 'Handler._open overrides a private name of logging.handlers.RotatingFileHandler'),
    "a parent's private method through self": (
        'from flask.json.provider import JSONProvider\n'
        'class Provider(JSONProvider):\n'
        '    def response(self, *args, **kwargs):\n'
        '        return self._prepare_response_obj(args, kwargs)',
        "'self._prepare_response_obj' is a private name of flask.json.provider.JSONProvider"),
    'a private method over a class of the same file that subclasses a package class': (
        'from flask import Flask\nclass Base(Flask):\n    pass\nclass App(Base):\n    def _find_error_handler(self):\n'
        '        pass', 'App._find_error_handler overrides a private name of flask.app.Flask'),
    'a base that cannot be imported here': (
        'from no_such_package import Base\nclass Child(Base):\n    def _hook(self):\n        pass',
        'Child._hook overrides a private name of Base'),
}

ALLOWED = {
    'own private names': ('class Counter:\n    def __init__(self):\n        self._count = 0\n'
                          '    def _bump(self):\n        self._count += 1'),
    'own private state on a subclass of a package class': (
        'from flask import Flask\nclass App(Flask):\n    def __init__(self):\n        super().__init__("x")\n'
        '        self._mine = 1\n    def mine(self):\n        return self._mine'),
    'a private helper on a stdlib subclass the stdlib class lacks': (
        'import logging\nclass Handler(logging.Handler):\n    def _helper(self):\n        pass'),
    'project modules': 'from lib.db import pool\nimport lib.http\nfrom . import sql\npool._x, lib.http._y, sql._Z',
    'classes of the same file': ('class Base:\n    def _hook(self):\n        pass\n'
                                 'class Child(Base):\n    def _hook(self):\n        pass\nBase._hook'),
    'documented names': ('import os\nfrom collections import namedtuple\nPoint = namedtuple("Point", "x")\n'
                         'Point(1)._replace(x=2)._asdict()\nos._exit(0)'),
    'standard dunders': 'def f(g):\n    return g.__dict__, g.__wrapped__, g.__class__.__name__, f.__module__',
}


@pytest.mark.parametrize('name', OFFENCES)
def test_the_scan_finds_each_kind_of_offence(name):
    source, expected = OFFENCES[name]
    found = [str(offence) for offence in scan_source(source, 'modules/snippet/actions.py')]
    assert len(found) == 1 and expected in found[0], found


@pytest.mark.parametrize('name', ALLOWED)
def test_the_scan_allows_what_is_public_or_the_project_own(name):
    assert scan_source(ALLOWED[name], 'modules/snippet/actions.py') == []


def test_offences_name_their_file_and_line():
    found = scan_source('x = 1\n\nimport flask\nflask.g._cache', 'lib/example.py')
    assert [str(offence) for offence in found] == ["lib/example.py:4: private attribute 'flask.g._cache'"]
