"""Fill ${NAME} placeholders as envsubst does in the images, and find the system programs the stack runs."""
import os
import re
import shutil

PLACEHOLDER = re.compile(r'\$\{([A-Z][A-Z0-9_]*)\}')
# Debian keeps nginx and pgbouncer in sbin, which a non-root PATH often lacks.
SYSTEM_PATHS = ('/usr/local/sbin', '/usr/sbin', '/sbin')


class TemplateError(Exception):
    """A template cannot be rendered; the message names the file and what is missing."""


def fill_template(text, values, source='template'):
    """Replace every ${NAME} in text with values[NAME]; refuse when any has no value."""
    missing = sorted({name for name in PLACEHOLDER.findall(text) if name not in values})
    if missing:
        raise TemplateError(f'{source}: no value for {", ".join(missing)}')
    return PLACEHOLDER.sub(lambda match: values[match.group(1)], text)


def program(name):
    """Return the path of a system program, or raise naming the make target that installs it."""
    search_path = os.pathsep.join([os.environ.get('PATH', ''), *SYSTEM_PATHS])
    path = shutil.which(name, path=search_path)
    if path is None:
        raise FileNotFoundError(f'{name} is not installed: run `make tools` (apt-get install nginx-light pgbouncer)')
    return path
