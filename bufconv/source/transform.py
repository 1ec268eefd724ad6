"""Crop and resize of decoded frames, as LeRobot's `ImageCropResizeProcessorStep` does them.

LeRobot 0.6.1 crops and resizes live camera images in the actor's processor pipeline
(`torchvision.transforms.functional.crop`, then `resize` to `resize_size`: bilinear,
antialiased, on float frames in [0,1], then `clamp(0, 1)`), but hands its learner the
dataset's frames untouched. bufconv applies the same crop and resize to the dataset's frames
while building, so offline and live images have the same shape and content.

The arithmetic is LeRobot's: the same torch kernel (`interpolate(..., mode="bilinear",
align_corners=False, antialias=True)`) on float frames. It runs on the uint8 values as floats
(the kernel is linear, so this is LeRobot's result times 255, up to float rounding) and rounds
to uint8; the only clamp is uint8's own [0, 255], which stores every range alike. A crop alone
copies pixels exactly; a resize to the size a frame already has is skipped, as torchvision does.
torch is imported on first use only: decoding worker processes without a resize never load it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DatasetError
from ..options import BuildOptions, Crop, format_crop

_OUTSIDE = (
    "crop of {key} ({crop}: top, left, height, width) reaches {what} but its frames are {height}x{width} "
    "(height x width); choose a crop inside the frame (rows 0-{last_row}, columns 0-{last_col})"
)
_NOT_AN_IMAGE = "crop given for {key!r}, which is not an image key of this build; image keys: {available}"


@dataclass(frozen=True)
class FrameTransform:
    """Crop, then resize, of one camera's frames: uint8 (n, C, H, W) in, uint8 (n, C, h, w) out."""

    source_hw: tuple[int, int]
    """(height, width) of the decoded frames."""
    crop: Crop | None = None
    """(top, left, height, width), inside the frame."""
    resize: tuple[int, int] | None = None
    """(height, width) after the crop."""
    nearest: bool = False
    """Resize by nearest neighbour (`interpolate(mode="nearest-exact")`): depth keys, whose every
    output value must be a value of its frame (a blend of two depths across an edge is a depth
    that was never there). Works on any dtype (int16 codes, float32 depth)."""

    @property
    def output_hw(self) -> tuple[int, int]:
        if self.resize is not None:
            return self.resize
        if self.crop is not None:
            return (self.crop[2], self.crop[3])
        return self.source_hw

    def apply(self, frames: np.ndarray, out: np.ndarray) -> None:
        """Write the transformed `frames` (n, C, H, W) into `out` (n, C, h, w), both uint8, or of a
        depth key's stored dtype with `nearest`."""
        import torch
        import torch.nn.functional as F

        x = torch.from_numpy(frames)
        if self.crop is not None:
            top, left, height, width = self.crop
            x = x[:, :, top : top + height, left : left + width]
        target = torch.from_numpy(out)
        if self.resize is None or tuple(x.shape[-2:]) == self.resize:
            target.copy_(x)
            return
        # One thread: this runs beside a decoding thread, and torch's pool spinning on the same
        # cores slowed a run of 42 frames tenfold (2 cores, measured: 0.18 ms a frame on one
        # thread, 1.2 on two). torch's setting is per thread once a thread has started, so
        # setting it back at once leaves every other thread's as it was.
        threads = torch.get_num_threads()
        if threads != 1:
            torch.set_num_threads(1)
        try:
            if self.nearest:
                # On float32 copies of the values (int16 codes are exact in float32); picking one
                # source pixel per output pixel, so the cast back is exact too.
                picked = F.interpolate(x.float(), size=self.resize, mode="nearest-exact")
                target.copy_(picked)
                return
            resized = F.interpolate(
                x.float(), size=self.resize, mode="bilinear", align_corners=False, antialias=True
            )
            # No clamp: the antialiased bilinear weights are non-negative and sum to 1, so every
            # output lies within its uint8 inputs (up to float round-off, which rounding absorbs).
            # numpy's float -> uint8 cast: torch's costs 4x more.
            np.copyto(out, resized.round_().numpy(), casting="unsafe")
        finally:
            if threads != 1:
                torch.set_num_threads(threads)


def frame_transform(
    key: str, source_hw: tuple[int, int], options: BuildOptions, *, nearest: bool = False
) -> FrameTransform | None:
    """The transform `options` ask for on image key `key`, or None if its frames are kept as decoded.

    Raises:
        DatasetError: the crop reaches outside the frame.
    """
    crop, resize = options.crop_of(key), options.resize
    if crop is None and resize is None:
        return None
    if crop is not None:
        height, width = source_hw
        top, left, h, w = crop
        if top + h > height or left + w > width:
            what = f"row {top + h - 1}" if top + h > height else f"column {left + w - 1}"
            raise DatasetError(
                _OUTSIDE.format(
                    key=key, crop=format_crop(crop), what=what, height=height, width=width,
                    last_row=height - 1, last_col=width - 1,
                )
            )  # fmt: skip
    return FrameTransform(source_hw, crop, resize, nearest)


def check_crops(root: Path, frame_sizes: Mapping[str, tuple[int, int]], options: BuildOptions) -> None:
    """Every crop names an image key of the build and lies inside its frames.

    Args:
        root: The dataset's folder (named in the messages).
        frame_sizes: (height, width) of each image key of the build, in the build's order.

    Raises:
        DatasetError: naming the key and the frame's size.
    """
    info = root / "meta" / "info.json"
    for key, _ in options.crop:
        if key not in frame_sizes:
            raise DatasetError(
                _NOT_AN_IMAGE.format(key=key, available=", ".join(frame_sizes) or "(none)"), path=info
            )
    for key, (height, width) in frame_sizes.items():
        try:
            frame_transform(key, (height, width), options)
        except DatasetError as e:
            raise DatasetError(f"{root}: {e.message}", path=info) from None
