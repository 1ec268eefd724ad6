"""Building a sharded cache: each stale shard built by `pipeline.ensure`, here or as Ray tasks; the manifest last.

    ensure_sharded()  check each shard's freshness, build the stale ones, write the manifest last
    build_sharded()   the public entry point (`bufconv build DATASET... --shards N|auto [--ray]`)

A shard is an ordinary format-v1 cache built by `pipeline.ensure` for a subset of episodes, so
its fingerprint, checksums, atomic write and lock are the single file's. Its `created` is the
newest modification time of its sources (`ensure(reproducible=True)`), so a shard's bytes
depend on its inputs only: built in this process, in a local process or on a Ray worker, it is
the same file. Ray is imported only on the Ray path (`bufconv[ray]`).
"""

from __future__ import annotations

import concurrent.futures
import logging
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..cache.freshness import Request, check_freshness, prepare
from ..cache.sharded import ShardedCache, is_sharded_folder, read_manifest, stray_shards, write_manifest
from ..errors import BufconvError, CacheError, DatasetError, InvalidCacheError, StaleCacheError
from ..options import BuildOptions, default_workers
from ..source.dataset import SourceDataset
from .pipeline import BuildResult, ensure, payload_bytes
from .plan import CORES_PER_PROCESS
from .shard_folder import build_manifest, folder_path, make_folder, same_shards, shard_digest
from .shard_plan import ShardPlan, Shards, check_agree, plan_shards

log = logging.getLogger("bufconv")

#: Ray's retries of a shard whose worker died (Ray's own default for tasks).
RAY_RETRIES = 3

_NO_RAY = "--ray needs Ray, which is not installed: pip install 'bufconv[ray]' (or build without --ray)"


@dataclass(frozen=True)
class ShardedBuildResult(BuildResult):
    """What a sharded build did: `BuildResult`'s fields for the whole folder, and per shard."""

    shards: int = 0
    built: list[str] = field(default_factory=list)
    """The shard files written by this build (the others were fresh)."""
    sharded: ShardedCache | None = field(default=None, repr=False, compare=False)
    """The folder, opened (its shards map lazily): what `load_or_build` serves."""

    def to_json(self) -> dict[str, Any]:
        return {**super().to_json(), "shards": self.shards, "built": list(self.built)}


@dataclass(frozen=True)
class _Job:
    """A shard to build, and what to build it with (sent to a process or a Ray worker)."""

    plan: ShardPlan
    source: SourceDataset
    options: BuildOptions
    path: str
    known: dict[str, tuple[int, int, str]]
    verify_payload: bool
    force: bool = False


def ensure_sharded(
    requests: Sequence[Request],
    folder: str | os.PathLike[str],
    *,
    shards: Shards | None = None,
    ray: str | None = None,
    force: bool = False,
    on_stale: str = "rebuild",
    verify_payload: bool = True,
    progress: Callable[[int], None] | None = None,
    retries: int = RAY_RETRIES,
) -> ShardedBuildResult:
    """Make `folder` a fresh sharded cache of `requests`, building only the shards that need it.

    Args:
        requests: One per dataset, with the same options; their tensors must agree.
        shards: A count or "auto"; None keeps the folder's (auto for a new folder).
        ray: None builds in local processes; otherwise a Ray address as `ray.init` takes it
            ("" or "local": the cluster `ray.init()` finds or starts).
        force: Rebuild every shard.
        on_stale: "rebuild", or "error" to raise `StaleCacheError` instead of rebuilding.
        verify_payload: Check the tensor checksums of shards that are otherwise fresh.
        progress: Receives the frames of each shard as it is finished.
        retries: Ray's retries of a shard whose worker died.

    Raises:
        DatasetError: the datasets' tensors disagree (nothing is written).
        StaleCacheError: a shard is stale and `on_stale` is "error".
        CacheError: the folder is not usable, or a shard could not be built.
    """
    if on_stale not in ("rebuild", "error"):
        raise ValueError(f"on_stale must be 'rebuild' or 'error'; got {on_stale!r}")
    started = time.perf_counter()
    path = folder_path(folder)
    check_agree(requests)
    old: dict[str, Any] | None = None
    reasons: list[str] = []
    if is_sharded_folder(path):
        try:
            old = read_manifest(path)
        except InvalidCacheError as e:
            reasons.append(f"manifest.json: {e.problems[0].message}")
    requested = shards if shards is not None else (old or {}).get("shards_requested", "auto")
    plan = plan_shards(requests, requested)
    known: dict[str, tuple[int, int, str]] = {}
    jobs, expected, digests = [], [], []
    existed = old is not None
    for shard in plan:
        request = _shard_request(requests[shard.dataset], shard.episodes)
        target = path / shard.file
        state = check_freshness(request, target, verify_payload=verify_payload and not force, known=known)
        known.update(state.fingerprint.known())
        expected.append(state.fingerprint.value)
        digests.append(shard_digest(state.cache) if state.cache is not None else None)
        existed |= state.exists
        if force or not state.fresh:
            jobs.append(_Job(shard, request.source, request.options, str(target), {}, verify_payload, force))
            if not force:
                reasons += [f"{shard.file}: {r}" for r in state.reasons] or (
                    [f"{shard.file}: missing"] if old is not None else []
                )
    # Each job gets the digests of the files it reads, taken once here (a video shared by shards).
    jobs = [replace(job, known=dict(known)) for job in jobs]
    if not jobs and old is not None and same_shards(old, plan, expected, digests):
        return _result(path, "hit", started, old, [], verify_payload=verify_payload)
    if jobs and existed and on_stale == "error" and not force:
        raise StaleCacheError(
            f"{path}: the sharded cache is stale ({'; '.join(reasons) or 'its manifest is missing'}); rebuild it "
            "(on_stale='rebuild' or bufconv build --force)",
            path=path,
            reasons=reasons,
        )
    for reason in reasons:
        log.warning("rebuilding %s: %s", path, reason)
    make_folder(path)
    if ray is None:
        _build_local(jobs, requests[0].options.workers, progress)
    else:
        _build_ray(jobs, ray, retries, progress)
    manifest = build_manifest(path, requests, plan, expected, requested)
    write_manifest(path, manifest)
    for stray in stray_shards(path, manifest):
        stray.unlink(missing_ok=True)
    status = "rebuilt" if existed else "built"
    return _result(
        path, status, started, manifest, [j.plan.file for j in jobs], reasons, verify_payload=False
    )


