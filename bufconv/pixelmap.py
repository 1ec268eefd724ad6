"""Pixel maps: what a network receives for a stored uint8 pixel `p`, one affine map per channel.

Between the buffer and a network's first layer LeRobot applies affine steps: the buffer's range
(`p/255` or `p`), the policy's normalizer (`MEAN_STD`, `MIN_MAX`, ...), an encoder's own
normalization (`x/255 - 0.5`). Their composition is one map per channel, `scale*p + offset`,
and the image of [0,255] under it is all the network may receive. `map_problem` checks a
tensor against a map as `ranges.range_problem` checks one against a range:

- values outside the image of [0,255] (a [0,255] image where the map expects [0,1] ones, an
  image normalised with the wrong stats) are refused;
- values that map back to pixel values inside [0, 1] (the whole batch squeezed into 1/255 of
  the interval: divided by 255 twice) are refused as double normalization;
- a black frame (every value the image of p = 0) is accepted, as an all-zero image is.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .errors import DOUBLE_NORMALIZED, RANGE_MISMATCH, RangeMismatchError
from .options import validate_range

_OUTSIDE_SLACK = 2e-3  # of the interval's width: float round-off at its ends
_MESSAGE = "{key} ({where}): expected {map} but the values span [{lo:.6g}, {hi:.6g}]: {diagnosis}"
_NOT_DIVIDED = (
    "they are what [0,255] images give where this path expects [0,1] ones (up to {p:.0f} in pixel "
    "units): divide by 255 once before the normalizer, or declare range 255 with stats in [0,255] units"
)
_OUTSIDE = (
    "outside what any image gives on this path (pixel units [{plo:.4g}, {phi:.4g}]): normalised twice, "
    "with other stats, or not an image"
)
_SQUEEZED = (
    "the whole batch maps back to pixel values inside [0, 1], 1/255 of the interval: the images were "
    "divided by 255 twice (or normalised with stats in [0,255] units); remove one of the divisions"
)
_NAN = "the images contain NaN or inf"


def _num(value: float) -> str:
    return f"{value:.4g}"


def _vector(values: Sequence[float]) -> str:
    if len(set(values)) == 1:
        return _num(values[0])
    return "[" + ", ".join(_num(v) for v in values) + "]"


def _wrapped(text: str) -> str:
    """`text` in parentheses when it is a sum, so a division after it divides all of it."""
    depth = 0
    for i, char in enumerate(text):
        depth += char == "("
        depth -= char == ")"
        if depth == 0 and char in "+-" and i > 0:
            return f"({text})"
    return text


@dataclass(frozen=True)
class PixelMap:
    """`scale[c] * p + offset[c]` per channel c, from a uint8 pixel p in [0,255]; `text` says it in p."""

    scale: tuple[float, ...]
    offset: tuple[float, ...]
    text: str = "p"

    @classmethod
    def of_range(cls, image_range: int, channels: int = 3) -> PixelMap:
        """The map of a buffer's output range alone: `p/255` (range 1) or `p` (range 255)."""
        if validate_range(image_range) == 1:
            return cls((1 / 255,) * channels, (0.0,) * channels, "p/255")
        return cls((1.0,) * channels, (0.0,) * channels, "p")

    @property
    def channels(self) -> int:
        return len(self.scale)

    def then(self, scale: Sequence[float], offset: Sequence[float], text: str) -> PixelMap:
        """This map followed by `scale*x + offset` (per channel, or one value for all); `text` has `{x}`."""
        n = self.channels
        a = list(scale) * n if len(scale) == 1 else list(scale)
        b = list(offset) * n if len(offset) == 1 else list(offset)
        if len(a) != n or len(b) != n:
            raise ValueError(f"a step of {len(a)} channels after a map of {n}")
        return PixelMap(
            tuple(ai * s for ai, s in zip(a, self.scale, strict=True)),
            tuple(ai * o + bi for ai, o, bi in zip(a, self.offset, b, strict=True)),
            text.format(x=_wrapped(self.text)),
        )

    def intervals(self) -> list[tuple[float, float]]:
        """Per channel, the image of [0,255]: (low, high)."""
        out = []
        for a, b in zip(self.scale, self.offset, strict=True):
            ends = (b, a * 255.0 + b)
            out.append((min(ends), max(ends)))
        return out

    def interval(self) -> tuple[float, float]:
        """The image of [0,255] over all channels."""
        ends = self.intervals()
        return min(lo for lo, _ in ends), max(hi for _, hi in ends)

    def same_as(self, other: PixelMap, rtol: float = 1e-4) -> bool:
        """True when both maps send every pixel of every channel to the same value (up to round-off)."""
        if self.channels != other.channels:
            return False
        width = max(hi - lo for lo, hi in self.intervals() + other.intervals()) or 1.0
        return all(
            abs(a1 * p + b1 - (a2 * p + b2)) <= rtol * width
            for a1, b1, a2, b2 in zip(self.scale, self.offset, other.scale, other.offset, strict=True)
            for p in (0.0, 255.0)
        )

    def is_range(self, image_range: int) -> bool:
        """True when this map is the buffer's range alone (no normalizer after it)."""
        return self.same_as(PixelMap.of_range(image_range, self.channels))

    def describe(self) -> str:
        lo, hi = self.interval()
        return f"{self.text} -> [{lo:.3g}, {hi:.3g}]"

    def to_json(self) -> dict[str, object]:
        lo, hi = self.interval()
        return {
            "scale": list(self.scale),
            "offset": list(self.offset),
            "interval": [lo, hi],
            "expression": self.text,
        }

    def apply(self, pixels: torch.Tensor) -> torch.Tensor:
        """The map applied to uint8 (..., C, H, W) pixels, as float32."""
        shape = (self.channels, 1, 1)
        a = torch.tensor(self.scale, dtype=torch.float32, device=pixels.device).reshape(shape)
        b = torch.tensor(self.offset, dtype=torch.float32, device=pixels.device).reshape(shape)
        return pixels.to(torch.float32) * a + b


