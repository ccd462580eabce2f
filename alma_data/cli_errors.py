"""How the ``alma-data`` command ends when it does not end well: one line that says what to
do and an exit status, for a stop (Ctrl-C, SIGTERM), a full disk, a missing package, or any
:class:`~alma_data.errors.AlmaError`; an error nobody foresaw keeps its traceback."""

from __future__ import annotations

import argparse
import errno
import os
import shlex
import signal
import sys

from alma_data.errors import AlmaError, Stopped
from alma_data.store.files import DEFAULT_RUNS_DIR


def on_sigterm(signum, frame) -> None:
    signal.signal(signum, signal.SIG_IGN)  # one stop is enough; the cleanup that follows runs undisturbed
    raise Stopped(signum)


def stopped_line(args: argparse.Namespace, argv: list[str], exc: KeyboardInterrupt) -> tuple[str, int]:
    term = isinstance(exc, Stopped)
    how = "by SIGTERM" if term else "by Ctrl-C"
    code = 128 + (signal.SIGTERM if term else signal.SIGINT)
    if args.command == "build":
        again = " ".join(shlex.quote(a) for a in ["alma-data", *argv])
        return (f"alma-data: build stopped {how}; every finished shard and checkpoint stays: run the same command "
                f"again to resume ({again})", code)
    return f"alma-data: {args.command} stopped {how}", code


def no_space(exc: BaseException) -> OSError | Exception | None:
    """The full-disk error behind ``exc`` (an OSError with errno ENOSPC, or a library's own
    error that says so, such as safetensors'), if there is one."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if (isinstance(exc, OSError) and exc.errno == errno.ENOSPC) or "No space left on device" in str(exc):
            return exc
        exc = exc.__cause__ or exc.__context__
    return None


OPTIONAL_MODULES = {"ray": "ray", "openai": "openai", "datatrove": "datatrove", "vllm": "gpu"}
"""Top-level modules of the optional paths, and the extra that installs each."""


def missing_module_line(name: str) -> str:
    top = name.split(".", 1)[0]
    if top in OPTIONAL_MODULES:
        return (f"alma-data: error: this needs the package {top!r}, which is not installed; install the extra: "
                f"pip install 'alma-data[{OPTIONAL_MODULES[top]}]' (from a clone: pip install '.[{OPTIONAL_MODULES[top]}]')")
    return (f"alma-data: error: the module {name!r} is missing from this Python environment, though alma-data "
            "depends on it; reinstall it with its dependencies: pip install \"torch==2.13.0\" . (from the clone), "
            "and run alma-data from that environment")


def error_line(exc: Exception, args: argparse.Namespace) -> tuple[str, int] | None:
    """What to print for an error (one line that says what to do) and the exit status; None
    for an error nobody foresaw, which keeps its traceback."""
    if isinstance(exc, AlmaError):  # every error a user can fix derives from it (alma_data/errors.py)
        return f"alma-data: error: {exc}", 2
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return missing_module_line(exc.name), 2
    runs_dir = next((a.split("=", 1)[1] for a in getattr(args, "assignments", []) if a.startswith("runs_dir=")),
                    DEFAULT_RUNS_DIR)
    full = no_space(exc)
    if full is not None:
        out = getattr(args, "out", None) if args.command == "query" else None
        where = getattr(full, "filename", None) or out or runs_dir.split("?", 1)[0]
        resume = (" then run the same command again: the build goes on from what is written"
                  if args.command == "build" else " then run the command again")
        return (f"alma-data: error: no space left on the device that holds {where}; free space there (df -h shows "
                "how much is left): delete runs you no longer need, old checkpoints' staging folders, or caches "
                f"(~/.cache/alma-data, ~/.cache/huggingface),{resume}", 74)
    import duckdb

    if isinstance(exc, duckdb.Error):
        return f"alma-data: SQL error: {exc}\n(see the tables with: alma-data tables)", 2
    if isinstance(exc, OSError) and "://" in runs_dir:
        return (f"alma-data: error: the runs folder {runs_dir.split('?', 1)[0]} could not be read or written: {exc}\n"
                "Check the address (endpoint_override=... in the URI's query for a server of your own), the "
                "network, and the credentials in this machine's environment (e.g. AWS_ACCESS_KEY_ID, "
                "AWS_SECRET_ACCESS_KEY). What was written before stays: the same command resumes from it.", 2)
    return None


def quiet_stdout() -> None:
    """After the reader of our output went away (``alma-data runs | head -3``): send what is
    still buffered nowhere, so that exiting does not complain about the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)
