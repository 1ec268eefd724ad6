"""Sharded builds: one or more datasets into a folder of shards, built here or as Ray tasks.

    plan_shards()     runs of whole episodes, balanced by frames (deterministic: same inputs, same shards)
    check_agree()     several datasets go into one buffer only when their tensors agree
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
import itertools
import logging
import math
import multiprocessing
import os
import socket
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .. import __version__
from ..cache.checksum import INTEGRITY_PREFIX
from ..cache.freshness import Request, check_freshness, prepare
from ..cache.header import read_header
from ..cache.segments import is_buffer_folder
from ..cache.sharded import (
    SHARDED_FORMAT,
    SHARDED_VERSION,
    ShardedCache,
    combined_fingerprint,
    digest_of,
    is_sharded_folder,
    read_manifest,
    shard_name,
    stray_shards,
    write_manifest,
)
from ..errors import BufconvError, CacheError, DatasetError, InvalidCacheError, StaleCacheError
from ..options import BuildOptions, default_workers, format_episodes
from ..source.dataset import SourceDataset
from .pipeline import BuildResult, ensure
from .plan import CORES_PER_PROCESS, stored_chw
from .preview import plan_build

log = logging.getLogger("bufconv")

#: `--shards auto`: shards of about this many bytes of uint8 pixels (a shard is a few seconds to
#: a minute of one core's decoding, and one memory map; 1M frames of two 480x640 cameras make ~1,700).
AUTO_SHARD_BYTES = 1 << 30

#: Ray's retries of a shard whose worker died (Ray's own default for tasks).
RAY_RETRIES = 3

_DISAGREE = "{b} cannot share a buffer with {a}: {what}; {fix}"
_NO_RAY = "--ray needs Ray, which is not installed: pip install 'bufconv[ray]' (or build without --ray)"

Shards = int | str
"""A shard count, or "auto" (by size: `AUTO_SHARD_BYTES` of pixels a shard)."""


def parse_shards(value: str | int) -> Shards:
    """'auto' or a count >= 1.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--shards takes a count >= 1 or 'auto'; got {value!r}") from None
    if count < 1:
        raise ValueError(f"--shards takes a count >= 1 or 'auto'; got {value!r}")
    return count


@dataclass(frozen=True)
class ShardPlan:
    """One shard: a run of whole episodes of one dataset."""

    index: int
    dataset: int
    """Position of its dataset in the build's list."""
    episodes: tuple[int, ...]
    frames: int

    @property
    def file(self) -> str:
        return shard_name(self.index)


def plan_shards(requests: Sequence[Request], shards: Shards) -> list[ShardPlan]:
    """Cut the requests' episodes into shards at episode boundaries, balanced by frames.

    A count is shared among the datasets in proportion to their frames (each gets at least
    one shard, and at most one per episode); "auto" gives each dataset one shard per
    `AUTO_SHARD_BYTES` of pixels. Within a dataset, shard j ends at the episode boundary
    nearest to j/n of its frames. Deterministic: the same requests and count give the same plan.
    """
    lengths = [[r.source.episodes[e].length for e in r.selection.episodes] for r in requests]
    totals = [sum(ls) for ls in lengths]
    if shards == "auto":
        counts = [
            min(len(ls), max(1, math.ceil(total * _frame_bytes(r) / AUTO_SHARD_BYTES)))
            for r, ls, total in zip(requests, lengths, totals, strict=True)
        ]
    else:
        counts = _share(int(shards), totals, [len(ls) for ls in lengths])
    plan: list[ShardPlan] = []
    for d, (request, ls, count) in enumerate(zip(requests, lengths, counts, strict=True)):
        episodes = request.selection.episodes
        cuts = [0, *_cuts(ls, count), len(ls)]
        for a, b in itertools.pairwise(cuts):
            plan.append(ShardPlan(len(plan), d, tuple(episodes[a:b]), sum(ls[a:b])))
    return plan


def _frame_bytes(request: Request) -> int:
    return max(
        1,
        sum(math.prod(stored_chw(request.source, k, request.options)) for k in request.selection.image_keys),
    )


def _share(count: int, totals: Sequence[int], most: Sequence[int]) -> list[int]:
    """`count` shards shared in proportion to `totals` (largest remainder), each in [1, most]."""
    grand = sum(totals) or 1
    quotas = [count * t / grand for t in totals]
    counts = [min(m, max(1, math.floor(q))) for q, m in zip(quotas, most, strict=True)]
    order = sorted(range(len(totals)), key=lambda d: (-(quotas[d] - math.floor(quotas[d])), d))
    while sum(counts) < count and any(c < m for c, m in zip(counts, most, strict=True)):
        for d in order:
            if sum(counts) >= count:
                break
            if counts[d] < most[d]:
                counts[d] += 1
    return counts


