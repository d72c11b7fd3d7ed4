"""Module mounting: a folder is a module; a broken one stops the start with a message naming its file."""
import uuid

import pytest

import lib.modules
import manage
from lib.modules import ModuleError
from tests.helpers import ADMIN_TOKEN, Caller, assert_problem, things_with_code

HELD_VALUES = lib.modules.held_values

GOOD_ROUTES = '''
    def hello(name):
        return {'hello': name}
    routes = [dict(route='hello', action=hello)]
'''


def test_adding_a_folder_mounts_a_module(make_app, module_package):
    package = module_package({'greeter/__init__.py': '', 'greeter/routes.py': GOOD_ROUTES})
    client = make_app(MODULE_PACKAGES=[package]).test_client()
    response = client.post('/greeter/hello', json={'name': 'Ada'}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert response.get_json() == {'hello': 'Ada'}
    assert client.post('/greeter/hello', json={'name': 'Ada'}).status_code == 401


def test_folder_without_init_is_mounted_too(make_app, module_package):
    package = module_package({'plain/routes.py': GOOD_ROUTES})
    assert '/plain/hello' in {rule.rule for rule in make_app(MODULE_PACKAGES=[package]).url_map.iter_rules()}


@pytest.mark.parametrize('files, message', [
    ({'broken/routes.py': 'import no_such_library\nroutes = []'}, 'broken/routes.py: import failed (ModuleNotFoundError'),
    ({'broken/routes.py': 'routes = [dict(route="x", action=undefined_name)]'}, 'broken/routes.py: import failed (NameError'),
    ({'broken/routes.py': 'def (:'}, 'broken/routes.py: import failed (SyntaxError'),
    ({'broken/routes.py': 'x = 1\ndef (:'}, 'broken/routes.py:2)'),  # its own place, not importlib's
    ({'broken/notes.txt': ''}, 'broken/routes.py: missing'),
    ({'broken/routes.py': 'table = []'}, 'broken/routes.py: must define routes'),
    ({'broken/routes.py': 'routes = {}'}, 'broken/routes.py: must define routes = [dict('),
    ({'broken/routes.py': 'routes = []'}, 'broken/routes.py: routes is empty: a module mounts at least one action'),
    ({'broken/routes.py': 'from lib.decorators import inject_db\n@inject_db\ndef bare(db):\n    return 1\n'
                          'routes = [dict(route="x", action=bare)]'},
     'broken/routes.py:2)'),
    ({'broken/routes.py': 'from lib.decorators import inject_conn\n@inject_conn\ndef bare(conn):\n    return 1\n'
                          'routes = [dict(route="x", action=bare)]'},
     'the database must be named by a string, not <function bare'),
    # The decorator passes the connection first: `db` later was a body key, the Db in `name` (trial AW).
    ({'broken/routes.py': 'from lib.decorators import inject_db\n@inject_db()\ndef late(name, db):\n    return 1\n'
                          'routes = [dict(route="x", action=late)]'},
     "route 'x': the action takes 'db' as a body key, while its decorators pass their connections as its first "
     "parameters, the innermost decorator's first (inject_db('default') to 'name'): name each as its decorator's "
     "(`db` for inject_db, `conn` for inject_conn, any other name), and the body keys otherwise"),
    # Swapped: conn got the Db, db the raw connection of reports (trial BC).
    ({'broken/routes.py': 'from lib.decorators import inject_conn, inject_db\n@inject_conn("reports")\n@inject_db()\n'
                          'def swapped(conn, db):\n    return 1\nroutes = [dict(route="x", action=swapped)]'},
     "the action names 'conn' a parameter another kind gets, while its decorators pass their connections as its first "
     "parameters, the innermost decorator's first (inject_db('default') to 'conn', inject_conn('reports') to 'db')"),
    ({'broken/routes.py': 'from lib.decorators import inject_conn\n@inject_conn(autocommit=True)\n'
                          'def late(body, conn=None):\n    return 1\nroutes = [dict(route="x", action=late)]'},
     "route 'x': the action takes 'conn' as a body key"),
    # Two decorators: the advice names where each connection goes (trial BB: "put it first" would have swapped them).
    ({'broken/routes.py': 'from lib.decorators import inject_conn, inject_db\n@inject_conn("reports")\n@inject_db()\n'
                          'def late(db, name, conn):\n    return 1\nroutes = [dict(route="x", action=late)]'},
     "(inject_db('default') to 'db', inject_conn('reports') to 'name')"),
    ({'broken/routes.py': 'routes = [dict(route="x")]'}, 'broken/routes.py: routes[0] must be a dict'),
    ({'broken/routes.py': 'routes = [dict(route="x", action=1)]'}, 'broken/routes.py: routes[0]: action is not callable'),
    ({'broken/routes.py': 'routes = [dict(route="a b", action=print)]'}, 'broken/routes.py: routes[0]: route must be'),
    ({'broken/routes.py': 'routes = [dict(route="/list", action=print)]'}, 'no leading or trailing "/" (got \'/list\')'),
    ({'broken/routes.py': 'routes = [dict(route="x", action=len, method="GET")]'}, 'routes[0] must be a dict'),
    ({'broken/routes.py': 'routes = [dict(route="x", acton=len)]'},  # the key it has is named (trial AG)
     "routes[0] must be a dict with exactly the keys route and action (it has 'route', 'acton')"),
    ({'broken/routes.py': 'f = lambda: 1\nroutes = [dict(route="x", action=f), dict(route="x", action=f)]'},
     "broken/routes.py: routes[1]: route 'x' appears twice"),
    ({'broken/routes.py': 'routes = [dict(route="x", action=lambda *a: 1)]'}, 'keyword parameters only'),
    ({'Bad-Name/routes.py': GOOD_ROUTES}, 'Bad-Name: a module folder name must match'),
    ({'healthz/routes.py': GOOD_ROUTES}, 'healthz: a module folder name must match [a-z][a-z0-9_]* and not be one of '
                                         'healthz, metrics, ops, readyz, static (paths of their own)'),
    # the name of the operations endpoints' blueprint: mount_modules no longer meets it as one already mounted
    ({'ops/routes.py': GOOD_ROUTES}, 'ops: a module folder name must match [a-z][a-z0-9_]* and not be one of'),
])
def test_broken_module_stops_the_start_naming_its_file(make_app, module_package, files, message):
    package = module_package(files)
    with pytest.raises(ModuleError) as raised:
        make_app(MODULE_PACKAGES=[package])
    assert message in str(raised.value)


def test_a_body_key_named_as_another_decorators_parameter_is_the_actions_own(make_app, module_package):
    """Under inject_db alone, `conn` is no connection's name: the advice to put it first looped (trial BB)."""
    routes = ('from lib.decorators import inject_db\n@inject_db()\ndef own(db, conn=None):\n    return {"conn": conn}\n'
              'routes = [dict(route="x", action=own)]')
    client = make_app(MODULE_PACKAGES=[module_package({'keyed/routes.py': routes})]).test_client()
    assert client.post('/keyed/x', json={'conn': 'a'}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'}).get_json() \
        == {'conn': 'a'}


def test_two_decorators_take_the_first_parameters_in_turn_whatever_their_names():
    """The innermost decorator's connection first: `def f(other, db)` under inject_db() and inject_db('other') is
    right, and was refused at its declaration (trial AY)."""
    from lib.decorators import inject_conn, inject_db
    from lib.modules import check_injected_first

    def action(other, db, name=None):
        return name

    def raw_action(other, conn, name=None):
        return name
    check_injected_first(inject_db()(inject_db('other')(action)), 'here')  # nothing raised
    check_injected_first(inject_conn()(inject_conn('other')(raw_action)), 'here')


def test_a_folder_holding_only_bytecode_is_no_module_and_mounts_nothing(make_app, module_package):
    """What git leaves of a module after a switch to a branch without it: its __pycache__ stopped the start,
    "routes.py: missing" (trial AG). A folder with anything else in it is still a module that lacks its routes.py."""
    package = module_package({'good/routes.py': GOOD_ROUTES, 'gone/__pycache__/routes.cpython-311.pyc': '',
                              'gone/sub/__pycache__/helpers.cpython-311.pyc': ''})  # a sub-folder's (trial AH)
    app = make_app(MODULE_PACKAGES=[package])
    assert {route.module for route in app.extensions['dbapi'].routes} == {'good'}


INCLUDE_ROUTES = '''
    from marshmallow import INCLUDE, RAISE, Schema, fields
    from lib.decorators import use_schema

    class Loose(Schema):
        class Meta:
            unknown = INCLUDE

        {field}

    class Strict(Schema):
        inner = {nested}

    @use_schema({schema})
    def act(**body):
        return body
    routes = [dict(route='act', action=act)]
'''


@pytest.mark.parametrize('field, nested, schema', [
    ("user_id = fields.Integer(data_key='userId')", 'fields.Raw()', 'Loose'),
    ("user_id = fields.Integer(attribute='user.id')", 'fields.Raw()', 'Loose'),
    ("user_id = fields.Integer(data_key='userId')", 'fields.Nested(Loose)', 'Strict'),
    ("user_id = fields.Integer(data_key='userId')", 'fields.List(fields.Nested(Loose))', 'Strict'),
    ("user_id = fields.Integer(data_key='userId')", 'fields.Dict(values=fields.List(fields.Nested(Loose)))', 'Strict'),
    # The same class, first as itself, then with a field made dump_only by the instance.
    ("user_id = fields.Integer()", "fields.Nested(Loose)\n        more = fields.Nested(Loose(dump_only=('user_id',)))",
     'Strict'),
    ("user_id = fields.Integer(data_key='userId')", 'fields.Nested(Loose(unknown=RAISE), unknown=INCLUDE)', 'Strict'),
    ("user_id = fields.Integer(dump_only=True)", 'fields.Raw()', 'Loose'),  # marshmallow loads its key as unknown
    ("user_id = fields.Integer(dump_only=True)", 'fields.Pluck(Loose, "user_id")', 'Strict'),
    # The same class hiding the field first (only), then showing it; or RAISE first, INCLUDE (its instance's) then.
    ("user_id = fields.Integer(data_key='userId')\n        other = fields.Raw()",
     "fields.Nested(Loose, only=('other',))\n        more = fields.Nested(Loose)", 'Strict'),
    ("user_id = fields.Integer(data_key='userId')",
     "fields.Nested(Loose(unknown=RAISE))\n        more = fields.Nested(Loose(unknown=INCLUDE))", 'Strict'),
])
def test_an_include_schema_that_reads_a_field_from_another_key_stops_the_start(make_app, module_package, field, nested,
                                                                                 schema):
    """marshmallow puts a body key spelled as the loaded name over the validated value (unknown = INCLUDE)."""
    package = module_package({'loose/routes.py': INCLUDE_ROUTES.format(field=field, nested=nested, schema=schema)})
    with pytest.raises(ModuleError, match="loose/routes.py: route 'act': Loose lets unknown keys through"):
        make_app(MODULE_PACKAGES=[package])


@pytest.mark.parametrize('field, nested, schema', [
    ("user_id = fields.Integer()", 'fields.Nested(Loose)', 'Strict'),
    ("user_id = fields.Integer(data_key='userId')", 'fields.Raw()', 'Loose(unknown=RAISE)'),
    ("user_id = fields.Integer(data_key='userId')", 'fields.Nested(Loose, unknown=RAISE)', 'Strict'),
    ("user_id = fields.Integer(data_key='userId')", 'fields.Pluck(Loose, "user_id")', 'Strict'),  # no unknown key
])
def test_a_schema_that_cannot_put_a_body_key_over_a_field_mounts(make_app, module_package, field, nested, schema):
    package = module_package({'loose/routes.py': INCLUDE_ROUTES.format(field=field, nested=nested, schema=schema)})
    assert '/loose/act' in {rule.rule for rule in make_app(MODULE_PACKAGES=[package]).url_map.iter_rules()}


@pytest.mark.parametrize('schema', ['Loose', 'Strict'])
def test_a_schema_field_loaded_into_the_injected_parameter_stops_the_start(make_app, module_package, schema):
    routes = f'''
        from marshmallow import INCLUDE, Schema, fields
        from lib.db import DEFAULT
        from lib.decorators import inject_db, use_schema

        class Loose(Schema):
            class Meta:
                unknown = INCLUDE

            db = fields.String()

        class Strict(Schema):
            database = fields.String(attribute='db')

        @use_schema({schema})
        @inject_db(DEFAULT)
        def act(db, **body):
            return body
        routes = [dict(route='act', action=act)]
    '''
    package = module_package({'clash/routes.py': routes})
    with pytest.raises(ModuleError, match=f"clash/routes.py: route 'act': {schema} loads field 'db', the parameter"):
        make_app(MODULE_PACKAGES=[package])


def test_the_same_module_name_twice_stops_the_start(make_app, module_package):
    first = module_package({'twin/routes.py': GOOD_ROUTES})
    second = module_package({'twin/routes.py': GOOD_ROUTES})
    with pytest.raises(ModuleError, match="a module named 'twin' is already mounted"):
        make_app(MODULE_PACKAGES=[first, second])


def test_folders_starting_with_underscore_or_dot_are_not_modules(make_app, module_package):
    package = module_package({'_shared/helpers.py': '', 'ok/routes.py': GOOD_ROUTES})
    modules = {route.module for route in make_app(MODULE_PACKAGES=[package]).extensions['dbapi'].routes}
    assert modules == {'ok'}


def test_decorator_needs_a_connection_parameter():
    from lib.decorators import inject_conn
    with pytest.raises(TypeError, match='first parameter'):
        inject_conn()(lambda *, name: name)


TWICE_ROUTES = '''
    import functools
    from marshmallow import Schema, fields
    from lib.db import DEFAULT
    from lib.decorators import inject_conn, inject_db, use_schema

    class Named(Schema):
        name = fields.String()

    {decorators}
    def act({parameters}name=None):
        return {{'name': name}}
    routes = [dict(route='act', action=act)]
'''


@pytest.mark.parametrize('decorators, parameters, message', [
    ('@use_schema(Named)\n    @use_schema(Named)', '', "import failed .TypeError: use_schema twice on 'act'"),
    ('@use_schema(Named)\n    @inject_conn()\n    @use_schema(Named)', 'conn, ',
     "import failed .TypeError: use_schema twice on 'act'"),
    ('@use_schema(Named)\n    @functools.partial\n    @use_schema(Named)', '',
     "route 'act': the action has use_schema twice"),
    ('@inject_db()\n    @inject_conn()', 'conn, db, ',
     "route 'act': the action borrows two connections from the database 'default'"),
    ('@inject_conn(DEFAULT)\n    @inject_conn(DEFAULT, autocommit=True)', 'a, b, ', 'two connections'),
])
def test_an_action_decorated_twice_stops_the_start(make_app, module_package, decorators, parameters, message):
    package = module_package({'twice/routes.py': TWICE_ROUTES.format(decorators=decorators, parameters=parameters)})
    with pytest.raises(ModuleError, match=message):
        make_app(MODULE_PACKAGES=[package])


LOGGED_ROUTES = '''
    import functools
    from lib.decorators import inject_conn

    def logged(action):
        @functools.wraps(action)  # copies inject_conn's mark into this layer too
        def call(*args, **kwargs):
            return action(*args, **kwargs)
        return call

    @logged
    @inject_conn()
    def act(conn):
        with conn.cursor() as cursor:
            cursor.execute('SELECT 1 AS one')
            return cursor.fetchone()
    routes = [dict(route='act', action=act)]
'''


def test_a_wrapper_around_an_injected_action_counts_as_no_second_connection(make_app, module_package):
    client = make_app(MODULE_PACKAGES=[module_package({'wrapped/routes.py': LOGGED_ROUTES})]).test_client()
    assert client.post('/wrapped/act', json={}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'}).get_json() == {
        'one': 1}


@pytest.mark.parametrize('flags', [{'autocommit': 'yes'}, {'autocommit': 1}, {'named': None}])
def test_a_decorator_flag_that_is_not_a_bool_is_refused_where_it_is_declared(flags):
    from lib.decorators import inject_conn, inject_db
    flag, value = next(iter(flags.items()))
    with pytest.raises(TypeError, match=f'{flag} must be True or False, not {value!r}'):
        inject_conn(**flags)
    if flag == 'autocommit':
        with pytest.raises(TypeError, match=f'autocommit must be True or False, not {value!r}'):
            inject_db(autocommit=value)


SIGNATURE_ROUTES = '''
    from marshmallow import EXCLUDE, INCLUDE, Schema, fields, post_load
    from lib.decorators import use_schema

    class Body(Schema):
        {fields}

    class Hooked(Body):
        @post_load
        def rename(self, data, **kwargs):
            return {{'renamed': data.get('a')}}

    @use_schema({schema})
    def act({parameters}):
        return {{}}
    routes = [dict(route='act', action=act)]
'''


@pytest.mark.parametrize('fields, schema, parameters, message', [
    ('a = fields.Integer(required=True)\n        b = fields.Integer(load_default=0)', 'Body', 'a',
     "Body loads 'b', which the action does not take"),
    ("user_id = fields.Integer(required=True, data_key='userId')", 'Body', 'userId',
     "Body loads 'user_id', which the action does not take"),
    ("a = fields.Integer(required=True, attribute='x.y')", 'Body(unknown=EXCLUDE)', 'a',
     "Body loads 'x', which the action does not take"),
    ('a = fields.Integer(required=True)', 'Body', 'a, /', 'a positional-only parameter needs a default'),
    ('a = fields.Integer()', 'Body', 'a', "the action's parameter 'a' has no default, but a body may leave out"),
    # the advice fits the case (trial BU: a field named by partial, or none at all, was told to be made required)
    ('id = fields.Integer(required=True)\n        x = fields.Integer()', 'Body(partial=True)', 'id, x=None',
     "the action's parameter 'id' has no default, but Body's partial lets a body leave its field out"),
    ('id = fields.Integer(required=True)', "Body(partial=('id',))", 'id',
     "the action's parameter 'id' has no default, but Body's partial lets a body leave its field out"),
    ('a = fields.Integer(required=True)', 'Body', 'a, other',
     "the action's parameter 'other' has no default, but no field of Body loads it"),
    ('a = fields.Integer(required=True)', 'Body(many=True)', '', 'passes the loaded list as one positional argument'),
    ('a = fields.Integer(required=True)', 'Body(many=True)', '*, rows', 'passes the loaded list'),
    ('a = fields.Integer(required=True)', 'Body(many=True)', 'rows, extra', 'passes the loaded list'),
])
def test_a_schema_whose_loaded_keys_the_action_cannot_take_stops_the_start(make_app, module_package, fields, schema,
                                                                           parameters, message):
    """Every call would be a TypeError: a 500 at request time instead of one line at the start."""
    routes = SIGNATURE_ROUTES.format(fields=fields, schema=schema, parameters=parameters)
    package = module_package({'mismatch/routes.py': routes})
    with pytest.raises(ModuleError, match="mismatch/routes.py: route 'act': ") as raised:
        make_app(MODULE_PACKAGES=[package])
    assert message in str(raised.value)


@pytest.mark.parametrize('fields, schema, parameters', [
    ('a = fields.Integer(required=True)\n        b = fields.Integer(load_default=0)', 'Body', 'a, b'),
    ('a = fields.Integer()', 'Body', 'a=None'),
    ('a = fields.Integer(required=True)', 'Body', '**body'),
    ('a = fields.Integer(required=True)', 'Body', 'note=None, /, b=None, *args, a, c=1'),
    ('id = fields.Integer(required=True)\n        x = fields.Integer()', 'Body(partial=True)', 'id=None, x=None'),
    ('a = fields.Integer()', 'Body(unknown=INCLUDE)', 'a, **rest'),  # unknown keys may bring what it needs
    ('a = fields.Integer()', 'Hooked', 'renamed'),  # a hook decides the keys: only the call shows them
    ('a = fields.Integer(required=True)', 'Body(many=True)', 'rows'),
    ('a = fields.Integer(required=True)', 'Body(many=True)', 'rows, /, extra=None'),
])
def test_a_schema_whose_loaded_keys_the_action_takes_mounts(make_app, module_package, fields, schema, parameters):
    routes = SIGNATURE_ROUTES.format(fields=fields, schema=schema, parameters=parameters)
    package = module_package({'matched/routes.py': routes})
    assert '/matched/act' in {rule.rule for rule in make_app(MODULE_PACKAGES=[package]).url_map.iter_rules()}


def test_module_packages_that_hold_no_module_folder_stop_the_start(make_app, module_package):
    """MODULE_PACKAGES=modules.users (a module, not the package of modules) served nothing and said nothing."""
    package = module_package({'notes.txt': 'no module here'})
    with pytest.raises(ModuleError, match=rf"MODULE_PACKAGES \({package}\) holds no module folder"):
        make_app(MODULE_PACKAGES=[package])


def test_one_package_may_wait_for_its_first_module_beside_others(make_app, module_package):
    empty, greeter = module_package({}), module_package({'greeter/routes.py': GOOD_ROUTES})
    assert '/greeter/hello' in {rule.rule for rule in make_app(MODULE_PACKAGES=[empty, greeter]).url_map.iter_rules()}


@pytest.mark.parametrize('line', ['inject_conn()(lambda: None)', 'use_schema(dict)(lambda: None)'])
def test_an_import_failure_raised_in_lib_points_at_the_modules_own_line(make_app, module_package, line):
    routes = f'''
        from lib.decorators import inject_conn, use_schema

        broken = {line}
        routes = []
    '''
    package = module_package({'pointed/routes.py': routes})
    with pytest.raises(ModuleError) as raised:
        make_app(MODULE_PACKAGES=[package])
    assert str(raised.value).endswith('pointed/routes.py:4)'), str(raised.value)  # its own line, not lib's


def test_use_schema_of_anything_but_a_schema_stops_the_start_in_one_line(make_app, module_package):
    routes = '''
        from lib.decorators import use_schema

        @use_schema(dict)
        def act(**body):
            return body
        routes = [dict(route='act', action=act)]
    '''
    package = module_package({'notaschema/routes.py': routes})
    with pytest.raises(ModuleError, match='notaschema/routes.py: import failed .TypeError: use_schema takes a '
                                          'marshmallow Schema class or instance, not '):
        make_app(MODULE_PACKAGES=[package])


@pytest.mark.parametrize('decorator', ["inject_conn('reports')", "inject_db('reports', autocommit=True)"])
def test_an_action_on_a_database_that_is_not_configured_stops_the_start(make_app, module_package, decorator):
    routes = f'''
        from lib.decorators import inject_conn, inject_db

        @{decorator}
        def act(reports):
            return {{}}
        routes = [dict(route='act', action=act)]
    '''
    package = module_package({'elsewhere/routes.py': routes})
    with pytest.raises(ModuleError, match="elsewhere/routes.py: route 'act': the action borrows from the database "
                                          "'reports', which is not configured .databases: default.: add it to "
                                          'DB_NAMES and set REPORTS_DATABASE_URL'):
        make_app(MODULE_PACKAGES=[package])


def test_a_database_named_in_capitals_is_told_to_be_named_in_lower_case(make_app, module_package, database_url):
    """DB_NAMES=Reports is read as reports: inject_db('Reports') was told to add it to DB_NAMES, done already (trial
    BU)."""
    routes = '''
        from lib.decorators import inject_db

        @inject_db('Reports')
        def act(db):
            return {}
        routes = [dict(route='act', action=act)]
    '''
    package = module_package({'elsewhere/routes.py': routes})
    with pytest.raises(ModuleError, match="borrows from the database 'Reports', which is not configured .databases: "
                                          "default, reports.: name it in lower case, 'reports', as DB_NAMES is read"):
        make_app(MODULE_PACKAGES=[package], DATABASES={'default': database_url, 'reports': database_url})


@pytest.mark.parametrize('name', ['my-reports', 'Reports ', 'rep.x'])
def test_a_database_name_db_names_cannot_hold_is_told_the_form_of_one(make_app, module_package, name):
    """inject_db('my-reports') was told to set MY-REPORTS_DATABASE_URL, which DB_NAMES then refused (trial BW)."""
    routes = f'''
        from lib.decorators import inject_db

        @inject_db({name!r})
        def act(db):
            return {{}}
        routes = [dict(route='act', action=act)]
    '''
    with pytest.raises(ModuleError, match='a database.s name is a lower-case letter, then lower-case letters, digits '
                                          'and "_", as DB_NAMES takes it'):
        make_app(MODULE_PACKAGES=[module_package({'elsewhere/routes.py': routes})])


def test_a_dotted_attribute_into_the_injected_parameter_stops_the_start(make_app, module_package):
    routes = """
        from marshmallow import Schema, fields
        from lib.decorators import inject_conn, use_schema

        class Body(Schema):
            y = fields.Integer(required=True, attribute='conn.y')

        @use_schema(Body)
        @inject_conn()
        def act(conn, **body):
            return {}
        routes = [dict(route='act', action=act)]
    """
    package = module_package({'dotted/routes.py': routes})
    with pytest.raises(ModuleError, match="dotted/routes.py: route 'act': Body loads field 'conn', the parameter a "
                                          'decorator injects'):
        make_app(MODULE_PACKAGES=[package])


@pytest.mark.parametrize('fields, parameters', [('a = fields.Integer()', 'a'), ('pass', 'b, a=None')])
def test_an_include_schema_whose_body_leaves_out_a_needed_argument_is_a_422(make_app, module_package, fields,
                                                                           parameters):
    """Unknown keys may bring what the action needs, so the start cannot check it: the call does, never a 500."""
    routes = SIGNATURE_ROUTES.format(fields=fields, schema='Body(unknown=INCLUDE)', parameters=parameters)
    client = make_app(MODULE_PACKAGES=[module_package({'loose/routes.py': routes})]).test_client()
    missing = client.post('/loose/act', json={}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    needed = parameters.split(',')[0].strip()
    assert missing.status_code == 422 and missing.get_json()['errors'] == {needed: ['Missing data for required field.']}
    given = client.post('/loose/act', json={needed: 1}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert given.status_code == 200


WRAPPED_ROUTES = '''
    import functools
    from marshmallow import Schema, fields
    from lib.decorators import inject_db, use_schema

    class Body(Schema):
        a = fields.Integer(required=True)

    {definition}
    routes = [dict(route='act', action=act)]
'''


@pytest.mark.parametrize('definition, bodies', [
    # staticmethod copies no attribute of the function it wraps: the schema is still found, so a bad body is a 422
    ('class Actions:\n        @staticmethod\n        @use_schema(Body)\n        def act(a):\n            return {"a": a}\n'
     '    act = Actions.__dict__["act"]', [({'a': 'x'}, 422), ({'a': 1}, 200)]),
    # a partial of an injected action: the injected parameter is still never taken from the body
    ('act = functools.partial(inject_db()(lambda db, **body: body))', [({'a': 1, 'db': 5}, 422), ({'a': 1}, 200)]),
    # behind a wrapper without functools.wraps, without a schema or under one of unknown = INCLUDE: `db` reached
    # inject_db's function as a second value, a 500 (trial BY)
    ('def timed(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = timed(inject_db()(lambda db, **body: body))', [({'a': 1, 'db': 5}, 422), ({'a': 1}, 200)]),
    ('import marshmallow\n    class Open(Schema):\n        class Meta:\n            unknown = marshmallow.INCLUDE\n'
     '        a = fields.Integer(required=True)\n'
     '    def timed(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = use_schema(Open)(timed(inject_db()(lambda db, **body: body)))',
     [({'a': 1, 'db': 5}, 422), ({'a': 1, 'b': 2}, 200)]),
    # a staticmethod of a no-wraps wrapper around inject_db: `db` came from the body, a 500 (trial CB)
    ('def nowraps(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = staticmethod(nowraps(inject_db()(lambda db, **body: body)))',
     [({'a': 1, 'db': 5}, 422), ({'a': 1}, 200)]),
    # a hidden inject_db's parameter of another name than the docs': `database` came from the body (trial CC)
    ('def nowraps(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = nowraps(inject_db()(lambda database, **body: body))',
     [({'a': 1, 'database': 5}, 422), ({'a': 1}, 200)]),
    # a partial's pinned keyword: the body's value replaced it (trial BY: `partial(search, tenant='acme')`)
    ('def search(a, tenant):\n        return {"tenant": tenant}\n'
     '    act = functools.partial(search, tenant="acme")', [({'a': 1, 'tenant': 'evil'}, 422), ({'a': 1}, 200)]),
])
def test_a_wrapped_action_keeps_its_schema_and_injected_parameter(make_app, module_package, definition, bodies):
    """Each check holds on a second route of the same action too (trial CA: its `db` came from the body, once the
    first route's look had covered what both reach)."""
    routes = WRAPPED_ROUTES.format(definition=definition) + "    routes.append(dict(route='again', action=act))\n"
    client = make_app(MODULE_PACKAGES=[module_package({'wrapped/routes.py': routes})]).test_client()
    for path in ('/wrapped/act', '/wrapped/again'):
        for body, status in bodies:
            answer = client.post(path, json=body, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
            assert answer.status_code == status, (path, body, answer.get_json())


@pytest.mark.parametrize('definition, message', [
    ("act = use_schema(Body)(functools.partial(inject_db('nosuch')(lambda db, a: {})))",
     "borrows from the database 'nosuch', which is not configured"),
    ('class Loads(Schema):\n        db = fields.Integer()\n'
     '    act = use_schema(Loads)(functools.partial(inject_db()(lambda db, **body: body)))',
     "Loads loads field 'db', the parameter a decorator injects"),
    # a plain schema's field into the parameter of an inject_db behind a wrapper without functools.wraps (trial CB)
    ('class Loads(Schema):\n        db = fields.Integer()\n'
     '    def nowraps(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = use_schema(Loads)(nowraps(inject_db()(lambda db, **body: body)))',
     "Loads loads field 'db', the parameter a decorator injects"),
    ('class Search(Schema):\n        tenant = fields.String(load_default="public")\n'
     '    def search(tenant):\n        return {"tenant": tenant}\n'
     '    act = use_schema(Search)(functools.partial(search, tenant="acme"))',
     "Search loads field 'tenant', the parameter a decorator injects or a functools.partial pins"),
    ('async def act(a):\n        return {}', 'the action is async def'),
    ('async def act(a):\n        yield a', 'the action is async def'),  # an async generator
    ('class Act:\n        async def __call__(self, a):\n            return {}\n    act = Act()',
     'the action is async def'),
])
def test_a_wrapped_action_that_cannot_work_stops_the_start(make_app, module_package, definition, message):
    package = module_package({'wrapped/routes.py': WRAPPED_ROUTES.format(definition=definition)})
    with pytest.raises(ModuleError, match="wrapped/routes.py: route 'act': ") as raised:
        make_app(MODULE_PACKAGES=[package])
    assert message in str(raised.value)


def test_a_schemas_field_into_a_hidden_injects_parameter_stops_the_start_whatever_the_routes_order(make_app,
                                                                                                   module_package):
    """A route mounting the hidden inject_db first made the schema's own look skip it: `{"db": 5}` was a 500 "got
    multiple values" (trial CC)."""
    definition = ('class Loads(Schema):\n        db = fields.Integer()\n'
                  '    def nowraps(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
                  '    hidden = nowraps(inject_db()(lambda db, **body: body))\n    act = use_schema(Loads)(hidden)')
    routes = WRAPPED_ROUTES.format(definition=definition) + "    routes.insert(0, dict(route='first', action=hidden))\n"
    with pytest.raises(ModuleError, match="route 'act': Loads loads field 'db', the parameter a decorator injects"):
        make_app(MODULE_PACKAGES=[module_package({'wrapped/routes.py': routes})])


BODY_ROUTES = '''
    import flask
    from lib.decorators import inject_db

    CLOSED = []

    class Body:
        def __init__(self, fails):
            self.fails = fails
        def __iter__(self):
            if self.fails:
                raise ValueError('no body today')
            return iter([b'{}'])
        def close(self):
            CLOSED.append(self.fails)

    @inject_db()
    def answer(db, fails):
        db.execute('SELECT 1')
        return flask.Response(Body(fails), mimetype='application/json')

    def plain(fails):
        return flask.Response(Body(fails), mimetype='application/json')

    def closed():
        return CLOSED

    routes = [dict(route='answer', action=answer), dict(route='plain', action=plain),
              dict(route='closed', action=closed)]
'''


def test_a_response_body_whose_iter_fails_gives_its_connection_back(make_app, module_package):
    """LeasedStream asked the body's __iter__ after its lease's try: a raise there left the connection leased in an
    open transaction, and every request after waited for the pool (trial CC)."""
    app = make_app(MODULE_PACKAGES=[module_package({'bodies/routes.py': BODY_ROUTES})], DB_POOL_MAX=1,
                   DB_POOL_TIMEOUT_MS=1000)
    call = Caller(app.test_client())
    assert_problem(call('/bodies/answer', {'fails': True}), 500)
    assert call('/bodies/answer', {'fails': False}).status_code == 200


@pytest.mark.parametrize('path', ['/bodies/answer', '/bodies/plain'])
def test_a_response_bodys_own_close_is_called(make_app, module_package, path):
    """Once wrapped (LeasedStream, the watch of an unmarked action), the body's iterator was closed, never the body
    object, whose close PEP 3333 has the server call: its file or lock leaked (trial CC)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'bodies/routes.py': BODY_ROUTES})]).test_client())
    assert call(path, {'fails': False}).status_code == 200
    assert call('/bodies/closed', {}).get_json() == [False]


def test_a_schema_with_hooks_whose_body_leaves_out_a_needed_argument_is_a_422(make_app, module_package):
    """The start does not check a schema with hooks (they may change its keys): the call does, never a 500."""
    routes = """
        from marshmallow import Schema, fields, validates
        from lib.decorators import use_schema

        class Validated(Schema):
            a = fields.Integer()
            b = fields.Integer()

            @validates('a')
            def known(self, value, **kwargs):
                pass

        @use_schema(Validated)
        def act(a, b):
            return {}
        routes = [dict(route='act', action=act)]
    """
    client = make_app(MODULE_PACKAGES=[module_package({'hooked/routes.py': routes})]).test_client()
    answer = client.post('/hooked/act', json={'a': 1}, headers={'Authorization': f'Bearer {ADMIN_TOKEN}'})
    assert answer.status_code == 422 and answer.get_json()['errors'] == {'b': ['Missing data for required field.']}


def test_sql_files_in_a_modules_migrations_folder_are_warned_of(tmp_path, module_package):
    """migrations/ at the project's root is read alone: a module's own migrations folder, a natural layout, never ran,
    and nothing said so (trial AK). A `.sql` file elsewhere in a module (queries it reads itself) is its own."""
    package = module_package({'shop/routes.py': GOOD_ROUTES, 'shop/migrations/0001_orders.sql': 'SELECT 1;',
                              'shop/queries/orders.sql': 'SELECT 1;'})
    assert manage.unread_module_files([package]) == [
        f"{tmp_path / package / 'shop' / 'migrations' / '0001_orders.sql'} is not read: a module's tables come in a "
        "file of the project's migrations/ folder"]


def test_a_python_file_beside_the_module_folders_is_warned_of(tmp_path, module_package):
    """A module written as one file, modules/orders.py, mounted nothing, and nothing said so (trial BU)."""
    package = module_package({'shop/routes.py': GOOD_ROUTES, 'orders.py': GOOD_ROUTES, '_shared.py': ''})
    assert manage.unread_module_files([package]) == [
        f"{tmp_path / package / 'orders.py'} mounts nothing: a module is a folder holding a routes.py "
        "(docs/modules.md)"]


HIDDEN_SCHEMA = ('def logged(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
                 '    act = {wrapping}')


@pytest.mark.parametrize('definition, message', [
    # a wrapper without functools.wraps hid use_schema's mark: the body went unvalidated to the action (trial BU)
    (HIDDEN_SCHEMA.format(wrapping='logged(use_schema(Body)(lambda a: {"a": a}))'),
     "marked by use_schema, which the action is not"),
    (HIDDEN_SCHEMA.format(wrapping='logged(logged(use_schema(Body)(inject_db()(lambda db, a: {}))))'),
     "marked by use_schema, which the action is not"),
    # a method under inject_db: its connection went to self (trial BU: every call a 500)
    ('class Svc:\n        @inject_db()\n        def q(self, db, a):\n            return {}\n    act = Svc().q',
     'the action is or reaches a method (Svc.q) under inject_db or inject_conn'),
    ('class Svc:\n        @classmethod\n        @inject_db()\n        def q(cls, db, a):\n            return {}\n'
     '    act = Svc.q', 'the action is or reaches a method (Svc.q) under inject_db or inject_conn'),
    # other ways to hide the mark (trial BW): a class-based decorator, a default argument, a container in the
    # closure, an attribute, a partial's argument
    ('class Logged:\n        def __init__(self, f):\n            self.f = f\n'
     '        def __call__(self, **kw):\n            return self.f(**kw)\n'
     '    act = Logged(use_schema(Body)(lambda a: {}))', 'marked by use_schema, which the action is not'),
    ('def wrap(f):\n        def w(*, _f=f, **kw):\n            return _f(**kw)\n        return w\n'
     '    act = wrap(use_schema(Body)(lambda a: {}))', 'marked by use_schema, which the action is not'),
    ('def chain(*fs):\n        def w(**kw):\n            return fs[0](**kw)\n        return w\n'
     '    act = chain(use_schema(Body)(lambda a: {}))', 'marked by use_schema, which the action is not'),
    ('def w(**kw):\n        return w.inner(**kw)\n    w.inner = use_schema(Body)(lambda a: {})\n    act = w',
     'marked by use_schema, which the action is not'),
    ('def run(f, **kw):\n        return f(**kw)\n    act = functools.partial(run, use_schema(Body)(lambda a: {}))',
     'marked by use_schema, which the action is not'),
    # a method under inject_db behind a partial, an instance's __call__, or a wrapper (trial BW)
    ('class Svc:\n        @inject_db()\n        def q(self, db, a):\n            return {}\n'
     '    act = functools.partial(Svc().q)', 'the action is or reaches a method (Svc.q) under inject_db'),
    ('class Svc:\n        @inject_db()\n        def __call__(self, db, a):\n            return {}\n    act = Svc()',
     'the action is or reaches a method (Svc.__call__) under inject_db'),
    ('class Svc:\n        @inject_db()\n        def q(self, db, a):\n            return {}\n'
     '    def nowraps(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = use_schema(Body)(nowraps(Svc().q))', 'the action is or reaches a method (Svc.q) under inject_db'),
    # a database that is not configured, behind a wrapper (trial BW)
    ('def nowraps(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = use_schema(Body)(nowraps(inject_db("nosuch")(lambda db, a: {})))',
     "borrows from the database 'nosuch', which is not configured"),
    # a built-in: a traceback that named neither the file nor the route (trial BU)
    ('import time\n    act = time.time', "dbapi cannot read the action's parameters (no signature found"),
    ('act = dict', "dbapi cannot read the action's parameters"),
    # a loop of __wrapped__, an RPC proxy (any attribute a new proxy): the start hung without a word (trial BY)
    ('def loop(f):\n        @functools.wraps(f)\n        def w(**kw):\n            return f(**kw)\n'
     '        f.__wrapped__ = w\n        return w\n    act = loop(lambda a: {})', 'is wrapped more than 100 times'),
    ('import xmlrpc.client\n    act = xmlrpc.client.ServerProxy("http://127.0.0.1:9/RPC2").orders.create',
     'is wrapped more than 100 times'),
    # errors of the module's objects as they are looked at: tracebacks naming neither the route nor the file
    # an action mounted as a staticmethod was not looked into (trial CB)
    ('def holder(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = staticmethod(holder(use_schema(Body)(lambda a: {})))', 'marked by use_schema, which the action is not'),
    ('def nowraps(f):\n        def w(**kw):\n            return f(**kw)\n        return w\n'
     '    act = staticmethod(nowraps(inject_db("nosuch")(lambda db, a: {})))',
     "borrows from the database 'nosuch', which is not configured"),
    ('class Bad(Schema):\n        item = fields.Nested("Itme", required=True)\n'
     '    act = use_schema(Bad)(lambda item: {})',
     "dbapi could not check the action (RegistryError: Class with name 'Itme' was not found"),
    ('class Deco:\n        def __init__(self, f):\n            self.f = f\n'
     '        def __getattr__(self, name):\n            return getattr(self.fn, name)\n'
     '        def __call__(self, **kw):\n            return self.f(**kw)\n    act = Deco(lambda a: {})',
     'dbapi could not check the action (RecursionError: maximum recursion depth exceeded'),
    ('import contextvars, werkzeug.local\n    act = werkzeug.local.LocalProxy(contextvars.ContextVar("unset"))',
     'dbapi could not check the action (RuntimeError: '),
    # SystemExit ended the start without a word, exit code 3 (trial CA)
    ('class Deco:\n        def __init__(self, f):\n            self.f = f\n'
     '        @property\n        def __wrapped__(self):\n            raise SystemExit(3)\n'
     '        def __call__(self, **kw):\n            return self.f(**kw)\n    act = Deco(lambda a: {})',
     'dbapi could not check the action (SystemExit: 3)'),
])
def test_an_action_whose_marks_or_parameters_dbapi_cannot_see_stops_the_start(make_app, module_package, definition,
                                                                              message):
    package = module_package({'wrapped/routes.py': WRAPPED_ROUTES.format(definition=definition)})
    with pytest.raises(ModuleError, match="wrapped/routes.py: route 'act': ") as raised:
        make_app(MODULE_PACKAGES=[package])
    assert message in str(raised.value)


REGISTRY_ROUTES = '''
    from marshmallow import Schema
    from lib.decorators import inject_db, use_schema

    REGISTRY = {}

    def make(number):
        @use_schema(Schema)
        @inject_db()
        def action(db):
            return {'number': number}
        action.registry = REGISTRY  # a decorator that keeps its registry at hand
        REGISTRY[number] = action
        return action

    def lister():
        return sorted(REGISTRY)
    lister.registry = REGISTRY

    routes = [dict(route=f'a{number}', action=make(number)) for number in range(COUNT)]
'''


def test_a_registry_every_action_holds_is_looked_through_once_per_module(make_app, module_package, monkeypatch):
    """Each action's start checks walked the whole registry again: 400 actions took 5.5 s to mount, a start of 16 s
    (trial BY). What an earlier route's checks reached is not walked again (but by the bounded look for a hidden
    use_schema mark, from an action without one)."""
    looked_at = []
    monkeypatch.setattr(lib.modules, 'held_values', lambda value: looked_at.append(value) or HELD_VALUES(value))
    routes = REGISTRY_ROUTES.replace('COUNT', '60')
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'many/routes.py': routes})]).test_client())
    assert call('/many/a59', {}).get_json() == {'number': 59}
    assert len({id(value) for value in looked_at}) == len(looked_at) <= 3 * 60


@pytest.mark.parametrize('place', [0, 3])
def test_an_unmarked_action_reaching_marked_ones_stops_the_start_wherever_it_comes(make_app, module_package, place):
    """Once the routes' looks shared what they reached, an unmarked action holding the marked ones passed when it came
    after them, and stopped the start when it came first (trial BY's registry)."""
    lister = f"    routes.insert({place}, dict(route='lister', action=lister))\n"
    routes = REGISTRY_ROUTES.replace('COUNT', '3') + lister
    package = module_package({'listing/routes.py': routes})
    with pytest.raises(ModuleError, match="route 'lister': the action reaches .*takes a schema of its own"):
        make_app(MODULE_PACKAGES=[package])


HIDDEN_WRITE = ('def write(db, a):\n        db.execute("INSERT INTO probe.things (code) VALUES (%(a)s)", {{"a": a}})\n'
                '        return {{"a": a}}\n    marked = use_schema(Body)(inject_db()(write))\n    {hiding}')


@pytest.mark.parametrize('hiding', [
    # shapes the start's look through what an action holds does not reach (trial BY): a namespace in the closure, an
    # lru_cache of the function, a class-based decorator with __slots__
    'import types\n    def hide(f):\n        held = types.SimpleNamespace(fn=f)\n'
    '        def w(**kw):\n            return held.fn(**kw)\n        return w\n    act = hide(marked)',
    'def hide(f):\n        cached = functools.lru_cache(f)\n'
    '        def w(**kw):\n            return cached(**kw)\n        return w\n    act = hide(marked)',
    'class Hide:\n        __slots__ = ("fn",)\n        def __init__(self, fn):\n            self.fn = fn\n'
    '        def __call__(self, **kw):\n            return self.fn(**kw)\n    act = Hide(marked)',
    # a stream whose items call it after the action returned (trial CA): a generator action, a map, with a status
    'def act(a):\n        yield marked(a=a)',
    'def act(a):\n        return map(lambda item: marked(a=item), [a])',
    'def act(a):\n        return (marked(a=item) for item in [a]), 201',
])
def test_a_function_marked_by_use_schema_that_an_unmarked_action_calls_does_not_run(make_app, module_package,
                                                                                    database_url, caplog, hiding):
    """The body reached the marked function unvalidated (`{"a": "999; DROP"}` for an Integer) and its write
    committed, where the start did not see the mark (trial BY): it refuses to run, a 500 that says why."""
    package = module_package({'wrapped/routes.py': WRAPPED_ROUTES.format(
        definition=HIDDEN_WRITE.format(hiding=hiding))})
    code = f'hidden-{uuid.uuid4().hex[:8]}; DROP'
    assert_problem(Caller(make_app(MODULE_PACKAGES=[package]).test_client())('/wrapped/act', {'a': code}), 500)
    kind, message = logged_error(caplog)
    assert kind == 'lib.decorators.SchemaHidden'
    assert 'write, marked by use_schema, was called by the action of wrapped/act' in message
    assert things_with_code(database_url, code) == 0


@pytest.mark.parametrize('hiding', [
    # where the module's code runs around a stream and an answer (trial CB): a stream's finally block, run as it is
    # closed (its first batch fails); an iterable body's __iter__; a JSON encoder the module registered
    'def act(a):\n        try:\n            yield object()\n        finally:\n            marked(a=a)',
    'import flask\n    class Eager:\n        def __init__(self, a):\n            self.a = a\n'
    '        def __iter__(self):\n            marked(a=self.a)\n            return iter([b"[]"])\n'
    '    def act(a):\n        return flask.Response(Eager(a), mimetype="application/json")',
    'from lib.jsonenc import register_json_type\n    class Lazy:\n        def __init__(self, a):\n'
    '            self.a = a\n    register_json_type(Lazy, lambda lazy: marked(a=lazy.a))\n'
    '    def act(a):\n        return {"v": Lazy(a)}',
])
def test_a_function_marked_by_use_schema_does_not_run_around_an_unmarked_actions_answer(make_app, module_package,
                                                                                      database_url, hiding):
    """Only the action's call was watched: a stream's finally block, an iterable body's __iter__ and a registered JSON
    encoder ran the marked function on the unvalidated body (trial CB)."""
    package = module_package({'wrapped/routes.py': WRAPPED_ROUTES.format(
        definition=HIDDEN_WRITE.format(hiding=hiding))})
    code = f'hidden-{uuid.uuid4().hex[:8]}; DROP'
    assert_problem(Caller(make_app(MODULE_PACKAGES=[package]).test_client())('/wrapped/act', {'a': code}), 500)
    assert things_with_code(database_url, code) == 0


@pytest.mark.parametrize('definition', [
    # a callable whose __getattr__ makes new objects (an RPC client): the check ran for ever (trial BX)
    'class Rpc:\n        def __init__(self, path=""):\n            self.path = path\n'
    '        def __getattr__(self, name):\n            return Rpc(self.path + "." + name)\n'
    '        def __call__(self, *args):\n            return self.path\n'
    '    rpc = Rpc()\n    def act(a, _rpc=rpc):\n        return {"a": _rpc.x()}',
    # one whose __getattr__ raises: a KeyError traceback (trial BX)
    'class Lazy:\n        def __getattr__(self, name):\n            raise KeyError(name)\n'
    '        def __call__(self):\n            return 1\n'
    '    def make(lazy):\n        def act(a):\n            return {"a": lazy()}\n        return act\n    act = make(Lazy())',
    # a class-based decorator whose instances are unhashable (__eq__ without __hash__): a WeakSet lookup failed
    'class Deco:\n        def __init__(self, f):\n            self.f = f\n'
    '        def __eq__(self, other):\n            return self is other\n'
    '        def __call__(self, **kw):\n            return self.f(**kw)\n    act = Deco(lambda a: {"a": a})',
    # a registry of a great many functions, and a big table: the check looks at a bounded number of values
    'def make(table):\n        def act(a):\n            return {"a": len(table)}\n        return act\n'
    '    act = make({str(n): (lambda n=n: n) for n in range(100000)})',
])
def test_an_action_holding_odd_or_big_things_mounts_and_answers(make_app, module_package, definition):
    package = module_package({'wrapped/routes.py': WRAPPED_ROUTES.format(definition=definition)})
    answer = Caller(make_app(MODULE_PACKAGES=[package]).test_client())('/wrapped/act', {'a': 4})
    assert answer.status_code == 200, answer.get_json()


def test_an_action_that_calls_a_decorated_helper_from_its_closure_mounts(make_app, module_package):
    """Only use_schema's mark hidden in a closure stops the start: a helper under inject_db an action calls is one."""
    definition = ('def build():\n        @inject_db()\n        def helper(db, a):\n'
                  '            return {"a": db.fetch_value("SELECT %(a)s::int", {"a": a})}\n'
                  '        def act(a):\n            return helper(a)\n        return act\n    act = build()')
    package = module_package({'wrapped/routes.py': WRAPPED_ROUTES.format(definition=definition)})
    answer = Caller(make_app(MODULE_PACKAGES=[package]).test_client())('/wrapped/act', {'a': 4})
    assert (answer.status_code, answer.get_json()) == (200, {'a': 4})


def test_a_root_route_and_a_route_named_root_are_two_routes(make_app, module_package):
    """Both were the endpoint `root`: the start failed with flask's AssertionError traceback (trial BU)."""
    routes = '''
        def top():
            return 'top'

        def named():
            return 'named'

        routes = [dict(route='', action=top), dict(route='root', action=named)]
    '''
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'rt/routes.py': routes})]).test_client())
    assert [call(path).get_json() for path in ('/rt', '/rt/', '/rt/root')] == ['top', 'top', 'named']


