"""Writing tensor rows into a cache file being built: staged, written with pwrite in a thread.

Decoders hand over rows; a background thread converts them (a decoded video frame's colour
conversion runs there, off the decoding thread), writes each full run of rows to the file
with `pwrite` and asks the kernel to start writing it to disk (`sync_file_range`), so
conversion, copying into the page cache and disk writeback overlap decoding, and the final
fsync has almost nothing left to do. Memory stays at a few staging buffers and the decoded
frames of at most three runs, whatever the cache size. A build's crop and resize
(`source.transform`) run on that thread too, a run of frames at a time.
Nothing here imports torch (a resize does, on first use): worker processes use it too.
"""

from __future__ import annotations

import ctypes
import math
import os
import queue
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any

import numpy as np
import xxhash

from ..source.transform import FrameTransform

NUMPY_DTYPES: dict[str, Any] = {
    "uint8": np.uint8, "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "float16": np.float16, "float32": np.float32, "float64": np.float64, "bool": np.bool_,
}  # fmt: skip
STAGE_BYTES = 2 << 20
Frame = Callable[[], np.ndarray]
"""A row converted on the writer thread (once per row it is put in): returns a uint8 (H, W, C) array."""
_SYNC_FILE_RANGE_WRITE = 2


def _load_sync_file_range() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    function.restype = ctypes.c_int
    return function


_sync_file_range = _load_sync_file_range()


def start_writeback(fd: int, offset: int = 0, size: int = 0) -> None:
    """Ask the kernel to start writing a range of the file to disk now (Linux; elsewhere a no-op)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, size, _SYNC_FILE_RANGE_WRITE)


def pwrite_all(fd: int, data: Any, offset: int) -> None:
    """`os.pwrite` until every byte of `data` is written."""
    view = memoryview(data).cast("B")
    while view:
        written = os.pwrite(fd, view, offset)
        if written <= 0:
            raise OSError("pwrite wrote nothing")
        view = view[written:]
        offset += written


@dataclass(frozen=True)
class Target:
    """Where one tensor's bytes sit in a cache file being written."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    @property
    def row_bytes(self) -> int:
        return math.prod(self.shape[1:]) * np.dtype(NUMPY_DTYPES[self.dtype]).itemsize

    def sink(self, transform: FrameTransform | None = None) -> RowSink:
        """A `RowSink` writing into this tensor (opens the file; close the sink when done)."""
        return RowSink(self, transform=transform)


