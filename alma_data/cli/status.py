"""``alma-data status``."""

from __future__ import annotations

import argparse

from alma_data.cli.common import split_assignments, store_from
from alma_data.config import RecipeError


def add(sub) -> None:
    sp = sub.add_parser('status', help="each round's tables and checkpoints: done, partial or missing", formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  " + 'alma-data status run=default')
    sp.add_argument("assignments", nargs="*", metavar='run=NAME')
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alma_data.status import format_status

    special, unknown, rest = split_assignments(args.assignments, {"run", "runs_dir"})
    if unknown or rest:
        raise RecipeError(f"status does not take {sorted(unknown) or rest}: it shows the run under the recipe it was "
                          "built with; it takes run=NAME and runs_dir=DIR")
    text, damaged = format_status(store_from(special))
    print(text)
    return 1 if damaged else 0
