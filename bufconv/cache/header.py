"""A cache's header, read without torch: the cheap checks of a cache file, in order.

`bufconv info` and `bufconv verify --quick` need the header only, and importing torch costs
seconds. The format allows reading it without torch: `data.pkl` is a protocol-2 pickle of
plain values whose tensors are calls of `torch._utils._rebuild_tensor_v2` over storage
records (docs/format.md). `_HeaderUnpickler` accepts exactly those names and nothing else
(it is stricter than torch's `weights_only` loader), so tensors become `TensorStub`s that say
where their bytes are, and no code named by the file is ever run.

    check_structure()    a file; a zip as torch.save writes it; bufconv's integrity digest
    read_top()           ... then the restricted unpickling, the format name and version
    check_consistency()  the header against the tensors, and the small index tensors (numpy)
    read_header()        all of the above: the `meta` of a checked cache

`reader.read_cache` runs the same structure, format and consistency checks on the tensors
torch maps.
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors as E
from ..errors import InvalidCacheError, Problem
from ..source.depth import check_entry as check_depth_entry
from .archive import STORAGE_TYPES, ArchiveError, Layout, read_layout
from .checksum import CHECKSUM, INTEGRITY_PREFIX, checksum_spans
from .sink import NUMPY_DTYPES

FORMAT = "bufconv.offline_buffer"
FORMAT_VERSION = 1

#: Header fields every reader relies on (`bufconv info` prints them).
REQUIRED_META = {
    "bufconv_version": str, "created": str, "frames": int, "tensors": dict, "keys": dict, "ranges": dict,
    "episodes": list, "fingerprint": str, "fingerprint_inputs": dict, "source": dict, "done_source": str,
}  # fmt: skip

_DTYPE_OF_STORAGE = {storage: dtype for dtype, storage in STORAGE_TYPES.items()}
_ITEMSIZE = {"bfloat16": 2, **{name: np.dtype(dtype).itemsize for name, dtype in NUMPY_DTYPES.items()}}


def invalid(path: Path, code: str, message: str) -> InvalidCacheError:
    """The error for a file that fails a check: one problem, the message prefixed by the path."""
    return InvalidCacheError(f"{path}: {message}", path=path, problems=[Problem(code, message)])


# ---- structure -------------------------------------------------------------------------------


def check_structure(path: Path) -> Layout:
    """The zip layout of a file bufconv wrote, after checking its integrity digest.

    Raises:
        InvalidCacheError: `unreadable` (no file, not a zip), `not-a-cache` (a torch file
            bufconv did not write) or `checksum-mismatch` (the header or structure is damaged).
    """
    if not path.is_file():
        raise invalid(path, E.UNREADABLE, "no such file")
    try:
        layout = read_layout(path)
    except ArchiveError as e:
        if _is_torch_legacy(path):
            raise invalid(path, E.NOT_A_CACHE, "a legacy (non-zip) torch file, not a bufconv cache") from e
        raise invalid(
            path,
            E.UNREADABLE,
            f"not a zip archive as torch.save writes ({e}); the file is truncated or not a cache",
        ) from e
    if not layout.comment.startswith(INTEGRITY_PREFIX[: len(b"bufconv")]):
        raise invalid(
            path, E.NOT_A_CACHE, "a torch file, but not one bufconv wrote (no bufconv integrity record)"
        )
    payloads = [name for name in layout.records if name.startswith("data/")]
    structure = checksum_spans(
        path, [(start, end - start) for start, end in layout.structure_spans(payloads)]
    )
    expected = layout.comment[len(INTEGRITY_PREFIX) :].decode("ascii", "replace")
    if not layout.comment.startswith(INTEGRITY_PREFIX) or structure != f"{CHECKSUM}:{expected}":
        raise invalid(
            path,
            E.CHECKSUM_MISMATCH,
            "the header or archive structure is damaged (integrity digest mismatch)",
        )
    return layout


def _is_torch_legacy(path: Path) -> bool:
    """Whether the file starts like a pickle (protocol 2): torch.save's legacy, non-zip format."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x80\x02"
    except OSError:
        return False


def check_top(path: Path, top: Any, format: str = FORMAT, format_version: int = FORMAT_VERSION) -> None:
    """Check the unpickled top-level object's format name and version.

    Raises:
        InvalidCacheError: `not-a-cache` or `unsupported-version`.
    """
    if not isinstance(top, dict) or top.get("format") != format:
        raise invalid(path, E.NOT_A_CACHE, f"the top-level object is not a {format}")
    if top.get("format_version") != format_version:
        raise invalid(
            path,
            E.UNSUPPORTED_VERSION,
            f"format version {top.get('format_version')!r}; this bufconv reads version {format_version}: rebuild the cache",
        )


# ---- unpickling without torch ----------------------------------------------------------------


@dataclass(frozen=True)
class TensorStub:
    """A tensor of a cache as its pickle describes it: where its bytes are, not the bytes."""

    record: str
    """Its storage record, `data/<record>` in the archive."""
    dtype: str
    shape: tuple[int, ...]
    offset: int
    """First element within the storage."""
    storage_numel: int


