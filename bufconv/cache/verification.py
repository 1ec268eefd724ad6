"""`verify`: what is wrong with a cache file, as a report (and `verify_or_raise`, its strict twin).

Works on any `.pt` file. A bufconv cache is checked from cheap to expensive (structure,
integrity digest, safe unpickling, format version, consistency, checksums), then its declared
ranges, then, given the dataset, its freshness. A foreign file is only ever opened with
`weights_only=True` (never executed); the value ranges of image-like tensors inside it are
reported, which is how an old double-normalized cache is diagnosed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import errors as E
from ..errors import InvalidCacheError, Problem
from ..options import BuildOptions, parse_episodes, validate_range
from .header import read_header

if TYPE_CHECKING:  # imported where tensors are read: `verify(quick=True)` of a cache needs no torch
    import torch

    from .reader import CacheFile

_MIN_IMAGE_SIDE = 8


@dataclass
class ObservedRange:
    """Value range of one image-like tensor found in a file."""

    name: str
    dtype: str
    shape: list[int]
    min: float
    max: float

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": self.shape, "min": self.min, "max": self.max}


@dataclass
class VerifyReport:
    """The outcome of `verify`. `ok` is true when there are no problems."""

    path: str
    problems: list[Problem] = field(default_factory=list)
    kind: str = "bufconv-cache"
    """"bufconv-cache", "foreign" (a torch file bufconv did not write) or "unreadable"."""
    format_version: int | None = None
    frames: int | None = None
    ranges: dict[str, int] = field(default_factory=dict)
    """Declared output range per image key (bufconv caches)."""
    depth_units: dict[str, str] = field(default_factory=dict)
    """Declared unit per depth key (bufconv caches with depth cameras, SPEC section 15)."""
    observed: list[ObservedRange] = field(default_factory=list)
    checked: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def add(self, code: str, message: str) -> None:
        self.problems.append(Problem(code, message))

    def to_json(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "path": self.path,
            "kind": self.kind,
            "problems": [{"code": p.code, "message": p.message} for p in self.problems],
            "format_version": self.format_version,
            "frames": self.frames,
            # The header's shape, as `info --json` prints it: {key: {"storage": "uint8", "output": 1 | 255}}.
            "ranges": {key: {"storage": "uint8", "output": value} for key, value in self.ranges.items()},
            **({"depth_units": dict(self.depth_units)} if self.depth_units else {}),
            "observed": [o.to_json() for o in self.observed],
            "checked": self.checked,
        }


def verify(
    path: str | os.PathLike[str],
    *,
    dataset: str | os.PathLike[str] | None = None,
    image_range: int | None = None,
    quick: bool = False,
) -> VerifyReport:
    """Check a cache file and report every problem found.

    Args:
        path: Any `.pt` file.
        dataset: Also check the cache is fresh for this dataset (same options as it was built with,
            except `image_range` if given). A cache built from another dataset is reported as
            `different-dataset`, not as stale.
        image_range: The range the caller expects (1 or 255); a cache declaring another is a problem.
        quick: Skip the tensor checksums (everything else is cheap).

    Returns:
        A `VerifyReport`; `report.ok` is false when there are problems.

    Raises:
        DatasetError: `dataset` is not a dataset (a wrong path: a usage error, not a problem of the cache).
    """
    if image_range is not None:
        image_range = validate_range(image_range)
    report = VerifyReport(path=str(path))
    if os.path.isdir(path):
        from .segments import is_buffer_folder
        from .sharded import is_sharded_folder

        if is_sharded_folder(path):
            _verify_sharded(Path(path), report, image_range, quick, dataset)
            return report
        if is_buffer_folder(path):
            _verify_folder(Path(path), report, image_range, quick)
            return report
    cache: CacheFile | None = None
    try:
        if quick:  # the header and index tensors only: read without torch
            meta = read_header(path)
        else:
            from .reader import read_cache

            cache = read_cache(path, verify_payload=True)
            meta = cache.meta
    except InvalidCacheError as e:
        report.problems.extend(e.problems)
        first = e.problems[0].code
        report.kind = {E.UNREADABLE: "unreadable", E.NOT_A_CACHE: "foreign"}.get(first, "bufconv-cache")
        if e.problems[0].code in (E.NOT_A_CACHE, E.UNREADABLE):
            _inspect_foreign(Path(path), report, image_range)
        return report
    report.checked += ["structure", "integrity", "safe-load", "format-version", "consistency"]
    if not quick:
        report.checked.append("checksums")
    report.format_version = 1
    report.frames = int(meta["frames"])
    report.ranges = {k: v["output"] for k, v in meta["ranges"].items()}
    report.depth_units = {k: v["unit"] for k, v in (meta.get("depth") or {}).items()}
    _check_declared(report, image_range)
    if cache is not None:
        _check_pixels(cache, report)
    report.checked.append("ranges")
    if dataset is not None:
        _check_fresh(meta, dataset, report)
        report.checked.append("freshness")
    return report


def _verify_folder(path: Path, report: VerifyReport, image_range: int | None, quick: bool) -> None:
    """An online buffer's folder: its manifest, then every segment (checksums unless `quick`)."""
    from .segments import open_folder

    report.kind = "bufconv-online-buffer"
    try:
        opened = open_folder(path, verify_payload=not quick)
    except InvalidCacheError as e:
        report.problems.extend(e.problems)
        return
    manifest = opened.manifest
    report.checked += ["manifest", "structure", "integrity", "safe-load", "format-version", "consistency"]
    if not quick:
        report.checked.append("checksums")
    report.problems.extend(opened.problems)
    report.format_version = manifest["format_version"]
    report.frames = int(manifest["transitions"]["end"]) - int(manifest["transitions"]["first"])
    declared = int(manifest["image_range"])
    report.ranges = {key: declared for key in manifest["keys"].get("images", [])}
    if image_range is not None and declared != image_range:
        report.add(
            E.RANGE_MISMATCH,
            f"the buffer holds images in range {declared}; {image_range} was expected "
            f"(a learner must open it with image_range={declared})",
        )
    report.checked.append("ranges")


