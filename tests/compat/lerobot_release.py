"""The installed LeRobot release, as the compatibility tests drive it: its own writer, reader,
replay buffer, learner and config classes, each imported from where that release has it.

These helpers are the tests' own (they do not go through bufconv's compatibility code, which is
what the tests hold against the release).
"""

from __future__ import annotations

import importlib
import inspect
import logging
from importlib import metadata
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

VERSION = metadata.version("lerobot")
REPO_ID = "bufconv/compat"
FRONT, WRIST, STATE = "observation.images.front", "observation.images.wrist", "observation.state"
SHAPES = {FRONT: (48, 64), WRIST: (40, 32)}  # (H, W)
LENGTHS = (5, 1, 7, 3)
FPS = 10
TASK = "pick the cube"


def first(*names: str) -> ModuleType:
    """The first of `names` that this release has."""
    for name in names:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name is None or not name.startswith(e.name):
                raise
    raise ModuleNotFoundError(f"LeRobot {VERSION} has none of {', '.join(names)}")


def dataset_class() -> Any:
    return importlib.import_module("lerobot.datasets.lerobot_dataset").LeRobotDataset


def codebase_version() -> str:
    """The layout this release's writer writes (its CODEBASE_VERSION)."""
    return first("lerobot.datasets.dataset_metadata", "lerobot.datasets.lerobot_dataset").CODEBASE_VERSION


def replay_buffer_class() -> Any:
    return first("lerobot.rl.buffer", "lerobot.utils.buffer").ReplayBuffer


def learner_module() -> ModuleType:
    return first("lerobot.rl.learner", "lerobot.scripts.rl.learner")


def frames() -> list[list[dict[str, Any]]]:
    """Every episode's frames: moving patterns plus noise (real content for the video encoder)."""
    rng = np.random.default_rng(0)
    episodes = []
    for e, length in enumerate(LENGTHS):
        episode = []
        for i in range(length):
            frame: dict[str, Any] = {}
            for key, (h, w) in SHAPES.items():
                yy, xx = np.mgrid[0:h, 0:w]
                image = np.stack(
                    [(xx * 4 + i * 9 + e * 17) % 256, (yy * 5 + i * 5) % 256, ((xx + yy) * 3 + e * 40) % 256],
                    -1,
                )
                frame[key] = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
            frame[STATE] = rng.standard_normal(6).astype(np.float32)
            frame["action"] = rng.standard_normal(3).astype(np.float32)
            frame["next.reward"] = np.array([float(i == length - 1)], np.float32)
            frame["next.done"] = np.array([i == length - 1])
            frame["complementary_info.discrete_penalty"] = np.array([rng.uniform(-1, 0)], np.float32)
            episode.append(frame)
        episodes.append(episode)
    return episodes


def write_dataset(root: Path) -> Path:
    """A dataset written by this release's own writer: the front camera as AV1 video, the wrist
    camera as PNG `image` features, state, action, reward, done, complementary info."""
    features: dict[str, Any] = {
        FRONT: {"dtype": "video", "shape": (*SHAPES[FRONT], 3), "names": ["height", "width", "channels"]},
        WRIST: {"dtype": "image", "shape": (*SHAPES[WRIST], 3), "names": ["height", "width", "channels"]},
        STATE: {"dtype": "float32", "shape": (6,), "names": None},
        "action": {"dtype": "float32", "shape": (3,), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
        "complementary_info.discrete_penalty": {"dtype": "float32", "shape": (1,), "names": None},
    }
    logging.getLogger("libav").setLevel(logging.ERROR)
    dataset = dataset_class().create(repo_id=REPO_ID, fps=FPS, features=features, root=root, use_videos=True)
    task_argument = "task" in inspect.signature(dataset.add_frame).parameters  # 0.3.x
    for episode in frames():
        for frame in episode:
            if task_argument:
                dataset.add_frame(dict(frame), task=TASK)
            else:
                dataset.add_frame({**frame, "task": TASK})
        dataset.save_episode()
    if hasattr(dataset, "finalize"):  # v3.0 writers (0.4 and later)
        dataset.finalize()
    return root


def read_dataset(root: Path) -> Any:
    """This release's reader on a local dataset, decoding with PyAV."""
    return dataset_class()(REPO_ID, root=root, video_backend="pyav")


def from_lerobot_dataset(dataset: Any, state_keys: list[str]) -> Any:
    """This release's `ReplayBuffer.from_lerobot_dataset` (no DrQ, no memory optimisation)."""
    return replay_buffer_class().from_lerobot_dataset(
        dataset,
        device="cpu",
        state_keys=state_keys,
        use_drq=False,
        storage_device="cpu",
        optimize_memory=False,
    )


def make_config(root: Path, output_dir: Path, capacity: int = 40) -> Any:
    """This release's own RL training config, as `--config_path train_config.json` would build it."""
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.types import FeatureType, PolicyFeature

    train = first("lerobot.rl.train_rl", "lerobot.configs.train")
    try:  # 0.6: the SAC actor became GaussianActorConfig
        from lerobot.policies.gaussian_actor.configuration_gaussian_actor import GaussianActorConfig as Policy
    except ModuleNotFoundError:
        from lerobot.policies.sac.configuration_sac import SACConfig as Policy

    shapes = {FRONT: (3, *SHAPES[FRONT]), WRIST: (3, *SHAPES[WRIST]), STATE: (6,)}
    features = {
        key: PolicyFeature(type=FeatureType.STATE if key == STATE else FeatureType.VISUAL, shape=shape)
        for key, shape in shapes.items()
    }
    policy = Policy(
        input_features=features,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(3,))},
        offline_buffer_capacity=capacity,
    )
    return train.TrainRLServerPipelineConfig(
        dataset=DatasetConfig(repo_id=REPO_ID, root=str(root)), policy=policy, output_dir=output_dir
    )
