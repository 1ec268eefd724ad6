"""The offline buffer a learner samples from: LeRobot's `ReplayBuffer` interface over a cache.

Frames stay uint8 in the memory-mapped cache (nothing is read until sampled). A batch gathers
uint8 rows on the storage device, moves them to the target device, applies the DrQ shift
there (on uint8: replicate padding and cropping commute with the conversion) and converts
to the declared range last. Transitions are rows of the cache: `next_state` is the row
`next_index[i]` (the next frame of the same episode, or the frame itself at the end).

Live transitions (the LeRobot learner adds human interventions to its offline buffer) go into
a bounded `TransitionStore` next to the read-only dataset part, range-checked and stored as
uint8; with `added_path`, they are checkpointed into that folder like the online buffer's.
"""

from __future__ import annotations

import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from ..cache.reader import CacheFile
from ..cache.sharded import ShardedCache
from ..errors import BufconvError
from ..source.depth import DepthDecoder
from .batch import Batcher, BatchTransition, positions, random_generator
from .columns import CacheColumns, Columns, ShardColumns
from .commits import DEFAULT_COMMIT_INTERVAL_S, Commits
from .lerobot_dataset import buffer_to_lerobot_dataset
from .persist import CheckpointResult, Folder
from .prefetch import batches
from .rows import RowMaker
from .store import Column, Schema, TransitionStore

log = logging.getLogger("bufconv")

DEFAULT_CAPACITY = 100_000  # LeRobot's default offline_buffer_capacity
_COMPLEMENTARY = "complementary_info."


