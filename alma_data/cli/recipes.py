"""``alma-data recipes``."""

from __future__ import annotations

import argparse

from alma_data.config import available_recipes, load_recipe


def add(sub) -> None:
    rc = sub.add_parser("recipes", help="list bundled recipes")
    rc.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    for name in available_recipes():
        r = load_recipe(name)
        print(f"{name}: model {r.model}, K={r.prompts.k}, N={r.responses.n}, rounds={r.rounds}")
    return 0
