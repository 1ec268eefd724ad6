"""bufconv: LeRobot datasets -> versioned, range-checked uint8 offline replay buffers.

    import bufconv
    buf = bufconv.load_or_build("user/pick_cube", "offline_buffer.pt", image_range=255)
    batch = buf.sample(256)

Public names are imported on first use, so `import bufconv` (and the CLI, and decoding worker
processes) start without paying for torch until it is needed.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .version import __version__

# public name -> module that defines it
_EXPORTS = {
    "build": "bufconv.convert.build",
    "BuildResult": "bufconv.convert.pipeline",
    "BuildOptions": "bufconv.options",
    "load_or_build": "bufconv.buffer.loader",
    "open_buffer": "bufconv.buffer.loader",
    "OfflineBuffer": "bufconv.buffer.offline",
    "OnlineBuffer": "bufconv.buffer.online",
    "CheckpointResult": "bufconv.buffer.persist",
    "BatchTransition": "bufconv.buffer.batch",
    "verify": "bufconv.cache.verification",
    "check": "bufconv.contract.check",
    "check_or_raise": "bufconv.contract.check",
    "CheckReport": "bufconv.contract.check",
    "verify_or_raise": "bufconv.cache.verification",
    "VerifyReport": "bufconv.cache.verification",
    "to_range": "bufconv.ranges",
    "check_range": "bufconv.ranges",
    "to_unit": "bufconv.ranges",
    "check_unit": "bufconv.ranges",
    "unit_problem": "bufconv.ranges",
    "range_problem": "bufconv.ranges",
    "guard_encoder": "bufconv.ranges",
    "preprocess_observation": "bufconv.ranges",
    "open_dataset": "bufconv.source.layouts",
    "BufconvError": "bufconv.errors",
    "DatasetError": "bufconv.errors",
    "UnsupportedVersionError": "bufconv.errors",
    "DecodeError": "bufconv.errors",
    "CacheError": "bufconv.errors",
    "InvalidCacheError": "bufconv.errors",
    "StaleCacheError": "bufconv.errors",
    "LockTimeoutError": "bufconv.errors",
    "RangeMismatchError": "bufconv.errors",
    "UnitMismatchError": "bufconv.errors",
    "ConfigError": "bufconv.errors",
    "ContractError": "bufconv.errors",
}

__all__ = [  # literal, for type checkers and linters; tests check it matches _EXPORTS
    "BatchTransition",
    "BufconvError",
    "BuildOptions",
    "BuildResult",
    "CacheError",
    "CheckReport",
    "CheckpointResult",
    "ConfigError",
    "ContractError",
    "DatasetError",
    "DecodeError",
    "InvalidCacheError",
    "LockTimeoutError",
    "OfflineBuffer",
    "OnlineBuffer",
    "RangeMismatchError",
    "StaleCacheError",
    "UnitMismatchError",
    "UnsupportedVersionError",
    "VerifyReport",
    "__version__",
    "build",
    "check",
    "check_or_raise",
    "check_range",
    "check_unit",
    "guard_encoder",
    "load_or_build",
    "open_buffer",
    "open_dataset",
    "preprocess_observation",
    "range_problem",
    "to_range",
    "to_unit",
    "unit_problem",
    "verify",
    "verify_or_raise",
]

if TYPE_CHECKING:
    from .buffer.batch import BatchTransition
    from .buffer.loader import load_or_build, open_buffer
    from .buffer.offline import OfflineBuffer
    from .buffer.online import OnlineBuffer
    from .buffer.persist import CheckpointResult
    from .cache.verification import VerifyReport, verify, verify_or_raise
    from .contract.check import CheckReport, check, check_or_raise
    from .convert.build import build
    from .convert.pipeline import BuildResult
    from .errors import (
        BufconvError,
        CacheError,
        ConfigError,
        ContractError,
        DatasetError,
        DecodeError,
        InvalidCacheError,
        LockTimeoutError,
        RangeMismatchError,
        StaleCacheError,
        UnitMismatchError,
        UnsupportedVersionError,
    )
    from .options import BuildOptions
    from .ranges import (
        check_range,
        check_unit,
        guard_encoder,
        preprocess_observation,
        range_problem,
        to_range,
        to_unit,
        unit_problem,
    )
    from .source.layouts import open_dataset


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bufconv' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