ANSWER_ROUTES = '''
    import functools

    import flask
    import werkzeug.exceptions

    import lib.errors
    from marshmallow import Schema, fields
    from lib.decorators import inject_db, use_schema

    class Body(Schema):
        code = fields.String(required=True)
        fault = fields.String(required=True)

    FAULTS = {
        'none': {},
        'non-ascii': {'X-Note': 'caf\\u00e9 \\u2615'},
        'control': {'X-Note': 'a\\x7fb'},
        'request-id': {'X-Request-ID': 'mine'},
        'hop-by-hop': {'Transfer-Encoding': 'chunked'},
        'long': {'Content-Length': '100'},
        'short': {'Content-Length': '3'},
        'server': {'Server': 'mine'},
        'trailers': {'Trailers': 'X-Sum'},
    }

    @use_schema(Body)
    @inject_db()
    def write(db, code, fault):
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
        answer = flask.Response('{"ok":true}', mimetype='application/json')
        if fault == 'twice':
            answer.headers.add('Content-Length', '99')
        answer.headers.update(FAULTS.get(fault, {}))
        return answer

    @use_schema(Body)
    @inject_db()
    def moved(db, code, fault):
        db.execute('INSERT INTO probe.things (code) VALUES (%(code)s)', {'code': code})
        return flask.redirect('/caf\u00e9?q=\u00fc', 303)

    def unsatisfiable():
        raise werkzeug.exceptions.RequestedRangeNotSatisfiable(length=100)

    def streamed(length):
        return flask.Response(iter([b'{"ok"', b':true}']), mimetype='application/json',
                              headers={'Content-Length': length})

    def again():
        return flask.request.get_json()

    def queried(kind):
        return getattr(flask.request, kind).to_dict()

    def changed_error():
        error = lib.errors.NotFound('No such thing.')
        error.headers['X-Request-ID'] = 'mine'
        raise error

    def allowing():
        raise werkzeug.exceptions.MethodNotAllowed(valid_methods=['caf\u00e9'])

    def not_modified(forged):
        answer = flask.Response('{"ok":true}', status=304, mimetype='application/json')
        answer.set_etag('v1')
        answer.headers['Cache-Control'] = 'max-age=60'
        if forged:
            answer.headers['Server'] = 'mine'
        return answer

    routes = [dict(route='write', action=write), dict(route='streamed', action=streamed),
              dict(route='not_modified', action=not_modified),
              dict(route='again', action=again), dict(route='queried', action=queried),
              dict(route='changed_error', action=changed_error),
              dict(route='allowing', action=allowing), dict(route='moved', action=moved),
              dict(route='unsatisfiable', action=unsatisfiable),
              dict(route='write_partial', action=functools.partial(write))]
'''


