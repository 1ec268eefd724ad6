"""The fingerprint: a hash over everything that gives a cache its meaning, with its inputs kept.

Inputs (recorded in the cache header next to the hash, so a mismatch can say what changed):
the format version; the converter version (`CONVERTER_VERSION`); the options (output range per image key, depth unit per depth key, state keys, episodes,
`tolerance_s`, and the crop and resize when the build has them); and the source dataset's identity: its codebase version and, for each metadata,
data and video file the build read, the size and xxh3-128 digest of its content.

Hashing gigabytes of video on every learner start would defeat the cache, so each file's size
and mtime are recorded too: a file whose size and mtime are unchanged reuses its recorded digest,
and only a file whose stat changed is read again (xxh3 reads at several GB/s). Touching a file
without changing its bytes therefore costs one re-read and keeps the cache fresh.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import xxhash

from ..options import BuildOptions, format_episodes
from ..source.dataset import Selection, SourceDataset

_CHUNK = 8 << 20

#: What a build makes of the same inputs: which frame each row gets, the transition semantics.
#: Bump it when a bufconv release changes that (a decoding fix, say), so caches built by the
#: earlier converter are rebuilt rather than trusted; the file format has its own version.
CONVERTER_VERSION = 1


def file_digest(path: Path) -> str:
    """xxh3-128 of a file's content, as 'xxh3_128:<hex>'."""
    hasher = xxhash.xxh3_128()
    with open(path, "rb", buffering=0) as f:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while n := f.readinto(buffer):
            hasher.update(view[:n])
    return f"xxh3_128:{hasher.hexdigest()}"


@dataclass(frozen=True)
class Fingerprint:
    """A fingerprint hash, the inputs it was computed from, and the stat cache for the next check."""

    value: str
    inputs: dict[str, Any]
    stats: dict[str, list[int]]
    """Per source file: [size, mtime_ns] when its digest was taken."""

    def known(self) -> dict[str, tuple[int, int, str]]:
        """This fingerprint's digests, for reuse by the next `compute`."""
        files = self.inputs["source"]["files"]
        return {rel: (stat[0], stat[1], files[rel]["digest"]) for rel, stat in self.stats.items()}


def option_inputs(options: BuildOptions, selection: Selection) -> dict[str, Any]:
    """The options part of the fingerprint inputs (resolved against the dataset).

    `crop` and `resize` appear only when set, so a cache from before they existed hashes as
    one without them: it is stale only for a request that asks for one. `depth_units` (the
    unit of each depth key, SPEC section 15) appears only in builds that have a depth key.
    """
    inputs: dict[str, Any] = {
        "ranges": {key: options.image_range for key in selection.rgb_keys},
        "state_keys": sorted(selection.state_keys),
        "episodes": format_episodes(selection.episodes),
        "tolerance_s": options.tolerance_s,
    }
    if options.crop:
        inputs["crop"] = {key: list(crop) for key, crop in options.crop}
    if options.resize is not None:
        inputs["resize"] = list(options.resize)
    if selection.depth_keys:
        inputs["depth_units"] = {key: options.depth_unit for key in selection.depth_keys}
    return inputs


#: Digests taken earlier, by file: (size, mtime_ns, digest). Reused while a file's stat is unchanged.
Known = Mapping[str, tuple[int, int, str]]


def known_from_header(meta: Mapping[str, Any]) -> dict[str, tuple[int, int, str]]:
    """The digests a cache header recorded, with the stat they were taken at."""
    files = meta.get("fingerprint_inputs", {}).get("source", {}).get("files", {}) or {}
    stats = meta.get("source_stats", {}) or {}
    known = {}
    for rel, entry in files.items():
        stat = stats.get(rel)
        if isinstance(entry, Mapping) and isinstance(stat, list) and len(stat) == 2:
            known[rel] = (int(stat[0]), int(stat[1]), str(entry.get("digest")))
    return known


