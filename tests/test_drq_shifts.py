"""DrQ as LeRobot does it: offsets up to 4 pixels, drawn independently for every image.

LeRobot 0.6.1's `ReplayBuffer` augments with `functools.partial(random_shift, pad=4)` applied to
one tensor that stacks every camera's state *and* next_state images, so each image gets its own
(dy, dx) in [-4, 4]^2. These tests recover the offset bufconv applied to each sampled image and
check the offsets span that whole square and are not shared between state and next_state.

The dataset holds lossless PNG noise, so every one of the 81 shifts of a frame is a different
image and the offset of a sampled image can be read back exactly.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bufconv
from bufconv.source.writer import EpisodeData, write_dataset

FRONT, WRIST = "observation.images.front", "observation.images.wrist"
LEROBOT_PAD = 4  # lerobot/rl/buffer.py: `functools.partial(random_shift, pad=4)`
OFFSETS = torch.cartesian_prod(torch.arange(2 * LEROBOT_PAD + 1), torch.arange(2 * LEROBOT_PAD + 1))
SAMPLES = 210  # 30 batches of the 7 transitions


def lerobot_crop(frame: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """LeRobot's shift of one (C, H, W) frame at crop origin (dy, dx): replicate-pad 4, crop back."""
    _, h, w = frame.shape
    padded = F.pad(frame[None], (LEROBOT_PAD,) * 4, mode="replicate")[0]
    return padded[:, dy : dy + h, dx : dx + w]


def all_shifts(frame: torch.Tensor) -> torch.Tensor:
    """LeRobot's 81 shifts of `frame`, (81, C, H, W), in the order of OFFSETS."""
    return torch.stack([lerobot_crop(frame, dy, dx) for dy, dx in OFFSETS.tolist()])


def offset_of(image: torch.Tensor, shifts: torch.Tensor) -> tuple[int, int]:
    """The unique crop origin (dy, dx) in [0, 8]^2 at which LeRobot's shift of the frame is `image`."""
    matches = torch.nonzero((shifts == image).flatten(1).all(dim=1)).flatten().tolist()
    assert len(matches) == 1, f"not exactly one pad-{LEROBOT_PAD} shift of its frame: {matches}"
    dy, dx = OFFSETS[matches[0]].tolist()
    return dy, dx


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two episodes (4 and 3 frames) of two 16x12 noise cameras, stored as PNG (lossless)."""
    rng = np.random.default_rng(7)
    folder = tmp_path_factory.mktemp("drq")
    episodes = []
    for length in (4, 3):
        frames = {
            FRONT: rng.integers(0, 256, (length, 16, 12, 3), dtype=np.uint8),
            WRIST: rng.integers(0, 256, (length, 16, 12, 3), dtype=np.uint8),
            "observation.state": rng.standard_normal((length, 2)).astype(np.float32),
            "action": rng.standard_normal((length, 2)).astype(np.float32),
            "next.reward": np.zeros(length, np.float32),
            "next.done": np.arange(length) == length - 1,
        }
        episodes.append(EpisodeData(frames))
    root = write_dataset(folder / "dataset", episodes, fps=10, image_keys=(FRONT, WRIST))
    return Path(bufconv.build(root, folder / "offline_buffer.pt", workers=1).path)


def sampled_offsets(cache: Path) -> dict[tuple[str, str], list[tuple[int, int]]]:
    """Per (side, camera): the offset of each sampled image, read back against its unshifted frame."""
    buf = bufconv.open_buffer(cache, use_drq=True, generator=torch.Generator().manual_seed(3))
    plain = buf[list(range(len(buf)))]  # no augmentation
    states = plain["state"]["observation.state"]
    shifts = {
        (side, key): [all_shifts(frame) for frame in plain[side][key]]
        for side in ("state", "next_state")
        for key in (FRONT, WRIST)
    }
    offsets: dict[tuple[str, str], list[tuple[int, int]]] = {}
    for _ in range(SAMPLES // len(buf)):  # a batch holds at most len(buf) transitions, as in LeRobot
        batch = buf.sample(len(buf))
        for b in range(len(buf)):
            (row,) = (
                torch.nonzero((states == batch["state"]["observation.state"][b]).all(dim=1))
                .flatten()
                .tolist()
            )
            for side in ("state", "next_state"):
                for key in (FRONT, WRIST):
                    offset = offset_of(batch[side][key][b], shifts[(side, key)][row])
                    offsets.setdefault((side, key), []).append(offset)
    return offsets


def test_offsets_span_lerobots_pad_of_4(cache: Path) -> None:
    """Every crop origin from 0 to 8 occurs on both axes, for every camera, state and next_state.

    With 210 draws per image slot, an origin that LeRobot's pad 4 allows is missed with
    probability below 1e-9; a smaller pad never produces origins 0, 1, 7 or 8.
    """
    for (side, key), offsets in sampled_offsets(cache).items():
        rows, cols = Counter(dy for dy, _ in offsets), Counter(dx for _, dx in offsets)
        assert sorted(rows) == list(range(2 * LEROBOT_PAD + 1)), f"{side}[{key}] row offsets {sorted(rows)}"
        assert sorted(cols) == list(range(2 * LEROBOT_PAD + 1)), (
            f"{side}[{key}] column offsets {sorted(cols)}"
        )


def test_state_and_next_state_are_shifted_independently(cache: Path) -> None:
    """state and next_state of a transition get their own offsets (as do the cameras), as in LeRobot.

    Independent draws coincide with probability 1/81 (about 2-3 of 210); one shared draw, always.
    """
    offsets = sampled_offsets(cache)
    for key in (FRONT, WRIST):
        same = sum(a == b for a, b in zip(offsets[("state", key)], offsets[("next_state", key)], strict=True))
        assert same < SAMPLES // 10, (
            f"{key}: state and next_state share the offset in {same} of {SAMPLES} samples"
        )
    for side in ("state", "next_state"):
        same = sum(a == b for a, b in zip(offsets[(side, FRONT)], offsets[(side, WRIST)], strict=True))
        assert same < SAMPLES // 10, f"{side}: the cameras share the offset in {same} of {SAMPLES} samples"