def _verify_sharded(
    path: Path,
    report: VerifyReport,
    image_range: int | None,
    quick: bool,
    dataset: str | os.PathLike[str] | None,
) -> None:
    """A sharded cache's folder: its manifest, then every shard as a cache (checksums unless
    `quick`), each problem named by its shard; with `dataset`, each shard of that dataset's freshness."""
    from .sharded import check_folder

    report.kind = "bufconv-sharded-cache"
    try:
        manifest, problems = check_folder(path, quick=quick)
    except InvalidCacheError as e:
        report.problems.extend(e.problems)
        return
    report.checked += ["manifest", "structure", "integrity", "safe-load", "format-version", "consistency"]
    if not quick:
        report.checked.append("checksums")
    report.problems.extend(problems)
    report.format_version = manifest["format_version"]
    report.frames = int(manifest["frames"])
    report.ranges = {k: v["output"] for k, v in manifest["ranges"].items()}
    _check_declared(report, image_range)
    report.checked.append("ranges")
    if dataset is None:
        return
    from ..source.layouts import open_dataset

    root = open_dataset(dataset).root.resolve()
    shards = [
        s for s in manifest["shards"] if Path(manifest["datasets"][s["dataset"]]["root"]).resolve() == root
    ]
    if not shards:
        built = ", ".join(d["root"] for d in manifest["datasets"])
        report.add(E.DIFFERENT_DATASET, f"built from {built}, not from {root}; pass one of those datasets")
        return
    for shard in shards:
        try:
            meta = read_header(path / shard["file"])
        except InvalidCacheError:
            continue  # reported above
        sub = VerifyReport(path=str(path / shard["file"]))
        _check_fresh(meta, dataset, sub)
        report.problems += [Problem(p.code, f"{shard['file']}: {p.message}") for p in sub.problems]
    report.checked.append("freshness")


