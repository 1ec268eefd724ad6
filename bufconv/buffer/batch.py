"""Raw rows in, a `BatchTransition` out: what every buffer does once it has gathered its rows.

Rows arrive as uint8 images and numeric columns on the storage device. They move to the
target device, get the DrQ shift there (on uint8: replicate padding and cropping commute with
the conversion) and are converted to the declared range last. Depth keys (SPEC section 15)
arrive as stored (int16 codes or millimetres) or as float32 depth in the buffer's unit; they get
the DrQ shift of their camera's RGB key (the same offsets: an RGB-D pair stays aligned) and are
converted to float32 in their unit last, with LeRobot's arithmetic (`source.depth.DepthDecoder`).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..ranges import from_uint8
from ..source.depth import DepthDecoder
from .drq import draw_shifts, random_shift
from .recycle import OutputPool

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired, TypedDict

Rows = dict[str, torch.Tensor]
"""Raw rows of a batch: "state/<key>", "next_state/<key>", "action", "reward", "done",
"truncated", "complementary_info/<name>"; images uint8 (B, C, H, W); depth keys as stored
(int16 (B, 1, H, W), decoded here) or float32 (B, 1, H, W) already in the buffer's unit."""


class BatchTransition(TypedDict):
    """A batch in the layout LeRobot's learner consumes (`lerobot.rl.buffer.BatchTransition`)."""

    state: dict[str, torch.Tensor]
    action: torch.Tensor
    reward: torch.Tensor
    next_state: dict[str, torch.Tensor]
    done: torch.Tensor
    truncated: torch.Tensor
    complementary_info: NotRequired[dict[str, torch.Tensor] | None]


