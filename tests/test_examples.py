"""The README's promises: its set-up commands are the ones CI runs, and its worked example runs."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = text.split("## Set up and run", 1)[1].split("```bash", 1)[1].split("```", 1)[0]
    return [line.split("#", 1)[0].strip() for line in block.strip().splitlines()]


def test_readme_has_exactly_two_setup_commands_demo_and_tests() -> None:
    """One command installs and runs `bufconv demo`, the other installs and runs the tests."""
    demo, tests = _readme_commands()
    assert demo.startswith("scripts/setup.sh") and demo.endswith("bufconv demo")
    assert tests.startswith("scripts/setup.sh --dev") and "pytest" in tests


def test_ci_runs_the_readme_test_command() -> None:
    """.ci/run installs the way the README says and calls the README's test command."""
    _, tests = _readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    lines = [line.strip() for line in ci.splitlines() if line.strip() and not line.startswith("#")]
    joined = " && ".join(line for line in lines if not line.startswith(("set ", "cd ")))
    assert joined == tests


def test_learner_example_runs_and_the_guard_catches_double_division(tmp_path: Path) -> None:
    """scripts/learner_example.py: 50/50 batches stay in [0,255]; dividing by 255 twice is caught at the encoder."""
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "learner_example.py"), "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout
    assert "status='built'" in out
    mixed = re.search(r"mixed batch of 32: observation.images.front in \[(\d+), (\d+)\]", out)
    assert mixed is not None, out
    assert float(mixed.group(2)) > 1  # really [0,255], not [0,1]
    assert "caught at the encoder" in out and "declared range 255" in out and "look like [0,1] images" in out
