"""The offline buffer a learner samples from: LeRobot's `ReplayBuffer` interface over a cache.

Frames stay uint8 in the memory-mapped cache (nothing is read until sampled). A batch gathers
uint8 rows on the storage device, moves them to the target device, applies the DrQ shift
there (on uint8: replicate padding and cropping commute with the conversion) and converts
to the declared range last. Transitions are rows of the cache: `next_state` is the row
`next_index[i]` (the next frame of the same episode, or the frame itself at the end).

Live transitions (the LeRobot learner adds human interventions to its offline buffer) go into
a bounded ring next to the read-only dataset part, range-checked and stored as uint8.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache.reader import CacheFile
from ..errors import BufconvError
from ..ranges import check_range, from_uint8, to_uint8
from .drq import draw_shifts, random_shift
from .prefetch import prefetched
from .recycle import OutputPool

if sys.version_info >= (3, 11):
    from typing import NotRequired, TypedDict
else:  # pragma: no cover - Python 3.10
    from typing_extensions import NotRequired, TypedDict

DEFAULT_CAPACITY = 100_000  # LeRobot's default offline_buffer_capacity
_COMPLEMENTARY = "complementary_info."


class BatchTransition(TypedDict):
    """A batch in the layout LeRobot's learner consumes (`lerobot.rl.buffer.BatchTransition`)."""

    state: dict[str, torch.Tensor]
    action: torch.Tensor
    reward: torch.Tensor
    next_state: dict[str, torch.Tensor]
    done: torch.Tensor
    truncated: torch.Tensor
    complementary_info: NotRequired[dict[str, torch.Tensor] | None]


