"""The cache file (`offline_buffer.pt`, format version 1): its format, and reading and checking it.

Format summary (the full specification is docs/format.md):

- A zip archive in torch's layout; `torch.load(path, weights_only=True, mmap=True)` opens it.
- Top level: {"format": "bufconv.offline_buffer", "format_version": 1, "meta": {...}, "tensors": {...}}.
- `meta` holds JSON values only, including an xxh3-128 checksum per tensor.
- The archive comment, the file's last bytes, holds an xxh3-128 digest of every byte that is
  not tensor payload (headers, pickle, directory): with the tensor checksums, every byte of
  the file is covered.
- Written by `cache_writer.CacheWriter`, under the lock of `lock.locked`.

Reading checks from cheap to expensive and stops at the first failure: the zip structure, the
integrity digest, safe unpickling, the format name and version, internal consistency, and
(unless quick) the tensor checksums.
"""

from __future__ import annotations

import math
import os
import pickle
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .. import errors as E
from ..errors import InvalidCacheError, Problem
from .archive import ArchiveError, Layout, read_layout
from .checksum import CHECKSUM, INTEGRITY_PREFIX, checksum_spans
from .sink import NUMPY_DTYPES

FORMAT = "bufconv.offline_buffer"
FORMAT_VERSION = 1


def dtype_name(dtype: torch.dtype) -> str:
    """'uint8' for torch.uint8: the spelling used in the header."""
    return str(dtype).removeprefix("torch.")


@dataclass(frozen=True)
class TensorSpec:
    """A tensor the cache will hold: its name, dtype and shape."""

    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]

    def __post_init__(self) -> None:
        if dtype_name(self.dtype) not in NUMPY_DTYPES:  # filled from numpy, so numpy must know the dtype
            raise ValueError(
                f"{self.name}: dtype {self.dtype} cannot be stored; use one of {sorted(NUMPY_DTYPES)}"
            )

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * self.dtype.itemsize


# ---- reading ------------------------------------------------------------------------------


@dataclass
class CacheFile:
    """A cache opened for reading: header and memory-mapped tensors (no pixel read yet).

    The tensors map the file that was checked, even if the path is replaced afterwards.
    """

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    layout: Layout

    @property
    def frames(self) -> int:
        return int(self.meta["frames"])


def _invalid(path: Path, code: str, message: str) -> InvalidCacheError:
    return InvalidCacheError(f"{path}: {message}", path=path, problems=[Problem(code, message)])


