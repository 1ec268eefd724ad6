"""What a build would write, without writing it: the plan `bufconv inspect` and `build --dry-run` print.

`plan_build` reads a dataset's metadata only (info.json, the episode table; a video's header
when info.json does not name its codec) and resolves the options against it as a build does,
so an unknown key or episode fails here as it would there. The cache's tensors and size follow
from the same rules as `pipeline._write_with`: images uint8 (N, C, H, W) after crop and
resize, numeric columns as info.json declares them, and the derived transition columns.
"""

from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from ..cache.freshness import prepare
from ..options import BuildOptions, format_episodes
from ..source.dataset import (
    ACTION_KEY,
    BOOKKEEPING,
    COMPLEMENTARY_PREFIX,
    DONE_KEY,
    REWARD_KEY,
    SourceDataset,
)
from ..source.layouts import open_dataset
from .plan import frame_chw, stored_chw, stored_dtype

#: Columns every cache holds besides the selected keys: (name, dtype), one value per frame.
DERIVED = (
    ("reward", "float32"), ("done", "bool"), ("truncated", "bool"), ("episode_index", "int64"),
    ("next_index", "int64"), ("frame_index", "int64"), ("timestamp", "float32"),
)  # fmt: skip

# Header size, measured on caches bufconv wrote (pickled meta and zip records): a fixed part,
# and parts that grow with the episodes, the source files and the tensors. Within 10% of real.
_HEADER_BYTES = 2500
_BYTES_PER_EPISODE = 80
_BYTES_PER_SOURCE_FILE = 200
_BYTES_PER_TENSOR = 250


@dataclass(frozen=True)
class Camera:
    """An image feature: how it is stored in the dataset, and in the cache."""

    key: str
    kind: str
    """"video" (mp4) or "image" (PNG/JPEG bytes in the parquet data)."""
    codec: str | None
    height: int
    width: int
    frames: int
    """Frames of the selected episodes."""
    stored: tuple[int, int, int]
    """(channels, height, width) in the cache, after any crop and resize."""
    selected: bool
    depth: dict[str, Any] | None = None
    """A depth camera's header entry (SPEC section 15: unit, storage, quantization); None for RGB."""