def _cuts(lengths: Sequence[int], count: int) -> list[int]:
    """Episode positions where shards 2..count of one dataset start (count - 1 of them)."""
    cumulative = [0]
    for n in lengths:
        cumulative.append(cumulative[-1] + n)
    total, m = cumulative[-1], len(lengths)
    cuts: list[int] = []
    previous = 0
    for j in range(1, count):
        target = total * j / count
        cut = min(range(1, m), key=lambda k: (abs(cumulative[k] - target), k))
        cut = min(max(cut, previous + 1), m - (count - j))
        cuts.append(cut)
        previous = cut
    return cuts


# ---- several datasets ------------------------------------------------------------------------


def check_agree(requests: Sequence[Request]) -> None:
    """Several datasets share one buffer only when every tensor has the same name, dtype and row shape.

    Raises:
        DatasetError: one line naming the first key that differs, how, and the fix.
    """
    if len(requests) < 2:
        return
    first = requests[0]
    a_name, a_spec = str(first.source.root), _spec(first)
    for other in requests[1:]:
        b_name, b_spec = str(other.source.root), _spec(other)
        what, fix = _difference(a_spec, b_spec, a_name, b_name)
        if what:
            raise DatasetError(
                _DISAGREE.format(a=a_name, b=b_name, what=what, fix=fix), path=other.source.root
            )


def _spec(request: Request) -> dict[str, Any]:
    tensors = plan_build(request.source, request.options).tensors
    sel = request.selection
    return {
        "state": list(sel.state_keys),
        "complementary": list(sel.complementary_keys),
        "tensors": {k: (t["dtype"], list(t["shape"][1:])) for k, t in tensors.items()},
    }


