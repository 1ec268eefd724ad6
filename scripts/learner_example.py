#!/usr/bin/env python
"""A learner-style loop with one range everywhere: the README's worked example, runnable.

An encoder trained in simulation normalises its own inputs (x / 255 - 0.5), so it wants images
in [0,255]. The offline buffer is built with range 255; live observations go through the same
range-aware preprocessing; every batch is a 50/50 mix of both; the encoder is guarded. At the
end, the classic bug — dividing by 255 twice — is stopped at the encoder with a clear error.

    .venv/bin/python scripts/learner_example.py [--dir DIR]

Needs LeRobot for the online buffer (`pip install -e ".[dev]"`); the offline side does not.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

import bufconv
from bufconv.demo import CAMERAS, synthetic_episodes
from bufconv.source.writer import write_dataset

RANGE = 255  # the encoder below divides by 255 itself


class SimEncoder(nn.Module):
    """A tiny image encoder that normalises its own inputs, as many sim-trained encoders do."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 5, stride=4)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.conv(images / 255.0 - 0.5).mean(dim=(2, 3))


def live_observation(rng: np.random.Generator) -> dict:
    """What a gym-style robot env returns: uint8 channel-last pixels and a state vector."""
    pixels = {
        k.rsplit(".", 1)[-1]: rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for k, (h, w) in CAMERAS.items()
    }
    return {"pixels": pixels, "agent_pos": rng.standard_normal(6).astype(np.float32)}


def main() -> None:
    from lerobot.rl.buffer import ReplayBuffer, concatenate_batch_transitions

    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", type=Path, default=None)
    workdir = parser.parse_args().dir or Path(tempfile.mkdtemp(prefix="bufconv-example-"))
    dataset = workdir / "pick_cube"
    if not dataset.exists():
        write_dataset(dataset, synthetic_episodes(), fps=10)

    # Offline: the recorded demonstrations, served in [0,255].
    offline = bufconv.load_or_build(
        dataset, workdir / "offline_buffer.pt", image_range=RANGE, generator=torch.Generator().manual_seed(0)
    )
    print(f"offline buffer: {offline}")

    # Online: LeRobot's own buffer, fed through range-aware preprocessing (LeRobot's would give [0,1]).
    online = ReplayBuffer(
        capacity=1000, device="cpu", state_keys=offline.state_keys, use_drq=False, optimize_memory=True
    )
    encoder = SimEncoder()
    guard = bufconv.guard_encoder(encoder, image_range=RANGE)
    camera = "observation.images.front"

    rng = np.random.default_rng(0)
    observation = bufconv.preprocess_observation(live_observation(rng), image_range=RANGE)
    for _ in range(40):
        next_observation = bufconv.preprocess_observation(live_observation(rng), image_range=RANGE)
        for image_key in offline.image_keys:
            bufconv.check_range(observation[image_key], RANGE, name=image_key)  # actor -> buffer boundary
        online.add(
            state=observation,
            action=torch.zeros(1, 3),
            reward=0.0,
            next_state=next_observation,
            done=False,
            truncated=False,
        )
        observation = next_observation
        if len(online) >= 16:
            batch = concatenate_batch_transitions(online.sample(16), offline.sample(16))  # 50/50 mix
            features = encoder(batch["state"][camera])  # buffer -> encoder boundary, guarded
    images = batch["state"][camera]
    print(
        f"mixed batch of {len(images)}: {camera} in [{images.min():.0f}, {images.max():.0f}], "
        f"encoder features {tuple(features.shape)}"
    )

    # The bug this project ends: someone divides by 255 on top of the encoder's own division.
    try:
        encoder(batch["state"][camera] / 255.0)
    except bufconv.RangeMismatchError as error:
        print(f"caught at the encoder: {error}")
    else:
        raise SystemExit("the guard let [0,1] images into a [0,255] encoder")
    guard.remove()


if __name__ == "__main__":
    main()