def logged_error(caplog):
    """Return (error.type, error.message) of the first access line logged."""
    line = next(vars(record) for record in caplog.records if record.name == 'dbapi.access')
    return line['error.type'], line['error.message']


@pytest.mark.parametrize('fault, said', [
    ('non-ascii', "carries the header 'X-Note' with a character other than visible ASCII"),
    ('control', "carries the header 'X-Note' with a character other than visible ASCII"),
    ('request-id', "carries the header 'X-Request-ID': the framework sets it"),
    ('hop-by-hop', "carries the header 'Transfer-Encoding': the framework sets it"),
    ('long', 'says Content-Length: 100, but its body has 11 bytes'),
    ('short', 'says Content-Length: 3, but its body has 11 bytes'),
    # two, the first right: gunicorn sent both and the client waited for the second's bytes (trial BW)
    ('twice', 'says Content-Length 2 times (11, 99)'),
    # headers gunicorn drops unsent (trial BW)
    ('server', "carries the header 'Server': the framework sets it"),
    ('trailers', "carries the header 'Trailers': the framework sets it"),
])
def test_a_response_that_cannot_go_out_as_it_is_is_a_500_and_its_write_rolls_back(make_app, module_package,
                                                                                 database_url, caplog, fault, said):
    """gunicorn refused the header after the commit (a 500, two access lines), a returned X-Request-ID went out
    beside dbapi's, and a wrong Content-Length kept the client waiting or cut the body, a success logged (trial BU)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    code, kept = f'answer-{uuid.uuid4().hex[:8]}', f'answer-{uuid.uuid4().hex[:8]}'
    response = call('/answers/write', {'code': code, 'fault': fault})
    assert_problem(response, 500)
    assert len(response.headers.getlist('X-Request-ID')) == 1
    kind, message = logged_error(caplog)
    assert kind == 'TypeError' and message.startswith(f'the Response the action returned {said}'), message
    assert things_with_code(database_url, code) == 0
    fine = call('/answers/write', {'code': kept, 'fault': 'none'})
    assert (fine.status_code, fine.get_data(), things_with_code(database_url, kept)) == (200, b'{"ok":true}', 1)


@pytest.mark.parametrize('fault', ['non-ascii', 'long'])
def test_a_response_refused_behind_a_partial_rolls_its_write_back(make_app, module_package, database_url, fault):
    """A functools.partial around the action hid that inject_db's value was the request's answer: the Response was
    refused after the commit, its row written (trial CA)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    code = f'answer-{uuid.uuid4().hex[:8]}'
    assert_problem(call('/answers/write_partial', {'code': code, 'fault': fault}), 500)
    assert things_with_code(database_url, code) == 0


