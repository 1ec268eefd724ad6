"""Crafted caches: valid digests and checksums, wrong contents. Only the content checks catch them.

A flipped byte (tests/test_corruption.py) fails the integrity digest or a tensor checksum before
any content check runs. Here a real cache is read, one thing in it is changed, and the result is
written back with bufconv's own `CacheWriter`, so its integrity record and every tensor checksum
are right. Two contents must still be refused:

- a transition whose next_state is a frame of another episode (`inconsistent`): sampling would
  hand the learner a transition that never happened;
- image frames scaled to [0,1] before being stored as uint8 (`double-normalized`): every pixel
  is 0 or 1, the learner would see black images.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import bufconv
from bufconv.cache.reader import TensorSpec
from bufconv.cache.writer import CacheWriter
from bufconv.cli import cli
from bufconv.errors import InvalidCacheError

FRONT, WRIST = "observation.images.front", "observation.images.wrist"

Edit = Callable[[dict[str, Any], dict[str, torch.Tensor]], None]


@pytest.fixture(scope="module")
def original(lerobot_dataset: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of the default LeRobot-written dataset: episodes of 5, 1, 7 and 3 frames, two cameras."""
    path = tmp_path_factory.mktemp("crafted") / "offline_buffer.pt"
    bufconv.build(lerobot_dataset(), path, workers=1)
    return path


def rewrite(original: Path, path: Path, edit: Edit) -> None:
    """Write `original` with `edit(meta, tensors)` applied, as bufconv writes caches (valid digests)."""
    top = torch.load(original, weights_only=True)
    meta = {k: v for k, v in top["meta"].items() if k != "tensors"}
    tensors = {name: tensor.clone() for name, tensor in top["tensors"].items()}
    edit(meta, tensors)
    specs = [TensorSpec(name, tensor.dtype, tuple(tensor.shape)) for name, tensor in tensors.items()]
    with CacheWriter(path, specs) as writer:
        for name, tensor in tensors.items():
            writer.write(name, tensor.numpy())
        writer.seal(meta)
        writer.commit()


def verify_cli(path: Path) -> tuple[int, dict[str, Any]]:
    result = CliRunner().invoke(cli, ["verify", str(path), "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    return result.exit_code, json.loads(result.stdout)


def unchanged(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    pass


def next_state_in_the_next_episode(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Episode 0's last transition (row 4) gets episode 1's first frame (row 5) as next_state."""
    first, second = meta["episodes"][:2]
    last = first["start"] + first["length"] - 1
    assert tensors["next_index"][last] == last and second["start"] == last + 1  # the fixture's layout
    tensors["next_index"][last] = second["start"]
    tensors["done"][last] = False  # as if the episode went on


def scale_to_unit(*keys: str) -> Edit:
    """Frames of `keys` as if divided by 255 and rounded before being stored: every pixel 0 or 1."""

    def edit(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        for key in keys:
            tensors[key] = (tensors[key].float() / 255).round().to(torch.uint8)

    return edit


def black(meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    tensors[FRONT] = torch.zeros_like(tensors[FRONT])


def test_rewritten_cache_is_valid(
    original: Path, lerobot_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    """The control: rewritten unchanged, the cache verifies (API and CLI) and is a hit."""
    path = tmp_path / "offline_buffer.pt"
    rewrite(original, path, unchanged)
    assert bufconv.verify(path).ok
    assert verify_cli(path)[0] == 0
    assert bufconv.load_or_build(lerobot_dataset(), path, workers=1, use_drq=False).status == "hit"


def test_cross_episode_transition_is_inconsistent(
    original: Path, lerobot_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    """next_index pointing into the next episode, digests valid: `inconsistent` from verify (API and
    CLI), refused by open_buffer, replaced by load_or_build."""
    path = tmp_path / "offline_buffer.pt"
    rewrite(original, path, next_state_in_the_next_episode)

    report = bufconv.verify(path)
    assert [p.code for p in report.problems] == ["inconsistent"]
    assert "episode" in report.problems[0].message
    code, out = verify_cli(path)
    assert code == 1
    assert [p["code"] for p in out["problems"]] == ["inconsistent"]
    with pytest.raises(InvalidCacheError):
        bufconv.open_buffer(path)

    buffer = bufconv.load_or_build(lerobot_dataset(), path, workers=1, use_drq=False)
    assert buffer.status == "rebuilt"
    assert torch.equal(
        torch.load(path, weights_only=True)["tensors"]["next_index"],
        torch.load(original, weights_only=True)["tensors"]["next_index"],
    )


@pytest.mark.parametrize("keys", [(FRONT,), (FRONT, WRIST)], ids=["front", "both"])
def test_pixels_scaled_to_unit_are_double_normalized(
    keys: tuple[str, ...], original: Path, tmp_path: Path
) -> None:
    """Stored frames whose pixels are all 0 or 1: `double-normalized` for each such camera, the
    observed [0, 1] range reported; `--quick` (no pixel reads) does not look."""
    path = tmp_path / "offline_buffer.pt"
    rewrite(original, path, scale_to_unit(*keys))

    report = bufconv.verify(path)
    assert [p.code for p in report.problems] == ["double-normalized"] * len(keys)
    for key, problem in zip(keys, report.problems, strict=True):
        assert problem.message.startswith(key)
    observed = {o.name: (o.min, o.max) for o in report.observed}
    assert all(observed[key] == (0.0, 1.0) for key in keys)
    assert all(observed[key][1] > 1 for key in {FRONT, WRIST} - set(keys))
    code, out = verify_cli(path)
    assert code == 1
    assert [p["code"] for p in out["problems"]] == ["double-normalized"] * len(keys)
    assert bufconv.verify(path, quick=True).ok


def test_black_frames_are_not_double_normalized(original: Path, tmp_path: Path) -> None:
    """All-zero frames are ambiguous (a camera with its cap on), so they are accepted."""
    path = tmp_path / "offline_buffer.pt"
    rewrite(original, path, black)
    assert bufconv.verify(path).ok
