"""``alma-data publish``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from alma_data.cli.common import parse_bool, split_assignments, store_from
from alma_data.config import RecipeError


def add(sub) -> None:
    pb = sub.add_parser("publish", help="publish a run to the Hugging Face Hub as one dataset (or a folder)",
                        formatter_class=argparse.RawDescriptionHelpFormatter,
                        epilog="keys: repo=ORG/NAME (required), run=NAME, rounds=1,2, splits=sft,dpo,judge_distill,\n"
                               "      raw=true (add prompts/responses/judgments), private=true, revision=BRANCH,\n"
                               "      license=apache-2.0, to=DIR (write the folder only)\n"
                               "The token comes from HF_TOKEN or `hf auth login`.\n\nexamples:\n"
                               "  alma-data publish run=default repo=me/alma-smollm2 --dry-run\n"
                               "  alma-data publish run=default repo=me/alma-smollm2 splits=sft,dpo private=true")
    pb.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    pb.add_argument("--dry-run", action="store_true", help="write the folder that would be uploaded, upload nothing")
    pb.add_argument("--overwrite", action="store_true", help="replace a to= folder that already holds files")
    pb.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from alma_data.publish import PublishError, export, push

    keys = {"run", "runs_dir", "repo", "rounds", "splits", "raw", "private", "revision", "to", "license"}
    special, unknown, rest = split_assignments(args.assignments, keys)
    if unknown or rest:
        raise RecipeError(f"publish does not take {sorted(unknown) or rest}; it takes {', '.join(sorted(keys))}")
    if "repo" not in special or "/" not in special["repo"]:
        raise RecipeError("say where to publish: repo=ORG/NAME (a Hub dataset repository)")
    store = store_from(special)
    rounds = [int(r) for r in special["rounds"].split(",")] if "rounds" in special else None
    splits = special["splits"].split(",") if "splits" in special else None
    folder = Path(special["to"]) if "to" in special else store.local_root / "export" / special["repo"].replace("/", "__")
    try:
        counts = export(store, folder, special["repo"], rounds=rounds, splits=splits,
                        raw=parse_bool(special.get("raw", "false"), "raw"), license=special.get("license", "apache-2.0"),
                        overwrite=args.overwrite)
        total = sum(sum(c.values()) for c in counts.values())
        print(f"wrote {folder}: {len(counts)} configs ({', '.join(counts)}), {total:,} rows", file=sys.stderr)
        if args.dry_run or "to" in special:
            print(f"dry run: nothing uploaded. Load it with datasets.load_dataset({str(folder)!r}, CONFIG)", file=sys.stderr)
            return 0
        url = push(store, folder, special["repo"], private=parse_bool(special.get("private", "false"), "private"),
                   revision=special.get("revision"))
    except PublishError as exc:
        print(f"alma-data: error: {exc}", file=sys.stderr)
        return 2
    print(f"published {special['repo']}: {url}", file=sys.stderr)
    return 0
