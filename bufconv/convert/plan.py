"""Planning a build's decoding: which units of work, how big, on how many threads."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from ..cache.sink import Target
from ..options import BuildOptions, default_workers
from ..source.dataset import Selection, SourceDataset
from ..source.transform import FrameTransform, frame_transform
from ..source.video import FrameJob
from .units import ImageUnit, Unit, VideoUnit

#: Up to this many pixels a frame, one decoder thread is fastest (measured with AV1 on 2 cores:
#: 128x128 decodes in 0.09 ms/frame on 1 thread, 0.11 on 2; at 480x640 two threads win by 25%),
#: and it leaves the other core to the thread writing the file.
SINGLE_THREAD_PIXELS = 256 * 256

#: Below this many pixels to decode (frames x cameras x height x width), starting worker
#: processes (~0.15 s of imports) costs more than it saves. Measured with scripts/bench.py on
#: 2 cores, two 128x128 AV1 cameras, when a process still used one core (conversion on the
#: decoding thread): 1,000 frames (33 Mpx) 0.29 s in-process vs 0.33 s with 2 processes;
#: 4,000 frames (131 Mpx) 1.00 s vs 0.82 s; the lines cross near 1,500 frames.
MIN_PARALLEL_PIXELS = 48 << 20

#: Cores one decoding process keeps busy: its decoding thread, and its sink's writer thread
#: (colour conversion, transposition, writing). More processes than cores / 2 only compete:
#: measured on 2 cores (scripts/bench.py datasets), 2 worker processes against one in-process
#: build took 1.03 vs 1.02 s at 4,000 frames and 4.70 vs 4.57 s at 16,000.
CORES_PER_PROCESS = 2


def worker_processes(source: SourceDataset, sel: Selection, options: BuildOptions) -> int:
    """How many processes decode a build (this one included, as `WorkerPool` counts); 0 means
    this process alone, without a pool.

    At most `options.workers`, and one per `CORES_PER_PROCESS` cores; none unless that makes
    two or more and the build has at least `MIN_PARALLEL_PIXELS` to decode.
    """
    processes = min(options.workers, default_workers() // CORES_PER_PROCESS)  # the usable cores
    if processes < 2:
        return 0
    frames = sum(source.episodes[e].length for e in sel.episodes)
    pixels_per_frame = sum(math.prod(frame_chw(source, key)[1:]) for key in sel.image_keys)
    return processes if frames * pixels_per_frame >= MIN_PARALLEL_PIXELS else 0


def decoder_threads(pixels: int, parallel: bool) -> int:
    """Threads per decoder: 1 with worker processes (they fill the cores) or small frames, else FFmpeg's choice."""
    return 1 if parallel or pixels <= SINGLE_THREAD_PIXELS else 0


def frame_chw(source: SourceDataset, key: str) -> tuple[int, int, int]:
    """(channels, height, width) of an image key's frames as decoded."""
    feature = source.features[key]
    height, width, channels = feature.image_hwc()
    if feature.is_depth:
        channels = 1  # one distance a pixel (SPEC section 15)
    elif feature.dtype == "video":
        channels = 3  # decoded as rgb24, as LeRobot's PyAV backend does
    return (channels, height, width)


def stored_dtype(source: SourceDataset, key: str) -> str:
    """The dtype name an image key's tensor is stored in: uint8 pixels, or a depth key's (`source.depth`)."""
    feature = source.features[key]
    return feature.depth_storage().dtype if feature.is_depth else "uint8"


def transform_of(source: SourceDataset, key: str, options: BuildOptions) -> FrameTransform | None:
    """The crop and resize `options` ask for on `key`'s frames (None: stored as decoded); a depth
    key's resize is nearest-neighbour."""
    return frame_transform(key, frame_chw(source, key)[1:], options, nearest=source.features[key].is_depth)


def stored_chw(source: SourceDataset, key: str, options: BuildOptions) -> tuple[int, int, int]:
    """(channels, height, width) of an image key's frames as stored: after the crop and resize."""
    channels, height, width = frame_chw(source, key)
    transform = transform_of(source, key, options)
    return (channels, *transform.output_hw) if transform is not None else (channels, height, width)


def plan_units(
    source: SourceDataset,
    sel: Selection,
    options: BuildOptions,
    target: Callable[[str], Target],
    starts: np.ndarray,
    timestamps: np.ndarray,
    *,
    processes: int = 0,
) -> list[Unit]:
    """The decoding units of a build, largest first.

    Args:
        target: Where each image key's tensor is written (`CacheWriter.target`).
        starts: First row of each selected episode.
        timestamps: The parquet timestamp of every row.
        processes: Processes that will share the units (0: this one alone). Long files are then
            split at episode boundaries into units of about a third of a process's share, so
            the load evens out.
    """
    total = int(sum(source.episodes[e].length for e in sel.episodes)) * len(sel.image_keys)
    split = max(1, math.ceil(total / (3 * processes))) if processes else None
    units: list[Unit] = []
    for key in sel.image_keys:
        destination = target(key)
        transform = transform_of(source, key, options)
        _, height, width = frame_chw(source, key)
        threads = decoder_threads(height * width, parallel=processes > 0)
        feature = source.features[key]
        storage = feature.depth_storage() if feature.is_depth else None
        if feature.dtype == "image":
            groups: dict[str, list[tuple[int, int]]] = {}
            for e, start in zip(sel.episodes, starts, strict=True):
                groups.setdefault(source.episodes[e].data_path, []).append((e, int(start)))
            for members in groups.values():
                units.append(
                    ImageUnit(
                        key,
                        source,
                        tuple(e for e, _ in members),
                        tuple(s for _, s in members),
                        destination,
                        transform,
                        storage,
                        options.depth_unit,
                    )
                )
            continue
        by_file: dict[str, list[FrameJob]] = {}
        for e, start in zip(sel.episodes, starts, strict=True):
            length = source.episodes[e].length
            rel, offset = source.episodes[e].videos[key]
            wanted = offset + timestamps[start : start + length].astype(np.float64).reshape(length)
            by_file.setdefault(rel, []).append(
                FrameJob(e, np.arange(start, start + length, dtype=np.int64), wanted, offset)
            )
        for rel, jobs in by_file.items():
            jobs.sort(key=lambda j: float(j.timestamps[0]))
            for chunk in _chunks(jobs, split):
                units.append(
                    VideoUnit(
                        key,
                        source.root / rel,
                        tuple(chunk),
                        destination,
                        options.tolerance_s,
                        threads,
                        transform,
                        storage is not None,
                    )
                )
    units.sort(key=lambda u: -u.frames)
    return units


def _chunks(jobs: list[FrameJob], size: int | None) -> list[list[FrameJob]]:
    """Consecutive jobs grouped into units of about `size` frames (one unit if size is None)."""
    if size is None:
        return [jobs]
    chunks: list[list[FrameJob]] = [[]]
    count = 0
    for job in jobs:
        if count >= size:
            chunks.append([])
            count = 0
        chunks[-1].append(job)
        count += len(job.rows)
    return chunks
