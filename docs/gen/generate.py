"""Pages of the site generated from the code at build time (mkdocs-gen-files), so they cannot
drift: every recipe key from the recipe dataclasses and their field docs (alma_data/recipe.py),
every table and its columns from the schemas the stages write with, every command's --help.

Also runnable by hand: ``python docs/gen/generate.py OUT_DIR`` writes the same pages there.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib
import inspect
import subprocess
import sys
import typing
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

# (table, module, attribute, round(s), what it holds). tests/test_docs.py checks that every table a
# tiny build and `alma-data eval` write is here, with these columns.
TABLES = [
    ("prompts", "alma_data.schemas", "PROMPTS", "1", "Seed prompts (split train or eval: held out to track progress)."),
    ("prompts", "alma_data.stages.prompts", "SYNTHETIC_PROMPTS", ">= 2",
     "The K prompts selected from the clusters (one never-used prompt a cluster), with their few-shot examples."),
    ("sft", "alma_data.schemas", "SFT", "1", "The seed SFT pairs (score is null)."),
    ("sft", "alma_data.stages.select", "SFT_BEST", ">= 2", "Best-of-n: each prompt's top-scored response (D_r)."),
    ("judge_seed", "alma_data.schemas", "JUDGE_SEED", "1", "The seed judge annotations, 0..10, with the held-out flag."),
    ("prompt_candidates", "alma_data.stages.prompts", "CANDIDATES", ">= 2",
     "Prompts the base model wrote from few-shot seed prompts, parsed or rejected."),
    ("prompt_clusters", "alma_data.stages.prompts", "CLUSTERED", ">= 2",
     "Unique candidates after exact and near dedup, with their k-means cluster."),
    ("responses", "alma_data.schemas", "RESPONSES", ">= 2", "N samples a prompt from the checkpoint mix."),
    ("judgments", "alma_data.schemas", "JUDGMENTS", ">= 2",
     "The judge's real-valued score (expectation over 0..10), its argmax and the 11 probabilities."),
    ("dpo", "alma_data.stages.select", "DPO", ">= 2", "Preference pairs (best vs a random other response by default)."),
    ("judge_distill", "alma_data.stages.select", "DISTILL", ">= 2",
     "Judged responses sampled for the judge's self-distillation."),
    ("eval_answers", "alma_data.stages.evaluate", "ANSWERS", "all", "Held-out seed prompts answered greedily by the round's model."),
    ("eval", "alma_data.stages.evaluate", "EVAL", "all", "Those answers scored by the round-1 judge (held-out progress)."),
    ("judge_eval", "alma_data.schemas", "JUDGE_EVAL", "1, 2", "The round's judge on the held-out annotations."),
    ("judge_eval_base", "alma_data.schemas", "JUDGE_EVAL", "1", "The base model as the few-shot judge on them."),
    ("judge_quality", "alma_data.schemas", "JUDGE_QUALITY", "1, 2",
     "The judge ladder: one row per (set, rung, metric) with its 95% bootstrap interval."),
    ("judge_sets", "alma_data.schemas", "JUDGE_SETS", "1, 2", "Scores of each judge.eval_sets pair, per rung."),
    ("prompt_set_answers", "alma_data.stages.prompt_sets", "ANSWERS", "all", "eval.prompt_sets answered by the round's models."),
    ("prompt_set_eval", "alma_data.stages.prompt_sets", "EVAL", "all", "Those answers scored by the round-1 judge."),
    ("prompt_set_summary", "alma_data.user_eval", "USER_EVAL_SUMMARY", "all",
     "Per set: mean scores with intervals, per category, win rates raw and at equal length."),
    ("user_eval", "alma_data.user_eval", "USER_EVAL", "last", "`alma-data eval`: answers and scores."),
    ("user_eval_summary", "alma_data.user_eval", "USER_EVAL_SUMMARY", "last", "`alma-data eval`: its figures."),
]

COMMANDS = ["build", "status", "query", "tables", "runs", "verify", "report", "publish", "judge", "eval", "lab",
            "recipes"]


def table_schema(module: str, attr: str):
    return getattr(importlib.import_module(module), attr)


def _field_docs(cls: type) -> dict[str, str]:
    """The string literal after each field of a dataclass (the attribute docstrings)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:] + [None]):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            if isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _type_name(hint) -> str:
    text = str(hint).replace("typing.", "")
    return text if not isinstance(hint, type) else hint.__name__