def _check_declared(report: VerifyReport, image_range: int | None) -> None:
    """A `range-mismatch` per image key whose declared range is not the expected one."""
    for key, declared in report.ranges.items():
        if image_range is not None and declared != image_range:
            report.add(
                E.RANGE_MISMATCH,
                f"{key}: the cache declares range {declared}; {image_range} was expected (rebuild with --range {image_range})",
            )


def verify_or_raise(path: str | os.PathLike[str], **kwargs: Any) -> VerifyReport:
    """`verify`, raising `InvalidCacheError` (with all problems) unless the report is ok."""
    report = verify(path, **kwargs)
    if not report.ok:
        raise InvalidCacheError(
            f"{path}: " + "; ".join(f"[{p.code}] {p.message}" for p in report.problems),
            path=os.fspath(path),
            problems=report.problems,
        )
    return report


def _check_depth(cache: CacheFile, report: VerifyReport) -> None:
    """Stored depth whose values contradict the declared unit (metres in a mm key, or the
    reverse): `unit-mismatch`. One min/max pass over each depth tensor."""
    from ..ranges import depth_span_problem
    from ..source.depth import DepthDecoder

    depth = cache.meta.get("depth") or {}
    report.depth_units = {k: v["unit"] for k, v in depth.items()}
    for key, entry in depth.items():
        tensor = cache.tensors[key]
        lo, hi = DepthDecoder(entry).span(tensor)
        report.observed.append(ObservedRange(key, f"depth {entry['unit']}", list(tensor.shape), lo, hi))
        problem = depth_span_problem(lo, hi, entry["unit"], name=key)
        if problem is not None:
            report.add(E.UNIT_MISMATCH, problem.message)


def _check_pixels(cache: CacheFile, report: VerifyReport) -> None:
    """Stored frames whose pixels never exceed 1 were scaled to [0,1] before being stored as uint8."""
    import torch

    _check_depth(cache, report)
    for key in cache.meta["keys"]["images"]:
        lo, hi = (int(v) for v in torch.aminmax(cache.tensors[key]))
        report.observed.append(
            ObservedRange(key, "uint8", list(cache.tensors[key].shape), float(lo), float(hi))
        )
        if 0 < hi <= 1:
            report.add(
                E.DOUBLE_NORMALIZED,
                f"{key}: stored pixels are all 0 or 1: the frames were scaled to [0,1] before being stored; rebuild from the dataset",
            )


def _check_fresh(meta: dict[str, Any], dataset: str | os.PathLike[str], report: VerifyReport) -> None:
    """Whether the cache with header `meta` is fresh for `dataset` (headers and source digests only)."""
    from ..errors import BufconvError, DatasetError
    from ..source.layouts import open_dataset
    from .freshness import compare, prepare

    try:
        built = meta["fingerprint_inputs"]["options"]
        declared = next(iter(built["ranges"].values()), 1)
        # The declared range, not the expected one: a range difference is reported once, as range-mismatch.
        options = BuildOptions(
            image_range=declared,
            depth_unit=next(iter((built.get("depth_units") or {}).values()), "mm"),
            keys=tuple(built["state_keys"]),
            episodes=parse_episodes(built["episodes"]),
            tolerance_s=built["tolerance_s"],
            # The cache's own crop and resize: verify asks whether the dataset changed.
            crop=tuple((key, tuple(crop)) for key, crop in (built.get("crop") or {}).items()),
            resize=None if built.get("resize") is None else tuple(built["resize"]),
        )
    except (KeyError, TypeError, AttributeError, ValueError, StopIteration) as e:
        report.add(E.INCONSISTENT, f"the header's build options are malformed ({type(e).__name__}: {e})")
        return
    source = open_dataset(dataset)  # not a dataset at all: raised, the caller passed a wrong path
    built_from = str(meta["source"].get("root"))
    fix = f"pass the dataset it was built from ({built_from}), or build a separate cache for {source.root}"
    try:
        source.select(options)
    except DatasetError as e:
        report.add(E.DIFFERENT_DATASET, f"built from another dataset than {source.root}: {e}; {fix}")
        return
    try:
        current, reasons = compare(prepare(source, options), meta)
    except BufconvError as e:
        report.add(E.STALE, f"cannot check against {dataset}: {e}")
        return
    if reasons and _another_dataset(meta, current.inputs, source.root):
        report.add(
            E.DIFFERENT_DATASET,
            f"built from {built_from}, a different dataset than {source.root} (none of the data or video files it "
            f"was built from match); {fix}",
        )
        return
    for reason in reasons:
        report.add(E.STALE, reason)


