"""The benchmark runs end to end in its small configuration and prints its table (no thresholds)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
DEPTH = "observation.images.front_depth"


@pytest.mark.slow
def test_bench_small_configuration_prints_its_table(tmp_path: Path) -> None:
    """`scripts/bench.py --frames 200`: every measurement runs (LeRobot's included) and the ratios are printed,
    for the RGB dataset and for the RGB-D one (two RGB cameras and a hevc gray12le depth camera)."""
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

    # The RGB-D part (issue 20): the same 200 frames, one depth camera beside the two RGB ones.
    rgbd_table = out[out.index("\nRGB-D: 200 frames") :]
    for line in (
        "LeRobot ReplayBuffer.from_lerobot_dataset",
        "decode floor: PyAV, each file once (best)",
        "depth files to gray12le",
        "bufconv build, 1 worker",
        "ratios (RGB-D)",
        "LeRobot conversion / build 1 worker (speed-up)",
        "LeRobot peak RSS above baseline / payload",
        "build 1 worker peak RSS above baseline / payload",
        "build 1 worker / decode floor",
    ):
        assert line in rgbd_table, line
    rgbd = report["rgbd"]
    assert rgbd["frames"] == 200
    rgb_bytes, depth_bytes = 200 * 2 * 3 * 128 * 128, 200 * 1 * 128 * 128 * 2  # uint8 RGB, 2-byte depth
    build = rgbd["results"]["rgbd_build_1"]
    assert (build["rgb_bytes"], build["depth_bytes"]) == (rgb_bytes, depth_bytes)
    assert build["payload_bytes"] == rgb_bytes + depth_bytes
    assert build["depth_units"] == {DEPTH: "mm"}
    assert build["cameras"][DEPTH] == {
        "dtype": "int16",
        "shape": [200, 1, 128, 128],
        "stored": "codes12",
        "unit": "mm",
    }
    assert rgbd["results"]["rgbd_lerobot"]["frames"] == 200
    floor = rgbd["results"]["rgbd_floor"]
    assert floor["frames"] == 3 * 200 and floor["files"] == 3
    assert floor["seconds"] <= floor["seconds_rgb"] + floor["seconds_depth"] + 1e-9
    for name in (
        "LeRobot conversion / build 1 worker (speed-up)",
        "build 1 worker / decode floor",
        "build 1 worker peak RSS above baseline / payload",
        "LeRobot peak RSS above baseline / payload",
        "cache file / payload",
    ):
        assert rgbd["ratios"][name] > 0, name


def test_episode_lengths_keep_depth_episodes_of_three_frames_or_more() -> None:
    """LeRobot 0.6.1's writer fails on a hevc depth episode under 3 frames: a short tail joins the last episode."""
    bench = load_bench()
    assert bench.episode_lengths(250) == [100, 100, 50]
    assert bench.episode_lengths(201) == [100, 100, 1]
    assert bench.episode_lengths(201, 3) == [100, 101]
    assert bench.episode_lengths(302, 3) == [100, 100, 102]
    assert bench.episode_lengths(103, 3) == [100, 3]
    with pytest.raises(SystemExit):
        bench.episode_lengths(2, 3)


def test_depth_keys_come_from_the_dataset_info(tmp_path: Path) -> None:
    bench = load_bench()
    (tmp_path / "meta").mkdir()
    features = {
        "observation.images.front": {"dtype": "video", "info": {"video.codec": "av1"}},
        DEPTH: {"dtype": "video", "info": {"is_depth_map": True, "video.pix_fmt": "gray12le"}},
        "observation.state": {"dtype": "float32"},
    }
    (tmp_path / "meta" / "info.json").write_text(json.dumps({"features": features}))
    assert bench._depth_keys(tmp_path) == [DEPTH]


def load_bench() -> Any:
    spec = importlib.util.spec_from_file_location("bench", ROOT / "scripts" / "bench.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
