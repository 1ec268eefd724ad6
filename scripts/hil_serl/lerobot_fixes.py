"""A `--bufconv.hook` that works around a LeRobot 0.6.1 bug met by every gym_hil config with `reset`.

    python -m bufconv.lerobot.learner --config_path train_config.json --bufconv.hook=scripts/hil_serl/lerobot_fixes.py

`ResetConfig.fixed_reset_joint_positions` is annotated `Any | None`, which the config library
(draccus) cannot encode: the learner's start-up `cfg.to_dict()` and every checkpoint's
`cfg.save_pretrained()` fail with "typing.Any cannot be used with isinstance()". Without
`env.processor.reset` there is no time limit shorter than gym-hil's 100 steps, and the actor
sends transitions only when an episode ends. This narrows the annotation, in this process only,
to what the field holds (`list[float] | None`); LeRobot's installed files are not touched.
Where the annotation is already something else (a fixed LeRobot), it does nothing.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any, Optional


def narrow_reset_joint_positions() -> bool:
    """Returns whether the annotation was narrowed."""
    from lerobot.envs.configs import ResetConfig

    field = {f.name: f for f in dataclasses.fields(ResetConfig)}["fixed_reset_joint_positions"]
    if field.type not in (Any | None, Optional[Any], "Any | None"):  # noqa: UP045
        return False
    field.type = Optional[list[float]]  # noqa: UP045  (draccus decodes typing.Optional)
    ResetConfig.__annotations__["fixed_reset_joint_positions"] = field.type
    return True


def install(_module: ModuleType | None = None) -> None:
    narrow_reset_joint_positions()
