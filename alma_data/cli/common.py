"""What the commands share: ``KEY=VALUE`` arguments split from the rest, the runs folder and
the run they name, checked."""

from __future__ import annotations

import os
from pathlib import Path

from alma_data.config import RecipeError
from alma_data.store import Store, StoreError, list_runs
from alma_data.store.files import DEFAULT_RUNS_DIR

EPILOG = """examples:
  alma-data build round=1                                  # round 1 on the embedded default model
  alma-data build round=1 recipe=paper model=gemma3-270m   # the paper's settings, another base model
  alma-data build round=1 run=try2 train.max_steps=4 seeds.max_sft=32
  alma-data query "select round, count(*) from sft group by all"
  alma-data query run=default --format csv --out scores.csv "select * from judge_eval"
  alma-data tables run=default                             # tables, columns, rows
  alma-data status run=default                             # done / partial / missing, and how to resume
  alma-data verify run=default                             # sha256 of every shard and checkpoint file
  alma-data report run=default                             # plots and report.html in the run folder
  alma-data publish run=default repo=me/alma --dry-run     # the folder the Hub would get
  alma-data runs                                           # runs in data/runs
  alma-data judge pairs.jsonl judge=run:default/round=1/judge  # a judge's accuracy on preference pairs
  alma-data eval questions.jsonl run=default               # base, m1a, last model answer; one judge compares
"""


def split_assignments(items: list[str], allowed_special: set[str]) -> tuple[dict[str, str], dict[str, str], list[str]]:
    special, overrides, rest = {}, {}, []
    given: dict[str, str] = {}
    for item in items:
        if "=" in item and not item.lstrip().lower().startswith(("select", "with", "from")) and " " not in item.split("=", 1)[0]:
            key, value = item.split("=", 1)
            if key in given:
                raise RecipeError(f"{key} is given twice ({given[key]} and {item}); keep one")
            given[key] = item
            (special if key in allowed_special else overrides)[key] = value
        else:
            rest.append(item)
    return special, overrides, rest


def default_run(runs_dir: str, given: str | None) -> str:
    if given:
        return given
    runs = list_runs(runs_dir)
    if len(runs) == 1:
        return runs[0]
    if "default" in runs or not runs:
        return "default"
    raise StoreError(f"{runs_dir} holds several runs ({', '.join(runs)}); choose one with run=NAME")


def runs_dir_of(special: dict[str, str], *, must_exist: bool) -> str:
    """The runs folder named by ``runs_dir=``, checked: a folder (or, for a build, a place one
    can be made), never a file."""
    given = special.get("runs_dir", DEFAULT_RUNS_DIR)
    if not given.strip():
        raise RecipeError(f"runs_dir= is empty; name the folder that holds the runs, e.g. runs_dir={DEFAULT_RUNS_DIR}")
    if "://" in given:
        return given
    path = Path(given).expanduser()
    if path.exists() and not path.is_dir():
        raise RecipeError(f"runs_dir={given} is a file, not a folder; name a folder (a build makes a missing one)")
    if not path.exists():
        if must_exist:
            raise StoreError(f"runs_dir={given} does not exist; name the folder that holds your runs, or build one "
                             f"there first: alma-data build round=1 runs_dir={given}")
        parent = path.absolute().parent
        while not parent.exists():
            parent = parent.parent
        if not parent.is_dir():
            raise RecipeError(f"runs_dir={given}: {parent} is a file, so the folder cannot be made; name another folder")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise RecipeError(f"runs_dir={given}: cannot make the folder, {parent} is not writable by this user; "
                              "name a folder you can write")
    elif not os.access(path, os.W_OK | os.X_OK) and not must_exist:
        raise RecipeError(f"runs_dir={given} is not writable by this user; name a folder you can write")
    return given


def store_from(special: dict[str, str]) -> Store:
    runs_dir = runs_dir_of(special, must_exist=True)
    store = Store(runs_dir, default_run(runs_dir, special.get("run")))
    store.read_run()  # a clear error when the run does not exist
    return store


def parse_bool(value: str, key: str) -> bool:
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise RecipeError(f"{key} must be true or false, got {value!r}")
