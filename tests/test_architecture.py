"""The package's shape: every module imports on its own, and imports run one way between stages.

Stages, lowest first (docs/architecture.md): the shared top modules, `source`, `cache`, `convert`,
`contract`, `buffer`, `lerobot`; then the command line and the demo. A module may import its own stage and
the stages below it, never one above, lazily or not: that is what keeps circles out.
"""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
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
SHARED = {"errors", "options", "ranges", "pixelmap"}
FRONT = {"cli", "demo"}
FACADES = {"bufconv", "bufconv.lerobot"}  # re-export names lazily, from every stage


def modules() -> list[str]:
    return sorted(
        info.name for info in pkgutil.walk_packages(bufconv.__path__, "bufconv.") if not info.ispkg
    ) + sorted(info.name for info in pkgutil.walk_packages(bufconv.__path__, "bufconv.") if info.ispkg)


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


def imported(module: str) -> set[str]:
    """Every bufconv module `module` imports, at any depth of its code (lazy imports too)."""
    path = source_file(module)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            if target.startswith("bufconv"):
                found.add(target)
                found.update(f"{target}.{a.name}" for a in node.names if f"{target}.{a.name}" in ALL)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("bufconv"))
    return {name for name in found if name in ALL}


ALL = set(modules())


def test_the_walk_finds_every_stage_and_every_kind_of_import() -> None:
    assert {stage(m) for m in ALL} == set(RANK)
    assert {"bufconv.cache.reader", "bufconv.buffer.offline", "bufconv.source.video"} <= ALL
    # relative, parent-relative, `from . import module` and lazy (inside a function) imports are all seen
    assert {"bufconv.convert.pipeline", "bufconv.cache.freshness", "bufconv.buffer.offline"} <= imported(
        "bufconv.buffer.loader"
    )
    assert "bufconv.cache.fingerprint" in imported("bufconv.convert.pipeline")
    assert "bufconv.cache.freshness" in imported("bufconv.cache.verification")


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
