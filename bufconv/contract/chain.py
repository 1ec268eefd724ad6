"""The image chain (SPEC section 14): what each network's first layer sees, on every path.

A stored uint8 pixel `p` reaches a network through affine steps, one map per channel
(`bufconv.pixelmap.PixelMap`). The paths and their steps:

    offline -> policy     the cache's range, the policy's normalizer, the encoder's own normalization
    online  -> policy     the actor's range (its range step), the same normalizer and encoder
    actor   -> policy     as online: the actor's policy runs the same pre-processor
    actor   -> reward classifier        the range at the classifier's step, and what the step applies
    classifier training -> reward classifier   its saved pre-processor on [0,1] images

The encoder's own normalization is what range 255 declares (RoboBase/DrQ-v2 `normalise_inputs`:
`x/255 - 0.5`). Findings: `normalizer-range-mismatch` (stats in one range's units applied to
images in the other, or normalised twice), `path-mismatch` (two paths into one network map a
pixel differently), `classifier-input-mismatch` (the classifier's actor path differs from its
training path).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .. import errors as E
from ..errors import ConfigError
from ..pixelmap import PixelMap
from .config import ProcessorStep, TrainingConfig
from .normalizer import Normalizer, read_saved
from .report import WARNING, ChainLink, CheckReport

POLICY, CLASSIFIER = "policy", "reward classifier"
OFFLINE, ONLINE, ACTOR, TRAINING = "offline", "online", "actor", "classifier training"
_RANGE_TEXT = {1: "[0,1]", 255: "[0,255]"}
_ENCODER_OWN = "the encoder's own x/255 - 0.5 (range 255 declares it)"


def _channels(config: TrainingConfig, key: str) -> int:
    feature = config.features.get(key)
    return int(feature.shape[0]) if feature is not None and len(feature.shape) == 3 else 3


def policy_map(config: TrainingConfig, key: str, input_range: int) -> tuple[PixelMap, PixelMap | None, tuple[str, ...]]:
    """The policy's map for images of `key` arriving in `input_range`.

    Returns:
        (what the first layer sees, what the encoder's forward receives where that differs (else
        None), the steps as text).
    """
    channels = _channels(config, key)
    normalizer = config.normalizers.get(key) or Normalizer("IDENTITY")
    at_encoder = normalizer.after(PixelMap.of_range(input_range, channels))
    steps = [f"range {input_range} ({'p/255' if input_range == 1 else 'p'})", normalizer.describe()]
    if config.image_range != 255:
        return at_encoder, None, tuple(steps)
    steps.append(_ENCODER_OWN)
    return at_encoder.then([1 / 255], [-0.5], "{x}/255 - 0.5"), at_encoder, tuple(steps)


def encoder_maps(config: TrainingConfig) -> dict[str, PixelMap]:
    """What each image key's encoder receives on the learner's and actor's paths (the guard's maps)."""
    out = {}
    for key in config.image_keys:
        first, encoder, _ = policy_map(config, key, config.image_range)
        out[key] = encoder or first
    return out


def actor_range(config: TrainingConfig, steps: Sequence[ProcessorStep] | None) -> int:
    """The range live images leave the actor in: its range step's, else [0,1] (LeRobot's
    VanillaObservationProcessorStep); without a pipeline, the config's (bufconv's actor puts them there)."""
    if steps is None:
        return config.image_range
    ranged = [s.range_out for s in steps if s.range_out is not None]
    return ranged[-1] if ranged else 1


def _range_at(steps: Sequence[ProcessorStep], index: int) -> int:
    ranged = [s.range_out for s in steps[:index] if s.range_out is not None]
    return ranged[-1] if ranged else 1


def _policy_links(config: TrainingConfig, ranges: Mapping[str, int] | None, report: CheckReport) -> None:
    online = actor_range(config, config.steps)
    keys = config.image_keys or list(ranges or {})
    for key in keys:
        offline = None if ranges is None else ranges.get(key, config.image_range)
        paths = [(OFFLINE, offline), (ONLINE, online), (ACTOR, online)]
        maps: dict[str, PixelMap] = {}
        for path, input_range in paths:
            if input_range is None:
                continue
            first, encoder, steps = policy_map(config, key, input_range)
            report.chain.append(ChainLink(path, POLICY, key, first, encoder, steps))
            maps[path] = first
        _check_normalizer(config, key, [p for p, r in paths if r == config.image_range], report)
        _check_paths(config, key, maps, report)


def _check_normalizer(config: TrainingConfig, key: str, paths: list[str], report: CheckReport) -> None:
    """Is the config consistent in itself: the normalizer's stats in the units of the policy's range,
    and one normalization, not two? (A path whose images arrive in another range is a range-mismatch
    or a path-mismatch, reported as such.)"""
    normalizer = config.normalizers.get(key)
    if normalizer is None or not normalizer.active:
        return
    arriving = config.image_range
    found, _, _ = policy_map(config, key, arriving)
    if normalizer.units != arriving:
        fix = (
            "set policy.normalization_mapping.VISUAL=IDENTITY (an encoder that normalises its own inputs takes "
            "them raw), or give dataset_stats in [0,255] units (mean and std times 255), or use --range 1"
            if arriving == 255
            else "give dataset_stats in [0,1] units (LeRobot computes them on images divided by 255), or use "
            "--range 255 with an encoder that normalises its own inputs"
        )
        report.add(
            E.NORMALIZER_RANGE_MISMATCH,
            f"{key}: {normalizer.describe()} has stats in {_RANGE_TEXT[normalizer.units or 1]} units but the "
            f"{', '.join(paths) or 'policy'} images arrive in {_RANGE_TEXT[arriving]} (range {arriving}, {config.range_because}): "
            f"the policy's first layer sees {found.describe()}. Fix: {fix}",
            key=key, expected=normalizer.units, found=arriving, paths=paths,
        )  # fmt: skip
    elif arriving == 255:
        report.add(
            E.NORMALIZER_RANGE_MISMATCH,
            f"{key}: normalised twice: by {normalizer.describe()} and by {_ENCODER_OWN}; the first layer sees "
            f"{found.describe()}, 1/255 of what the encoder was built for. Fix: set "
            "policy.normalization_mapping.VISUAL=IDENTITY, or use --range 1 with the normalizer alone",
            key=key, expected="IDENTITY", found=normalizer.mode, paths=paths,
        )  # fmt: skip


def _check_paths(config: TrainingConfig, key: str, maps: dict[str, PixelMap], report: CheckReport) -> None:
    """Every path into the policy must map a pixel as the policy is declared for (the config's range):
    the offline and online halves of one batch, and the actor's observations."""
    declared, _, _ = policy_map(config, key, config.image_range)
    explained = any(f.code == E.RANGE_MISMATCH and f.details.get("key") == key for f in report.findings)
    wrong = [path for path, found in maps.items() if not found.same_as(declared)]
    if explained:  # the cache's range differs: said by range-mismatch, with the rebuild to do
        wrong = [path for path in wrong if path != OFFLINE]
    if not wrong:
        return
    path = wrong[0]
    others = [p for p in maps if p not in wrong]
    reference = maps[others[0]] if others else declared
    against = f"the {others[0]} images reach it as" if others else f"it is declared for (range {config.image_range})"
    report.add(
        E.PATH_MISMATCH,
        f"{key}: the {', '.join(wrong)} images reach the policy as {maps[path].describe()} but {against} "
        f"{reference.describe()}: the policy trains on one and acts on the other. Put the actor's images in "
        "the buffer's range (ImageRangeProcessorStep, python -m bufconv.lerobot.actor) or rebuild the "
        "cache in the actor's range",
        key=key, paths=wrong, expected=reference.to_json(), found=maps[path].to_json(),
    )  # fmt: skip


def _classifier_links(config: TrainingConfig, report: CheckReport) -> None:
    if config.classifier_path is None:
        return
    try:
        trained = read_saved(config.classifier_path)
    except ConfigError as e:
        report.add(
            E.CLASSIFIER_INPUT_MISMATCH,
            f"the reward classifier's training path is unknown: {e.message}; its input on the actor cannot be "
            "compared with what it was trained on",
            WARNING,
        )
        return
    steps = config.steps
    index = next((i for i, s in enumerate(steps or ()) if s.classifier), None)
    if steps is not None and index is None:
        return  # the pipeline runs no classifier
    step = None if steps is None or index is None else steps[index]
    arriving = 1 if steps is None or index is None else _range_at(steps, index)
    mended = step is None or step.classifier == "trained"
    for key, normalizer in trained.items():
        channels = _channels(config, key)
        training = normalizer.after(PixelMap.of_range(1, channels))
        report.chain.append(
            ChainLink(TRAINING, CLASSIFIER, key, training, None, ("range 1 (p/255)", normalizer.describe()))
        )
        if mended:
            actor = training
            actor_steps: tuple[str, ...] = (
                f"range {arriving}, back to [0,1]",
                f"{normalizer.describe()} (bufconv's classifier step)",
            )
        else:
            actor = PixelMap.of_range(arriving, channels)
            actor_steps = (f"range {arriving}", "LeRobot's RewardClassifierProcessorStep: no pre-processor")
        report.chain.append(ChainLink(ACTOR, CLASSIFIER, key, actor, None, actor_steps))
        if actor.same_as(training):
            continue
        if arriving == 255:
            report.add(
                E.CLASSIFIER_INPUT_MISMATCH,
                f"{key}: a range step (image_range=255) runs before {step.name if step else 'the classifier'}: the "
                f"reward classifier receives {actor.describe()} but was trained on {training.describe()}; its "
                "rewards are noise. Move the range step after the classifier, or run python -m bufconv.lerobot.actor",
                key=key, expected=training.to_json(), found=actor.to_json(),
            )  # fmt: skip
        else:
            report.add(
                E.CLASSIFIER_INPUT_MISMATCH,
                f"{key}: LeRobot's RewardClassifierProcessorStep feeds the classifier {actor.describe()}, without the "
                f"pre-processor it was trained with ({training.describe()}); python -m bufconv.lerobot.actor applies it",
                WARNING,
                key=key, expected=training.to_json(), found=actor.to_json(),
            )  # fmt: skip


def check_chain(config: TrainingConfig, ranges: Mapping[str, int] | None, report: CheckReport) -> None:
    """Add the chain's links and findings to `report`.

    Args:
        config: What the training config expects (its normalizers, range, pipeline, classifier).
        ranges: The offline data's range per image key (a cache); None where there is no offline
            data yet (a dataset is built in the config's range: pass that), or none at all.
        report: Where links and findings go.
    """
    _policy_links(config, ranges, report)
    _classifier_links(config, report)