class Batcher:
    """Turns gathered rows into batches for one buffer's keys, range and device.

    Args:
        state_keys: Keys of `state`/`next_state`.
        image_keys: The keys among them that are uint8 images.
        image_range: 1 or 255: the range image batches come out in.
        device: Where batches are delivered.
        image_augmentation_function: Replaces the built-in DrQ shift (applied to float images).
        recycle_outputs: On a CPU device, build float batches in memory recycled from batches
            the caller has dropped (5x cheaper than fresh pages; a batch still held is never reused).
        depth: Per depth key among `state_keys`, its decoder (from the cache header). Depth keys
            come out float32 (B, 1, H, W) in their unit whatever `image_dtype` asks for; a custom
            `image_augmentation_function` is not applied to them (it is written for pixels).
    """

    def __init__(
        self,
        state_keys: Sequence[str],
        image_keys: Sequence[str],
        image_range: int,
        device: torch.device,
        image_augmentation_function: Callable[[torch.Tensor], torch.Tensor] | None = None,
        recycle_outputs: bool = True,
        depth: Mapping[str, DepthDecoder] | None = None,
    ) -> None:
        self.state_keys = list(state_keys)
        self.image_keys = list(image_keys)
        self.depth = dict(depth or {})
        #: The RGB key whose DrQ offsets each depth key shares (None: offsets of its own).
        self.partners = {key: rgb_partner(key, self.image_keys) for key in self.depth}
        self.image_range = image_range
        self.device = device
        self.image_augmentation_function = image_augmentation_function
        # CPU learners: float batches over recycled memory (state and next_state of every
        # camera, for the batch in use and two prefetched ones).
        self.pool = (
            OutputPool(keep=6 * max(1, len(self.image_keys)))
            if device.type == "cpu" and recycle_outputs
            else None
        )

    def __call__(
        self,
        rows: Rows,
        complementary: Sequence[str],
        *,
        augment: bool,
        image_dtype: torch.dtype,
        generator: torch.Generator,
    ) -> BatchTransition:
        """The batch of `rows`, DrQ-shifted if `augment` (state and next_state shifted independently)."""
        count = len(rows["action"])
        builtin = augment and self.image_augmentation_function is None
        if builtin:  # drawn before anything else, camera by camera: state's shift, then next_state's
            shifts = {
                key: (draw_shifts(count, generator, self.device), draw_shifts(count, generator, self.device))
                for key in self.image_keys
            }
            for key, partner in self.partners.items():  # after the cameras': their draws stay as they were
                shifts[key] = (
                    shifts[partner]
                    if partner is not None
                    else (
                        draw_shifts(count, generator, self.device),
                        draw_shifts(count, generator, self.device),
                    )
                )
        state: dict[str, torch.Tensor] = {}
        next_state: dict[str, torch.Tensor] = {}
        for key in self.state_keys:
            current = rows[f"state/{key}"].to(self.device, non_blocking=True)
            following = rows[f"next_state/{key}"].to(self.device, non_blocking=True)
            if key in self.image_keys:  # uint8 until here; shifted on uint8, converted last, on the device
                if builtin:
                    current = random_shift(current, shifts[key][0], empty=self._empty(current))
                    following = random_shift(following, shifts[key][1], empty=self._empty(following))
                current = from_uint8(
                    current, self.image_range, image_dtype, out=self._output(current, image_dtype)
                )
                following = from_uint8(
                    following, self.image_range, image_dtype, out=self._output(following, image_dtype)
                )
                if augment and self.image_augmentation_function is not None:
                    current = self.image_augmentation_function(current)
                    following = self.image_augmentation_function(following)
            elif key in self.depth:  # stored values until here; shifted as stored, converted last
                if builtin:
                    current = random_shift(current, shifts[key][0])
                    following = random_shift(following, shifts[key][1])
                current, following = self.to_depth(key, current), self.to_depth(key, following)
            else:
                current, following = current.to(torch.float32), following.to(torch.float32)
            state[key], next_state[key] = current, following

        def column(name: str) -> torch.Tensor:
            return rows[name].to(self.device, dtype=torch.float32, non_blocking=True)

        return BatchTransition(
            state=state,
            action=column("action"),
            reward=column("reward"),
            next_state=next_state,
            done=column("done"),
            truncated=column("truncated"),
            complementary_info=(
                {short: column(f"complementary_info/{short}") for short in complementary}
                if complementary
                else None
            ),
        )

    def to_depth(self, key: str, rows: torch.Tensor) -> torch.Tensor:
        """Depth rows as float32 in their unit: float32 rows already are (see `Rows`), stored ones are decoded."""
        return rows if rows.dtype == torch.float32 else self.depth[key](rows)

    def _output(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Recycled memory for a CPU float32 image batch (None: let the conversion allocate)."""
        if self.pool is None or dtype != torch.float32 or images.device.type != "cpu":
            return None
        return self.pool.empty(tuple(images.shape))

    def _empty(self, images: torch.Tensor) -> Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None:
        """The allocator for DrQ's uint8 intermediates on the CPU (recycled), or None (torch's)."""
        return self.pool.empty if self.pool is not None and images.device.type == "cpu" else None


def rgb_partner(depth_key: str, image_keys: Sequence[str]) -> str | None:
    """The RGB key of the camera a depth key belongs to, by LeRobot's naming (`<cam>_depth` beside
    `<cam>`), or None."""
    for suffix in ("_depth", ".depth"):
        if depth_key.endswith(suffix) and depth_key[: -len(suffix)] in image_keys:
            return depth_key[: -len(suffix)]
    return None


def take_rows(tensor: torch.Tensor, rows: torch.Tensor, pool: OutputPool | None = None) -> torch.Tensor:
    """`tensor[rows]` (rows along the first dimension); uint8 rows into recycled memory if `pool`.

    On the CPU, numpy's take: whole-row copies without the GIL, 0.9 ms for 256 rows of
    3x128x128 uint8, where torch's index_select takes 1.3 ms on the main thread and 18 ms on
    any other (the prefetching thread; torch 2.11 with OpenMP), and advanced indexing 3.4 ms.
    """
    if tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
        return tensor.index_select(0, rows.to(tensor.device))
    if pool is not None and tensor.dtype == torch.uint8:
        out = pool.empty((len(rows), *tensor.shape[1:]), torch.uint8)
        np.take(tensor.numpy(), rows.numpy(), axis=0, out=out.numpy(), mode="clip")  # rows are valid
        return out
    return torch.from_numpy(np.take(tensor.numpy(), rows.numpy(), axis=0))


def as_row(value: Any, row_shape: Sequence[int], name: str) -> torch.Tensor:
    """One row of shape `row_shape`: leading size-1 dimensions (LeRobot's batch of one) are
    dropped; any other difference is an error (never a reshape that scrambles pixels)."""
    tensor = torch.as_tensor(value).detach().cpu()
    expected = tuple(row_shape)
    while tensor.ndim > len(expected) and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; the buffer holds rows of shape {expected}")
    return tensor


def positions(idx: int | slice | Sequence[int] | torch.Tensor, n: int) -> torch.Tensor:
    """`buffer[idx]`'s positions, int64 (k,): negative ones count from the end, as in a list.

    Raises:
        IndexError: a position outside a buffer of `n` transitions.
    """
    if isinstance(idx, slice):
        index = torch.arange(n)[idx]
    else:
        index = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
        index = torch.where(index < 0, index + n, index)
    if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
        raise IndexError(f"index out of range for a buffer of {n} transitions")
    return index


def random_generator() -> torch.Generator:
    generator = torch.Generator()
    generator.seed()  # fresh entropy; pass a seeded generator for reproducible batches
    return generator
