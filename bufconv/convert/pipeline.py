"""The build pipeline: a LeRobot dataset in, a sealed `offline_buffer.pt` out.

    ensure()           lock, re-check freshness (`cache.freshness`), write the cache if needed

The public entry point, `build` (`bufconv build`), is `convert/build.py`: it calls `ensure` for
one file, or `shard_build.build_sharded` for a folder of shards.

Writing streams: the cache file is laid out first, numeric columns are copied in, and every
image tensor is filled in place by decoding units (one per video file, or per part of one when
several workers share a file), in this process or in worker processes. Peak memory is the
frames being written, never a float copy or a second copy of them.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..cache import fingerprint as fp
from ..cache.freshness import Freshness, Request, check_freshness
from ..cache.lock import locked
from ..cache.reader import CacheFile, TensorSpec, read_cache
from ..cache.writer import CacheWriter, remove_stale_temps
from ..errors import CacheError, DatasetError, StaleCacheError, unwritable_folder
from ..source.actions import action_facts
from ..source.dataset import ACTION_KEY, DONE_KEY, REWARD_KEY, Selection, SourceDataset
from ..version import __version__
from .plan import plan_units, stored_chw, stored_dtype, worker_processes
from .units import run_here, run_unit
from .workers import WorkerPool

log = logging.getLogger("bufconv")

Progress = Callable[[int], None]
"""Receives the frames decoded of one camera; `progress.phase(name)`, if it has one, the phase."""

#: The file name a cache gets in a folder given as the output.
DEFAULT_CACHE_NAME = "offline_buffer.pt"


@dataclass(frozen=True)
class BuildResult:
    """What `build` (or `ensure`) did.

    `status` is "hit" | "built" | "rebuilt", the words of `load_or_build` and `bufconv build --json`
    (SPEC section 7): "hit" (already up to date, nothing decoded), "built" (there was no cache), or
    "rebuilt" (there was a stale one: `reasons` say why).
    """

    path: Path
    status: str
    frames: int
    episodes: int
    seconds: float
    file_bytes: int
    payload_bytes: int
    """Bytes of all image tensors (uint8 pixels, and depth keys' int16/float32 values)."""
    ranges: dict[str, int]
    fingerprint: str
    reasons: list[str] = field(default_factory=list)
    depth_units: dict[str, str] = field(default_factory=dict)
    """Per depth key, the unit its batches come out in ("mm" or "m")."""
    cache: CacheFile | None = field(default=None, repr=False, compare=False)
    """The cache this result describes, opened (what `load_or_build` serves)."""

    @property
    def frames_per_second(self) -> float:
        return self.frames / self.seconds if self.seconds > 0 else math.inf

    def to_json(self) -> dict[str, Any]:
        """What `bufconv build --json` prints: `status` ("hit", "built" or "rebuilt", with the `reasons`)."""
        return {
            "status": self.status,
            "reasons": list(self.reasons),
            "path": str(self.path),
            "frames": self.frames,
            "episodes": self.episodes,
            "seconds": round(self.seconds, 3),
            "file_bytes": self.file_bytes,
            "payload_bytes": self.payload_bytes,
            "ranges": {key: {"storage": "uint8", "output": value} for key, value in self.ranges.items()},
            **({"depth_units": dict(self.depth_units)} if self.depth_units else {}),
            "fingerprint": self.fingerprint,
        }


def ensure(
    request: Request,
    path: str | os.PathLike[str],
    *,
    force: bool = False,
    on_stale: str = "rebuild",
    progress: Progress | None = None,
    verify_payload: bool = True,
    lock_timeout: float | None = None,
    known: fp.Known | None = None,
    reproducible: bool = False,
) -> BuildResult:
    """Make `path` a fresh cache for `request`, building only if needed.

    A fresh cache is detected without taking the lock. Otherwise the lock is taken, freshness
    is checked again (a concurrent builder may just have finished), and the cache is written.

    Args:
        known: Source digests taken earlier (`Fingerprint.known()`), reused for files whose
            size and mtime are unchanged (a sharded build hashes a video shared by its shards once).
        reproducible: Record as `created` the newest modification time of the source files
            instead of the time of the build, so the file's bytes depend on its inputs only (the
            shards of a sharded cache: the same bytes from any process, node or day).

    Raises:
        StaleCacheError: the cache exists but is stale, and `on_stale` is "error".
        CacheError: the destination is not writable, or writing failed.
        DecodeError: a video or image could not be decoded.
    """
    if on_stale not in ("rebuild", "error"):
        raise ValueError(f"on_stale must be 'rebuild' or 'error'; got {on_stale!r}")
    path = cache_file(path)
    started = time.perf_counter()
    if not force:
        _phase(progress, "hashing")
        state = check_freshness(request, path, verify_payload=verify_payload, known=known)
        if state.fresh:
            _clear_debris(path)
            return _result(path, "hit", started, state, state.cache)
        known = state.fingerprint.known()
    with _parent_folder(path), locked(path, timeout=lock_timeout):
        remove_stale_temps(path)
        _phase(progress, "hashing")
        # Again under the lock: a concurrent builder may just have written a fresh cache. The
        # source digests just taken are reused; a forced rebuild skips the old payload checksums.
        state = check_freshness(request, path, verify_payload=verify_payload and not force, known=known)
        if state.fresh and not force:
            return _result(path, "hit", started, state, state.cache)
        if state.exists and not state.fresh and on_stale == "error":
            raise StaleCacheError(
                f"{path}: the cache is stale ({'; '.join(state.reasons)}); rebuild it (on_stale='rebuild' or bufconv build --force)",
                path=path,
                reasons=state.reasons,
            )
        if state.exists and not state.fresh:
            log.warning("rebuilding %s: %s", path, "; ".join(state.reasons))
        # Unmap the old cache before replacing it: unmapped last, after the replace, it would
        # free the old file's pages and blocks here (~80 ms per 400 MB), not in the background.
        state = replace(state, cache=None)
        _write(request, path, state.fingerprint, progress, created_from_sources=reproducible)
        built = read_cache(path, verify_payload=False)  # still under the lock: the file just written
    return _result(path, "rebuilt" if state.exists else "built", started, state, built)


def cache_file(output: str | os.PathLike[str]) -> Path:
    """The cache file `output` names: an existing folder, or a path ending in a separator, means
    `<folder>/offline_buffer.pt`."""
    path = Path(output).expanduser().absolute()
    if path.is_dir() or os.fspath(output).endswith((os.sep, "/")):
        return path / DEFAULT_CACHE_NAME
    return path


def _clear_debris(path: Path) -> None:
    """Remove what a killed builder of `path` left (its temporary file, its lock file), unless a
    live builder holds the lock or the folder is read-only. Costs a directory listing when
    there is nothing to remove."""
    if not any(path.parent.glob(f".{glob.escape(path.name)}.*")):
        return
    with contextlib.suppress(CacheError), locked(path, timeout=0):
        remove_stale_temps(path)


def _phase(progress: Progress | None, name: str) -> None:
    """Tell a progress display which phase the build is in ("hashing", "decoding", "writing")."""
    phase = getattr(progress, "phase", None)
    if phase is not None:
        phase(name)


@contextlib.contextmanager
def _parent_folder(path: Path) -> Iterator[None]:
    """Create the cache's missing parent folders; remove them again if the build fails."""
    missing = []
    folder = path.parent
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise CacheError(
            f"{path.parent}: cannot be created, {folder} is a file, not a folder; "
            "choose another output path with -o/--output",
            path=path.parent,
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable_folder(path.parent, e) from e
    try:
        yield
    except BaseException:
        for created in missing:  # deepest first; only if still empty
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


class _ProgressBar:
    """The progress line of `bufconv build` on stderr: the phase (reading metadata, hashing the
    source files, decoding, writing), and the frames decoded so far, counted as the summary
    counts them (a frame of two cameras is one frame)."""

    def __init__(self) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=None, desc="reading metadata", unit="frame", leave=False, dynamic_ncols=True)
        self.cameras = 1
        self.decoded = 0
        """Frames decoded, summed over cameras."""

    def start(self, request: Request) -> None:
        sel = request.selection
        self.cameras = max(1, len(sel.image_keys))
        self.bar.total = sum(request.source.episodes[e].length for e in sel.episodes)
        self.bar.refresh()

    def phase(self, name: str) -> None:
        self.bar.set_description_str(name)

    def __call__(self, frames: int) -> None:
        """`frames` of one camera were decoded."""
        self.decoded += frames
        self.bar.update(self.decoded // self.cameras - self.bar.n)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.close()


@contextlib.contextmanager
def _progress_bar(request: Request) -> Iterator[_ProgressBar]:
    """The progress bar of a build whose request is already prepared (`load_or_build`'s)."""
    with _ProgressBar() as bar:
        bar.start(request)
        yield bar


def _result(
    path: Path, status: str, started: float, state: Freshness, cache: CacheFile | None
) -> BuildResult:
    assert cache is not None
    meta = cache.meta
    payload = payload_bytes(meta)
    return BuildResult(
        path=path,
        status=status,
        frames=int(meta["frames"]),
        episodes=len(meta["episodes"]),
        seconds=time.perf_counter() - started,
        file_bytes=path.stat().st_size,
        payload_bytes=payload,
        ranges={k: v["output"] for k, v in meta["ranges"].items()},
        fingerprint=meta["fingerprint"],
        reasons=state.reasons if status == "rebuilt" else [],
        depth_units={k: v["unit"] for k, v in (meta.get("depth") or {}).items()},
        cache=cache,
    )


_ITEMSIZE = {"uint8": 1, "int16": 2, "float32": 4}


def payload_bytes(meta: Any) -> int:
    """Bytes of a header's image tensors: uint8 pixels, and depth keys' stored values."""
    keys = [*meta["keys"]["images"], *meta["keys"].get("depth", [])]
    return sum(
        math.prod(meta["tensors"][k]["shape"]) * _ITEMSIZE.get(meta["tensors"][k]["dtype"], 1) for k in keys
    )


# ---- writing --------------------------------------------------------------------------------


def _write(
    request: Request,
    path: Path,
    fingerprint: fp.Fingerprint,
    progress: Progress | None,
    *,
    created_from_sources: bool = False,
) -> None:
    source, sel, options = request.source, request.selection, request.options
    lengths = [source.episodes[e].length for e in sel.episodes]
    created = _sources_time(fingerprint) if created_from_sources else datetime.now(timezone.utc)
    # Workers start first, so they import while this process reads the parquet data.
    processes = worker_processes(source, sel, options)
    with WorkerPool(processes) if processes else contextlib.nullcontext() as pool:
        _write_with(request, path, fingerprint, progress, lengths, pool, created)


def _sources_time(fingerprint: fp.Fingerprint) -> datetime:
    """The newest modification time of the files a fingerprint hashed (a reproducible `created`)."""
    newest = max((stat[1] for stat in fingerprint.stats.values()), default=0)
    return datetime.fromtimestamp(newest // 1_000_000_000, timezone.utc)


def _write_with(
    request: Request,
    path: Path,
    fingerprint: fp.Fingerprint,
    progress: Progress | None,
    lengths: list[int],
    pool: WorkerPool | None,
    created: datetime,
) -> None:
    source, sel, options = request.source, request.selection, request.options
    numeric = [
        *sel.numeric_keys,
        ACTION_KEY,
        REWARD_KEY,
        *([DONE_KEY] if sel.has_done else []),
        *sel.complementary_keys,
    ]
    columns = source.read_columns(sel.episodes, [*numeric, "timestamp", "frame_index", "episode_index"])
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    frames = int(sum(lengths))
    derived = _transitions(columns, sel, starts, lengths, source, frames)

    specs = [
        TensorSpec(k, getattr(torch, stored_dtype(source, k)), (frames, *stored_chw(source, k, options)))
        for k in sel.image_keys
    ]
    stored: dict[str, np.ndarray] = {
        k: columns[k] for k in [*sel.numeric_keys, ACTION_KEY, *sel.complementary_keys]
    }
    stored.update(derived)
    stored["frame_index"] = columns["frame_index"].astype(np.int64).reshape(frames)
    stored["timestamp"] = columns["timestamp"].astype(np.float32).reshape(frames)
    specs += [TensorSpec(name, _torch_dtype(a.dtype), tuple(a.shape)) for name, a in stored.items()]

    meta = {
        "bufconv_version": __version__,
        "created": created.isoformat(timespec="seconds"),
        "fingerprint": fingerprint.value,
        "fingerprint_inputs": fingerprint.inputs,
        "source_stats": fingerprint.stats,
        "source": {
            "root": str(source.root),
            "repo_id": source.repo_id,
            "codebase_version": source.version,
            "fps": source.fps,
            "revision": source.revision(),
        },
        "keys": {
            "state": list(sel.state_keys),
            "images": list(sel.rgb_keys),
            "action": ACTION_KEY,
            "complementary_info": list(sel.complementary_keys),
            **({"depth": list(sel.depth_keys)} if sel.depth_keys else {}),
        },
        "ranges": {k: {"storage": "uint8", "output": options.image_range} for k in sel.rgb_keys},
        # Present only with depth keys: caches without them keep the header they always had.
        **(
            {
                "depth": {
                    k: source.features[k].depth_storage().entry(options.depth_unit) for k in sel.depth_keys
                }
            }
            if sel.depth_keys
            else {}
        ),
        "crop": {k: list(c) for k, c in options.crop},
        "resize": None if options.resize is None else list(options.resize),
        "actions": action_facts(columns[ACTION_KEY], source.features[ACTION_KEY].names),
        "episodes": [
            {"episode_index": int(e), "start": int(s), "length": int(n)}
            for e, s, n in zip(sel.episodes, starts, lengths, strict=True)
        ],
        "frames": frames,
        "done_source": DONE_KEY if sel.has_done else "episode_end",
    }
    with CacheWriter(path, specs) as writer:
        for name, values in stored.items():
            writer.write(name, values)
        units = plan_units(
            source,
            sel,
            options,
            writer.target,
            starts,
            columns["timestamp"],
            processes=pool.size if pool else 0,
        )
        checksums: dict[str, str] = {}
        _phase(progress, "decoding")
        if pool is not None:
            pool.run(units, run_unit, (lambda _unit, n: progress(n)) if progress else None)
        else:
            checksums = run_here(units, (lambda _episode, n: progress(n)) if progress else None)
        _phase(progress, "writing")
        writer.seal(meta, checksums)
        writer.commit()


def _transitions(
    columns: dict[str, np.ndarray],
    sel: Selection,
    starts: np.ndarray,
    lengths: Sequence[int],
    source: SourceDataset,
    frames: int,
) -> dict[str, np.ndarray]:
    """reward, done, truncated, episode_index and next_index per frame (SPEC section 7)."""
    reward = columns[REWARD_KEY].astype(np.float32)
    if reward.size != frames:
        raise DatasetError(
            f"{source.root}: {REWARD_KEY!r} has {reward.size // max(frames, 1)} values per frame; expected one",
            path=source.root,
        )
    reward = reward.reshape(frames)
    last = np.zeros(frames, dtype=bool)
    last[starts + np.asarray(lengths) - 1] = True
    # As LeRobot: without next.done, every episode ends in a terminal transition.
    done = columns[DONE_KEY].astype(bool).reshape(frames) if sel.has_done else last.copy()
    truncated = last & ~done
    index = np.arange(frames, dtype=np.int64)
    next_index = np.where(done | last, index, index + 1)
    episode_index = np.repeat(np.asarray(sel.episodes, dtype=np.int64), lengths)
    if not np.array_equal(columns["episode_index"].astype(np.int64).reshape(frames), episode_index):
        raise DatasetError(
            f"{source.root}: episode_index column disagrees with the episode table", path=source.root
        )
    return {
        "reward": reward,
        "done": done,
        "truncated": truncated,
        "episode_index": episode_index,
        "next_index": next_index,
    }


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return torch.from_numpy(np.empty(0, dtype=dtype)).dtype
