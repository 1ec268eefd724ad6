"""Live transitions in memory: frames stored once, transitions as links to them, in two rings.

An actor's transition t carries `state` and `next_state`, and `next_state` of t is almost
always `state` of t+1. Storing both (LeRobot's default) doubles the bytes; storing only states
and taking `next_state` from the following slot (LeRobot's `optimize_memory`) pairs the last
transition of an episode with the first frame of the next one. Here observations are *frames*,
numbered as they arrive, and a transition links to its state frame and its next frame: a state
equal to the previous transition's next frame reuses it, so a transition costs one frame, and
an episode one more (its true last `next_state`).

Frames and transitions are numbered globally from 0 and never renumbered: transition t lives in
slot t % capacity, frame g in slot g % frame_capacity. Those numbers are what a checkpoint
persists (`bufconv.cache.segments`), so a resumed buffer is the same buffer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .batch import Rows, take_rows

STATE_FRAME = "state_frame"
NEXT_FRAME = "next_frame"
OPEN = -1
"""`next_frame` of a transition added with `next_state=None`: it is the next transition's state."""
_HASH_PIECE = 1 << 20  # restored rows are copied and hashed in pieces of this size (they stay in cache)


class PlacedRow(dict[str, Any]):
    """A frame row already written into a free frame slot of the store (numpy views of that slot).

    `TransitionStore.free_frame` hands these out: a caller converts straight into ring memory,
    and `add` takes the row without a copy when the slot is where the frame goes (or copies it
    when not: one slot on, or a ring that grew since). A refused add leaves nothing behind: the
    slots are free.
    """

    slot: int
    ring: int
    """`TransitionStore.ring`, the frame ring's generation, when the row was handed out."""


