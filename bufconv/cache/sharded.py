"""A sharded cache: a folder of format-v1 cache files and the manifest that binds them.

    <folder>/manifest.json       the shards, in order, with their fingerprints, digests and rows
    <folder>/shard-00000.pt      a cache file (docs/format.md) of some episodes of one dataset
    <folder>/shard-00001.pt      ...

Each shard is an ordinary `offline_buffer.pt` of a run of whole episodes, with its own
fingerprint and checksums; the manifest (`format` "bufconv.sharded_cache", written last and
atomically) lists them with their frame counts, dataset of origin and the integrity digest of
each file, so a shard replaced behind the manifest's back is seen without reading its payload.
Transition `i` of the folder is row `i - first_row` of the shard whose rows hold it.

    is_sharded_folder()  whether a folder holds such a manifest (an online buffer's has another format)
    read_manifest()      the manifest, checked
    ShardedCache         the folder opened: shards memory-mapped lazily, on first use
    check_folder()       what `bufconv verify` finds, shard by shard
    summary()            what `bufconv info` prints, from the manifest alone (no torch)
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import errors as E
from ..errors import InvalidCacheError, Problem
from .checksum import INTEGRITY_PREFIX
from .header import check_structure, read_header
from .header import invalid as _invalid
from .manifest import MANIFEST, manifest_format
from .manifest import read_manifest as _read
from .manifest import write_manifest as write_manifest  # atomic: temporary name, fsync, rename

if TYPE_CHECKING:  # shards are mapped with torch; the manifest alone needs none (`info`, `verify --quick`)
    from .reader import CacheFile

SHARDED_FORMAT = "bufconv.sharded_cache"
SHARDED_VERSION = 1
_SHARD_NAME = re.compile(r"^shard-(\d{5,})\.pt$")
#: Fields every shard entry of a manifest has (docs/format.md section 11).
_ENTRY = {"file": str, "dataset": int, "episodes": str, "frames": int, "first_row": int,
          "fingerprint": str, "digest": str, "bytes": int}  # fmt: skip


def shard_name(index: int) -> str:
    """`shard-00003.pt` for shard 3."""
    return f"shard-{index:05d}.pt"


def is_sharded_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder whose manifest.json is a sharded cache's (not an online buffer's;
    `segments.is_buffer_folder` claims damaged manifests: its reader says what is wrong)."""
    return manifest_format(path) == SHARDED_FORMAT


def digest_of(path: Path) -> str:
    """A shard's integrity digest ("xxh3_128:<hex>", the archive comment), after checking it.

    Raises:
        InvalidCacheError: as `header.check_structure`.
    """
    comment = check_structure(path).comment
    return "xxh3_128:" + comment[len(INTEGRITY_PREFIX) :].decode("ascii")


def combined_fingerprint(fingerprints: list[str]) -> str:
    """The folder's fingerprint: sha256 over its shards' fingerprints, in order."""
    return "sha256:" + hashlib.sha256("\n".join(fingerprints).encode()).hexdigest()


