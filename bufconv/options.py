"""Build options: one frozen value that feeds the CLI, the fingerprint and the cache header."""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

#: The two value ranges a cache can declare for its image keys (SPEC section 3).
IMAGE_RANGES = (1, 255)
#: The units a cache can deliver depth keys in (SPEC section 15); "mm" is LeRobot's default
#: (`DatasetConfig.depth_output_unit`).
DEPTH_UNITS = ("mm", "m")
DEFAULT_DEPTH_UNIT = "mm"
DEFAULT_TOLERANCE_S = 1e-4

_BAD_RANGE = "image_range must be 1 (floats in [0,1]) or 255 (floats in [0,255]); got {!r}"
_BAD_DEPTH_UNIT = "depth_unit must be 'mm' (millimetres, LeRobot's default) or 'm' (metres); got {!r}"
_BAD_EPISODES = "cannot read episode selection {!r}: write it like '0-9,15' (ranges are inclusive)"
_BAD_CROP = (
    "cannot read crop {!r}: write it KEY=TOP,LEFT,HEIGHT,WIDTH in pixels, like "
    "'observation.images.front=0,0,96,96' (top, left >= 0; height, width > 0)"
)
_BAD_RESIZE = "cannot read resize {!r}: write it H,W in pixels, like '128,128' (both > 0)"

#: One camera's crop, as LeRobot's `crop_params_dict` gives it: (top, left, height, width) in pixels.
Crop = tuple[int, int, int, int]


def validate_range(image_range: object) -> int:
    """Return `image_range` as an int, or raise ValueError if it is not 1 or 255."""
    if isinstance(image_range, bool) or image_range not in IMAGE_RANGES:
        raise ValueError(_BAD_RANGE.format(image_range))
    return 255 if image_range == 255 else 1


def validate_depth_unit(unit: object) -> str:
    """Return `unit` ("mm" or "m"), or raise ValueError."""
    if unit not in DEPTH_UNITS:
        raise ValueError(_BAD_DEPTH_UNIT.format(unit))
    return str(unit)


def parse_episodes(text: str) -> tuple[int, ...]:
    """Parse '0-9,15' into (0, 1, ..., 9, 15): sorted, without duplicates.

    Raises:
        ValueError: the text is not a comma-separated list of integers and inclusive ranges.
    """
    out: set[int] = set()
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        lo, sep, hi = part.partition("-")
        try:
            if sep:
                first, last = int(lo), int(hi)
                if first < 0 or last < first:
                    raise ValueError(part)
                out.update(range(first, last + 1))
            else:
                value = int(part)
                if value < 0:
                    raise ValueError(part)
                out.add(value)
        except ValueError:
            raise ValueError(_BAD_EPISODES.format(text)) from None
    if not out:
        raise ValueError(_BAD_EPISODES.format(text))
    return tuple(sorted(out))


def format_episodes(episodes: Iterable[int]) -> str:
    """The inverse of `parse_episodes`: (0, 1, 2, 5) -> '0-2,5'."""
    values = sorted(set(episodes))
    parts: list[str] = []
    i = 0
    while i < len(values):
        j = i
        while j + 1 < len(values) and values[j + 1] == values[j] + 1:
            j += 1
        parts.append(str(values[i]) if i == j else f"{values[i]}-{values[j]}")
        i = j + 1
    return ",".join(parts)


def parse_keys(text: str) -> tuple[str, ...]:
    """Parse 'observation.state,observation.images.front' into a tuple of keys."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    if not keys:
        raise ValueError(
            f"no keys in {text!r}: write them comma-separated, like 'observation.state,observation.images.front'"
        )
    return keys


def _int_values(values: object, count: int, error: str) -> tuple[int, ...]:
    """`values` ("1,2" or a sequence) as exactly `count` ints; ValueError(error) otherwise."""
    parts = values.split(",") if isinstance(values, str) else values
    numbers = []
    try:
        for value in parts:  # type: ignore[attr-defined]
            if isinstance(value, bool):
                raise ValueError(value)
            number = int(value.strip() if isinstance(value, str) else value)
            if not isinstance(value, str) and float(value) != number:  # 1.5 is not a pixel
                raise ValueError(value)
            numbers.append(number)
    except (TypeError, ValueError):
        raise ValueError(error) from None
    if len(numbers) != count:
        raise ValueError(error)
    return tuple(numbers)


def parse_crop(text: str) -> tuple[str, Crop]:
    """Parse 'observation.images.front=0,0,96,96' into (key, (top, left, height, width)).

    Raises:
        ValueError: not KEY=TOP,LEFT,HEIGHT,WIDTH with top, left >= 0 and height, width > 0.
    """
    key, sep, values = text.partition("=")
    if not sep or not key.strip():
        raise ValueError(_BAD_CROP.format(text))
    return key.strip(), validate_crop(values, text)


def validate_crop(values: object, shown: object = None) -> Crop:
    """(top, left, height, width) as ints, top/left >= 0, height/width > 0; ValueError otherwise."""
    error = _BAD_CROP.format(values if shown is None else shown)
    top, left, height, width = _int_values(values, 4, error)
    if top < 0 or left < 0 or height < 1 or width < 1:
        raise ValueError(error)
    return (top, left, height, width)


def parse_resize(text: object) -> tuple[int, int]:
    """Parse '128,128' (or a sequence of two ints) into (height, width), both > 0."""
    height, width = _int_values(text, 2, _BAD_RESIZE.format(text))
    if height < 1 or width < 1:
        raise ValueError(_BAD_RESIZE.format(text))
    return (height, width)


def format_crop(crop: Crop) -> str:
    """(0, 0, 96, 96) -> '0,0,96,96', the CLI's spelling."""
    return ",".join(str(v) for v in crop)