class _Ring:
    """Live transitions, bounded: the oldest is overwritten once `capacity` is reached."""

    def __init__(self, capacity: int, device: torch.device) -> None:
        self.capacity = capacity
        self.device = device
        self.size = 0
        self.position = 0
        self.tensors: dict[str, torch.Tensor] = {}

    def allocate(self, name: str, row: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        if name not in self.tensors:
            self.tensors[name] = torch.empty((self.capacity, *row.shape), dtype=dtype, device=self.device)
        return self.tensors[name]


class OfflineBuffer:
    """Transitions of a cache, sampled like LeRobot's `ReplayBuffer` (a drop-in for the learner's offline buffer).

    Use `bufconv.load_or_build` (or `bufconv.open_buffer`) to get one.

    Args:
        cache: The opened cache.
        device: Where batches are delivered; images are converted to float there.
        storage_device: Where frames live ("cpu": memory-mapped from the cache file).
        use_drq: Random-shift augmentation in `sample` (pad 4, as LeRobot).
        capacity: Live transitions `add` keeps before overwriting the oldest.
        image_augmentation_function: Replaces the built-in DrQ shift (applied to float images).
        generator: Randomness for sampling and augmentation (default: freshly seeded).
        status, stale_reasons: What `load_or_build` did, for the caller to see.
        recycle_outputs: On a CPU device, build float batches in memory recycled from batches
            the caller has dropped (5x cheaper than fresh pages; a batch still held is never reused).

    Attributes:
        status: "hit" (fresh cache used), "built" or "rebuilt"; "opened" from `open_buffer`.
        stale_reasons: Why the cache was rebuilt (empty otherwise).
        image_range: 1 or 255: the range image batches come out in.
        state_keys: Keys of `state`/`next_state`.
        image_keys: The image subset of `state_keys`.
    """

    def __init__(
        self,
        cache: CacheFile,
        *,
        device: str | torch.device = "cpu",
        storage_device: str | torch.device = "cpu",
        use_drq: bool = True,
        capacity: int = DEFAULT_CAPACITY,
        image_augmentation_function: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        status: str = "hit",
        stale_reasons: Sequence[str] = (),
        recycle_outputs: bool = True,
    ) -> None:
        meta = cache.meta
        self.path: Path = cache.path
        self.meta = meta
        self.status = status
        self.stale_reasons = list(stale_reasons)
        self.device = torch.device(device)
        self.storage_device = torch.device(storage_device)
        self.use_drq = use_drq
        self.image_augmentation_function = image_augmentation_function
        self.generator = generator if generator is not None else _random_generator()
        self.state_keys: list[str] = list(meta["keys"]["state"])
        self.image_keys: list[str] = list(meta["keys"]["images"])
        ranges = {k: v["output"] for k, v in meta["ranges"].items()}
        if len(set(ranges.values())) > 1:
            raise BufconvError(
                f"{self.path}: image keys declare different ranges {ranges}; bufconv builds one range per cache"
            )
        self.image_range: int = next(iter(ranges.values()), 1)
        self.ranges = ranges
        self._complementary = {
            k[len(_COMPLEMENTARY) :]: k for k in meta["keys"].get("complementary_info", [])
        }
        tensors = cache.tensors
        self._frames = {k: self._stored(tensors[k]) for k in self.state_keys}
        self._action = self._stored(tensors["action"])
        self._reward = self._stored(tensors["reward"])
        self._done = self._stored(tensors["done"])
        self._truncated = self._stored(tensors["truncated"])
        self._next_index = self._stored(tensors["next_index"])
        self._extra = {short: self._stored(tensors[name]) for short, name in self._complementary.items()}
        self._frames_n = int(meta["frames"])
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self._ring = _Ring(capacity, self.storage_device)
        self._lock = threading.Lock()
        # CPU learners: float batches over recycled memory (state and next_state of every
        # camera, for the batch in use and two prefetched ones).
        self._pool = (
            OutputPool(keep=6 * len(self.ranges)) if self.device.type == "cpu" and recycle_outputs else None
        )

    def _stored(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor if self.storage_device.type == "cpu" else tensor.to(self.storage_device)

    def __repr__(self) -> str:
        return (
            f"OfflineBuffer({str(self.path)!r}, transitions={len(self)}, image_range={self.image_range}, "
            f"status={self.status!r}, device={str(self.device)!r})"
        )

    # ---- size ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._frames_n + self._ring.size

    @property
    def dataset_transitions(self) -> int:
        """Transitions that come from the dataset (read-only)."""
        return self._frames_n

    @property
    def capacity(self) -> int:
        """How many live transitions `add` keeps before overwriting the oldest."""
        return self._ring.capacity

    # ---- reading ------------------------------------------------------------------------------

    def __getitem__(self, idx: int | slice | Sequence[int] | torch.Tensor) -> BatchTransition:
        """Transitions at `idx` (dataset rows first, then added ones), without augmentation."""
        n = len(self)
        if isinstance(idx, slice):
            index = torch.arange(n)[idx]
        else:
            index = torch.as_tensor(idx, dtype=torch.int64).reshape(-1)
            index = torch.where(index < 0, index + n, index)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= n):
            raise IndexError(f"index out of range for a buffer of {n} transitions")
        return self._batch(index, augment=False, image_dtype=torch.float32)

    def sample(
        self,
        batch_size: int,
        *,
        image_dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> BatchTransition:
        """A random batch (uniform over all transitions), DrQ-shifted if `use_drq`.

        Args:
            batch_size: Transitions in the batch (at most `len(self)`, as in LeRobot).
            image_dtype: float32/float16/bfloat16 for images in the declared range, or
                torch.uint8 for raw [0,255] pixels (4x fewer bytes to the device; convert there).
            generator: Overrides the buffer's generator for this call.
        """
        n = len(self)
        batch_size = min(batch_size, n)
        index = torch.randint(0, n, (batch_size,), generator=generator or self.generator)
        return self._batch(index, augment=self.use_drq, image_dtype=image_dtype, generator=generator)

    def get_iterator(
        self,
        batch_size: int,
        async_prefetch: bool = True,
        queue_size: int = 2,
        *,
        image_dtype: torch.dtype = torch.float32,
        threads: int = 1,
    ) -> Iterator[BatchTransition]:
        """An endless iterator of batches (LeRobot's signature).

        With `async_prefetch`, `threads` background threads sample ahead of the learner, at most
        `queue_size` batches beyond those being made (more threads help only when cores are
        idle while the learner updates, e.g. a GPU learner whose batches stay on the CPU).
        Batches come out in a fixed order, and batch k is drawn from its own generator seeded
        from the buffer's generator, so the sequence is the same for the same seed however the
        threads are scheduled.
        """
        if not async_prefetch:
            while True:
                yield self.sample(batch_size, image_dtype=image_dtype)
        base = int(torch.randint(0, 2**62, (1,), generator=self.generator))

        def make(k: int) -> BatchTransition:
            generator = torch.Generator().manual_seed(base + k)
            return self.sample(batch_size, image_dtype=image_dtype, generator=generator)

        yield from prefetched(make, ahead=queue_size + max(1, threads), threads=max(1, threads))

    def _batch(
        self,
        index: torch.Tensor,
        *,
        augment: bool,
        image_dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ) -> BatchTransition:
        generator = generator or self.generator
        with self._lock:  # only the gathers: `add` may write the ring from another thread
            rows = self._gather(index)
        if augment and self.image_augmentation_function is None:
            shifts = {
                key: (
                    draw_shifts(len(index), generator, self.device),
                    draw_shifts(len(index), generator, self.device),
                )
                for key in self.ranges
            }
        state: dict[str, torch.Tensor] = {}
        next_state: dict[str, torch.Tensor] = {}
        for key in self._frames:
            current = rows[f"state/{key}"].to(self.device, non_blocking=True)
            following = rows[f"next_state/{key}"].to(self.device, non_blocking=True)
            if key in self.ranges:  # uint8 until here; shifted on uint8, converted last, on the device
                if augment and self.image_augmentation_function is None:
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
                {short: column(f"complementary_info/{short}") for short in self._extra}
                if self._extra
                else None
            ),
        )

    def _output(self, images: torch.Tensor, dtype: torch.dtype) -> torch.Tensor | None:
        """Recycled memory for a CPU float32 image batch (None: let the conversion allocate)."""
        if self._pool is None or dtype != torch.float32 or images.device.type != "cpu":
            return None
        return self._pool.empty(tuple(images.shape))

    def _empty(self, images: torch.Tensor) -> Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None:
        """The allocator for DrQ's uint8 intermediates on the CPU (recycled), or None (torch's)."""
        return self._pool.empty if self._pool is not None and images.device.type == "cpu" else None

    def _gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw rows of every column for `index`: dataset rows, and ring rows for added transitions."""
        n = self._frames_n
        from_ring = index >= n
        any_ring = bool(from_ring.any())
        data_rows = (index[~from_ring] if any_ring else index).to(self.storage_device)
        next_rows = _rows(self._next_index, data_rows)
        ring = self._ring
        # Added transitions are numbered oldest first, as LeRobot numbers its ring.
        ring_rows = ((index[from_ring] - n + ring.position - ring.size) % ring.capacity).to(
            self.storage_device
        )

        def pick(dataset: torch.Tensor, ring_name: str, rows: torch.Tensor) -> torch.Tensor:
            part = _rows(dataset, rows, self._pool)
            if any_ring:
                extra = _rows(ring.tensors[ring_name], ring_rows)
                part = _merge(part, extra.to(part.dtype), from_ring)
            return part

        out = {}
        for key, frames in self._frames.items():
            out[f"state/{key}"] = pick(frames, f"state/{key}", data_rows)
            out[f"next_state/{key}"] = pick(frames, f"next_state/{key}", next_rows)
        for name, column in (
            ("action", self._action),
            ("reward", self._reward),
            ("done", self._done),
            ("truncated", self._truncated),
        ):
            out[name] = pick(column, name, data_rows)
        for short, column in self._extra.items():
            out[f"complementary_info/{short}"] = pick(column, f"complementary_info/{short}", data_rows)
        return out

    # ---- writing ------------------------------------------------------------------------------

    def add(
        self,
        state: Mapping[str, torch.Tensor],
        action: torch.Tensor,
        reward: float | torch.Tensor,
        next_state: Mapping[str, torch.Tensor],
        done: bool | torch.Tensor,
        truncated: bool | torch.Tensor,
        complementary_info: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one live transition (LeRobot's `ReplayBuffer.add` signature).

        Images may be float in the buffer's declared range or uint8; they are range-checked
        and stored as uint8. The dataset part is never modified; added transitions live in a
        ring of `capacity` and the oldest is overwritten first.

        Raises:
            RangeMismatchError: an image is not in the buffer's range.
            KeyError: a state key of the buffer is missing.
        """
        rows: dict[str, torch.Tensor] = {}
        for prefix, observation in (("state", state), ("next_state", next_state)):
            for key in self.state_keys:
                if key not in observation:
                    raise KeyError(f"{prefix} lacks {key!r}; the buffer's state keys are {self.state_keys}")
                value = _row(observation[key], self._frames[key], f"{prefix}[{key!r}]")
                if key in self.ranges:
                    if value.dtype != torch.uint8:
                        check_range(value, self.image_range, name=f"{prefix}[{key!r}]")
                    value = to_uint8(value, self.image_range)
                rows[f"{prefix}/{key}"] = value
        rows["action"] = _row(action, self._action, "action")
        rows["reward"] = torch.as_tensor(float(reward))
        rows["done"] = torch.as_tensor(bool(done))
        rows["truncated"] = torch.as_tensor(bool(truncated))
        info = complementary_info or {}
        for short, dataset in self._extra.items():
            rows[f"complementary_info/{short}"] = _row(
                info.get(short, 0.0), dataset, f"complementary_info[{short!r}]"
            ).to(torch.float32)
        with self._lock:
            ring = self._ring
            for name, value in rows.items():
                dtype = (
                    torch.uint8
                    if value.dtype == torch.uint8
                    else (torch.bool if name in ("done", "truncated") else torch.float32)
                )
                ring.allocate(name, value, dtype)[ring.position].copy_(value.to(ring.device))
            ring.position = (ring.position + 1) % ring.capacity
            ring.size = min(ring.size + 1, ring.capacity)

    def to_lerobot_dataset(
        self,
        repo_id: str,
        fps: int = 1,
        root: str | Path | None = None,
        task_name: str = "from_replay_buffer",
    ) -> Any:
        """Write all transitions as a LeRobot dataset (what LeRobot's learner does at checkpoints). Needs LeRobot."""
        from .export import buffer_to_lerobot_dataset

        return buffer_to_lerobot_dataset(self, repo_id=repo_id, fps=fps, root=root, task_name=task_name)


