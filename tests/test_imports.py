"""The house's import graph, read from the source with ``ast`` (nothing is imported):
alma_data/**/*.py and training/*.py, with every import counted wherever it stands (module
level, inside functions, under ``if TYPE_CHECKING:``), relative imports resolved, and
``from pkg import name`` read as an import of ``pkg.name`` when that is a module.

The suite fails on any import circle among these modules (naming it), on a stage module
importing another stage module, and on a module outside the lab importing the lab (only the
command line's ``lab`` command, at the top, may).

Run as a script (``python tests/test_imports.py``) it prints the circles, if any, and the
modules over 250 lines.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = [ROOT / "alma_data", ROOT / "training"]
LAB = "alma_data.lab"
# The command line sits above every floor: its `lab` command is where the lab is reached.
MAY_IMPORT_LAB = {"alma_data.cli.lab"}


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for src in SOURCES for p in sorted(src.rglob("*.py"))}


def imports_of(path: Path, known: set[str], root: Path = ROOT) -> dict[str, int]:
    """The project modules ``path`` imports, each with the line of its first import.

    An import names the most specific project module it reaches: ``import a.b.c`` and
    ``from a.b import c`` (c a module) count as ``a.b.c``; ``from a.b import f`` (f not a module)
    counts as ``a.b``. The parent packages Python runs on the way are not counted: our
    packages' __init__ files only gather their parts, and a part importing its own package's
    __init__ by name (``from alma_data.store import Store`` inside alma_data/store/) is counted."""
    tree = ast.parse(path.read_text(), str(path))
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rpartition(".")[0]
    found: dict[str, int] = {}
    for node in ast.walk(tree):
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
                found.setdefault(name, node.lineno)
    return found


def graph() -> dict[str, dict[str, int]]:
    mods = modules()
    return {m: imports_of(p, set(mods)) for m, p in mods.items()}


def cycles(g: dict[str, dict[str, int]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), sorted by name."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10000))

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


def circle_path(g: dict[str, dict[str, int]], group: list[str]) -> str:
    """One circle through the group's first module, written ``a.py:12 -> b.py:30 -> a``
    (each arrow at the line of the import), found breadth-first inside the group."""
    start, members = group[0], set(group)
    came: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(g[v]):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(came[path[-1]])
                    path.reverse()
                    hops = [f"{_file(a)}:{g[a][b]}" for a, b in zip(path, path[1:] + [start])]
                    return " -> ".join(hops + [_file(start)])
                if w in members and w not in came and w != start:
                    came[w] = v
                    nxt.append(w)
        frontier = nxt
    return " <-> ".join(group)


def _file(module: str) -> str:
    return str(modules()[module].relative_to(ROOT))


def test_the_import_graph_has_no_circle():
    g = graph()
    circles = [f"{', '.join(group)}: {circle_path(g, group)}" for group in cycles(g)]
    assert not circles, "import circles:\n  " + "\n  ".join(circles)


def test_the_reader_sees_every_kind_of_import(tmp_path):
    """The reader itself: function-level, TYPE_CHECKING, relative and submodule imports all
    count, so a circle hidden in any of them fails the test above."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.b import B\n")
    (pkg / "b.py").write_text("def f():\n    from . import c\n")
    (pkg / "c.py").write_text("from pkg import a\nimport pkg.d\n")
    (pkg / "d.py").write_text("from .a import thing\n")
    known = {"pkg", "pkg.a", "pkg.b", "pkg.c", "pkg.d"}
    g = {f"pkg.{n}": imports_of(pkg / f"{n}.py", known, tmp_path) for n in "abcd"}
    assert {k: set(v) for k, v in g.items()} == {
        "pkg.a": {"pkg.b"}, "pkg.b": {"pkg.c"}, "pkg.c": {"pkg.a", "pkg.d"}, "pkg.d": {"pkg.a"}}
    assert cycles(g) == [["pkg.a", "pkg.b", "pkg.c", "pkg.d"]]


def test_no_stage_imports_another_stage():
    g = graph()
    stages = {m for m in g if m.startswith("alma_data.stages.")}
    crossing = {m: sorted(set(g[m]) & stages) for m in stages if set(g[m]) & stages}
    assert crossing == {}


def test_only_the_lab_command_imports_the_lab():
    """The lab only measures: no foundation, stage or command other than `lab` reaches it."""
    g = graph()
    reaching = {f"{_file(m)}:{line}": dep for m, deps in g.items()
                if not (m == LAB or m.startswith(LAB + ".")) and m not in MAY_IMPORT_LAB
                for dep, line in deps.items() if dep == LAB or dep.startswith(LAB + ".")}
    assert reaching == {}


if __name__ == "__main__":
    g = graph()
    for group in cycles(g):
        print(f"circle of {', '.join(group)}:\n  {circle_path(g, group)}")
    print(f"{len(g)} modules, {sum(len(v) for v in g.values())} imports, {len(cycles(g))} circles")
    for m, p in sorted(modules().items(), key=lambda kv: -len(kv[1].read_text().splitlines())):
        n = len(p.read_text().splitlines())
        if n > 250:
            print(f"{n:5d} {p.relative_to(ROOT)}")
