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


if __name__ == "__main__":
    g = graph()
    for group in cycles(g):
        print("circle:", " <-> ".join(group))
    print(f"{len(g)} modules, {sum(len(v) for v in g.values())} imports, {len(cycles(g))} circles")
    for m, p in sorted(modules().items(), key=lambda kv: -len(kv[1].read_text().splitlines())):
        n = len(p.read_text().splitlines())
        if n > 250:
            print(f"{n:5d} {p.relative_to(ROOT)}")
