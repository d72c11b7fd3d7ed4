"""The one after-fork mechanism: what a process must forget or restart when gunicorn forks a worker from it; the
stop of a start; the watch of a command's terminal. Imports nothing heavy: manage.py takes it before anything else."""
import errno
import os
import signal
import threading
import time

_callbacks = []


class StartInterrupted(SystemExit):
    """Ctrl-C, SIGTERM or SIGHUP while the service starts (manage.py's handler): a stop asked for, not a failure of
    the code it imports."""


def after_fork(callback):
    """Call callback() in every child process forked after this call; return callback (usable as a decorator)."""
    _callbacks.append(callback)
    return callback


def run_after_fork_callbacks():
    """Run the registered callbacks, in registration order, in a freshly forked child."""
    for callback in list(_callbacks):
        callback()


os.register_at_fork(after_in_child=run_after_fork_callbacks)


class ControllingTerminal:
    """The controlling terminal this process had when it was made (/dev/tty, whatever its output is redirected to),
    or none: tells whether it has hung up since (its ioctls then fail with EIO)."""

    def __init__(self):
        try:
            self.fd = os.open('/dev/tty', os.O_RDONLY | os.O_NOCTTY)
        except OSError:  # no controlling terminal
            self.fd = None

    def hung_up(self):
        """Tell whether the terminal has hung up (False without one)."""
        if self.fd is None:
            return False
        try:
            os.tcgetpgrp(self.fd)
        except OSError as exc:
            return exc.errno == errno.EIO
        return False


def hangup_ignored():
    """Tell whether this process was started with SIGHUP ignored (nohup): it is to outlive its terminal."""
    return signal.getsignal(signal.SIGHUP) == signal.SIG_IGN


def stop_on_terminal_hangup(interval=1.0):
    """Return this process's ControllingTerminal, and when it has one, send this process SIGTERM (a graceful stop)
    once the terminal hangs up, within interval seconds: the kernel sends the hangup to the session's leader and its
    foreground group alone, and a leader that takes it itself and waits for its child (make, under `ssh -t host make
    run` or tmux) never passes it on. No watch under nohup (hangup_ignored): call it before setting a SIGHUP
    handler."""
    terminal = ControllingTerminal()
    if terminal.fd is None or hangup_ignored():
        return terminal

    def watch():
        while not terminal.hung_up():
            time.sleep(interval)
        os.kill(os.getpid(), signal.SIGTERM)
    threading.Thread(target=watch, name='dbapi-terminal-hangup', daemon=True).start()
    return terminal
