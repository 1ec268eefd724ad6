"""scripts/bench_shards.py runs end to end in its small configuration and prints its rows (no thresholds)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_bench_shards_small_configuration_prints_its_rows(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_shards.py"), "--frames", "200", "--shards", "2",
         "--batches", "2", "--repeat", "1", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    for line in (
        "build, one file",
        "build, 2 shards, local",
        "sample(256) f32, 2 shards",
        "learner after 2 x sample(256, uint8)",
    ):
        assert line in done.stdout, line
    report = json.loads((tmp_path / "bench-shards-200.json").read_text())
    assert set(report["ratios"]) == {
        "build_sharded_over_single",
        "sample_sharded_over_single",
        "learner_anon_over_cache",
        "learner_cache_pages_over_cache",
    }
    assert report["ratios"]["build_sharded_over_single"] > 0