@dataclass(frozen=True)
class _Storage:
    record: str
    dtype: str
    numel: int


@dataclass(frozen=True)
class _StorageType:
    dtype: str


def _rebuild_tensor(
    storage: Any, offset: Any, shape: Any, stride: Any, *_rest: Any
) -> TensorStub:  # the signature of torch._utils._rebuild_tensor_v2
    if not isinstance(storage, _Storage) or not isinstance(offset, int) or not isinstance(shape, tuple):
        raise pickle.UnpicklingError("a tensor without a storage record")
    if any(not isinstance(n, int) or n < 0 for n in shape):
        raise pickle.UnpicklingError(f"a tensor of shape {shape!r}")
    contiguous, step = [], 1
    for size in reversed(shape):
        contiguous.append(step)
        step *= max(size, 1)
    if tuple(stride) != tuple(reversed(contiguous)):
        raise pickle.UnpicklingError(f"a tensor that is not contiguous (stride {stride!r})")
    return TensorStub(storage.record, storage.dtype, shape, offset, storage.numel)


class _HeaderUnpickler(pickle.Unpickler):
    """Unpickles what bufconv writes into `data.pkl`, and refuses every other global."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _rebuild_tensor
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch" and name in _DTYPE_OF_STORAGE:
            return _StorageType(_DTYPE_OF_STORAGE[name])
        raise pickle.UnpicklingError(f"GLOBAL {module}.{name} is not part of a bufconv cache")

    def persistent_load(self, pid: Any) -> Any:
        if (
            isinstance(pid, tuple)
            and len(pid) == 5
            and pid[0] == "storage"
            and isinstance(pid[1], _StorageType)
            and isinstance(pid[2], str)
            and isinstance(pid[4], int)
        ):
            return _Storage(pid[2], pid[1].dtype, pid[4])
        raise pickle.UnpicklingError(f"an unknown persistent id {pid!r}")


def read_top(path: Path) -> tuple[dict[str, Any], Layout]:
    """The top-level object (tensors as `TensorStub`s) and layout of a cache, format checked.

    Raises:
        InvalidCacheError: as `check_structure`, `unreadable` (a pickle this reader refuses),
            `not-a-cache`, `unsupported-version` or `inconsistent` (a tensor outside its record).
    """
    layout = check_structure(path)
    span = layout.records.get("data.pkl")
    if span is None:
        raise invalid(path, E.NOT_A_CACHE, "a zip archive without data.pkl, not a torch file")
    with open(path, "rb") as f:
        f.seek(span[0])
        data = f.read(span[1])
    try:
        top = _HeaderUnpickler(io.BytesIO(data)).load()
    except Exception as e:  # the pickle machinery raises many types for a crafted file
        raise invalid(
            path, E.UNREADABLE, f"the header is not a pickle bufconv writes ({type(e).__name__}: {e})"
        ) from e
    check_top(path, top)
    for name, stub in (top.get("tensors") or {}).items():
        if isinstance(stub, TensorStub) and not _fits(stub, layout):
            raise invalid(path, E.INCONSISTENT, f"tensor {name!r} runs past its storage record")
    return top, layout


def _fits(stub: TensorStub, layout: Layout) -> bool:
    record = layout.records.get(f"data/{stub.record}")
    end = stub.offset + math.prod(stub.shape)
    return (
        record is not None
        and end <= stub.storage_numel
        and stub.storage_numel * _ITEMSIZE[stub.dtype] <= record[1]
    )


# ---- consistency ------------------------------------------------------------------------------


def check_consistency(
    meta: Any, tensors: Mapping[str, tuple[str, tuple[int, ...]]], index: Callable[[str], np.ndarray]
) -> str | None:
    """The first internal inconsistency of a cache's header and tensors, or None.

    Args:
        meta: The header.
        tensors: Each tensor's dtype name and shape, as stored.
        index: Reads an int64 index tensor (`episode_index`, `next_index`) as a numpy array.
            Only those small tensors are read, never pixels.
    """
    if not isinstance(meta, dict):
        return "meta or tensors is not a dict"
    for field, kind in REQUIRED_META.items():
        if not isinstance(meta.get(field), kind):
            return f"the header's {field!r} is missing or not a {kind.__name__}"
    frames = meta["frames"]
    if not isinstance(frames, int) or frames < 1:
        return f"frames is {frames!r}"
    if list(meta["tensors"]) != list(tensors):
        return "the tensors do not match the header's tensor list"
    for name, info in meta["tensors"].items():
        dtype, shape = tensors[name]
        if list(shape) != info.get("shape") or dtype != info.get("dtype"):
            return f"{name!r} is {dtype} {list(shape)} but the header says {info.get('dtype')} {info.get('shape')}"
        if not shape or shape[0] != frames:
            return f"{name!r} has {shape[0] if shape else 0} rows; the cache has {frames} frames"
    keys = meta["keys"]
    names = [*keys.get("state", []), *keys.get("images", [])]
    for name in [*names, "action", "reward", "done", "truncated", "episode_index", "next_index"]:
        if name not in tensors:
            return f"the header names {name!r} but there is no such tensor"
    for key in keys.get("images", []):
        if tensors[key][0] != "uint8" or len(tensors[key][1]) != 4:
            return f"image {key!r} is not uint8 (N, C, H, W)"
        r = meta["ranges"].get(key)
        if not isinstance(r, dict) or r.get("storage") != "uint8" or r.get("output") not in (1, 255):
            return f"image {key!r} has no valid range declaration ({r!r})"
    if set(meta["ranges"]) != set(keys.get("images", [])):
        return "range declarations do not match the image keys"
    depth = meta.get("depth") or {}
    if set(depth) != set(keys.get("depth", [])):
        return "depth declarations do not match the depth keys"
    for key in keys.get("depth", []):
        if key not in tensors:
            return f"the header names depth key {key!r} but there is no such tensor"
        problem = check_depth_entry(key, depth[key], *tensors[key])
        if problem:
            return problem
    start = 0
    for row in meta["episodes"]:
        if row.get("start") != start or not isinstance(row.get("length"), int) or row["length"] < 1:
            return f"the episode table is not contiguous at episode {row.get('episode_index')!r}"
        start += row["length"]
    if start != frames:
        return f"the episode table covers {start} frames; the cache has {frames}"
    if tensors["episode_index"][0] != "int64" or tensors["next_index"][0] != "int64":
        return "episode_index/next_index are not int64"
    episode_index, next_index = index("episode_index"), index("next_index")
    expected = np.repeat(
        np.array([row["episode_index"] for row in meta["episodes"]], dtype=np.int64),
        np.array([row["length"] for row in meta["episodes"]], dtype=np.int64),
    )
    if not np.array_equal(episode_index, expected):
        return "episode_index disagrees with the episode table"
    if int(next_index.min()) < 0 or int(next_index.max()) >= frames:
        return "next_index points outside the cache"
    if not np.array_equal(episode_index[next_index], episode_index):
        return "next_index pairs frames of different episodes"
    return None


#: What a malformed header raises while being checked (the integrity digest is not a
#: signature: a crafted file can pass it with any header).
MALFORMED = (KeyError, TypeError, AttributeError, ValueError, IndexError, RuntimeError)


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header (`meta`) of a cache, after every check but the tensor checksums; no torch, no pixels.

    Raises:
        InvalidCacheError: `unreadable`, `not-a-cache`, `unsupported-version`, `checksum-mismatch`
            (the header or structure) or `inconsistent`.
    """
    path = Path(path)
    top, layout = read_top(path)
    meta, tensors = top.get("meta"), top.get("tensors")
    if not isinstance(tensors, dict):
        raise invalid(path, E.INCONSISTENT, "meta or tensors is not a dict")
    for name, stub in tensors.items():
        if not isinstance(stub, TensorStub):
            raise invalid(path, E.INCONSISTENT, f"{name!r} is not a tensor")
    try:
        specs = {name: (t.dtype, t.shape) for name, t in tensors.items()}
        problem = check_consistency(meta, specs, lambda name: _read_index(path, layout, tensors[name]))
    except MALFORMED as e:
        problem = f"the header is malformed ({type(e).__name__}: {e})"
    if problem:
        raise invalid(path, E.INCONSISTENT, problem)
    return meta  # type: ignore[return-value]


