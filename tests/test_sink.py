"""RowSink: rows handed over as arrays or as callables (converted on the writer thread) land in
the file as (C, H, W), runs in any order; conversion errors surface to the caller."""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import xxhash

from bufconv.cache.sink import RowSink, Target

SHAPE = (10, 3, 4, 5)  # rows, C, H, W
OFFSET = 7  # the tensor does not start at the beginning of the file


def _frames(seed: int = 0) -> np.ndarray:
    """Distinct (H, W, C) frames, one per row."""
    return np.random.default_rng(seed).integers(
        0, 256, size=(SHAPE[0], SHAPE[2], SHAPE[3], SHAPE[1]), dtype=np.uint8
    )


def _file(tmp_path: Path) -> Path:
    path = tmp_path / "tensor.bin"
    path.write_bytes(b"\xee" * (OFFSET + int(np.prod(SHAPE))))
    return path


def _stored(path: Path) -> np.ndarray:
    data = np.frombuffer(path.read_bytes(), dtype=np.uint8)
    return data[OFFSET:].reshape(SHAPE)


@pytest.mark.parametrize("order", ["in order", "shuffled"])
def test_arrays_and_callables_are_written_channels_first(tmp_path: Path, order: str) -> None:
    path = _file(tmp_path)
    frames = _frames()
    rows = list(range(SHAPE[0]))
    if order == "shuffled":
        rows = [3, 4, 5, 0, 1, 9, 2, 6, 8, 7]
    # Small runs (3 rows) so that several runs, and runs cut by out-of-order rows, are written.
    with RowSink(Target(str(path), OFFSET, "uint8", SHAPE), stage_bytes=3 * 60) as sink:
        for i, row in enumerate(rows):
            frame = frames[row].copy()
            if i % 2:
                sink.put(row, lambda frame=frame: frame)  # converted later, on the writer thread
            else:
                sink.put(row, frame)
                frame[:] = 0  # the caller may reuse its array at once
    expected = frames.transpose(0, 3, 1, 2)
    np.testing.assert_array_equal(_stored(path), expected)
    assert path.read_bytes()[:OFFSET] == b"\xee" * OFFSET  # nothing outside the tensor touched
    if order == "in order":
        assert sink.checksum == f"xxh3_128:{xxhash.xxh3_128(expected.tobytes()).hexdigest()}"
    else:
        assert sink.checksum is None  # not written in row order: computed from the file instead


def test_a_failing_conversion_surfaces_to_the_caller(tmp_path: Path) -> None:
    path = _file(tmp_path)
    frames = _frames()

    def broken() -> np.ndarray:
        raise ValueError("cannot convert this frame")

    sink = RowSink(Target(str(path), OFFSET, "uint8", SHAPE), stage_bytes=3 * 60)

    def fill() -> None:
        sink.put(0, frames[0])
        sink.put(1, broken)
        for row in range(2, SHAPE[0]):  # the error surfaces at a later put, or at close
            sink.put(row, frames[row])
        sink.close()

    with pytest.raises(ValueError, match="cannot convert this frame"):
        fill()
    sink.close(flush=False)  # closing again is harmless
    assert sink.fd == -1


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the writer thread did not get there"
        time.sleep(0.001)


def test_conversion_runs_on_the_writer_thread_once_per_row(tmp_path: Path) -> None:
    path = _file(tmp_path)
    frames = _frames()
    threads: list[int] = []

    def convert(row: int) -> np.ndarray:
        threads.append(threading.get_ident())
        return frames[row]

    with RowSink(Target(str(path), OFFSET, "uint8", SHAPE), stage_bytes=3 * 60) as sink:
        for row in range(SHAPE[0] - 1):
            sink.put(row, functools.partial(convert, row))
        shared = functools.partial(convert, 0)
        sink.put(SHAPE[0] - 1, shared)  # one decoded frame wanted by two rows (duplicate timestamps)
        sink.put(0, shared)  # rewrites row 0 with the same frame, in a run of its own
    assert len(threads) == SHAPE[0] + 1
    assert threading.get_ident() not in threads
    expected = frames.transpose(0, 3, 1, 2).copy()
    expected[-1] = expected[0]
    np.testing.assert_array_equal(_stored(path), expected)


def test_a_conversion_error_is_raised_by_the_next_put(tmp_path: Path) -> None:
    path = _file(tmp_path)
    frames = _frames()

    def broken() -> np.ndarray:
        raise ValueError("cannot convert this frame")

    sink = RowSink(Target(str(path), OFFSET, "uint8", SHAPE), stage_bytes=3 * 60)
    for row in range(4):  # the fourth row sends the first run (rows 0-2) to the writer
        sink.put(row, broken if row == 1 else frames[row])
    _wait_for(lambda: sink._error is not None)
    with pytest.raises(ValueError, match="cannot convert this frame"):
        sink.put(4, frames[4])
    sink.close(flush=False)  # leaving after an error: no second raise, the file is closed
    assert sink.fd == -1


def test_close_without_flush_drops_queued_runs(tmp_path: Path) -> None:
    path = _file(tmp_path)
    frames = _frames()
    started, release = threading.Event(), threading.Event()
    converted: list[int] = []

    def convert(row: int) -> np.ndarray:
        if row == 0:
            started.set()
            release.wait(10)  # hold the writer in the first run while the others queue up
        converted.append(row)
        return frames[row]

    sink = RowSink(Target(str(path), OFFSET, "uint8", SHAPE), stage_bytes=3 * 60)
    for row in range(9):  # runs 0-2 and 3-5 queued, 6-8 still being filled
        sink.put(row, functools.partial(convert, row))
    assert started.wait(10)
    threading.Timer(0.2, release.set).start()
    sink.close(flush=False)  # a failed build: what is queued is not converted or written
    assert converted == [0, 1, 2]  # only the run the writer had already started
    assert sink.fd == -1
