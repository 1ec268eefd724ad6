"""A `TransitionStore` kept in a folder: checkpoints write what is new, resume reads it all back.

The folder's format (segments and a manifest) is `bufconv.cache.segments`. This module decides
what a checkpoint writes — the frames and transitions added since the last one, never the
whole buffer — and rebuilds a store from the folder on resume, dropping (and counting) what no
checkpoint committed or what fails its checksums.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import xxhash

from ..cache import segments as seg
from ..cache.checksum import CHECKSUM
from ..cache.lock import locked
from ..cache.manifest import write_manifest
from ..cache.reader import CacheFile
from ..errors import CacheError, LockTimeoutError
from .store import NEXT_FRAME, OPEN, STATE_FRAME, Schema, TransitionStore

log = logging.getLogger("bufconv")


@dataclass(frozen=True)
class CheckpointResult:
    """What `checkpoint()` committed."""

    transitions: int
    """Transitions new since the previous checkpoint, now committed."""
    frames: int
    bytes: int
    """Bytes written (the new segment; 0 if nothing was new)."""
    seconds: float
    checkpoint: int
    """The checkpoint's number (1 for the first)."""
    retired: int
    """Segments deleted because the ring had wrapped past all their rows."""
    path: Path


class Folder:
    """The folder behind a buffer, locked from its first read or write for the buffer's life, so
    two learners cannot write one folder. Nothing is created before the first checkpoint.

    Args:
        path: The folder.
        kind: "online" or "offline-added": what the buffer is (recorded, checked on resume).
        read_only: Read what is committed without locking or changing anything (an export
            while the learner runs: segments never change once written, and the manifest is
            replaced atomically); `checkpoint` is refused.
    """

    def __init__(self, path: str | os.PathLike[str], kind: str, *, read_only: bool = False) -> None:
        self.path = Path(path).expanduser().absolute()
        self.kind = kind
        self.read_only = read_only
        self._lock = contextlib.ExitStack()
        self._claimed = False
        self.manifest: dict[str, Any] | None = None

    def _claim(self) -> None:
        if self._claimed or self.read_only:
            return
        seg.make_folder(self.path)
        try:
            self._lock.enter_context(locked(self.path / seg.MANIFEST, timeout=0))
        except LockTimeoutError as e:
            raise CacheError(
                f"{self.path}: another process (or another buffer of this one) is using this buffer folder; "
                "stop it, or give this buffer another path",
                path=self.path,
            ) from e
        self._claimed = True

    def close(self) -> None:
        """Release the folder's lock (a later checkpoint takes it again)."""
        self._lock.close()
        self._claimed = False

    @property
    def exists(self) -> bool:
        return seg.is_buffer_folder(self.path)

    # ---- resume -----------------------------------------------------------------------------

    def resume(self, capacity: int, device: torch.device) -> tuple[TransitionStore | None, int, list[str]]:
        """The store committed in the folder, with `capacity` (the newest transitions kept).

        Returns:
            (store or None if nothing was ever committed, transitions dropped, warnings).
        """
        self._claim()
        # Checksums are verified while the rows are copied back (one read of the segments), not
        # before; a mismatch reads the folder again, verifying, and takes the damaged path.
        opened = seg.open_folder(self.path, verify_payload=False)
        manifest = opened.manifest
        if manifest.get("kind") != self.kind:
            raise CacheError(
                f"{self.path}: holds a {manifest.get('kind')!r} buffer, not an {self.kind!r} one; choose another folder",
                path=self.path,
            )
        self.manifest = manifest
        warnings = [p.message for p in opened.problems]
        lost = opened.uncommitted_transitions
        if opened.uncommitted and not self.read_only:
            seg.remove_files(self.path, [p.name for p in opened.uncommitted])
        if not manifest.get("schema"):
            return None, lost, warnings
        store = TransitionStore(capacity, Schema.from_json(manifest["schema"]), device)
        frames, transitions = manifest["frames"], manifest["transitions"]
        if not opened.damaged:
            store.reset(frames["first"], frames["end"], transitions["first"], transitions["end"])
            if all([_restore(store, segment, cache) for segment, cache in opened.segments]):
                store.finish_restore()
                return store, lost, warnings
            opened = seg.open_folder(self.path)
            warnings = [p.message for p in opened.problems]
            store = TransitionStore(capacity, Schema.from_json(manifest["schema"]), device)
        kept, dropped = _renumbered(store, opened, transitions)
        if self.read_only:
            return kept, lost + dropped, warnings
        for segment in opened.damaged:  # kept aside for a post-mortem, out of the buffer's way
            with contextlib.suppress(OSError):
                (self.path / segment.file).rename(self.path / f"{segment.file}.damaged")
        self.manifest = dict(manifest, segments=[], checkpoint=manifest["checkpoint"])
        self.manifest["frames"] = {"first": 0, "end": 0}
        self.manifest["transitions"] = {"first": 0, "end": 0}
        self.checkpoint(kept)  # the renumbered store, committed whole: the folder agrees with memory again
        seg.remove_files(self.path, [segment.file for segment, _ in opened.segments])
        return kept, lost + dropped, warnings

    # ---- checkpoint -------------------------------------------------------------------------

    def start(self, store: TransitionStore | None, *, capacity: int, image_range: int,
              state_keys: list[str], image_keys: list[str]) -> None:  # fmt: skip
        """Begin an empty manifest for a new buffer (written at the first checkpoint)."""
        schema = store.schema.to_json() if store is not None else {}
        self.manifest = seg.new_manifest(
            schema, capacity=capacity, image_range=image_range, state_keys=state_keys,
            image_keys=image_keys, kind=self.kind,
        )  # fmt: skip

    def checkpoint(self, store: TransitionStore | None) -> CheckpointResult:
        """Commit the rows added since the last checkpoint (the caller holds the buffer's lock).

        The newest transition is held back while it waits for its next frame (added with
        `next_state=None`); the next checkpoint commits it.
        """
        pending = self.prepare(store, copy=False)
        assert pending is not None
        return self.commit(pending)

    def prepare(
        self, store: TransitionStore | None, *, copy: bool, skip_empty: bool = False
    ) -> Pending | None:
        """What the next commit writes: the numbers, and the new rows (the caller holds the buffer's lock).

        Args:
            copy: Copy the new rows out of the rings (to commit them after the buffer's lock is
                released: `add` may overwrite ring slots meanwhile); otherwise views of the rings.
            skip_empty: Return None when nothing is new (a background commit writes nothing then).
        """
        manifest = self.manifest
        assert manifest is not None, "start() or resume() first"
        if self.read_only:
            raise CacheError(f"{self.path}: opened read-only; cannot checkpoint", path=self.path)
        self._claim()
        number = int(manifest["checkpoint"]) + 1
        if store is None:  # nothing ever added: an empty buffer is still a checkpoint
            return None if skip_empty else Pending(number, None, 0, 0, 0, 0, 0, 0, 0, {}, {})
        end_transition = store.end_transition - (1 if store.newest_is_open else 0)
        first_transition = store.first_transition
        first_frame, end_frame = store.first_frame, store.end_frame
        committed_t = max(int(manifest["transitions"]["end"]), first_transition)
        committed_f = max(int(manifest["frames"]["end"]), first_frame)
        if skip_empty and end_transition <= committed_t and end_frame <= committed_f:
            return None
        # Each segment also holds the state frame of its first transition, even if an earlier
        # segment has it (one frame): a segment is then needed only while it has live
        # transitions, and retires with them instead of lingering for one shared frame.
        segment_f = (
            min(committed_f, store.state_frame_of(committed_t))
            if end_transition > committed_t
            else committed_f
        )
        frames: dict[str, list[torch.Tensor]] = {}
        transitions: dict[str, list[torch.Tensor]] = {}
        if end_transition > committed_t or end_frame > committed_f:
            frames = store.frame_pieces(segment_f, end_frame)
            transitions = store.transition_pieces(committed_t, end_transition)
            if copy:
                frames = {k: [p.to("cpu", copy=True) for p in v] for k, v in frames.items()}
                transitions = {k: [p.to("cpu", copy=True) for p in v] for k, v in transitions.items()}
        return Pending(
            number, store.schema.to_json(), first_frame, end_frame, first_transition, end_transition,
            committed_f, committed_t, segment_f, frames, transitions,
        )  # fmt: skip

    def commit(self, pending: Pending) -> CheckpointResult:
        """Write what `prepare` took: a segment, then the manifest (the commit lands there, whole).

        Needs no lock of the buffer's; commits of one folder must not run at the same time.
        """
        started = time.perf_counter()
        manifest = self.manifest
        assert manifest is not None
        number = pending.number
        if pending.schema is None:
            write_manifest(self.path, dict(manifest, checkpoint=number))
            manifest["checkpoint"] = number
            return CheckpointResult(0, 0, 0, time.perf_counter() - started, number, 0, self.path)
        if not manifest["schema"]:
            manifest["schema"] = pending.schema
        segments = seg.segments_of(manifest)
        new = None
        if pending.frames or pending.transitions:
            new = seg.write_segment(
                self.path,
                number,
                pending.frames,
                pending.transitions,
                first_frame=pending.segment_frame,
                first_transition=pending.committed_transition,
            )
            segments.append(new)
        # The newest segment stays even without live transitions: its frames may be the state
        # of the next transition (which the next segment then holds again).
        first_transition = pending.first_transition
        live = [s for s in segments[:-1] if s.end_transition > first_transition] + segments[-1:]
        retired = [s.file for s in segments if s not in live]
        updated = dict(
            manifest,
            checkpoint=number,
            frames={"first": pending.first_frame, "end": pending.end_frame},
            transitions={"first": first_transition, "end": max(pending.end_transition, first_transition)},
            segments=[s.to_json() for s in live],
            updated=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        )
        write_manifest(self.path, updated)  # the checkpoint lands here, whole
        self.manifest = updated
        seg.remove_files(self.path, retired)
        return CheckpointResult(
            transitions=max(0, pending.end_transition - pending.committed_transition),
            frames=max(0, pending.end_frame - pending.committed_frame),
            bytes=new.bytes if new else 0,
            seconds=time.perf_counter() - started,
            checkpoint=number,
            retired=len(retired),
            path=self.path,
        )

    def merge(self, capacity: int) -> int:
        """Merge runs of small segments into one (`bufconv.cache.segments.merge_run`'s policy),
        so that frequent commits leave a bounded number of files. Returns the segments merged away.

        Needs no lock of the buffer's (segments are read from the folder); commits of the folder
        must not run meanwhile. A crash leaves either the old segments or the merged one named
        by the manifest; the other files are dropped on resume as nothing committed.
        """
        manifest = self.manifest
        if manifest is None or self.read_only or not manifest.get("segments"):
            return 0
        merged_away = 0
        while True:
            segments = seg.segments_of(manifest)
            run = seg.merge_run(segments, max_transitions=max(1, capacity // seg.MERGE_FANOUT))
            if run is None:
                return merged_away
            number = int(manifest["checkpoint"]) + 1
            merged = seg.merge_segments(self.path, number, segments[run[0] : run[1]])
            if merged is None:  # a source failed its checksums: left for resume to report
                return merged_away
            kept = [*segments[: run[0]], merged, *segments[run[1] :]]
            updated = dict(manifest, checkpoint=number, segments=[s.to_json() for s in kept])
            write_manifest(self.path, updated)
            self.manifest = manifest = updated
            seg.remove_files(self.path, [s.file for s in segments[run[0] : run[1]]])
            merged_away += run[1] - run[0]


@dataclass(frozen=True)
class Pending:
    """A commit taken from a store (`Folder.prepare`), to be written by `Folder.commit`.

    Global numbers: the store's first/end frame and transition at the time, what the manifest
    had committed, and the first frame of the segment; the new rows per column (pieces).
    """

    number: int
    schema: dict[str, Any] | None
    first_frame: int
    end_frame: int
    first_transition: int
    end_transition: int
    committed_frame: int
    committed_transition: int
    segment_frame: int
    frames: dict[str, list[torch.Tensor]]
    transitions: dict[str, list[torch.Tensor]]


def _restore(store: TransitionStore, segment: seg.Segment, cache: CacheFile) -> bool:
    """Copy a segment's live rows back into `store`, checking every tensor's checksum on the way.

    Returns:
        Whether every tensor matched its checksum.
    """
    ok = True
    for name, rows in cache.tensors.items():
        kind, column = name.split("/", 1)
        first = segment.first_frame if kind == "frames" else segment.first_transition
        digest = xxhash.xxh3_128()
        store.put_column(kind, column, first, rows, digest)
        ok &= cache.meta["tensors"][name]["checksum"] == f"{CHECKSUM}:{digest.hexdigest()}"
    return ok


def _renumbered(
    empty: TransitionStore, opened: seg.Opened, transitions: dict[str, int]
) -> tuple[TransitionStore, int]:
    """A store of the committed rows that survive damaged segments, renumbered from 0.

    A transition whose state or next frame was in a damaged segment goes too. Returns the store
    and how many committed transitions were dropped.
    """
    frame_rows: dict[int, tuple[dict[str, torch.Tensor], int]] = {}
    transition_parts: list[tuple[int, dict[str, torch.Tensor]]] = []
    for segment, cache in opened.segments:
        tensors = cache.tensors
        f = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("frames/")}
        for i in range(segment.frames):
            frame_rows[segment.first_frame + i] = (f, i)
        t = {k.split("/", 1)[1]: v for k, v in tensors.items() if k.startswith("transitions/")}
        transition_parts.append((segment.first_transition, t))
    store = TransitionStore(empty.capacity, empty.schema, empty.device)
    committed = transitions["end"] - transitions["first"]
    kept = 0
    renumber: dict[int, int] = {}
    for first, part in transition_parts:
        for i in range(len(part[STATE_FRAME])):
            number = first + i
            if not transitions["first"] <= number < transitions["end"]:
                continue
            links = int(part[STATE_FRAME][i]), int(part[NEXT_FRAME][i])
            if any(g not in frame_rows for g in links if g != OPEN):
                continue
            for g in links:
                if g != OPEN and g not in renumber:
                    source, row = frame_rows[g]
                    store.make_room(1)
                    renumber[g] = store.end_frame
                    store.end_frame += 1
                    for key, tensor in source.items():
                        store.frames[key][renumber[g] % store.frame_capacity].copy_(tensor[row])
            slot = store.end_transition % store.capacity
            for name, column in part.items():
                store.transitions[name][slot].copy_(column[i])
            store.transitions[STATE_FRAME][slot] = renumber[links[0]]
            store.transitions[NEXT_FRAME][slot] = renumber[links[1]] if links[1] != OPEN else OPEN
            store.end_transition += 1
            kept += 1
    store.first_transition = max(0, store.end_transition - store.capacity)
    store.finish_restore()
    return store, committed - kept
