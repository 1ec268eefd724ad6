"""The online-buffer benchmark runs end to end in its small configuration and prints its table (no thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_online_small_configuration_prints_its_table(tmp_path: Path) -> None:
    """`scripts/bench_online.py --sizes 100`: both sides measured (LeRobot's included), ratios printed."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench_online.py"),
            "--sizes",
            "100",
            "--workdir",
            str(tmp_path),
            "--commit-seconds",
            "2",
            "--hour-rate",
            "2",
        ],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for line in (
        "memory per transition",
        "first checkpoint",
        "checkpoint after +1,000",
        "resume (fresh process)",
        "add, first fill",
        "add, steady state",
        "add latency, bufconv",
        "commits every 1 s",
        "checkpoint, commits on",
        "an hour of one-second commits at 2/s",
    ):
        assert line in done.stdout, line
    report = json.loads((tmp_path / "bench-online.json").read_text())
    row = report["rows"]["100"]
    assert row["bufconv"]["resumed"] == row["lerobot"]["resumed"] == 100
    assert all(value > 0 for value in report["ratios"]["100"].values())
    latency = row["bufconv"]["latency"]
    assert 0 < latency["p50_ms"] <= latency["p99_ms"] <= latency["max_ms"]
    assert row["lerobot"]["add_steady_ms"] > 0 and row["bufconv"]["add_fill_ms"] > 0
    commits = row["bufconv"]["commits"]
    assert commits["adds"] == 200 and commits["checkpoint_plain_transitions"] == 100
    for key in ("memory_only", "background"):
        assert 0 < commits[key]["p50_ms"] <= commits[key]["p99_ms"] <= commits[key]["max_ms"]
    hour = report["hour"]
    assert hour["commits"] == 3600 and hour["transitions"] == 7200
    assert hour["resumed"] == 7200 and hour["lost"] == 0
    assert 0 < hour["files"] <= hour["most_files"]
