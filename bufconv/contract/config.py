"""What a LeRobot RL training config expects of its data, read without LeRobot.

A config is the JSON `python -m lerobot.rl.learner --config_path` reads (a path or the parsed
dict), or the config object itself (`TrainRLServerPipelineConfig`, or anything with the same
attributes). The fields read, all optional:

- `policy.input_features` / `policy.output_features` (else `env.features` through
  `env.features_map`): keys and shapes the policy takes (images after crop/resize);
- the image range: `image_range` / `policy.image_range`, a self-normalising encoder flag
  (`policy.normalise_inputs`, ...), else 1 (LeRobot's [0,1]);
- `env.fps`;
- `env.processor.image_preprocessing.crop_params_dict` / `resize_size` (0.4+), else
  `env.wrapper.crop_params_dict` / `resize_size` (0.3.x: its `ImageCropResizeWrapper`);
- `env.processor.inverse_kinematics.end_effector_bounds` (`{"min": [x, y, z], "max": [...]}`);
- the gripper: `policy.num_discrete_actions`, `env.processor.gripper.use_gripper`, `env.robot`,
  `policy.dataset_stats["action"]`;
- the image normalizer: `policy.normalization_mapping["VISUAL"]` and `policy.dataset_stats[key]`
  (absent: LeRobot's SAC defaults, MEAN_STD on ImageNet stats under `observation.image`), the
  same names in 0.3.x (`sac`) and 0.4+ (`gaussian_actor`);
- the reward classifier: `env.processor.reward_classifier.pretrained_path` (0.4+) or
  `env.reward_classifier_pretrained_path` (0.3.x).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..options import Crop, parse_resize, validate_crop, validate_range
from .normalizer import Normalizer, from_policy

#: Policy config flags that mean "the encoder divides by 255 itself" (so it wants [0,255] input).
SELF_NORMALISING_FLAGS = ("normalise_inputs", "normalize_inputs", "normalize_images", "normalise_images")

#: LeRobot's robot pipeline reads a gripper command as {0 = close, 1 = stay, 2 = open}
#: (`GripperVelocityToJoint(discrete_gripper=True)`, the gamepad and keyboard teleops).
ROBOT_GRIPPER_VALUES = (0.0, 1.0, 2.0)

#: LeRobot's SAC policy types (0.3.x `sac`, 0.6.x `gaussian_actor`): absent normalization fields take
#: their defaults, MEAN_STD on ImageNet stats under `observation.image`.
LEROBOT_SAC_TYPES = ("sac", "gaussian_actor")

#: Where crop/resize live, newest layout first: 0.4+'s env processor, 0.3.x's gym wrapper config.
PREPROCESSING_FIELDS = (("env", "processor", "image_preprocessing"), ("env", "wrapper"))

#: The registry name of bufconv's reward classifier step (`bufconv.lerobot.classifier`).
CLASSIFIER_STEP = "bufconv_reward_classifier"


def get(obj: Any, *path: str) -> Any:
    """`obj.a.b.c` or `obj["a"]["b"]["c"]`, whichever each level is; None where a level is missing."""
    for name in path:
        if obj is None:
            return None
        obj = obj.get(name) if isinstance(obj, Mapping) else getattr(obj, name, None)
    return obj


def image_range_of(cfg: Any, image_range: int | None = None) -> tuple[int, str]:
    """The range the config's policy wants its images in, and where that was read.

    In order: an explicit `image_range`; `image_range` or `policy.image_range`; 255 if the
    policy sets a flag saying its encoder normalises its own inputs; else 1, LeRobot's convention.
    """
    if image_range is not None:
        return validate_range(image_range), "given explicitly"
    for where in (("image_range",), ("policy", "image_range")):
        value = get(cfg, *where)
        if value is not None:
            return validate_range(int(value)), ".".join(where)
    for flag in SELF_NORMALISING_FLAGS:
        if get(cfg, "policy", flag) is True:
            return 255, f"policy.{flag} (the encoder divides by 255 itself)"
    return 1, "LeRobot's default ([0,1])"


@dataclass(frozen=True)
class ExpectedFeature:
    """One feature the policy takes or gives: its kind ("VISUAL", "STATE", "ACTION", ...) and shape."""

    kind: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class GripperSpec:
    """The gripper command the config expects in the action's gripper dimension."""

    kind: str
    """"discrete" or "continuous"."""
    values: tuple[float, ...] = ()
    """The commands a discrete gripper takes."""
    low: float | None = None
    high: float | None = None
    because: str = ""
    """Which config fields say so, for messages."""

    def describe(self) -> str:
        if self.kind == "discrete":
            return "discrete {" + ", ".join(f"{v:g}" for v in self.values) + "}"
        return f"continuous [{self.low:g}, {self.high:g}]"


