"""The online buffer: LeRobot's `ReplayBuffer` for live transitions, uint8, range-checked, checkpointed.

    online = bufconv.OnlineBuffer(capacity=100_000, image_range=1, path="outputs/online_buffer")
    online.add(state, action, reward, next_state, done, truncated, complementary_info)
    batch = online.sample(256)
    online.checkpoint()          # commits what is new now, durable on return

Images are stored once, as uint8, with a declared range (SPEC section 11); `next_state` is a
link to the next frame when it is one (`store.py`). With a `path`, the buffer lives in that
folder too: every `commit_interval_s` (default 1 s) a background thread appends what is new as a
segment and replaces the manifest atomically (`commits.py`), so a process killed at any moment
loses at most the last interval; a new `OnlineBuffer` on the same folder resumes what was committed.

Depth keys (SPEC section 15: LeRobot's `<cam>_depth`, rows (1, H, W)) are stored as float32 in
the buffer's `depth_unit`, checked against it on `add` (`check_unit`), DrQ-shifted with their
camera and delivered as float32 (B, 1, H, W) in that unit; the folder's manifest records the unit.
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

from ..errors import BufconvError, CacheError
from ..options import DEFAULT_DEPTH_UNIT, validate_depth_unit, validate_range
from ..source.depth import DepthDecoder
from .batch import Batcher, BatchTransition, positions, random_generator
from .commits import DEFAULT_COMMIT_INTERVAL_S, Commits
from .lerobot_dataset import buffer_to_lerobot_dataset
from .persist import CheckpointResult, Folder
from .prefetch import batches
from .rows import RowMaker
from .store import Schema, TransitionStore, schema_for

log = logging.getLogger("bufconv")

DEFAULT_ONLINE_CAPACITY = 100_000  # LeRobot's default online_buffer_capacity
IMAGE_PREFIX = "observation.image"  # LeRobot's OBS_IMAGE: keys of images (DrQ-shifted, stored uint8)
DEPTH_SUFFIXES = ("_depth", ".depth")  # LeRobot's depth cameras: `<cam>_depth` beside `<cam>`
_EMPTY = "Cannot sample from an empty buffer. Add transitions first."  # LeRobot's message


class OnlineBuffer:
    """Live transitions for the learner, as LeRobot's `ReplayBuffer` holds them, in a quarter of the bytes.

    Args:
        capacity: Transitions kept; past it the oldest goes first (LeRobot's `online_buffer_capacity`).
        image_range: 1 or 255: the range images are added in and sampled in.
        path: A folder to checkpoint into and resume from (None: memory only).
        state_keys: Keys of `state`/`next_state` to keep (default: those of the first transition).
        device: Where batches are delivered; images are converted to float there.
        storage_device: Where transitions are stored.
        use_drq: Random-shift augmentation in `sample` (pad 4, as LeRobot).
        image_augmentation_function: Replaces the built-in DrQ shift (applied to float images).
        generator: Randomness for sampling (default: freshly seeded).
        resume: With a `path` that holds a buffer: resume it (True), or refuse to start over it (False).
        recycle_outputs: CPU batches over recycled memory (see `Batcher`).
        read_only: Open the folder's last checkpoint without locking or changing the folder
            (to export or inspect while a learner runs); `checkpoint` is refused.
        commit_interval_s: With a `path`: seconds between background commits of what is new
            (`add` never waits for the disk); None commits only at `checkpoint()` and keeps
            nothing added after the last one if the process dies.
        depth_unit: "mm" (LeRobot's default `depth_output_unit`) or "m": the unit depth keys are
            added and sampled in (`add` refuses depth that contradicts it: `UnitMismatchError`).
        depth_keys: The depth keys among the state keys (default: those named like LeRobot's
            depth cameras, `<cam>_depth`, whose rows are (1, H, W); see `is_depth_key`). A resumed
            buffer's come from its folder.

    Attributes:
        status: "new" or "resumed".
        depth_keys: The depth subset of `state_keys`: float32 (B, 1, H, W) in `depth_units[key]`
            (known once the first transition is added, or resumed).
        lost: Transitions dropped on resume: added after the last checkpoint and half-written
            when the process died, or in a damaged segment (0 after a clean resume).
        warnings: What resuming found wrong (also logged).
        commits: The folder's commits (`commits.last`: the last one that wrote rows; `commits.error`:
            a background commit's failure, until one succeeds again); None without a path.

    Raises:
        ValueError: capacity < 1 (LeRobot's message), an image range other than 1 or 255, a
            depth unit other than "mm" or "m", or a commit interval <= 0.
        CacheError: the folder is unusable, in use by another process, or holds another buffer
            (other keys, range or depth unit).
    """

    def __init__(
        self,
        capacity: int = DEFAULT_ONLINE_CAPACITY,
        image_range: int = 1,
        path: str | os.PathLike[str] | None = None,
        state_keys: Sequence[str] | None = None,
        device: str | torch.device = "cpu",
        storage_device: str | torch.device = "cpu",
        use_drq: bool = True,
        *,
        image_augmentation_function: Callable[[torch.Tensor], torch.Tensor] | None = None,
        generator: torch.Generator | None = None,
        resume: bool = True,
        recycle_outputs: bool = True,
        read_only: bool = False,
        commit_interval_s: float | None = DEFAULT_COMMIT_INTERVAL_S,
        depth_unit: str = DEFAULT_DEPTH_UNIT,
        depth_keys: Sequence[str] | None = None,
    ) -> None:
        if capacity <= 0:
            raise ValueError("Capacity must be greater than 0.")
        self._capacity = int(capacity)
        self.image_range = validate_range(image_range)
        self.depth_unit = validate_depth_unit(depth_unit)
        if isinstance(depth_keys, str):
            raise TypeError("depth_keys must be a sequence of strings, not one string")
        self.depth_keys: list[str] = list(depth_keys) if depth_keys is not None else []
        self._explicit_depth = depth_keys is not None
        self._depth_of: set[str] = set(self.depth_keys)  # the first transition's depth keys (`_schema_from`)
        self.device = torch.device(device)
        self.storage_device = torch.device(storage_device)
        self.use_drq = use_drq
        self.image_augmentation_function = image_augmentation_function
        self.recycle_outputs = recycle_outputs
        self.generator = generator if generator is not None else random_generator()
        self.state_keys: list[str] = list(state_keys) if state_keys is not None else []
        self._explicit_keys = state_keys is not None
        self._store: TransitionStore | None = None
        self._batcher: Batcher | None = None
        self._rows: RowMaker | None = None
        self._lock = threading.Lock()
        self.status = "new"
        self.lost = 0
        self.warnings: list[str] = []
        self.folder: Folder | None = None
        self.commits: Commits | None = None
        if path is not None:
            self.folder = Folder(path, "online", read_only=read_only)
            weakref.finalize(self, self.folder.close)
            if self.folder.exists:
                if not resume:
                    self.folder.close()
                    raise CacheError(
                        f"{self.folder.path}: already holds an online buffer; resume it (resume=True) or choose another folder",
                        path=self.folder.path,
                    )
                self._resume()
            elif read_only:
                raise CacheError(
                    f"{self.folder.path}: holds no online buffer (no manifest.json)", path=self.folder.path
                )
            else:
                self.folder.start(None, capacity=self._capacity, image_range=self.image_range,
                                  state_keys=self.state_keys, image_keys=[])  # fmt: skip
            interval = None if read_only else commit_interval_s
            self.commits = Commits(self.folder, self._lock, interval, self._capacity)
            self.commits.store = self._store
            # At garbage collection or interpreter exit: the last commit, then the folder's lock.
            weakref.finalize(self, self.commits.close)

    def _resume(self) -> None:
        assert self.folder is not None
        store, self.lost, self.warnings = self.folder.resume(self._capacity, self.storage_device)
        manifest = self.folder.manifest or {}
        if int(manifest.get("image_range", self.image_range)) != self.image_range:
            self.folder.close()
            raise CacheError(
                f"{self.folder.path}: holds images in range {manifest['image_range']}, not {self.image_range}; "
                f"open it with image_range={manifest['image_range']}, or choose another folder",
                path=self.folder.path,
            )
        saved_keys = list(manifest.get("keys", {}).get("state", []))
        if self._explicit_keys and saved_keys and saved_keys != self.state_keys:
            self.folder.close()
            raise CacheError(
                f"{self.folder.path}: holds state keys {saved_keys}, not {self.state_keys}; choose another folder",
                path=self.folder.path,
            )
        if saved_keys:
            self.state_keys = saved_keys
        self._resume_depth(manifest)
        for warning in self.warnings:
            log.warning("resuming %s: %s", self.folder.path, warning)
        if store is not None:
            self._use(store)
            self._rows = RowMaker(self.state_keys, self.image_range, self.depth_units)
        self.status = "resumed"

    def _resume_depth(self, manifest: Mapping[str, Any]) -> None:
        """The folder's depth keys (none in a folder written before depth keys existed), in the unit asked."""
        assert self.folder is not None
        saved = dict(manifest.get("depth") or {})
        other = sorted({str(entry["unit"]) for entry in saved.values()} - {self.depth_unit})
        if other:
            self.folder.close()
            raise CacheError(
                f"{self.folder.path}: holds depth keys {sorted(saved)} in {other[0]}, not {self.depth_unit}; "
                f"open it with depth_unit={other[0]!r}, or choose another folder",
                path=self.folder.path,
            )
        if manifest.get("schema") and self._explicit_depth and sorted(saved) != sorted(self.depth_keys):
            self.folder.close()
            raise CacheError(
                f"{self.folder.path}: holds depth keys {sorted(saved)}, not {sorted(self.depth_keys)}; "
                "choose another folder",
                path=self.folder.path,
            )
        if manifest.get("schema"):
            self.depth_keys = [k for k in self.state_keys if k in saved]

    @property
    def depth_units(self) -> dict[str, str]:
        """The unit of each depth key (all in `depth_unit`)."""
        return {key: self.depth_unit for key in self.depth_keys}

    def _use(self, store: TransitionStore) -> None:
        self._store = store
        if self.commits is not None:
            self.commits.store = store
        self._batcher = Batcher(
            self.state_keys,
            [k for k in self.state_keys if store.schema.frames[k].dtype == "uint8"],
            self.image_range,
            self.device,
            self.image_augmentation_function,
            self.recycle_outputs,
            depth={k: DepthDecoder(depth_entry(self.depth_unit)) for k in self.depth_keys},
        )

    def __repr__(self) -> str:
        where = f", path={str(self.folder.path)!r}" if self.folder else ""
        return f"OnlineBuffer(transitions={len(self)}, capacity={self.capacity}, image_range={self.image_range}{where})"

    # ---- size ---------------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._store) if self._store is not None else 0

    @property
    def capacity(self) -> int:
        return self._capacity

    @property
    def image_keys(self) -> list[str]:
        return list(self._batcher.image_keys) if self._batcher is not None else []

    @property
    def path(self) -> Path | None:
        return self.folder.path if self.folder is not None else None

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
        """Add one transition (LeRobot's `ReplayBuffer.add`; a leading batch dimension of 1 is dropped).

        Images (keys starting with "observation.image") may be float in the declared range or
        uint8; they are range-checked and stored as uint8. Depth keys are checked against
        `depth_unit` and stored as float32 (never range-checked). `next_state=None` (LeRobot's
        `optimize_memory` callers) means the next transition's state, or the state itself when
        the transition ends an episode.

        Raises:
            RangeMismatchError: an image is not in the declared range (the buffer is unchanged).
            UnitMismatchError: depth in the other unit, or negative (the buffer is unchanged).
            KeyError: a state key of the buffer is missing.
            ValueError: a row's shape differs from the buffer's.
        """
        with self._lock:
            if self._store is None:
                schema = self._schema_from(state, action, complementary_info)
                store = TransitionStore(self._capacity, schema, self.storage_device)
                depth_keys = self.depth_keys
                self.depth_keys = [k for k in self.state_keys if k in self._depth_of]
                try:
                    rows = RowMaker(self.state_keys, self.image_range, self.depth_units)
                    rows.add(store, state, action, reward, next_state, done, truncated, complementary_info)
                except BaseException:
                    self.depth_keys = depth_keys  # refused: nothing decided
                    raise
                self._use(store)  # only once the first transition was accepted
                self._rows = rows
                if self.folder is not None and self.folder.manifest is not None:
                    self.folder.manifest["keys"] = {
                        "state": self.state_keys, "images": self.image_keys, "depth": self.depth_keys,
                    }  # fmt: skip
                    self.folder.manifest["depth"] = {k: depth_entry(self.depth_unit) for k in self.depth_keys}
                return
            assert self._rows is not None
            self._rows.add(
                self._store, state, action, reward, next_state, done, truncated, complementary_info
            )

    def _schema_from(
        self, state: Mapping[str, torch.Tensor], action: torch.Tensor, info: Mapping[str, Any] | None
    ) -> Schema:
        """The columns, from the first transition (as LeRobot allocates its storage)."""
        if not self._explicit_keys:
            self.state_keys = list(state)
        rows = {}
        for key in self.state_keys:
            if key not in state:
                raise KeyError(f"state lacks {key!r}; the buffer's state keys are {self.state_keys}")
            rows[key] = _squeezed(torch.as_tensor(state[key]))
        if self._explicit_depth:
            for key in self.depth_keys:
                if key not in rows:
                    raise KeyError(f"depth key {key!r} is not among the state keys {self.state_keys}")
                if rows[key].ndim != 3 or rows[key].shape[0] != 1:
                    raise ValueError(
                        f"state[{key!r}] has shape {tuple(rows[key].shape)}; a depth key's rows are (1, H, W)"
                    )
            self._depth_of = set(self.depth_keys)
        else:
            self._depth_of = {k for k, v in rows.items() if is_depth_key(k, tuple(v.shape))}
        images = {
            k
            for k, v in rows.items()
            if k.startswith(IMAGE_PREFIX) and v.ndim == 3 and k not in self._depth_of
        }
        complementary = {k: _squeezed(torch.as_tensor(v)) for k, v in (info or {}).items()}
        return schema_for(rows, _squeezed(torch.as_tensor(action)), images, complementary)

    def checkpoint(self) -> CheckpointResult:
        """Commit what was added since the last commit to the buffer's folder; durable on return.

        Writes one segment with the new frames and transitions (its cost grows with them, not
        with the buffer) and then replaces the manifest atomically: the checkpoint lands whole,
        or the previous one stands. Segments the ring has wrapped past are deleted. With
        background commits, this commits only the tail since the last one.

        Raises:
            BufconvError: the buffer has no `path`.
            CacheError: the folder could not be written (the previous checkpoint stands).
        """
        if self.commits is None:
            raise BufconvError("this OnlineBuffer has no path to checkpoint into; create it with path=FOLDER")
        result = self.commits.commit()
        assert result is not None
        return result

    def close(self) -> None:
        """Commit what is left (with background commits) and release the folder (its lock); the
        buffer stays usable in memory, and a later `checkpoint()` takes the folder again. Idempotent."""
        if self.commits is not None:
            self.commits.close()
        if self.folder is not None:
            self.folder.close()

    def to_lerobot_dataset(
        self,
        repo_id: str,
        fps: int = 1,
        root: str | os.PathLike[str] | None = None,
        task_name: str = "from_replay_buffer",
    ) -> Any:
        """Write every transition as a LeRobot dataset (LeRobot's `ReplayBuffer.to_lerobot_dataset`;
        what `bufconv export` writes). Needs LeRobot.

        Raises:
            ValueError: the buffer is empty (LeRobot's message).
        """
        return buffer_to_lerobot_dataset(self, repo_id=repo_id, fps=fps, root=root, task_name=task_name)

    # ---- reading ------------------------------------------------------------------------------

    def __getitem__(self, idx: int | slice | Sequence[int] | torch.Tensor) -> BatchTransition:
        """Transitions at `idx` (0 = the oldest kept, as LeRobot numbers its ring), without augmentation."""
        index = positions(idx, len(self))
        return self._batch(index, augment=False, image_dtype=torch.float32, generator=self.generator)

    def sample(
        self,
        batch_size: int,
        *,
        image_dtype: torch.dtype = torch.float32,
        generator: torch.Generator | None = None,
    ) -> BatchTransition:
        """A random batch, uniform over the transitions, DrQ-shifted if `use_drq` (LeRobot's `sample`).

        Every transition can be drawn, the newest included (LeRobot's `optimize_memory` never
        draws its newest), except a newest one still waiting for its next frame.

        Raises:
            RuntimeError: the buffer is empty (LeRobot's message).
        """
        generator = generator or self.generator
        with self._lock:
            if self._store is None or len(self._store) == 0:
                raise RuntimeError(_EMPTY)
            n = len(self._store) - (1 if self._store.newest_is_open and len(self._store) > 1 else 0)
        batch_size = min(batch_size, len(self))
        index = torch.randint(0, n, (batch_size,), generator=generator)
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
        """An endless iterator of batches (LeRobot's signature; see `OfflineBuffer.get_iterator`)."""
        return batches(
            self.sample, self.generator, batch_size, async_prefetch, queue_size, image_dtype, threads
        )

    def _batch(
        self, index: torch.Tensor, *, augment: bool, image_dtype: torch.dtype, generator: torch.Generator
    ) -> BatchTransition:
        with self._lock:  # only the gathers: `add` may write the rings from another thread
            if self._store is None:
                raise RuntimeError(_EMPTY)
            rows = self._store.gather(index)
            store, batcher = self._store, self._batcher
        assert batcher is not None
        return batcher(
            rows, store.schema.complementary, augment=augment, image_dtype=image_dtype, generator=generator
        )


def is_depth_key(key: str, shape: Sequence[int]) -> bool:
    """Whether a state key is a depth camera by LeRobot's naming: `<cam>_depth` (or `<cam>.depth`)
    with rows of one channel, (1, H, W). LeRobot's policies declare depth as such a VISUAL feature."""
    return key.endswith(DEPTH_SUFFIXES) and len(shape) == 3 and int(shape[0]) == 1


def depth_entry(unit: str) -> dict[str, Any]:
    """The manifest's `depth` entry of a depth key: float32 rows in `unit` (as a cache's float32 depth)."""
    return {"unit": unit, "stored": "float32", "dtype": "float32", "source_unit": unit}


def _squeezed(tensor: torch.Tensor) -> torch.Tensor:
    """LeRobot's `squeeze(0)`: a leading batch dimension of 1 dropped."""
    return tensor[0] if tensor.ndim > 0 and tensor.shape[0] == 1 else tensor