def compute(
    source: SourceDataset,
    selection: Selection,
    options: BuildOptions,
    format_version: int,
    known: Known | None = None,
) -> Fingerprint:
    """Fingerprint a build request.

    Args:
        known: Digests taken earlier (from a cache header, or a previous fingerprint); a file
            whose size and mtime are unchanged reuses its digest instead of being read again.
    """
    known = known or {}
    files: dict[str, dict[str, Any]] = {}
    stats: dict[str, list[int]] = {}
    for rel in [*source.metadata_files(), *source.content_files(selection)]:
        path = source.root / rel
        st = os.stat(path)
        seen = known.get(rel)
        if seen is not None and seen[:2] == (st.st_size, st.st_mtime_ns):
            digest = seen[2]
        else:
            digest = file_digest(path)
        files[rel] = {"size": st.st_size, "digest": digest}
        stats[rel] = [st.st_size, st.st_mtime_ns]
    inputs = {
        "format_version": format_version,
        "converter_version": CONVERTER_VERSION,
        "options": option_inputs(options, selection),
        "source": {"codebase_version": source.version, "files": files},
    }
    return Fingerprint(_hash(inputs), inputs, stats)


def _hash(inputs: Mapping[str, Any]) -> str:
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def _crop_text(crop: Any) -> str:
    return "none" if not crop else ",".join(str(v) for v in crop) + " (top,left,height,width)"


def _size_text(size: Any) -> str:
    return "none" if not size else "x".join(str(v) for v in size)


def explain(cached: Mapping[str, Any], requested: Mapping[str, Any]) -> list[str]:
    """Why a cache built from `cached` inputs does not serve a request with `requested` inputs.

    Returns one readable line per difference, e.g. "range of observation.images.front: cache 1,
    requested 255" or "videos/front/chunk-000/file-000.mp4 changed". Empty if they agree.
    """
    reasons: list[str] = []
    if cached.get("format_version") != requested.get("format_version"):
        reasons.append(
            f"format version: cache {cached.get('format_version')}, expected {requested.get('format_version')}"
        )
    if cached.get("converter_version") != requested.get("converter_version"):
        reasons.append(
            f"converter version: cache {cached.get('converter_version')}, now {requested.get('converter_version')} "
            "(this bufconv converts differently)"
        )
    old_opts, new_opts = cached.get("options", {}), requested.get("options", {})
    old_ranges, new_ranges = old_opts.get("ranges", {}), new_opts.get("ranges", {})
    for key in sorted(set(old_ranges) | set(new_ranges)):
        if key in old_ranges and key in new_ranges and old_ranges[key] != new_ranges[key]:
            reasons.append(f"range of {key}: cache {old_ranges[key]}, requested {new_ranges[key]}")
    old_units, new_units = old_opts.get("depth_units") or {}, new_opts.get("depth_units") or {}
    for key in sorted(set(old_units) & set(new_units)):
        if old_units[key] != new_units[key]:
            reasons.append(f"depth unit of {key}: cache {old_units[key]}, requested {new_units[key]}")
    if old_opts.get("state_keys") != new_opts.get("state_keys"):
        reasons.append(
            f"keys: cache {','.join(old_opts.get('state_keys', []))}, requested {','.join(new_opts.get('state_keys', []))}"
        )
    for field in ("episodes", "tolerance_s"):
        if old_opts.get(field) != new_opts.get(field):
            reasons.append(f"{field}: cache {old_opts.get(field)}, requested {new_opts.get(field)}")
    old_crops, new_crops = old_opts.get("crop") or {}, new_opts.get("crop") or {}
    for key in sorted(set(old_crops) | set(new_crops)):
        if old_crops.get(key) != new_crops.get(key):
            reasons.append(
                f"crop of {key}: cache {_crop_text(old_crops.get(key))}, requested {_crop_text(new_crops.get(key))}"
            )
    if old_opts.get("resize") != new_opts.get("resize"):
        reasons.append(
            f"resize: cache {_size_text(old_opts.get('resize'))}, requested {_size_text(new_opts.get('resize'))}"
        )
    old_src, new_src = cached.get("source", {}), requested.get("source", {})
    if old_src.get("codebase_version") != new_src.get("codebase_version"):
        reasons.append(
            f"dataset codebase version: cache {old_src.get('codebase_version')}, now {new_src.get('codebase_version')}"
        )
    old_files, new_files = old_src.get("files", {}), new_src.get("files", {})
    for rel in sorted(set(old_files) | set(new_files)):
        if rel not in new_files:
            reasons.append(f"{rel} is no longer part of the dataset")
        elif rel not in old_files:
            reasons.append(f"{rel} is new in the dataset")
        elif old_files[rel] != new_files[rel]:
            reasons.append(f"{rel} changed")
    if not reasons and _hash(cached) != _hash(requested):
        reasons.append("the build inputs differ")  # a field added by a newer bufconv
    return reasons
