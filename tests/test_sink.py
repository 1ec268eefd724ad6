"""RowSink: rows handed over as arrays or as callables (converted on the writer thread) land in
the file as (C, H, W), runs in any order; conversion errors surface to the caller."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import xxhash

from bufconv.sink import RowSink, Target

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