def _row(value: Any, column: torch.Tensor, name: str) -> torch.Tensor:
    """One row shaped like the rows of `column`: leading size-1 dimensions (LeRobot's batch of
    one) are dropped; any other difference is an error (never a reshape that scrambles pixels)."""
    tensor = torch.as_tensor(value).detach().cpu()
    expected = tuple(column.shape[1:])
    while tensor.ndim > len(expected) and tensor.shape[0] == 1:
        tensor = tensor[0]
    if tuple(tensor.shape) != expected:
        raise ValueError(f"{name} has shape {tuple(tensor.shape)}; the buffer holds rows of shape {expected}")
    return tensor


def _rows(tensor: torch.Tensor, rows: torch.Tensor, pool: OutputPool | None = None) -> torch.Tensor:
    """`tensor[rows]` (rows along the first dimension); uint8 rows into recycled memory if `pool`.

    On the CPU, numpy's take: whole-row copies without the GIL, 0.9 ms for 256 rows of
    3x128x128 uint8, where torch's index_select takes 1.3 ms on the main thread and 18 ms on
    any other (the prefetching thread; torch 2.11 with OpenMP), and advanced indexing 3.4 ms.
    """
    if tensor.device.type != "cpu" or tensor.dtype == torch.bfloat16:
        return tensor.index_select(0, rows)
    if pool is not None and tensor.dtype == torch.uint8:
        out = pool.empty((len(rows), *tensor.shape[1:]), torch.uint8)
        np.take(tensor.numpy(), rows.numpy(), axis=0, out=out.numpy(), mode="clip")  # rows are valid
        return out
    return torch.from_numpy(np.take(tensor.numpy(), rows.numpy(), axis=0))


def _merge(data_part: torch.Tensor, ring_part: torch.Tensor, from_ring: torch.Tensor) -> torch.Tensor:
    out = torch.empty((len(from_ring), *data_part.shape[1:]), dtype=data_part.dtype, device=data_part.device)
    mask = from_ring.to(data_part.device)
    out[~mask] = data_part
    out[mask] = ring_part
    return out


def _random_generator() -> torch.Generator:
    generator = torch.Generator()
    generator.seed()  # fresh entropy; pass a seeded generator for reproducible batches
    return generator