def _another_dataset(meta: dict[str, Any], current: dict[str, Any], root: Path) -> bool:
    """Whether a cache that does not match `root` was built from another dataset altogether
    (rather than from an earlier state of this one): another folder, and none of the data or
    video files the cache was built from has the same path and content there (metadata files
    such as info.json are often identical across datasets recorded with one setup)."""
    try:
        if Path(meta["source"]["root"]).resolve() == root.resolve():
            return False
        before = meta["fingerprint_inputs"]["source"]["files"]
        now = current["source"]["files"]
    except (KeyError, TypeError, OSError):
        return False
    return not any(now.get(rel) == entry for rel, entry in before.items() if not rel.startswith("meta/"))


# ---- foreign files --------------------------------------------------------------------------


def _inspect_foreign(path: Path, report: VerifyReport, image_range: int | None) -> None:
    """Report image-like tensors of a non-bufconv file, loaded only with weights_only=True."""
    import torch

    from ..ranges import DOUBLE_NORMALIZED_MAX, range_problem
    from .reader import safe_load

    if not path.is_file():
        return
    try:
        obj = safe_load(path, mmap=True)
    except InvalidCacheError:
        try:
            obj = safe_load(path, mmap=False)  # legacy (non-zip) files cannot be memory-mapped
        except InvalidCacheError as e:
            # Unreadable once is enough: the structure check may already have said why (random
            # bytes are neither the zip torch.save writes nor a legacy pickle: one problem, not two).
            if not any(p.code == E.UNREADABLE for p in report.problems):
                report.problems.extend(e.problems)
            return
    report.kind = "foreign"
    if not any(p.code == E.NOT_A_CACHE for p in report.problems):
        report.problems = [p for p in report.problems if p.code != E.UNREADABLE]
        report.add(E.NOT_A_CACHE, "a torch file, but not a bufconv cache")
    for name, tensor in _image_like(obj, ""):
        if tensor.numel() == 0:
            continue
        lo, hi = (float(v) for v in torch.aminmax(tensor.detach()))
        report.observed.append(
            ObservedRange(name, str(tensor.dtype).removeprefix("torch."), list(tensor.shape), lo, hi)
        )
        if tensor.is_floating_point() and 0 < hi <= DOUBLE_NORMALIZED_MAX and lo >= 0:
            report.add(
                E.DOUBLE_NORMALIZED,
                f"{name}: values span [{lo:.6g}, {hi:.6g}], inside [0, 1/255]: divided by 255 twice; rebuild the buffer with bufconv",
            )
        elif image_range is not None:
            problem = range_problem(tensor, image_range, name=name)
            if problem is not None:
                report.add(problem.problem, str(problem))


def _image_like(obj: Any, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    import torch

    if isinstance(obj, torch.Tensor):
        if _looks_like_images(obj, prefix):
            yield prefix or "tensor", obj
    elif isinstance(obj, dict):
        for key, value in obj.items():
            yield from _image_like(value, f"{prefix}.{key}" if prefix else str(key))
    elif isinstance(obj, (list, tuple)):
        for i, value in enumerate(obj):
            yield from _image_like(value, f"{prefix}[{i}]")


def _looks_like_images(tensor: torch.Tensor, name: str) -> bool:
    import torch

    if tensor.ndim < 3 or not (tensor.is_floating_point() or tensor.dtype == torch.uint8):
        return False
    if "image" in name or "pixels" in name:
        return True
    c, h, w = tensor.shape[-3:]
    return c in (1, 3, 4) and h >= _MIN_IMAGE_SIDE and w >= _MIN_IMAGE_SIDE
