"""The one after-fork mechanism: what a process must forget or restart when gunicorn forks a worker from it; the
stop of a start; the watch of a command's terminal; a line written whole to an output other processes share. Imports
nothing heavy: manage.py takes it before anything else."""
import atexit
import contextlib
import errno
import fcntl
import glob
import os
import shutil
import signal
import sys
import tempfile
import threading
import time

_callbacks = []


# The stop signals of a command (manage.py, make stack), as its one line calls them.
STOP_CAUSES = {signal.SIGINT: 'Ctrl-C', signal.SIGTERM: 'SIGTERM', signal.SIGHUP: 'SIGHUP'}


class StartInterrupted(SystemExit):
    """Ctrl-C, SIGTERM or SIGHUP while the service starts (CommandStop's): a stop asked for, not a failure of the
    code it imports. Its code is a shell's for the signal: 128 + its number."""


class CommandStop:
    """The stop signals (STOP_CAUSES) of a command that starts things before it serves, taken by `take` as their
    handler: the first is the stop (asked: its signal number, or None), raised as StartInterrupted where the command
    runs; one that comes while a step that must not be cut runs (held_back) is raised once the step ends; none is
    raised once the command's own stop has begun (end). Before the command serves (served), the first says so on
    stderr at once, in the line stopped_line(signum) returns (the command sets it)."""

    def __init__(self):
        self.asked = None
        self.held = False
        self.ending = False
        self.served = False
        self.stopped_line = None

    def take_stop_signals(self, stopped_line):
        """Take the stop signals (STOP_CAUSES) as the command's (take), saying stopped_line(signum) for the first that
        comes before it serves; under nohup (SIGHUP ignored: hangup_ignored) SIGHUP is left alone. At the process's
        exit they are ignored (ignore_stop_signals, the last exit handler to run)."""
        self.stopped_line = stopped_line
        for stop_signal in STOP_CAUSES:
            if not (stop_signal == signal.SIGHUP and hangup_ignored()):
                signal.signal(stop_signal, self.take)
        atexit.register(ignore_stop_signals)

    def take(self, signum, frame=None):
        """Keep the first stop signal, and say it before the command serves; raise it unless a step holds it back or
        the command's stop has begun. Another raises nothing: it would cut the first one's line, or its unwinding
        (exit handlers and all), short (trial Z: the line lost its newline to a SIGTERM 1 ms after a Ctrl-C)."""
        if self.ending:
            return
        first = self.asked is None
        self.keep(signum)
        if first and not self.held:
            raise StartInterrupted(128 + self.asked)

    def keep(self, signum):
        """Keep signum as the stop if it is the first, and say so at once (stopped_line) before the command serves."""
        if self.asked is not None:
            return
        self.asked = signum
        if not self.served and self.stopped_line is not None:
            with contextlib.suppress(OSError):  # stderr was the terminal that hung up
                write_line(self.stopped_line(signum))

    def stopping(self):
        """Tell whether a stop was asked."""
        return self.asked is not None

    def raise_if_asked(self):
        """Raise the stop asked for, if any: Python ignores an exception a signal handler raises inside some of its own
        callbacks (an import lock's), and a start went on to serve after saying it stopped."""
        if self.asked is not None and not self.ending:
            raise StartInterrupted(128 + self.asked)

    @contextlib.contextmanager
    def held_back(self):
        """Hold a stop asked during the block back until it ends; the block's failure once a stop was asked is that
        stop's (a terminal's Ctrl-C reaches the whole group: initdb and pg_ctl die of it)."""
        outer = self.held  # a block inside another: the outer one raises the stop
        self.held = True
        try:
            yield
        except Exception:
            if self.asked is None:
                raise
        finally:
            self.held = outer
        if not outer:
            self.raise_if_asked()

    def end(self):
        """Begin the command's own stop: the stop signals are ignored from now on, so that its exit handlers (the
        embedded PostgreSQL's stop, the stack's children) run whole."""
        self.ending = True
        for stop_signal in STOP_CAUSES:
            if signal.getsignal(stop_signal) != signal.SIG_IGN:  # nohup's SIGHUP stays ignored
                signal.signal(stop_signal, ignore_stop)


