"""Shared fixtures: small real LeRobot datasets written by LeRobot's own writer (and bufconv's).

Datasets are written once per session per spec (writing encodes real AV1 video) and copied
into a test's tmp_path when the test modifies files.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pytest

CAMERAS = {"observation.images.front": (48, 64), "observation.images.wrist": (40, 32)}


@dataclass(frozen=True)
class Spec:
    """What a test dataset looks like."""

    cameras: tuple[tuple[str, tuple[int, int]], ...] = tuple(CAMERAS.items())
    lengths: tuple[int, ...] = (5, 1, 7, 3)
    fps: int = 10
    with_done: bool = True
    with_complementary: bool = True
    use_videos: bool = True
    video_files_size_in_mb: float | None = None
    """Small values make LeRobot roll videos over into several files per camera: 0.001 gives one
    file per episode; 0.02 gives files shared by several episodes once a camera has more than
    ~30 frames (a 48x64 camera writes ~0.5 KB a frame)."""
    state_dim: int = 6
    action_dim: int = 3
    seed: int = 0
    extra: tuple[str, ...] = field(default=())
    rgb_encoder: tuple[tuple[str, object], ...] = ()
    """Arguments of LeRobot's `RGBEncoderConfig` as (name, value) pairs, e.g. (("vcodec", "h264"),
    ("g", None)); empty: LeRobot's default (AV1, GOP 2)."""

    @property
    def frames(self) -> int:
        return sum(self.lengths)


def frame_image(h: int, w: int, t: int, episode: int, rng: np.random.Generator) -> np.ndarray:
    """A smooth moving pattern plus noise: real content for the encoder, different every frame."""
    yy, xx = np.mgrid[0:h, 0:w]
    image = np.empty((h, w, 3), np.int32)
    image[..., 0] = (xx * 4 + t * 9 + episode * 17) % 256
    image[..., 1] = (yy * 5 + t * 5) % 256
    image[..., 2] = ((xx + yy) * 3 + episode * 40) % 256
    image += rng.integers(-12, 13, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def episode_frames(spec: Spec) -> list[list[dict]]:
    """The frames of every episode (what gets written), deterministic for the spec."""
    rng = np.random.default_rng(spec.seed)
    episodes = []
    for e, length in enumerate(spec.lengths):
        frames = []
        for i in range(length):
            frame = {k: frame_image(h, w, i, e, rng) for k, (h, w) in spec.cameras}
            frame["observation.state"] = rng.standard_normal(spec.state_dim).astype(np.float32)
            frame["action"] = rng.standard_normal(spec.action_dim).astype(np.float32)
            frame["next.reward"] = np.array([float(i == length - 1)], np.float32)
            if spec.with_done:
                frame["next.done"] = np.array([i == length - 1])
            if spec.with_complementary:
                frame["complementary_info.discrete_penalty"] = np.array([rng.uniform(-1, 0)], np.float32)
            frames.append(frame)
        episodes.append(frames)
    return episodes


def write_with_lerobot(root: Path, spec: Spec, repo_id: str = "bufconv/test") -> Path:
    """Write a dataset with LeRobot's own writer (LeRobotDataset.create/add_frame/save_episode/finalize)."""
    from lerobot.datasets import LeRobotDataset

    features: dict = {}
    for key, (h, w) in spec.cameras:
        features[key] = {
            "dtype": "video" if spec.use_videos else "image",
            "shape": (h, w, 3),
            "names": ["height", "width", "channels"],
        }
    features["observation.state"] = {"dtype": "float32", "shape": (spec.state_dim,), "names": None}
    features["action"] = {"dtype": "float32", "shape": (spec.action_dim,), "names": None}
    features["next.reward"] = {"dtype": "float32", "shape": (1,), "names": None}
    if spec.with_done:
        features["next.done"] = {"dtype": "bool", "shape": (1,), "names": None}
    if spec.with_complementary:
        features["complementary_info.discrete_penalty"] = {"dtype": "float32", "shape": (1,), "names": None}
    kwargs = {}
    if spec.video_files_size_in_mb is not None:
        kwargs["video_files_size_in_mb"] = spec.video_files_size_in_mb
    if spec.rgb_encoder:
        from lerobot.configs.video import RGBEncoderConfig

        kwargs["rgb_encoder"] = RGBEncoderConfig(**dict(spec.rgb_encoder))
    logging.getLogger("libav").setLevel(logging.ERROR)
    dataset = LeRobotDataset.create(
        repo_id=repo_id, fps=spec.fps, features=features, root=root, use_videos=spec.use_videos, **kwargs
    )
    for frames in episode_frames(spec):
        for frame in frames:
            dataset.add_frame({**frame, "task": "pick the cube"})
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="session")
def lerobot_dataset(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Factory: `lerobot_dataset(**spec_fields)` -> path of a LeRobot-written dataset (shared, read-only)."""
    made: dict[Spec, Path] = {}

    def make(**fields: object) -> Path:
        spec = replace(Spec(), **fields)  # type: ignore[arg-type]
        if spec not in made:
            made[spec] = write_with_lerobot(tmp_path_factory.mktemp("lerobot") / "dataset", spec)
        return made[spec]

    return make


@pytest.fixture
def dataset_copy(tmp_path: Path, lerobot_dataset: Callable[..., Path]) -> Callable[..., Path]:
    """Factory: a private copy of a LeRobot-written dataset, for tests that modify files."""

    def make(**fields: object) -> Path:
        target = tmp_path / "dataset"
        shutil.copytree(lerobot_dataset(**fields), target)
        return target

    return make


@pytest.fixture
def spec() -> type[Spec]:
    return Spec


@pytest.fixture(autouse=True)
def _workers_even_for_tiny_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    """Builds asking for several workers use worker processes even on test-sized datasets
    (in real use, small datasets are decoded in-process: workers would cost more than they save)."""
    import bufconv.convert.plan

    monkeypatch.setattr(bufconv.convert.plan, "MIN_PARALLEL_PIXELS", 0)
    monkeypatch.setattr(bufconv.convert.plan, "default_workers", lambda: 64)  # CI machines may have 2 cores
