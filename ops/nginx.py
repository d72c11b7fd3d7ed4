"""Render nginx's templates for the native stack and the lint, exactly as the nginx image does."""
import grp
import os
import pwd
import subprocess
from pathlib import Path

from settings import BASE_DIR

from .render import TemplateError, fill_template, program

TEMPLATE = BASE_DIR / 'nginx' / 'dbapi.conf.template'
MAIN_TEMPLATE = BASE_DIR / 'nginx' / 'nginx.conf.template'
ENVSH = BASE_DIR / 'nginx' / 'dbapi.envsh'
# The native stack runs one nginx worker unless told otherwise: plenty for a laptop's replicas.
NATIVE_DEFAULTS = {'NGINX_WORKER_PROCESSES': '1'}


def derived_environment(environment, envsh=ENVSH):
    """Source dbapi.envsh in sh, as the image's entrypoint does, and return the environment it leaves."""
    result = subprocess.run(['sh', '-ec', '. "$0"; env -0', str(envsh)], env=environment, capture_output=True)
    if result.returncode:
        raise TemplateError(result.stderr.decode(errors='replace').strip() or f'{envsh} failed')
    pairs = (item.split('=', 1) for item in result.stdout.decode().split('\0') if '=' in item)
    return dict(pairs)


def render(environment, template=TEMPLATE, envsh=ENVSH):
    """Return the template filled from environment (DBAPI_UPSTREAMS, NGINX_LISTEN, the app's limits)."""
    return fill_template(Path(template).read_text(), derived_environment(environment, envsh), str(template))


def worker_user():
    """Return the `user` directive nginx needs when started by root (Debian has no group "nobody")."""
    if os.geteuid() != 0:
        return ''
    nobody = pwd.getpwnam('nobody')
    return f'user nobody {grp.getgrgid(nobody.pw_gid).gr_name};'


def write_config(run_dir, environment, template=TEMPLATE, envsh=ENVSH):
    """Render both templates into run_dir, which also holds nginx's pid and temporary files; return the main
    config."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # nginx workers run as nobody under root and must reach their temp directories in here.
    run_dir.chmod(0o755)
    places = dict(NGINX_RUN_DIR=str(run_dir), NGINX_CONF_DIR=str(run_dir), NGINX_USER_DIRECTIVE=worker_user())
    unset = {name: value for name, value in NATIVE_DEFAULTS.items() if not environment.get(name)}  # '' is unset
    values = derived_environment({**environment, **unset, **places}, envsh)
    (run_dir / 'dbapi.conf').write_text(fill_template(Path(template).read_text(), values, str(template)))
    main_config = run_dir / 'nginx.conf'
    main_config.write_text(fill_template(MAIN_TEMPLATE.read_text(), values, str(MAIN_TEMPLATE)))
    return main_config


def command(main_config, test=False):
    """Return the argv that runs (or with test, checks) nginx on main_config in the foreground."""
    argv = [program('nginx'), '-p', str(main_config.parent), '-c', str(main_config), '-e', 'stderr',
            '-g', 'daemon off;']
    return argv + ['-t'] if test else argv