def safe_load(path: Path, *, mmap: bool = True) -> Any:
    """`torch.load` with `weights_only=True`: pickles that name code are refused, never run.

    Raises:
        InvalidCacheError: code "unreadable".
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        raise _invalid(path, E.UNREADABLE, _refusal(str(e))) from e
    except Exception as e:  # torch.load raises RuntimeError, EOFError, ValueError, ... for damaged files
        raise _invalid(
            path,
            E.UNREADABLE,
            f"not a file torch.load can read ({type(e).__name__}: {_first_line(str(e))}): "
            "it is damaged, truncated or not a torch file",
        ) from e


_CODE = "the file refers to Python code ({name}), which safe loading never runs; it was not executed"
_NOT_A_PICKLE = "the file's data is not a valid pickle ({detail}): it is damaged, truncated or not a torch file"


def _refusal(message: str) -> str:
    """Why torch's safe unpickler refused a file, without torch's advice.

    torch's message suggests re-running with `weights_only=False` or allow-listing the class:
    both execute the file's code, so neither is ever repeated to the user.
    """
    code = re.search(r"GLOBAL ([\w.]+)", message)
    if code:
        return _CODE.format(name=code.group(1))
    detail = re.search(r"WeightsUnpickler error:\s*(.+?)\s*(?:\n\n|$)", message, re.DOTALL)
    text = detail.group(1) if detail else ""
    if not text or "weights_only" in text:
        text = "refused by safe loading"
    return _NOT_A_PICKLE.format(detail=" ".join(text.split()))


def _first_line(text: str) -> str:
    line = text.strip().splitlines()[0] if text.strip() else ""
    return "" if "weights_only" in line else line


def open_archive(
    path: Path, *, format: str = FORMAT, format_version: int = FORMAT_VERSION
) -> tuple[dict[str, Any], Layout]:
    """The top-level object and zip layout of a file bufconv wrote, after the cheap checks.

    Checks, cheap to expensive: a file, a zip as torch.save writes it, bufconv's integrity
    record over the header and structure, safe loading, the `format` and its version.

    Raises:
        InvalidCacheError: `unreadable`, `not-a-cache`, `checksum-mismatch` or `unsupported-version`.
    """
    if not path.is_file():
        raise _invalid(path, E.UNREADABLE, "no such file")
    try:
        layout = read_layout(path)
    except ArchiveError as e:
        if _is_torch_legacy(path):
            raise _invalid(path, E.NOT_A_CACHE, "a legacy (non-zip) torch file, not a bufconv cache") from e
        raise _invalid(
            path,
            E.UNREADABLE,
            f"not a zip archive as torch.save writes ({e}); the file is truncated or not a cache",
        ) from e
    if not layout.comment.startswith(INTEGRITY_PREFIX[: len(b"bufconv")]):
        raise _invalid(
            path, E.NOT_A_CACHE, "a torch file, but not one bufconv wrote (no bufconv integrity record)"
        )
    payloads = [name for name in layout.records if name.startswith("data/")]
    structure = checksum_spans(
        path, [(start, end - start) for start, end in layout.structure_spans(payloads)]
    )
    expected = layout.comment[len(INTEGRITY_PREFIX) :].decode("ascii", "replace")
    if not layout.comment.startswith(INTEGRITY_PREFIX) or structure != f"{CHECKSUM}:{expected}":
        raise _invalid(
            path,
            E.CHECKSUM_MISMATCH,
            "the header or archive structure is damaged (integrity digest mismatch)",
        )
    top = safe_load(path, mmap=True)
    if not isinstance(top, dict) or top.get("format") != format:
        raise _invalid(path, E.NOT_A_CACHE, f"the top-level object is not a {format}")
    if top.get("format_version") != format_version:
        raise _invalid(
            path,
            E.UNSUPPORTED_VERSION,
            f"format version {top.get('format_version')!r}; this bufconv reads version {format_version}: rebuild the cache",
        )
    return top, layout


def read_cache(path: str | os.PathLike[str], *, verify_payload: bool = True) -> CacheFile:
    """Open a cache, checking it from cheap to expensive.

    Args:
        path: The `.pt` file.
        verify_payload: Also recompute every tensor checksum (reads all bytes; xxh3 runs at
            several GB/s, so this is well under a second for typical caches).

    Raises:
        InvalidCacheError: with one problem whose code says what is wrong (`unreadable`,
            `not-a-cache`, `unsupported-version`, `checksum-mismatch`, `inconsistent`).
    """
    path = Path(path)
    top, layout = open_archive(path)
    cache = CacheFile(path, top.get("meta"), top.get("tensors"), layout)  # type: ignore[arg-type]
    try:
        problem = check_consistency(cache)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError, RuntimeError) as e:
        # The integrity digest is not a signature: a crafted file can pass it with any header.
        problem = f"the header is malformed ({type(e).__name__}: {e})"
    if problem:
        raise _invalid(path, E.INCONSISTENT, problem)
    if verify_payload:
        verify_tensors(cache)
    return cache


def verify_tensors(cache: CacheFile) -> None:
    """Recompute every tensor checksum (reads all bytes, at several GB/s).

    Raises:
        InvalidCacheError: code "checksum-mismatch", naming the damaged tensors.
    """
    bad = mismatched_tensors(cache)
    if bad:
        raise _invalid(
            cache.path,
            E.CHECKSUM_MISMATCH,
            f"tensor(s) {', '.join(bad)} do not match their checksum: the file is corrupted",
        )


def _is_torch_legacy(path: Path) -> bool:
    """Whether the file starts like a pickle (protocol 2): torch.save's legacy, non-zip format."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == b"\x80\x02"
    except OSError:
        return False