def test_a_redirect_to_a_path_of_unicode_goes_out_percent_encoded_and_its_write_commits(make_app, module_package,
                                                                                       database_url):
    """The check read Location before werkzeug percent-encodes it: flask.redirect('/café') was a 500 (trial BX)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    code = f'answer-{uuid.uuid4().hex[:8]}'
    response = call('/answers/moved', {'code': code, 'fault': 'none'})
    assert (response.status_code, response.headers['Location']) == (303, '/caf%C3%A9?q=%C3%BC')
    assert things_with_code(database_url, code) == 1


def test_a_werkzeug_exception_keeps_its_own_headers(make_app, module_package):
    """Only Retry-After was kept: RequestedRangeNotSatisfiable lost the Content-Range RFC 9110 15.5.17 asks of a 416
    (trial BX)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    response = call('/answers/unsatisfiable', {})
    assert_problem(response, 416)
    assert response.headers['Content-Range'] == 'bytes */100'


@pytest.mark.parametrize('kind', ['args', 'values'])
def test_an_action_that_reads_the_query_string_is_a_500_that_says_it_plays_no_part(make_app, module_package, caplog,
                                                                                   kind):
    """request.args gave an action the query string, unvalidated, which the contract says plays no part (trial BY)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    assert_problem(call('/answers/queried?x=evil', {'kind': kind}), 500)
    kind, message = logged_error(caplog)
    assert kind == 'RuntimeError' and message.startswith('the query string plays no part in a call')


def test_an_action_that_reads_the_body_from_flask_is_a_500_that_says_where_the_body_went(make_app, module_package,
                                                                                       caplog):
    """flask's request.get_json() found the body read already and answered the caller 400 "Bad Request." (trial BU)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    assert_problem(call('/answers/again', {}), 500)
    kind, message = logged_error(caplog)
    assert kind == 'RuntimeError' and message.startswith('dbapi has read the request body already')