class OfflineBuffer:
    """Transitions of a cache, sampled like LeRobot's `ReplayBuffer` (a drop-in for the learner's offline buffer).

    Use `bufconv.load_or_build` (or `bufconv.open_buffer`) to get one.

    Args:
        cache: The opened cache, or a sharded folder (its shards are mapped when first sampled).
        device: Where batches are delivered; images are converted to float there.
        storage_device: Where frames live ("cpu": memory-mapped from the cache file).
        use_drq: Random-shift augmentation in `sample` (pad 4, as LeRobot).
        capacity: Live transitions `add` keeps before overwriting the oldest.
        image_augmentation_function: Replaces the built-in DrQ shift (applied to float images).
        generator: Randomness for sampling and augmentation (default: freshly seeded).
        status, stale_reasons: What `load_or_build` did, for the caller to see.
        recycle_outputs: On a CPU device, build float batches in memory recycled from batches
            the caller has dropped (5x cheaper than fresh pages; a batch still held is never reused).
        added_path: A folder where `checkpoint()` keeps the added transitions (resumed from it
            if it holds some); None keeps them in memory only.
        commit_interval_s: With `added_path`: seconds between background commits of the added
            transitions (None: only at `checkpoint()`); see `OnlineBuffer`.

    Attributes:
        status: "hit" (fresh cache used), "built" or "rebuilt"; "opened" from `open_buffer`.
        stale_reasons: Why the cache was rebuilt (empty otherwise).
        image_range: 1 or 255: the range image batches come out in.
        state_keys: Keys of `state`/`next_state`.
        image_keys: The image subset of `state_keys` (uint8 pixels with a declared range).
        depth_keys: The depth subset of `state_keys` (SPEC section 15): float32 (B, 1, H, W) in
            `depth_units[key]` ("mm" or "m").
        lost: Added transitions dropped when resuming from `added_path` (see `OnlineBuffer.lost`).
    """

    def __init__(
        self,
        cache: CacheFile | ShardedCache,
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
        added_path: str | os.PathLike[str] | None = None,
        commit_interval_s: float | None = DEFAULT_COMMIT_INTERVAL_S,
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
        self.generator = generator if generator is not None else random_generator()
        self.state_keys: list[str] = list(meta["keys"]["state"])
        self.image_keys: list[str] = list(meta["keys"]["images"])
        ranges = {k: v["output"] for k, v in meta["ranges"].items()}
        if len(set(ranges.values())) > 1:
            raise BufconvError(
                f"{self.path}: image keys declare different ranges {ranges}; bufconv builds one range per cache"
            )
        self.image_range: int = next(iter(ranges.values()), 1)
        self.ranges = ranges
        depth = meta.get("depth") or {}
        self.depth_keys: list[str] = list(meta["keys"].get("depth", []))
        self.depth_units: dict[str, str] = {k: depth[k]["unit"] for k in self.depth_keys}
        self._depth = {k: DepthDecoder(depth[k]) for k in self.depth_keys}
        self._complementary = {
            k[len(_COMPLEMENTARY) :]: k for k in meta["keys"].get("complementary_info", [])
        }
        # column -> tensor name in the cache (or in every shard)
        self._names = {f"state/{k}": k for k in self.state_keys}
        self._names.update({name: name for name in ("action", "reward", "done", "truncated")})
        self._names.update(
            {f"complementary_info/{short}": name for short, name in self._complementary.items()}
        )
        self._data: Columns
        if isinstance(cache, ShardedCache):
            self._data = (
                ShardColumns(cache, self._names)
                if self.storage_device.type == "cpu"
                else ShardColumns.materialized(cache, self._names, self.storage_device)
            )
        else:
            self._data = CacheColumns.of(cache, self._names, self.storage_device)
        self._frames_n = int(meta["frames"])
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1; got {capacity}")
        self._lock = threading.Lock()
        self._batcher = Batcher(
            self.state_keys,
            list(ranges),
            self.image_range,
            self.device,
            image_augmentation_function,
            recycle_outputs,
            self._depth,
        )
        self._store = TransitionStore(capacity, self._added_schema(), self.storage_device)
        self._rows = RowMaker(self.state_keys, self.image_range, self.depth_units)
        self.lost = 0
        self.folder: Folder | None = None
        self.commits: Commits | None = None
        if added_path is not None:
            self._open_added(added_path)
            self.commits = Commits(self.folder, self._lock, commit_interval_s, self.capacity)  # type: ignore[arg-type]
            self.commits.store = self._store
            weakref.finalize(self, self.commits.close)  # the last commit at garbage collection or exit

    def _added_schema(self) -> Schema:
        """Added transitions are stored like the dataset's rows: images uint8, the rest float32
        (depth keys too: float32 in the buffer's unit, as a batch delivers them)."""

        def column(name: str, dtype: str | None = None) -> Column:
            stored, shape = self._data.spec(name)
            return Column(dtype or ("uint8" if stored == torch.uint8 else "float32"), shape)

        frames = {k: column(f"state/{k}") for k in self.state_keys}
        transitions = {name: column(name) for name in self._names if not name.startswith("state/")}
        transitions["done"] = column("done", "bool")
        transitions["truncated"] = column("truncated", "bool")
        return Schema(frames, transitions)

    def _open_added(self, added_path: str | os.PathLike[str]) -> None:
        self.folder = Folder(added_path, "offline-added")
        weakref.finalize(self, self.folder.close)
        # The added rows' depth units, recorded as the online buffer records them (format.md section 10)
        depth = {
            k: {"unit": u, "stored": "float32", "dtype": "float32", "source_unit": u}
            for k, u in self.depth_units.items()
        }
        if not self.folder.exists:
            self.folder.start(self._store, capacity=self.capacity, image_range=self.image_range,
                              state_keys=self.state_keys, image_keys=self.image_keys)  # fmt: skip
            if depth:
                assert self.folder.manifest is not None
                self.folder.manifest["keys"]["depth"] = list(depth)
                self.folder.manifest["depth"] = depth
            return
        store, self.lost, warnings = self.folder.resume(self.capacity, self.storage_device)
        for warning in warnings:
            log.warning("resuming %s: %s", self.folder.path, warning)
        saved = self.folder.manifest or {}
        saved_units = {k: v.get("unit") for k, v in (saved.get("depth") or {}).items()}
        if store is not None and saved_units != self.depth_units:
            self.folder.close()
            raise BufconvError(
                f"{self.folder.path}: holds added depth in {saved_units or 'no unit (no depth keys)'}, "
                f"not {self.depth_units}: the cache was rebuilt in another --depth-unit; move the folder away, "
                "or build the cache in the folder's unit"
            )
        if store is not None and (
            store.schema != self._store.schema or saved.get("image_range") != self.image_range
        ):
            self.folder.close()
            raise BufconvError(
                f"{self.folder.path}: its added transitions do not fit this cache (other keys, shapes or range); "
                "move the folder away, or open the cache they were added to"
            )
        if store is not None:
            self._store = store

    def __repr__(self) -> str:
        return (
            f"OfflineBuffer({str(self.path)!r}, transitions={len(self)}, image_range={self.image_range}, "
            f"status={self.status!r}, device={str(self.device)!r})"
        )

    # ---- size ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return self._frames_n + len(self._store)

    @property
    def dataset_transitions(self) -> int:
        """Transitions that come from the dataset (read-only)."""
        return self._frames_n

    @property
    def capacity(self) -> int:
        """How many live transitions `add` keeps before overwriting the oldest."""
        return self._store.capacity

    # ---- reading ------------------------------------------------------------------------------

    def __getitem__(self, idx: int | slice | Sequence[int] | torch.Tensor) -> BatchTransition:
        """Transitions at `idx` (dataset rows first, then added ones), without augmentation."""
        index = positions(idx, len(self))
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
        if self._data.sorted_rows:  # shards: each shard's rows one run, gathered in place
            index = index.sort().values
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
        return batches(
            self.sample, self.generator, batch_size, async_prefetch, queue_size, image_dtype, threads
        )

    def _batch(
        self,
        index: torch.Tensor,
        *,
        augment: bool,
        image_dtype: torch.dtype,
        generator: torch.Generator | None = None,
    ) -> BatchTransition:
        with self._lock:  # only the gathers: `add` may write the store from another thread
            rows = self._gather(index)
        return self._batcher(
            rows,
            list(self._complementary),
            augment=augment,
            image_dtype=image_dtype,
            generator=generator or self.generator,
        )

    def _gather(self, index: torch.Tensor) -> dict[str, torch.Tensor]:
        """The raw rows of every column for `index`: dataset rows, and added rows after them."""
        n = self._frames_n
        from_store = index >= n
        any_added = bool(from_store.any())
        data_rows = (index[~from_store] if any_added else index).to(self.storage_device)
        order = None
        if self._data.sorted_rows and len(data_rows) > 1 and bool((data_rows[1:] < data_rows[:-1]).any()):
            data_rows, order = torch.sort(data_rows)  # `__getitem__` in any order: gathered sorted, put back
        next_rows = self._data.next_rows(data_rows)
        added = self._store.gather(index[from_store] - n) if any_added else {}
        pool = self._batcher.pool if order is None else None
        out = {}
        for name in self._names:
            part = _unsort(self._data.take(name, data_rows, pool), order)
            if name.startswith("state/"):
                key = name[len("state/") :]
                following = _unsort(self._data.take(name, next_rows, pool), order)
                if any_added:
                    if key in self._depth:  # the dataset's stored depth decoded first: added rows are float32
                        part, following = self._depth[key](part), self._depth[key](following)
                    following = _merge(following, added[f"next_state/{key}"].to(following.dtype), from_store)
                out[f"next_state/{key}"] = following
            if any_added:
                part = _merge(part, added[name].to(part.dtype), from_store)
            out[name] = part
        return out

    # ---- writing ------------------------------------------------------------------------------

    def add(
        self,
        state: Mapping[str, torch.Tensor],
        action: torch.Tensor,
        reward: float | torch.Tensor,
        next_state: Mapping[str, torch.Tensor] | None,
        done: bool | torch.Tensor,
        truncated: bool | torch.Tensor,
        complementary_info: Mapping[str, Any] | None = None,
    ) -> None:
        """Add one live transition (LeRobot's `ReplayBuffer.add` signature).

        Images may be float in the buffer's declared range or uint8; they are range-checked
        and stored as uint8. The dataset part is never modified; added transitions are kept
        up to `capacity` and the oldest is overwritten first.

        Raises:
            RangeMismatchError: an image is not in the buffer's range.
            KeyError: a state key of the buffer is missing.
        """
        with self._lock:
            self._rows.add(
                self._store, state, action, reward, next_state, done, truncated, complementary_info
            )

    def checkpoint(self) -> CheckpointResult:
        """Commit the transitions added since the last checkpoint to `added_path` (the dataset part
        is the cache: never rewritten). See `OnlineBuffer.checkpoint`.

        Raises:
            BufconvError: the buffer was opened without `added_path`.
        """
        if self.commits is None:
            raise BufconvError(
                "this OfflineBuffer has no added_path to checkpoint its added transitions into"
            )
        result = self.commits.commit()
        assert result is not None
        return result

    def close(self) -> None:
        """Commit what is left (with background commits) and release `added_path` (its lock). Idempotent."""
        if self.commits is not None:
            self.commits.close()
        if self.folder is not None:
            self.folder.close()

    def to_lerobot_dataset(
        self,
        repo_id: str,
        fps: int = 1,
        root: str | Path | None = None,
        task_name: str = "from_replay_buffer",
    ) -> Any:
        """Write all transitions as a LeRobot dataset (what LeRobot's learner does at checkpoints). Needs LeRobot."""
        return buffer_to_lerobot_dataset(self, repo_id=repo_id, fps=fps, root=root, task_name=task_name)


def _unsort(rows: torch.Tensor, order: torch.Tensor | None) -> torch.Tensor:
    """Rows gathered at sorted positions, put back where `order` says they came from."""
    if order is None:
        return rows
    out = torch.empty_like(rows)
    out[order.to(rows.device)] = rows
    return out


def _merge(data_part: torch.Tensor, added_part: torch.Tensor, from_added: torch.Tensor) -> torch.Tensor:
    out = torch.empty((len(from_added), *data_part.shape[1:]), dtype=data_part.dtype, device=data_part.device)
    mask = from_added.to(data_part.device)
    out[~mask] = data_part
    out[mask] = added_part.to(data_part.device)
    return out