def _per_channel(x: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    if x.ndim < 3 or x.shape[-3] != channels:
        return None
    flat = x.detach().movedim(-3, 0).reshape(channels, -1)
    return flat.amin(dim=1).to(torch.float64), flat.amax(dim=1).to(torch.float64)


def map_problem(
    x: torch.Tensor, pixel_map: PixelMap, *, name: str = "image", where: str = "this path"
) -> RangeMismatchError | None:
    """The problem of `x` against what `pixel_map` makes of [0,255] pixels, or None if it fits.

    Args:
        x: Float images (..., C, H, W) as they reach the network (after the map's steps).
        pixel_map: The map the path declares, from the stored pixel to here.
        name: The key, for the message.
        where: The path (e.g. "learner batch -> policy encoder"), for the message.
    """
    if x.numel() == 0:
        return None
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected float images at {where}, got {x.dtype}")
    extremes = _per_channel(x, pixel_map.channels)
    if extremes is not None:
        lows, highs = extremes[0].tolist(), extremes[1].tolist()
        ends, scales, offsets = pixel_map.intervals(), pixel_map.scale, pixel_map.offset
    else:  # not channels-first with the map's channels: the whole tensor against the whole interval
        lo_t, hi_t = torch.aminmax(x.detach())
        lows, highs, ends = [float(lo_t)], [float(hi_t)], [pixel_map.interval()]
        uniform = len(set(pixel_map.scale)) == 1 and len(set(pixel_map.offset)) == 1
        scales, offsets = (pixel_map.scale[:1], pixel_map.offset[:1]) if uniform else ((0.0,), (0.0,))
    lo, hi = min(lows), max(highs)

    def error(diagnosis: str, code: str) -> RangeMismatchError:
        problem = RangeMismatchError(
            _MESSAGE.format(key=name, where=where, map=pixel_map.describe(), lo=lo, hi=hi, diagnosis=diagnosis),
            key=name,
            expected=1 if pixel_map.interval()[1] <= 1.0 else 255,
            found_min=lo,
            found_max=hi,
            problem=code,
        )
        problem.path_map = f"{where}: {pixel_map.describe()}"
        return problem

    if not all(map(_finite, lows + highs)):
        return error(_NAN, RANGE_MISMATCH)
    round_off = torch.finfo(x.dtype).eps * max(abs(lo), abs(hi), 1.0) * 4
    # Back to pixel units, per channel: the pixels these values would have come from.
    pixel_lo, pixel_hi, tolerance = [], [], []
    for (end_lo, end_hi), a, b, low, high in zip(ends, scales, offsets, lows, highs, strict=False):
        slack = _OUTSIDE_SLACK * (end_hi - end_lo) + round_off
        if low < end_lo - slack or high > end_hi + slack:
            p = [(v - b) / a for v in (low, high)] if a else [0.0, 0.0]
            plo, phi = min(p), max(p)
            if phi > 255 * 1.5 and plo > -255 and phi <= 255 * 255 * 1.01:
                return error(_NOT_DIVIDED.format(p=phi), RANGE_MISMATCH)
            return error(_OUTSIDE.format(plo=plo, phi=phi), RANGE_MISMATCH)
        p = sorted((v - b) / a for v in (low, high)) if a else [0.0, 0.0]
        pixel_lo.append(p[0])
        pixel_hi.append(p[1])
        tolerance.append(round_off / abs(a) if a else 0.0)
    pixel_tolerance = max(tolerance)
    if pixel_tolerance >= 0.25:
        return None  # too coarse a dtype (bfloat16) to tell a squeezed batch from a dark one
    if all(abs(v) <= pixel_tolerance for v in pixel_lo + pixel_hi):
        return None  # a black frame: every value is the image of p = 0
    if max(pixel_hi) <= 1.0 + pixel_tolerance and min(pixel_lo) >= -pixel_tolerance:
        return error(_SQUEEZED, DOUBLE_NORMALIZED)
    return None


def _finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def check_mapped(x: torch.Tensor, pixel_map: PixelMap, *, name: str = "image", where: str = "this path") -> None:
    """Raise `RangeMismatchError` unless `x` is what `pixel_map` makes of some [0,255] images."""
    problem = map_problem(x, pixel_map, name=name, where=where)
    if problem is not None:
        raise problem
