"""The examples of the README and the docs site run: every fenced block a user would copy is
run here on a copy of the session's tiny run, or marked in the page with the reason it is not.

The convention, an HTML comment on the line before a fence:

- no comment: the block runs. ``bash``: each line is an ``alma-data`` command, run as written
  in a folder holding ``data/runs/default`` (and ``data/runs/tiny``), copies of the tiny run,
  and small input files under the names the pages use (``pairs.jsonl``, ``question.jsonl``,
  ...); a ``build`` runs on ``recipe=tiny``. ``python`` runs in that folder; ``sql`` runs in
  DuckDB there; ``yaml`` whose first line is ``# NAME.yaml`` is written there as that file.
- ``<!-- checked: REASON -->``: its ``alma-data build`` commands are not run (too long here)
  but checked: the recipe with every key and value loads and passes the checks for the rounds
  asked, and the real command line accepts them (it stops only at ``round=0``).
- ``<!-- not run: REASON -->``: not run (needs a GPU, the Hub, a server, an install).
- ``text`` fences are output, never run.

A renamed command or recipe key then fails here.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import ROOT, run_cli

PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").rglob("*.md"))
LANGS = {"bash", "python", "sql", "yaml", "text"}
MARK = re.compile(r"<!--\s*(not run|checked):\s*(.*?)\s*-->")
SPECIAL = {"round", "recipe", "run", "runs_dir"}


@dataclass
class Fence:
    page: Path
    line: int
    lang: str
    code: str
    mark: str | None     # None, "not run", "checked"
    reason: str

    def where(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def fences(page: Path) -> list[Fence]:
    out, lines, i = [], page.read_text().split("\n"), 0
    while i < len(lines):
        m = re.match(r"^(\s*)```(\S*)\s*$", lines[i])
        if not m:
            i += 1
            continue
        start, lang, body = i, m.group(2), []
        i += 1
        while i < len(lines) and not lines[i].strip().startswith("```"):
            body.append(lines[i][len(m.group(1)):])
            i += 1
        i += 1
        prev = next((lines[k] for k in range(start - 1, -1, -1) if lines[k].strip()), "")
        mark = MARK.search(prev)
        out.append(Fence(page, start + 1, lang, "\n".join(body), mark.group(1) if mark else None,
                         mark.group(2) if mark else ""))
    return out


def commands(code: str) -> list[list[str]]:
    """The commands of a bash block: continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in re.sub(r"\\\n\s*", " ", code).split("\n"):
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quoted string goes on to the next line
            continue
        pending = ""
        if words:
            out.append(words)
    return out


ALL = [f for page in PAGES for f in fences(page)]


def test_every_fence_is_marked_or_runs():
    problems = []
    for f in ALL:
        if f.lang not in LANGS:
            problems.append(f"{f.where()}: fence language {f.lang or '(none)'!r}; use one of {sorted(LANGS)}")
        if f.mark and not f.reason:
            problems.append(f"{f.where()}: '{f.mark}' needs a reason")
        if f.lang == "bash" and f.mark is None:
            for words in commands(f.code):
                if words[0] != "alma-data":
                    problems.append(f"{f.where()}: {' '.join(words)[:60]!r} is not an alma-data command: mark the "
                                    "block <!-- not run: REASON --> or <!-- checked: REASON -->")
        if f.lang == "bash" and f.mark == "checked" and not any(w[:2] == ["alma-data", "build"]
                                                                  for w in commands(f.code)):
            problems.append(f"{f.where()}: 'checked' is for blocks with alma-data build commands")
    assert not problems, "\n".join(problems)
    assert sum(f.mark is None and f.lang != "text" for f in ALL) >= 15  # the pages' examples are here


def _assignments(words: list[str]) -> tuple[dict[str, str], dict[str, str]]:
    special, overrides = {}, {}
    for w in words:
        if "=" in w and not w.startswith("-"):
            k, v = w.split("=", 1)
            (special if k in SPECIAL else overrides)[k] = v
    return special, overrides


def test_checked_builds_load_their_recipes(tmp_path):
    """Every build the pages show but this suite does not run: its recipe and keys are valid for
    the rounds it asks, and the command line takes them."""
    from alma_data.config import load_recipe
    from alma_data.recipe_checks import check_for_rounds

    checked = [(f, w) for f in ALL if f.lang == "bash" and f.mark == "checked"
               for w in commands(f.code) if w[:2] == ["alma-data", "build"]]
    assert checked
    for f, words in checked:
        special, overrides = _assignments(words[2:])
        recipe = load_recipe(special.get("recipe", "default"), overrides)
        check_for_rounds(recipe, int(special["round"]))
        args = [w for w in words[2:] if not w.startswith(("round=", "runs_dir="))]
        proc = run_cli("build", "round=0", *args, f"runs_dir={tmp_path / 'runs'}", check=False, cwd=tmp_path)
        assert proc.returncode == 2 and "rounds start at 1" in proc.stderr, (f.where(), proc.stderr[-2000:])


