"""Units of decoding work, small enough to ship to a worker process, and the code that runs them.

A unit fills rows of one image tensor inside the cache file being written: a `VideoUnit`
decodes (part of) one mp4 file, an `ImageUnit` decodes the PNG/JPEG frames of one parquet file.
Each unit writes through its own `RowSink` (the file opened by the unit itself), so no pixels
cross process boundaries. This module stays free of torch so worker processes start quickly.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..cache.sink import RowSink, Target
from ..errors import DecodeError
from ..source.depth import DepthStorage, decode_depth_image
from ..source.transform import FrameTransform
from ..source.video import FrameJob, decode_image, decode_video

if TYPE_CHECKING:  # not imported at run time: video workers need no pyarrow (0.1 s of their start)
    from ..source.dataset import SourceDataset

OnEpisode = Callable[[int, int], None]


@dataclass(frozen=True)
class VideoUnit:
    """Decode the frames `jobs` want from one video file into the image tensor at `target`."""

    key: str
    path: Path
    jobs: tuple[FrameJob, ...]
    target: Target
    tolerance_s: float
    threads: int = 0
    transform: FrameTransform | None = None
    """The build's crop and resize of this camera, applied on the sink's writer thread."""
    depth: bool = False
    """A depth video: its frames are stored as int16 12-bit codes (`source.depth`)."""

    @property
    def frames(self) -> int:
        return sum(len(j.rows) for j in self.jobs)

    @property
    def first_row(self) -> int:
        return min(int(j.rows[0]) for j in self.jobs if len(j.rows))


@dataclass(frozen=True)
class ImageUnit:
    """Decode the `image` feature `key` of some episodes (their rows start at `starts`) into `target`."""

    key: str
    source: SourceDataset
    episodes: tuple[int, ...]
    starts: tuple[int, ...]
    target: Target
    transform: FrameTransform | None = None
    depth: DepthStorage | None = None
    """A depth feature's storage: its TIFF frames are stored as that (`source.depth`)."""
    depth_unit: str = "mm"
    """The build's depth unit (float TIFFs are stored converted to it)."""

    @property
    def frames(self) -> int:
        return sum(self.source.episodes[e].length for e in self.episodes)

    @property
    def first_row(self) -> int:
        return min(self.starts)


Unit = VideoUnit | ImageUnit


def run_unit(unit: Unit, on_episode: OnEpisode | None = None, sink: RowSink | None = None) -> int:
    """Do one unit of work; returns the number of frames written.

    Args:
        unit: The work.
        on_episode: Optional callable(episode, frames), for progress.
        sink: Where the frames go; by default a sink of its own, closed before returning
            (worker processes). In-process builds pass one sink per tensor, kept open across
            units, so one unit's writing overlaps the next one's decoding.
    """
    if sink is None:
        with unit.target.sink(unit.transform) as own:
            return run_unit(unit, on_episode, own)
    if isinstance(unit, VideoUnit):
        return decode_video(
            unit.path, unit.jobs, sink, tolerance_s=unit.tolerance_s, key=unit.key,
            threads=unit.threads, on_episode=on_episode, depth=unit.depth,
        )  # fmt: skip
    return _decode_images(unit, sink, on_episode)


def _decode_images(unit: ImageUnit, sink: RowSink, on_episode: OnEpisode | None) -> int:
    starts = dict(zip(unit.episodes, unit.starts, strict=True))
    expected = sink.row_shape  # (C, H, W)
    written = 0
    for episode, payloads in unit.source.iter_image_bytes(unit.episodes, unit.key):
        where = (
            f"{unit.source.root / unit.source.episodes[episode].data_path} ({unit.key}, episode {episode})"
        )
        for i, data in enumerate(payloads):
            hwc = (
                decode_image(data, where=f"{where}, frame {i}")
                if unit.depth is None
                else decode_depth_image(data, unit.depth, where=f"{where}, frame {i}", unit=unit.depth_unit)
            )
            if hwc.shape != (expected[1], expected[2], expected[0]):
                raise DecodeError(
                    f"{where}: frame {i} is {hwc.shape[0]}x{hwc.shape[1]} with {hwc.shape[2]} channels but "
                    f"meta/info.json declares {expected[1]}x{expected[2]} with {expected[0]}; the dataset is inconsistent",
                    path=unit.source.root / unit.source.episodes[episode].data_path,
                )
            sink.put(starts[episode] + i, hwc)
        written += len(payloads)
        if on_episode is not None:
            on_episode(episode, len(payloads))
    return written


def run_here(units: Sequence[Unit], on_episode: OnEpisode | None = None) -> dict[str, str]:
    """Run units in this process, in row order, one sink per tensor kept open throughout (its
    writer thread finishes one unit's frames while the next unit decodes).

    Returns:
        The checksums the sinks computed on the way, for tensors written entirely in row order.
    """
    sinks: dict[str, RowSink] = {}
    try:
        for unit in sorted(units, key=lambda u: (u.key, u.first_row)):
            if unit.key not in sinks:
                sinks[unit.key] = unit.target.sink(unit.transform)
            run_unit(unit, on_episode, sinks[unit.key])
        for sink in sinks.values():
            sink.close()
    finally:
        for sink in sinks.values():
            sink.close(flush=False)
    return {key: sink.checksum for key, sink in sinks.items() if sink.checksum is not None}