@dataclass(frozen=True)
class ProcessorStep:
    """What matters of one step of an observation processor pipeline, for the order check."""

    name: str
    range_out: int | None = None
    """For a range step: the range it puts images in."""
    resize: tuple[int, int] | None = None
    """For LeRobot's crop/resize step: its `resize_size` (a resize clamps to [0,1])."""
    classifier: str | None = None
    """For a reward classifier step: "lerobot" (LeRobot's own: images as they come) or "trained"
    (bufconv's: the classifier's saved pre-processor on [0,1] images)."""


@dataclass(frozen=True)
class TrainingConfig:
    """What a training config expects of the data."""

    source: str
    image_range: int
    range_because: str
    features: dict[str, ExpectedFeature] = field(default_factory=dict)
    fps: float | None = None
    crop: dict[str, Crop] = field(default_factory=dict)
    resize: tuple[int, int] | None = None
    bounds: tuple[tuple[float, ...], tuple[float, ...]] | None = None
    """end_effector_bounds as (min, max), one value per axis (x, y, z)."""
    gripper: GripperSpec | None = None
    steps: tuple[ProcessorStep, ...] | None = None
    """The observation processor pipeline, when one was given."""
    normalizers: dict[str, Normalizer] = field(default_factory=dict)
    """The policy's normalizer per image key (IDENTITY where it leaves images as they come)."""
    classifier_path: str | None = None
    """The reward classifier the actor's env pipeline runs, if any (its pretrained folder or repo id)."""
    depth_unit: str = "mm"
    """The unit depth keys are read in: `dataset.depth_output_unit` (LeRobot 0.6.1's default "mm")."""
    depth_unit_because: str = "LeRobot's default dataset.depth_output_unit"
    preprocessing_field: str = ".".join(PREPROCESSING_FIELDS[0])
    """Where the config holds crop/resize (`env.processor.image_preprocessing` or, 0.3.x, `env.wrapper`),
    for messages."""

    @property
    def image_keys(self) -> list[str]:
        return [k for k, f in self.features.items() if f.kind == "VISUAL"]


def _load(config: Any) -> tuple[Any, str]:
    if isinstance(config, (str, os.PathLike)):
        path = Path(config).expanduser()
        try:
            return json.loads(path.read_text()), str(path)
        except OSError as e:
            raise ConfigError(f"{path}: cannot read the config ({e.strerror or e})", path=path) from e
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not a JSON training config ({e})", path=path) from e
    if isinstance(config, Mapping):
        return config, "the config"
    return config, type(config).__name__


def _features(cfg: Any) -> dict[str, ExpectedFeature]:
    out: dict[str, ExpectedFeature] = {}
    policy_in, policy_out = get(cfg, "policy", "input_features"), get(cfg, "policy", "output_features")
    if policy_in:
        entries = list(dict(policy_in).items()) + list(dict(policy_out or {}).items())
    else:
        env_features = dict(get(cfg, "env", "features") or {})
        mapping = dict(get(cfg, "env", "features_map") or {})
        entries = [(mapping.get(k, k), v) for k, v in env_features.items()]
    for key, feature in entries:
        kind = get(feature, "type")
        kind = getattr(kind, "value", kind)
        shape = get(feature, "shape")
        if shape is None:
            continue
        try:
            out[str(key)] = ExpectedFeature(str(kind).upper(), tuple(int(v) for v in shape))
        except (TypeError, ValueError) as e:
            raise ConfigError(f"feature {key!r}: shape {shape!r} is not a list of integers") from e
    return out


