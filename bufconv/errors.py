"""The exception hierarchy: everything bufconv raises on purpose derives from `BufconvError`.

Each error carries named context (`path`, `expected`, `found`, ...) so callers and the CLI can
report it without parsing the message, and each message says what to do next.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


class BufconvError(Exception):
    """Raised when bufconv cannot do what was asked; the message says why and what to do."""

    def __init__(self, message: str, *, path: str | Path | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        return self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Keyword-only context does not survive the default exception pickling; worker
        # processes send these errors back to the parent, so keep every attribute.
        return (_rebuild, (type(self), self.message, dict(self.__dict__)))


def _rebuild(cls: type[BufconvError], message: str, state: dict[str, object]) -> BufconvError:
    error = cls.__new__(cls)
    Exception.__init__(error, message)
    error.__dict__.update(state)
    return error


# Problem codes: the public vocabulary of `bufconv verify` (SPEC section 6).
UNREADABLE = "unreadable"
NOT_A_CACHE = "not-a-cache"
UNSUPPORTED_VERSION = "unsupported-version"
CHECKSUM_MISMATCH = "checksum-mismatch"
INCONSISTENT = "inconsistent"
RANGE_MISMATCH = "range-mismatch"
DOUBLE_NORMALIZED = "double-normalized"
UNIT_MISMATCH = (
    "unit-mismatch"  # depth in metres where millimetres are declared, or the reverse (SPEC section 15)
)
STALE = "stale"
DIFFERENT_DATASET = "different-dataset"  # verify --dataset names another dataset than the source
UNCOMMITTED = "uncommitted"  # an online buffer's segment no checkpoint committed (SPEC section 11)

# Finding codes of `bufconv check`: the data against a LeRobot training config (SPEC section 12).
# A range difference is RANGE_MISMATCH, as above.
SHAPE_MISMATCH = "shape-mismatch"
ACTION_OUT_OF_BOUNDS = "action-out-of-bounds"
GRIPPER_MISMATCH = "gripper-mismatch"
FPS_MISMATCH = "fps-mismatch"
CLAMP_BEFORE_RANGE = "clamp-before-range"
CROP_MISMATCH = "crop-mismatch"  # a cache cropped/resized otherwise than the config's env processor
# The image chain (SPEC section 14): what each network's first layer sees.
NORMALIZER_RANGE_MISMATCH = (
    "normalizer-range-mismatch"  # stats in [0,1] units on [0,255] images, or the reverse
)
PATH_MISMATCH = "path-mismatch"  # two paths into one network map the same pixel differently
CLASSIFIER_INPUT_MISMATCH = (
    "classifier-input-mismatch"  # the reward classifier's actor path differs from its training
)


@dataclass(frozen=True)
class Problem:
    """One finding about a cache file, with a stable code (`bufconv verify --json` reports these)."""

    code: str
    message: str


class DatasetError(BufconvError):
    """Raised when a folder is not a readable LeRobot dataset, or a requested key/episode is absent."""


class UnsupportedVersionError(DatasetError):
    """Raised when a dataset's `codebase_version` is not one bufconv reads."""

    def __init__(self, message: str, *, path: str | Path | None, found: str, expected: Sequence[str]) -> None:
        super().__init__(message, path=path)
        self.found = found
        self.expected = tuple(expected)


class DecodeError(BufconvError):
    """Raised when a video or image cannot be decoded, or its frames do not match the parquet timestamps."""


class CacheError(BufconvError):
    """Raised when a cache file cannot be written, read or trusted."""


class InvalidCacheError(CacheError):
    """Raised when a file is not a trustworthy bufconv cache (unreadable, foreign, damaged, other version)."""

    def __init__(self, message: str, *, path: str | Path | None, problems: Sequence[Problem]) -> None:
        super().__init__(message, path=path)
        self.problems = list(problems)


def unwritable_folder(folder: Path, error: OSError) -> CacheError:
    """The CacheError for a folder the cache cannot be written to."""
    why = os.strerror(error.errno) if error.errno else str(error)
    return CacheError(
        f"{folder}: cannot write the cache here ({why}); choose a writable folder with -o/--output",
        path=folder,
    )


class StaleCacheError(CacheError):
    """Raised when a cache does not match the requested dataset/options and rebuilding was not allowed."""

    def __init__(self, message: str, *, path: str | Path | None, reasons: Sequence[str]) -> None:
        super().__init__(message, path=path)
        self.reasons = list(reasons)


class LockTimeoutError(CacheError):
    """Raised when another process held the cache lock for longer than we were willing to wait."""


class ConfigError(BufconvError):
    """Raised when a training config cannot be read, or a value in it has the wrong form."""


class ContractError(BufconvError):
    """Raised when data does not fit a training config (`bufconv check` found errors) and that was not allowed."""

    def __init__(self, message: str, *, path: str | Path | None, findings: Sequence[object]) -> None:
        super().__init__(message, path=path)
        #: The `contract.Finding`s, errors and warnings.
        self.findings = list(findings)


class RangeMismatchError(BufconvError, ValueError):
    """Raised when image values do not lie in the range a buffer or encoder declared."""

    def __init__(
        self,
        message: str,
        *,
        key: str,
        expected: int,
        found_min: float,
        found_max: float,
        problem: str,
    ) -> None:
        super().__init__(message)
        self.key = key
        self.expected = expected
        self.found_min = found_min
        self.found_max = found_max
        #: "range-mismatch" or "double-normalized": the same codes `bufconv verify` reports.
        self.problem = problem
        #: The path and its pixel map (`PixelMap.describe()`), when the check was against a map.
        self.path_map: str | None = None


class UnitMismatchError(RangeMismatchError):
    """Raised when depth values contradict the unit ("mm" or "m") a buffer or encoder declared."""

    def __init__(self, message: str, *, key: str, unit: str, found_min: float, found_max: float) -> None:
        # `expected` of a range error is a range (1 or 255); a depth key's is its unit.
        super().__init__(
            message, key=key, expected=0, found_min=found_min, found_max=found_max, problem=UNIT_MISMATCH
        )
        self.expected_unit = unit
        self.unit = unit
