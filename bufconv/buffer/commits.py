"""Background commits: what a buffer adds reaches its folder every `interval_s`, without `add` waiting.

    commits = Commits(folder, lock, interval_s=1.0, capacity=capacity)
    commits.store = store            # once the buffer has one
    commits.commit()                 # now: what is new, durable on return (a checkpoint)
    commits.close()                  # stop the thread, commit what is left

A commit copies the new rows out of the buffer's rings under the buffer's lock (a memory copy:
about a millisecond per hundred 128x128 transitions), then writes the segment and the manifest
without it, so `add` and `sample` wait for the copy, never for the disk. Commits of one folder
run one at a time (`_commit_lock`); after each background commit, small segments are merged
(`Folder.merge`), so a folder of one-second commits keeps a bounded number of files.
"""

from __future__ import annotations

import logging
import threading
import time

from ..errors import CacheError
from .persist import CheckpointResult, Folder
from .store import TransitionStore

log = logging.getLogger("bufconv")

DEFAULT_COMMIT_INTERVAL_S = 1.0
"""Seconds between background commits of a buffer with a folder (`commit_interval_s`)."""


class Commits:
    """The commits of one buffer's folder, and the thread that makes them every `interval_s`.

    Args:
        folder: The buffer's folder (started or resumed).
        lock: The buffer's lock: held while the new rows are copied, never while writing.
        interval_s: Seconds between background commits; None: no thread (commits only on `commit()`).
        capacity: The buffer's capacity (bounds the size of merged segments).

    Attributes:
        last: The last commit that wrote something (None before the first).
        error: The last background commit's failure, until a commit succeeds again (also logged).
    """

    def __init__(self, folder: Folder, lock: threading.Lock, interval_s: float | None, capacity: int) -> None:
        if interval_s is not None and not interval_s > 0:
            raise ValueError(f"commit_interval_s must be > 0 seconds, or None; got {interval_s!r}")
        self.folder = folder
        self.interval_s = interval_s
        self.capacity = capacity
        self.store: TransitionStore | None = None
        self.last: CheckpointResult | None = None
        self.error: BaseException | None = None
        self._lock = lock
        self._commit_lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if interval_s is not None:
            self._thread = threading.Thread(
                target=self._run, name=f"bufconv-commits:{folder.path.name}", daemon=True
            )
            self._thread.start()

    @property
    def background(self) -> bool:
        return self._thread is not None

    def commit(self, *, skip_empty: bool = False) -> CheckpointResult | None:
        """Commit what is new now; durable when this returns (None: nothing new and `skip_empty`).

        Raises:
            CacheError: the folder could not be written (the previous commit stands).
        """
        with self._commit_lock:
            copy = self.background  # without a thread, commits write views of the rings, under the lock
            with self._lock:
                pending = self.folder.prepare(self.store, copy=copy, skip_empty=skip_empty)
                if pending is None:
                    return None
                if not copy:
                    result = self.folder.commit(pending)
            if copy:
                result = self.folder.commit(pending)
            if result.transitions or result.frames:
                self.last = result
            self.error = None
            return result

    def merge(self) -> int:
        """Merge small segments now (what the thread does after each commit)."""
        with self._commit_lock:
            return self.folder.merge(self.capacity)

    def _run(self) -> None:
        assert self.interval_s is not None
        # A fixed rate: commit k starts at k intervals (a slow commit does not push the later
        # ones back), so what is added waits at most one interval plus one write to be durable.
        due = time.monotonic() + self.interval_s
        while not self._stop.wait(max(0.0, due - time.monotonic())):
            self._background_commit()
            due = max(due + self.interval_s, time.monotonic())

    def _background_commit(self) -> None:
        try:
            self.commit(skip_empty=True)
            self.merge()
        except (CacheError, OSError) as e:
            if str(e) != str(self.error):
                log.error("bufconv: background commit of %s failed (retrying every %.1f s): %s",
                          self.folder.path, self.interval_s, e)  # fmt: skip
            self.error = e
        except Exception as e:  # never let the thread die silently: the buffer would stop persisting
            log.exception("bufconv: background commit of %s failed", self.folder.path)
            self.error = e

    def close(self) -> None:
        """Stop the thread and commit what is left (background commits only). Idempotent."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stop.set()
        thread.join()
        if self.folder.manifest is not None and not self.folder.read_only:
            try:
                self.commit(skip_empty=True)
            except (CacheError, OSError) as e:
                log.error("bufconv: the last commit of %s failed: %s", self.folder.path, e)
                self.error = e
