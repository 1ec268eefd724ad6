"""Live images in the learner's range where LeRobot's actor has gym wrappers, not processor steps (0.3.x).

LeRobot 0.3.x's actor (`lerobot.scripts.rl.actor`) builds its env with
`gym_manipulator.make_robot_env`: `ConvertToLeRobotObservation` divides images by 255, then
`ImageCropResizeWrapper` (when `env.wrapper.crop_params_dict` is set) crops, resizes and clamps to
[0,1]. A conversion to [0,255] before that wrapper would be clamped flat (every pixel 1.0, the
devlog's bug); `with_range_wrapper` wraps the finished env instead, so `ImageRangeWrapper` sees the
images the env delivers, [0,1] after every LeRobot wrapper (its reward classifier included, which
keeps getting the [0,1] images of its training), and puts them in the declared range, checked.
At range 1 it only checks.
"""

from __future__ import annotations

import functools
import logging
from typing import Any

from ..options import validate_range
from ..ranges import check_range, to_range

log = logging.getLogger("bufconv")

IMAGE_PREFIX = "observation.image"


def convert_images(observation: dict[str, Any], input_range: int, image_range: int) -> dict[str, Any]:
    """`observation` with each image (`observation.image*` tensors) checked in `input_range` (uint8:
    [0,255]), converted to `image_range` and checked there; other entries as they are."""
    out = dict(observation)
    for key, value in observation.items():
        if key.startswith(IMAGE_PREFIX) and hasattr(value, "dtype"):
            check_range(value, 255 if str(value.dtype) == "torch.uint8" else input_range, name=key)
            out[key] = to_range(value, input_range, image_range)
            check_range(out[key], image_range, name=key)
    return out


@functools.cache
def _wrapper_class() -> type:
    import gymnasium as gym

    class ImageRangeWrapper(gym.ObservationWrapper):
        """The env's observations with images in `image_range` (from `input_range`), range-checked."""

        def __init__(self, env: Any, image_range: int = 255, input_range: int = 1) -> None:
            super().__init__(env)
            self.image_range = validate_range(image_range)
            self.input_range = validate_range(input_range)

        def observation(self, observation: Any) -> Any:
            return convert_images(observation, self.input_range, self.image_range)

    return ImageRangeWrapper


def range_wrapped(env: Any, image_range: int, input_range: int = 1) -> Any:
    """`env` wrapped in `ImageRangeWrapper`: its observations' images in `image_range`, checked."""
    return _wrapper_class()(env, image_range=image_range, input_range=input_range)


def with_range_wrapper(make_robot_env: Any, image_range: int) -> Any:
    """LeRobot 0.3.x's `make_robot_env`, whose env delivers images in `image_range`, checked.

    The range wrapper goes around the env `make_robot_env` returns: after `ImageCropResizeWrapper`
    and its clamp to [0,1] (and after every other LeRobot wrapper).
    """
    if hasattr(make_robot_env, "__wrapped__"):
        return make_robot_env

    @functools.wraps(make_robot_env)
    def make_ranged_env(*args: Any, **kwargs: Any) -> Any:
        env = range_wrapped(make_robot_env(*args, **kwargs), image_range)
        log.info("bufconv: env: %s, images in range %d", env, image_range)
        return env

    return make_ranged_env