def default_workers() -> int:
    """All the cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # macOS, Windows
        return max(1, os.cpu_count() or 1)


@dataclass(frozen=True)
class BuildOptions:
    """Everything that decides what a cache holds, plus how hard to work building it.

    The meaning-bearing fields (all but `workers`) are hashed into the cache fingerprint, so
    changing any of them makes an existing cache stale.
    """

    image_range: int = 1
    """Value range batches of image keys come out in: 1 (floats in [0,1]) or 255 (floats in [0,255])."""

    keys: tuple[str, ...] | None = None
    """Observation keys that make up `state`/`next_state`; None means every `observation.*` feature."""

    episodes: tuple[int, ...] | None = None
    """Episode indices to include; None means all of them."""

    tolerance_s: float = DEFAULT_TOLERANCE_S
    """Largest allowed distance between a parquet timestamp and its decoded video frame (LeRobot's default)."""

    crop: tuple[tuple[str, Crop], ...] = ()
    """Per image key, (top, left, height, width) cropped from each decoded frame, as LeRobot's
    `crop_params_dict`; sorted by key. Empty: no crop. Applied before `resize`."""

    resize: tuple[int, int] | None = None
    """(height, width) every image key is resized to after its crop, as LeRobot's `resize_size`
    (bilinear, antialiased, on the frame's float values); None: no resize."""

    depth_unit: str = DEFAULT_DEPTH_UNIT
    """Unit batches of depth keys come out in: "mm" (LeRobot's default `depth_output_unit`) or "m".
    Part of the fingerprint only for builds that have a depth key."""

    workers: int = field(default=1, compare=False)
    """Most decoding processes to use (a build uses at most one per two cores, and none for small
    builds: see `plan.worker_processes`). Does not change the output, so it is not part of the
    fingerprint."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_range", validate_range(self.image_range))
        object.__setattr__(self, "depth_unit", validate_depth_unit(self.depth_unit))
        if self.keys is not None:
            if isinstance(self.keys, str):
                raise TypeError("keys must be a sequence of strings, not one string")
            object.__setattr__(self, "keys", tuple(dict.fromkeys(self.keys)))
        if self.episodes is not None:
            if not self.episodes:
                raise ValueError("episodes must not be empty; pass None for all episodes")
            episodes = tuple(sorted({int(e) for e in self.episodes}))
            if episodes[0] < 0:
                raise ValueError(f"episode indices are >= 0; got {episodes[0]}")
            object.__setattr__(self, "episodes", episodes)
        crops = dict(self.crop.items() if isinstance(self.crop, Mapping) else self.crop)
        object.__setattr__(self, "crop", tuple(sorted((str(k), validate_crop(v)) for k, v in crops.items())))
        if self.resize is not None:
            object.__setattr__(self, "resize", parse_resize(self.resize))
        if not self.tolerance_s > 0:
            raise ValueError(f"tolerance_s must be > 0; got {self.tolerance_s!r}")
        if self.workers < 1:
            raise ValueError(f"workers must be >= 1; got {self.workers!r}")

    @classmethod
    def create(
        cls,
        *,
        image_range: int = 1,
        keys: Sequence[str] | str | None = None,
        episodes: Sequence[int] | str | None = None,
        tolerance_s: float = DEFAULT_TOLERANCE_S,
        workers: int | None = 1,
        crop: Mapping[str, Sequence[int] | str] | Sequence[str] | None = None,
        resize: Sequence[int] | str | None = None,
        depth_unit: str = DEFAULT_DEPTH_UNIT,
    ) -> BuildOptions:
        """Build options from user-facing values: keys, episodes, crops and the resize may be
        given as CLI strings (`crop` as {key: (top, left, height, width)} or ["KEY=T,L,H,W", ...])."""
        if isinstance(keys, str):
            keys = parse_keys(keys)
        if isinstance(episodes, str):
            episodes = parse_episodes(episodes)
        crops: dict[str, Crop] = {}
        if isinstance(crop, Mapping):
            crops = {str(k): validate_crop(v, f"{k}={v}") for k, v in crop.items()}
        elif crop is not None:
            if isinstance(crop, str):
                crop = [crop]
            for text in crop:
                key, values = parse_crop(text)
                if key in crops:
                    raise ValueError(f"two crops for {key!r}; give each camera one --crop")
                crops[key] = values
        return cls(
            image_range=image_range,
            keys=None if keys is None else tuple(keys),
            episodes=None if episodes is None else tuple(episodes),
            tolerance_s=float(tolerance_s),
            crop=tuple(crops.items()),
            resize=None if resize is None else parse_resize(resize),
            depth_unit=depth_unit,
            workers=default_workers() if workers is None else workers,
        )

    def crop_of(self, key: str) -> Crop | None:
        """The crop of image key `key`, or None."""
        return dict(self.crop).get(key)
