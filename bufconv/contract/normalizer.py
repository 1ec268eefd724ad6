"""LeRobot's image normalizer, as one step of a pixel map, read without LeRobot.

LeRobot normalizes a `VISUAL` feature by `normalization_mapping["VISUAL"]` with the feature's
entry of the stats (`NormalizerProcessorStep` in 0.4+, `NormalizeBuffer` inside the policy in
0.3.x); a key without stats passes unchanged in 0.4+. Stats come from a policy config
(`policy.dataset_stats`, lists) or from a saved pipeline: a `*processor*.json` whose
`normalizer_processor` step names a `.safetensors` state file of `"<key>.<stat>"` tensors (how
`lerobot-train` saves a reward classifier's pre-processor next to its weights).
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from ..pixelmap import PixelMap, _vector

IDENTITY = "IDENTITY"
#: Each mode's two stats, and how it maps x: MEAN_STD (x - mean)/(std + eps); the others to [-1, 1].
STAT_NAMES = {
    "MEAN_STD": ("mean", "std"),
    "MIN_MAX": ("min", "max"),
    "QUANTILES": ("q01", "q99"),
    "QUANTILE10": ("q10", "q90"),
}
EPS = 1e-8  # LeRobot's NormalizerProcessorStep.eps (and NormalizeBuffer's)
#: LeRobot's default policy stats (SAC / gaussian_actor): ImageNet's, under `observation.image` only.
IMAGENET = {"mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
_UNITS_1_MAX = 1.5  # stats above this are in [0,255] units (ImageNet's in pixels: mean ~124, std ~58)
_SAFETENSORS_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64}


def mode_name(value: Any) -> str:
    """A normalization mode as its name, from LeRobot's enum or a string ("MEAN_STD", ...)."""
    value = getattr(value, "value", value)
    name = str(value).upper().rsplit(".", 1)[-1]
    if name != IDENTITY and name not in STAT_NAMES:
        raise ConfigError(
            f"normalization mode {value!r}: expected one of {IDENTITY}, {', '.join(STAT_NAMES)}"
        )
    return name


def _flat(values: Any) -> tuple[float, ...]:
    return tuple(float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1))


@dataclass(frozen=True)
class Normalizer:
    """One image key's normalization: the mode, its stats (in the stats' own units) and where they were read."""

    mode: str
    stats: dict[str, tuple[float, ...]] = field(default_factory=dict)
    where: str = ""
    eps: float = EPS

    @property
    def active(self) -> bool:
        """False for IDENTITY, and for a mode without stats for this key (LeRobot 0.4+ passes it through)."""
        return self.mode != IDENTITY and all(name in self.stats for name in STAT_NAMES.get(self.mode, ()))

    @property
    def units(self) -> int | None:
        """1 when the stats are in [0,1] units (LeRobot's: computed on images divided by 255), 255 when
        in pixel units; None when nothing is normalised."""
        if not self.active:
            return None
        largest = max(abs(v) for name in STAT_NAMES[self.mode] for v in self.stats[name])
        return 1 if largest <= _UNITS_1_MAX else 255

    def describe(self) -> str:
        if not self.active:
            if self.mode == IDENTITY:
                return f"IDENTITY ({self.where})" if self.where else "IDENTITY"
            return f"{self.mode} without stats for this key: passed unchanged ({self.where})"
        first, second = STAT_NAMES[self.mode]
        return (
            f"{self.mode} with {first} {_vector(self.stats[first])}, {second} {_vector(self.stats[second])}"
            f" ({self.where})"
        )

    def after(self, pixel_map: PixelMap) -> PixelMap:
        """`pixel_map` followed by this normalization."""
        if not self.active:
            return pixel_map
        first, second = (self.stats[name] for name in STAT_NAMES[self.mode])
        n = pixel_map.channels
        first = first * n if len(first) == 1 else first
        second = second * n if len(second) == 1 else second
        if self.mode == "MEAN_STD":
            denominator = [s + self.eps for s in second]
            return pixel_map.then(
                [1 / d for d in denominator],
                [-m / d for m, d in zip(first, denominator, strict=True)],
                f"({{x}} - {_vector(first)})/{_vector(second)}",
            )
        # MIN_MAX / QUANTILES / QUANTILE10: 2*(x - low)/(high - low) - 1 (eps where high == low)
        widths = [(hi - lo) or self.eps for lo, hi in zip(first, second, strict=True)]
        return pixel_map.then(
            [2 / w for w in widths],
            [-2 * lo / w - 1 for lo, w in zip(first, widths, strict=True)],
            f"2*({{x}} - {_vector(first)})/{_vector(widths)} - 1",
        )


