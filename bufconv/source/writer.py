"""Small, dependency-light writer for LeRobot datasets (v3.0 and legacy v2.1).

It writes real LeRobot folders (parquet data, mp4 video, metadata) with only numpy,
pyarrow, PyAV and Pillow, so ``bufconv demo`` can create a dataset without LeRobot
installed and tests can produce datasets of either layout:

* ``v3.0``, as LeRobot 0.4+ writes it: several episodes per data file and per mp4
  file, ``meta/episodes/*.parquet``, ``meta/tasks.parquet``, ``meta/stats.json``.
* ``v2.1``, as LeRobot 0.3.x wrote it: one parquet and one mp4 per episode and
  ``meta/*.jsonl``; LeRobot's ``convert_dataset_v21_to_v30`` converts it.

Video is encoded like LeRobot's ``encode_video_frames`` (yuv420p, GOP 2, CRF 30,
SVT-AV1 preset 12). Episodes sharing an mp4 are consecutive frames of it, so frame
``i`` of a file has timestamp ``i / fps``. Stats quantiles are exact
(``np.quantile``), not LeRobot's histogram estimates, and ``stats.json`` holds the stats of
all frames rather than LeRobot's count-weighted aggregate of per-episode stats (the same
min, max, mean, std and count; the quantiles differ slightly).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from .encode import CODECS, encode_video, png, quiet_encoders, video_info

CHUNKS_SIZE = 1000
"""Files per ``chunk-XXX`` folder, as in LeRobot."""

BOOKKEEPING_KEYS = ("timestamp", "frame_index", "episode_index", "index", "task_index")
"""Columns added to every frame; episodes may not use these names (nor ``task``)."""

_BOOKKEEPING_DTYPES = ("float32", "int64", "int64", "int64", "int64")
_QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)
_V21_DATA_PATH = "data/chunk-{episode_chunk:03d}/episode_{episode_index:06d}.parquet"
_V21_VIDEO_PATH = "videos/chunk-{episode_chunk:03d}/{video_key}/episode_{episode_index:06d}.mp4"
_V30_DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
_V30_VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"

Stats = dict[str, dict[str, np.ndarray]]


@dataclass
class EpisodeData:
    """One episode to write.

    Attributes:
        frames: Per feature name, one row per frame: images as uint8 ``(T, H, W, 3)``,
            vectors as ``(T, D)``, scalars as ``(T,)`` or ``(T, 1)``. Floats are stored
            as float32, integers as int64, booleans as bool.
        task: Natural-language task of the episode.
    """

    frames: dict[str, np.ndarray]
    task: str = "demo"


@dataclass
class _Plan:
    """Everything the layout writers need."""

    episodes: Sequence[EpisodeData]
    features: dict[str, dict[str, Any]]  # LeRobot features, bookkeeping excluded
    tables: list[pa.Table]  # per episode: non-video features + bookkeeping
    tasks: list[str]
    codec: str
    fps: int
    chunks_size: int

    @property
    def video_keys(self) -> list[str]:
        return [k for k, ft in self.features.items() if ft["dtype"] == "video"]


def write_dataset(
    root: str | Path,
    episodes: Sequence[EpisodeData],
    *,
    fps: int = 10,
    layout: str = "v3.0",
    video_keys: Sequence[str] | None = None,
    image_keys: Sequence[str] = (),
    codec: str = "libsvtav1",
    episodes_per_file: int | None = None,
    robot_type: str | None = None,
    chunks_size: int = CHUNKS_SIZE,
) -> Path:
    """Write ``episodes`` as a LeRobot dataset under ``root``.

    Args:
        root: Dataset folder; it must not exist or be empty.
        episodes: Episodes to write, all with the same feature names and shapes.
        fps: Frame rate of the data and of the videos.
        layout: ``"v3.0"`` or ``"v2.1"``.
        video_keys: Image features stored as mp4 (LeRobot ``video`` dtype). Default:
            every uint8 ``(T, H, W, 3)`` feature not in ``image_keys``.
        image_keys: Image features stored as PNG bytes in the parquet (``image`` dtype).
        codec: ``"libsvtav1"``, ``"h264"`` or ``"hevc"``.
        episodes_per_file: v3.0 only: episodes per data parquet file and per mp4 file
            of each camera; ``None`` puts all episodes in one file.
        robot_type: Value of ``robot_type`` in ``info.json``.
        chunks_size: Files per ``chunk-XXX`` folder (``chunks_size`` in ``info.json``); a small
            value spreads a few episodes (v2.1) or files (v3.0) over several chunks.

    Returns:
        The dataset root as a ``Path``.

    Raises:
        ValueError: If an argument is invalid or the episodes are inconsistent.
    """
    root = Path(root)
    if layout not in ("v3.0", "v2.1"):
        raise ValueError(f"layout must be 'v3.0' or 'v2.1', got {layout!r}")
    if codec not in CODECS or codec not in av.codecs_available:
        raise ValueError(f"codec must be one of {sorted(CODECS)} and available in PyAV, got {codec!r}")
    if not isinstance(fps, int) or fps <= 0:
        raise ValueError(f"fps must be a positive int, got {fps!r}")
    if episodes_per_file is not None and (layout != "v3.0" or episodes_per_file < 1):
        raise ValueError("episodes_per_file must be a positive int and is only valid for layout 'v3.0'")
    if not isinstance(chunks_size, int) or chunks_size < 1:
        raise ValueError(f"chunks_size must be a positive int, got {chunks_size!r}")
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"root must not exist or be an empty folder: {root}")
    features = _infer_features(episodes, video_keys, image_keys, codec, fps, layout)
    tasks = list(dict.fromkeys(ep.task for ep in episodes))
    plan = _Plan(
        episodes,
        features,
        _episode_tables(episodes, features, tasks, fps, layout),
        tasks,
        codec,
        fps,
        chunks_size,
    )
    root.mkdir(parents=True, exist_ok=True)
    with quiet_encoders():
        if layout == "v3.0":
            _write_v30(root, plan, episodes_per_file or len(episodes))
        else:
            _write_v21(root, plan)
    _write_info(root, plan, layout, robot_type)
    return root


def _infer_features(
    episodes: Sequence[EpisodeData],
    video_keys: Sequence[str] | None,
    image_keys: Sequence[str],
    codec: str,
    fps: int,
    layout: str,
) -> dict[str, dict[str, Any]]:
    """Build LeRobot's ``features`` dict (bookkeeping excluded) and check the episodes."""
    if not episodes:
        raise ValueError("episodes must not be empty")
    first = episodes[0].frames
    if not first or any(k in (*BOOKKEEPING_KEYS, "task") for k in first):
        raise ValueError(f"episodes need features, none named {(*BOOKKEEPING_KEYS, 'task')}")
    is_image = {k: a.dtype == np.uint8 and a.ndim == 4 and a.shape[-1] == 3 for k, a in first.items()}
    if video_keys is None:
        video_keys = [k for k, img in is_image.items() if img and k not in image_keys]
    if set(video_keys) & set(image_keys):
        raise ValueError("video_keys and image_keys overlap")
    for key in [*video_keys, *image_keys]:
        if not is_image.get(key, False):
            raise ValueError(f"{key!r} is not a uint8 (T, H, W, 3) feature of the episodes")
    features: dict[str, dict[str, Any]] = {}
    for key, arr in first.items():
        if key in video_keys or key in image_keys:
            height, width = arr.shape[1:3]
            dtype = "video" if key in video_keys else "image"
            features[key] = {
                "dtype": dtype,
                "shape": [height, width, 3],
                "names": ["height", "width", "channels"],
            }
            if dtype == "video":
                if codec != "libsvtav1" and (height % 2 or width % 2):
                    raise ValueError(f"{codec} needs even video sizes, {key!r} is {height}x{width}")
                if codec == "libsvtav1" and width < 32:  # SVT-AV1 dies with SIGFPE below 32 pixels wide
                    raise ValueError(f"libsvtav1 needs videos at least 32 pixels wide, {key!r} is {height}x{width}")
                features[key]["info"] = video_info(height, width, codec, fps, layout)
        elif is_image[key]:
            raise ValueError(f"image feature {key!r} is in neither video_keys nor image_keys")
        elif arr.dtype.kind in "biuf" and (arr.ndim == 1 or (arr.ndim == 2 and arr.shape[1])):
            dtype = {"b": "bool", "i": "int64", "u": "int64"}.get(arr.dtype.kind, "float32")
            features[key] = {"dtype": dtype, "shape": [1 if arr.ndim == 1 else arr.shape[1]], "names": None}
        else:
            raise ValueError(f"feature {key!r} has unsupported shape {arr.shape} / dtype {arr.dtype}")
    for i, ep in enumerate(episodes):
        if list(ep.frames) != list(first):
            raise ValueError(f"episode {i} has features {list(ep.frames)}, expected {list(first)}")
        lengths = {len(a) for a in ep.frames.values()}
        if len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"episode {i}: features must all have the same non-zero length")
        for key, arr in ep.frames.items():
            if arr.shape[1:] != first[key].shape[1:] or arr.dtype.kind != first[key].dtype.kind:
                raise ValueError(f"episode {i}: {key!r} is {arr.dtype}{arr.shape}, unlike episode 0")
    return features


