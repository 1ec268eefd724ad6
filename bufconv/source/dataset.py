"""A LeRobot dataset on disk (layouts v3.0 and v2.1): its metadata, a selection of it, its data.

`layouts.open_dataset` makes a `SourceDataset` from a folder or repo id; `select` resolves
which keys and episodes a build takes; `read_columns` and `iter_image_bytes` read the parquet
data of a selection. Video decoding lives in `video.py`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from ..errors import DatasetError
from ..options import BuildOptions, format_episodes
from .depth import DepthStorage, depth_storage, is_depth
from .transform import check_crops

SUPPORTED_VERSIONS = ("v2.1", "v3.0")
INFO_PATH = "meta/info.json"
V21_EPISODES_PATH = "meta/episodes.jsonl"
V21_TASKS_PATH = "meta/tasks.jsonl"
V30_EPISODES_GLOB = "meta/episodes/*/*.parquet"
V30_TASKS_PATH = "meta/tasks.parquet"

#: Columns LeRobot adds to every frame; bookkeeping, never part of `state`.
BOOKKEEPING = ("timestamp", "frame_index", "episode_index", "index", "task_index")
REWARD_KEY = "next.reward"
DONE_KEY = "next.done"
ACTION_KEY = "action"
COMPLEMENTARY_PREFIX = "complementary_info."

_UNKNOWN_KEY = "{root}: no feature {key!r} in meta/info.json; observation keys are: {available}"
_NOT_A_STATE_KEY = (
    "{root}: {key!r} is {role}, not an observation: --keys chooses the keys of the state "
    "(bufconv stores action, reward and done on their own); observation keys are: {available}"
)
_ROLES = {
    ACTION_KEY: "always stored as the transition's action",
    REWARD_KEY: "always stored as the transition's reward",
    DONE_KEY: "always stored as the transition's done flag",
}
_UNKNOWN_EPISODE = "{root}: episode(s) {missing} not in the dataset, which has episodes {available}"


@dataclass(frozen=True)
class Feature:
    """One entry of info.json's `features`."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    names: Any = None
    info: Mapping[str, Any] | None = None

    @property
    def is_visual(self) -> bool:
        return self.dtype in ("video", "image")

    @property
    def is_depth(self) -> bool:
        """A depth map (`info.is_depth_map`, SPEC section 15): stored as depth, not as RGB pixels."""
        return self.is_visual and is_depth(self.info)

    def depth_storage(self) -> DepthStorage:
        """How this depth feature is stored in a cache (raises DatasetError if its info is incomplete)."""
        return depth_storage(self.name, self.dtype, self.info)

    def image_hwc(self) -> tuple[int, int, int]:
        """(height, width, channels) of an image/video feature, whatever order info.json uses."""
        shape = self.shape
        names = list(self.names) if isinstance(self.names, (list, tuple)) else None
        if len(shape) != 3:
            raise DatasetError(f"feature {self.name!r} has shape {list(shape)}; an image needs 3 dimensions")
        if names and set(names) >= {"height", "width", "channels"}:
            return (shape[names.index("height")], shape[names.index("width")], shape[names.index("channels")])
        if names and set(names) >= {"height", "width", "channel"}:
            return (shape[names.index("height")], shape[names.index("width")], shape[names.index("channel")])
        # Unnamed: LeRobot writes (H, W, C); a leading 1/3/4 with a larger tail is channels-first.
        if shape[0] in (1, 3, 4) and shape[2] not in (1, 3, 4):
            return (shape[1], shape[2], shape[0])
        return (shape[0], shape[1], shape[2])


@dataclass(frozen=True)
class Episode:
    """Where one episode's rows and frames live."""

    index: int
    length: int
    data_path: str
    """Data parquet, relative to the dataset root."""
    videos: Mapping[str, tuple[str, float]]
    """Per video key: (mp4 path relative to the root, timestamp of the episode's first frame in that file)."""


@dataclass(frozen=True)
class Selection:
    """The keys and episodes one build takes from a dataset, resolved and validated."""

    state_keys: tuple[str, ...]
    """Observation features that make up `state` (images included), in info.json order."""
    image_keys: tuple[str, ...]
    """The visual subset of `state_keys` (video or image features), depth maps included."""
    complementary_keys: tuple[str, ...]
    episodes: tuple[int, ...]
    has_done: bool
    depth_keys: tuple[str, ...] = ()
    """The depth maps among `image_keys` (SPEC section 15)."""

    @property
    def rgb_keys(self) -> tuple[str, ...]:
        """The image keys stored as uint8 pixels with a declared range (all but the depth keys)."""
        return tuple(k for k in self.image_keys if k not in self.depth_keys)

    @property
    def numeric_keys(self) -> tuple[str, ...]:
        return tuple(k for k in self.state_keys if k not in self.image_keys)


