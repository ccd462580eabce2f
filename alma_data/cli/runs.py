"""``alma-data runs``."""

from __future__ import annotations

import argparse

from alma_data.cli.common import runs_dir_of, split_assignments
from alma_data.store import Store, list_runs


def add(sub) -> None:
    sp = sub.add_parser('runs', help='list runs', formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  " + 'alma-data runs runs_dir=data/runs')
    sp.add_argument("assignments", nargs="*", metavar='runs_dir=DIR')
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    special, _, _ = split_assignments(args.assignments, {"runs_dir"})
    runs_dir = runs_dir_of(special, must_exist=False)
    runs = list_runs(runs_dir)
    if not runs:
        print(f"no runs in {runs_dir}; start one with: alma-data build round=1")
    for run in runs:
        info = Store(runs_dir, run).read_run()
        print(f"{run}  recipe {info['recipe'].get('name')}  fingerprint {info['fingerprint']}  model {info['recipe'].get('model')}")
    return 0
