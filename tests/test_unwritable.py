"""A cache path in a read-only or full location (SPEC §9): one clear line, nothing half-written.

Each test puts a valid old cache in the location first, then asks for a rebuild there. The
error must be a `CacheError` (CLI: exit 1, one line on stderr, no traceback) that names the
folder and says what to do; no temporary or lock file may be left, and the old cache must keep
its exact bytes.

How "unwritable" is made real even as root (these tests run as root here, where permission
bits are not enforced):

- read-only folder: chmod 0o555, and the bufconv process runs without the capabilities that
  let root ignore permission bits (CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH, CAP_FOWNER are
  dropped from its bounding set before exec, so the kernel enforces the mode); as a normal user
  the same chmod is enforced anyway. A probe write in that process proves the folder is
  really read-only to it.
- a folder that is a regular file: fails for everyone.
- full disk: the build runs under RLIMIT_FSIZE with SIGXFSZ ignored (writes past the limit fail
  with EFBIG), at two limits: one the tensor area does not fit in, one that only the header
  (`data.pkl` and the zip directory) does not fit in; and, in-process, `os.statvfs` reporting
  almost no free space (the writer's up-front space check).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import json
import os
import resource
import signal
import subprocess
import sys
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import bufconv
from bufconv.cache.archive import read_layout
from bufconv.cli import cli
from bufconv.errors import CacheError

FIX_HINTS = ("-o/--output", "cache_path=", "free some space")
CLI = "from bufconv.cli import main; main()"
_PR_CAPBSET_DROP = 24
_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER = 1, 2, 3


def load(dataset: Path, cache: Path, **kwargs: Any) -> bufconv.OfflineBuffer:
    return bufconv.load_or_build(dataset, cache, workers=1, use_drq=False, **kwargs)


def debris(cache: Path) -> list[str]:
    """Temporary and lock files of builders of `cache`."""
    return sorted(p.name for p in cache.parent.iterdir() if p.name.startswith(f".{cache.name}."))


def assert_clear_error(message: str, folder: Path) -> None:
    """One line that names the folder and says what to do."""
    assert "\n" not in message.strip(), message
    assert str(folder) in message, message
    assert any(hint in message for hint in FIX_HINTS), f"no fix given: {message}"


def assert_one_line_cli_error(stderr: str, folder: Path) -> str:
    assert "Traceback" not in stderr, stderr
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("bufconv: error: "), stderr
    assert_clear_error(lines[0], folder)
    return lines[0]


def child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
        "PYTHONDONTWRITEBYTECODE": "1",
    }


@pytest.fixture
def old_cache(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path, bytes]:
    """(dataset, cache path, cache bytes): a valid range-1 cache in its own folder."""
    dataset = lerobot_dataset()
    cache = tmp_path / "caches" / "offline_buffer.pt"
    assert load(dataset, cache).status == "built"
    return dataset, cache, cache.read_bytes()


# ---- read-only folder -----------------------------------------------------------------------


def _without_dac_override() -> None:
    """preexec_fn: drop root's permission-bypassing capabilities, so modes are enforced after exec."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (_CAP_DAC_OVERRIDE, _CAP_DAC_READ_SEARCH, _CAP_FOWNER):
        if libc.prctl(_PR_CAPBSET_DROP, cap, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def run_restricted(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
        preexec_fn=_without_dac_override if os.geteuid() == 0 else None,
    )


READ_ONLY_API = r"""
import json, sys
from pathlib import Path
import bufconv
dataset, cache = sys.argv[1:3]
out = {}
try:
    (Path(cache).parent / "probe").touch()
    out["probe"] = "written"
except PermissionError:
    out["probe"] = "denied"
out["same options"] = bufconv.load_or_build(dataset, cache, workers=1, use_drq=False).status
try:
    bufconv.load_or_build(dataset, cache, image_range=255, workers=1, use_drq=False)
    out["other range"] = "built"
except bufconv.CacheError as e:
    out["other range"] = {"type": type(e).__name__, "message": str(e), "path": e.path}
print(json.dumps(out))
"""


@pytest.fixture
def read_only(old_cache: tuple[Path, Path, bytes]) -> Any:
    dataset, cache, data = old_cache
    cache.parent.chmod(0o555)
    try:
        yield dataset, cache, data
    finally:
        cache.parent.chmod(0o755)


def test_read_only_folder_api(read_only: tuple[Path, Path, bytes]) -> None:
    """A fresh cache in a read-only folder still loads (a hit needs no lock); a rebuild there is
    a CacheError naming the folder and the fix; the old cache is untouched."""
    dataset, cache, data = read_only
    done = run_restricted("-c", READ_ONLY_API, str(dataset), str(cache))
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["probe"] == "denied", "precondition: the folder must be read-only to the bufconv process"
    assert out["same options"] == "hit"
    error = out["other range"]
    assert isinstance(error, dict), "a rebuild into a read-only folder must fail"
    assert error["type"] == "CacheError"
    assert error["path"] == str(cache.parent)
    assert_clear_error(error["message"], cache.parent)
    assert cache.read_bytes() == data
    assert debris(cache) == []


def test_read_only_folder_cli(read_only: tuple[Path, Path, bytes]) -> None:
    """`bufconv build --force` into a read-only folder: exit 1, one line, old cache untouched."""
    dataset, cache, data = read_only
    done = run_restricted("-c", CLI, "build", str(dataset), "-o", str(cache), "--force", "--workers", "1")
    assert done.returncode == 1, done.stderr
    line = assert_one_line_cli_error(done.stderr, cache.parent)
    assert "Permission denied" in line, line  # the folder's refusal, not a retry's "No such file"
    assert "No such file" not in line and "cache_path=" not in line, line
    assert cache.read_bytes() == data
    assert debris(cache) == []


# ---- locks ---------------------------------------------------------------------------------------


LOCKED_BY_ANOTHER_USER = r"""
import sys
import bufconv
print(bufconv.load_or_build(sys.argv[1], sys.argv[2], image_range=255, workers=1, use_drq=False).status)
"""


def test_lock_file_left_read_only_by_another_user(old_cache: tuple[Path, Path, bytes]) -> None:
    """A shared folder holding a lock file this process may not write (another user made it): the
    lock is still taken through a read-only descriptor, the rebuild happens, nothing is left."""
    dataset, cache, _ = old_cache
    lock = cache.parent / f".{cache.name}.lock"
    lock.write_text("")
    lock.chmod(0o444)
    done = run_restricted("-c", LOCKED_BY_ANOTHER_USER, str(dataset), str(cache))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["rebuilt"]
    ranges = bufconv.cache.reader.read_header(cache)["ranges"]
    assert ranges and all(r == {"storage": "uint8", "output": 255} for r in ranges.values())
    assert debris(cache) == []


def test_filesystem_without_file_locks(
    old_cache: tuple[Path, Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """flock failing with ENOLCK (some NFS and FUSE mounts): a CacheError naming the folder and
    the fix (a local disk via -o/--output), no lock file left, the old cache untouched."""
    dataset, cache, data = old_cache

    def no_locks(fd: int, operation: int) -> None:
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    with pytest.raises(CacheError) as error:
        load(dataset, cache, image_range=255)
    assert_clear_error(str(error.value), cache.parent)
    assert "lock" in str(error.value)
    assert cache.read_bytes() == data
    assert debris(cache) == []


# ---- a folder that is a file ------------------------------------------------------------------


def test_cache_folder_that_is_a_regular_file(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """Parent path is a regular file (unwritable even for root): API CacheError and CLI exit 1,
    both naming the folder and the fix; the file is left as it was."""
    dataset = lerobot_dataset()
    blocker = tmp_path / "not_a_folder"
    blocker.write_bytes(b"a file, not a folder")
    for cache in (blocker / "offline_buffer.pt", blocker / "sub" / "offline_buffer.pt"):
        with pytest.raises(CacheError) as error:
            load(dataset, cache)
        assert type(error.value) is CacheError
        assert_clear_error(str(error.value), cache.parent)
        result = CliRunner().invoke(cli, ["build", str(dataset), "-o", str(cache), "--workers", "1"])
        assert result.exit_code == 1, result.output
        assert_one_line_cli_error(result.stderr, cache.parent)
    assert blocker.read_bytes() == b"a file, not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["not_a_folder"]


# ---- full disk ---------------------------------------------------------------------------------


def file_size_limits(cache: Path) -> dict[str, int]:
    """RLIMIT_FSIZE values that stop a rebuild of `cache` while reserving the tensor area, and
    later, while writing the header after the tensors."""
    records = read_layout(cache).records
    tensors_end = max(offset + size for name, (offset, size) in records.items() if name.startswith("data/"))
    header = records["data.pkl"][0]
    assert tensors_end < header < cache.stat().st_size
    return {"tensors": tensors_end // 2, "header": header}


def _limit_file_size(limit: int) -> Callable[[], None]:
    def preexec() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    return preexec


FULL_DISK_API = r"""
import json, resource, signal, sys
import bufconv
dataset, cache, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))
try:
    bufconv.load_or_build(dataset, cache, image_range=255, workers=1, use_drq=False)
    print(json.dumps({"built": True}))
except bufconv.CacheError as e:
    print(json.dumps({"type": type(e).__name__, "message": str(e), "path": e.path}))
"""


@pytest.mark.parametrize("stage", ["tensors", "header"])
def test_full_disk_api(stage: str, old_cache: tuple[Path, Path, bytes]) -> None:
    """Writes fail (EFBIG) partway through a rebuild: CacheError naming the folder and the fix,
    no temporary file left, the old cache byte-identical."""
    dataset, cache, data = old_cache
    limit = file_size_limits(cache)[stage]
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK_API, str(dataset), str(cache), str(limit)],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert "built" not in out, f"the file size limit {limit} did not stop the build"
    assert out["type"] == "CacheError"
    assert_clear_error(out["message"], cache.parent)
    assert cache.read_bytes() == data
    assert debris(cache) == []


@pytest.mark.parametrize("stage", ["tensors", "header"])
def test_full_disk_cli(stage: str, old_cache: tuple[Path, Path, bytes]) -> None:
    """The same through `bufconv build --force`: exit 1, one line on stderr, no traceback."""
    dataset, cache, data = old_cache
    limit = file_size_limits(cache)[stage]
    done = subprocess.run(
        [sys.executable, "-c", CLI, "build", str(dataset), "-o", str(cache), "--force", "--workers", "1"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=300,
        preexec_fn=_limit_file_size(limit),
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert_one_line_cli_error(done.stderr, cache.parent)
    assert cache.read_bytes() == data
    assert debris(cache) == []


@pytest.fixture
def no_free_space(monkeypatch: pytest.MonkeyPatch, old_cache: tuple[Path, Path, bytes]) -> None:
    """os.statvfs reports 64 KiB free in the cache's folder."""
    folder = old_cache[1].parent
    real = os.statvfs

    def statvfs(path: Any) -> Any:
        if Path(path) == folder:
            return types.SimpleNamespace(f_bavail=16, f_frsize=4096, f_bsize=4096)
        return real(path)

    monkeypatch.setattr(os, "statvfs", statvfs)


def test_no_free_space_api(old_cache: tuple[Path, Path, bytes], no_free_space: None) -> None:
    """Too little free space for the cache: refused up front with the sizes and the fix."""
    dataset, cache, data = old_cache
    with pytest.raises(CacheError) as error:
        load(dataset, cache, image_range=255)
    assert_clear_error(str(error.value), cache.parent)
    assert "free" in str(error.value)
    assert cache.read_bytes() == data
    assert debris(cache) == []
    assert load(dataset, cache).status == "hit"  # reading needs no space


def test_no_free_space_cli(old_cache: tuple[Path, Path, bytes], no_free_space: None) -> None:
    """`bufconv build --range 255` with no free space: exit 1, one line, old cache untouched."""
    dataset, cache, data = old_cache
    result = CliRunner().invoke(
        cli, ["build", str(dataset), "-o", str(cache), "--range", "255", "--workers", "1"]
    )
    assert result.exit_code == 1, result.output
    line = assert_one_line_cli_error(result.stderr, cache.parent)
    assert "not enough free space" in line
    assert "margin" in line
    assert cache.read_bytes() == data
    assert debris(cache) == []


def test_free_space_just_above_the_cache_size_is_enough(
    old_cache: tuple[Path, Path, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder with the cache's size plus the stated margin free builds (no hidden 64 MiB
    margin); with less than the tensors need it is refused, and the message gives both parts."""
    dataset, cache, data = old_cache
    folder, real = cache.parent, os.statvfs
    free = {"bytes": len(data) + (1 << 20)}

    def statvfs(path: Any) -> Any:
        if Path(path) == folder:
            return types.SimpleNamespace(f_bavail=free["bytes"] // 4096, f_frsize=4096, f_bsize=4096)
        return real(path)

    monkeypatch.setattr(os, "statvfs", statvfs)
    assert load(dataset, cache, image_range=255).status == "rebuilt"
    free["bytes"] = len(data) // 2
    with pytest.raises(CacheError) as error:
        load(dataset, cache, image_range=1)
    message = str(error.value)
    assert "of tensors plus a 1.0 MB margin" in message, message
    assert f"{len(data) // 2 / 1e6:.1f} MB free" in message, message
