"""The cache file (`offline_buffer.pt`, format version 1): writing, reading, checking, locking.

Format summary (the full specification is docs/format.md):

- A zip archive in torch's layout; `torch.load(path, weights_only=True, mmap=True)` opens it.
- Top level: {"format": "bufconv.offline_buffer", "format_version": 1, "meta": {...}, "tensors": {...}}.
- `meta` holds JSON values only, including an xxh3-128 checksum per tensor.
- The archive comment, the file's last bytes, holds an xxh3-128 digest of every byte that is
  not tensor payload (headers, pickle, directory): with the tensor checksums, every byte of
  the file is covered.
- Written to a temporary file in the destination folder, fsynced, then renamed over the
  destination; builders of one path are serialised by a lock file next to it.

Reading checks from cheap to expensive and stops at the first failure: the zip structure, the
integrity digest, safe unpickling, the format name and version, internal consistency, and
(unless quick) the tensor checksums.
"""

from __future__ import annotations

import contextlib
import errno
import math
import mmap
import os
import pickle
import secrets
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xxhash

from . import errors as E
from .archive import ArchiveError, ArchiveWriter, Layout, pickle_tree, read_layout
from .errors import CacheError, InvalidCacheError, LockTimeoutError, Problem
from .sink import NUMPY_DTYPES, Target, pwrite_all

FORMAT = "bufconv.offline_buffer"
FORMAT_VERSION = 1
CHECKSUM = "xxh3_128"
_INTEGRITY_PREFIX = b"bufconv.offline_buffer integrity xxh3_128:"
_INTEGRITY_LENGTH = len(_INTEGRITY_PREFIX) + 32
_WINDOW = 64 << 20
_SPACE_MARGIN = 64 << 20

_DTYPES: dict[str, torch.dtype] = {
    "uint8": torch.uint8,
    "int8": torch.int8,
    "int16": torch.int16,
    "int32": torch.int32,
    "int64": torch.int64,
    "float16": torch.float16,
    "bfloat16": torch.bfloat16,
    "float32": torch.float32,
    "float64": torch.float64,
    "bool": torch.bool,
}


def dtype_name(dtype: torch.dtype) -> str:
    """'uint8' for torch.uint8: the spelling used in the header."""
    return str(dtype).removeprefix("torch.")


def torch_dtype(name: str) -> torch.dtype:
    return _DTYPES[name]


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
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


def _digest_span(fd: int, file_size: int, offset: int, size: int, hasher: Any) -> None:
    """Feed bytes [offset, offset + size) of the file to `hasher`, through read-only windows.

    Mapping hashes straight from the page cache (3x faster than pread's copy); windows keep
    the mapped, resident part bounded. The size check comes first: touching a mapping past
    the end of a (truncated) file would be a SIGBUS, not an error.
    """
    if offset + size > file_size:
        raise OSError(errno.EIO, f"span {offset}+{size} runs past the end of the file ({file_size} bytes)")
    end = offset + size
    while offset < end:
        start = offset - offset % mmap.ALLOCATIONGRANULARITY
        length = min(_WINDOW, end - start)
        with mmap.mmap(fd, length, prot=mmap.PROT_READ, offset=start) as window, memoryview(window) as view:
            hasher.update(view[offset - start : length])
        offset = start + length


def checksum_spans(path: str | os.PathLike[str], spans: Sequence[tuple[int, int]]) -> str:
    """xxh3-128 over the given (offset, size) spans of a file, in order."""
    hasher = xxhash.xxh3_128()
    fd = os.open(path, os.O_RDONLY)
    try:
        file_size = os.fstat(fd).st_size
        for offset, size in spans:
            if size:
                _digest_span(fd, file_size, offset, size, hasher)
    finally:
        os.close(fd)
    return f"{CHECKSUM}:{hasher.hexdigest()}"


def _integrity_comment(structure: bytes) -> bytes:
    return _INTEGRITY_PREFIX + xxhash.xxh3_128(structure).hexdigest().encode()


# ---- writing ------------------------------------------------------------------------------


