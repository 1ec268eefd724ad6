"""Write an `OfflineBuffer` as a LeRobot dataset, as LeRobot's learner does with its buffers at checkpoints."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from .offline import OfflineBuffer


def buffer_to_lerobot_dataset(
    buffer: OfflineBuffer,
    repo_id: str,
    fps: int = 1,
    root: str | Path | None = None,
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


def export_lerobot(
    path: str | Path,
    root: str | Path,
    *,
    repo_id: str | None = None,
    fps: int | None = None,
    task_name: str = "from_replay_buffer",
) -> tuple[Any, int]:
    """Write any bufconv buffer as a LeRobot dataset, on demand (`bufconv export PATH --lerobot DIR`).

    Args:
        path: A cache file (`offline_buffer.pt`) or an online buffer's folder (its last
            checkpoint, read without disturbing a learner that is writing it).
        root: The new dataset's folder (must not exist yet).
        repo_id: The dataset's repo id (default: the folder's name, under "bufconv/").
        fps: Frames per second recorded (default: the cache's source fps; 10 for an online buffer).

    Returns:
        (the LeRobotDataset, transitions written).

    Raises:
        CacheError: `root` exists, or `path` is not a bufconv buffer.
        ImportError: LeRobot is not installed.
    """
    from ..cache.segments import is_buffer_folder, read_manifest
    from ..errors import CacheError
    from .loader import open_buffer
    from .online import OnlineBuffer

    target = Path(root).expanduser().absolute()
    if target.exists():
        raise CacheError(f"{target}: already exists; export into a new folder", path=target)
    buffer: Any
    if is_buffer_folder(path):
        image_range = int(read_manifest(Path(path))["image_range"])
        buffer = OnlineBuffer(path=path, image_range=image_range, read_only=True, use_drq=False)
        default_fps = 10
    else:
        buffer = open_buffer(path, use_drq=False)
        default_fps = int(buffer.meta["source"].get("fps") or 10)
    dataset = buffer_to_lerobot_dataset(
        buffer,
        repo_id=repo_id or f"bufconv/{target.name}",
        fps=fps or default_fps,
        root=target,
        task_name=task_name,
    )
    return dataset, len(buffer)