def _episode_tables(
    episodes: Sequence[EpisodeData],
    features: dict[str, dict[str, Any]],
    tasks: list[str],
    fps: int,
    layout: str,
) -> list[pa.Table]:
    """Build one arrow table per episode: every non-video feature, then the bookkeeping columns."""
    hf_features: dict[str, Any] = {}  # the ``huggingface`` schema metadata of HF ``datasets``
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])  # HF ``Image`` storage
    tables, start = [], 0
    for ep_index, ep in enumerate(episodes):
        length = len(next(iter(ep.frames.values())))
        columns: dict[str, pa.Array] = {}
        for key, ft in features.items():
            arr = ep.frames[key]
            if ft["dtype"] == "image":
                rows = [{"bytes": png(img), "path": f"frame-{i:06d}.png"} for i, img in enumerate(arr)]
                columns[key], hf_features[key] = pa.array(rows, image_type), {"_type": "Image"}
            elif ft["dtype"] != "video":
                values = pa.array(arr.astype(ft["dtype"]).reshape(-1))
                hf_features[key] = {"dtype": ft["dtype"], "_type": "Value"}
                columns[key] = values
                if ft["shape"] != [1]:  # HF fixed-length List (v3.0) / Sequence (datasets < 4)
                    columns[key] = pa.FixedSizeListArray.from_arrays(values, ft["shape"][0])
                    list_type = "List" if layout == "v3.0" else "Sequence"
                    hf_features[key] = {
                        "feature": hf_features[key],
                        "length": ft["shape"][0],
                        "_type": list_type,
                    }
        frame_index = np.arange(length, dtype=np.int64)
        extra: dict[str, np.ndarray] = {
            "timestamp": (frame_index / fps).astype(np.float32),
            "frame_index": frame_index,
            "episode_index": np.full(length, ep_index, np.int64),
            "index": start + frame_index,
            "task_index": np.full(length, tasks.index(ep.task), np.int64),
        }
        for key, column in extra.items():
            columns[key], hf_features[key] = pa.array(column), {"dtype": str(column.dtype), "_type": "Value"}
        metadata = {"huggingface": json.dumps({"info": {"features": hf_features}})}
        tables.append(pa.table(columns).replace_schema_metadata(metadata))
        start += length
    return tables


