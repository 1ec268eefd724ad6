"""Encoding pixels as LeRobot stores them: mp4 video (AV1, h264, hevc) and PNG images.

Used by `writer` to make real LeRobot datasets for the demo and the tests.
"""

from __future__ import annotations

import io
import itertools
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, cast

import av
import numpy as np
from av.video.stream import VideoStream
from PIL import Image

# LeRobot codec name -> (stream codec name recorded in info.json, PyAV encoder options).
CODECS: dict[str, tuple[str, dict[str, str]]] = {
    "libsvtav1": ("av1", {"g": "2", "crf": "30", "preset": "12", "svtav1-params": "fast-decode=0"}),
    "h264": ("h264", {"g": "2", "crf": "30"}),
    "hevc": ("hevc", {"g": "2", "crf": "30", "x265-params": "log-level=error"}),
}


def video_info(height: int, width: int, codec: str, fps: int, layout: str) -> dict[str, Any]:
    """Return the ``info`` block LeRobot stores for a video feature."""
    stream_codec, options = CODECS[codec]
    info = {
        "video.height": height,
        "video.width": width,
        "video.codec": stream_codec,
        "video.pix_fmt": "yuv420p",
    }
    if layout == "v2.1":  # as LeRobot 0.3.x wrote it
        return {
            **info,
            "video.is_depth_map": False,
            "video.fps": fps,
            "video.channels": 3,
            "has_audio": False,
        }
    return {
        **info,
        "video.fps": fps,
        "video.channels": 3,
        "has_audio": False,
        "video.g": 2,
        "video.crf": 30,
        "video.preset": 12 if codec == "libsvtav1" else None,
        "video.fast_decode": 0,
        "video.video_backend": "pyav",
        "video.extra_options": {k: v for k, v in options.items() if k == "x265-params"},
        "is_depth_map": False,
    }


def png(image: np.ndarray) -> bytes:
    """Encode an RGB uint8 image as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(image)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@contextmanager
def quiet_encoders() -> Iterator[None]:
    """Silence SVT-AV1's banner (it reads ``SVT_LOG`` when an encoder is created)."""
    previous = os.environ.get("SVT_LOG")
    os.environ["SVT_LOG"] = previous or "1"  # 1 = errors only
    try:
        yield
    finally:
        if previous is None:
            os.environ.pop("SVT_LOG", None)


def encode_video(path: Path, frames: Iterable[np.ndarray], codec: str, fps: int) -> None:
    """Encode RGB uint8 frames into an mp4 as LeRobot's ``encode_video_frames`` does.

    libx265 sometimes leaves the decode timestamps of 1- or 2-frame streams uninitialised
    (the mp4 muxer then fails); such a constant offset is removed so that ``dts == pts``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = iter(frames)
    first = next(frames)
    shift: int | None = None
    with av.open(str(path), "w") as container:
        options = dict(CODECS[codec][1])
        stream = cast(VideoStream, container.add_stream(codec, fps, options=options))
        stream.pix_fmt = "yuv420p"
        stream.height, stream.width = first.shape[:2]
        rgb = (av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24") for f in (first, *frames))
        for frame in itertools.chain(rgb, [None]):  # None flushes the encoder
            for packet in stream.encode(frame):
                if packet.pts is not None and packet.dts is not None:
                    if shift is None:  # a B-frame delay is at most 16 frames
                        shift = 0 if 0 <= packet.pts - packet.dts <= 16 else packet.pts - packet.dts
                    packet.dts += shift
                container.mux(packet)