def _difference(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> tuple[str, str]:
    separately = "build them into separate caches"
    for name, (dtype, shape) in a["tensors"].items():
        if name not in b["tensors"]:
            return (
                f"it has no {name!r}, which {a_name} has",
                f"select common keys with --keys, or {separately}",
            )
        other_dtype, other_shape = b["tensors"][name]
        if other_shape != shape:
            fix = f"resize both with --resize H,W, or {separately}" if len(shape) == 3 else separately
            return f"{name!r} has rows of shape {other_shape}, {a_name} {shape}", fix
        if other_dtype != dtype:
            return f"{name!r} is {other_dtype}, {a_name} {dtype}", separately
    for name in b["tensors"]:
        if name not in a["tensors"]:
            return (
                f"it has {name!r}, which {a_name} has not",
                f"select common keys with --keys, or {separately}",
            )
    if a["state"] != b["state"]:
        return (
            f"its state keys come in another order ({b['state']} against {a['state']})",
            "give one order with --keys",
        )
    return "", ""


# ---- building --------------------------------------------------------------------------------


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
    path = _folder(folder)
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
        digests.append(_digest(state.cache) if state.cache is not None else None)
        existed |= state.exists
        if force or not state.fresh:
            jobs.append(_Job(shard, request.source, request.options, str(target), {}, verify_payload, force))
            if not force:
                reasons += [f"{shard.file}: {r}" for r in state.reasons] or (
                    [f"{shard.file}: missing"] if old is not None else []
                )
    # Each job gets the digests of the files it reads, taken once here (a video shared by shards).
    jobs = [replace(job, known=dict(known)) for job in jobs]
    if not jobs and old is not None and _same_shards(old, plan, expected, digests):
        return _result(path, "fresh", started, old, [], verify_payload=verify_payload)
    if jobs and existed and on_stale == "error" and not force:
        raise StaleCacheError(
            f"{path}: the sharded cache is stale ({'; '.join(reasons) or 'its manifest is missing'}); rebuild it "
            "(on_stale='rebuild' or bufconv build --force)",
            path=path,
            reasons=reasons,
        )
    for reason in reasons:
        log.warning("rebuilding %s: %s", path, reason)
    _prepare_folder(path)
    if ray is None:
        _build_local(jobs, requests[0].options.workers, progress)
    else:
        _build_ray(jobs, ray, retries, progress)
    manifest = _manifest(path, requests, plan, expected, requested)
    write_manifest(path, manifest)
    for stray in stray_shards(path, manifest):
        stray.unlink(missing_ok=True)
    status = "rebuilt" if existed else "built"
    return _result(
        path, status, started, manifest, [j.plan.file for j in jobs], reasons, verify_payload=False
    )


def _folder(folder: str | os.PathLike[str]) -> Path:
    path = Path(folder).expanduser().absolute()
    if path.exists() and not path.is_dir():
        raise CacheError(
            f"{path}: a sharded cache is a folder, and this is a file; give a folder with -o DIR/", path=path
        )
    if is_buffer_folder(path):
        raise CacheError(
            f"{path}: an online buffer's folder; give the sharded cache another folder", path=path
        )
    return path


def _prepare_folder(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        from ..errors import unwritable_folder

        raise unwritable_folder(path, e) from e


def _shard_request(request: Request, episodes: tuple[int, ...]) -> Request:
    return prepare(request.source, replace(request.options, episodes=episodes))


def _same_shards(
    old: Mapping[str, Any],
    plan: Sequence[ShardPlan],
    fingerprints: Sequence[str],
    digests: Sequence[str | None],
) -> bool:
    """Whether the manifest already names these shards, with these fingerprints, and their files are its."""
    entries = old["shards"]
    if len(entries) != len(plan):
        return False
    for entry, shard, value, digest in zip(entries, plan, fingerprints, digests, strict=True):
        if (entry["file"], entry["fingerprint"], entry["digest"], entry["episodes"]) != (
            shard.file, value, digest, format_episodes(shard.episodes)
        ):  # fmt: skip
            return False
    return True


def _digest(cache: Any) -> str:
    return "xxh3_128:" + cache.layout.comment[len(INTEGRITY_PREFIX) :].decode("ascii")


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


def _manifest(
    path: Path,
    requests: Sequence[Request],
    plan: Sequence[ShardPlan],
    expected: Sequence[str],
    requested: Shards,
) -> dict[str, Any]:
    """The manifest of the built folder, from its shards' headers (no torch); every shard must
    have the fingerprint this process computed (a worker that saw other files is an error)."""
    entries, row, first_meta = [], 0, None
    for shard, value in zip(plan, expected, strict=True):
        file = path / shard.file
        meta = read_header(file)
        if meta["fingerprint"] != value:
            raise CacheError(
                f"{file}: built from other source files than this machine sees (fingerprint {meta['fingerprint']}, "
                f"expected {value}); every node must see the dataset at the same path with the same content",
                path=file,
            )
        first_meta = first_meta or meta
        entries.append({
            "file": shard.file,
            "dataset": shard.dataset,
            "episodes": format_episodes(shard.episodes),
            "episode_count": len(shard.episodes),
            "frames": int(meta["frames"]),
            "first_row": row,
            "fingerprint": value,
            "digest": digest_of(file),
            "bytes": file.stat().st_size,
        })  # fmt: skip
        row += int(meta["frames"])
    assert first_meta is not None
    options = requests[0].options
    datasets = []
    for d, request in enumerate(requests):
        source = request.source
        mine = [s for s in plan if s.dataset == d]
        datasets.append({
            "root": str(source.root),
            "repo_id": source.repo_id,
            "codebase_version": source.version,
            "fps": source.fps,
            "episodes": format_episodes(e for s in mine for e in s.episodes),
            "frames": sum(s.frames for s in mine),
        })  # fmt: skip
    return {
        "format": SHARDED_FORMAT,
        "format_version": SHARDED_VERSION,
        "bufconv_version": __version__,
        "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "shards_requested": requested,
        "options": first_meta["fingerprint_inputs"]["options"] | {"episodes": _episodes_option(options)},
        "fingerprint": combined_fingerprint(list(expected)),
        "frames": row,
        "episodes": sum(len(s.episodes) for s in plan),
        "keys": first_meta["keys"],
        "ranges": first_meta["ranges"],
        "tensors": {
            name: {"dtype": t["dtype"], "shape": [row, *t["shape"][1:]]}
            for name, t in first_meta["tensors"].items()
        },
        "datasets": datasets,
        "shards": entries,
    }


def _episodes_option(options: BuildOptions) -> str | None:
    return None if options.episodes is None else format_episodes(options.episodes)


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
    payload = sum(math.prod(manifest["tensors"][k]["shape"]) for k in manifest["keys"]["images"])
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


def datasets_of(folder: str | os.PathLike[str]) -> list[str]:
    """The datasets a sharded folder was built from (their roots, as its manifest records them)."""
    return [d["root"] for d in read_manifest(folder)["datasets"]]


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
