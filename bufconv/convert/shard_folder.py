"""The folder of a sharded build: where it may go, whether it already holds these shards, and its manifest.

    folder_path()     the folder a build writes (not a file, not an online buffer's folder)
    make_folder()     create it before the first shard
    same_shards()     whether the manifest already names these shards, with these fingerprints
    shard_digest()    an opened shard's digest, as the manifest records it
    build_manifest()  the manifest of the built folder, from its shards' headers (written last)
    datasets_of()     the datasets a folder was built from

The manifest's format and reading it are `cache.sharded` (docs/format.md section 11).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..cache.checksum import INTEGRITY_PREFIX
from ..cache.freshness import Request
from ..cache.header import read_header
from ..cache.segments import is_buffer_folder
from ..cache.sharded import (
    SHARDED_FORMAT,
    SHARDED_VERSION,
    combined_fingerprint,
    digest_of,
    read_manifest,
)
from ..errors import CacheError, unwritable_folder
from ..options import BuildOptions, format_episodes
from ..version import __version__
from .shard_plan import ShardPlan, Shards


def folder_path(folder: str | os.PathLike[str]) -> Path:
    """`folder` made absolute, once it is known to be a place a sharded cache may go.

    Raises:
        CacheError: it is a file, or an online buffer's folder.
    """
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


def make_folder(path: Path) -> None:
    """Create the folder (and its parents) before the first shard is written.

    Raises:
        CacheError: it cannot be created (`unwritable_folder`: which folder, and why).
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable_folder(path, e) from e


def same_shards(
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


def shard_digest(cache: Any) -> str:
    """An opened shard's integrity digest, as the manifest records it (`digest_of` its file)."""
    return "xxh3_128:" + cache.layout.comment[len(INTEGRITY_PREFIX) :].decode("ascii")


def build_manifest(
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
        **({"depth": first_meta["depth"]} if "depth" in first_meta else {}),
        "tensors": {
            name: {"dtype": t["dtype"], "shape": [row, *t["shape"][1:]]}
            for name, t in first_meta["tensors"].items()
        },
        "datasets": datasets,
        "shards": entries,
    }


def _episodes_option(options: BuildOptions) -> str | None:
    return None if options.episodes is None else format_episodes(options.episodes)


def datasets_of(folder: str | os.PathLike[str]) -> list[str]:
    """The datasets a sharded folder was built from (their roots, as its manifest records them)."""
    return [d["root"] for d in read_manifest(folder)["datasets"]]