def ignore_stop(signum, frame=None):
    """Do nothing: a stop signal's handler once the command's stop has begun. A Python function, not SIG_IGN, so
    that a signal already on its way finds a handler to run: Python reports one whose handler became SIG_IGN
    meanwhile as "OSError: Signal 15 ignored due to race condition", a traceback (trial Z)."""


def ignore_stop_signals():
    """Ignore the stop signals (STOP_CAUSES) from now on (SIG_IGN), as a command's last exit handler: Python's exit
    then gives the handlers of Python's back SIG_DFL, and a second Ctrl-C that came after it killed the process by the
    signal, not exit 128 + n (trial W: 8 of 24). A signal already on its way then is Python's race condition line."""
    for stop_signal in STOP_CAUSES:
        signal.signal(stop_signal, signal.SIG_IGN)


# This process's: a command has one.
COMMAND_STOP = CommandStop()


def drop_stops_python_ignores(previous_hook):
    """Return a sys.unraisablehook that drops a StartInterrupted (CommandStop.take's) raised where Python ignores
    exceptions, a weakref's callback or a __del__ (CommandStop.raise_if_asked raises it again where the command
    runs), and hands any other to previous_hook: Python printed "Exception ignored in" and a traceback after the
    stop's one line."""
    def hook(unraisable):
        if not isinstance(unraisable.exc_value, StartInterrupted):
            previous_hook(unraisable)
    return hook


sys.unraisablehook = drop_stops_python_ignores(sys.unraisablehook)


def write_line(text, stream=None):
    """Write text and its newline to stream (default sys.stderr) with one write to its file descriptor, which a pipe
    or a file opened to append takes whole (a pipe up to PIPE_BUF, 4 KiB): print() writes the text and its newline
    apart, and a line another process wrote between the two (nginx's, a replica's, to make stack's output) was glued
    to this one, lost to every reader of JSON lines. A stream without a descriptor (a test's capture) is written as
    usual. Raises OSError as a write does."""
    stream = stream or sys.stderr
    try:
        descriptor = stream.fileno()
    except (AttributeError, OSError, ValueError):
        stream.write(text + '\n')
        stream.flush()
        return
    stream.flush()
    write_whole(descriptor, (text + '\n').encode(stream.encoding or 'utf-8', stream.errors or 'strict'))


class WholeLines:
    """A text stream in front of another (sys.stdout, sys.stderr) that passes on whole lines only: what one write()
    holds up to its last newline goes out in one write to the stream, the rest waits for the next newline (or
    flush(), which the exit calls). Every other attribute (fileno, encoding, buffer, isatty) is the stream's."""

    def __init__(self, stream):
        # Reentrant: a signal's handler (a stop's line) may write while the interrupted code is inside write().
        self.stream, self.tail, self.lock = stream, '', threading.RLock()

    def write(self, text):
        """Pass on the whole lines that text completes; return len(text), as a text stream does."""
        with self.lock:
            lines, newline, self.tail = (self.tail + text).rpartition('\n')
            if newline:
                self.stream.write(lines + newline)
                self.stream.flush()
        return len(text)

    def flush(self):
        """Pass on the text that waits for its newline, then flush the stream."""
        with self.lock:
            tail, self.tail = self.tail, ''
            if tail:
                self.stream.write(tail)
            self.stream.flush()

    def __getattr__(self, name):
        """Return the stream's attribute name."""
        return getattr(self.stream, name)


def write_lines_whole():
    """Make sys.stdout and sys.stderr WholeLines: print() under PYTHONUNBUFFERED (the Dockerfile's) wrote a text and
    its newline apart (gunicorn's "\nError: ..." and "Failed to read config file" lines), a traceback in pieces, and
    another process's line could land between them (trial BL). Streams already made so are left as they are."""
    for name in ('stdout', 'stderr'):
        stream = getattr(sys, name)
        if stream is not None and not isinstance(stream, WholeLines):
            setattr(sys, name, WholeLines(stream))


