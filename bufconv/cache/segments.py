"""The online buffer's folder: append-only checksummed segments and a manifest replaced atomically.

    <folder>/manifest.json        what is committed: the segments, and which rows of them are live
    <folder>/seg-000001.pt        one per checkpoint: the frames and transitions new since the last one

A segment is written whole (a temporary name, fsync, rename) before the manifest that names it
replaces the old one (temporary name, fsync, rename, fsync of the folder): a checkpoint is the
manifest's rename, and a crash before it leaves the previous checkpoint standing. Segments are
files of the cache format (docs/format.md) with their own `format`, so
`torch.load(path, weights_only=True, mmap=True)` opens them without bufconv. Segments whose rows
are all retired (the ring wrapped past them) leave the manifest and are deleted.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import errors as E
from ..errors import CacheError, InvalidCacheError, Problem, unwritable_folder
from ..version import __version__
from .manifest import MANIFEST, manifest_format
from .manifest import read_manifest as _read

if TYPE_CHECKING:  # segments are read and written with torch; the manifest alone needs none (`info`)
    import torch

    from .reader import CacheFile

FOLDER_FORMAT = "bufconv.online_buffer"
SEGMENT_FORMAT = "bufconv.online_segment"
FOLDER_VERSION = 1
_SEGMENT_NAME = re.compile(r"^seg-(\d{6,})\.pt$")
MERGE_FANOUT = 8
"""Segments of one size class merged at a time; a merged segment is about this many times larger."""
MERGE_BASE_BYTES = 1 << 20
"""Segments under this size are all of the smallest class."""
MERGE_MAX_BYTES = 256 << 20
"""No merge makes a segment larger than this (a segment is deleted only once all its transitions are retired)."""


def segment_name(checkpoint: int) -> str:
    return f"seg-{checkpoint:06d}.pt"


def is_buffer_folder(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a folder holding an online buffer's manifest (not another kind of folder
    with a manifest.json, such as a sharded cache; an unreadable one counts: the reader says why)."""
    return manifest_format(path) in (FOLDER_FORMAT, "")


@dataclass(frozen=True)
class Segment:
    """One segment of the manifest: which frames and transitions (global numbers) it holds."""

    file: str
    checkpoint: int
    first_frame: int
    frames: int
    first_transition: int
    transitions: int
    bytes: int

    @property
    def end_frame(self) -> int:
        return self.first_frame + self.frames

    @property
    def end_transition(self) -> int:
        return self.first_transition + self.transitions

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class Opened:
    """A folder as read back: the manifest, its readable segments (in order), and what is wrong."""

    path: Path
    manifest: dict[str, Any]
    segments: list[tuple[Segment, CacheFile]]
    problems: list[Problem] = field(default_factory=list)
    damaged: list[Segment] = field(default_factory=list)
    """Committed segments that are unreadable or fail their checksums."""
    uncommitted: list[Path] = field(default_factory=list)
    """Segment files no manifest names: a checkpoint that did not land (a crash before its manifest)."""
    uncommitted_transitions: int = 0


def write_segment(
    folder: Path,
    checkpoint: int,
    frames: Mapping[str, Sequence[torch.Tensor]],
    transitions: Mapping[str, Sequence[torch.Tensor]],
    *,
    first_frame: int,
    first_transition: int,
) -> Segment:
    """Write one segment (whole, fsynced, renamed into place) and return its manifest entry.

    Args:
        frames, transitions: Per column, its rows in order, as one or more pieces (views of a
            ring: written where they lie, never gathered into a copy first).

    Raises:
        CacheError: the folder is not writable or full.
    """
    from .reader import TensorSpec
    from .writer import CacheWriter

    name = segment_name(checkpoint)
    tensors = {f"frames/{k}": v for k, v in frames.items()}
    tensors.update({f"transitions/{k}": v for k, v in transitions.items()})
    specs = [
        TensorSpec(k, pieces[0].dtype, (sum(len(p) for p in pieces), *pieces[0].shape[1:]))
        for k, pieces in tensors.items()
    ]
    frame_count = sum(len(p) for p in next(iter(frames.values()))) if frames else 0
    transition_count = sum(len(p) for p in next(iter(transitions.values()))) if transitions else 0
    meta = {
        "bufconv_version": __version__,
        "checkpoint": checkpoint,
        "first_frame": first_frame,
        "frames": frame_count,
        "first_transition": first_transition,
        "transitions": transition_count,
    }
    with CacheWriter(folder / name, specs, preallocate=False, format=SEGMENT_FORMAT) as writer:
        for key, pieces in tensors.items():
            row = 0
            for piece in pieces:
                writer.write(key, piece.cpu().numpy(), first_row=row)
                row += len(piece)
        writer.seal(meta)
        writer.commit()
    return Segment(
        name,
        checkpoint,
        first_frame,
        frame_count,
        first_transition,
        transition_count,
        (folder / name).stat().st_size,
    )


