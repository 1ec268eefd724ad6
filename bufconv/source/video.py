"""Sequential frame decoding: each video file opened once and decoded front to back.

LeRobot's reader seeks and decodes per sample (each frame two or three times over). Here a file
is decoded in one pass; every decoded frame is matched against the parquet timestamps the
build asked for, and handed to the output's writer thread, which converts it to RGB and
writes it into its row of the output (uint8, channels first).
Pixels are produced exactly as LeRobot's PyAV backend produces them (`to_ndarray("rgb24")`),
so they are bit-identical to what LeRobot returns before its /255.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import av
import numpy as np

from ..errors import DecodeError
from .depth import depth_frame

#: Seek instead of decoding through a gap longer than this (selected episodes far apart in a file).
SEEK_GAP_S = 2.0

_NO_FRAME = (
    "{path}: no frame within {tol:g} s of episode {episode}'s frame {frame} (parquet timestamp {parquet:.6f} s, "
    "t={query:.6f} s in the video); the nearest decoded frames are at {before} and {after}. The video does "
    "not match the parquet timestamps: re-encode the video, or allow more with --tolerance-s if the offset is harmless"
)
_TRUNCATED = (
    "{path}: the video ends {where} but episode {episode} needs a frame at t={query:.6f} s (frame {frame}); "
    "the file is truncated or incomplete: re-download the dataset or re-encode the video"
)
_WRONG_SIZE = "{path}: frames are {found} (height x width) but meta/info.json declares {expected} for {key!r}; the dataset is inconsistent"


@dataclass(frozen=True)
class FrameJob:
    """One episode's frames in one video file: where to put each and which timestamp it must have."""

    episode: int
    rows: np.ndarray
    """Destination rows in the output array, int64 (n,)."""
    timestamps: np.ndarray
    """Wanted presentation times in the file's timeline (seconds, float64 (n,), ascending)."""
    offset: float = 0.0
    """Where the episode starts in the file (v3.0 `from_timestamp`): parquet time = file time - offset."""


class _Frames:
    """Decoded frames of one stream with their timestamps, with one frame of push-back and seeking."""

    def __init__(self, container: av.container.InputContainer, path: Path, threads: int) -> None:
        self.container = container
        self.path = path
        self.stream = container.streams.video[0]
        self.stream.thread_type = "AUTO"
        self.stream.codec_context.thread_count = threads
        if self.stream.time_base is None:
            raise DecodeError(f"{path}: the video stream has no time base; re-encode the video", path=path)
        self.time_base = self.stream.time_base
        # pts * num / den with Python ints is correctly rounded, i.e. exactly LeRobot's
        # float(pts * time_base), without building a Fraction per frame.
        self._num, self._den = self.time_base.numerator, self.time_base.denominator
        self._it: Iterator[av.VideoFrame] = container.decode(self.stream)
        self._pending: tuple[float, av.VideoFrame] | None = None
        self.last_t: float | None = None

    def next(self) -> tuple[float, av.VideoFrame] | None:
        if self._pending is not None:
            item, self._pending = self._pending, None
            return item
        while True:
            try:
                frame = next(self._it)
            except StopIteration:
                return None
            except av.FFmpegError as e:
                raise DecodeError(
                    f"{self.path}: decoding failed after t={self.last_t} s ({e}); the file is damaged: re-download it",
                    path=self.path,
                ) from e
            if frame.pts is None:  # as LeRobot: frames without a timestamp cannot be matched
                continue
            t = frame.pts * self._num / self._den
            self.last_t = t
            return t, frame

    def push_back(self, item: tuple[float, av.VideoFrame]) -> None:
        self._pending = item

    def seek(self, t: float) -> None:
        """Continue from the last keyframe at or before `t` (seconds)."""
        self._pending = None
        try:
            # Same target as LeRobot's reader: one tick before, backwards to a keyframe.
            self.container.seek(
                max(0, round(t / self.time_base) - 1), backward=True, any_frame=False, stream=self.stream
            )
        except av.FFmpegError as e:
            raise DecodeError(
                f"{self.path}: cannot seek to t={t:.6f} s ({e}); the file is damaged: re-download it",
                path=self.path,
            ) from e
        self._it = self.container.decode(self.stream)


class FrameSink(Protocol):
    """Where decoded frames go (the build's `RowSink`): rows of uint8 (C, H, W)."""

    @property
    def row_shape(self) -> tuple[int, ...]:
        """(C, H, W) of a stored row."""

    def put(self, row: int, frame: np.ndarray | Callable[[], np.ndarray]) -> None:
        """Frame `row`: a uint8 (H, W, C) array, or a callable returning one (called later, elsewhere)."""