class SourceDataset:
    """A LeRobot dataset folder, metadata loaded, data untouched.

    Use `layouts.open_dataset` to make one.
    """

    def __init__(
        self, root: Path, info: dict[str, Any], episodes: dict[int, Episode], repo_id: str | None
    ) -> None:
        self.root = root
        self.info = info
        self.episodes = episodes
        self.repo_id = repo_id
        self.version: str = info["codebase_version"]
        self.fps: float = info["fps"]
        self.features: dict[str, Feature] = {
            name: Feature(name, ft["dtype"], tuple(ft.get("shape") or ()), ft.get("names"), ft.get("info"))
            for name, ft in info["features"].items()
        }

    def __repr__(self) -> str:
        return f"SourceDataset({str(self.root)!r}, {self.version}, {len(self.episodes)} episodes)"

    # ---- metadata -------------------------------------------------------------------------

    def revision(self) -> str | None:
        """The hub commit a downloaded dataset came from, if huggingface_hub recorded one."""
        marker = self.root / ".cache" / "huggingface" / "download" / (INFO_PATH + ".metadata")
        try:
            first = marker.read_text().splitlines()[0].strip()
        except (OSError, IndexError, UnicodeDecodeError):
            return None
        return first or None

    def metadata_files(self) -> list[str]:
        """Metadata that defines the dataset's meaning (paths relative to the root)."""
        if self.version == "v3.0":
            files = [INFO_PATH, *sorted(_rel(p, self.root) for p in self.root.glob(V30_EPISODES_GLOB))]
            extra = [V30_TASKS_PATH]
        else:
            files = [INFO_PATH, V21_EPISODES_PATH]
            extra = [V21_TASKS_PATH]
        return files + [p for p in extra if (self.root / p).is_file()]

    def select(self, options: BuildOptions) -> Selection:
        """Resolve `options.keys`/`options.episodes` against this dataset.

        Raises:
            DatasetError: a key or episode does not exist, or a required column is missing.
        """
        observation_keys = [k for k in self.features if k.startswith("observation.")]
        if options.keys is None:
            keys = observation_keys
        else:
            available = ", ".join(observation_keys) or "(none)"
            for key in options.keys:
                role = _role(key)
                if key not in self.features:
                    message = _UNKNOWN_KEY.format(root=self.root, key=key, available=available)
                elif role is not None:
                    message = _NOT_A_STATE_KEY.format(root=self.root, key=key, role=role, available=available)
                else:
                    continue
                raise DatasetError(message, path=self.root / INFO_PATH)
            keys = [k for k in self.features if k in options.keys]  # info.json order
        if not keys:
            raise DatasetError(
                f"{self.root}: no observation features to build a state from", path=self.root / INFO_PATH
            )
        for key in (ACTION_KEY, REWARD_KEY):
            if key not in self.features:
                raise DatasetError(
                    f"{self.root}: the dataset has no {key!r} column, which an RL transition needs; "
                    f"record it (HIL-SERL's gym_manipulator does) or add it to the parquet data",
                    path=self.root / INFO_PATH,
                )
            if not _is_numeric(self.features[key].dtype):
                raise DatasetError(
                    f"{self.root}: {key!r} has dtype {self.features[key].dtype!r}; bufconv needs numbers "
                    f"(bool, uint8, int, float)",
                    path=self.root / INFO_PATH,
                )
        for key in keys:
            feature = self.features[key]
            if feature.is_depth:
                try:
                    feature.depth_storage()
                except DatasetError as error:
                    raise DatasetError(f"{self.root}: {error.message}", path=self.root / INFO_PATH) from None
            if feature.dtype in ("string",) or (
                feature.dtype not in ("video", "image") and not _is_numeric(feature.dtype)
            ):
                raise DatasetError(
                    f"{self.root}: {key!r} has dtype {feature.dtype!r}, which cannot go into a tensor; leave it out with --keys",
                    path=self.root / INFO_PATH,
                )
        if options.episodes is None:
            episodes = tuple(sorted(self.episodes))
        else:
            missing = [e for e in options.episodes if e not in self.episodes]
            if missing:
                raise DatasetError(
                    _UNKNOWN_EPISODE.format(
                        root=self.root,
                        missing=format_episodes(missing),
                        available=format_episodes(self.episodes) or "(none)",
                    ),
                    path=self.root,
                )
            episodes = tuple(options.episodes)
        if not episodes:
            raise DatasetError(f"{self.root}: the dataset has no episodes", path=self.root)
        empty = [e for e in episodes if self.episodes[e].length < 1]
        if empty:
            raise DatasetError(
                f"{self.root}: episode(s) {format_episodes(empty)} have no frames in the metadata; "
                f"leave them out with --episodes or repair the episode table",
                path=self.root,
            )
        half_frame = 0.5 / float(self.fps)
        if options.tolerance_s >= half_frame:
            raise DatasetError(
                f"{self.root}: tolerance_s {options.tolerance_s:g} s is not below half a frame interval "
                f"({half_frame:g} s at {self.fps} fps), so two frames could match one timestamp; use a smaller tolerance",
                path=self.root / INFO_PATH,
            )
        image_keys = tuple(k for k in keys if self.features[k].is_visual)
        for e in episodes:
            for key in image_keys:
                if self.features[key].dtype == "video" and key not in self.episodes[e].videos:
                    raise DatasetError(
                        f"{self.root}: episode {e} has no video for {key!r} in its metadata", path=self.root
                    )
        check_crops(self.root, {k: self.features[k].image_hwc()[:2] for k in image_keys}, options)
        return Selection(
            state_keys=tuple(keys),
            image_keys=image_keys,
            complementary_keys=tuple(
                k
                for k in self.features
                if k.startswith(COMPLEMENTARY_PREFIX) and _is_numeric(self.features[k].dtype)
            ),
            episodes=episodes,
            has_done=DONE_KEY in self.features,
            depth_keys=tuple(k for k in image_keys if self.features[k].is_depth),
        )

    def content_files(self, selection: Selection) -> list[str]:
        """Data and video files a selection reads (relative paths, sorted, no duplicates)."""
        files = {self.episodes[e].data_path for e in selection.episodes}
        for e in selection.episodes:
            for key in selection.image_keys:
                if key in self.episodes[e].videos:
                    files.add(self.episodes[e].videos[key][0])
        return sorted(files)

    def check_files_exist(self, selection: Selection) -> None:
        """Raise DatasetError naming the first file of the selection that is missing."""
        for e in selection.episodes:
            ep = self.episodes[e]
            if not (self.root / ep.data_path).is_file():
                raise DatasetError(
                    f"{self.root / ep.data_path}: data file of episode {e} is missing; re-download the dataset",
                    path=self.root / ep.data_path,
                )
            for key in selection.image_keys:
                if key in ep.videos and not (self.root / ep.videos[key][0]).is_file():
                    path = self.root / ep.videos[key][0]
                    raise DatasetError(
                        f"{path}: video of {key!r} for episode {e} is missing; re-download the dataset or drop the camera with --keys",
                        path=path,
                    )

    # ---- data -----------------------------------------------------------------------------

    def _episodes_by_data_file(self, episodes: Sequence[int]) -> Iterator[tuple[str, list[int]]]:
        groups: dict[str, list[int]] = {}
        for e in episodes:
            groups.setdefault(self.episodes[e].data_path, []).append(e)
        yield from groups.items()

    def read_columns(self, episodes: Sequence[int], columns: Sequence[str]) -> dict[str, np.ndarray]:
        """Numeric columns of the given episodes, concatenated in episode order.

        Returns arrays of shape (frames, *row_shape): a scalar column gives (frames,), a list
        column of length D gives (frames, D), as LeRobot's own reader returns them.

        Raises:
            DatasetError: a file is unreadable, a column is missing or has nulls, or an
                episode's row count disagrees with its metadata.
        """
        wanted = list(dict.fromkeys([*columns, "episode_index"]))
        parts: dict[str, list[np.ndarray]] = {c: [] for c in columns}
        order: list[tuple[int, dict[str, np.ndarray]]] = []
        for rel, eps in self._episodes_by_data_file(episodes):
            table = self._read_table(rel, wanted)
            rows_of = _rows_by_episode(table, eps, self.root / rel, self.episodes)
            arrays = {c: _column_to_numpy(table.column(c), self.root / rel, c) for c in columns}
            for e in eps:
                order.append((e, {c: arrays[c][rows_of[e]] for c in columns}))
        order.sort(key=lambda item: episodes.index(item[0]))
        for _, cols in order:
            for c in columns:
                parts[c].append(cols[c])
        return {c: np.concatenate(parts[c]) if parts[c] else np.empty((0,)) for c in columns}

    def iter_image_bytes(self, episodes: Sequence[int], key: str) -> Iterator[tuple[int, list[bytes]]]:
        """For an `image` feature: (episode, encoded PNG/JPEG bytes of each frame), episode by episode."""
        for rel, eps in self._episodes_by_data_file(episodes):
            table = self._read_table(rel, [key, "episode_index"])
            rows_of = _rows_by_episode(table, eps, self.root / rel, self.episodes)
            column = table.column(key).combine_chunks()
            for e in eps:
                out = []
                for row in rows_of[e]:
                    out.append(self._image_payload(column[int(row)].as_py(), rel, key, e))
                yield e, out

    def _image_payload(self, value: Any, rel: str, key: str, episode: int) -> bytes:
        if isinstance(value, dict):
            if value.get("bytes"):
                return bytes(value["bytes"])
            if value.get("path"):
                path = Path(value["path"])
                path = path if path.is_absolute() else self.root / path
                try:
                    return path.read_bytes()
                except OSError as e:
                    raise DatasetError(
                        f"{path}: image of {key!r} (episode {episode}) is unreadable: {e.strerror}", path=path
                    ) from e
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        raise DatasetError(
            f"{self.root / rel}: column {key!r} of episode {episode} holds no image bytes; re-download the dataset",
            path=self.root / rel,
        )

    def _read_table(self, rel: str, columns: Sequence[str]) -> pa.Table:
        path = self.root / rel
        try:
            # ParquetFile, not pq.read_table: the latter imports pyarrow.dataset (~0.3 s of a warm start).
            file = pq.ParquetFile(path)
            missing = [c for c in columns if c not in file.schema_arrow.names]
            if missing:
                raise DatasetError(
                    f"{path}: missing column(s) {', '.join(missing)} that meta/info.json declares; the dataset is inconsistent",
                    path=path,
                )
            return file.read(columns=list(columns))
        except (OSError, pa.ArrowException) as e:
            raise DatasetError(
                f"{path}: cannot read parquet data ({e}); re-download the dataset", path=path
            ) from e