def read_manifest(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a sharded folder, checked for its format and the shape of its entries.

    Raises:
        InvalidCacheError: `unreadable`, `not-a-cache`, `unsupported-version` or `inconsistent`.
    """
    folder = Path(folder)
    manifest = _read(folder, format=SHARDED_FORMAT, version=SHARDED_VERSION, what="a sharded cache folder")
    problem = _malformed(manifest)
    if problem:
        raise _invalid(folder, E.INCONSISTENT, f"{MANIFEST}: {problem}")
    return manifest


def _malformed(manifest: Mapping[str, Any]) -> str | None:
    shards = manifest.get("shards")
    if not isinstance(shards, list) or not shards:
        return "no shards"
    row = 0
    for i, entry in enumerate(shards):
        if not isinstance(entry, dict) or any(not isinstance(entry.get(k), t) for k, t in _ENTRY.items()):
            return f"shard entry {i} lacks one of {sorted(_ENTRY)}"
        if entry["file"] != shard_name(i) or entry["first_row"] != row or entry["frames"] < 1:
            return f"shard entry {i} ({entry['file']}) is out of order (rows {entry['first_row']}, expected {row})"
        row += entry["frames"]
    if manifest.get("frames") != row:
        return f"frames is {manifest.get('frames')!r}; its shards hold {row}"
    for key in ("keys", "ranges", "tensors", "datasets"):
        if not isinstance(manifest.get(key), (dict, list)):
            return f"no {key!r}"
    return None


@dataclass
class ShardedCache:
    """A sharded folder opened for reading: the manifest now, each shard when first used.

    A shard is opened (its header checked, its tensors memory-mapped, its checksums verified if
    `verify_payload`) the first time `shard(i)` asks for it; its integrity digest must still be
    the manifest's. Nothing is read from a shard no batch touches.
    """

    path: Path
    manifest: dict[str, Any]
    verify_payload: bool = True
    offsets: np.ndarray = field(init=False)
    """int64 (shards + 1,): the first row of each shard, then the folder's row count."""
    _opened: dict[int, CacheFile] = field(default_factory=dict, init=False, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)

    def __post_init__(self) -> None:
        rows = [entry["first_row"] for entry in self.manifest["shards"]]
        self.offsets = np.asarray([*rows, self.manifest["frames"]], dtype=np.int64)

    @classmethod
    def open(cls, folder: str | os.PathLike[str], *, verify_payload: bool = True) -> ShardedCache:
        """Read the manifest of `folder` (no shard is opened yet).

        Raises:
            InvalidCacheError: the manifest is missing, unreadable, of another format or malformed.
        """
        path = Path(folder).expanduser().absolute()
        return cls(path, read_manifest(path), verify_payload)

    @property
    def frames(self) -> int:
        return int(self.manifest["frames"])

    @property
    def count(self) -> int:
        """How many shards."""
        return len(self.manifest["shards"])

    @property
    def opened(self) -> int:
        """How many shards have been opened so far."""
        return len(self._opened)

    @property
    def meta(self) -> dict[str, Any]:
        """What a buffer reads of a cache's header (keys, ranges, frames, tensors, source), for the folder."""
        m = self.manifest
        first = m["datasets"][0]
        return {
            "frames": m["frames"],
            "keys": m["keys"],
            "ranges": m["ranges"],
            **({"depth": m["depth"]} if "depth" in m else {}),
            "tensors": m["tensors"],
            "fingerprint": m["fingerprint"],
            "source": {**first, "datasets": m["datasets"]},
            "shards": len(m["shards"]),
        }

    def shard(self, index: int) -> CacheFile:
        """Shard `index`, opened on first use.

        Raises:
            InvalidCacheError: the shard is damaged, or is not the file the manifest names.
        """
        cache = self._opened.get(index)
        if cache is not None:
            return cache
        with self._lock:
            cache = self._opened.get(index)
            if cache is None:
                cache = self._open(index)
                self._opened[index] = cache
        return cache

    def _open(self, index: int) -> CacheFile:
        from .reader import read_cache

        entry = self.manifest["shards"][index]
        path = self.path / entry["file"]
        try:
            cache = read_cache(path, verify_payload=self.verify_payload)
        except InvalidCacheError as e:
            raise InvalidCacheError(
                f"{self.path}: {entry['file']}: {e.problems[0].message}; rebuild the folder (bufconv build)",
                path=self.path,
                problems=[Problem(p.code, f"{entry['file']}: {p.message}") for p in e.problems],
            ) from e
        problem = _disagreement(entry, cache.meta, "xxh3_128:" + _digest_hex(cache))
        if problem:
            raise _invalid(self.path, E.INCONSISTENT, f"{problem}; rebuild the folder (bufconv build)")
        return cache


def _digest_hex(cache: CacheFile) -> str:
    return cache.layout.comment[len(INTEGRITY_PREFIX) :].decode("ascii")


def _disagreement(entry: Mapping[str, Any], meta: Mapping[str, Any], digest: str) -> str | None:
    """How a shard's file differs from its manifest entry (None: it is the file the manifest names)."""
    name = entry["file"]
    if digest != entry["digest"]:
        return f"{name} is not the file the manifest names (digest {digest}, manifest {entry['digest']})"
    if meta.get("frames") != entry["frames"] or meta.get("fingerprint") != entry["fingerprint"]:
        return f"{name}: {meta.get('frames')} frames, fingerprint {meta.get('fingerprint')}; the manifest says {entry['frames']}, {entry['fingerprint']}"
    return None


def stray_shards(folder: Path, manifest: Mapping[str, Any] | None) -> list[Path]:
    """`shard-*.pt` files of `folder` that the manifest does not name (a build that did not finish)."""
    named = {entry["file"] for entry in (manifest or {}).get("shards", [])}
    return [p for p in sorted(folder.glob("shard-*.pt")) if _SHARD_NAME.match(p.name) and p.name not in named]


def check_folder(
    folder: str | os.PathLike[str], *, quick: bool = False
) -> tuple[dict[str, Any], list[Problem]]:
    """The manifest of a sharded folder and every problem of its shards, each named by its file.

    Every shard gets the checks of a single cache (docs/format.md section 7; checksums unless
    `quick`), then must be the file its manifest entry names (digest, frames, fingerprint) and
    agree with the manifest's keys and ranges. Shard files no manifest names are `uncommitted`.

    Raises:
        InvalidCacheError: the manifest itself is missing, unreadable, of another format or malformed.
    """
    path = Path(folder)
    manifest = read_manifest(path)
    problems: list[Problem] = []
    for entry in manifest["shards"]:
        name = entry["file"]
        try:
            if quick:
                meta = read_header(path / name)
                digest = digest_of(path / name)
            else:
                from .reader import read_cache

                cache = read_cache(path / name, verify_payload=True)
                meta, digest = cache.meta, "xxh3_128:" + _digest_hex(cache)
        except InvalidCacheError as e:
            problems += [Problem(p.code, f"{name}: {p.message}") for p in e.problems]
            continue
        problem = _disagreement(entry, meta, digest)
        if problem is None and (meta["keys"] != manifest["keys"] or meta["ranges"] != manifest["ranges"]):
            problem = f"{name}: its keys or ranges differ from the manifest's"
        if problem:
            problems.append(Problem(E.INCONSISTENT, problem))
    for stray in stray_shards(path, manifest):
        problems.append(
            Problem(
                E.UNCOMMITTED,
                f"{stray.name}: no manifest entry names it (a build that did not finish; the next build reuses or removes it)",
            )
        )
    return manifest, problems


def summary(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What `bufconv info` says about a sharded folder, from its manifest alone (no shard is read).

    Raises:
        InvalidCacheError: the manifest is missing, unreadable, of another format or malformed.
    """
    path = Path(folder)
    manifest = read_manifest(path)
    return {
        "path": str(path),
        "kind": "bufconv-sharded-cache",
        **{k: v for k, v in manifest.items() if k != "shards"},
        "bytes": sum(entry["bytes"] for entry in manifest["shards"]),
        "shards": manifest["shards"],
    }