def write_whole(descriptor, data):
    """Write all of data (bytes) to a file descriptor: in one os.write, then the rest of a short write."""
    while data:
        data = data[os.write(descriptor, data):]


def after_fork(callback):
    """Call callback() in every child process forked after this call; return callback (usable as a decorator)."""
    _callbacks.append(callback)
    return callback


def run_after_fork_callbacks():
    """Run the registered callbacks, in registration order, in a freshly forked child."""
    for callback in list(_callbacks):
        callback()


os.register_at_fork(after_in_child=run_after_fork_callbacks)

# The signals that stop a gunicorn worker: SIGTERM gracefully, SIGINT and SIGQUIT at once.
WORKER_STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGQUIT}


def hold_stop_signals_for_the_fork():
    """Block the stop signals until the fork about to be made has returned (gunicorn's pre_fork hook, in the master):
    one sent meanwhile then waits in the child until take_stop_signals, where the master's handlers, which the child
    has until then, queued it for a master loop the child never runs, and the worker lived on until the master's
    graceful timeout killed it. The forking process takes them again once fork returns, failed or not
    (os.register_at_fork's after_in_parent)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, WORKER_STOP_SIGNALS)


def take_stop_signals():
    """Have the stop signals end this process at once (their default action), a blocked one held since the fork
    (hold_stop_signals_for_the_fork) included: a worker still booting has no request in flight (gunicorn's post_fork
    hook, until gunicorn sets the worker's own handlers)."""
    for stop_signal in WORKER_STOP_SIGNALS:
        signal.signal(stop_signal, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_STOP_SIGNALS)


os.register_at_fork(after_in_parent=lambda: signal.pthread_sigmask(signal.SIG_UNBLOCK, WORKER_STOP_SIGNALS))


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


# The prefix of the metrics folders manage.py and gunicorn.conf.py make (PROMETHEUS_MULTIPROC_DIR, when unset).
METRICS_DIR_PREFIX = 'dbapi-metrics-'
# The file in a held folder (made_held_folder) whose lock its maker, and every process that inherits the open file,
# holds until it exits (flock(2): the lock is the open file's, the kernel's to drop with the last process holding it).
HOLDER_LOCK_NAME = 'holder.lock'
# The open lock files of the folders this process made: kept open, so held, until it exits.
HELD_LOCKS = []


def made_held_folder(prefix):
    """Make a folder in the temporary directory (tempfile.mkdtemp's) named prefix + a random part, held by a lock
    (HOLDER_LOCK_NAME) until this process and the children that inherit it exit, and return its path; first remove
    the folders of that prefix no process holds any more: the exit handler that removes one does not run when its
    maker is killed outright (trial BV: a SIGKILLed gunicorn master left its metrics folder for good, in an emptyDir
    that outlives the container). The lock file is locked before it takes its name, so no other start finds it
    free."""
    remove_abandoned_folders(prefix)
    folder = tempfile.mkdtemp(prefix=prefix)
    lock = open(os.path.join(folder, HOLDER_LOCK_NAME + '.new'), 'w')
    fcntl.flock(lock, fcntl.LOCK_EX)
    os.rename(lock.name, os.path.join(folder, HOLDER_LOCK_NAME))
    HELD_LOCKS.append(lock)
    return folder


def remove_abandoned_folders(prefix):
    """Remove the folders made_held_folder made with prefix whose lock no process holds; one without a lock file (a
    start under way, an older dbapi's) is left."""
    for folder in glob.glob(os.path.join(tempfile.gettempdir(), glob.escape(prefix) + '*')):
        try:
            with open(os.path.join(folder, HOLDER_LOCK_NAME)) as lock:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # no lock file, or a living holder
            continue
        shutil.rmtree(folder, ignore_errors=True)
