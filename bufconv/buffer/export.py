"""`bufconv export`: any bufconv buffer written as a LeRobot dataset, on demand.

This module opens the buffer a path names (`loader.open_buffer`, or an `OnlineBuffer` read-only),
then writes it with `lerobot_dataset.buffer_to_lerobot_dataset` (re-exported here, where
`bufconv.lerobot` and earlier callers import it from). It sits above `offline.py`, which writes
itself through `lerobot_dataset.py` too, so neither imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .lerobot_dataset import buffer_to_lerobot_dataset

__all__ = ["buffer_to_lerobot_dataset", "export_lerobot"]


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
        manifest = read_manifest(Path(path))
        units = {str(entry["unit"]) for entry in (manifest.get("depth") or {}).values()}
        buffer = OnlineBuffer(
            path=path, image_range=int(manifest["image_range"]), read_only=True, use_drq=False,
            depth_unit=units.pop() if len(units) == 1 else "mm",
        )  # fmt: skip
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
