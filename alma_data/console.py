"""What a build prints, and where the rest of its output goes.

The terminal gets the build's own lines (a stage's summary, an example row) and one progress
bar a stage. The libraries' progress bars are off (transformers, datasets, huggingface_hub,
the Trainer's) and whatever else they write while the build runs (logs, warnings, the
trainer's step lines, a launched training's output, anything a C extension prints) goes to
the build's log file, ``<run>/logs/build-<YYYYmmdd-HHMMSS>.log``, which holds the build's own
lines too. ``--verbose`` (``build(..., verbose=True)``) leaves the libraries as they are: their
bars and logs on the terminal as well, and a copy of what Python code writes in the file.

Quiet, the process's own stdout and stderr (file descriptors 1 and 2) point at the log file
while the build runs, so output that never passes through Python's ``sys.stderr`` (a
library's C code, a child process) lands there as well; the build's lines go to a copy of the
terminal's descriptor (:func:`terminal`). Where stdout and stderr are not the process's
descriptors (a notebook, a test capturing them) the same is done at Python's level.
"""

from __future__ import annotations

import io
import os
import sys
import time
import traceback
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

LIBRARIES_ENV = "ALMA_DATA_LIBRARY_OUTPUT"
"""``quiet`` while a build keeps the libraries' output off the terminal; a launched training's
processes (:mod:`alma_data.launchers`) and the trainers (:mod:`training.common`) read it."""

_QUIET_ENV = {LIBRARIES_ENV: "quiet"}
"""Set for the build's duration: what the trainers and a launched training's processes read."""


class _Tee:
    """A text stream that writes to the terminal's stream and the log file (``--verbose``)."""

    buffer = None
    """None, so that a writer of bytes (alma_data.launchers.stream) writes text, through the tee."""

    def __init__(self, stream: IO[str], log: "BuildOutput"):
        self._stream, self._log = stream, log

    def write(self, text: str) -> int:
        if "\r" not in text:  # the file keeps lines, not a progress bar's redraws
            self._log.to_file(text)
        return self._stream.write(text)

    def flush(self) -> None:
        self._stream.flush()

    def __getattr__(self, name: str):  # isatty, fileno, encoding ... are the terminal's
        return getattr(self._stream, name)


class _ToFile:
    """A text stream that writes to the log file only (quiet, where the descriptors cannot move)."""

    encoding = "utf-8"

    def __init__(self, log: "BuildOutput"):
        self._log = log

    def write(self, text: str) -> int:
        self._log.to_file(text)
        return len(text)

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise io.UnsupportedOperation("the build's log stream has no file descriptor")


class BuildOutput:
    """The terminal's stream and the log file of one build."""

    def __init__(self, path: Path, file: IO[str], terminal: IO[str], verbose: bool = False):
        self.path, self.file, self.terminal, self.verbose = path, file, terminal, verbose
        self._file_ok = True
        self._undo: Callable[[], None] | None = None

    def before_work(self) -> None:
        """Called before a stage runs (not when it is skipped): the libraries' bars off, unless
        verbose. Not at the build's start, so that a build with nothing to do imports none of them."""
        if not self.verbose and self._undo is None:
            self._undo = quiet_libraries()

    def restore_libraries(self) -> None:
        if self._undo is not None:
            self._undo()
            self._undo = None

    def to_file(self, text: str) -> None:
        if not self._file_ok:
            return
        try:
            self.file.write(text)
            self.file.flush()
        except (OSError, ValueError):  # a full disk, or a closed file: the build goes on without its log
            self._file_ok = False

    def line(self, message: str, show: bool = True) -> None:
        """One of the build's own lines: on the terminal (unless ``show`` is false) and in the file."""
        if show:
            print(message, file=self.terminal, flush=True)
        self.to_file(message + "\n")


_current: BuildOutput | None = None


def current() -> BuildOutput | None:
    """The build whose output this process is routing now, if any."""
    return _current


def terminal() -> IO[str]:
    """Where the build's own lines and bars go: the terminal, also while a build sends the
    process's stderr to its log file; ``sys.stderr`` outside a build."""
    return _current.terminal if _current is not None else sys.stderr