def _bounds(cfg: Any) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    bounds = get(cfg, "env", "processor", "inverse_kinematics", "end_effector_bounds")
    if not bounds:
        return None
    low, high = get(bounds, "min"), get(bounds, "max")
    try:
        low_t, high_t = tuple(float(v) for v in low), tuple(float(v) for v in high)
    except (TypeError, ValueError) as e:
        raise ConfigError(
            f"end_effector_bounds {bounds!r}: expected {{'min': [x, y, z], 'max': [x, y, z]}}"
        ) from e
    if len(low_t) != len(high_t) or any(lo > hi for lo, hi in zip(low_t, high_t, strict=True)):
        raise ConfigError(
            f"end_effector_bounds {bounds!r}: min and max must have one value per axis, min <= max"
        )
    return low_t, high_t


def _gripper(cfg: Any, action_dims: int | None) -> GripperSpec | None:
    discrete = get(cfg, "policy", "num_discrete_actions")
    if discrete is not None:
        count = int(discrete)
        return GripperSpec(
            "discrete",
            tuple(float(v) for v in range(count)),
            because=f"policy.num_discrete_actions = {count} (a discrete critic picks the last action dimension)",
        )
    env = get(cfg, "env")
    if env is None:
        return None
    gripper = get(env, "processor", "gripper")
    use_gripper = True if gripper is None else bool(get(gripper, "use_gripper"))
    if not use_gripper:
        return None
    real_robot = get(env, "robot") is not None or get(env, "processor", "inverse_kinematics") is not None
    if real_robot and get(env, "name") != "gym_hil":
        return GripperSpec(
            "discrete",
            ROBOT_GRIPPER_VALUES,
            because="env.processor.gripper.use_gripper on a real robot (LeRobot's robot pipeline reads "
            "the gripper command as 0 = close, 1 = stay, 2 = open)",
        )
    stats = get(cfg, "policy", "dataset_stats", "action")
    low, high = get(stats, "min"), get(stats, "max")
    shaped = isinstance(low, Sequence) and isinstance(high, Sequence) and low and len(low) == len(high)
    if shaped and (action_dims is None or len(low) == action_dims):
        return GripperSpec(
            "continuous",
            low=float(low[-1]),
            high=float(high[-1]),
            because="policy.dataset_stats['action'] (the range its MIN_MAX normalisation maps to [-1, 1])",
        )
    return None


def _steps(processor: Any) -> tuple[ProcessorStep, ...] | None:
    """A pipeline (LeRobot's `DataProcessorPipeline`, its saved JSON or path, or a list of steps)."""
    if processor is None:
        return None
    if isinstance(processor, (str, os.PathLike)):
        processor, _ = _load(processor)
    steps = get(processor, "steps") if not isinstance(processor, (list, tuple)) else processor
    if steps is None:
        raise ConfigError(
            "the processor pipeline has no 'steps'; give LeRobot's saved pipeline JSON or a list of steps"
        )
    out = []
    for step in steps:
        if isinstance(step, Mapping):  # saved JSON: {"registry_name" or "class", "config"}
            name = str(step.get("registry_name") or step.get("class") or "?")
            settings = step.get("config") or {}
        else:
            name, settings = type(step).__name__, step
        resize = get(settings, "resize_size")
        if name == CLASSIFIER_STEP or name.endswith("TrainedInputRewardClassifierStep"):
            out.append(ProcessorStep(name, classifier="trained"))
        elif name == "reward_classifier_processor" or name.endswith("RewardClassifierProcessorStep"):
            out.append(ProcessorStep(name, classifier="lerobot"))
        elif "crop_resize" in name or name.endswith("ImageCropResizeProcessorStep"):
            out.append(ProcessorStep(name, resize=None if resize is None else parse_resize(resize)))
        elif name == "bufconv_image_range" or name.endswith("ImageRangeProcessorStep"):
            out.append(
                ProcessorStep(name, range_out=validate_range(int(get(settings, "image_range") or 255)))
            )
        else:
            out.append(ProcessorStep(name))
    return tuple(out)


