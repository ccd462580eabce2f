"""``alma-data lab``."""

from __future__ import annotations

import argparse

import alma_data.lab  # noqa: F401  (registers the lab's embedded model lab-tiny, for `build recipe=lab` too)
from alma_data.cli.common import split_assignments
from alma_data.store.files import DEFAULT_RUNS_DIR


def add(sub) -> None:
    lb = sub.add_parser("lab", help="the paper's comparisons on recipe=lab, scored by an exact oracle, over seeds",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="keys: size=full|smoke, seeds=0,1,2, runs_dir=DIR (default data/runs/lab)\n"
                               "Writes lab.json, lab.md (the table) and lab.html (with its figures, lab_*.png) "
                               "into runs_dir.")
    lb.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    lb.add_argument("--quiet", action="store_true", help="no progress bars or stage summaries")
    lb.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alma_data.lab.runner import cmd_lab as command

    return command(args, split_assignments, DEFAULT_RUNS_DIR)
