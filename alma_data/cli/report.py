"""``alma-data report``."""

from __future__ import annotations

import argparse
import sys

from alma_data.cli.common import split_assignments, store_from


def add(sub) -> None:
    sp = sub.add_parser('report', help='per-round statistics and plots (Markdown + HTML) in the run folder', formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="example:\n  " + 'alma-data report run=default   # then open data/runs/default/report/report.html')
    sp.add_argument("assignments", nargs="*", metavar='run=NAME')
    sp.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alma_data.report import build_report

    special, _, _ = split_assignments(args.assignments, {"run", "runs_dir"})
    store = store_from(special)
    out = build_report(store)
    pngs = sorted(p.name for p in out.glob("*.png"))
    print(f"wrote {out}/report.md and report.html with {len(pngs)} plots: {', '.join(pngs)}", file=sys.stderr)
    if store.remote:
        print(f"copied into {store.where()}/report", file=sys.stderr)
    return 0