def _stats(data: np.ndarray, is_image: bool, quantiles: bool) -> dict[str, np.ndarray]:
    """Compute LeRobot-shaped stats: per channel ``(C, 1, 1)`` in [0, 1] for images, else ``(D,)``."""
    flat = data.reshape(-1, data.shape[-1]) / 255.0 if is_image else data.reshape(len(data), -1)
    flat = flat.astype(np.float64)
    shape = (flat.shape[1], 1, 1) if is_image else (flat.shape[1],)
    stats = {"min": flat.min(0), "max": flat.max(0), "mean": flat.mean(0), "std": flat.std(0)}
    out = {k: v.reshape(shape) for k, v in stats.items()}
    out["count"] = np.array([len(data)])
    if quantiles:
        out.update(
            {f"q{round(q * 100):02d}": np.quantile(flat, q, axis=0).reshape(shape) for q in _QUANTILES}
        )
    return out


def _stats_of(plan: _Plan, episodes: Sequence[int], quantiles: bool) -> Stats:
    """Stats of every feature (bookkeeping included) over ``episodes``; images are sampled like LeRobot."""
    stats = {}
    for key, ft in plan.features.items():
        parts = [plan.episodes[i].frames[key] for i in episodes]
        if is_image := ft["dtype"] in ("image", "video"):  # LeRobot's ``sample_indices``, per episode
            nums = [max(min(100, len(p)), min(int(len(p) ** 0.75), 10_000)) for p in parts]
            parts = [
                p[np.round(np.linspace(0, len(p) - 1, n)).astype(int)]
                for p, n in zip(parts, nums, strict=True)
            ]
        stats[key] = _stats(np.concatenate(parts), is_image, quantiles)
    for key in BOOKKEEPING_KEYS:
        values = np.concatenate([plan.tables[i].column(key).to_numpy() for i in episodes])
        stats[key] = _stats(values, False, quantiles)
    return stats


