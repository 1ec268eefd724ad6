"""Freshness: whether the file at a cache path serves a build request, and if not, why.

    prepare()          open the dataset, resolve keys and episodes      (metadata only)
    check_freshness()  compare an existing cache with the request        (headers; no decoding)

Used by the build (skip or rebuild), by `load_or_build` and by `verify --dataset`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..errors import InvalidCacheError
from ..options import BuildOptions
from ..source.dataset import Selection, SourceDataset
from ..source.layouts import open_dataset
from . import fingerprint as fp
from .header import FORMAT_VERSION

if TYPE_CHECKING:  # reading tensors needs torch; comparing a header with a request does not
    from .reader import CacheFile


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
    from .reader import read_cache, verify_tensors

    reuse = dict(known or {})
    if not path.exists():
        return Freshness(False, False, [], _fingerprint(request, reuse))
    try:
        cache = read_cache(path, verify_payload=False)
    except InvalidCacheError as e:
        reasons = [f"{path.name}: {p.message}" for p in e.problems]
        return Freshness(True, False, reasons, _fingerprint(request, reuse))
    current, reasons = compare(request, cache.meta, reuse)
    if reasons:
        # Stale: no point reading gigabytes of payload to checksum a file about to be replaced.
        return Freshness(True, False, reasons, current)
    if verify_payload:
        try:
            verify_tensors(cache)
        except InvalidCacheError as e:
            return Freshness(True, False, [f"{path.name}: {p.message}" for p in e.problems], current)
    return Freshness(True, True, [], current, cache)


def compare(
    request: Request, meta: Mapping[str, Any], known: fp.Known | None = None
) -> tuple[fp.Fingerprint, list[str]]:
    """The request's fingerprint, and why a cache with header `meta` does not serve it (empty: it does).

    Reads the header only (no tensors, no torch); the source digests it recorded are reused
    for files whose stat is unchanged, and so are `known` ones.
    """
    current = _fingerprint(request, {**fp.known_from_header(meta), **(known or {})})
    if meta["fingerprint"] == current.value:
        return current, []
    return current, fp.explain(meta["fingerprint_inputs"], current.inputs)


def _fingerprint(request: Request, known: fp.Known) -> fp.Fingerprint:
    return fp.compute(request.source, request.selection, request.options, FORMAT_VERSION, known)
