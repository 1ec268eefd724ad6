"""Where things live in the LeRobot release that is installed (0.4+ or 0.3.x).

Module layouts are found by trying each candidate, newest first; what a release has is found by
looking for it (`processor_step_api`), never by comparing version numbers. Which releases are
supported: `bufconv.lerobot.releases`.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any

from .releases import check_installed, supported_text

#: Candidate module paths, newest layout first.
LEARNER_MODULES = ("lerobot.rl.learner", "lerobot.scripts.rl.learner")
PROCESSOR_MODULES = ("lerobot.processor",)


def import_first(candidates: tuple[str, ...], what: str) -> ModuleType:
    """Import the first module of `candidates` that exists.

    Raises:
        ImportError: LeRobot is not installed, or none of the layouts match.
        UnsupportedReleaseError: the installed LeRobot is older than every supported release.
    """
    try:
        import lerobot  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{what} needs LeRobot: pip install 'bufconv[lerobot]' (or lerobot itself)") from e
    version = check_installed()
    errors = []
    for name in candidates:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and not name.startswith(e.name):  # a dependency of the module is missing: say so
                raise
            errors.append(name)
    raise ImportError(
        f"{what}: none of {', '.join(candidates)} exists in the installed LeRobot {version}; {supported_text()}"
    )


def learner_module() -> ModuleType:
    """LeRobot's learner script module (`lerobot.rl.learner` or `lerobot.scripts.rl.learner`).

    Raises:
        ImportError: LeRobot or its learner's dependencies (grpcio) are missing, said in one line.
    """
    try:
        return import_first(LEARNER_MODULES, "the LeRobot learner")
    except ImportError as e:
        if "grpc" in str(e).lower():
            raise ImportError(
                f"the LeRobot learner needs grpcio: pip install 'lerobot[grpcio-dep]' ({e})"
            ) from e
        raise


def processor_step_api() -> tuple[Any, Any] | None:
    """`(ObservationProcessorStep, ProcessorStepRegistry)` of the installed LeRobot's processor pipelines.

    None where the release has no such steps: 0.3.x ships an early `lerobot.processor`
    (`ObservationProcessor`, `RobotProcessor`) that its RL actor does not use; its actor
    processes observations with gym wrappers instead.

    Raises:
        ImportError: LeRobot is not installed (or has no `lerobot.processor` at all).
    """
    processor = import_first(PROCESSOR_MODULES, "ImageRangeProcessorStep")
    step = getattr(processor, "ObservationProcessorStep", None)
    registry = getattr(processor, "ProcessorStepRegistry", None)
    if step is None or registry is None:
        return None
    return step, registry
