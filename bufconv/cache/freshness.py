"""Freshness: whether the file at a cache path serves a build request, and if not, why.

    prepare()          open the dataset, resolve keys and episodes      (metadata only)
    check_freshness()  compare an existing cache with the request        (headers; no decoding)

Used by the build (skip or rebuild), by `load_or_build` and by `verify --dataset`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import InvalidCacheError
from ..options import BuildOptions
from ..source.dataset import Selection, SourceDataset
from ..source.layouts import open_dataset
from . import fingerprint as fp
from .reader import FORMAT_VERSION, CacheFile, read_cache, verify_tensors


@dataclass(frozen=True)
class Request:
    """A build request resolved against its dataset: what to read and how to store it."""

    source: SourceDataset
    selection: Selection
    options: BuildOptions


@dataclass(frozen=True)
class Freshness:
    """Whether the file at a cache path serves a request, and if not, why."""

    exists: bool
    fresh: bool
    reasons: list[str]
    fingerprint: fp.Fingerprint
    cache: CacheFile | None = None
    """The cache as checked, when fresh (its tensors map the checked file, whatever replaces the path)."""


def prepare(dataset: str | os.PathLike[str] | SourceDataset, options: BuildOptions) -> Request:
    """Open `dataset` (metadata only) and resolve the options against it.

    Raises:
        DatasetError: not a dataset, unsupported version, unknown key or episode, missing file.
    """
    source = dataset if isinstance(dataset, SourceDataset) else open_dataset(dataset)
    selection = source.select(options)
    source.check_files_exist(selection)
    return Request(source, selection, options)


def check_freshness(
    request: Request, path: Path, *, verify_payload: bool = True, known: fp.Known | None = None
) -> Freshness:
    """Compare the file at `path` with `request` (reads headers and, if asked, checksums; never decodes).

    Args:
        known: Source digests taken earlier in this process, reused for unchanged files (the
            cache header's are reused too).
    """
    reuse = dict(known or {})
    if not path.exists():
        return Freshness(False, False, [], _fingerprint(request, reuse))
    try:
        cache = read_cache(path, verify_payload=False)
    except InvalidCacheError as e:
        reasons = [f"{path.name}: {p.message}" for p in e.problems]
        return Freshness(True, False, reasons, _fingerprint(request, reuse))
    current = _fingerprint(request, {**fp.known_from_header(cache.meta), **reuse})
    if cache.meta["fingerprint"] != current.value:
        # Stale: no point reading gigabytes of payload to checksum a file about to be replaced.
        return Freshness(True, False, fp.explain(cache.meta["fingerprint_inputs"], current.inputs), current)
    if verify_payload:
        try:
            verify_tensors(cache)
        except InvalidCacheError as e:
            return Freshness(True, False, [f"{path.name}: {p.message}" for p in e.problems], current)
    return Freshness(True, True, [], current, cache)


def _fingerprint(request: Request, known: fp.Known) -> fp.Fingerprint:
    return fp.compute(request.source, request.selection, request.options, FORMAT_VERSION, known)