@dataclass(frozen=True)
class Column:
    """One stored column: dtype name ("uint8", "float32", "bool", "int64") and row shape."""

    dtype: str
    shape: tuple[int, ...]

    @property
    def torch_dtype(self) -> torch.dtype:
        dtype: torch.dtype = getattr(torch, self.dtype)
        return dtype

    def to_json(self) -> dict[str, Any]:
        return {"dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Column:
        return cls(str(data["dtype"]), tuple(int(n) for n in data["shape"]))


@dataclass(frozen=True)
class Schema:
    """What a store holds: frame columns (one per state key) and transition columns."""

    frames: dict[str, Column]
    transitions: dict[str, Column]
    """action, reward, done, truncated, complementary_info/<name>; the links are added by the store."""

    @property
    def complementary(self) -> list[str]:
        return [name.split("/", 1)[1] for name in self.transitions if name.startswith("complementary_info/")]

    def to_json(self) -> dict[str, Any]:
        return {
            "frames": {k: c.to_json() for k, c in self.frames.items()},
            "transitions": {k: c.to_json() for k, c in self.transitions.items()},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Schema:
        return cls(
            {k: Column.from_json(c) for k, c in data["frames"].items()},
            {k: Column.from_json(c) for k, c in data["transitions"].items()},
        )


class TransitionStore:
    """Transitions and their frames in two rings; the oldest transition goes first past `capacity`.

    Not thread-safe: the owning buffer serialises `add` and `gather`.

    Args:
        capacity: Transitions kept.
        schema: The columns.
        device: Where rows are stored.
    """

    def __init__(self, capacity: int, schema: Schema, device: torch.device) -> None:
        self.capacity = capacity
        self.schema = schema
        self.device = device
        # The frame ring holds the frames in use and room for the two an add may store (they are
        # stored before the oldest transition is retired). That is one frame per transition and
        # one per episode: the ring starts with room for episodes of 16 transitions or more, and
        # grows when shorter ones need more (`make_room`), up to 2 * capacity + 2 slots (every
        # transition with frames of its own). Sized to what is in use, it is written over in
        # place once full: no memory is handed back and faulted in again as the ring wraps.
        self.max_frame_slots = 2 * capacity + 2
        self.frame_capacity = min(self.max_frame_slots, capacity + capacity // 16 + 2)
        self.ring = 0
        """The frame ring's generation: one more each time it grows (`PlacedRow.ring`)."""
        self.frames = self._frame_ring(self.frame_capacity)
        columns = {**schema.transitions, STATE_FRAME: Column("int64", ()), NEXT_FRAME: Column("int64", ())}
        self.transitions = {
            k: torch.empty((capacity, *c.shape), dtype=c.torch_dtype, device=device)
            for k, c in columns.items()
        }
        self.first_transition = self.end_transition = 0
        self.first_frame = self.end_frame = 0
        # On the CPU, rows are written and links read through numpy views of the same memory:
        # a live transition is a dozen small writes, and numpy's cost a few times less per write.
        self._cpu = device.type == "cpu"
        self._np: dict[str, np.ndarray] = {}
        self._views()

    def _frame_ring(self, slots: int) -> dict[str, torch.Tensor]:
        return {
            k: torch.empty((slots, *c.shape), dtype=c.torch_dtype, device=self.device)
            for k, c in self.schema.frames.items()
        }

    def _views(self) -> None:
        if self._cpu:
            self._np = {
                **{f"frames/{k}": t.numpy() for k, t in self.frames.items()},
                **{k: t.numpy() for k, t in self.transitions.items()},
            }

    def make_room(self, count: int, *, keep: bool = True) -> None:
        """Grow the frame ring, if need be, so that `count` more frames fit beside those in use.

        The live frames are copied into the larger ring (`keep`; the one time an add costs a
        copy of the ring); it grows by an eighth more than asked, so that a run of short
        episodes grows it a few times, not at every add. It never grows past `max_frame_slots`.
        """
        needed = self.end_frame - self.first_frame + count
        if needed <= self.frame_capacity or self.frame_capacity >= self.max_frame_slots:
            return
        slots = min(self.max_frame_slots, needed + needed // 8)
        ring = self._frame_ring(slots)
        for key, old in self.frames.items() if keep else ():
            _copy_ring(old, ring[key], self.first_frame, self.end_frame)
        self.frames, self.frame_capacity = ring, slots
        self.ring += 1
        self._views()

    # ---- size -------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self.end_transition - self.first_transition

    @property
    def newest_is_open(self) -> bool:
        """Whether the newest transition still waits for its next frame (added with next_state=None)."""
        return len(self) > 0 and self._link(NEXT_FRAME, self.end_transition - 1) == OPEN

    def state_frame_of(self, transition: int) -> int:
        """The frame number of a kept transition's state."""
        return self._link(STATE_FRAME, transition)

    def _link(self, name: str, t: int) -> int:
        slot = t % self.capacity
        return int(self._np[name][slot] if self._cpu else self.transitions[name][slot])

    def _set_link(self, name: str, t: int, value: int) -> None:
        slot = t % self.capacity
        if self._cpu:
            self._np[name][slot] = value
        else:
            self.transitions[name][slot] = value

    def _put(self, name: str, slot: int, value: Any) -> None:
        """Row `slot` of a column ("frames/<key>" or a transition column) := `value` (array, tensor or scalar)."""
        if self._cpu:
            self._np[name][slot] = value
        else:
            table = (
                self.frames[name[len("frames/") :]] if name.startswith("frames/") else self.transitions[name]
            )
            table[slot].copy_(torch.as_tensor(value))

    # ---- writing ----------------------------------------------------------------------------

    def add(
        self,
        state: Mapping[str, Any] | None,
        next_state: Mapping[str, Any] | None,
        columns: Mapping[str, Any],
        *,
        ends_episode: bool,
    ) -> None:
        """Append one transition (rows already checked and converted to the schema's dtypes).

        Args:
            state: One row per frame column, or None: the previous transition's next frame
                (the caller saw they are equal).
            next_state: One row per frame column; `next_state=None` means "the next
                transition's state" (LeRobot's `optimize_memory`), or the state itself if
                `ends_episode` (never a frame of another episode).
            columns: One row per transition column of the schema.
            ends_episode: done or truncated.
        """
        self.make_room(2)
        previous = self.end_transition - 1 if len(self) else None
        if state is None:
            if previous is None or self._link(NEXT_FRAME, previous) == OPEN:
                raise ValueError("state=None needs a previous transition with a next frame")
            state_frame = self._link(NEXT_FRAME, previous)
        elif previous is not None and self._link(NEXT_FRAME, previous) == OPEN:
            state_frame = self._append(state)
            self._set_link(NEXT_FRAME, previous, state_frame)
        elif (
            previous is not None
            and self._link(NEXT_FRAME, previous) == self.end_frame - 1
            and self._equals_last(state)
        ):
            state_frame = self.end_frame - 1
        else:
            state_frame = self._append(state)
        if next_state is not None:
            next_frame = self._append(next_state)
        else:
            next_frame = state_frame if ends_episode else OPEN
        slot = self.end_transition % self.capacity
        for name, value in columns.items():
            self._put(name, slot, value)
        self._set_link(STATE_FRAME, self.end_transition, state_frame)
        self._set_link(NEXT_FRAME, self.end_transition, next_frame)
        self.end_transition += 1
        if len(self) > self.capacity:
            self.first_transition += 1
        self.first_frame = self._link(STATE_FRAME, self.first_transition)

    def free_frame(self, k: int) -> PlacedRow:
        """Views of the slot of frame `end_frame + k` (k = 0 or 1), one per frame column (CPU only).

        Both slots are free before an add (`make_room(2)`, which this calls). What is written
        there counts only once `add` takes it.
        """
        self.make_room(2)
        slot = (self.end_frame + k) % self.frame_capacity
        row = PlacedRow({k: self._np[f"frames/{k}"][slot] for k in self.frames})
        row.slot, row.ring = slot, self.ring
        return row

    def _append(self, row: Mapping[str, Any]) -> int:
        g = self.end_frame
        slot = g % self.frame_capacity
        if isinstance(row, PlacedRow):
            # Placed one slot on (a state that turned out to be the last frame), or in the ring
            # before it grew (its views keep that memory): copied to its slot.
            if row.slot != slot or row.ring != self.ring:
                for key, value in row.items():
                    self._np[f"frames/{key}"][slot] = value
        else:
            for key, value in row.items():
                self._put(f"frames/{key}", slot, value)
        self.end_frame += 1
        return g

    def _equals_last(self, row: Mapping[str, Any]) -> bool:
        slot = (self.end_frame - 1) % self.frame_capacity
        if self._cpu:
            return all(np.array_equal(self._np[f"frames/{k}"][slot], v) for k, v in row.items())
        return all(
            torch.equal(self.frames[k][slot], torch.as_tensor(v).to(self.device)) for k, v in row.items()
        )

    # ---- reading ----------------------------------------------------------------------------

    def gather(self, positions: torch.Tensor) -> Rows:
        """Raw rows of the transitions at `positions` (0 = the oldest kept), images uint8."""
        slots = (positions.to(torch.int64) + self.first_transition) % self.capacity
        out: Rows = {name: take_rows(column, slots) for name, column in self.transitions.items()}
        state_frames = out.pop(STATE_FRAME) % self.frame_capacity
        next_frames = out.pop(NEXT_FRAME)
        # An open link (only the newest transition, added with next_state=None) reads its own state.
        next_frames = torch.where(next_frames == OPEN, state_frames, next_frames % self.frame_capacity)
        for key, frames in self.frames.items():
            out[f"state/{key}"] = take_rows(frames, state_frames)
            out[f"next_state/{key}"] = take_rows(frames, next_frames)
        return out

    # ---- persistence ------------------------------------------------------------------------

    def frame_pieces(self, first: int, end: int) -> dict[str, list[torch.Tensor]]:
        """Frames [first, end) by global number, as views of the ring (one or two runs, in order)."""
        return {k: _ring_pieces(t, first, end) for k, t in self.frames.items()}

    def transition_pieces(self, first: int, end: int) -> dict[str, list[torch.Tensor]]:
        """Transitions [first, end) by global number, links included, as views of the ring."""
        return {k: _ring_pieces(t, first, end) for k, t in self.transitions.items()}

    def reset(self, first_frame: int, end_frame: int, first_transition: int, end_transition: int) -> None:
        """Set the numbers held before `put_*` restores rows (a resumed buffer): the newest
        `capacity` transitions of [first_transition, end_transition) are kept."""
        self.first_transition = max(first_transition, end_transition - self.capacity)
        self.end_transition = end_transition
        self.first_frame, self.end_frame = first_frame, end_frame
        self.make_room(2, keep=False)  # the rows come after

    def put_column(self, kind: str, name: str, first: int, rows: torch.Tensor, digest: Any = None) -> None:
        """Restore one column's rows numbered from `first` (the part outside the held numbers is skipped).

        Args:
            kind: "frames" or "transitions".
            digest: An xxh3 hasher fed every row's bytes in order (`rows` may be a memory map of
                a file: what is copied is hashed from the copy, in cache-sized pieces, so the
                file is read once).
        """
        ring = self.frames[name] if kind == "frames" else self.transitions[name]
        low, high = (
            (self.first_frame, self.end_frame)
            if kind == "frames"
            else (self.first_transition, self.end_transition)
        )
        feed = (lambda t: digest.update(t.numpy())) if digest is not None else (lambda t: None)
        lo, hi = max(first, low), min(first + len(rows), high)
        if hi <= lo:
            feed(rows)
            return
        feed(rows[: lo - first])
        step = max(1, _HASH_PIECE // max(1, rows[0].nbytes))
        done = lo - first
        for a, b in _slot_runs(lo, hi, len(ring)):
            for start in range(a, b, step):
                end = min(start + step, b)
                piece = ring[start:end]
                piece.copy_(rows[done : done + end - start])
                feed(piece)
                done += end - start
        feed(rows[hi - first :])

    def finish_restore(self) -> None:
        """After `put_*`: the first frame still needed is the oldest kept transition's state."""
        if len(self):
            self.first_frame = max(self.first_frame, self._link(STATE_FRAME, self.first_transition))


def _slot_runs(first: int, end: int, size: int) -> list[tuple[int, int]]:
    """Slot ranges [a, b) of a ring of `size` slots holding global numbers [first, end), in order
    (only the newest `size` numbers, if more are asked for)."""
    if end <= first:
        return []
    first = max(first, end - size)
    a, b = first % size, end % size
    if a < b:
        return [(a, b)]
    return [(a, size), (0, b)] if b else [(a, size)]


def _ring_pieces(tensor: torch.Tensor, first: int, end: int) -> list[torch.Tensor]:
    return [tensor[a:b] for a, b in _slot_runs(first, end, len(tensor))] or [tensor[:0]]


def _put_ring_rows(tensor: torch.Tensor, first: int, rows: torch.Tensor) -> None:
    size = len(tensor)
    if len(rows) > size:
        rows, first = rows[len(rows) - size :], first + len(rows) - size
    done = 0
    for a, b in _slot_runs(first, first + len(rows), size):
        tensor[a:b].copy_(rows[done : done + b - a])
        done += b - a


def _copy_ring(old: torch.Tensor, new: torch.Tensor, first: int, end: int) -> None:
    """Rows numbered [first, end) from ring `old` into ring `new` (each row g at slot g % size)."""
    for piece in _ring_pieces(old, first, end):
        _put_ring_rows(new, first, piece)
        first += len(piece)


def schema_for(
    state: Mapping[str, torch.Tensor],
    action: torch.Tensor,
    image_keys: set[str],
    complementary: Mapping[str, torch.Tensor],
) -> Schema:
    """The schema of a store whose first transition has these rows (images uint8, the rest float32)."""
    frames = {
        key: Column("uint8" if key in image_keys else "float32", tuple(value.shape))
        for key, value in state.items()
    }
    transitions = {
        "action": Column("float32", tuple(action.shape)),
        "reward": Column("float32", ()),
        "done": Column("bool", ()),
        "truncated": Column("bool", ()),
        **{f"complementary_info/{k}": Column("float32", tuple(v.shape)) for k, v in complementary.items()},
    }
    return Schema(frames, transitions)
