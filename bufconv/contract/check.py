"""`bufconv check`: does this cache or dataset fit this training config?

    check()            a `CheckReport` (findings with code, severity, message)
    check_or_raise()   the same, raising `ContractError` when there are errors

What the data says is read cheaply: a cache's header and its action tensor (memory-mapped), or
a dataset's metadata and action column (no video is decoded). For a dataset, image shapes are
those a build with the config's crop and resize would store.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from .. import errors as E
from ..cache.reader import CacheFile, read_cache
from ..errors import ContractError, DatasetError
from ..options import BuildOptions, Crop, format_crop
from ..source.actions import action_facts
from ..source.dataset import ACTION_KEY
from ..source.layouts import open_dataset
from ..source.transform import frame_transform
from .chain import check_chain
from .config import TrainingConfig, read_config
from .report import WARNING, CheckReport, Finding  # noqa: F401  (Finding: re-exported)

_RANGE_TEXT = {1: "[0,1]", 255: "[0,255]"}


@dataclass
class DataFacts:
    """What a cache or dataset says, as far as the contract is concerned."""

    kind: str
    """"cache" or "dataset"."""
    path: str
    fps: float
    shapes: dict[str, tuple[int, ...]]
    """Per-frame shape of every observation key and the action (images as stored: after crop/resize)."""
    image_keys: tuple[str, ...]
    ranges: dict[str, int] | None
    """The range each image key is delivered in (a cache); None for a dataset (a build chooses it)."""
    crop: dict[str, Crop]
    resize: tuple[int, int] | None
    actions: np.ndarray = field(repr=False)
    """(N, A), floating, in the data's own precision (bounds are compared in it: 0.01 stored as
    float32 is not below a bound of 0.01)."""
    action_facts: dict[str, Any] = field(default_factory=dict)
    depth_units: dict[str, str | None] = field(default_factory=dict)
    """Per depth key (SPEC section 15): the unit a cache delivers it in; None for a dataset's."""


# ---- what the data says ---------------------------------------------------------------------


def _floating(values: np.ndarray) -> np.ndarray:
    matrix = np.asarray(values).reshape(len(values), -1)
    return matrix if matrix.dtype.kind == "f" else matrix.astype(np.float64)


def facts_of_cache(cache: CacheFile) -> DataFacts:
    meta = cache.meta
    keys = meta["keys"]
    names = [*keys["state"], keys["action"]]
    actions = cache.tensors[keys["action"]].numpy()
    resize = meta.get("resize")
    return DataFacts(
        kind="cache",
        path=str(cache.path),
        fps=float(meta["source"]["fps"]),
        shapes={k: tuple(meta["tensors"][k]["shape"][1:]) for k in names},
        image_keys=tuple(keys["images"]),
        ranges={k: int(v["output"]) for k, v in meta["ranges"].items()},
        crop={k: (int(v[0]), int(v[1]), int(v[2]), int(v[3])) for k, v in (meta.get("crop") or {}).items()},
        resize=None if resize is None else (int(resize[0]), int(resize[1])),
        actions=_floating(actions),
        action_facts=meta.get("actions") or action_facts(actions),
        depth_units={k: v["unit"] for k, v in (meta.get("depth") or {}).items()},
    )


def facts_of_dataset(
    dataset: str | os.PathLike[str], config: TrainingConfig, report: CheckReport
) -> DataFacts:
    """A dataset's facts, its images shaped as a build with the config's crop and resize would store them."""
    source = open_dataset(dataset)
    episodes = sorted(source.episodes)
    action = source.read_columns(episodes, [ACTION_KEY])[ACTION_KEY]
    options = BuildOptions(crop=tuple(config.crop.items()), resize=config.resize)
    shapes: dict[str, tuple[int, ...]] = {}
    image_keys = []
    for name, feature in source.features.items():
        if not (name.startswith("observation.") or name == ACTION_KEY):
            continue
        if not feature.is_visual:
            shapes[name] = feature.shape
            continue
        image_keys.append(name)
        height, width, channels = feature.image_hwc()
        channels = 1 if feature.is_depth else 3 if feature.dtype == "video" else channels
        try:
            transform = frame_transform(name, (height, width), options)
        except DatasetError as e:
            report.add(E.CROP_MISMATCH, f"{e.message} (the config's {config.preprocessing_field})", key=name)
            transform = None
        shapes[name] = (channels, *(transform.output_hw if transform else (height, width)))
    for key in config.crop:
        if key not in image_keys:
            report.add(
                E.CROP_MISMATCH,
                f"the config crops {key!r}, which the dataset does not have; its cameras are {', '.join(image_keys)}",
                key=key,
            )
    return DataFacts(
        kind="dataset",
        path=str(source.root),
        fps=float(source.fps),
        shapes=shapes,
        image_keys=tuple(image_keys),
        ranges=None,
        crop=dict(config.crop),
        resize=config.resize,
        actions=_floating(action),
        action_facts=action_facts(action, source.features[ACTION_KEY].names),
        depth_units={k: None for k, f in source.features.items() if k in image_keys and f.is_depth},
    )


