"""``alma-data judge``."""

from __future__ import annotations

import argparse

from alma_data.cli.common import split_assignments
from alma_data.store.files import DEFAULT_RUNS_DIR


def add(sub) -> None:
    jd = sub.add_parser("judge", help="score a file or Hub dataset with any judge; pairwise accuracy on preference pairs",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="rows: {prompt, response}, {messages: [{role, content}, ...]}, {prompt, chosen, rejected}\n"
                               "      (text or messages), {input, output_1, output_2, label}\n"
                               "keys: judge=REF (required: run:NAME/round=R/judge, base, a model folder or Hub id),\n"
                               "      shots=K (few-shot examples from the run's seed annotations; base: 3), run=NAME,\n"
                               "      runs_dir=DIR, recipe=NAME (no run), split=test, subset=CONFIG (a Hub dataset's), limit=N,\n"
                               "      long=skip|score (over judge.max_length: leave out, or score in full), seed=0,\n"
                               "      and recipe keys: engine=vllm, judge.max_length=1024, judge.batch_size_score=4\n\n"
                               "examples:\n"
                               "  alma-data judge pairs.jsonl judge=run:default/round=2/judge --out scores.parquet\n"
                               "  alma-data judge pairs.jsonl judge=base shots=3 run=default\n"
                               "  alma-data judge org/preference-test split=test judge=run:default/round=1/judge")
    jd.add_argument("assignments", nargs="*", metavar="FILE KEY=VALUE")
    jd.add_argument("--out", help="write every score to this Parquet file")
    jd.add_argument("--format", choices=["text", "json"], default="text", help="how the summary is printed")
    jd.add_argument("--quiet", action="store_true", help="no progress bar")
    jd.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alma_data.judge_cli import cmd_judge as command

    return command(args, split_assignments, DEFAULT_RUNS_DIR)
