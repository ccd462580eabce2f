"""``alma-data tables``."""

from __future__ import annotations

import argparse

from alma_data.cli.common import split_assignments, store_from


def add(sub) -> None:
    sp = sub.add_parser('tables', help='list the tables of a run with their columns and rows', formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  " + 'alma-data tables run=default runs_dir=data/runs')
    sp.add_argument("assignments", nargs="*", metavar='run=NAME')
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    special, _, _ = split_assignments(args.assignments, {"run", "runs_dir"})
    store = store_from(special)
    for table, rounds in store.done_tables().items():
        m = store.manifest(rounds[-1], table)
        rows = sum(store.manifest(r, table)["rows"] for r in rounds)
        cols = ", ".join(f"{k} {v}" for k, v in m["columns"].items())
        print(f"{table}  rounds {rounds}  {rows:,} rows\n    {cols}")
    return 0
