"""A user's own work: a copy of the project gains a module and a migration, as docs/modules.md tells, and
`make test` passes there, its parametrised auth and method tests covering the new routes by themselves."""
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import uuid
from pathlib import Path

import pytest

import settings
from lib.db.migrate import MIGRATIONS_DIR
from tests.helpers import drop_database, recreate_database, scratch_folder, stop_postgres

pytestmark = pytest.mark.slow

GUIDE = settings.BASE_DIR / 'docs' / 'modules.md'


def guide_block(heading):
    """Return the first indented code block after docs/modules.md's `## heading`, dedented: the guide's own text, so
    that copying it is what this test does (trial AG: its routes.py imported an action its actions.py lacked)."""
    text = GUIDE.read_text()
    after = text[text.index(f'\n## {heading}\n'):]
    block = re.search(r'\n\n((?: {4}.*\n|\n)+)', after)[1]
    return textwrap.dedent(block).strip() + '\n'


# The files of modules/orders and its migration, as docs/modules.md shows them.
ORDERS_MODULE = {'__init__.py': '', **{name: guide_block(name) for name in ('routes.py', 'actions.py', 'schemas.py',
                                                                            'sql.py')}}
ORDERS_MIGRATION = guide_block('Tables')
# Run in the copy once `make test` has migrated its database: the new action, called through the app.
CALL_ORDERS = '''
import json, sys
from app import create_app
from tests.helpers import Caller, app_config
call = Caller(create_app(app_config(sys.argv[1])).test_client())
created = call('/orders/create', {'customer_id': 7, 'total': '12.50'})
fetched = call('/orders/get', {'id': created.get_json()['id']})
print(json.dumps([created.status_code, created.get_json(), fetched.get_json()]))
'''


def project_files():
    """Return the paths of the project's files as git sees them: tracked, or new and not ignored."""
    listed = subprocess.run(['git', 'ls-files', '-z', '--cached', '--others', '--exclude-standard'],
                            cwd=settings.BASE_DIR, capture_output=True, check=True).stdout
    return [Path(name) for name in listed.decode().split('\0') if name]


def copy_project(target):
    """Copy the project's files to target as they are now, sharing the installed .venv."""
    for relative in project_files():
        source = settings.BASE_DIR / relative
        if source.is_file():  # a tracked file deleted in the work tree is not part of it
            (target / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / relative, follow_symlinks=False)
    (target / '.venv').symlink_to(settings.BASE_DIR / '.venv')


def next_migration_number():
    """Return the number after the last migration's, written as wide as theirs (0004 after 0003)."""
    numbers = [match[1] for path in MIGRATIONS_DIR.glob('*.sql') if (match := re.match(r'(\d+)_', path.name))]
    width = max((len(number) for number in numbers), default=4)
    return str(max((int(number) for number in numbers), default=0) + 1).zfill(width)


def add_orders_module(project):
    """Add modules/orders and its migration (with its rollback) to a copy of the project."""
    for name, text in ORDERS_MODULE.items():
        path = project / 'modules' / 'orders' / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text).lstrip())
    number = next_migration_number()
    (project / 'migrations' / f'{number}_orders.sql').write_text(textwrap.dedent(ORDERS_MIGRATION).lstrip())
    (project / 'migrations' / f'{number}_orders.rollback.sql').write_text('DROP TABLE orders;\n')


@pytest.fixture()
def project_copy():
    """A copy of the project with the orders module added, under .data/ (its server's user can reach it there)."""
    if not (settings.BASE_DIR / '.git').exists():
        pytest.skip('the copy is made from git ls-files')
    copy = Path(tempfile.mkdtemp(prefix='new-module-', dir=scratch_folder()))
    try:
        copy_project(copy)
        add_orders_module(copy)
        yield copy
    finally:
        stop_postgres(copy / '.data' / 'pg-test')  # in case the copy's tests started their own
        shutil.rmtree(copy, ignore_errors=True)


@pytest.fixture()
def copy_database(database_url):
    """An empty database of the copy's tests (their TEST_DATABASE_URL), dropped afterwards."""
    name = f'dbapi_new_module_{uuid.uuid4().hex[:8]}'
    yield recreate_database(database_url, name)
    drop_database(database_url, name)


def make_would_install(project):
    """Tell whether `make test` in the copy would install packages first (the shared .venv is older than the
    requirements files: only when pytest runs outside `make test`, which installs them first)."""
    planned = subprocess.run(['make', '-n', 'test'], cwd=project, capture_output=True, text=True, check=True).stdout
    return 'pip install' in planned


def run_in(project, command, database_url, timeout=900):
    """Run a command in the copy with the test database it should use; return the finished process."""
    environment = {**os.environ, 'ENVIRONMENT': 'test', 'TEST_DATABASE_URL': database_url}
    return subprocess.run(command, cwd=project, env=environment, capture_output=True, text=True, timeout=timeout)


@pytest.mark.skipif(os.environ.get('FAST_PATHS') == '0', reason='the make test it runs covers FAST_PATHS=0 itself')
def test_a_new_module_with_a_migration_passes_make_test_in_a_fresh_copy(project_copy, copy_database):
    if make_would_install(project_copy):
        pytest.skip('.venv does not match requirements*.txt yet: `make venv` (or `make test`) installs them')
    # Every test file that runs over each mounted module (test_fast_paths: each schema; test_house_rules: its code).
    tests = ('tests/test_auth.py tests/test_calling.py tests/test_example_modules.py tests/test_fast_paths.py '
             'tests/test_house_rules.py')
    made = run_in(project_copy, ['make', 'test', f'PYTEST_ARGS=-v -p no:cacheprovider {tests}'], copy_database)
    output = made.stdout + made.stderr
    assert made.returncode == 0, output[-5000:]
    for test in ('test_missing_header_is_401_with_a_bearer_challenge', 'test_unknown_token_is_401_invalid_token',
                 'test_scoped_client_is_403_outside_its_modules_and_allowed_inside'):
        for route in ('orders/create', 'orders/get', 'orders/reports/daily'):
            assert f'{test}[{route}] PASSED' in output, f'{test} did not cover {route}'
    assert 'test_other_methods_are_405_with_allow_post[/orders/reports/daily] PASSED' in output
    called = run_in(project_copy, [sys.executable, '-c', CALL_ORDERS, copy_database], copy_database, timeout=120)
    assert called.returncode == 0, called.stderr[-5000:]
    status, created, fetched = json.loads(called.stdout.strip().splitlines()[-1])
    assert status == 201 and created == fetched and created['total'] == '12.50'
