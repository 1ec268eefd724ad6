"""`load_or_build`: the learner's one call: a fresh cache if there is one, else build it, then a buffer."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from ..cache.freshness import prepare
from ..cache.reader import CacheFile, read_cache
from ..cache.sharded import ShardedCache, is_sharded_folder
from ..convert.pipeline import ensure
from ..options import DEFAULT_TOLERANCE_S, BuildOptions
from .commits import DEFAULT_COMMIT_INTERVAL_S
from .offline import DEFAULT_CAPACITY, OfflineBuffer


def load_or_build(
    dataset: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    cache_path: str | os.PathLike[str] = "offline_buffer.pt",
    *,
    image_range: int = 1,
    state_keys: Sequence[str] | None = None,
    episodes: Sequence[int] | str | None = None,
    on_stale: str = "rebuild",
    device: str | torch.device = "cpu",
    use_drq: bool = True,
    storage_device: str | torch.device = "cpu",
    capacity: int = DEFAULT_CAPACITY,
    added_path: str | os.PathLike[str] | None = None,
    commit_interval_s: float | None = DEFAULT_COMMIT_INTERVAL_S,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    workers: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
    lock_timeout: float | None = None,
    crop: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    resize: Sequence[int] | str | None = None,
    depth_unit: str = "mm",
    shards: int | str | None = None,
    ray: str | None = None,
    verify_payload: bool = True,
) -> OfflineBuffer:
    """Serve `dataset` as an offline buffer, through the cache at `cache_path`.

    A cache whose fingerprint matches the request (dataset content, range, keys, episodes,
    tolerance, crop and resize, format version) and whose checksums hold is used as is (`status == "hit"`).
    Anything else at `cache_path` (another range, changed videos, a damaged file, an old
    `torch.save` of a LeRobot buffer) is stale: rebuilt atomically under a lock (`"rebuilt"`,
    reasons in `stale_reasons`), or, with `on_stale="error"`, refused with `StaleCacheError`.
    Two learners starting together build once; the second waits and gets a hit.

    A sharded cache (SPEC section 13) is served when `cache_path` is a sharded folder, when
    `dataset` lists several datasets, or when `shards` or `ray` is given: each shard's freshness
    is checked on its own, only the stale shards are rebuilt (`stale_reasons` name them), and
    the shards are memory-mapped when first sampled.

    Args:
        dataset: A LeRobot dataset folder or repo id (v3.0 or v2.1); several, for a sharded
            cache; None with a sharded folder: the datasets its manifest names.
        cache_path: The cache file, or a sharded cache's folder.
        image_range: 1 (images in [0,1]) or 255 (images in [0,255]).
        state_keys: Observation keys of `state` (default: every `observation.*` feature).
        episodes: Episode indices, or "0-9,15" (default: all).
        on_stale: "rebuild" or "error".
        device: Where batches are delivered (images are converted to float there).
        use_drq: Random-shift augmentation when sampling (pad 4, as LeRobot).
        storage_device: Where the frames live ("cpu": memory-mapped from the cache).
        capacity: Live transitions `add` keeps (LeRobot's `offline_buffer_capacity`).
        added_path: A folder where `checkpoint()` keeps the added transitions, resumed from
            it when it holds some (None: in memory only). The cache itself is never rewritten.
        commit_interval_s: Seconds between background commits of the added transitions into
            `added_path` (None: only at `checkpoint()`); see `OnlineBuffer`.
        tolerance_s: Allowed distance between parquet timestamps and video frames.
        workers: Most decoding processes when building (None: all cores; at most one per two cores is used).
        generator: Source of randomness for sampling (default: freshly seeded).
        progress: Show a progress bar while building.
        lock_timeout: Give up waiting for another builder after this many seconds (None: wait).
        crop: Per image key, (top, left, height, width) cropped from its frames at build time
            (LeRobot's `crop_params_dict`).
        resize: (height, width) all image keys are resized to after the crop (LeRobot's `resize_size`);
            depth keys by nearest neighbour.
        depth_unit: "mm" (LeRobot's default `depth_output_unit`) or "m": the unit depth keys'
            batches come out in (SPEC section 15).
        shards: Build a sharded folder of this many shards, or "auto" (None: the folder's own count).
        ray: Build the shards as Ray tasks on the cluster at this address ("local": `ray.init()`'s).
        verify_payload: Recompute the tensor checksums of a fresh cache (reads every byte: a few
            hundred ms per GB; for a cache of terabytes, check it once with `bufconv verify` and
            pass False: headers, integrity records and fingerprints are still checked).

    Raises:
        StaleCacheError: stale cache and `on_stale="error"`.
        DatasetError, DecodeError, CacheError: the dataset or the cache path is unusable.
    """
    options = BuildOptions.create(
        image_range=image_range, keys=state_keys, episodes=episodes, tolerance_s=tolerance_s, workers=workers,
        crop=crop, resize=resize, depth_unit=depth_unit,
    )  # fmt: skip
    if _sharded(dataset, cache_path, shards, ray):
        return _load_or_build_sharded(
            dataset, cache_path, options, shards=shards, ray=ray, on_stale=on_stale,
            verify_payload=verify_payload, device=device,
            use_drq=use_drq, storage_device=storage_device, capacity=capacity, added_path=added_path,
            commit_interval_s=commit_interval_s, generator=generator,
        )  # fmt: skip
    if dataset is None or not isinstance(dataset, (str, os.PathLike)):
        raise TypeError(
            "dataset must be one dataset folder or repo id (several make a sharded cache: pass shards=)"
        )
    request = prepare(dataset, options)
    if progress:
        from ..convert.pipeline import _progress_bar

        with _progress_bar(request) as bar:
            result = ensure(
                request, cache_path, on_stale=on_stale, progress=bar, lock_timeout=lock_timeout,
                verify_payload=verify_payload,
            )  # fmt: skip
    else:
        result = ensure(
            request, cache_path, on_stale=on_stale, lock_timeout=lock_timeout, verify_payload=verify_payload
        )
    assert result.cache is not None  # the cache ensure() checked or wrote: no second read of the path
    return OfflineBuffer(
        result.cache,
        device=device,
        storage_device=storage_device,
        use_drq=use_drq,
        capacity=capacity,
        generator=generator,
        status=result.status,
        added_path=added_path,
        commit_interval_s=commit_interval_s,
        stale_reasons=result.reasons,
    )


def _sharded(dataset: object, cache_path: str | os.PathLike[str], shards: object, ray: object) -> bool:
    several = dataset is None or not isinstance(dataset, (str, os.PathLike))
    return several or shards is not None or ray is not None or is_sharded_folder(cache_path)


def _load_or_build_sharded(
    dataset: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None,
    folder: str | os.PathLike[str],
    options: BuildOptions,
    *,
    shards: int | str | None,
    ray: str | None,
    on_stale: str,
    verify_payload: bool,
    **buffer: Any,
) -> OfflineBuffer:
    from ..convert.shard_build import ensure_sharded, requests_for
    from ..convert.shard_folder import datasets_of

    datasets = datasets_of(folder) if dataset is None else dataset
    result = ensure_sharded(
        requests_for(datasets, options), folder, shards=shards, ray=ray, on_stale=on_stale,
        verify_payload=verify_payload,
    )  # fmt: skip
    assert result.sharded is not None
    return OfflineBuffer(result.sharded, status=result.status, stale_reasons=result.reasons, **buffer)


def open_buffer(
    cache_path: str | os.PathLike[str],
    *,
    device: str | torch.device = "cpu",
    use_drq: bool = True,
    storage_device: str | torch.device = "cpu",
    capacity: int = DEFAULT_CAPACITY,
    generator: torch.Generator | None = None,
    verify_payload: bool = True,
    added_path: str | os.PathLike[str] | None = None,
    commit_interval_s: float | None = DEFAULT_COMMIT_INTERVAL_S,
) -> OfflineBuffer:
    """Open an existing cache as a buffer without its dataset (no freshness check; integrity is checked).

    The buffer's `status` is "opened": nothing said whether the cache matches any dataset. A
    sharded folder is opened from its manifest; each shard is checked (and its checksums
    verified, if `verify_payload`) when a batch first touches it.

    Raises:
        InvalidCacheError: the file is not a valid cache.
    """
    cache: CacheFile | ShardedCache
    if is_sharded_folder(cache_path):
        cache = ShardedCache.open(cache_path, verify_payload=verify_payload)
    else:
        cache = read_cache(cache_path, verify_payload=verify_payload)
    return OfflineBuffer(
        cache,
        device=device,
        storage_device=storage_device,
        use_drq=use_drq,
        capacity=capacity,
        generator=generator,
        status="opened",
        added_path=added_path,
        commit_interval_s=commit_interval_s,
    )
