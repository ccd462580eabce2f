"""``alma-data build``."""

from __future__ import annotations

import argparse

from alma_data.cli.common import EPILOG, runs_dir_of, split_assignments
from alma_data.config import RecipeError, apply_override, load_recipe, recipe_from_dict
from alma_data.store import Store


def add(sub) -> None:
    b = sub.add_parser("build", help="build rounds 1..R of a run (resumes what is missing)",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       epilog="KEY=VALUE sets any recipe key with a dotted path, e.g. responses.n=16.\n"
                              "Special keys: round=R, recipe=NAME|FILE.yaml, run=NAME, runs_dir=DIR.\n\n" + EPILOG)
    b.add_argument("assignments", nargs="*", metavar="KEY=VALUE")
    b.add_argument("--force", action="store_true", help="accept a changed recipe and rebuild what it touches")
    b.add_argument("--quiet", action="store_true", help="no progress bars or summaries")
    b.add_argument("--verbose", action="store_true",
                   help="the libraries' own progress bars and logs on the terminal too (they always go to the "
                        "run's log file, logs/build-<time>.log)")
    b.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    special, overrides, rest = split_assignments(args.assignments, {"round", "recipe", "run", "runs_dir"})
    if rest:
        raise RecipeError(f"unexpected argument(s) {rest}; build takes KEY=VALUE pairs, e.g. round=1 responses.n=16")
    if "round" not in special:
        raise RecipeError("say which round to build up to: alma-data build round=1")
    try:
        target = int(special["round"])
    except ValueError:
        raise RecipeError(f"round must be an integer, got {special['round']!r}") from None
    runs_dir = runs_dir_of(special, must_exist=False)
    existing = Store(runs_dir, special["run"]) if "run" in special else None
    if existing is not None and existing.exists() and "recipe" not in special:
        # Continuing a run: its own recipe, with any overrides on top.
        recipe = recipe_from_dict(existing.read_run()["recipe"])
        for key, value in overrides.items():
            apply_override(recipe, key, value)
    else:
        recipe = load_recipe(special.get("recipe", "default"), overrides)
    store = Store(runs_dir, special.get("run", recipe.name))
    from alma_data.round import build

    build(recipe, store, target, force=args.force, quiet=args.quiet, verbose=args.verbose)
    return 0