class RowSink:
    """Frames of one image tensor (uint8 N, C, H, W), written to the file in runs of consecutive rows.

    Usage: `sink.put(row, frame)` with `frame` a uint8 (H, W, C) array, or a callable that
    returns one; rows in any order (runs of consecutive rows are written together). An array
    is copied into a run buffer at once, so the caller's array can be freed and its memory
    reused; a callable (a decoded frame's `to_ndarray`) is called on a background thread. That
    thread also converts each full run to (C, H, W) and writes it, so colour conversion, the
    transposing copy and the kernel's copy run on another core while the caller decodes.
    `close()` (or leaving the `with` block) writes what is pending and waits; conversion and
    write errors surface there (or at the next `put`).

    With a `transform` (crop and resize), frames are put at their decoded size (`row_shape`)
    and each run is transformed to the tensor's row shape on the writer thread.
    """

    def __init__(
        self, target: Target, stage_bytes: int = STAGE_BYTES, transform: FrameTransform | None = None
    ) -> None:
        self.target = target
        self.transform = transform
        channels, out_height, out_width = target.shape[1:]
        height, width = transform.source_hw if transform is not None else (out_height, out_width)
        self.row_shape = (channels, height, width)
        """Shape of the frames put, (C, H, W): the tensor's rows, or the decoded frames a transform takes."""
        self.row_bytes = target.row_bytes
        dtype = NUMPY_DTYPES[target.dtype]
        in_bytes = channels * height * width * np.dtype(dtype).itemsize
        self.rows_per_run = max(1, stage_bytes // max(1, self.row_bytes, in_bytes))
        self._stage = np.empty((self.rows_per_run, channels, out_height, out_width), dtype=dtype)
        # Decoded frames, channels first, waiting for the transform.
        self._untransformed = (
            np.empty((self.rows_per_run, channels, height, width), dtype=dtype) if transform else None
        )
        # Three run buffers: one being filled, one being written, one spare.
        self._free: queue.Queue[np.ndarray] = queue.Queue()
        for _ in range(3):
            self._free.put(np.empty((self.rows_per_run, height, width, channels), dtype=dtype))
        self._runs: queue.Queue[tuple[np.ndarray, int, int, list[tuple[int, Frame]]] | None] = queue.Queue()
        self._error: BaseException | None = None
        self._discard = False
        self.fd = os.open(target.path, os.O_WRONLY)
        self._thread = threading.Thread(target=self._write_loop, name="bufconv-writer", daemon=True)
        self._thread.start()
        self._run: np.ndarray | None = None
        self._later: list[tuple[int, Frame]] = []  # (index in the run, callable) converted by the writer
        self._first = 0
        self._count = 0
        # Rows written in order from row 0 are also hashed on the way (the tensor checksum,
        # without reading the file back); any other order just disables it.
        self._hasher: Any = xxhash.xxh3_128()
        self._hashed_rows = 0

    def __enter__(self) -> RowSink:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close(flush=kind is None)

    def put(self, row: int, frame: np.ndarray | Frame) -> None:
        """Make `frame` (H, W, C, or a callable returning it) row `row` of the tensor, as (C, H, W)."""
        if self._error is not None:
            raise self._error
        if self._run is not None and (row != self._first + self._count or self._count == self.rows_per_run):
            self._flush()
        if self._run is None:
            self._run = self._free.get()
            self._first, self._count = row, 0  # `_later` was emptied by the last flush
        if callable(frame) and self.transform is None:
            self._later.append((self._count, frame))
        else:
            # With a transform the writer thread has the resize to do: the colour conversion
            # runs here, on the decoding thread, so the two threads carry similar loads.
            self._run[self._count] = frame() if callable(frame) else frame
        self._count += 1

    def _flush(self) -> None:
        if self._run is not None:
            item = (self._run, self._first, self._count, self._later)
            self._run, self._later = None, []
            self._runs.put(item)

    def _write_loop(self) -> None:
        while True:
            item = self._runs.get()
            if item is None:
                return
            self._write_run(*item)
            item = None  # let the run's decoded frames go before waiting for the next run

    def _write_run(self, run: np.ndarray, first: int, count: int, later: list[tuple[int, Frame]]) -> None:
        try:
            if self._error is None and not self._discard:
                for index, convert in later:
                    run[index] = convert()
                later.clear()  # the decoded frames are no longer needed
                stage = self._stage[:count]
                if self.transform is None or self._untransformed is None:
                    np.copyto(stage, run[:count].transpose(0, 3, 1, 2))  # one call per run: little GIL time
                else:
                    frames = self._untransformed[:count]
                    np.copyto(frames, run[:count].transpose(0, 3, 1, 2))
                    self.transform.apply(frames, stage)
                offset = self.target.offset + first * self.row_bytes
                pwrite_all(self.fd, stage, offset)
                start_writeback(self.fd, offset, stage.nbytes)
                if self._hasher is not None and first == self._hashed_rows:
                    self._hasher.update(stage)
                    self._hashed_rows += count
                else:
                    self._hasher = None
        except BaseException as e:  # surfaced to the producer by put()/close()
            self._error = e
        finally:
            self._free.put(run)

    def close(self, flush: bool = True) -> None:
        """Write what is pending (unless `flush` is false), stop the writer thread, close the file."""
        if self.fd < 0:
            return
        if flush:
            self._flush()
        else:
            self._discard = True  # runs still queued are dropped, not converted and written
        self._run, self._later = None, []
        self._runs.put(None)
        self._thread.join()
        os.close(self.fd)
        self.fd = -1
        if flush and self._error is not None:
            raise self._error

    @property
    def checksum(self) -> str | None:
        """'xxh3_128:<hex>' of the whole tensor if every row was written once, in order; else None."""
        if self.fd >= 0 or self._hasher is None or self._hashed_rows != self.target.shape[0]:
            return None
        return f"xxh3_128:{self._hasher.hexdigest()}"
