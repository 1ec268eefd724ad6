"""Units of decoding work, small enough to ship to a worker process, and the code that runs them.

A unit fills rows of one image tensor inside the cache file being written: a `VideoUnit`
decodes (part of) one mp4 file, an `ImageUnit` decodes the PNG/JPEG frames of one parquet file.
Workers open the file region themselves (`Target.open`), so no pixels cross process
boundaries. This module stays free of torch so worker processes start quickly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dataset import SourceDataset
from .errors import DecodeError
from .video import FrameJob, decode_image, decode_video

_NUMPY_DTYPES = {
    "uint8": np.uint8,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
    "float16": np.float16,
    "float32": np.float32,
    "float64": np.float64,
    "bool": np.bool_,
}


@dataclass(frozen=True)
class Target:
    """Where one tensor's bytes sit in a cache file being written."""

    path: str
    offset: int
    dtype: str
    shape: tuple[int, ...]

    def open(self) -> np.ndarray:
        """A writable numpy view of the tensor, mapped from the file."""
        dtype = _NUMPY_DTYPES[self.dtype]
        if math.prod(self.shape) == 0:
            return np.empty(self.shape, dtype=dtype)
        return np.memmap(self.path, dtype=dtype, mode="r+", offset=self.offset, shape=self.shape)


@dataclass(frozen=True)
class VideoUnit:
    """Decode the frames `jobs` want from one video file into the image tensor at `target`."""

    key: str
    path: Path
    jobs: tuple[FrameJob, ...]
    target: Target
    tolerance_s: float
    threads: int = 0

    @property
    def frames(self) -> int:
        return sum(len(j.rows) for j in self.jobs)


@dataclass(frozen=True)
class ImageUnit:
    """Decode the `image` feature `key` of some episodes (their rows start at `starts`) into `target`."""

    key: str
    source: SourceDataset
    episodes: tuple[int, ...]
    starts: tuple[int, ...]
    target: Target

    @property
    def frames(self) -> int:
        return sum(self.source.episodes[e].length for e in self.episodes)


Unit = VideoUnit | ImageUnit


def run_unit(unit: Unit, out: np.ndarray | None = None, on_episode: object = None) -> int:
    """Do one unit of work; returns the number of frames written.

    Args:
        unit: The work.
        out: The destination array, if the caller already has it open (in-process builds).
        on_episode: Optional callable(episode, frames) for progress.
    """
    array = unit.target.open() if out is None else out
    try:
        if isinstance(unit, VideoUnit):
            return decode_video(
                unit.path,
                unit.jobs,
                array,
                tolerance_s=unit.tolerance_s,
                key=unit.key,
                threads=unit.threads,
                on_episode=on_episode,  # type: ignore[arg-type]
            )
        return _decode_images(unit, array, on_episode)
    finally:
        if out is None and isinstance(array, np.memmap):
            array.flush()
            del array


def _decode_images(unit: ImageUnit, out: np.ndarray, on_episode: object) -> int:
    starts = dict(zip(unit.episodes, unit.starts, strict=True))
    expected = out.shape[1:]  # (C, H, W)
    written = 0
    for episode, payloads in unit.source.iter_image_bytes(unit.episodes, unit.key):
        row = starts[episode]
        where = (
            f"{unit.source.root / unit.source.episodes[episode].data_path} ({unit.key}, episode {episode})"
        )
        for i, data in enumerate(payloads):
            pixels = decode_image(data, where=f"{where}, frame {i}")
            chw = pixels.transpose(2, 0, 1)
            if chw.shape != expected:
                raise DecodeError(
                    f"{where}: frame {i} is {chw.shape[1]}x{chw.shape[2]} with {chw.shape[0]} channels but "
                    f"meta/info.json declares {expected[1]}x{expected[2]} with {expected[0]}; the dataset is inconsistent",
                    path=unit.source.root / unit.source.episodes[episode].data_path,
                )
            out[row + i] = chw
        written += len(payloads)
        if callable(on_episode):
            on_episode(episode, len(payloads))
    return written