def new_manifest(schema: Mapping[str, Any], *, capacity: int, image_range: int, state_keys: list[str],
                 image_keys: list[str], kind: str) -> dict[str, Any]:  # fmt: skip
    """The manifest of an empty buffer (nothing committed yet)."""
    return {
        "format": FOLDER_FORMAT,
        "format_version": FOLDER_VERSION,
        "bufconv_version": __version__,
        "kind": kind,
        "capacity": capacity,
        "image_range": image_range,
        "keys": {"state": state_keys, "images": image_keys},
        "schema": dict(schema),
        "checkpoint": 0,
        "frames": {"first": 0, "end": 0},
        "transitions": {"first": 0, "end": 0},
        "segments": [],
    }


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest, checked for its format.

    Raises:
        InvalidCacheError: `unreadable`, `not-a-cache` or `unsupported-version`.
    """
    return _read(folder, format=FOLDER_FORMAT, version=FOLDER_VERSION, what="an online buffer folder")


def segments_of(manifest: Mapping[str, Any]) -> list[Segment]:
    return [Segment(**entry) for entry in manifest["segments"]]


def open_folder(folder: str | os.PathLike[str], *, verify_payload: bool = True) -> Opened:
    """Read a buffer folder: its manifest, then each segment it names, cheap checks first.

    A damaged segment (unreadable, failed checksums, rows that disagree with the manifest) is
    reported and left out; files no manifest names are reported as an uncommitted tail.

    Raises:
        InvalidCacheError: the manifest itself is missing, unreadable or of another format.
    """
    from .reader import CacheFile, mismatched_tensors, open_archive

    path = Path(folder)
    manifest = read_manifest(path)
    opened = Opened(path, manifest, [])
    named = set()
    for segment in segments_of(manifest):
        named.add(segment.file)
        problem = None
        try:
            top, layout = open_archive(path / segment.file, format=SEGMENT_FORMAT)
            cache = CacheFile(path / segment.file, top["meta"], top["tensors"], layout)
            problem = _disagreement(segment, cache)
            if problem is None and verify_payload:
                bad = mismatched_tensors(cache)
                if bad:
                    problem = Problem(
                        E.CHECKSUM_MISMATCH,
                        f"{segment.file}: tensor(s) {', '.join(bad)} do not match their checksum: the segment is corrupted",
                    )
        except InvalidCacheError as e:
            problem = Problem(e.problems[0].code, f"{segment.file}: {e.problems[0].message}")
        if problem is not None:
            opened.problems.append(problem)
            opened.damaged.append(segment)
        else:
            opened.segments.append((segment, cache))
    committed_end = int(manifest["transitions"]["end"])
    for candidate in sorted(path.glob("seg-*.pt")):
        if _SEGMENT_NAME.match(candidate.name) and candidate.name not in named:
            opened.uncommitted.append(candidate)
            opened.uncommitted_transitions += _transitions_after(candidate, committed_end)
    if opened.uncommitted:
        opened.problems.append(
            Problem(
                E.UNCOMMITTED,
                f"{len(opened.uncommitted)} segment file(s) no checkpoint committed "
                f"({', '.join(p.name for p in opened.uncommitted)}): a checkpoint or merge was interrupted; "
                "they are dropped on resume",
            )
        )
    return opened


def _disagreement(segment: Segment, cache: CacheFile) -> Problem | None:
    meta = cache.meta
    expected = (segment.first_frame, segment.frames, segment.first_transition, segment.transitions)
    found = (
        meta.get("first_frame"),
        meta.get("frames"),
        meta.get("first_transition"),
        meta.get("transitions"),
    )
    if found != expected:
        return Problem(E.INCONSISTENT, f"{segment.file}: holds rows {found}, the manifest says {expected}")
    for name, tensor in cache.tensors.items():
        rows = segment.frames if name.startswith("frames/") else segment.transitions
        if len(tensor) != rows:
            return Problem(E.INCONSISTENT, f"{segment.file}: {name} has {len(tensor)} rows, expected {rows}")
    return None


def _transitions_after(path: Path, committed_end: int) -> int:
    """Transitions numbered from `committed_end` on in an uncommitted segment file: what it held
    that no checkpoint did (0 for an interrupted merge of committed segments, or an unreadable header)."""
    from .reader import open_archive

    try:
        top, _ = open_archive(path, format=SEGMENT_FORMAT)
        first, count = int(top["meta"]["first_transition"]), int(top["meta"]["transitions"])
    except (InvalidCacheError, KeyError, TypeError, ValueError):
        return 0
    return max(0, first + count - max(first, committed_end))


def size_class(segment: Segment) -> int:
    """0 under `MERGE_BASE_BYTES`, then one more for each `MERGE_FANOUT` times as many bytes."""
    size, level = segment.bytes, 0
    while size >= MERGE_BASE_BYTES:
        size //= MERGE_FANOUT
        level += 1
    return level


def merge_run(segments: Sequence[Segment], *, max_transitions: int) -> tuple[int, int] | None:
    """The segments to merge next, as a slice [a, b) of `segments` (oldest first), or None.

    The policy of a logarithmic merge: the newest `MERGE_FANOUT` segments, when they are of
    one size class and their merge stays under `MERGE_MAX_BYTES` and `max_transitions`. Each
    row is then rewritten about log_FANOUT(commits) times, and a folder of n commits holds
    about FANOUT * log_FANOUT(n) segments (and at most capacity / max_transitions full ones).
    """
    if len(segments) < MERGE_FANOUT:
        return None
    a, b = len(segments) - MERGE_FANOUT, len(segments)
    run = segments[a:b]
    if len({size_class(s) for s in run}) != 1:
        return None
    if sum(s.bytes for s in run) > MERGE_MAX_BYTES or sum(s.transitions for s in run) > max_transitions:
        return None
    return a, b


def merge_segments(folder: Path, number: int, run: Sequence[Segment]) -> Segment | None:
    """Write one segment holding the rows of `run` (consecutive segments), verified while read.

    Consecutive segments hold consecutive transitions, and frames that may overlap by one (a
    segment repeats the state frame of its first transition): the merged segment holds each
    frame once. Returns None (nothing written) if a source is unreadable or fails its checksums.
    """
    from .reader import CacheFile, mismatched_tensors, open_archive

    sources = []
    for segment in run:
        try:
            top, layout = open_archive(folder / segment.file, format=SEGMENT_FORMAT)
        except InvalidCacheError:
            return None
        cache = CacheFile(folder / segment.file, top["meta"], top["tensors"], layout)
        if _disagreement(segment, cache) is not None or mismatched_tensors(cache):
            return None
        sources.append((segment, cache))
    frames: dict[str, list[torch.Tensor]] = {}
    transitions: dict[str, list[torch.Tensor]] = {}
    covered = run[0].first_frame
    for segment, cache in sources:
        if segment.first_frame > covered:  # not consecutive: never written so, left alone
            return None
        skip = covered - segment.first_frame
        for name, tensor in cache.tensors.items():
            kind, column = name.split("/", 1)
            if kind == "frames":
                frames.setdefault(column, []).append(tensor[skip:])
            else:
                transitions.setdefault(column, []).append(tensor)
        covered = max(covered, segment.end_frame)
    return write_segment(
        folder, number, frames, transitions, first_frame=run[0].first_frame,
        first_transition=run[0].first_transition,
    )  # fmt: skip


def remove_files(folder: Path, names: list[str]) -> None:
    """Delete segment files (retired or uncommitted) and temporary files of interrupted writes."""
    for name in names:
        with contextlib.suppress(FileNotFoundError):
            (folder / name).unlink()
    for tmp in [*folder.glob(".seg-*.pt.tmp-*"), *folder.glob(f".{MANIFEST}.tmp-*")]:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise unwritable_folder(folder, e) from e
    if not folder.is_dir():
        raise CacheError(f"{folder}: is not a folder; give the online buffer a folder path", path=folder)


def _invalid(path: Path, code: str, message: str) -> InvalidCacheError:
    return InvalidCacheError(f"{path}: {message}", path=path, problems=[Problem(code, message)])


def summary(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """What `bufconv info` says about a buffer folder, from its manifest alone (no segment is read).

    Raises:
        InvalidCacheError: the manifest is missing, unreadable or of another format.
    """
    path = Path(folder)
    manifest = read_manifest(path)
    segments = segments_of(manifest)
    frames, transitions = manifest["frames"], manifest["transitions"]
    return {
        "path": str(path),
        "kind": manifest.get("kind"),
        "format": manifest["format"],
        "format_version": manifest["format_version"],
        "bufconv_version": manifest.get("bufconv_version"),
        "updated": manifest.get("updated"),
        "checkpoint": manifest["checkpoint"],
        "capacity": manifest["capacity"],
        "image_range": manifest["image_range"],
        "keys": manifest["keys"],
        "schema": manifest.get("schema") or {},
        "transitions": int(transitions["end"]) - int(transitions["first"]),
        "frames": int(frames["end"]) - int(frames["first"]),
        "segments": len(segments),
        "bytes": sum(s.bytes for s in segments),
    }
