"""bufconv without LeRobot, and datasets named by repo id."""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import bufconv

_WITHOUT_LEROBOT = """
import sys
sys.modules["lerobot"] = None  # any `import lerobot...` now raises ImportError
import bufconv
from bufconv.demo import run_demo
summary = run_demo(sys.argv[1], echo=lambda line: None)
buffer = bufconv.load_or_build(summary.dataset, summary.cache, image_range=255)
assert buffer.status == "hit", buffer.status
assert not any(name == "lerobot" or name.startswith("lerobot.") for name in sys.modules if sys.modules[name] is not None)
print("ok", len(buffer))
"""


def test_build_load_and_demo_need_no_lerobot(tmp_path: Path) -> None:
    """With every `lerobot` import failing, bufconv imports, writes the demo dataset, builds, verifies and loads."""
    done = subprocess.run(
        [sys.executable, "-c", _WITHOUT_LEROBOT, str(tmp_path)], capture_output=True, text=True, timeout=600
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok 120"


def test_lerobot_integration_without_lerobot_says_what_to_install() -> None:
    """`bufconv.lerobot` imports without LeRobot; using it asks for the extra instead of a bare traceback."""
    code = (
        "import sys; sys.modules['lerobot'] = None\n"
        "import bufconv.lerobot as integration\n"
        "try:\n"
        "    integration.ImageRangeProcessorStep\n"
        "except ImportError as e:\n"
        "    print(e)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pip install 'bufconv[lerobot]'" in done.stdout


def test_dataset_by_repo_id_under_hf_lerobot_home(
    lerobot_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATASET as `user/name` resolves to $HF_LEROBOT_HOME/user/name, and the cache records the repo id."""
    home = tmp_path / "home"
    shutil.copytree(lerobot_dataset(), home / "someone" / "pick_cube")
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home))
    result = bufconv.build("someone/pick_cube", tmp_path / "c.pt", workers=1)
    meta = bufconv.cache.reader.read_header(result.path)
    assert meta["source"]["repo_id"] == "someone/pick_cube"
    assert Path(meta["source"]["root"]) == (home / "someone" / "pick_cube").resolve()