def _to_json(stats: Stats) -> dict[str, dict[str, Any]]:
    """Convert stats arrays to nested lists."""
    return {key: {k: v.tolist() for k, v in s.items()} for key, s in stats.items()}


def _write_parquet(path: Path, tables: Sequence[pa.Table]) -> None:
    """Write episode tables to one parquet file, one row group per episode (as LeRobot does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with pq.ParquetWriter(str(path), tables[0].schema, compression="snappy") as writer:
        for table in tables:
            writer.write_table(table)


def _write_v30(root: Path, plan: _Plan, per_file: int) -> None:
    """Write data, videos and episode/task/stats metadata in the v3.0 layout."""
    rows: list[dict[str, Any]] = []
    for number, first in enumerate(range(0, len(plan.episodes), per_file)):
        chunk, file = divmod(number, plan.chunks_size)
        group = range(first, min(first + per_file, len(plan.episodes)))
        _write_parquet(
            root / _V30_DATA_PATH.format(chunk_index=chunk, file_index=file), [plan.tables[i] for i in group]
        )
        for key in plan.video_keys:
            frames = (frame for i in group for frame in plan.episodes[i].frames[key])
            path = root / _V30_VIDEO_PATH.format(video_key=key, chunk_index=chunk, file_index=file)
            encode_video(path, frames, plan.codec, plan.fps)
        offset = 0  # frames of this file before the episode
        for i in group:
            length, start = plan.tables[i].num_rows, plan.tables[i].column("index")[0].as_py()
            row: dict[str, Any] = {"episode_index": i, "tasks": [plan.episodes[i].task], "length": length}
            row.update({"data/chunk_index": chunk, "data/file_index": file})
            row.update({"dataset_from_index": start, "dataset_to_index": start + length})
            for key in plan.video_keys:
                row.update({f"videos/{key}/chunk_index": chunk, f"videos/{key}/file_index": file})
                row[f"videos/{key}/from_timestamp"] = offset / plan.fps
                row[f"videos/{key}/to_timestamp"] = (offset + length) / plan.fps
            for key, ft_stats in _to_json(_stats_of(plan, [i], quantiles=True)).items():
                row.update({f"stats/{key}/{k}": v for k, v in ft_stats.items()})
            rows.append({**row, "meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
            offset += length
    episodes_path = root / "meta/episodes/chunk-000/file-000.parquet"
    episodes_path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), str(episodes_path), compression="snappy")
    # LeRobot reads tasks with pandas and needs the task strings as the index: say so in pandas metadata.
    columns = [("task_index", "int64", "int64"), ("task", "unicode", "object")]
    pandas_meta = {"index_columns": ["task"], "column_indexes": [], "columns": [
        {"name": n, "field_name": n, "pandas_type": p, "numpy_type": t, "metadata": None} for n, p, t in columns
    ]}  # fmt: skip
    tasks = pa.table({"task_index": pa.array(range(len(plan.tasks)), pa.int64()), "task": plan.tasks})
    pq.write_table(
        tasks.replace_schema_metadata({"pandas": json.dumps(pandas_meta)}), root / "meta/tasks.parquet"
    )
    _write_json(
        root / "meta/stats.json", _to_json(_stats_of(plan, range(len(plan.episodes)), quantiles=True))
    )


def _write_v21(root: Path, plan: _Plan) -> None:
    """Write one parquet and one mp4 per episode plus the ``meta/*.jsonl`` files (LeRobot 0.3.x)."""
    episodes, stats = [], []
    for i, (ep, table) in enumerate(zip(plan.episodes, plan.tables, strict=True)):
        names = {"episode_chunk": i // plan.chunks_size, "episode_index": i}
        _write_parquet(root / _V21_DATA_PATH.format(**names), [table])
        for key in plan.video_keys:
            path = root / _V21_VIDEO_PATH.format(video_key=key, **names)
            encode_video(path, ep.frames[key], plan.codec, plan.fps)
        episodes.append({"episode_index": i, "tasks": [ep.task], "length": table.num_rows})
        stats.append({"episode_index": i, "stats": _to_json(_stats_of(plan, [i], quantiles=False))})
    tasks = [{"task_index": i, "task": task} for i, task in enumerate(plan.tasks)]
    (root / "meta").mkdir(exist_ok=True)
    for name, lines in (("episodes", episodes), ("episodes_stats", stats), ("tasks", tasks)):
        (root / f"meta/{name}.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))


def _write_info(root: Path, plan: _Plan, layout: str, robot_type: str | None) -> None:
    """Write ``meta/info.json`` with the keys, in the order, LeRobot writes them."""
    features = dict(plan.features)
    for key, dtype in zip(BOOKKEEPING_KEYS, _BOOKKEEPING_DTYPES, strict=True):
        features[key] = {"dtype": dtype, "shape": [1], "names": None}
    num_episodes, num_videos = len(plan.episodes), len(plan.video_keys)
    counts = {
        "total_episodes": num_episodes,
        "total_frames": sum(t.num_rows for t in plan.tables),
        "total_tasks": len(plan.tasks),
    }
    splits = {"train": f"0:{num_episodes}"}
    if layout == "v2.1":
        info = {
            "codebase_version": layout,
            "robot_type": robot_type,
            **counts,
            "total_videos": num_videos * num_episodes,
            "total_chunks": (num_episodes - 1) // plan.chunks_size + 1,
            "chunks_size": plan.chunks_size,
            "fps": plan.fps,
            "splits": splits,
            "data_path": _V21_DATA_PATH,
            "video_path": _V21_VIDEO_PATH if num_videos else None,
            "features": features,
        }
    else:
        info = {
            "codebase_version": layout,
            "fps": plan.fps,
            "features": features,
            **counts,
            "chunks_size": plan.chunks_size,
            "data_files_size_in_mb": 100,
            "video_files_size_in_mb": 200,
            "data_path": _V30_DATA_PATH,
            "video_path": _V30_VIDEO_PATH if num_videos else None,
            "robot_type": robot_type,
            "splits": splits,
        }
    _write_json(root / "meta/info.json", info)


def _write_json(path: Path, data: Any) -> None:
    """Write ``data`` as indented JSON."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4) + "\n")
