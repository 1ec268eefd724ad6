"""A live transition (LeRobot's `add` arguments) turned into stored rows: checked, converted, once.

Both buffers take transitions this way. Images are range-checked and stored as uint8; the
rest as float32. The state of a transition is almost always the previous transition's
next_state, by value: that is seen with one comparison of the float input, and the frame
stored for that next_state is reused, without a second range check or conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..ranges import check_range, to_uint8
from .batch import as_row
from .store import Schema, TransitionStore


class RowMaker:
    """Converts `add` arguments for one store, remembering the previous next_state as given.

    Args:
        state_keys: The observation keys kept.
        image_range: The declared range images are checked against.
    """

    def __init__(self, state_keys: list[str], image_range: int) -> None:
        self.state_keys = state_keys
        self.image_range = image_range
        self._previous_next: dict[str, torch.Tensor] | None = None
        self._scratch: dict[str, np.ndarray] = {}  # per camera: float32 memory to convert in
        self._scale = np.float32(255.0 if image_range == 1 else 1.0)

    def add(
        self,
        store: TransitionStore,
        state: Mapping[str, Any],
        action: Any,
        reward: float | torch.Tensor,
        next_state: Mapping[str, Any] | None,
        done: bool | torch.Tensor,
        truncated: bool | torch.Tensor,
        complementary_info: Mapping[str, Any] | None,
    ) -> None:
        """Check and convert everything first, then add to `store` (so a refusal changes nothing).

        Raises:
            RangeMismatchError: an image is not in the declared range.
            KeyError: a state key is missing.
            ValueError: a row's shape differs from the store's.
        """
        schema = store.schema
        raw_state = self._raw(state, schema, "state")
        previous = self._previous_next
        same = previous is not None and all(_same(raw_state[k], previous[k]) for k in self.state_keys)
        state_rows = None if same else self._converted(raw_state, schema, "state")
        raw_next = self._raw(next_state, schema, "next_state") if next_state is not None else None
        next_rows = self._converted(raw_next, schema, "next_state") if raw_next is not None else None
        columns = transition_columns(schema, action, reward, done, truncated, complementary_info)
        store.add(
            state_rows,
            next_rows,
            columns,
            ends_episode=bool(done) or bool(truncated),
        )
        self._previous_next = raw_next

    def _raw(self, observation: Mapping[str, Any], schema: Schema, prefix: str) -> dict[str, torch.Tensor]:
        rows = {}
        for key in self.state_keys:
            if key not in observation:
                raise KeyError(f"{prefix} lacks {key!r}; the buffer's state keys are {self.state_keys}")
            rows[key] = as_row(observation[key], schema.frames[key].shape, f"{prefix}[{key!r}]")
        return rows

    def _converted(self, raw: dict[str, torch.Tensor], schema: Schema, prefix: str) -> dict[str, np.ndarray]:
        rows = {}
        for key, value in raw.items():
            if schema.frames[key].dtype != "uint8":
                rows[key] = value.to(torch.float32).numpy()
            elif value.dtype == torch.uint8:
                rows[key] = value.numpy()
            else:
                check_range(value, self.image_range, name=f"{prefix}[{key!r}]")
                rows[key] = self._pixels(key, value)
        return rows

    def _pixels(self, key: str, value: torch.Tensor) -> np.ndarray:
        """Checked float images as uint8: `to_uint8`'s float32 product and rounding, in reused memory.

        Checked values lie within 1e-4 of the range, so they round into [0, 255] without a clamp.
        """
        if value.dtype != torch.float32:
            return to_uint8(value, self.image_range).numpy()
        scratch = self._scratch.get(key)
        if scratch is None:
            scratch = self._scratch[key] = np.empty(tuple(value.shape), np.float32)
        np.multiply(value.numpy(), self._scale, out=scratch)
        np.rint(scratch, out=scratch)
        return scratch.astype(np.uint8)


def transition_columns(
    schema: Schema,
    action: Any,
    reward: float | torch.Tensor,
    done: bool | torch.Tensor,
    truncated: bool | torch.Tensor,
    complementary_info: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The transition columns of the schema, as numpy rows and scalars (missing complementary_info entries are 0)."""
    columns: dict[str, Any] = {
        "action": as_row(action, schema.transitions["action"].shape, "action").to(torch.float32).numpy(),
        "reward": float(reward),
        "done": bool(done),
        "truncated": bool(truncated),
    }
    info = complementary_info or {}
    for short in schema.complementary:
        column = schema.transitions[f"complementary_info/{short}"]
        columns[f"complementary_info/{short}"] = (
            as_row(info.get(short, 0.0), column.shape, f"complementary_info[{short!r}]")
            .to(torch.float32)
            .numpy()
        )
    return columns


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.data_ptr() == b.data_ptr() and a.stride() == b.stride() and a.device == b.device:
        return True  # one tensor: an actor's batch of transitions shares it between the two
    if a.device.type == "cpu" and b.device.type == "cpu" and a.dtype != torch.bfloat16:
        return bool(np.array_equal(a.numpy(), b.numpy()))  # 3x faster than torch.equal here
    return torch.equal(a, b)