def from_policy(mapping: Any, stats: Any, key: str, where: str = "policy") -> Normalizer:
    """The normalizer a policy config applies to image `key`.

    Args:
        mapping: `policy.normalization_mapping` (feature type -> mode; no VISUAL: IDENTITY).
        stats: `policy.dataset_stats` (None: LeRobot's SAC default, ImageNet stats under `observation.image`).
        key: The image key.
        where: The config's name for the policy, for messages.
    """
    mode = mode_name(dict(mapping or {}).get("VISUAL", IDENTITY))
    mapping_text = f"{where}.normalization_mapping.VISUAL = {mode}"
    if mode == IDENTITY:
        return Normalizer(IDENTITY, where=mapping_text)
    table = {"observation.image": dict(IMAGENET)} if stats is None else stats
    entry = table.get(key) if isinstance(table, Mapping) else None
    if entry is None:
        return Normalizer(mode, where=f"{mapping_text}; {where}.dataset_stats has no {key!r}")
    try:
        values = {str(name): _flat(v) for name, v in dict(entry).items() if name in STAT_NAMES[mode]}
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{where}.dataset_stats[{key!r}]: not lists of numbers ({e})") from e
    return Normalizer(mode, values, where=f"{mapping_text}, {where}.dataset_stats[{key!r}]")


# ---- a saved pipeline (a reward classifier's pre-processor) ----------------------------------------


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """The tensors of a `.safetensors` file (8-byte header length, JSON header, raw little-endian data)."""
    data = path.read_bytes()
    try:
        (length,) = struct.unpack("<Q", data[:8])
        header = json.loads(data[8 : 8 + length])
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a safetensors file ({e})", path=path) from e
    base = 8 + length
    out = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(spec.get("dtype"))
        if dtype is None:
            continue
        start, end = spec["data_offsets"]
        out[name] = np.frombuffer(data[base + start : base + end], dtype=dtype).reshape(spec["shape"])
    return out


def _pipelines(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.json") if "processor" in p.name and "post" not in p.name)


def read_saved(folder: str | Path) -> dict[str, Normalizer]:
    """The image normalizers of the pre-processor saved in `folder`, per image key.

    Reads LeRobot's saved pipeline JSON (`policy_preprocessor.json` or another `*processor*.json`):
    its `normalizer_processor` steps' `norm_map` and `features`, and their stats (the step's
    `state_file`, else `config.stats`).

    Raises:
        ConfigError: the folder has no saved pre-processor, or it cannot be read.
    """
    root = Path(folder)
    candidates = _pipelines(root) if root.is_dir() else []
    if not candidates:
        raise ConfigError(
            f"{root}: no saved pre-processor (*processor*.json) next to the model; "
            "save the model with LeRobot's training entry point, which writes it",
            path=root,
        )
    out: dict[str, Normalizer] = {}
    for path in candidates:
        try:
            pipeline = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ConfigError(f"{path}: cannot read the saved pipeline ({e})", path=path) from e
        for step in pipeline.get("steps") or []:
            if "normaliz" not in str(step.get("registry_name") or step.get("class") or ""):
                continue
            config = step.get("config") or {}
            norm_map = config.get("norm_map") or {}
            features = config.get("features") or {}
            stats: dict[str, dict[str, tuple[float, ...]]] = {}
            for name, values in (config.get("stats") or {}).items():
                stats[name] = {k: _flat(v) for k, v in dict(values).items()}
            if step.get("state_file"):
                for name, tensor in read_safetensors(root / step["state_file"]).items():
                    key, _, stat = name.rpartition(".")
                    stats.setdefault(key, {})[stat] = _flat(tensor)
            for key, feature in features.items():
                if str(dict(feature).get("type", "")).upper().rsplit(".", 1)[-1] != "VISUAL":
                    continue
                mode = mode_name(norm_map.get("VISUAL", IDENTITY))
                where = f"the saved pre-processor {path.name}"
                values = {k: v for k, v in stats.get(key, {}).items() if k in STAT_NAMES.get(mode, ())}
                out[key] = Normalizer(mode, values, where=where)
    return out
