"""The house's layers: the import graph of alma_data/ (imports inside functions counted too)
has no circle, and no stage module imports another stage module.

Run as a script (``python tests/test_layers.py``) it prints the graph's circles, if any,
and every module's line count.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "alma_data"


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The project modules ``path`` imports, wherever in the file the import stands (inside
    functions too), except under ``if TYPE_CHECKING:``. ``from
    alma_data.x import y`` counts as an import of ``alma_data.x.y`` when that is a module, else
    of ``alma_data.x``. A package's own __init__, which Python runs before any of its parts, is
    not counted as imported by its parts: our packages' __init__ files only gather their parts."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: set[str] = set()
    # Imports under `if TYPE_CHECKING:` never run; they name types for annotations only.
    typing_only = {id(n) for node in ast.walk(tree) if isinstance(node, ast.If) and _is_type_checking(node.test)
                   for stmt in node.body for n in ast.walk(stmt)}
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            names = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name != here:
                found.add(name)
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) for m, p in mods.items()}


def cycles(g: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each a circle of imports."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(g.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                out.append(sorted(group))

    for v in sorted(g):
        if v not in index:
            visit(v)
    return out


def test_the_import_graph_has_no_circle():
    assert cycles(graph()) == []


def test_no_stage_imports_another_stage():
    g = graph()
    stages = {m for m in g if m.startswith("alma_data.stages.") and m != "alma_data.stages"}
    crossing = {m: sorted(g[m] & stages) for m in stages if g[m] & stages}
    assert crossing == {}


def test_a_misspelt_recipe_key_fails_where_a_stage_names_it():
    import pytest

    from alma_data.stage import Stage, recipe_keys

    assert recipe_keys("prompts.k", "store.shard_rows", "judge") == ("prompts.k", "store.shard_rows", "judge")
    with pytest.raises(KeyError, match="prompts.kk"):
        recipe_keys("prompts.kk")
    with pytest.raises(KeyError, match="seed.max_sft"):
        Stage("x", 1, "x", lambda ctx, stage, h: None, keys=("seed.max_sft",))


def test_each_round_is_one_list_of_stages_with_one_output_each():
    """For the bundled recipes and the switches that change a round's shape (DPO, no
    self-distillation), every stage writes one output no other stage of its round writes,
    reads only what an earlier stage wrote, and status lists exactly what build runs."""
    from alma_data.config import load_recipe
    from alma_data.plan import build_plan, round_stages

    for name, overrides in [("tiny", {}), ("default", {}), ("paper", {}), ("tiny", {"train.trainer": "dpo"}),
                            ("tiny", {"judge.self_distill": "false"})]:
        recipe = load_recipe(name, overrides)
        written: set[str] = set()
        for stage in build_plan(recipe, 4):
            assert stage.where not in written, (name, overrides, stage.where)
            for ref in stage.inputs:
                assert f"round={ref.round}/{ref.table}" in written, (stage.name, ref)
            for ref in stage.checkpoints:
                assert f"round={ref.round}/checkpoints/{ref.name}" in written, (stage.name, ref)
            written.add(stage.where)
        judges = [st.round for r in range(1, 5) for st in round_stages(recipe, r) if st.output == "judge"]
        assert judges == ([1, 2] if recipe.judge.self_distill else [1])


if __name__ == "__main__":
    g = graph()
    for group in cycles(g):
        print("circle:", " <-> ".join(group))
    print(f"{len(g)} modules, {sum(len(v) for v in g.values())} imports, {len(cycles(g))} circles")
    for m, p in sorted(modules().items(), key=lambda kv: -len(kv[1].read_text().splitlines())):
        n = len(p.read_text().splitlines())
        if n > 250:
            print(f"{n:5d} {p.relative_to(ROOT)}")
