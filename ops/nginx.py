"""Render nginx/dbapi.conf.template for the native stack and the lint, exactly as the nginx image does."""
import grp
import os
import pwd
import subprocess
from pathlib import Path

from settings import BASE_DIR

from .render import TemplateError, fill_template, program

TEMPLATE = BASE_DIR / 'nginx' / 'dbapi.conf.template'
ENVSH = BASE_DIR / 'nginx' / 'dbapi.envsh'
# Process plumbing only: dbapi's behaviour lives in the template, included as the image includes it.
MAIN_CONFIG = """\
# Written by ops/nginx.py for the native stack; edit nginx/dbapi.conf.template instead.
daemon off;
worker_processes 1;
# Each proxied request holds two connections (client and replica): 256 clients need more than 512.
worker_rlimit_nofile 8192;
pid {run_dir}/nginx.pid;
error_log stderr warn;
{user}
events {{
    worker_connections 4096;
}}
http {{
    client_body_temp_path {run_dir}/client_body;
    proxy_temp_path {run_dir}/proxy;
    fastcgi_temp_path {run_dir}/fastcgi;
    uwsgi_temp_path {run_dir}/uwsgi;
    scgi_temp_path {run_dir}/scgi;
    include {run_dir}/dbapi.conf;
}}
"""


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
    """Write the rendered template and a main config around it into run_dir; return the main config."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    # nginx workers run as nobody under root and must reach their temp directories in here.
    run_dir.chmod(0o755)
    (run_dir / 'dbapi.conf').write_text(render(environment, template, envsh))
    main_config = run_dir / 'nginx.conf'
    main_config.write_text(MAIN_CONFIG.format(run_dir=run_dir, user=worker_user()))
    return main_config


def command(main_config, test=False):
    """Return the argv that runs (or with test, checks) nginx on main_config in the foreground."""
    argv = [program('nginx'), '-p', str(main_config.parent), '-c', str(main_config), '-e', 'stderr']
    return argv + ['-t', '-q'] if test else argv
