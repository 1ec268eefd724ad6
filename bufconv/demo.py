"""`bufconv demo`: the whole job on an embedded example, with no network and no LeRobot install.

It writes a small LeRobot v3.0 dataset (two cameras encoded as AV1 video by bufconv's writer),
builds it with range 255, verifies the cache, samples a batch and prints the observed value
ranges, then shows the range guard refusing [0,1] images in a [0,255] buffer.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .buffer.loader import load_or_build
from .cache.verification import verify
from .convert.build import build
from .errors import BufconvError, RangeMismatchError
from .source.writer import EpisodeData, write_dataset

_MARKER = ".bufconv-demo"
EPISODES = 4
FRAMES = 30
FPS = 10
CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 64)}


@dataclass(frozen=True)
class DemoSummary:
    """What the demo did, for callers (and tests) that want more than the printed lines."""

    dataset: Path
    cache: Path
    frames: int
    image_range: int
    observed: dict[str, tuple[float, float]]


def synthetic_episodes(episodes: int = EPISODES, frames: int = FRAMES, seed: int = 0) -> list[EpisodeData]:
    """A cube moving over a textured table, seen by two cameras; deterministic for a seed."""
    rng = np.random.default_rng(seed)
    out = []
    for e in range(episodes):
        start, goal = rng.uniform(0.15, 0.85, 2), rng.uniform(0.15, 0.85, 2)
        images: dict[str, list[np.ndarray]] = {k: [] for k in CAMERAS}
        state, action = [], []
        for t in range(frames):
            pos = start + (goal - start) * t / (frames - 1)
            for key, (h, w) in CAMERAS.items():
                images[key].append(_render(h, w, pos, zoom=2.0 if key.endswith("wrist") else 1.0, tint=e))
            state.append(np.concatenate([pos, goal, [t / frames, e]]).astype(np.float32))
            action.append(np.concatenate([(goal - start) / frames, [1.0]]).astype(np.float32))
        reward = np.zeros(frames, np.float32)
        reward[-1] = 1.0
        done = np.zeros(frames, bool)
        done[-1] = True
        data = {k: np.stack(v) for k, v in images.items()}
        data.update(
            {
                "observation.state": np.stack(state),
                "action": np.stack(action),
                "next.reward": reward,
                "next.done": done,
                "complementary_info.discrete_penalty": np.zeros(frames, np.float32),
            }
        )
        out.append(EpisodeData(frames=data, task="move the cube to the goal"))
    return out


def _render(h: int, w: int, pos: np.ndarray, zoom: float, tint: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    image = np.empty((h, w, 3), np.float32)
    image[..., 0] = 40 + 60 * (xx / w)
    image[..., 1] = 70 + 50 * (yy / h)
    image[..., 2] = 90 + 20 * tint + 30 * ((xx // 8 + yy // 8) % 2)
    cy, cx = pos[1] * h, pos[0] * w
    half = 0.08 * zoom * min(h, w)
    cube = (np.abs(yy - cy) < half) & (np.abs(xx - cx) < half)
    image[cube] = (235, 40, 30)
    return np.clip(image, 0, 255).astype(np.uint8)


def run_demo(directory: str | Path | None = None, echo: Callable[[str], object] = print) -> DemoSummary:
    """Run the demo in `directory` (default: a new temporary folder) and print what happens."""
    root = Path(directory) if directory is not None else Path(tempfile.mkdtemp(prefix="bufconv-demo-"))
    root.mkdir(parents=True, exist_ok=True)
    dataset = root / "pick_cube"
    cache = root / "offline_buffer.pt"
    marker = dataset / _MARKER
    if dataset.exists():
        if not marker.is_file():  # never delete a folder the demo did not make
            raise BufconvError(f"{dataset}: exists and was not made by bufconv demo; choose another --dir")
        shutil.rmtree(dataset)

    write_dataset(dataset, synthetic_episodes(), fps=FPS, layout="v3.0")
    marker.write_text("made by bufconv demo; safe to delete\n")
    cams = ", ".join(f"{k} {h}x{w}" for k, (h, w) in CAMERAS.items())
    echo(
        f"1. wrote a LeRobot v3.0 dataset with AV1 video: {EPISODES} episodes, {EPISODES * FRAMES} frames, cameras {cams}"
    )
    echo(f"   {dataset}")

    result = build(dataset, cache, image_range=255, workers=1, force=True)
    echo(
        f"2. built {cache.name} with --range 255: {result.frames} frames in {result.seconds:.2f} s, "
        f"{result.file_bytes / 1e6:.2f} MB (uint8 frames; next_state by index, never stored twice)"
    )

    report = verify(cache, dataset=dataset, image_range=255)
    if not report.ok:
        raise BufconvError("demo cache failed verification: " + "; ".join(p.message for p in report.problems))
    echo(f"3. verified: {', '.join(report.checked)}: ok")

    buffer = load_or_build(dataset, cache, image_range=255, generator=torch.Generator().manual_seed(0))
    batch = buffer.sample(32)
    observed = {}
    echo(f"4. load_or_build: status {buffer.status!r}, {len(buffer)} transitions; sampled a batch of 32:")
    for key in buffer.image_keys:
        images = batch["state"][key]
        lo, hi = float(images.min()), float(images.max())
        observed[key] = (lo, hi)
        echo(
            f"   {key}: {str(images.dtype).removeprefix('torch.')} {tuple(images.shape)} values in [{lo:.1f}, {hi:.1f}]"
        )
    echo(
        f"   action {tuple(batch['action'].shape)}, reward {tuple(batch['reward'].shape)}, done {tuple(batch['done'].shape)}"
    )

    key = buffer.image_keys[0]
    wrong = {k: v[:1] / 255.0 if k in buffer.image_keys else v[:1] for k, v in batch["state"].items()}
    try:
        buffer.add(wrong, batch["action"][:1], 0.0, wrong, False, False)
    except RangeMismatchError as e:
        echo(
            f"5. range guard: a live [0,1] image was refused by the [0,255] buffer: {e.key}, observed max {e.found_max:.3f}"
        )
    else:
        raise BufconvError(f"demo: the range guard accepted [0,1] images for {key} in a [0,255] buffer")
    echo(f"bufconv demo: ok (images come out as floats in [0,255]; files in {root})")
    return DemoSummary(dataset, cache, result.frames, buffer.image_range, observed)
