"""``alma-data verify``."""

from __future__ import annotations

import argparse
import os

from alma_data.cli.common import split_assignments, store_from
from alma_data.config import RecipeError


def add(sub) -> None:
    v = sub.add_parser("verify", help="check every shard and checkpoint file of a run against its manifest (sha256)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="Exits 1 naming each damaged file (missing, cut short, changed bytes, unreadable "
                              "manifest);\na build of the run repairs them. threads=N hashes N files at once "
                              "(default: one a core, up to 8;\n8 for a bucket).\n\nexample:\n  alma-data verify run=default runs_dir=data/runs")
    v.add_argument("assignments", nargs="*", metavar="run=NAME")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    v.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alma_data.store.integrity import record_verify, repair_command, verify_run

    special, unknown, rest = split_assignments(args.assignments, {"run", "runs_dir", "threads"})
    if unknown or rest:
        raise RecipeError(f"verify does not take {sorted(unknown) or rest}; it takes run=NAME, runs_dir=DIR, threads=N")
    store = store_from(special)
    # Hashing is CPU-bound on a local disk (a thread a core), latency-bound on an object
    # store (several reads in flight).
    default = 8 if store.remote else min(8, os.cpu_count() or 1)
    try:
        threads = int(special.get("threads", default))
    except ValueError:
        raise RecipeError(f"threads must be a whole number, got {special['threads']!r}") from None
    report = verify_run(store, threads=threads, progress=not args.quiet)
    record_verify(store, report.damage)  # so the build it names redoes exactly what it found
    for d in report.damage:
        print(f"damaged: {d}")
    print(report.summary())
    if report.damage:
        print(f"repair: {repair_command(store)}   (writes again what is damaged and what was built from it)")
        return 1
    return 0
