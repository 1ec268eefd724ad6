"""A buffer's transitions written as a LeRobot dataset, as LeRobot's learner writes its buffers at checkpoints.

Takes any buffer that reads out its transitions by position (`OfflineBuffer`, `OnlineBuffer`);
imports LeRobot inside the function that needs it, so this module loads without it.

The installed release's own writer writes it, in that release's layout (v2.1 for 0.3.x, v3.0
from 0.4); `_Writer` holds what differs between releases, each found by what the writer has:
where `LeRobotDataset` is importable from, whether `add_frame` takes the task as an argument
(0.3.x) or in the frame, and whether there are pending frames to save and a `finalize()` to call.
"""

from __future__ import annotations

import importlib
import inspect
import os
from typing import Any, Protocol

import torch

from .batch import BatchTransition

_WRITER_MODULE = "lerobot.datasets.lerobot_dataset"  # where every release from 0.3 has LeRobotDataset


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
    the dataset round-trips through bufconv whatever the buffer's range. Depth keys become
    depth image features (TIFF, `info.is_depth_map`, LeRobot 0.6's form; see `_depth_forms`).
    """
    if len(buffer) == 0:
        raise ValueError("The replay buffer is empty. Cannot convert to a dataset.")
    first = buffer[[0]]
    features: dict[str, Any] = {
        "action": {"dtype": "float32", "shape": tuple(first["action"].shape[1:]), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    units: dict[str, str] = dict(getattr(buffer, "depth_units", None) or {})  # OfflineBuffer, OnlineBuffer
    depth = _depth_forms(buffer, units)
    for key, value in first["state"].items():
        if key in depth:
            features[key] = {
                "dtype": "image", "shape": (*value.shape[2:], 1), "names": ["height", "width", "channels"],
                "info": {"is_depth_map": True, "depth_unit": depth[key]},
            }  # fmt: skip
        elif key in buffer.image_keys:
            c, h, w = value.shape[1:]
            features[key] = {"dtype": "image", "shape": (h, w, c), "names": ["height", "width", "channels"]}
        else:
            features[key] = {"dtype": "float32", "shape": tuple(value.shape[1:]) or (1,), "names": None}
    for short in first.get("complementary_info") or {}:
        features[f"complementary_info.{short}"] = {"dtype": "float32", "shape": (1,), "names": None}
    writer = _Writer.create(repo_id=repo_id, fps=fps, root=root, features=features)
    for start in range(0, len(buffer), 256):
        batch = buffer[list(range(start, min(start + 256, len(buffer))))]
        for i in range(len(batch["action"])):
            frame: dict[str, Any] = {"action": batch["action"][i]}
            frame["next.reward"] = batch["reward"][i : i + 1]
            frame["next.done"] = batch["done"][i : i + 1].bool()
            for key, value in batch["state"].items():
                if key in depth:
                    frame[key] = _depth_frame(value[i], units[key], depth[key])
                elif key in buffer.image_keys:
                    pixels = value[i] * 255 if buffer.image_range == 1 else value[i]
                    frame[key] = pixels.round().clamp(0, 255).to(torch.uint8).permute(1, 2, 0).numpy()
                else:
                    frame[key] = value[i].reshape(features[key]["shape"])
            for short, value in (batch.get("complementary_info") or {}).items():
                frame[f"complementary_info.{short}"] = value[i : i + 1]
            writer.add_frame(frame, task_name)
            if bool(batch["done"][i]) or bool(batch["truncated"][i]):
                writer.dataset.save_episode()
    return writer.close()


def _depth_forms(buffer: Transitions, units: dict[str, str]) -> dict[str, str]:
    """The unit each depth key is written in, as LeRobot 0.6's writer records depth: millimetres as
    uint16 TIFFs, metres as float32 ones. A mm key whose values are all whole millimetres in
    [0, 65535] (a RealSense's) is written as uint16 mm, exactly; any other as float32 metres
    (LeRobot reads it back in mm as `x * 1000`: within float32 rounding). Metres stay metres."""
    whole = {key for key, unit in units.items() if unit == "mm"}
    for start in range(0, len(buffer), 256):
        if not whole:
            break
        batch = buffer[list(range(start, min(start + 256, len(buffer))))]
        for key in list(whole):
            x = batch["state"][key]
            if not bool(((x == x.round()) & (x >= 0) & (x <= 65535)).all()):
                whole.discard(key)
    return {key: "mm" if key in whole else "m" for key in units}


def _depth_frame(depth: torch.Tensor, unit: str, written: str) -> Any:
    """One (1, H, W) float32 depth row in `unit` as the (H, W, 1) array of its TIFF (`_depth_forms`)."""
    import numpy as np

    from ..ranges import to_unit

    if written == "mm":
        return depth.permute(1, 2, 0).numpy().astype(np.uint16)
    return to_unit(depth, unit, "m").permute(1, 2, 0).contiguous().numpy()


class _Writer:
    """The installed LeRobot's `LeRobotDataset` writer, called as that release wants."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        add_frame = inspect.signature(dataset.add_frame).parameters
        self.task_argument = "task" in add_frame  # 0.3.x: add_frame(frame, task); later: frame["task"]

    @classmethod
    def create(cls, **kwargs: Any) -> _Writer:
        try:
            module = importlib.import_module(_WRITER_MODULE)
        except ModuleNotFoundError as e:
            if e.name is None or not _WRITER_MODULE.startswith(e.name):
                raise  # a dependency of LeRobot's writer (datasets, ...) is missing: say which
            raise ImportError(
                f"writing a LeRobot dataset needs LeRobot's writer ({_WRITER_MODULE}.LeRobotDataset, "
                f"LeRobot 0.3.3 and later; installed: {_lerobot_version()}): pip install 'bufconv[lerobot]'"
            ) from e
        return cls(module.LeRobotDataset.create(use_videos=False, **kwargs))

    def add_frame(self, frame: dict[str, Any], task: str) -> None:
        if self.task_argument:
            self.dataset.add_frame(frame, task=task)
        else:
            self.dataset.add_frame({**frame, "task": task})

    def pending(self) -> bool:
        """Frames added since the last `save_episode` (0.3.x and 0.4.x have no `has_pending_frames`)."""
        has_pending = getattr(self.dataset, "has_pending_frames", None)
        if has_pending is not None:
            return bool(has_pending())
        episode = self.dataset.episode_buffer
        return episode is not None and episode["size"] > 0

    def close(self) -> Any:
        """Save the last episode and, where the release has it, `finalize()` (parquet footers, v3.0)."""
        if self.pending():
            self.dataset.save_episode()
        finalize = getattr(self.dataset, "finalize", None)  # 0.3.x (v2.1) writes each episode whole
        if finalize is not None:
            finalize()
        return self.dataset


def _lerobot_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("lerobot")
    except metadata.PackageNotFoundError:
        return "none"
