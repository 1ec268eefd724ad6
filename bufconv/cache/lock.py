"""The lock that serialises builders of one cache path: an flock on a file next to it."""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ..errors import CacheError, LockTimeoutError, unwritable_folder


def lock_path_for(final: Path) -> Path:
    return final.parent / f".{final.name}.lock"


@contextlib.contextmanager
def locked(final: Path, *, timeout: float | None = None, poll: float = 0.05) -> Iterator[None]:
    """Hold an exclusive lock on the cache path `final` (a `flock` on a file next to it).

    The kernel releases the lock when its holder dies, so a crashed builder never blocks the
    next one. The lock file is removed on release; a waiter that locked a file which was
    removed meanwhile notices (inode changed) and retries.

    Raises:
        CacheError: the folder is not writable.
        LockTimeoutError: `timeout` seconds passed while another process held the lock.
    """
    import fcntl

    path = lock_path_for(final)
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        fd = _open_lock_file(path, final)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            if deadline is not None and time.monotonic() > deadline:
                # A dead holder cannot hold an flock: this one is alive (do not delete its lock file).
                raise LockTimeoutError(
                    f"{final}: another process{holder} has been building this cache for over {timeout:g} s; "
                    "wait for it to finish, or stop it",
                    path=final,
                ) from None
            time.sleep(poll)
            continue
        except OSError as e:  # ENOLCK / EOPNOTSUPP: some network and FUSE filesystems
            os.close(fd)
            with contextlib.suppress(OSError):  # no one can hold a lock here: the file is only debris
                os.unlink(path)
            raise CacheError(
                f"{final.parent}: this filesystem does not support file locks ({os.strerror(e.errno or 0)}); "
                "put the cache on a local disk with -o/--output",
                path=final.parent,
            ) from e
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        with contextlib.suppress(OSError):  # a read-only descriptor: no pid, the lock still holds
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _open_lock_file(path: Path, final: Path) -> int:
    """The lock file, opened for writing the holder's pid, or read-only if only that is allowed
    (another user's lock file in a shared folder: flock works on read-only descriptors)."""
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except PermissionError as denied:
        try:
            return os.open(path, os.O_RDONLY)
        except OSError as e:
            # No lock file to share (ENOENT) means the folder itself refused it: report that
            # refusal, not the missing file of the read-only retry.
            raise unwritable_folder(final.parent, denied if e.errno == errno.ENOENT else e) from e
    except OSError as e:
        raise unwritable_folder(final.parent, e) from e


def _read_holder(fd: int) -> str:
    with contextlib.suppress(OSError, ValueError):
        pid = int(os.pread(fd, 32, 0).decode().strip())
        return f" (pid {pid})"
    return ""