# ---- helpers -------------------------------------------------------------------------------


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def _role(key: str) -> str | None:
    """What a feature that is not a state key is for (None for keys a state may hold)."""
    if key in _ROLES:
        return _ROLES[key]
    if key in BOOKKEEPING:
        return "LeRobot's per-frame bookkeeping"
    if key.startswith(COMPLEMENTARY_PREFIX):
        return "stored with the transition's complementary_info"
    return None


def _is_numeric(dtype: str) -> bool:
    """Whether a feature dtype can become a cache tensor (torch storage has no uint16/32/64)."""
    return dtype in ("bool", "uint8") or dtype.startswith(("float", "int"))


def _rows_by_episode(
    table: pa.Table, episodes: Iterable[int], path: Path, meta: Mapping[int, Episode]
) -> dict[int, np.ndarray]:
    column = _plain_numpy(table.column("episode_index").combine_chunks())
    out = {}
    for e in episodes:
        rows = np.flatnonzero(column == e)
        if len(rows) != meta[e].length:
            raise DatasetError(
                f"{path}: episode {e} has {len(rows)} rows but its metadata says {meta[e].length}; the dataset is inconsistent",
                path=path,
            )
        out[e] = rows
    return out


def _plain_numpy(array: pa.Array) -> np.ndarray:
    """A null-free primitive Arrow array as numpy, read from its buffers.

    pyarrow's own `to_numpy` imports pandas when it is installed (it is, beside LeRobot): 0.3 s
    added to every build and warm start for a few columns of numbers.
    """
    data = array.buffers()[1]
    if pa.types.is_boolean(array.type):  # bit-packed, least significant bit first
        bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8), bitorder="little")
        return bits[array.offset : array.offset + len(array)].astype(bool)
    kind = "f" if pa.types.is_floating(array.type) else "i" if pa.types.is_signed_integer(array.type) else "u"
    if not (kind != "u" or pa.types.is_unsigned_integer(array.type)):
        raise TypeError(f"not a numeric column: {array.type}")
    dtype = np.dtype(f"<{kind}{array.type.bit_width // 8}")
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def _column_to_numpy(column: pa.ChunkedArray, path: Path, name: str) -> np.ndarray:
    array = column.combine_chunks()
    if array.null_count:
        raise DatasetError(
            f"{path}: column {name!r} has {array.null_count} missing values; fill or drop them", path=path
        )
    shape: list[int] = []
    while (
        pa.types.is_list(array.type)
        or pa.types.is_large_list(array.type)
        or pa.types.is_fixed_size_list(array.type)
    ):
        if len(array) == 0:
            break
        if pa.types.is_fixed_size_list(array.type):
            width = array.type.list_size
        else:
            lengths = _plain_numpy(array.value_lengths())
            width = int(lengths[0])
            if not (lengths == width).all():
                raise DatasetError(f"{path}: column {name!r} has rows of different lengths", path=path)
        shape.append(width)
        array = array.flatten()
        if array.null_count:
            raise DatasetError(f"{path}: column {name!r} has missing values inside its rows", path=path)
    try:
        values = _plain_numpy(array)
    except TypeError as e:
        raise DatasetError(
            f"{path}: column {name!r} holds {array.type}, not numbers as meta/info.json declares", path=path
        ) from e
    rows = len(column)
    return values.reshape(rows, *shape)
