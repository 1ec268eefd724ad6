"""Frame matching at the tolerance boundary: 1e-4 s by default (as LeRobot), wider with --tolerance-s.

A LeRobot-written dataset gets every parquet timestamp moved by a fraction of a millisecond. Half
the default tolerance still matches each frame; twice the default tolerance is an error naming
the missing frame, unless `--tolerance-s` allows it, and then the cache holds the very frames of
the unmoved dataset (the nearest one, which is the right one, never another).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner

import bufconv
from bufconv.cli import cli
from bufconv.options import DEFAULT_TOLERANCE_S

IMAGE_KEYS = ("observation.images.front", "observation.images.wrist")


def move_timestamps(root: Path, seconds: float) -> None:
    """Add `seconds` to every parquet timestamp (float32, as LeRobot stores them), schema kept."""
    (data,) = sorted((root / "data").glob("*/*.parquet"))
    table = pq.read_table(data)
    index = table.schema.get_field_index("timestamp")
    field = table.schema.field(index)
    moved = table.column("timestamp").to_numpy() + np.float32(seconds)
    pq.write_table(table.set_column(index, field, pa.array(moved, type=field.type)), data)


def build(root: Path, output: Path, *options: str) -> tuple[int, str]:
    """`bufconv build ROOT -o OUTPUT --workers 1 OPTIONS`: exit code and stderr."""
    result = CliRunner().invoke(cli, ["build", str(root), "-o", str(output), "--workers", "1", *options])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, result.stderr


@pytest.fixture(scope="module")
def unmoved(lerobot_dataset: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The tensors of the unmoved dataset's cache."""
    path = tmp_path_factory.mktemp("unmoved") / "offline_buffer.pt"
    bufconv.build(lerobot_dataset(), path, workers=1)
    return torch.load(path, weights_only=True)["tensors"]


def assert_same_frames(path: Path, unmoved: dict) -> None:
    tensors = torch.load(path, weights_only=True)["tensors"]
    for name in (*IMAGE_KEYS, "next_index", "episode_index", "observation.state"):
        assert torch.equal(tensors[name], unmoved[name]), name


def test_default_tolerance_is_lerobots() -> None:
    from lerobot.datasets import LeRobotDataset

    lerobot_default = inspect.signature(LeRobotDataset.__init__).parameters["tolerance_s"].default
    assert DEFAULT_TOLERANCE_S == lerobot_default == 1e-4


@pytest.mark.parametrize("seconds", [5e-5, -5e-5], ids=["later", "earlier"])
def test_half_the_default_tolerance_matches(
    seconds: float, dataset_copy: Callable[..., Path], unmoved: dict, tmp_path: Path
) -> None:
    """Timestamps 50 us off still find their frames with the default tolerance."""
    root = dataset_copy()
    move_timestamps(root, seconds)
    code, stderr = build(root, tmp_path / "c.pt")
    assert code == 0, stderr
    assert_same_frames(tmp_path / "c.pt", unmoved)


@pytest.mark.parametrize("seconds", [2e-4, -2e-4], ids=["later", "earlier"])
def test_twice_the_default_tolerance_fails_unless_allowed(
    seconds: float, dataset_copy: Callable[..., Path], unmoved: dict, tmp_path: Path
) -> None:
    """Timestamps 200 us off: no frame within the default 1e-4 s (an error, nothing written);
    `--tolerance-s 5e-4` accepts them and gives the unmoved dataset's frames."""
    root = dataset_copy()
    move_timestamps(root, seconds)
    out = tmp_path / "c.pt"
    code, stderr = build(root, out)
    assert code == 1
    assert "no frame within" in stderr
    assert "--tolerance-s" in stderr
    assert not out.exists()

    code, stderr = build(root, out, "--tolerance-s", "5e-4")
    assert code == 0, stderr
    assert_same_frames(out, unmoved)
    assert torch.load(out, weights_only=True)["meta"]["fingerprint_inputs"]["options"]["tolerance_s"] == 5e-4
