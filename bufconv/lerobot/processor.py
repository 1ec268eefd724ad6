"""`ImageRangeProcessorStep`: puts live camera images in the buffer's range, and checks them.

Place it after LeRobot's `VanillaObservationProcessorStep` (which yields floats in [0,1]) in the
actor's observation pipeline, so live transitions reach the learner in the same range as the
offline buffer. Needs LeRobot with processor pipelines (0.4+); on 0.3.x this module still imports,
and the step says, when it is made, that the release has no pipelines for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..options import validate_range
from .compat import processor_step_api
from .releases import installed_version
from .wrappers import convert_images

_api = processor_step_api()


def _no_pipelines() -> ImportError:
    return ImportError(
        f"ImageRangeProcessorStep is a step of LeRobot's processor pipelines (ObservationProcessorStep, "
        f"LeRobot 0.4 and later); the installed LeRobot {installed_version()} has none: its RL actor "
        "processes observations with gym wrappers (lerobot.scripts.rl.gym_manipulator.make_robot_env). "
        "Run the actor as python -m bufconv.lerobot.actor (or bufconv.lerobot.actor.install), which wraps "
        "the env it makes in bufconv.lerobot.wrappers.ImageRangeWrapper, after ImageCropResizeWrapper"
    )


if _api is None:

    @dataclass
    class ImageRangeProcessorStep:
        """Stands in on a LeRobot without processor pipelines (0.3.x): making one raises ImportError."""

        image_range: int = 255
        input_range: int = 1

        def __post_init__(self) -> None:
            raise _no_pipelines()

else:
    ObservationProcessorStep, ProcessorStepRegistry = _api

    @ProcessorStepRegistry.register(name="bufconv_image_range")
    @dataclass
    class ImageRangeProcessorStep(ObservationProcessorStep):  # type: ignore[valid-type,misc,no-redef]
        """Convert observation images from [0,1] (or uint8) to `image_range`, then check them.

        Attributes:
            image_range: 1 or 255, the range of the buffer/encoder downstream.
            input_range: The range images arrive in (1 after `VanillaObservationProcessorStep`).
        """

        image_range: int = 255
        input_range: int = 1

        def __post_init__(self) -> None:
            self.image_range = validate_range(self.image_range)
            self.input_range = validate_range(self.input_range)

        def observation(self, observation: dict[str, Any]) -> dict[str, Any]:
            return convert_images(observation, self.input_range, self.image_range)

        def get_config(self) -> dict[str, Any]:
            return {"image_range": self.image_range, "input_range": self.input_range}

        def transform_features(self, features: Any) -> Any:
            return features  # same keys and shapes; only the value range changes