def _read_index(path: Path, layout: Layout, stub: TensorStub) -> np.ndarray:
    start = layout.records[f"data/{stub.record}"][0] + stub.offset * 8
    return np.fromfile(path, dtype=np.int64, count=math.prod(stub.shape), offset=start)


# ---- the summary `bufconv info --json` prints ----------------------------------------------------


def summarize(path: str | os.PathLike[str], meta: Mapping[str, Any]) -> dict[str, Any]:
    """A cache's header as `bufconv info --json` prints it (README, "JSON output").

    The header's fields as stored, except two bookkeeping entries made readable:
    `fingerprint_inputs` becomes `options` (what the cache was built with) and `source_files`
    (each file's size, digest and, from `source_stats`, its modification time as ISO 8601).
    `ranges` keeps the header's shape, `{key: {"storage": "uint8", "output": 1 | 255}}`, which
    `verify --json` uses too.
    """
    from datetime import datetime, timezone

    inputs = meta.get("fingerprint_inputs") or {}
    stats = meta.get("source_stats") or {}
    files = {}
    for rel, entry in ((inputs.get("source") or {}).get("files") or {}).items():
        stat = stats.get(rel)
        modified = (
            datetime.fromtimestamp(stat[1] / 1e9, timezone.utc).isoformat(timespec="seconds")
            if isinstance(stat, list) and len(stat) == 2
            else None
        )
        files[rel] = {**entry, "modified": modified}
    summary: dict[str, Any] = {
        "path": os.fspath(path),
        "kind": "bufconv-cache",
        "format_version": FORMAT_VERSION,
        "file_bytes": os.path.getsize(path),
    }
    for key, value in meta.items():
        if key == "fingerprint_inputs":
            summary["options"] = inputs.get("options")
            summary["converter_version"] = inputs.get("converter_version")
            summary["source_files"] = files
        elif key != "source_stats":
            summary[key] = value
    return summary
