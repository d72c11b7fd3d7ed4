"""ECS JSON logging to stdout (and LOG_PATH), one object per line."""
import logging
import sys

import ecs_logging

_configured = False


def configure_logging(config):
    """Send every log record to stdout as an ECS JSON line, once per process."""
    global _configured
    root = logging.getLogger()
    root.setLevel(config['LOG_LEVEL'])
    if _configured:
        return
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(ecs_logging.StdlibFormatter())
    root.handlers[:] = [handler]
    # pgserver narrates every step of starting the embedded server at INFO.
    logging.getLogger('pgserver').setLevel(logging.WARNING)
    _configured = True
