"""``alma-data eval``."""

from __future__ import annotations

import argparse

from alma_data.cli.common import split_assignments
from alma_data.store.files import DEFAULT_RUNS_DIR


def add(sub) -> None:
    ev = sub.add_parser("eval", help="answer a prompt file with checkpoints of a run and compare them with one judge",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="rows: {prompt}, {question_id, category, turns: [...]} (first turn), {instruction, input?}\n"
                               "keys: run=NAME, runs_dir=DIR, models=base,m1a,last, judge=run:round=1/judge (default),\n"
                               "      shots=K, name=SET (default: the file's name), split=test, subset=CONFIG, limit=N,\n"
                               "      max_new_tokens=N (default eval.max_new_tokens), and recipe keys\n"
                               "Writes the tables user_eval and user_eval_summary into the run's last round.\n\n"
                               "example:\n  alma-data eval questions.jsonl run=default models=base,m1a,last")
    ev.add_argument("assignments", nargs="*", metavar="FILE KEY=VALUE")
    ev.add_argument("--quiet", action="store_true", help="no progress bars")
    ev.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alma_data.user_eval import cmd_eval as command

    return command(args, split_assignments, DEFAULT_RUNS_DIR)
