"""The ``alma-data`` command: one module a command in this package, each declaring its own
arguments (``add(sub)``) and its handler (``run(args)``); this module assembles the parser from
them, in the order ``--help`` lists them, and ends every failure in one line
(:mod:`alma_data.cli_errors`). A new command is one new module and one line in ``COMMANDS``.

    alma-data build round=1 [recipe=default] [run=NAME] [runs_dir=DIR] [KEY=VALUE ...] [--force]
    alma-data query [run=NAME] [runs_dir=DIR] "SQL" | FILE.sql [--format table|csv|json|parquet] [--out FILE]
    alma-data tables [run=NAME] [runs_dir=DIR]
    alma-data runs [runs_dir=DIR]
    alma-data recipes
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading

from alma_data.cli import build, judge, lab, publish, query, recipes, report, runs, status, tables, verify
from alma_data.cli import eval as eval_
from alma_data.cli.common import EPILOG
from alma_data.cli_errors import error_line, on_sigterm, quiet_stdout, stopped_line

COMMANDS = (build, query, tables, runs, status, report, verify, publish, judge, eval_, lab, recipes)
"""The commands, in the order ``alma-data --help`` lists them."""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="alma-data", description="Synthetic alignment data after ALMA.",
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = p.add_subparsers(dest="command", required=True)
    for command in COMMANDS:
        command.add(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    # OpenMP threads that spin while waiting collapse throughput (10x seen here) as soon as
    # another process shares the cores; passive waiting costs little when the machine is idle.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    # Options may come after the SQL or the KEY=VALUE pairs: gather what follows them.
    args, extra = p.parse_known_args(argv)
    unknown = [e for e in extra if e.startswith("-")]
    if unknown or (extra and not hasattr(args, "assignments")):
        p.error(f"unrecognized arguments: {' '.join(unknown or extra)}")
    if extra:
        args.assignments = list(args.assignments) + extra
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, on_sigterm)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a reader that went away shows here, where it is caught
        return code
    except BrokenPipeError:
        quiet_stdout()
        return 128 + signal.SIGPIPE
    except KeyboardInterrupt as exc:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        line, code = stopped_line(args, argv, exc)
        print(line, file=sys.stderr)
        return code
    except Exception as exc:
        import duckdb

        if isinstance(exc, duckdb.InterruptException):  # Ctrl-C while DuckDB ran a query
            line, code = stopped_line(args, argv, KeyboardInterrupt())
            print(line, file=sys.stderr)
            return code
        described = error_line(exc, args)
        if described is None:
            raise
        print(described[0], file=sys.stderr)
        return described[1]

