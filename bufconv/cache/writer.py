"""Writing a cache file: laid out first, tensors filled in place, sealed, then renamed into place.

The temporary file lives next to the destination and is fsynced before `os.replace`, so a
crash at any moment leaves the old cache or the new one, never a mix (docs/format.md section 8).
"""

from __future__ import annotations

import contextlib
import errno
import glob
import math
import os
import secrets
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CacheError, unwritable_folder
from .archive import ArchiveWriter, pickle_tree, tensor_ref
from .checksum import INTEGRITY_LENGTH, checksum_spans, integrity_comment
from .reader import FORMAT, FORMAT_VERSION, TensorSpec, dtype_name
from .sink import NUMPY_DTYPES, Target, pwrite_all

#: Room asked for beyond the tensors: the header (pickled meta, zip records and directory) is
#: written last and is a few kB, up to a few hundred kB for tens of thousands of episodes.
_SPACE_MARGIN = 1 << 20


def temp_path_for(final: Path) -> Path:
    return final.parent / f".{final.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}"


def remove_stale_temps(final: Path) -> list[Path]:
    """Delete temporary files left by builders of `final` that died. Call only while holding its lock."""
    removed = []
    for path in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


class CacheWriter:
    """A cache under construction: a temporary file whose tensors are filled in place, then sealed.

    Tensors are written with `write` (whole arrays or row ranges) or streamed row by row through
    `target(name).sink()` (from any process). Use as a context manager: leaving the block
    without `commit()` deletes the temporary file.

    Args:
        final: Where the finished cache goes (replaced atomically on `commit`).
        specs: The tensors, in the order they are stored.
        format: The top-level `format` string (an online buffer's segments use this writer too).
    """

    def __init__(
        self, final: Path, specs: Sequence[TensorSpec], *, preallocate: bool = True, format: str = FORMAT
    ) -> None:
        self.final = final
        self.format = format
        self.specs = {s.name: s for s in specs}
        self.tmp = temp_path_for(final)
        self._fd: int | None = None
        self._committed = False
        total = sum(s.nbytes for s in specs)
        try:
            stat = os.statvfs(final.parent)
            free = stat.f_bavail * stat.f_frsize
        except OSError as e:
            raise unwritable_folder(final.parent, e) from e
        if free < total + _SPACE_MARGIN:
            raise CacheError(
                f"{final.parent}: not enough free space for the cache (needs {_mb(total + _SPACE_MARGIN)}: "
                f"{_mb(total)} of tensors plus a {_mb(_SPACE_MARGIN)} margin for the header; {_mb(free)} free); "
                "free some space or choose another folder with -o/--output",
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
            raise unwritable_folder(final.parent, e) from e

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
            refs = {
                name: tensor_ref(str(i), spec.dtype, spec.shape)
                for i, (name, spec) in enumerate(self.specs.items())
            }
            top = {"format": self.format, "format_version": FORMAT_VERSION, "meta": meta, "tensors": refs}
            self.archive.add("data.pkl", pickle_tree(top))
            self.archive.add(".format_version", b"1")
            self.archive.add(".storage_alignment", b"64")
            self.archive.add("byteorder", b"little")
            self.archive.add("version", b"3\n")
            self.archive.finish_directory(INTEGRITY_LENGTH)
            self.archive.write_comment(integrity_comment(self.archive.structure_bytes()))
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
            fsync_dir(self.final.parent)
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

    On a sparse file a full disk would surface as ENOSPC from a `pwrite` in the middle of
    decoding, after minutes of work. Allocating up front fails here instead, before any work
    (measured: no slower than filling a sparse file).
    """
    if preallocate and size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
            return
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                raise
    os.ftruncate(fd, size)


def fsync_dir(folder: Path) -> None:
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened/fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"