def _shard_request(request: Request, episodes: tuple[int, ...]) -> Request:
    return prepare(request.source, replace(request.options, episodes=episodes))


def _shard_task(job: _Job) -> dict[str, Any]:
    """Build one shard (in this process, a local process or a Ray worker); a small summary back."""
    started = time.perf_counter()
    result = ensure(
        prepare(job.source, job.options),
        job.path,
        force=job.force,
        known=job.known,
        reproducible=True,
        verify_payload=job.verify_payload,
    )
    return {
        "file": job.plan.file,
        "status": result.status,
        "frames": result.frames,
        "seconds": time.perf_counter() - started,
        "node": socket.gethostname(),
        "pid": os.getpid(),
    }


def _build_local(jobs: Sequence[_Job], workers: int, progress: Callable[[int], None] | None) -> None:
    """Shards one after another in this process (each with the pipeline's own decoding processes),
    or, with cores for several decoding processes and several shards, one shard per process."""
    processes = min(workers, default_workers() // CORES_PER_PROCESS, len(jobs))
    if processes < 2:
        for job in jobs:
            _shard_task(job)
            if progress:
                progress(job.plan.frames)
        return
    single = [replace(job, options=replace(job.options, workers=1)) for job in jobs]
    context = multiprocessing.get_context("spawn")  # torch and threads: never fork
    with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
        futures = {pool.submit(_shard_task, job): job for job in single}
        for future in concurrent.futures.as_completed(futures):
            future.result()
            if progress:
                progress(futures[future].plan.frames)


def _build_ray(
    jobs: Sequence[_Job], address: str, retries: int, progress: Callable[[int], None] | None
) -> None:
    """One Ray task per shard; Ray retries a task whose worker died. All tasks are waited for, so
    a failure leaves every other shard built (the next run builds only what is missing)."""
    try:
        import ray
    except ImportError as e:
        raise BufconvError(_NO_RAY) from e
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(
            address=None if address in ("", "local") else address,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=False,
        )
    try:
        task = ray.remote(max_retries=retries, retry_exceptions=False, num_cpus=1)(_shard_task)
        refs = {task.remote(job): job for job in jobs}
        failures: list[str] = []
        first: BaseException | None = None
        pending = list(refs)
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            job = refs[done[0]]
            try:
                ray.get(done[0])
                if progress:
                    progress(job.plan.frames)
            except ray.exceptions.RayTaskError as e:  # the task raised: the error it raised
                cause = e.cause if isinstance(e.cause, BaseException) else e
                failures.append(f"{job.plan.file}: {cause}")
                first = first or cause
            except ray.exceptions.RayError as e:  # the worker died more often than Ray retries
                failures.append(
                    f"{job.plan.file}: its Ray worker died ({type(e).__name__}) after {retries} retries"
                )
                first = first or e
        if failures:
            if isinstance(first, BufconvError) and len(failures) == 1:
                raise first
            raise CacheError(
                f"{len(failures)} of {len(jobs)} shard(s) failed: {'; '.join(failures)}. The shards that were "
                "built are kept: run the build again to build only the missing ones"
            ) from first
    finally:
        if started_here:
            ray.shutdown()


def _result(
    path: Path,
    status: str,
    started: float,
    manifest: Mapping[str, Any],
    built: list[str],
    reasons: Sequence[str] = (),
    *,
    verify_payload: bool,
) -> ShardedBuildResult:
    payload = payload_bytes(manifest)
    return ShardedBuildResult(
        path=path,
        status=status,
        frames=int(manifest["frames"]),
        episodes=int(manifest["episodes"]),
        seconds=time.perf_counter() - started,
        file_bytes=sum(int(e["bytes"]) for e in manifest["shards"]),
        payload_bytes=payload,
        ranges={k: v["output"] for k, v in manifest["ranges"].items()},
        fingerprint=manifest["fingerprint"],
        reasons=list(reasons) if status == "rebuilt" else [],
        shards=len(manifest["shards"]),
        built=built,
        # Checked above (fresh shards' checksums) or just written: opened without checking again.
        sharded=ShardedCache(path, dict(manifest), verify_payload=False),
    )


def requests_for(
    datasets: str | os.PathLike[str] | Sequence[str | os.PathLike[str]], options: BuildOptions
) -> list[Request]:
    """One prepared request per dataset (a single one may be given bare)."""
    if isinstance(datasets, (str, os.PathLike)):
        datasets = [datasets]
    if not datasets:
        raise DatasetError("no dataset given: name at least one dataset folder or repo id")
    return [prepare(d, options) for d in datasets]


def build_sharded(
    datasets: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str],
    options: BuildOptions,
    *,
    shards: Shards | None = None,
    ray: str | None = None,
    force: bool = False,
    progress: Callable[[int], None] | None = None,
) -> ShardedBuildResult:
    """`bufconv build DATASET... -o DIR --shards N|auto [--ray [ADDRESS]]` (see `ensure_sharded`)."""
    return ensure_sharded(
        requests_for(datasets, options), output, shards=shards, ray=ray, force=force, progress=progress
    )