@pytest.fixture(scope="module")
def workdir(tiny_run, tmp_path_factory) -> Path:
    """A folder laid out as a user's after command 1: the run in data/runs/default, the repo's
    sql/, and the small input files the pages name."""
    work = tmp_path_factory.mktemp("docs")
    for name in ("default", "tiny"):
        shutil.copytree(tiny_run / "shared", work / "data" / "runs" / name)
    (work / "sql").symlink_to(ROOT / "sql")
    judge = [json.loads(line) for line in (ROOT / "data" / "seed" / "judge.jsonl").read_text().splitlines()]
    by_prompt: dict[str, list[dict]] = {}
    for row in judge:
        by_prompt.setdefault(row["prompt"], []).append(row)
    pairs = [{"prompt": p, "chosen": max(rs, key=lambda r: r["score"])["response"],
              "rejected": min(rs, key=lambda r: r["score"])["response"]}
             for p, rs in list(by_prompt.items())[:6]]
    for name in ("pairs.jsonl", "heldout_pairs.jsonl", "hh100.jsonl"):
        (work / name).write_text("".join(json.dumps(r) + "\n" for r in pairs))
    prompts = list(by_prompt)[:4]
    (work / "question.jsonl").write_text("".join(
        json.dumps({"question_id": i, "category": "writing", "turns": [p]}) + "\n" for i, p in enumerate(prompts)))
    (work / "mt_bench_16.jsonl").write_text((work / "question.jsonl").read_text())
    (work / "alpaca_eval.json").write_text(json.dumps([{"instruction": p, "dataset": "seed"} for p in prompts]))
    return work


def _run_bash(f: Fence, work: Path) -> None:
    for words in commands(f.code):
        args = words[1:]
        if args and args[0] == "build":
            special, _ = _assignments(args[1:])
            args = [a for a in args if not a.startswith("recipe=")] + ["recipe=tiny"]
        proc = run_cli(*args, cwd=work, check=False, timeout=600)
        assert proc.returncode == 0, f"{f.where()}: alma-data {' '.join(args)} ({proc.returncode}):\n{proc.stderr[-3000:]}"


def _run_python(f: Fence, work: Path) -> None:
    proc = subprocess.run([sys.executable, "-c", f.code], cwd=work, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TQDM_DISABLE": "1"})
    assert proc.returncode == 0, f"{f.where()}: python block failed:\n{proc.stderr[-3000:]}"


def _run_sql(f: Fence, work: Path) -> None:
    import duckdb

    cwd = os.getcwd()
    os.chdir(work)
    try:
        rel = duckdb.sql(f.code)  # DuckDB runs each statement, the last one's result comes back
        assert rel is None or rel.fetchall() is not None
    finally:
        os.chdir(cwd)


def _write_yaml(f: Fence, work: Path) -> None:
    import yaml

    data = yaml.safe_load(f.code)
    assert data is not None, f"{f.where()}: empty YAML"
    first = f.code.strip().split("\n")[0]
    if m := re.match(r"#\s*(\S+\.ya?ml)\s*$", first):
        (work / m.group(1)).write_text(f.code)


RUNNERS = {"bash": _run_bash, "python": _run_python, "sql": _run_sql, "yaml": _write_yaml}


@pytest.mark.slow
@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run(page, workdir):
    """Each page's runnable blocks, in the page's order, in the user's folder."""
    for f in fences(page):
        if f.mark is None and f.lang in RUNNERS:
            RUNNERS[f.lang](f, workdir)


def test_the_tables_page_lists_what_a_build_writes(workdir):
    """docs/gen/generate.py's table list against a real run: every table a tiny build and
    `alma-data eval` wrote is documented, with the columns its manifest records."""
    sys.path.insert(0, str(ROOT / "docs" / "gen"))
    import importlib

    gen = importlib.import_module("generate")
    from alma_data.store import Store

    store = Store(workdir / "data" / "runs", "default")
    documented: dict[tuple[str, str], list[list[str]]] = {}
    for table, module, attr, rounds, _ in gen.TABLES:
        documented.setdefault((table, rounds), []).append(gen.table_schema(module, attr).names)
    names = {t for t, _ in documented}
    missing = []
    for table, rounds in store.done_tables().items():
        if table not in names:
            missing.append(table)
            continue
        for r in rounds:
            columns = sorted(store.manifest(r, table)["columns"])
            assert any(columns == cols for (t, _), options in documented.items() if t == table for cols in map(sorted, options)), \
                (table, r, columns)
    assert not missing, f"tables not on the docs' tables page (docs/gen/generate.py TABLES): {missing}"


def test_every_recipe_key_has_its_doc():
    """The recipe-keys page is made from the dataclasses' field docs: a key without one shows blank."""
    sys.path.insert(0, str(ROOT / "docs" / "gen"))
    import importlib

    gen = importlib.import_module("generate")
    undocumented = [key for key, _, _, doc in gen.recipe_rows() if not doc]
    assert not undocumented, f"recipe keys without a field doc in alma_data/config.py: {undocumented}"