@pytest.mark.parametrize('length', ['99', '2'])
def test_a_streamed_responses_own_content_length_is_dropped_and_its_body_goes_whole(make_app, module_package, length):
    """A generator body's length is known once sent: a wrong Content-Length left the client waiting, or cut the body
    (trial BW). The server chunks it instead."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    response = call('/answers/streamed', {'length': length})
    assert (response.status_code, response.get_data()) == (200, b'{"ok":true}')
    assert 'Content-Length' not in response.headers or response.headers['Content-Length'] == '11'


@pytest.mark.parametrize('path, said', [
    ('/answers/changed_error', "NotFound: it takes no header 'X-Request-ID': the framework sets it"),
    ('/answers/allowing', "MethodNotAllowed: it takes no header 'Allow' with a character other than visible ASCII")])
def test_an_errors_headers_are_checked_when_it_is_answered(make_app, module_package, caplog, path, said):
    """Only an ApiError's headers given when it was made were checked: ones set after it, or a werkzeug exception's,
    went out as they were, a second X-Request-ID, a raw latin-1 byte (trial BW)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    response = call(path, {})
    assert_problem(response, 500)
    assert response.headers.getlist('X-Request-ID') != ['mine'] and len(response.headers.getlist('X-Request-ID')) == 1
    kind, message = logged_error(caplog)
    assert kind == 'TypeError' and message.startswith(said), message


def test_a_304_an_action_returns_keeps_its_headers_but_its_bodys(make_app, module_package):
    """A 304 or 204 went out without its ETag and Cache-Control, and without a check of its headers (trial BX)."""
    call = Caller(make_app(MODULE_PACKAGES=[module_package({'answers/routes.py': ANSWER_ROUTES})]).test_client())
    answer = call('/answers/not_modified', {'forged': False})
    assert (answer.status_code, answer.get_data(), answer.headers.get('ETag')) == (304, b'', '"v1"')
    assert answer.headers['Cache-Control'] == 'max-age=60' and 'Content-Type' not in answer.headers
    assert_problem(call('/answers/not_modified', {'forged': True}), 500)