def _normalizers(cfg: Any, features: dict[str, ExpectedFeature]) -> dict[str, Normalizer]:
    policy = get(cfg, "policy")
    if policy is None:
        return {}
    mapping = get(policy, "normalization_mapping")
    stats = get(policy, "dataset_stats")
    defaults = str(get(policy, "type") or "") in LEROBOT_SAC_TYPES
    if mapping is None:  # LeRobot fills its SAC defaults in; another policy's are not known here
        mapping = {"VISUAL": "MEAN_STD"} if defaults else {}
    if not isinstance(mapping, Mapping):
        raise ConfigError(
            f"policy.normalization_mapping {mapping!r}: expected a mapping of feature types to modes"
        )
    if stats is None and not defaults:
        stats = {}
    keys = [k for k, f in features.items() if f.kind == "VISUAL"]
    try:
        return {key: from_policy(dict(mapping), stats, key) for key in keys}
    except ValueError as e:
        raise ConfigError(f"policy: {e}") from e


def _preprocessing(cfg: Any) -> tuple[Any, str]:
    """The config's crop/resize section and its dotted name: the first of `PREPROCESSING_FIELDS`
    the config has (a 0.3.x config has no `env.processor`; its `ImageCropResizeWrapper` reads
    `env.wrapper`), else (None, the newest name)."""
    for path in PREPROCESSING_FIELDS:
        section = get(cfg, *path)
        if section is not None:
            return section, ".".join(path)
    return None, ".".join(PREPROCESSING_FIELDS[0])


def read_config(config: Any, *, image_range: int | None = None, processor: Any = None) -> TrainingConfig:
    """What `config` expects of the data.

    Args:
        config: A config JSON path, its parsed dict, or the config object.
        image_range: Overrides the range the config implies (as the learner drop-in's `image_range=`).
        processor: The actor's observation processor pipeline, to check the order of its range
            and crop/resize steps (LeRobot's pipeline object, its saved JSON or path, or a list of steps).

    Raises:
        ConfigError: the config cannot be read, or a field has the wrong form.
    """
    cfg, source = _load(config)
    try:
        range_value, because = image_range_of(cfg, image_range)
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from e
    features = _features(cfg)
    action = features.get("action")
    preprocessing, preprocessing_field = _preprocessing(cfg)
    crops = get(preprocessing, "crop_params_dict") or {}
    resize = get(preprocessing, "resize_size")
    fps = get(cfg, "env", "fps") if get(cfg, "env") is not None else None
    classifier = get(cfg, "env", "processor", "reward_classifier", "pretrained_path") or get(
        cfg, "env", "reward_classifier_pretrained_path"
    )
    depth_unit = get(cfg, "dataset", "depth_output_unit") if get(cfg, "dataset") is not None else None
    if depth_unit is not None and depth_unit not in ("mm", "m"):
        raise ConfigError(f"{source}: dataset.depth_output_unit must be 'mm' or 'm'; got {depth_unit!r}")
    try:
        return TrainingConfig(
            source=source,
            image_range=range_value,
            range_because=because,
            features=features,
            fps=None if fps is None else float(fps),
            crop={str(k): validate_crop(v) for k, v in dict(crops).items()},
            resize=None if resize is None else parse_resize(resize),
            bounds=_bounds(cfg),
            gripper=_gripper(cfg, None if action is None else (action.shape or (0,))[-1]),
            steps=_steps(processor),
            normalizers=_normalizers(cfg, features),
            classifier_path=None if classifier is None else str(classifier),
            depth_unit=depth_unit or "mm",
            preprocessing_field=preprocessing_field,
            depth_unit_because=(
                "dataset.depth_output_unit" if depth_unit else "LeRobot's default dataset.depth_output_unit"
            ),
        )
    except ValueError as e:
        raise ConfigError(f"{source}: {e}") from e
