"""The reward classifier on the actor: it receives what its training gave it (SPEC section 14).

`lerobot-train` trains LeRobot's reward classifier on images standardized by its pre-processor
(a `NormalizerProcessorStep` with the dataset's, or ImageNet's, stats on [0,1] images) and saves
that pre-processor next to the weights. LeRobot 0.6.1's `RewardClassifierProcessorStep` loads the
weights alone and feeds the classifier the env pipeline's images as they come: [0,1], or [0,255]
after a range step. Here the step's classifier is wrapped so that its images are put back in
[0,1] and standardized by the saved pre-processor first, whatever range the policy's images are
in; `classifier_input="lerobot"` keeps LeRobot's own behaviour (plain [0,1] images).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import torch

from ..contract.normalizer import Normalizer, read_saved
from ..options import validate_range
from ..pixelmap import PixelMap

log = logging.getLogger("bufconv")

CLASSIFIER_INPUTS = ("trained", "lerobot")
_IMAGE = "image"  # LeRobot's step hands the classifier every observation entry with "image" in its key


def _affine(normalizer: Normalizer, channels: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The normalizer as scale and offset on [0,1] images, shaped (C, 1, 1)."""
    on_unit = normalizer.after(PixelMap((1.0,) * channels, (0.0,) * channels, "x"))
    shape = (channels, 1, 1)
    return torch.tensor(on_unit.scale).reshape(shape), torch.tensor(on_unit.offset).reshape(shape)


class TrainedInputClassifier:
    """A reward classifier model whose `predict_reward` first puts images as its training had them.

    Everything else is the wrapped model's (attributes are looked up on it).
    """

    def __init__(
        self, model: Any, normalizers: Mapping[str, Normalizer], *, input_range: int, standardize: bool = True
    ) -> None:
        self._model = model
        self._normalizers = dict(normalizers) if standardize else {}
        self._input_range = validate_range(input_range)
        self._affines: dict[tuple[str, int, str], tuple[torch.Tensor, torch.Tensor]] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)

    def prepare(self, key: str, image: torch.Tensor) -> torch.Tensor:
        """One image (..., C, H, W) from the pipeline, as the classifier saw its training images."""
        x = image.to(torch.float32)
        if image.dtype == torch.uint8 or self._input_range == 255:
            x = x / 255.0
        normalizer = self._normalizers.get(key)
        if normalizer is None or not normalizer.active or x.ndim < 3:
            return x
        cache_key = (key, int(x.shape[-3]), str(x.device))
        if cache_key not in self._affines:
            scale, offset = _affine(normalizer, int(x.shape[-3]))
            self._affines[cache_key] = (scale.to(x.device, torch.float32), offset.to(x.device, torch.float32))
        scale, offset = self._affines[cache_key]
        return x * scale + offset

    def predict_reward(self, batch: Mapping[str, Any], *args: Any, **kwargs: Any) -> Any:
        prepared = {
            k: self.prepare(k, v) if _IMAGE in k and isinstance(v, torch.Tensor) else v for k, v in batch.items()
        }
        return self._model.predict_reward(prepared, *args, **kwargs)


def mend_classifier_steps(steps: list[Any], range_index: int | None, image_range: int, classifier_input: str) -> int:
    """Wrap the classifier of each `RewardClassifierProcessorStep` in `steps` (in place); returns how many.

    Args:
        steps: The env processor's steps.
        range_index: Where bufconv's range step sits in `steps` (None: there is none).
        image_range: The range that step puts images in.
        classifier_input: "trained" (the saved pre-processor on [0,1] images) or "lerobot" (plain [0,1]).

    Raises:
        ValueError: an unknown `classifier_input`.
        ConfigError: "trained", but the classifier's folder has no saved pre-processor to read.
    """
    if classifier_input not in CLASSIFIER_INPUTS:
        raise ValueError(f"classifier_input: expected one of {', '.join(CLASSIFIER_INPUTS)}; got {classifier_input!r}")
    mended = 0
    for index, step in enumerate(steps):
        if type(step).__name__ != "RewardClassifierProcessorStep" or step.reward_classifier is None:
            continue
        if isinstance(step.reward_classifier, TrainedInputClassifier):
            continue
        arriving = image_range if range_index is not None and range_index < index else 1
        trained = classifier_input == "trained"
        normalizers = read_saved(step.pretrained_path) if trained else {}
        step.reward_classifier = TrainedInputClassifier(
            step.reward_classifier, normalizers, input_range=arriving, standardize=trained
        )
        mended += 1
        if trained:
            described = "; ".join(f"{k}: {n.describe()}" for k, n in normalizers.items()) or "none"
            log.info(
                "bufconv: the reward classifier receives what its training gave it: [0,1] images through its "
                "saved pre-processor (%s); LeRobot's own step skips that pre-processor "
                "(--bufconv.classifier_input=lerobot keeps LeRobot's behaviour)",
                described,
            )
        else:
            log.info("bufconv: the reward classifier receives plain [0,1] images, as with LeRobot's own actor")
    return mended
