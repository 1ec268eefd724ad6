"""Drop-ins for the LeRobot learner's online buffer and for the buffer part of its checkpoints.

LeRobot 0.6.1 keeps the online buffer as float32 and, at every checkpoint, deletes
`<output_dir>/dataset` and rewrites the whole buffer with `to_lerobot_dataset` (minutes at full
capacity, training blocked, everything lost if it dies meanwhile). Here the online buffer is a
`bufconv.OnlineBuffer` in `<output_dir>/online_buffer`, and a checkpoint appends what is new.
"""

from __future__ import annotations

import inspect
import logging
from pathlib import Path
from typing import Any

from ..buffer.commits import DEFAULT_COMMIT_INTERVAL_S
from ..buffer.online import DEFAULT_ONLINE_CAPACITY, OnlineBuffer
from .offline import OFFLINE_ADDED_FOLDER, policy_depth_keys, resolve_depth_unit, resolve_image_range
from .preflight import preflight

log = logging.getLogger("bufconv")

ONLINE_FOLDER = "online_buffer"
__all__ = [
    "OFFLINE_ADDED_FOLDER",
    "ONLINE_FOLDER",
    "initialize_replay_buffer",
    "wrap_save_training_checkpoint",
]


def initialize_replay_buffer(
    cfg: Any,
    device: str = "cuda:0",
    storage_device: str = "cpu",
    *,
    image_range: int | None = None,
    commit_interval_s: float | None = DEFAULT_COMMIT_INTERVAL_S,
) -> OnlineBuffer:
    """Replace LeRobot's `initialize_replay_buffer(cfg, device, storage_device)`.

    A new run gets an empty buffer at `<cfg.output_dir>/online_buffer`; with `cfg.resume` it is
    resumed from there (what was last committed). What the actor sends is committed in the
    background every `commit_interval_s` (`--bufconv.commit_interval_s`, default 1 s),
    independent of LeRobot's `save_freq`; LeRobot's checkpoints then commit the tail. Capacity,
    state keys and the image range come from the config as for the offline buffer (an explicit
    `image_range=` wins); depth keys (the policy's VISUAL (1, H, W) `<cam>_depth` features) are
    added and sampled in the config's `dataset.depth_output_unit` (default mm).

    The image chain of the config (`bufconv check`'s, without the offline data) is checked here, at start.

    Raises:
        ContractError: the image chain does not fit (e.g. a normalizer's stats in [0,1] units on
            images in [0,255]).
        CacheError: not resuming, but the folder already holds a buffer (LeRobot itself refuses
            an existing output_dir without `resume`), or the folder holds another range, keys or
            depth unit.
    """
    policy = cfg.policy
    # The image chain first: LeRobot's learner makes this buffer before the offline one, whose cache
    # may take minutes to build, so a chain that cannot work is refused at once.
    preflight(cfg, None, image_range=image_range)
    buffer = OnlineBuffer(
        capacity=int(getattr(policy, "online_buffer_capacity", None) or DEFAULT_ONLINE_CAPACITY),
        image_range=resolve_image_range(cfg, image_range),
        path=Path(cfg.output_dir) / ONLINE_FOLDER,
        state_keys=list(policy.input_features.keys()),
        device=str(device),
        storage_device=str(storage_device),
        use_drq=True,
        resume=bool(getattr(cfg, "resume", False)),
        commit_interval_s=commit_interval_s,
        depth_unit=resolve_depth_unit(cfg),
        depth_keys=policy_depth_keys(cfg),
    )
    log.info(
        "bufconv online buffer: %s (%s, %d transitions, images in [0,%d]%s, %s%s)",
        buffer.path,
        buffer.status,
        len(buffer),
        buffer.image_range,
        f", depth in {buffer.depth_unit}" if buffer.depth_keys else "",
        f"committed every {commit_interval_s:g} s" if commit_interval_s else "committed at checkpoints only",
        f", {buffer.lost} uncommitted transitions dropped" if buffer.lost else "",
    )
    return buffer


class _CheckpointInstead:
    """Stands in for a buffer inside LeRobot's `save_training_checkpoint`: its
    `to_lerobot_dataset(...)` (the buffer part of the checkpoint) becomes `checkpoint()`: a flush
    of what the background commits have not written yet."""

    def __init__(self, buffer: Any) -> None:
        self._buffer = buffer

    def __getattr__(self, name: str) -> Any:
        return getattr(self._buffer, name)

    def __len__(self) -> int:
        return len(self._buffer)

    def to_lerobot_dataset(self, *args: Any, **kwargs: Any) -> None:
        if getattr(self._buffer, "folder", None) is None:
            log.warning(
                "bufconv: %r has no folder to checkpoint into; its added transitions are not saved",
                self._buffer,
            )
            return None
        result = self._buffer.checkpoint()
        log.info(
            "bufconv checkpoint %d of %s: %d new transitions, %.1f MB in %.2f s",
            result.checkpoint,
            result.path,
            result.transitions,
            result.bytes / 1e6,
            result.seconds,
        )
        return None


def wrap_save_training_checkpoint(original: Any) -> Any:
    """LeRobot's `save_training_checkpoint` with its buffer part replaced by `checkpoint()`.

    Policy, optimizer and training state are saved by LeRobot's own code, unchanged; buffers
    that are not bufconv's are saved as LeRobot saves them.
    """
    signature = inspect.signature(original)

    def save_training_checkpoint(*args: Any, **kwargs: Any) -> Any:
        bound = signature.bind(*args, **kwargs)
        for name in ("replay_buffer", "offline_replay_buffer"):
            buffer = bound.arguments.get(name)
            if buffer is not None and hasattr(buffer, "checkpoint"):
                bound.arguments[name] = _CheckpointInstead(buffer)
        return original(*bound.args, **bound.kwargs)

    save_training_checkpoint.__wrapped__ = original  # type: ignore[attr-defined]
    save_training_checkpoint.__doc__ = wrap_save_training_checkpoint.__doc__
    return save_training_checkpoint
