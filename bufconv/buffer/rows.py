"""A live transition (LeRobot's `add` arguments) turned into stored rows: checked, converted, once.

Both buffers take transitions this way. Images are range-checked and stored as uint8; the
rest as float32. Depth keys (SPEC section 15) are float32 too, in the buffer's unit, checked
against it (`check_unit`) and never against the image range. The state of a transition is almost always the previous transition's
next_state, by value: that is seen with one comparison of the float input, and the frame
stored for that next_state is reused, without a second range check or conversion.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from ..ranges import check_range, check_unit, span_problem, to_uint8
from .batch import as_row
from .pixelpass import to_uint8_into
from .store import PlacedRow, Schema, TransitionStore


class RowMaker:
    """Converts `add` arguments for one store, remembering the previous next_state as given.

    Args:
        state_keys: The observation keys kept.
        image_range: The declared range images are checked against.
        depth_units: The depth keys among them and the unit each is added in ("mm" or "m"):
            stored as float32 and checked with `check_unit` (the store's frame column is float32).
    """

    def __init__(
        self, state_keys: list[str], image_range: int, depth_units: Mapping[str, str] | None = None
    ) -> None:
        self.state_keys = state_keys
        self.image_range = image_range
        self.depth_units = dict(depth_units or {})
        self._previous_next: dict[str, torch.Tensor] | None = None
        self._previous_given: list[Any] | None = None  # next_state's rows as given (the CPU path)
        self._previous_objects: list[Any] | None = None  # and its values, the objects passed
        self._scratch: dict[str, np.ndarray] = {}  # per camera: float32 memory to convert in (GPU path)
        self._scale = 255.0 if image_range == 1 else 1.0  # a Python float: numpy keeps float32
        self._plan: _Plan | None = None

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
            UnitMismatchError: a depth key's values contradict its unit (a RangeMismatchError).
            KeyError: a state key is missing.
            ValueError: a row's shape differs from the store's.
        """
        if store._cpu:
            plan = self._plan
            if plan is None or plan.store is not store:
                plan = self._plan = _Plan(store, self.state_keys)
            self._add_in_place(plan, state, action, reward, next_state, done, truncated, complementary_info)
            return
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

    # ---- CPU stores: converted straight into the ring ------------------------------------------

    def _add_in_place(
        self,
        plan: _Plan,
        state: Mapping[str, Any],
        action: Any,
        reward: float | torch.Tensor,
        next_state: Mapping[str, Any] | None,
        done: bool | torch.Tensor,
        truncated: bool | torch.Tensor,
        complementary_info: Mapping[str, Any] | None,
    ) -> None:
        """The CPU path: each image read once, for its check and its conversion together
        (`to_uint8_into`), which writes into a free frame slot; the counters move only in
        `store.add`, after every check."""
        store = plan.store
        previous, previous_objects = self._previous_given, self._previous_objects
        state_rows: PlacedRow | None
        if previous_objects is not None and plan.same_objects(state, previous_objects):
            state_rows = None  # the previous next_state itself (an actor's batch shares its tensors)
        else:
            given_state = plan.given(state, "state")
            if previous is not None and all(
                _same_given(a, b) for a, b in zip(given_state, previous, strict=True)
            ):
                state_rows = None  # the previous next frame, by value: reused without a check
            else:
                state_rows = self._placed(plan, given_state, store.free_frame(0), "state")
        given_next = plan.given(next_state, "next_state") if next_state is not None else None
        next_rows = (
            self._placed(plan, given_next, store.free_frame(0 if state_rows is None else 1), "next_state")
            if given_next is not None
            else None
        )
        columns = plan.columns(action, reward, done, truncated, complementary_info)
        store.add(state_rows, next_rows, columns, ends_episode=bool(done) or bool(truncated))
        self._previous_given = given_next
        self._previous_objects = [next_state[k] for k in plan.state_keys] if next_state is not None else None
        self._previous_next = None

    def _placed(self, plan: _Plan, given: list[Any], row: PlacedRow, prefix: str) -> PlacedRow:
        """`given` checked and converted into `row` (a free slot): raises before anything counts."""
        for (key, is_image, _shape), value in zip(plan.keys, given, strict=True):
            out = row[key]
            if not is_image:
                if not (isinstance(value, np.ndarray) and value.dtype == np.float32):
                    value = value.to(torch.float32).numpy()
                unit = self.depth_units.get(key)
                if unit is not None:  # before the copy: a refusal leaves the slot as it was
                    check_unit(torch.from_numpy(value), unit, name=f"{prefix}[{key!r}]")
                np.copyto(out, value.reshape(out.shape))
            elif isinstance(value, np.ndarray):  # float32 on the CPU: one pass converts, gives min and max
                # Written into a free slot before the check: a refusal leaves only that slot's bytes.
                lo, hi = to_uint8_into(value, out, self._scale)
                problem = span_problem(lo, hi, self.image_range, name=f"{prefix}[{key!r}]")
                if problem is not None:
                    raise problem
            elif value.dtype == torch.uint8:
                np.copyto(out, value.numpy().reshape(out.shape))
            else:
                check_range(value, self.image_range, name=f"{prefix}[{key!r}]")
                np.copyto(out, to_uint8(value, self.image_range).numpy().reshape(out.shape))
        return row

    # ---- other stores ------------------------------------------------------------------------

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
                if key in self.depth_units:
                    check_unit(value, self.depth_units[key], name=f"{prefix}[{key!r}]")
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


class _Plan:
    """What one CPU store's `add` needs, worked out once: keys, shapes, which are images."""

    def __init__(self, store: TransitionStore, state_keys: list[str]) -> None:
        self.store = store
        schema = store.schema
        self.keys = [(k, schema.frames[k].dtype == "uint8", schema.frames[k].shape) for k in state_keys]
        self.state_keys = state_keys
        self.action_shape = schema.transitions["action"].shape
        self.complementary = [
            (short, f"complementary_info/{short}", schema.transitions[f"complementary_info/{short}"].shape)
            for short in schema.complementary
        ]

    def same_objects(self, observation: Mapping[str, Any], objects: list[Any]) -> bool:
        """Whether `observation` holds exactly `objects` (the same Python objects) for the keys."""
        return all(observation.get(k) is v for k, v in zip(self.state_keys, objects, strict=True))

    def given(self, observation: Mapping[str, Any], prefix: str) -> list[Any]:
        """Each key's row as given: a float32 CPU image as a numpy view (its batch dimension of
        one dropped), anything else as `as_row`'s tensor."""
        values = []
        for key, _is_image, shape in self.keys:
            try:
                value = observation[key]
            except KeyError:
                raise KeyError(
                    f"{prefix} lacks {key!r}; the buffer's state keys are {self.state_keys}"
                ) from None
            values.append(_row(value, shape, f"{prefix}[{key!r}]"))
        return values

    def columns(
        self,
        action: Any,
        reward: float | torch.Tensor,
        done: bool | torch.Tensor,
        truncated: bool | torch.Tensor,
        complementary_info: Mapping[str, Any] | None,
    ) -> dict[str, Any]:
        """`transition_columns`, with the numbers and float32 CPU tensors LeRobot's actor sends taken as they are."""
        action_row = _row(action, self.action_shape, "action")
        columns: dict[str, Any] = {
            "action": action_row
            if isinstance(action_row, np.ndarray)
            else action_row.to(torch.float32).numpy(),
            "reward": float(reward),
            "done": bool(done),
            "truncated": bool(truncated),
        }
        info = complementary_info or {}
        for short, name, shape in self.complementary:
            value = info.get(short, 0.0)
            if shape == () and type(value) in (float, int, bool):
                columns[name] = float(value)
                continue
            row = _row(value, shape, f"complementary_info[{short!r}]")
            columns[name] = row if isinstance(row, np.ndarray) else row.to(torch.float32).numpy()
        return columns


def _row(value: Any, shape: tuple[int, ...], name: str) -> Any:
    """`as_row(value)`, as a numpy view when it is a float32 CPU tensor (the usual case: no torch
    calls beyond the view), else as `as_row`'s tensor."""
    if (
        type(value) is torch.Tensor
        and value.dtype == torch.float32
        and not value.requires_grad
        and value.is_cpu
    ):
        array = value.numpy()
        while array.ndim > len(shape) and array.shape[0] == 1:
            array = array[0] if array.ndim > 1 else array.reshape(())  # views (array[0] of 1-d is a scalar)
        if array.shape != shape:
            raise ValueError(f"{name} has shape {array.shape}; the buffer holds rows of shape {shape}")
        if array.size:
            return array
    row = as_row(value, shape, name)
    if row.dtype == torch.float32 and row.numel() and not row.requires_grad:
        return row.numpy()
    return row


def _same_given(a: Any, b: Any) -> bool:
    """Two rows from `_Plan.given` hold the same values (the same memory, or equal)."""
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        if a.shape != b.shape:
            return False
        if a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.strides == b.strides:
            return True  # one tensor: an actor's batch of transitions shares it between the two
        return bool(np.array_equal(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return _same(a, b)
    return False


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
