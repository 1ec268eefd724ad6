"""A buffer's transitions written as a LeRobot dataset, as LeRobot's learner writes its buffers at checkpoints.

Takes any buffer that reads out its transitions by position (`OfflineBuffer`, `OnlineBuffer`);
imports LeRobot inside the function that needs it, so this module loads without it.
"""

from __future__ import annotations

import os
from typing import Any, Protocol

import torch

from .batch import BatchTransition


class Transitions(Protocol):
    """What `buffer_to_lerobot_dataset` reads from a buffer (`OfflineBuffer` and `OnlineBuffer` are)."""

    @property
    def image_keys(self) -> list[str]: ...

    @property
    def image_range(self) -> int: ...

    def __len__(self) -> int: ...

    def __getitem__(self, idx: list[int]) -> BatchTransition: ...


def buffer_to_lerobot_dataset(
    buffer: Transitions,
    repo_id: str,
    fps: int = 1,
    root: str | os.PathLike[str] | None = None,
    task_name: str = "from_replay_buffer",
) -> Any:
    """Every transition of `buffer` (dataset part, then added ones) as a new LeRobot dataset.

    Mirrors `ReplayBuffer.to_lerobot_dataset` of LeRobot: images become `image` features (PNG),
    an episode ends where a transition is done or truncated. Images are written as uint8, so
    the dataset round-trips through bufconv whatever the buffer's range.
    """
    from lerobot.datasets import LeRobotDataset

    if len(buffer) == 0:
        raise ValueError("The replay buffer is empty. Cannot convert to a dataset.")
    first = buffer[[0]]
    features: dict[str, Any] = {
        "action": {"dtype": "float32", "shape": tuple(first["action"].shape[1:]), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    for key, value in first["state"].items():
        if key in buffer.image_keys:
            c, h, w = value.shape[1:]
            features[key] = {"dtype": "image", "shape": (h, w, c), "names": ["height", "width", "channels"]}
        else:
            features[key] = {"dtype": "float32", "shape": tuple(value.shape[1:]) or (1,), "names": None}
    for short in first.get("complementary_info") or {}:
        features[f"complementary_info.{short}"] = {"dtype": "float32", "shape": (1,), "names": None}
    dataset = LeRobotDataset.create(repo_id=repo_id, fps=fps, root=root, features=features, use_videos=False)
    for start in range(0, len(buffer), 256):
        batch = buffer[list(range(start, min(start + 256, len(buffer))))]
        for i in range(len(batch["action"])):
            frame: dict[str, Any] = {"task": task_name, "action": batch["action"][i]}
            frame["next.reward"] = batch["reward"][i : i + 1]
            frame["next.done"] = batch["done"][i : i + 1].bool()
            for key, value in batch["state"].items():
                if key in buffer.image_keys:
                    pixels = value[i] * 255 if buffer.image_range == 1 else value[i]
                    frame[key] = pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                else:
                    frame[key] = value[i].reshape(features[key]["shape"])
            for short, value in (batch.get("complementary_info") or {}).items():
                frame[f"complementary_info.{short}"] = value[i : i + 1]
            dataset.add_frame(frame)
            if bool(batch["done"][i]) or bool(batch["truncated"][i]):
                dataset.save_episode()
    if dataset.has_pending_frames():
        dataset.save_episode()
    dataset.finalize()
    return dataset