# ---- the comparison ---------------------------------------------------------------------------


def _shape(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(str(v) for v in shape) + ")"


def _check_shapes(data: DataFacts, config: TrainingConfig, report: CheckReport) -> None:
    for key, expected in config.features.items():
        found = data.shapes.get(key)
        if found is None:
            if expected.kind in ("VISUAL", "STATE", "ACTION"):
                report.add(
                    E.SHAPE_MISMATCH,
                    f"{key}: the policy takes {_shape(expected.shape)}, but the {data.kind} has no {key!r} "
                    f"(it has {', '.join(sorted(data.shapes))}); map it with env.features_map or record it",
                    key=key, expected=list(expected.shape), found=None,
                )  # fmt: skip
            continue
        if tuple(found) == expected.shape:
            continue
        fix = "change the policy's input features"
        if key in data.image_keys:
            fix = (
                f"build with --resize {expected.shape[-2]},{expected.shape[-1]} "
                f"({config.preprocessing_field}.resize_size), or change the policy's input features"
            )
        report.add(
            E.SHAPE_MISMATCH,
            f"{key}: the policy takes {_shape(expected.shape)} but the {data.kind} gives {_shape(tuple(found))}"
            f"{' after crop/resize' if key in data.image_keys and (data.crop or data.resize) else ''}; {fix}",
            key=key, expected=list(expected.shape), found=list(found),
        )  # fmt: skip


def _check_depth_units(data: DataFacts, config: TrainingConfig, report: CheckReport) -> None:
    """A depth key delivered in another unit than the config's `dataset.depth_output_unit`
    (what LeRobot's own loading, and so its dataset stats, use): `unit-mismatch`."""
    for key, unit in data.depth_units.items():
        if unit is None or unit == config.depth_unit:
            continue
        report.add(
            E.UNIT_MISMATCH,
            f"{key}: the cache delivers depth in {unit} but the config reads depth in {config.depth_unit} "
            f"({config.depth_unit_because}); rebuild with --depth-unit {config.depth_unit}, or the policy sees "
            f"depth {'1000x too large' if unit == 'mm' else '1000x too small'}",
            key=key, expected=config.depth_unit, found=unit,
        )  # fmt: skip


def _check_range(data: DataFacts, config: TrainingConfig, report: CheckReport) -> None:
    if data.ranges is None:
        return  # a dataset: the learner drop-in builds it in the config's range
    taken = set(config.image_keys)
    for key, declared in data.ranges.items():
        if taken and key not in taken:
            continue  # a camera the policy does not take: its range reaches no encoder
        if declared != config.image_range:
            report.add(
                E.RANGE_MISMATCH,
                f"{key}: the cache delivers floats in {_RANGE_TEXT[declared]} (range {declared}) but the policy "
                f"expects {_RANGE_TEXT[config.image_range]} ({config.range_because}); rebuild with "
                f"--range {config.image_range}, or the encoder sees images {255 if declared == 1 else '1/255'}x off",
                key=key, expected=config.image_range, found=declared,
            )  # fmt: skip


def _check_crop(data: DataFacts, config: TrainingConfig, report: CheckReport) -> None:
    if data.kind != "cache":
        return
    for key in sorted(set(data.crop) | set(config.crop)):
        if data.crop.get(key) != config.crop.get(key):
            found, expected = data.crop.get(key), config.crop.get(key)
            report.add(
                E.CROP_MISMATCH,
                f"{key}: the cache was cropped {format_crop(found) if found else 'not at all'}, the config's "
                f"{config.preprocessing_field} crops {format_crop(expected) if expected else 'nothing'} (top,left,height,width); the "
                "live and offline images differ: rebuild with the config's --crop",
                key=key, expected=list(expected) if expected else None, found=list(found) if found else None,
            )  # fmt: skip
    if data.resize != config.resize:
        report.add(
            E.CROP_MISMATCH,
            f"the cache was resized to {'x'.join(map(str, data.resize)) if data.resize else 'nothing'}, the config's "
            f"{config.preprocessing_field} resizes to {'x'.join(map(str, config.resize)) if config.resize else 'nothing'}; "
            "rebuild with the config's --resize",
            expected=list(config.resize) if config.resize else None,
            found=list(data.resize) if data.resize else None,
        )


def _check_fps(data: DataFacts, config: TrainingConfig, report: CheckReport) -> None:
    if config.fps is not None and abs(config.fps - data.fps) > 1e-6:
        report.add(
            E.FPS_MISMATCH,
            f"the {data.kind} was recorded at {data.fps:g} fps but env.fps is {config.fps:g}: each action "
            f"lasts {1 / config.fps:.3g} s on the robot instead of {1 / data.fps:.3g} s; record at "
            f"{config.fps:g} fps or set env.fps to {data.fps:g}",
            expected=config.fps, found=data.fps,
        )  # fmt: skip


def _check_bounds(data: DataFacts, config: TrainingConfig, report: CheckReport) -> None:
    if config.bounds is None:
        return
    low, high = config.bounds
    names = data.action_facts.get("names") or []
    for axis, (lo, hi) in enumerate(zip(low, high, strict=True)):
        if axis >= data.actions.shape[1]:
            break
        column = data.actions[:, axis]
        low_, high_ = np.asarray(lo, column.dtype), np.asarray(hi, column.dtype)
        outside = int(np.count_nonzero((column < low_) | (column > high_)))
        if not outside:
            continue
        fraction = outside / len(column)
        label = names[axis] if axis < len(names) else "xyz"[axis] if axis < 3 else str(axis)
        report.add(
            E.ACTION_OUT_OF_BOUNDS,
            f"action[{axis}] ({label}): {fraction:.1%} of frames ({outside:,} of {len(column):,}) lie outside "
            f"end_effector_bounds [{lo:g}, {hi:g}]; the data spans [{column.min():g}, {column.max():g}]. The "
            "robot clips these (EEBoundsAndSafety): record within its workspace, or clip or drop those "
            "frames, or widen env.processor.inverse_kinematics.end_effector_bounds if the robot can reach them",
            axis=axis, fraction=fraction, expected=[lo, hi], found=[float(column.min()), float(column.max())],
        )  # fmt: skip


def _check_gripper(data: DataFacts, config: TrainingConfig, report: CheckReport) -> None:
    spec = config.gripper
    gripper = data.action_facts.get("gripper")
    if spec is None or gripper is None:
        return
    index = int(gripper["index"])
    column = data.actions[:, index]
    where = f"gripper (action[{index}], the {gripper.get('found_by', 'last dimension')})"
    if gripper["kind"] == "discrete":
        found = "discrete {" + ", ".join(f"{v:g}" for v in gripper["values"]) + "}"
    else:
        found = f"continuous in [{column.min():.4g}, {column.max():.4g}]"
    details: dict[str, Any] = {"axis": index, "expected": spec.describe(), "found": found}
    if spec.kind == "discrete":
        allowed = np.isin(column, np.asarray(spec.values))
        if bool(allowed.all()):
            return
        fraction = 1 - float(allowed.mean())
        report.add(
            E.GRIPPER_MISMATCH,
            f"{where}: the data's gripper is {found}, but the config expects {spec.describe()} "
            f"({spec.because}); {fraction:.1%} of frames hold another value. Map the data's gripper to those "
            "commands before training (e.g. close/stay/open by thresholds), or train with the gripper the data has",
            fraction=fraction, **details,
        )  # fmt: skip
        return
    assert spec.low is not None and spec.high is not None
    outside = (column < np.asarray(spec.low, column.dtype)) | (column > np.asarray(spec.high, column.dtype))
    if outside.any():
        report.add(
            E.GRIPPER_MISMATCH,
            f"{where}: {float(outside.mean()):.1%} of frames lie outside the config's {spec.describe()} "
            f"({spec.because}); the data's gripper is {found}. Rescale it, or fix the action stats",
            fraction=float(outside.mean()), **details,
        )  # fmt: skip
    elif gripper["kind"] == "discrete":
        report.add(
            E.GRIPPER_MISMATCH,
            f"{where}: the data's gripper is {found} while the config treats it as {spec.describe()} "
            f"({spec.because}); if the robot takes discrete commands, set policy.num_discrete_actions",
            WARNING,
            **details,
        )


def _clamp_advice(config: TrainingConfig) -> str:
    """What to do about the crop/resize clamp at range 255, in the words of the config's layout."""
    if config.preprocessing_field == "env.wrapper":  # 0.3.x: gym wrappers, no processor steps
        return (
            f"{config.preprocessing_field}.resize_size makes LeRobot's ImageCropResizeWrapper resize images, which "
            "clamps to [0,1], and the policy wants [0,255]: run the actor as python -m bufconv.lerobot.actor, "
            "which converts images to [0,255] after the env's last wrapper (bufconv.lerobot.wrappers); "
            "converting them before that wrapper flattens every pixel to 1"
        )
    return (
        "the env processor resizes images with LeRobot's ImageCropResizeProcessorStep, which clamps to "
        "[0,1], and the policy wants [0,255]: put ImageRangeProcessorStep(image_range=255) after that "
        "step in the actor's pipeline (check the pipeline itself with --processor)"
    )


def _check_steps(config: TrainingConfig, report: CheckReport) -> None:
    if config.steps is None:
        if config.resize is not None and config.image_range == 255:
            report.add(E.CLAMP_BEFORE_RANGE, _clamp_advice(config), WARNING)
        return
    for i, step in enumerate(config.steps):
        if step.range_out != 255:
            continue
        for later in config.steps[i + 1 :]:
            if later.resize is not None:
                report.add(
                    E.CLAMP_BEFORE_RANGE,
                    f"{step.name} (image_range=255) runs before {later.name} (resize_size="
                    f"{list(later.resize)}), which clamps to [0,1] after resizing: every [0,255] image comes out "
                    "in [0,1], 255x too dark for the policy. Move the range step after the crop/resize step",
                    steps=[step.name, later.name],
                )
                return


def check(
    source: str | os.PathLike[str] | CacheFile,
    config: Any,
    *,
    image_range: int | None = None,
    processor: Any = None,
) -> CheckReport:
    """Compare a cache or dataset with a LeRobot training config.

    Args:
        source: A bufconv cache file (or an opened `CacheFile`), or a dataset folder or repo id.
        config: The training config: a JSON path, its parsed dict, or LeRobot's config object.
        image_range: The range the learner will use, if not the config's (the drop-in's `image_range=`).
        processor: The actor's observation processor pipeline, to check the order of its steps.

    Returns:
        A `CheckReport`; `ok` unless a finding is an error.

    Raises:
        ConfigError: the config cannot be read.
        InvalidCacheError, DatasetError: the source is neither a readable cache nor a dataset.
    """
    expected = read_config(config, image_range=image_range, processor=processor)
    if isinstance(source, CacheFile) or Path(source).is_file():
        cache = source if isinstance(source, CacheFile) else read_cache(source, verify_payload=False)
        report = CheckReport(str(cache.path), "cache", expected.source)
        data = facts_of_cache(cache)
    else:
        report = CheckReport(str(source), "dataset", expected.source)
        data = facts_of_dataset(source, expected, report)
        report.source = data.path
    report.checked = [
        name
        for name, done in (
            ("shapes", bool(expected.features)),
            ("range", data.ranges is not None),
            ("depth unit", any(u is not None for u in data.depth_units.values())),
            ("crop/resize", data.kind == "cache"),
            ("fps", expected.fps is not None),
            ("action bounds", expected.bounds is not None),
            ("gripper", expected.gripper is not None),
            ("processor order", expected.steps is not None),
            ("image chain", True),
        )
        if done
    ]
    _check_shapes(data, expected, report)
    _check_range(data, expected, report)
    _check_depth_units(data, expected, report)
    # A dataset is built in the config's range by the learner drop-in. Depth keys have a unit,
    # not a pixel range: the image chain (SPEC section 14) is about the RGB keys.
    rgb = [k for k in data.image_keys if k not in data.depth_units]
    offline = data.ranges if data.ranges is not None else dict.fromkeys(rgb, expected.image_range)
    chain_config = replace(
        expected, features={k: f for k, f in expected.features.items() if k not in data.depth_units}
    )
    check_chain(chain_config, offline, report)
    _check_crop(data, expected, report)
    _check_fps(data, expected, report)
    _check_bounds(data, expected, report)
    _check_gripper(data, expected, report)
    _check_steps(expected, report)
    return report


def check_config(config: Any, *, image_range: int | None = None, processor: Any = None) -> CheckReport:
    """The image chain of a training config alone, for a run without offline data (online only).

    Returns:
        A `CheckReport` of kind "config": the online and actor paths and the reward classifier's.
    """
    expected = read_config(config, image_range=image_range, processor=processor)
    report = CheckReport(expected.source, "config", expected.source, checked=["image chain"])
    check_chain(expected, None, report)
    return report


def check_or_raise(
    source: str | os.PathLike[str] | CacheFile,
    config: Any,
    *,
    image_range: int | None = None,
    processor: Any = None,
) -> CheckReport:
    """`check`, raising `ContractError` (with the findings) if any is an error."""
    report = check(source, config, image_range=image_range, processor=processor)
    if not report.ok:
        lines = "; ".join(f"[{f.code}] {f.message}" for f in report.errors)
        raise ContractError(
            f"{report.source} does not fit {report.config}: {lines}",
            path=report.source,
            findings=report.findings,
        )
    return report