def libraries_quiet() -> bool:
    """Whether the libraries' bars and logs are to stay off the terminal (a build not --verbose)."""
    return os.environ.get(LIBRARIES_ENV) == "quiet"


def columns() -> int:
    """The width of the terminal the build's lines go to: ``COLUMNS`` where set, else the
    terminal's own (read from the stream that still points at it), else 120."""
    env = os.environ.get("COLUMNS", "")
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return os.get_terminal_size(terminal().fileno()).columns
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return 120


def log_path(local_root: Path) -> Path:
    """This build's log file in the run: ``logs/build-<YYYYmmdd-HHMMSS>.log``."""
    return Path(local_root) / "logs" / f"build-{time.strftime('%Y%m%d-%H%M%S')}.log"


def quiet_libraries() -> Callable[[], None]:
    """Turn the libraries' progress bars off with their own switches (transformers' and
    datasets' ``disable_progress_bar(s)``, huggingface_hub's ``disable_progress_bars``); returns
    what turns them back to how they were. By function rather than environment variable: one
    set before a library is imported pins it, and ``enable_progress_bars`` then refuses."""
    import datasets
    import huggingface_hub.utils as hub
    from transformers.utils import logging as tf_logging  # it reads hub's switch once, on import

    undo: list[Callable[[], None]] = []
    for disabled, disable, enable in ((hub.are_progress_bars_disabled, hub.disable_progress_bars,
                                       hub.enable_progress_bars),
                                      (datasets.are_progress_bars_disabled, datasets.disable_progress_bars,
                                       datasets.enable_progress_bars),
                                      (lambda: not tf_logging.is_progress_bar_enabled(), tf_logging.disable_progress_bar,
                                       tf_logging.enable_progress_bar)):
        if not disabled():
            disable()
            undo.append(enable)

    def restore() -> None:
        for enable in reversed(undo):
            enable()

    return restore


def _descriptors_are_ours() -> bool:
    """Whether sys.stdout and sys.stderr write to this process's descriptors 1 and 2."""
    try:
        return sys.stdout.fileno() == 1 and sys.stderr.fileno() == 2
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is an OSError
        return False


@contextmanager
def build_output(path: Path, verbose: bool = False) -> Iterator[BuildOutput]:
    """Route the process's output for one build (see the module's docstring)."""
    global _current
    path.parent.mkdir(parents=True, exist_ok=True)
    file = open(path, "a", buffering=1, encoding="utf-8", errors="replace")
    saved_streams = (sys.stdout, sys.stderr)
    saved_env = {k: os.environ.get(k) for k in _QUIET_ENV}
    saved_fds: tuple[int, int] | None = None
    out = BuildOutput(path, file, sys.stderr, verbose)
    try:
        if verbose:
            sys.stdout, sys.stderr = _Tee(sys.stdout, out), _Tee(sys.stderr, out)
        else:
            os.environ.update(_QUIET_ENV)
            if _descriptors_are_ours():
                sys.stdout.flush()
                sys.stderr.flush()
                saved_fds = (os.dup(1), os.dup(2))
                out.terminal = os.fdopen(os.dup(saved_fds[1]), "w", buffering=1, encoding=sys.stderr.encoding,
                                         errors="replace")
                os.dup2(file.fileno(), 1)
                os.dup2(file.fileno(), 2)
            else:
                sys.stdout = sys.stderr = _ToFile(out)
        _current = out
        yield out
    except BaseException as exc:
        if not isinstance(exc, (KeyboardInterrupt, SystemExit)):
            out.to_file("".join(traceback.format_exception(exc)))
        raise
    finally:
        _current = None
        out.restore_libraries()
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        sys.stdout, sys.stderr = saved_streams
        if saved_fds is not None:
            os.dup2(saved_fds[0], 1)
            os.dup2(saved_fds[1], 2)
            os.close(saved_fds[0])
            os.close(saved_fds[1])
            out.terminal.close()
        file.close()