@dataclass(frozen=True)
class Column:
    """A non-image feature: its dtype and per-frame shape, and what a build makes of it."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    role: str
    """"state", "action", "reward", "done", "complementary_info", "bookkeeping", or "unused"."""


@dataclass(frozen=True)
class BuildPlan:
    """A dataset as a build sees it, and the cache a build with `options` would write."""

    root: str
    repo_id: str | None
    codebase_version: str
    fps: float
    episodes_in_dataset: int
    frames_in_dataset: int
    episodes: str
    """The selected episodes, like '0-9,15'."""
    episode_count: int
    frames: int
    cameras: list[Camera]
    columns: list[Column]
    image_range: int
    depth_unit: str = "mm"
    """The unit depth cameras' batches come out in (used only if there are depth cameras)."""
    tensors: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per tensor of the cache: {"dtype", "shape"}."""
    payload_bytes: int = 0
    """Bytes of all image tensors (uint8 pixels, depth cameras' 2- or 4-byte values)."""
    file_bytes: int = 0
    """The cache's size: tensors exactly, plus an estimate of the header (a few kB)."""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def plan_build(dataset: str | os.PathLike[str] | SourceDataset, options: BuildOptions) -> BuildPlan:
    """Describe `dataset` and the cache a build with `options` would write (metadata only).

    Raises:
        DatasetError: as `bufconv build` would (not a dataset, unknown key or episode, missing file).
    """
    source = dataset if isinstance(dataset, SourceDataset) else open_dataset(dataset)
    request = prepare(source, options)
    sel = request.selection
    frames = sum(source.episodes[e].length for e in sel.episodes)
    cameras = []
    for key, feature in source.features.items():
        if not feature.is_visual:
            continue
        _, height, width = frame_chw(source, key)
        selected = key in sel.image_keys
        cameras.append(
            Camera(
                key=key,
                kind=feature.dtype,
                codec=_codec(source, key),
                height=height,
                width=width,
                frames=frames,
                stored=stored_chw(source, key, options) if selected else frame_chw(source, key),
                selected=selected,
                depth=_depth_entry(source, key, options) if feature.is_depth else None,
            )
        )
    columns = [
        Column(key, f.dtype, tuple(f.shape), _role(key, sel.numeric_keys, sel.complementary_keys))
        for key, f in source.features.items()
        if not f.is_visual
    ]
    tensors: dict[str, dict[str, Any]] = {}
    for camera in cameras:
        if camera.selected:
            tensors[camera.key] = {
                "dtype": stored_dtype(source, camera.key),
                "shape": [frames, *camera.stored],
            }
    for column in columns:
        if column.role in ("state", "action", "complementary_info"):
            tensors[column.key] = {"dtype": column.dtype, "shape": [frames, *_row_shape(column.shape)]}
    for name, dtype in DERIVED:
        tensors[name] = {"dtype": dtype, "shape": [frames]}
    payload = sum(
        math.prod(tensors[c.key]["shape"]) * np.dtype(tensors[c.key]["dtype"]).itemsize
        for c in cameras
        if c.selected
    )
    data = sum(math.prod(t["shape"]) * np.dtype(t["dtype"]).itemsize for t in tensors.values())
    files = len(source.metadata_files()) + len(source.content_files(sel))
    header = (
        _HEADER_BYTES
        + _BYTES_PER_EPISODE * len(sel.episodes)
        + _BYTES_PER_SOURCE_FILE * files
        + _BYTES_PER_TENSOR * len(tensors)
    )
    return BuildPlan(
        root=str(source.root),
        repo_id=source.repo_id,
        codebase_version=source.version,
        fps=source.fps,
        episodes_in_dataset=len(source.episodes),
        frames_in_dataset=sum(e.length for e in source.episodes.values()),
        episodes=format_episodes(sel.episodes),
        episode_count=len(sel.episodes),
        frames=frames,
        cameras=cameras,
        columns=columns,
        image_range=options.image_range,
        depth_unit=options.depth_unit,
        tensors=tensors,
        payload_bytes=payload,
        file_bytes=data + header,
    )


def _depth_entry(source: SourceDataset, key: str, options: BuildOptions) -> dict[str, Any] | None:
    """What the header would say of a depth camera; None when its info cannot be built (the
    selection refuses such a key if it is selected)."""
    from ..errors import DatasetError

    try:
        return source.features[key].depth_storage().entry(options.depth_unit)
    except DatasetError:
        return None


def _row_shape(shape: tuple[int, ...]) -> tuple[int, ...]:
    """A feature's per-frame shape as the parquet column is read: (1,) is a scalar column."""
    return () if shape in ((), (1,)) else shape


def _role(key: str, state: tuple[str, ...], complementary: tuple[str, ...]) -> str:
    if key in state:
        return "state"
    roles = {ACTION_KEY: "action", REWARD_KEY: "reward", DONE_KEY: "done"}
    if key in roles:
        return roles[key]
    if key in BOOKKEEPING:
        return "bookkeeping"
    if key in complementary or key.startswith(COMPLEMENTARY_PREFIX):
        return "complementary_info"
    return "unused"


def _codec(source: SourceDataset, key: str) -> str | None:
    """A video's codec as info.json records it, else from the first video file's header."""
    feature = source.features[key]
    if feature.dtype != "video":
        return None
    codec = (feature.info or {}).get("video.codec")
    if codec:
        return str(codec)
    for episode in source.episodes.values():
        if key in episode.videos:
            import av

            try:
                with av.open(str(source.root / episode.videos[key][0])) as container:
                    return str(container.streams.video[0].codec_context.name)
            except (OSError, av.FFmpegError, IndexError):
                return None
    return None
