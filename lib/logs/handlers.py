"""Destinations: stdout, and one file per process under LOG_PATH that only that process writes and rotates.

With FAST_PATHS the handlers also take finished lines (the access log's fast path), write stdout with one
os.write and count the bytes of their file instead of asking its size; without, logging's own StreamHandler
and RotatingFileHandler do the writing.

Every process of a container shares its stdout, a pipe: a write of up to PIPE_BUF bytes (4 KiB on Linux) goes in
whole, a longer one may be interleaved with another process's. So stdout gets each line in writes of at most
PIPE_BUF bytes: a longer line (a deep stack trace) is split into several whole lines (formatter.split_line). The
files, which one process alone writes, keep every line whole.
"""
import errno
import logging
import logging.handlers
import os
import select
import sys
import traceback
import weakref
from pathlib import Path

from lib.errors import ImproperlyConfigured
from lib.logs.formatter import split_line
from lib.process import after_fork, write_whole

# The most bytes one write to a pipe puts in at once, a line's newline included.
PIPE_LINE_BYTES = select.PIPE_BUF


# The errno of a write to stdout whose reader is gone: its terminal hung up (EIO), its pipe's reader closed (EPIPE).
# Nobody reads the report of such a failure, which logging writes to stderr, often that same terminal, line by line.
READER_GONE = frozenset({errno.EIO, errno.EPIPE})


def failure_to_report(quiet_errnos):
    """Tell whether the exception being handled is one to report: not an OSError whose errno is in quiet_errnos."""
    exc = sys.exc_info()[1]
    return not (isinstance(exc, OSError) and exc.errno in quiet_errnos)


class LineWriting:
    """A handler that also takes a finished line, so the access log can skip LogRecord and Logger.handle."""

    quiet_errnos = frozenset()  # the errno of write failures not reported (READER_GONE for stdout)

    def emit(self, record):
        """Write the record's line; a failure is reported the way logging reports it, never raised."""
        try:
            self.write_line(self.format(record))
        except Exception:
            if failure_to_report(self.quiet_errnos):
                self.handleError(record)

    def write_finished_line(self, line):
        """Write a finished line, reporting a failure on stderr instead of raising it."""
        try:
            self.write_line(line)
        except Exception:
            if logging.raiseExceptions and failure_to_report(self.quiet_errnos):
                traceback.print_exc(file=sys.stderr)


class LineStreamHandler(LineWriting, logging.StreamHandler):
    """stdout, one line at a time: straight to its file descriptor when it has one, past Python's buffers, in
    pieces a pipe takes whole."""

    quiet_errnos = READER_GONE

    def __init__(self, stream):
        super().__init__(stream)
        self.fd = file_descriptor(stream)

    def write_line(self, line):
        """Write one line, split when a pipe would not take it in one write, and flush it."""
        with self.lock:
            for piece in split_line(line, PIPE_LINE_BYTES):
                self.write_piece(piece + self.terminator)

    def write_piece(self, text):
        """Write text with one os.write (a pipe takes up to PIPE_BUF bytes whole), or to a stream without one."""
        if self.fd is None:
            self.stream.write(text)
            self.stream.flush()
            return
        write_whole(self.fd, text.encode())


class PipeStreamHandler(logging.StreamHandler):
    """logging's StreamHandler (FAST_PATHS off), with a line too long for one write to a pipe written as several
    lines, each flushed on its own."""

    def emit(self, record):
        """Write the record's line, or its pieces; a failure is reported the way logging reports it."""
        try:
            for piece in split_line(self.format(record), PIPE_LINE_BYTES):
                self.stream.write(piece + self.terminator)
                self.flush()
        except RecursionError:
            raise
        except Exception:
            if failure_to_report(READER_GONE):
                self.handleError(record)


def file_descriptor(stream):
    """Return the file descriptor behind stream, with what it buffered written out, or None (a test's capture)."""
    try:
        fd = stream.fileno()
        stream.flush()
    except (AttributeError, OSError, ValueError):
        return None
    return fd


class ProcessFileHandler(logging.handlers.RotatingFileHandler):
    """An ndjson file that only this process writes and rotates; a forked child switches to a file of its own."""

    def __init__(self, folder, stem, max_bytes, backups):
        self.folder = folder
        self.stem = stem
        super().__init__(self.path_for(os.getpid()), maxBytes=max_bytes, backupCount=backups,
                         encoding='utf-8', delay=True)
        PROCESS_FILES.add(self)

    def path_for(self, pid):
        """Return the path of process pid's file."""
        return os.path.join(self.folder, f'{self.stem}-{pid}.ndjson')

    def follow_fork(self):
        """In a forked child: leave the parent's file to the parent and write a file of this process's own."""
        # Only the forking thread runs in the child, so no lock is needed (or safe: another thread may have held it).
        if self.stream is not None:
            self.stream.close()  # the child's copy of the descriptor only; every line was flushed when written
            self.stream = None
        self.baseFilename = self.path_for(os.getpid())


class CountingFileHandler(LineWriting, ProcessFileHandler):
    """ProcessFileHandler that counts the bytes it wrote instead of asking the file its size before every line,
    which RotatingFileHandler does: no other process writes this file."""

    written = 0

    def write_line(self, line):
        """Write one line, rotating first when it would take the file past maxBytes."""
        data = line + '\n'
        size = len(data) if data.isascii() else len(data.encode())
        with self.lock:
            if self.stream is None:
                self.open_file()
            if 0 < self.maxBytes < self.written + size:
                self.doRollover()  # closes the file; with delay, it leaves the new one to be opened here
                self.open_file()
            self.stream.write(data)
            self.stream.flush()
            self.written += size

    def open_file(self):
        """Open this process's file for appending and note how many bytes it holds."""
        self.stream = open(self.baseFilename, self.mode, encoding=self.encoding, errors=self.errors)
        self.written = self.stream.tell()


PROCESS_FILES = weakref.WeakSet()


@after_fork
def follow_fork_in_process_files():
    """Point every per-process file handler at the new process's own file."""
    for handler in list(PROCESS_FILES):
        handler.follow_fork()


def log_folder(path):
    """Create LOG_PATH when missing and return it."""
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ImproperlyConfigured(f'LOG_PATH cannot be created: {exc.strerror}') from None
    return str(path)


def build_handlers(config, stem, fast):
    """Return the stdout handler and, with LOG_PATH, this process's file handler (named stem-<pid>.ndjson)."""
    handlers = [LineStreamHandler(sys.stdout) if fast else PipeStreamHandler(sys.stdout)]
    if config['LOG_PATH']:
        file_handler = CountingFileHandler if fast else ProcessFileHandler
        handlers.append(file_handler(log_folder(config['LOG_PATH']), stem,
                                     config['LOG_FILE_MAX_BYTES'], config['LOG_FILE_BACKUPS']))
    return handlers
