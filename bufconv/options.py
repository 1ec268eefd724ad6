"""Build options: one frozen value that feeds the CLI, the fingerprint and the cache header."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

#: The two value ranges a cache can declare for its image keys (SPEC section 3).
IMAGE_RANGES = (1, 255)
DEFAULT_TOLERANCE_S = 1e-4

_BAD_RANGE = "image_range must be 1 (floats in [0,1]) or 255 (floats in [0,255]); got {!r}"
_BAD_EPISODES = "cannot read episode selection {!r}: write it like '0-9,15' (ranges are inclusive)"


def validate_range(image_range: object) -> int:
    """Return `image_range` as an int, or raise ValueError if it is not 1 or 255."""
    if isinstance(image_range, bool) or image_range not in IMAGE_RANGES:
        raise ValueError(_BAD_RANGE.format(image_range))
    return 255 if image_range == 255 else 1


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

    workers: int = field(default=1, compare=False)
    """Most decoding processes to use (a build uses at most one per two cores, and none for small
    builds: see `plan.worker_processes`). Does not change the output, so it is not part of the
    fingerprint."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "image_range", validate_range(self.image_range))
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
    ) -> BuildOptions:
        """Build options from user-facing values: keys and episodes may be given as CLI strings."""
        if isinstance(keys, str):
            keys = parse_keys(keys)
        if isinstance(episodes, str):
            episodes = parse_episodes(episodes)
        return cls(
            image_range=image_range,
            keys=None if keys is None else tuple(keys),
            episodes=None if episodes is None else tuple(episodes),
            tolerance_s=float(tolerance_s),
            workers=default_workers() if workers is None else workers,
        )
