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
from ..ranges import check_range, to_range
from .compat import processor_step_api
from .releases import installed_version

_IMAGE_PREFIX = "observation.image"
_api = processor_step_api()


def _no_pipelines() -> ImportError:
    return ImportError(
        f"ImageRangeProcessorStep is a step of LeRobot's processor pipelines (ObservationProcessorStep, "
        f"LeRobot 0.4 and later); the installed LeRobot {installed_version()} has none: its RL actor "
        "processes observations with gym wrappers (lerobot.scripts.rl.gym_manipulator.make_robot_env). "
        "Put live images in the buffer's range after its last image wrapper (ImageCropResizeWrapper) with "
        "bufconv.to_range(image, 1, image_range) and bufconv.check_range, or use LeRobot 0.4 or later"
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
            out = dict(observation)
            for key, value in observation.items():
                if key.startswith(_IMAGE_PREFIX) and hasattr(value, "dtype"):
                    check_range(
                        value, 255 if str(value.dtype) == "torch.uint8" else self.input_range, name=key
                    )
                    out[key] = to_range(value, self.input_range, self.image_range)
                    check_range(out[key], self.image_range, name=key)
            return out

        def get_config(self) -> dict[str, Any]:
            return {"image_range": self.image_range, "input_range": self.input_range}

        def transform_features(self, features: Any) -> Any:
            return features  # same keys and shapes; only the value range changes
