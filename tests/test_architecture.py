"""The package's shape: every module imports on its own, imports run one way between stages, and
no modules import one another in a circle.

Stages, lowest first (docs/architecture.md): the shared top modules, `source`, `cache`, `convert`,
`contract`, `buffer`, `lerobot`; then the command line and the demo. A module may import its own stage and
the stages below it, never one above, lazily or not; and within a stage as across stages, no chain
of imports (at import time, inside functions or for type checkers only) leads back to where it began.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path

import pytest

import bufconv

PACKAGE = Path(bufconv.__file__).parent
RANK = {
    "shared": 0,
    "source": 1,
    "cache": 2,
    "convert": 3,
    "contract": 4,
    "buffer": 5,
    "lerobot": 6,
    "front": 7,
}
SHARED = {"errors", "options", "ranges", "pixelmap", "version"}
FRONT = {"cli", "demo"}
FACADES = {"bufconv", "bufconv.lerobot"}  # re-export names lazily, from every stage
COMPILED = {"bufconv.buffer._pixelpass"}  # setup.py's extension (test_pixelpass: the dev install has it)


def modules() -> list[str]:
    """Every Python module of bufconv, the package itself (its front door) and its subpackages
    included; compiled ones (`COMPILED`) import nothing of bufconv's and have no source to read."""
    found = [
        info for info in pkgutil.walk_packages(bufconv.__path__, "bufconv.") if info.name not in COMPILED
    ]
    packages = sorted(info.name for info in found if info.ispkg)
    return [*sorted(info.name for info in found if not info.ispkg), "bufconv", *packages]


