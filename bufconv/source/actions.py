"""What a dataset's actions say about the robot that recorded them: per-dimension statistics and kinds.

Recorded in the cache header (`meta["actions"]`, docs/format.md) and compared with a training
config by `bufconv check`: a policy trained on actions spanning the simulator's workspace, or on
a continuous gripper, meets a robot with tighter bounds and a gripper of three commands.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

#: A dimension with at most this many distinct values, all whole numbers, is discrete (a gripper
#: command such as LeRobot's {0 = close, 1 = stay, 2 = open}); anything else is continuous.
MAX_DISCRETE_VALUES = 16


def _number(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def dimension_kind(column: np.ndarray) -> dict[str, Any]:
    """{"kind": "discrete", "values": [...]} or {"kind": "continuous", "min": a, "max": b} of one dimension."""
    values = np.unique(column[np.isfinite(column)]) if column.dtype.kind == "f" else np.unique(column)
    if 0 < values.size <= MAX_DISCRETE_VALUES and np.array_equal(values, np.round(values)):
        return {"kind": "discrete", "values": [_number(v) for v in values.astype(np.float64)]}
    return {
        "kind": "continuous",
        "min": _number(float(values.min())) if values.size else None,
        "max": _number(float(values.max())) if values.size else None,
    }


def action_names(names: Any, dims: int) -> list[str] | None:
    """info.json's `names` of the action feature as one name per dimension, if it gives that."""
    if isinstance(names, dict) and len(names) == 1:
        names = next(iter(names.values()))
    if isinstance(names, (list, tuple)) and len(names) == dims and all(isinstance(n, str) for n in names):
        return list(names)
    return None


def gripper_index(names: list[str] | None, dims: int) -> tuple[int, str] | None:
    """Which action dimension is the gripper, and how that was decided.

    A dimension named like "gripper" wins; otherwise the last one, LeRobot's HIL-SERL convention
    (x, y, z, then the gripper command; `num_discrete_actions` takes the last dimension too).
    """
    if names is not None:
        for i, name in enumerate(names):
            if "gripper" in name.lower():
                return i, "name"
    return (dims - 1, "last dimension") if dims >= 2 else None


def action_facts(values: np.ndarray, names: Any = None) -> dict[str, Any]:
    """Per-dimension min, max, mean, std and kind of an action column (N, A), for the cache header.

    Returns:
        {"dims", "names", "min", "max", "mean", "std", "kinds", "gripper"} with JSON values only
        (non-finite statistics become None); `gripper` is {"index", "found_by", "kind", ...} or None.
    """
    frames = values.shape[0] if values.ndim else 0
    matrix = np.asarray(values).reshape(frames, -1)
    dims = matrix.shape[1]
    as_float = matrix.astype(np.float64)
    known = action_names(names, dims)
    kinds = [dimension_kind(matrix[:, d]) for d in range(dims)]
    if frames:
        stats = {
            "min": [_number(v) for v in as_float.min(axis=0)],
            "max": [_number(v) for v in as_float.max(axis=0)],
            "mean": [_number(v) for v in as_float.mean(axis=0)],
            "std": [_number(v) for v in as_float.std(axis=0)],
        }
    else:
        stats = {name: [None] * dims for name in ("min", "max", "mean", "std")}
    found = gripper_index(known, dims)
    gripper = None if found is None else {"index": found[0], "found_by": found[1], **kinds[found[0]]}
    return {"dims": dims, "names": known, **stats, "kinds": kinds, "gripper": gripper}
