"""A drop-in for the LeRobot learner's `initialize_offline_replay_buffer`, served by bufconv."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from ..buffer.commits import DEFAULT_COMMIT_INTERVAL_S
from ..buffer.loader import load_or_build
from ..buffer.offline import DEFAULT_CAPACITY, OfflineBuffer
from ..buffer.online import is_depth_key
from ..cache.segments import is_buffer_folder
from ..cache.sharded import is_sharded_folder, shard_name
from ..contract.config import image_range_of, read_config
from .preflight import preflight, preprocessing

log = logging.getLogger("bufconv")

OFFLINE_ADDED_FOLDER = "offline_added"


def resolve_image_range(cfg: Any, image_range: int | None = None) -> int:
    """The range the learner's policy wants its images in (`bufconv check` reads it the same way).

    In order: an explicit `image_range`; `cfg.image_range` or `cfg.policy.image_range`; 255 if
    the policy config sets a flag saying its encoder normalises its own inputs (forks call it
    `normalise_inputs` / `normalize_inputs`); else 1, LeRobot's convention.
    """
    return image_range_of(cfg, image_range)[0]


def resolve_depth_unit(cfg: Any) -> str:
    """The unit the learner's policy reads depth in: `cfg.dataset.depth_output_unit` ("mm", LeRobot
    0.6.1's default, when the config has none); `bufconv check` reads it the same way."""
    return read_config(cfg).depth_unit


def policy_depth_keys(cfg: Any) -> list[str]:
    """The depth keys among the policy's input features: LeRobot declares a depth camera as a VISUAL
    (1, H, W) feature named `<cam>_depth` (see `bufconv.buffer.online.is_depth_key`)."""
    keys = []
    for key, feature in dict(getattr(cfg.policy, "input_features", None) or {}).items():
        kind = getattr(getattr(feature, "type", None), "value", getattr(feature, "type", None))
        shape = tuple(getattr(feature, "shape", None) or ())
        if str(kind).upper() == "VISUAL" and is_depth_key(str(key), shape):
            keys.append(str(key))
    return keys


def initialize_offline_replay_buffer(
    cfg: Any,
    device: str = "cuda:0",
    storage_device: str = "cpu",
    *,
    cache_path: str | os.PathLike[str] | None = None,
    image_range: int | None = None,
    on_stale: str = "rebuild",
    on_mismatch: str = "error",
    commit_interval_s: float | None = DEFAULT_COMMIT_INTERVAL_S,
) -> OfflineBuffer:
    """Replace LeRobot's `initialize_offline_replay_buffer(cfg, device, storage_device)`.

    The dataset is `cfg.dataset` (its `root`, else `$HF_LEROBOT_HOME/<repo_id>`), the state keys
    are the policy's input features, and the cache lives at `<cfg.output_dir>/offline_buffer.pt`.
    A fresh cache is memory-mapped in well under a second; a stale one is rebuilt and the
    reasons are logged. Transitions the learner adds (interventions) are checkpointed into
    `<cfg.output_dir>/offline_added` every `commit_interval_s` (and at LeRobot's checkpoints)
    and resumed from there; the cache is never rewritten. A
    run checkpointed by stock LeRobot (`<output_dir>/dataset_offline`, no `offline_added`) is
    resumed from LeRobot's dataset, as LeRobot does.

    The images are cropped and resized as the config's env processor does live images
    (`env.processor.image_preprocessing`), depth keys are delivered in the config's
    `dataset.depth_output_unit` (`resolve_depth_unit`), and the buffer is checked against the
    config before it is returned (`bufconv check`).

    Args:
        cfg: LeRobot's `TrainRLServerPipelineConfig` (or anything with the same attributes).
        device: Where batches go.
        storage_device: Where frames are kept.
        cache_path: Overrides `<cfg.output_dir>/offline_buffer.pt`.
        image_range: Overrides the range found in the config (see `resolve_image_range`).
        on_stale: "rebuild" or "error".
        on_mismatch: What to do when the buffer does not fit the config (`bufconv check`: shapes,
            range, bounds, gripper, fps): "error" raises `ContractError`, "warn" logs and goes on.
        commit_interval_s: Seconds between background commits of the added transitions
            (`--bufconv.commit_interval_s`; None: only at LeRobot's checkpoints).
    """
    dataset_cfg = cfg.dataset
    output_dir = Path(cfg.output_dir)
    added = output_dir / OFFLINE_ADDED_FOLDER
    lerobot_checkpoint = output_dir / "dataset_offline"
    dataset: str | Path | None
    if getattr(cfg, "resume", False) and not is_buffer_folder(added) and lerobot_checkpoint.is_dir():
        dataset = lerobot_checkpoint
    elif getattr(dataset_cfg, "root", None):
        dataset = Path(dataset_cfg.root)
    else:
        dataset = dataset_cfg.repo_id
    path = Path(cache_path) if cache_path is not None else Path(cfg.output_dir) / "offline_buffer.pt"
    sharded = is_sharded_folder(path)
    if sharded:  # a sharded cache (bufconv build A B --shards N): the datasets its manifest names
        dataset = None
    episodes = getattr(dataset_cfg, "episodes", None)
    policy = cfg.policy
    crop, resize = preprocessing(cfg)
    buffer = load_or_build(
        dataset,
        path,
        image_range=resolve_image_range(cfg, image_range),
        state_keys=list(policy.input_features.keys()),
        episodes=list(episodes) if episodes else None,
        on_stale=on_stale,
        device=str(device),
        storage_device=str(storage_device),
        capacity=int(getattr(policy, "offline_buffer_capacity", None) or DEFAULT_CAPACITY),
        use_drq=True,
        crop=crop,
        resize=resize,
        depth_unit=resolve_depth_unit(cfg),
        added_path=added,
        commit_interval_s=commit_interval_s,
    )
    log.info(
        "bufconv offline buffer: %s (%s, %d transitions, images in [0,%d])%s",
        path,
        buffer.status,
        len(buffer),
        buffer.image_range,
        f"; rebuilt because {'; '.join(buffer.stale_reasons)}" if buffer.stale_reasons else "",
    )
    # A sharded cache's shards agree in keys, shapes and ranges: the first stands for all of them
    # (its action bounds are those of its own episodes).
    checked = path / shard_name(0) if sharded else path
    preflight(cfg, checked, image_range=image_range, on_mismatch=on_mismatch)
    if len(buffer) > buffer.dataset_transitions:
        log.info(
            "bufconv offline buffer: %d added transitions resumed from %s",
            len(buffer) - buffer.dataset_transitions,
            added,
        )
    return buffer
