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
(unless quick) the tensor checksums. The checks that need no tensor data live in `header.py`,
which reads a header without torch (`read_header`, for `bufconv info` and `verify --quick`).
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
from .archive import Layout
from .checksum import checksum_spans
from .header import FORMAT, FORMAT_VERSION, MALFORMED, check_structure, check_top
from .header import check_consistency as check_header_consistency
from .header import invalid as _invalid
from .header import read_header as read_header  # the header alone, without torch
from .sink import NUMPY_DTYPES


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
_NOT_A_PICKLE = (
    "the file's data is not a valid pickle ({detail}): it is damaged, truncated or not a torch file"
)


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
    path: Path, *, format: str = FORMAT, format_version: int | None = None
) -> tuple[dict[str, Any], Layout]:
    """The top-level object and zip layout of a file bufconv wrote, after the cheap checks.

    Checks, cheap to expensive: a file, a zip as torch.save writes it, bufconv's integrity
    record over the header and structure, safe loading, the `format` and its version.

    Raises:
        InvalidCacheError: `unreadable`, `not-a-cache`, `checksum-mismatch` or `unsupported-version`.
    """
    layout = check_structure(path)
    top = safe_load(path, mmap=True)
    # FORMAT_VERSION looked up now, not when this was defined (tests stand in a future version).
    check_top(path, top, format, FORMAT_VERSION if format_version is None else format_version)
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
    except MALFORMED as e:
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


def mismatched_tensors(cache: CacheFile) -> list[str]:
    """Names of tensors whose bytes do not hash to the checksum in the header."""
    bad = []
    keys = {name: i for i, name in enumerate(cache.meta["tensors"])}
    for name, info in cache.meta["tensors"].items():
        span = cache.layout.records.get(f"data/{keys[name]}")
        if span is None or checksum_spans(cache.path, [span]) != info.get("checksum"):
            bad.append(name)
    return bad


def check_consistency(cache: CacheFile) -> str | None:
    """The first internal inconsistency of a cache's header and tensors, or None: the checks of
    `header.check_consistency` on the mapped tensors. Cheap: reads only the small index tensors
    (episode and next indices), never pixels.
    """
    if not isinstance(cache.meta, dict) or not isinstance(cache.tensors, dict):
        return "meta or tensors is not a dict"
    for name, tensor in cache.tensors.items():
        if not isinstance(tensor, torch.Tensor):
            return f"{name!r} is not a tensor"
    specs = {name: (dtype_name(t.dtype), tuple(t.shape)) for name, t in cache.tensors.items()}
    return check_header_consistency(cache.meta, specs, lambda name: cache.tensors[name].numpy())