def temp_path_for(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_temps(final: Path) -> list[Path]:
    """Delete temporary files left by builders of `final` that died. Call only while holding its lock."""
    removed = []
    for path in final.parent.glob(f".{final.name}.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def writable_dir_error(folder: Path, e: OSError) -> CacheError:
    why = os.strerror(e.errno) if e.errno else str(e)
    return CacheError(
        f"{folder}: cannot write the cache here ({why}); choose a writable folder with -o/--output or cache_path=",
        path=folder,
    )


class CacheWriter:
    """A cache under construction: a temporary file whose tensors are filled in place, then sealed.

    Tensors are written with `write` (whole arrays or row ranges) or streamed row by row through
    `target(name).sink()` (from any process). Use as a context manager: leaving the block
    without `commit()` deletes the temporary file.

    Args:
        final: Where the finished cache goes (replaced atomically on `commit`).
        specs: The tensors, in the order they are stored.
    """

    def __init__(self, final: Path, specs: Sequence[TensorSpec], *, preallocate: bool = True) -> None:
        self.final = final
        self.specs = {s.name: s for s in specs}
        self.tmp = temp_path_for(final)
        self._fd: int | None = None
        self._committed = False
        total = sum(s.nbytes for s in specs)
        try:
            stat = os.statvfs(final.parent)
            free = stat.f_bavail * stat.f_frsize
        except OSError as e:
            raise writable_dir_error(final.parent, e) from e
        if free < total + _SPACE_MARGIN:
            raise CacheError(
                f"{final.parent}: not enough free space for the cache (needs {_mb(total + _SPACE_MARGIN)}, "
                f"{_mb(free)} free); free some space or choose another folder with -o/--output",
                path=final.parent,
            )
        try:
            self._fd = os.open(self.tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
            self.archive = ArchiveWriter(self._fd)
            self.offsets: dict[str, int] = {}
            for index, spec in enumerate(specs):
                self.offsets[spec.name] = self.archive.reserve(f"data/{index}", spec.nbytes)
            _reserve_space(self._fd, self.archive.pos, preallocate)
        except OSError as e:
            self._cleanup()
            if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise CacheError(
                    f"{final.parent}: no room for the cache ({os.strerror(e.errno)}; needs {_mb(total)}); "
                    "free some space or choose another folder with -o/--output",
                    path=final.parent,
                ) from e
            raise writable_dir_error(final.parent, e) from e

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._committed:
            self._cleanup()

    def _cleanup(self) -> None:
        self._close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)

    def _close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def write(self, name: str, values: Any, first_row: int = 0) -> None:
        """Write `values` (array-like, shaped like rows of tensor `name`) starting at `first_row`.

        Raises:
            ValueError: the values do not fit the tensor's dtype or row shape.
        """
        spec = self.specs[name]
        dtype = NUMPY_DTYPES[dtype_name(spec.dtype)]
        array = np.ascontiguousarray(values, dtype=dtype)
        if array.size == 0:
            return
        if spec.shape:
            array = array.reshape(-1, *spec.shape[1:])
            if first_row < 0 or first_row + len(array) > spec.shape[0]:
                raise ValueError(
                    f"{name}: rows {first_row}..{first_row + len(array)} outside its {spec.shape[0]} rows"
                )
            row_bytes = math.prod(spec.shape[1:]) * array.itemsize
        else:
            array, row_bytes = array.reshape(()), 0
        if array.nbytes:
            assert self._fd is not None, "write() after close"
            pwrite_all(self._fd, array, self.offsets[name] + first_row * row_bytes)

    def target(self, name: str) -> Target:
        """Where tensor `name` lives in the temporary file: `target(name).sink()` streams rows into it."""
        spec = self.specs[name]
        return Target(str(self.tmp), self.offsets[name], dtype_name(spec.dtype), spec.shape)

    def checksums(self, known: Mapping[str, str] | None = None) -> dict[str, str]:
        """xxh3-128 of each tensor's bytes as now in the file (`known` ones are taken as given)."""
        known = known or {}
        return {
            name: known.get(name) or checksum_spans(self.tmp, [(self.offsets[name], spec.nbytes)])
            for name, spec in self.specs.items()
        }

    def seal(self, meta: dict[str, Any], checksums: Mapping[str, str] | None = None) -> None:
        """Write the header (meta, with `meta['tensors'][name]['checksum']` filled), fsync the file.

        Args:
            meta: The header, without its `tensors` entry.
            checksums: Tensor checksums already computed while writing (the rest are computed here).

        Raises:
            CacheError: the file could not be written (disk full, I/O error).
        """
        assert self._fd is not None, "seal() after close"
        try:
            sums = self.checksums(checksums)
            meta = dict(meta)
            meta["tensors"] = {
                name: {"dtype": dtype_name(spec.dtype), "shape": list(spec.shape), "checksum": sums[name]}
                for name, spec in self.specs.items()
            }
            placeholders = {
                name: torch.empty(spec.shape, dtype=spec.dtype) for name, spec in self.specs.items()
            }
            keys = {name: str(i) for i, name in enumerate(self.specs)}
            top = {"format": FORMAT, "format_version": FORMAT_VERSION, "meta": meta, "tensors": placeholders}
            self.archive.add("data.pkl", pickle_tree(top, placeholders, keys))
            self.archive.add(".format_version", b"1")
            self.archive.add(".storage_alignment", b"64")
            self.archive.add("byteorder", b"little")
            self.archive.add("version", b"3\n")
            self.archive.finish_directory(_INTEGRITY_LENGTH)
            self.archive.write_comment(_integrity_comment(self.archive.structure_bytes()))
            os.fsync(self._fd)
        except OSError as e:
            self._cleanup()
            raise CacheError(
                f"{self.final}: writing the cache failed ({os.strerror(e.errno or errno.EIO)}); nothing was replaced. "
                "Free some space or choose another folder with -o/--output",
                path=self.final,
            ) from e

    def commit(self) -> None:
        """Atomically replace the destination with the sealed temporary file."""
        self._close()
        # Freeing the blocks of a large replaced cache takes tens of milliseconds (more with
        # online discard). Holding the old file open moves that work to a background close.
        old = None
        if os.name == "posix":
            with contextlib.suppress(OSError):
                old = os.open(self.final, os.O_RDONLY)
        try:
            os.replace(self.tmp, self.final)
            _fsync_dir(self.final.parent)
        except OSError as e:
            if old is not None:
                os.close(old)
            self._cleanup()
            raise CacheError(
                f"{self.final}: cannot replace the cache ({os.strerror(e.errno or errno.EIO)}); the old file is untouched. "
                "Check the folder's permissions or choose another output path with -o/--output",
                path=self.final,
            ) from e
        self._committed = True
        if old is not None:
            threading.Thread(
                target=os.close, args=(old,), name="bufconv-release-old-cache", daemon=True
            ).start()


def _reserve_space(fd: int, size: int, preallocate: bool) -> None:
    """Size the file, allocating its blocks now when asked.

    Frames are written through a memory map; on a sparse file a full disk would surface as
    SIGBUS in the middle of decoding. Allocating up front turns that into ENOSPC here, before
    any work (measured: no slower than filling a sparse file).
    """
    if preallocate and size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    os.ftruncate(fd, size)


def _fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened/fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


# ---- locking ------------------------------------------------------------------------------


def lock_path_for(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


@contextlib.contextmanager
def locked(final: Path, *, timeout: float | None = None, poll: float = 0.05) -> Iterator[None]:
    """Hold an exclusive lock on the cache path `final` (a `flock` on a file next to it).

    The kernel releases the lock when its holder dies, so a crashed builder never blocks the
    next one. The lock file is removed on release; a waiter that locked a file which was
    removed meanwhile notices (inode changed) and retries.

    Raises:
        CacheError: the folder is not writable.
        LockTimeoutError: `timeout` seconds passed while another process held the lock.
    """
    import fcntl

    path = lock_path_for(final)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise writable_dir_error(final.parent, e) from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if deadline is not None and time.monotonic() > deadline:
                raise LockTimeoutError(
                    f"{final}: another process{holder} has been building this cache for over {timeout:g} s; "
                    f"wait for it, or remove {path} if no such process exists",
                    path=final,
                ) from None
            time.sleep(poll)
            continue
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid})"
    return ""


# ---- reading ------------------------------------------------------------------------------


@dataclass
class CacheFile:
    """A cache opened for reading: header and memory-mapped tensors (no pixel read yet)."""

    path: Path
    meta: dict[str, Any]
    tensors: dict[str, torch.Tensor]

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
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise _invalid(
            path,
            E.UNREADABLE,
            f"safe loading refused the file: it holds Python objects other than tensors and plain values ({first}); it was not executed",
        ) from e
    except Exception as e:  # torch.load raises RuntimeError, EOFError, ValueError, ... for damaged files
        raise _invalid(
            path,
            E.UNREADABLE,
            f"not loadable by torch.load ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})",
        ) from e


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
    if not layout.comment.startswith(_INTEGRITY_PREFIX[: len(b"bufconv")]):
        raise _invalid(
            path, E.NOT_A_CACHE, "a torch file, but not one bufconv wrote (no bufconv integrity record)"
        )
    payloads = [name for name in layout.records if name.startswith("data/")]
    structure = checksum_spans(
        path, [(start, end - start) for start, end in layout.structure_spans(payloads)]
    )
    expected = layout.comment[len(_INTEGRITY_PREFIX) :].decode("ascii", "replace")
    if not layout.comment.startswith(_INTEGRITY_PREFIX) or structure != f"{CHECKSUM}:{expected}":
        raise _invalid(
            path,
            E.CHECKSUM_MISMATCH,
            "the header or archive structure is damaged (integrity digest mismatch)",
        )
    top = safe_load(path, mmap=True)
    if not isinstance(top, dict) or top.get("format") != FORMAT:
        raise _invalid(path, E.NOT_A_CACHE, f"the top-level object is not a {FORMAT}")
    if top.get("format_version") != FORMAT_VERSION:
        raise _invalid(
            path,
            E.UNSUPPORTED_VERSION,
            f"format version {top.get('format_version')!r}; this bufconv reads version {FORMAT_VERSION}: rebuild the cache",
        )
    cache = CacheFile(path, top.get("meta"), top.get("tensors"))  # type: ignore[arg-type]
    problem = check_consistency(cache, layout)
    if problem:
        raise _invalid(path, E.INCONSISTENT, problem)
    if verify_payload:
        bad = mismatched_tensors(cache, layout)
        if bad:
            raise _invalid(
                path,
                E.CHECKSUM_MISMATCH,
                f"tensor(s) {', '.join(bad)} do not match their checksum: the file is corrupted",
            )
    return cache


def _is_torch_legacy(path: Path) -> bool:
    with open(path, "rb") as f:
        return (
            f.read(2) == b"\x80\x02"
        )  # pickle protocol 2 magic: torch.save(..., _use_new_zipfile_serialization=False)


def mismatched_tensors(cache: CacheFile, layout: Layout) -> list[str]:
    """Names of tensors whose bytes do not hash to the checksum in the header."""
    bad = []
    keys = {name: i for i, name in enumerate(cache.meta["tensors"])}
    for name, info in cache.meta["tensors"].items():
        span = layout.records.get(f"data/{keys[name]}")
        if span is None or checksum_spans(cache.path, [span]) != info["checksum"]:
            bad.append(name)
    return bad


def check_consistency(cache: CacheFile, layout: Layout | None = None) -> str | None:
    """The first internal inconsistency of a cache's header and tensors, or None.

    Cheap: reads only small index tensors (episode and next indices), never pixels.
    """
    meta, tensors = cache.meta, cache.tensors
    if not isinstance(meta, dict) or not isinstance(tensors, dict):
        return "meta or tensors is not a dict"
    for field in ("frames", "tensors", "keys", "ranges", "episodes", "fingerprint", "fingerprint_inputs"):
        if field not in meta:
            return f"the header lacks {field!r}"
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


def describe_problems(problems: Sequence[Problem]) -> str:
    return "; ".join(p.message for p in problems)


def file_stat(path: Path) -> Mapping[str, int] | None:
    with contextlib.suppress(OSError):
        st = path.stat()
        return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}
    return None
