"""The one after-fork mechanism: what a process must forget or restart when gunicorn forks a worker from it; and the
stop of a start. Imports nothing heavy: manage.py takes it before anything else."""
import os

_callbacks = []


class StartInterrupted(SystemExit):
    """Ctrl-C while the service starts (manage.py's handler): a stop asked for, not a failure of the code it imports."""


def after_fork(callback):
    """Call callback() in every child process forked after this call; return callback (usable as a decorator)."""
    _callbacks.append(callback)
    return callback


def run_after_fork_callbacks():
    """Run the registered callbacks, in registration order, in a freshly forked child."""
    for callback in list(_callbacks):
        callback()


os.register_at_fork(after_in_child=run_after_fork_callbacks)
