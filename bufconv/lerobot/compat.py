"""Where things live in the LeRobot release that is installed (0.4+ or 0.3.x)."""

from __future__ import annotations

import importlib
from types import ModuleType

#: Candidate module paths, newest layout first.
LEARNER_MODULES = ("lerobot.rl.learner", "lerobot.scripts.rl.learner")
PROCESSOR_MODULES = ("lerobot.processor",)


def import_first(candidates: tuple[str, ...], what: str) -> ModuleType:
    """Import the first module of `candidates` that exists.

    Raises:
        ImportError: LeRobot is not installed, or none of the layouts match.
    """
    try:
        import lerobot  # noqa: F401
    except ImportError as e:
        raise ImportError(f"{what} needs LeRobot: pip install 'bufconv[lerobot]' (or lerobot itself)") from e
    errors = []
    for name in candidates:
        try:
            return importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name and not name.startswith(e.name):  # a dependency of the module is missing: say so
                raise
            errors.append(name)
    raise ImportError(f"{what}: none of {', '.join(candidates)} exists in the installed LeRobot")


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