def decode_video(
    path: Path,
    jobs: Sequence[FrameJob],
    out: FrameSink,
    *,
    tolerance_s: float,
    key: str = "",
    threads: int = 0,
    on_episode: Callable[[int, int], None] | None = None,
    depth: bool = False,
) -> int:
    """Decode `path` once, front to back, writing the frames `jobs` ask for into `out`.

    Args:
        path: The mp4 file.
        jobs: Episodes stored in this file, in any order.
        out: Rows of a uint8 (N, C, H, W) tensor; row `jobs[i].rows[j]` receives the frame
            whose timestamp is `jobs[i].timestamps[j]` (within `tolerance_s`).
        tolerance_s: Largest allowed |frame time - wanted time|, strict as in LeRobot.
        key: The feature name, for messages.
        threads: Decoder threads (0 lets FFmpeg choose).
        on_episode: Called with (episode, frames) after each job completes.
        depth: A depth video (SPEC section 15): frames become int16 (1, H, W) 12-bit codes, as
            LeRobot reads them (`to_ndarray("gray12le")`), instead of rgb24 pixels.

    Returns:
        The number of frames written.

    Raises:
        DecodeError: the file cannot be opened or decoded, a wanted timestamp has no frame
            within tolerance, or the frames have the wrong size.
    """
    ordered = sorted(jobs, key=lambda j: float(j.timestamps[0]) if len(j.timestamps) else 0.0)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, OSError) as e:
        raise DecodeError(
            f"{path}: cannot open video ({e}); the file is missing or damaged: re-download it", path=path
        ) from e
    written = 0
    with container:
        if not container.streams.video:
            raise DecodeError(f"{path}: the file has no video stream; re-download it", path=path)
        frames = _Frames(container, path, threads)
        height, width = out.row_shape[1], out.row_shape[2]
        started = False
        for job in ordered:
            if not len(job.rows):
                continue
            first = float(job.timestamps[0])
            behind = frames.last_t if started else 0.0
            if behind is not None and first - behind > SEEK_GAP_S:
                frames.seek(first)
            started = True
            written += _fill(frames, job, out, tolerance_s, path, key, height, width, depth)
            if on_episode is not None:
                on_episode(job.episode, len(job.rows))
    return written


def _fill(
    frames: _Frames,
    job: FrameJob,
    out: FrameSink,
    tol: float,
    path: Path,
    key: str,
    height: int,
    width: int,
    depth: bool = False,
) -> int:
    wanted: list[float] = job.timestamps.tolist()  # Python floats: numpy scalars are slow per frame
    rows: list[int] = job.rows.tolist()
    i = 0
    previous: float | None = None
    last: tuple[float, av.VideoFrame] | None = None
    while i < len(wanted):
        item = frames.next()
        if item is None:
            where = f"at t={previous:.6f} s" if previous is not None else "before its first frame"
            raise DecodeError(
                _TRUNCATED.format(path=path, where=where, episode=job.episode, query=wanted[i], frame=i),
                path=path,
            )
        t, frame = item
        if t <= wanted[i] - tol:  # before the frame we need: decode on
            previous = t
            continue
        if abs(t - wanted[i]) >= tol:
            raise DecodeError(
                _NO_FRAME.format(
                    path=path,
                    tol=tol,
                    query=wanted[i],
                    parquet=wanted[i] - job.offset,
                    episode=job.episode,
                    frame=i,
                    before="(none)" if previous is None else f"t={previous:.6f} s",
                    after=f"t={t:.6f} s",
                ),
                path=path,
            )
        if frame.height != height or frame.width != width:
            raise DecodeError(
                _WRONG_SIZE.format(
                    path=path, found=f"{frame.height}x{frame.width}", expected=f"{height}x{width}", key=key
                ),
                path=path,
            )
        # Exactly LeRobot's PyAV path, (H, W, 3) uint8, converted on the sink's writer thread
        # while this one decodes on.
        pixels = (
            functools.partial(depth_frame, frame)
            if depth
            else functools.partial(frame.to_ndarray, format="rgb24")
        )
        # Several rows may want the same frame (duplicate timestamps): give it to all of them.
        while i < len(wanted) and abs(t - wanted[i]) < tol:
            out.put(rows[i], pixels)
            i += 1
        previous, last = t, item
    if last is not None:
        # Hand the last frame back: an overlapping next episode (damaged metadata) may want it
        # too, as LeRobot's per-sample reader would give it.
        frames.push_back(last)
    return len(wanted)


def decode_image(data: bytes, *, where: str) -> np.ndarray:
    """Decode one PNG/JPEG `image` feature value to uint8 (H, W, C), as LeRobot's reader sees it.

    Raises:
        DecodeError: the bytes are not an image PIL can read, or the mode is not 8-bit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            if image.mode not in ("L", "RGB", "RGBA"):
                raise DecodeError(
                    f"{where}: image mode {image.mode!r} is not 8-bit L/RGB/RGBA; convert the images to RGB"
                )
            array = np.asarray(image)
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DecodeError(
            f"{where}: cannot decode the image ({e}); the data is damaged: re-download the dataset"
        ) from e
    return array[:, :, None] if array.ndim == 2 else array