def stage(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "shared"
    if parts[1] in SHARED:
        return "shared"
    if parts[1] in FRONT:
        return "front"
    return parts[1]


def source_file(module: str) -> Path:
    relative = Path(*module.split(".")[1:])
    return PACKAGE / relative / "__init__.py" if (PACKAGE / relative).is_dir() else PACKAGE / f"{relative}.py"


def _own(module: str) -> set[str]:
    """`module` and the packages it sits in: imported before its code runs, whoever imports it."""
    parts = module.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _reach(module: str, target: str) -> set[str]:
    """What `module` importing `target` runs: `target`, and the packages on its way not `module`'s own."""
    return {target} | (_own(target) - _own(module))


def import_edges(
    module: str,
    text: str,
    *,
    is_package: bool,
    known: Collection[str],
    lazy_exports: Mapping[str, Mapping[str, str]] | None = None,
) -> set[str]:
    """The modules of `known` that importing `module` (source `text`) may import, at any depth of its
    code: at import time, inside functions (lazily) and under `if TYPE_CHECKING:`.

    `from P import n` counts `P.n` where that is a module; where P is a facade (`lazy_exports[P]`:
    the module its `__getattr__` loads each name from), the module `n` is loaded from; otherwise P
    itself (`n` is a name P defines: P's code must have run). The packages on the way count too,
    except `module`'s own. A facade's lazy loads count as its own imports.
    """
    exports = lazy_exports or {}
    package = module if is_package else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found |= _reach(module, f"{target}.{alias.name}")
                elif alias.name in exports.get(target, {}):
                    found |= _reach(module, exports[target][alias.name]) | (
                        _reach(module, target) - _own(module)
                    )
                else:
                    found |= _reach(module, target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                found |= _reach(module, alias.name)
    for target in exports.get(module, {}).values():
        found |= _reach(module, target)
    found.discard(module)
    return {name for name in found if name in known}


def tangles(graph: Mapping[str, Iterable[str]]) -> list[set[str]]:
    """The groups of modules that import one another (the strongly connected components of `graph`
    with more than one module, or a module importing itself), by Tarjan's algorithm."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[set[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.add(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph.get(node, ()):
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=min)


def circle_in(graph: Mapping[str, Iterable[str]], group: set[str]) -> list[str]:
    """The shortest circle `[a, b, ..., a]` through the first module of a tangle, within the tangle."""
    start = min(group)
    paths = {start: [start]}
    queue = [start]
    while queue:  # breadth first
        node = queue.pop(0)
        nexts = sorted(set(graph.get(node, ())) & group)
        if start in nexts:
            return [*paths[node], start]
        for other in nexts:
            if other not in paths:
                paths[other] = [*paths[node], other]
                queue.append(other)
    raise AssertionError(f"{sorted(group)} is not a tangle of the graph")


def circles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """One circle for each tangle of `graph`, sorted; [] when no modules import one another."""
    return sorted(circle_in(graph, group) for group in tangles(graph))


ALL = set(modules())
LAZY_EXPORTS: dict[str, dict[str, str]] = {f: dict(importlib.import_module(f)._EXPORTS) for f in FACADES}


def imported(module: str) -> set[str]:
    """Every bufconv module `module` imports, at any depth of its code (lazy imports too)."""
    path = source_file(module)
    return import_edges(
        module, path.read_text(), is_package=path.name == "__init__.py", known=ALL, lazy_exports=LAZY_EXPORTS
    )


GRAPH = {module: imported(module) for module in sorted(ALL)}


def test_the_walk_finds_every_stage_and_every_kind_of_import() -> None:
    assert {stage(m) for m in ALL} == set(RANK)
    assert {"bufconv.cache.reader", "bufconv.buffer.offline", "bufconv.source.video"} <= ALL
    # relative, parent-relative, `from . import module` and lazy (inside a function) imports are all seen
    assert {"bufconv.convert.pipeline", "bufconv.cache.freshness", "bufconv.buffer.offline"} <= imported(
        "bufconv.buffer.loader"
    )
    assert "bufconv.cache.fingerprint" in imported("bufconv.convert.pipeline")
    assert "bufconv.cache.freshness" in imported("bufconv.cache.verification")


def test_no_modules_import_one_another_in_a_circle() -> None:
    """Lazy imports (inside functions), imports for type checkers only, a facade's names loaded on
    first use: none of them may close a circle, within a stage or across stages. Where two modules
    need the same code it belongs in a third both import; where a caller must call back, it is passed
    what it calls."""
    found = [
        " -> ".join(circle_in(GRAPH, group))
        + (f" (in all: {', '.join(sorted(group))})" if len(group) > 2 else "")
        for group in tangles(GRAPH)
    ]
    assert not found, "import circles among bufconv's modules:\n" + "\n".join(found)


def test_the_circle_finder_finds_a_crafted_circle(tmp_path: Path) -> None:
    """`circles` on small graphs; then on a package written here, whose circle is closed by a lazy
    import inside a function, and whose other two modules import each other for type checking only."""
    assert circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert circles({"a": {"a"}, "b": set()}) == [["a", "a"]]
    assert circles({"a": {"b", "c"}, "b": {"c"}, "c": set()}) == []  # a diamond is no circle
    assert circles({"a": {"b"}, "b": {"a"}, "x": {"y"}, "y": {"z"}, "z": {"x", "a"}}) == [
        ["a", "b", "a"],
        ["x", "y", "z", "x"],
    ]
    assert circles(GRAPH | {"bufconv.errors": {"bufconv.buffer.offline"}})  # a shared module importing up

    files = {
        "pkg/__init__.py": "",
        "pkg/stage/__init__.py": "",
        "pkg/stage/top.py": "from .low import helper\n",
        "pkg/stage/low.py": "def helper():\n    from . import top  # lazy: still a circle\n    return top\n",
        "pkg/typed/__init__.py": "",
        "pkg/typed/a.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .b import B\nA = 1\n",
        "pkg/typed/b.py": "from .a import A\nB = A\n",
        "pkg/clean.py": "from .stage import low\nfrom . import typed\n",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    names = {name.removesuffix("/__init__.py").removesuffix(".py").replace("/", "."): name for name in files}
    graph = {
        module: import_edges(
            module, (tmp_path / path).read_text(), is_package=path.endswith("__init__.py"), known=names
        )
        for module, path in names.items()
    }
    assert graph["pkg.clean"] == {"pkg.stage", "pkg.stage.low", "pkg.typed"}
    assert circles(graph) == [
        ["pkg.stage.low", "pkg.stage.top", "pkg.stage.low"],
        ["pkg.typed.a", "pkg.typed.b", "pkg.typed.a"],
    ]


def test_a_facade_s_lazy_names_are_edges_of_the_graph() -> None:
    """`bufconv` and `bufconv.lerobot` load their public names on first use (`__getattr__`): the
    modules they load from are their edges, and `from bufconv import X` is an edge to X's module."""
    assert LAZY_EXPORTS["bufconv"]["build"] in GRAPH["bufconv"]
    assert set(LAZY_EXPORTS["bufconv.lerobot"].values()) <= GRAPH["bufconv.lerobot"]
    assert all(set(names.values()) <= ALL for names in LAZY_EXPORTS.values())
    edges = import_edges(
        "bufconv.cache.new",
        "from .. import build, errors\n",
        is_package=False,
        known=ALL,
        lazy_exports=LAZY_EXPORTS,
    )
    assert edges == {LAZY_EXPORTS["bufconv"]["build"], "bufconv.convert", "bufconv.errors"}
    assert import_edges("bufconv.cache.new", "from .. import __version__\n", is_package=False, known=ALL) == {
        "bufconv"
    }


@pytest.mark.parametrize("module", sorted(ALL - FACADES))
def test_imports_run_from_the_learner_side_down(module: str) -> None:
    upward = {other for other in imported(module) if RANK[stage(other)] > RANK[stage(module)]}
    assert not upward, f"{module} ({stage(module)}) imports a later stage: {sorted(upward)}"


def test_every_module_imports_in_a_fresh_interpreter() -> None:
    """Each module imported first, with no other bufconv module loaded: an import circle would fail.

    One interpreter, bufconv's modules dropped before each import (torch and the other
    dependencies stay loaded: they cannot take part in a circle of bufconv's).
    """
    script = (
        "import importlib, sys\n"
        f"names = {sorted(ALL)!r}\n"
        "failed = []\n"
        "for name in names:\n"
        "    for loaded in [m for m in sys.modules if m == 'bufconv' or m.startswith('bufconv.')]:\n"
        "        del sys.modules[loaded]\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except Exception as e:\n"
        "        failed.append(f'{name}: {type(e).__name__}: {e}')\n"
        "print('\\n'.join(failed))\n"
        "sys.exit(1 if failed else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr


def test_a_circle_would_be_caught(tmp_path: Path) -> None:
    """The check above fails on a real circle (two modules importing each other's names at import time)."""
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from .b import B\nA = 1\n")
    (package / "b.py").write_text("from .a import A\nB = 2\n")
    result = subprocess.run(
        [sys.executable, "-c", "import circle.a"], cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert result.returncode != 0 and "circular import" in result.stderr


def test_each_stage_says_what_it_takes_and_hands_on() -> None:
    for name in ("source", "convert", "cache", "buffer"):
        doc = __import__(f"bufconv.{name}", fromlist=["_"]).__doc__ or ""
        assert "Takes in" in doc and "hands on" in doc and "Open `" in doc, name


def test_no_subpackage_shadows_a_public_name() -> None:
    """`bufconv.build` is the build function: importing a subpackage must never replace a public name."""
    script = (
        "import importlib, bufconv\n"
        f"for name in {sorted(ALL)!r}: importlib.import_module(name)\n"
        "bad = [n for n in bufconv.__all__ if n != '__version__' and type(getattr(bufconv, n)).__name__ == 'module']\n"
        "assert callable(bufconv.build) and not bad, bad\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