def mismatched_tensors(cache: CacheFile) -> list[str]:
    """Names of tensors whose bytes do not hash to the checksum in the header."""
    bad = []
    keys = {name: i for i, name in enumerate(cache.meta["tensors"])}
    for name, info in cache.meta["tensors"].items():
        span = cache.layout.records.get(f"data/{keys[name]}")
        if span is None or checksum_spans(cache.path, [span]) != info.get("checksum"):
            bad.append(name)
    return bad


#: Header fields every reader relies on (`bufconv info` prints them).
REQUIRED_META = {
    "bufconv_version": str, "created": str, "frames": int, "tensors": dict, "keys": dict, "ranges": dict,
    "episodes": list, "fingerprint": str, "fingerprint_inputs": dict, "source": dict, "done_source": str,
}  # fmt: skip


def check_consistency(cache: CacheFile) -> str | None:
    """The first internal inconsistency of a cache's header and tensors, or None.

    Cheap: reads only small index tensors (episode and next indices), never pixels.
    """
    meta, tensors = cache.meta, cache.tensors
    if not isinstance(meta, dict) or not isinstance(tensors, dict):
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
        tensor = tensors[name]
        if not isinstance(tensor, torch.Tensor):
            return f"{name!r} is not a tensor"
        if list(tensor.shape) != info.get("shape") or dtype_name(tensor.dtype) != info.get("dtype"):
            return f"{name!r} is {dtype_name(tensor.dtype)} {list(tensor.shape)} but the header says {info.get('dtype')} {info.get('shape')}"
        if tensor.ndim == 0 or tensor.shape[0] != frames:
            return f"{name!r} has {tensor.shape[0] if tensor.ndim else 0} rows; the cache has {frames} frames"
    keys = meta["keys"]
    for name in [
        *keys.get("state", []),
        *keys.get("images", []),
        "action",
        "reward",
        "done",
        "truncated",
        "episode_index",
        "next_index",
    ]:
        if name not in tensors:
            return f"the header names {name!r} but there is no such tensor"
    for key in keys.get("images", []):
        if tensors[key].dtype != torch.uint8 or tensors[key].ndim != 4:
            return f"image {key!r} is not uint8 (N, C, H, W)"
        r = meta["ranges"].get(key)
        if not isinstance(r, dict) or r.get("storage") != "uint8" or r.get("output") not in (1, 255):
            return f"image {key!r} has no valid range declaration ({r!r})"
    if set(meta["ranges"]) != set(keys.get("images", [])):
        return "range declarations do not match the image keys"
    start = 0
    for row in meta["episodes"]:
        if row.get("start") != start or not isinstance(row.get("length"), int) or row["length"] < 1:
            return f"the episode table is not contiguous at episode {row.get('episode_index')!r}"
        start += row["length"]
    if start != frames:
        return f"the episode table covers {start} frames; the cache has {frames}"
    episode_index = tensors["episode_index"]
    next_index = tensors["next_index"]
    if episode_index.dtype != torch.int64 or next_index.dtype != torch.int64:
        return "episode_index/next_index are not int64"
    expected = torch.repeat_interleave(
        torch.tensor([row["episode_index"] for row in meta["episodes"]], dtype=torch.int64),
        torch.tensor([row["length"] for row in meta["episodes"]], dtype=torch.int64),
    )
    if not torch.equal(episode_index, expected):
        return "episode_index disagrees with the episode table"
    if int(next_index.min()) < 0 or int(next_index.max()) >= frames:
        return "next_index points outside the cache"
    if not torch.equal(episode_index[next_index], episode_index):
        return "next_index pairs frames of different episodes"
    return None


def read_header(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The header (`meta`) of a cache without reading tensor data, after the cheap checks."""
    return read_cache(path, verify_payload=False).meta