def recipe_rows(cls=None, prefix: str = ""):
    from alma_data.config import Recipe

    cls = cls or Recipe
    hints = typing.get_type_hints(cls)
    docs = _field_docs(cls)
    default = cls()
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        if dataclasses.is_dataclass(hint):
            yield from recipe_rows(hint, f"{prefix}{f.name}.")
            continue
        yield prefix + f.name, _type_name(hint), repr(getattr(default, f.name)), docs.get(f.name, "")


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def recipe_keys_page() -> str:
    from alma_data.config import EXECUTION_KEYS, Recipe, available_recipes, load_recipe

    bundled = {name: load_recipe(name) for name in available_recipes()}
    lines = ["# Recipe keys", "",
             "Every key of a recipe, generated from the recipe dataclasses in `alma_data/recipe.py` and their "
             "field docs. Set any of them in a recipe's YAML or on the command line as `key=value` (dotted, "
             "values are YAML and type-checked). Defaults are the dataclasses'; a bundled recipe sets its own "
             "(`pipelines/*.yaml`, the columns on the right). Keys marked *execution* change where or how fast "
             "a build runs, or what it measures, not its data: they are outside the recipe's fingerprint, so "
             "changing them on a built run needs no `--force`.", ""]
    section = None
    for key, type_, default, doc in recipe_rows():
        head = key.split(".")[0] if "." in key else ""
        if head != section:
            section = head
            title = f"`{head}`" if head else "Top level"
            lines += ["", f"## {title}", ""]
            if head:
                cls = typing.get_type_hints(Recipe)[head]
                if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "("):
                    lines += [inspect.cleandoc(cls.__doc__), ""]
            lines += ["| key | type | dataclass default | " + " | ".join(bundled) + " | what it does |",
                      "|---|---|---|" + "---|" * len(bundled) + "---|"]
        execution = any(key == k or key.startswith(k + ".") for k in EXECUTION_KEYS)

        def value(recipe):
            node = recipe
            for part in key.split("."):
                node = getattr(node, part)
            return repr(node)

        per = " | ".join("" if value(r) == default else f"`{_cell(value(r))}`" for r in bundled.values())
        lines.append(f"| `{key}` | `{_cell(type_)}` | `{_cell(default)}` | {per} | "
                     f"{'*execution.* ' if execution else ''}{_cell(doc) or '(no field doc)'} |")
    lines += ["", "A blank cell under a recipe: it keeps the default.", ""]
    return "\n".join(lines)


def tables_page() -> str:
    lines = ["# Tables and columns", "",
             "Every table a build (and `alma-data eval`) writes, with its columns, generated from the Arrow "
             "schemas the stages write with. `alma-data query` opens one view per table over all rounds, with a "
             "`round` column from the path; `alma-data tables` lists what a run holds.", "",
             "| table | rounds | what it holds |", "|---|---|---|"]
    for table, module, attr, rounds, what in TABLES:
        lines.append(f"| [`{table}`](#{table}) | {rounds} | {_cell(what)} |")
    seen = set()
    for table, module, attr, rounds, what in TABLES:
        if table not in seen:
            lines += ["", f"## {table}", ""]
            seen.add(table)
        schema = table_schema(module, attr)
        lines += [f"Round {rounds}: {what} (`{module}.{attr}`)", "", "| column | type |", "|---|---|"]
        lines += [f"| `{f.name}` | `{f.type}` |" for f in schema]
        lines.append("")
    return "\n".join(lines)


def commands_page() -> str:
    lines = ["# Commands", "", "Each command's `--help`, generated by running it.", ""]
    for cmd in [None] + COMMANDS:
        args = [sys.executable, "-m", "alma_data"] + ([cmd] if cmd else []) + ["--help"]
        out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, timeout=120,
                             env={**__import__("os").environ, "PYTHONPATH": str(ROOT), "COLUMNS": "100"})
        if out.returncode != 0:
            raise RuntimeError(f"{' '.join(args[2:])} failed: {out.stderr[-2000:]}")
        lines += [f"## alma-data {cmd or ''}".rstrip(), "", "```text", out.stdout.rstrip(), "```", ""]
    return "\n".join(lines)


API_MODULES = [
    ("Recipe", ["alma_data.recipe", "alma_data.config"]),
    ("Store", ["alma_data.store.layout", "alma_data.store.run", "alma_data.store.files", "alma_data.store.shards", "alma_data.store.integrity"]),
    ("Stages and the plan", ["alma_data.stage", "alma_data.plan", "alma_data.runner", "alma_data.round"]),
    ("Engines", ["alma_data.engines.base", "alma_data.engines.transformers_engine", "alma_data.engines.vllm_engine",
                 "alma_data.engines.openai_engine"]),
    ("Executors", ["alma_data.executors.base", "alma_data.executors.local", "alma_data.executors.ray_workers"]),
    ("Models and scoring", ["alma_data.models", "alma_data.scoring", "alma_data.judges", "alma_data.intervals"]),
    ("Outputs", ["alma_data.report", "alma_data.publish", "alma_data.query"]),
    ("The lab", ["alma_data.lab.domain", "alma_data.lab.oracle", "alma_data.lab.measure"]),
]


def api_page() -> str:
    lines = ["# API reference", "", "Generated from the docstrings. The command line is the supported interface; "
             "these are the modules it is built from.", ""]
    for title, modules in API_MODULES:
        lines += [f"## {title}", ""]
        for module in modules:
            if importlib.util.find_spec(module) is None:
                continue  # a module moved: the page lists what exists
            lines += [f"::: {module}", "    options:", "      heading_level: 3", ""]
    return "\n".join(lines)


PAGES = {"reference/recipe-keys.md": recipe_keys_page, "reference/tables.md": tables_page,
         "reference/commands.md": commands_page, "reference/api.md": api_page}


def main() -> None:
    if __name__ == "__main__" and len(sys.argv) > 1:
        out = Path(sys.argv[1])
        for path, make in PAGES.items():
            (out / path).parent.mkdir(parents=True, exist_ok=True)
            (out / path).write_text(make())
        return
    import mkdocs_gen_files

    for path, make in PAGES.items():
        with mkdocs_gen_files.open(path, "w") as f:
            f.write(make())


import importlib.util  # noqa: E402

if __name__ in ("__main__", "<run_path>"):  # by hand, or mkdocs-gen-files (runpy.run_path); not on import
    main()
