"""The benchmark runs end to end in its small configuration and prints its table (no thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_small_configuration_prints_its_table(tmp_path: Path) -> None:
    """`scripts/bench.py --frames 200`: every measurement runs (LeRobot's included) and the ratios are printed."""
    done = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts" / "bench.py"),
            "--frames",
            "200",
            "--repeat",
            "1",
            "--workdir",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    for line in (
        "LeRobot ReplayBuffer.from_lerobot_dataset",
        "decode floor",
        "bufconv build, 1 worker",
        "bufconv warm start",
        "sample(256)",
        "async iterator",
        "LeRobot conversion / build 1 worker (speed-up)",
        "GPU learner host work",
    ):
        assert line in out, line
    report = json.loads((tmp_path / "bench-200.json").read_text())
    assert report["frames"] == 200
    assert report["results"]["build_1"]["payload_bytes"] == 200 * 2 * 3 * 128 * 128
    assert all(value > 0 for value in report["ratios"].values())
