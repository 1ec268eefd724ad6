"""Crash safety and concurrency of cache writing (SPEC §4: atomic write, lock, second builder waits).

A build is SIGKILLed at many moments spread over its duration; after every kill the cache path
holds a valid cache (the old one or the new one, never a partial file), and the debris of the
dead builders (temporary files, lock file) is gone after the next successful build. Two
processes asking for the same stale cache at once build it once. A dead lock holder does not
block the next builder.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import numpy as np
import pytest
import torch

import bufconv
from bufconv.cache.lock import locked
from bufconv.errors import LockTimeoutError
from bufconv.source.writer import EpisodeData, write_dataset

CAMERAS = ("observation.images.front", "observation.images.side")
EPISODES, FRAMES, SIDE = 4, 150, 96
TRIALS = 20
WAIT_S = 120  # a generous bound on any one subprocess step, so a bug fails instead of hanging


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A v3.0 dataset (real AV1 video) large enough that a build takes a noticeable time."""
    rng = np.random.default_rng(7)
    yy, xx = np.mgrid[0:SIDE, 0:SIDE]
    episodes = []
    for e in range(EPISODES):
        t = np.arange(FRAMES)[:, None, None]
        front = np.stack(
            [(xx * 3 + t * 7 + e * 20) % 256, (yy * 2 + t * 3) % 256, ((xx + yy) + e * 50) % 256 + 0 * t], -1
        )
        episodes.append(
            EpisodeData(
                frames={
                    CAMERAS[0]: front.astype(np.uint8),
                    CAMERAS[1]: front[:, ::-1, :, ::-1].astype(np.uint8),
                    "observation.state": rng.standard_normal((FRAMES, 4)).astype(np.float32),
                    "action": rng.standard_normal((FRAMES, 2)).astype(np.float32),
                    "next.reward": (np.arange(FRAMES) == FRAMES - 1).astype(np.float32),
                }
            )
        )
    return write_dataset(tmp_path_factory.mktemp("crash") / "dataset", episodes, fps=10)


def debris(cache: Path) -> list[str]:
    """Temporary and lock files of builders of `cache`, as the format names them."""
    return sorted(p.name for p in cache.parent.iterdir() if p.name.startswith(f".{cache.name}."))


def child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


# ---- crash safety ---------------------------------------------------------------------------

# A fork server: imports once, then forks one builder per "build" line and reports its pid and,
# when it ends, its wait status. Each forked child runs bufconv.build(..., force=True) from scratch.
# (pandas, which reading parquet imports lazily, is imported up front so that the build time,
# over which the kills are spread, is mostly spent writing the cache.)
FORK_SERVER = r"""
import os, sys
import pandas, pyarrow.parquet
import bufconv, bufconv.convert.pipeline, bufconv.convert.units, bufconv.source.video, bufconv.cache.verification
dataset, output = sys.argv[1], sys.argv[2]
for line in sys.stdin:
    if line.strip() != "build":
        break
    pid = os.fork()
    if pid == 0:
        try:
            bufconv.build(dataset, output, image_range=255, workers=1, force=True)
        except BaseException as e:
            os.write(2, f"build failed: {e!r}\n".encode())
            os._exit(1)
        os._exit(0)
    print(pid, flush=True)
    print(os.waitpid(pid, 0)[1], flush=True)
"""


class ForkServer:
    def __init__(self, dataset: Path, cache: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", FORK_SERVER, str(dataset), str(cache)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=child_env(),
        )

    def _line(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"the fork server died (exit {self.proc.poll()})"
        return line.strip()

    def build(self, kill_after: float | None = None) -> tuple[int, float]:
        """Start a build; SIGKILL it after `kill_after` seconds (None: let it finish).

        Returns its wait status and the seconds from its start to its end.
        """
        stdin: IO[str] | None = self.proc.stdin
        assert stdin is not None
        stdin.write("build\n")
        stdin.flush()
        pid = int(self._line())
        started = time.perf_counter()
        if kill_after is not None:
            time.sleep(kill_after)
            with contextlib.suppress(ProcessLookupError):  # it had already finished and been reaped
                os.kill(pid, signal.SIGKILL)
        status = int(self._line())
        return status, time.perf_counter() - started

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


@pytest.fixture
def fork_server(dataset: Path, tmp_path: Path) -> Iterator[tuple[ForkServer, Path]]:
    cache = tmp_path / "offline_buffer.pt"
    server = ForkServer(dataset, cache)
    try:
        yield server, cache
    finally:
        server.close()


def test_build_killed_at_any_moment_leaves_a_valid_cache(
    dataset: Path, fork_server: tuple[ForkServer, Path]
) -> None:
    """SIGKILL at 20 moments spread over a forced rebuild: the path always holds a valid cache
    (the old range-1 one or the new range-255 one, same pixels), never a partial file; the
    next successful build removes every temporary and lock file the dead builders left."""
    server, cache = fork_server
    bufconv.build(dataset, cache, image_range=1, workers=1)
    reference = {k: v.clone() for k, v in torch.load(cache, weights_only=True)["tensors"].items()}

    durations = []
    for _ in range(2):
        status, seconds = server.build()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        durations.append(seconds)
    duration = max(durations)
    bufconv.build(dataset, cache, image_range=1, workers=1, force=True)  # back to the old cache

    rng = random.Random(20240607)
    delays = [duration * 1.25 * (i + rng.random()) / TRIALS for i in range(TRIALS)]
    outcomes = []
    left_debris = 0
    for delay in delays:
        status, _ = server.build(kill_after=delay)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        assert killed or (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0), status
        report = bufconv.verify(cache)
        assert report.ok, f"after a kill at {delay:.3f} s of {duration:.3f} s: {report.problems}"
        assert set(report.ranges.values()) in ({1}, {255})
        tensors = torch.load(cache, weights_only=True)["tensors"]
        for name in CAMERAS:
            assert torch.equal(tensors[name], reference[name])
        outcomes.append("new" if report.ranges[CAMERAS[0]] == 255 else "old")
        left_debris += any(".tmp-" in name for name in debris(cache))
    assert left_debris, f"no kill landed while a temporary file existed (build {duration:.3f} s)"

    status, _ = server.build()
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert debris(cache) == []
    assert bufconv.verify(cache).ok
    print(f"build {duration:.3f} s; outcomes {outcomes}; {left_debris} kills left temporary files")


# ---- concurrency ----------------------------------------------------------------------------

LEARNER = r"""
import json, os, sys, time
import bufconv, bufconv.buffer.loader, bufconv.convert.pipeline, bufconv.convert.units, bufconv.source.video
dataset, cache, ready, go = sys.argv[1:5]
open(ready, "w").close()
while not os.path.exists(go):
    time.sleep(0.001)
buffer = bufconv.load_or_build(dataset, cache, image_range=255, workers=1, use_drq=False)
batch = buffer.sample(8)
image = batch["state"]["observation.images.front"]
print(json.dumps({"status": buffer.status, "reasons": buffer.stale_reasons, "len": len(buffer),
                  "max": float(image.max()), "shape": list(image.shape)}))
"""


def test_two_learners_on_one_stale_cache_build_it_once(dataset: Path, tmp_path: Path) -> None:
    """Two processes released together on a stale cache: both get a working buffer in the new
    range; exactly one rebuilds, the other finds the fresh cache (a hit)."""
    cache = tmp_path / "offline_buffer.pt"
    bufconv.build(dataset, cache, image_range=1, workers=1)
    go = tmp_path / "go"
    ready = [tmp_path / f"ready-{i}" for i in range(2)]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", LEARNER, str(dataset), str(cache), str(r), str(go)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=child_env(),
        )
        for r in ready
    ]
    try:
        deadline = time.monotonic() + WAIT_S
        while not all(r.exists() for r in ready):
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            assert time.monotonic() < deadline
            time.sleep(0.01)
        go.touch()
        outputs = [p.communicate(timeout=WAIT_S) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    results = []
    for p, (out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
        results.append(json.loads(out.strip().splitlines()[-1]))
    assert sorted(r["status"] for r in results) == ["hit", "rebuilt"], results
    for r in results:
        assert r["len"] == EPISODES * FRAMES
        assert r["shape"] == [8, 3, SIDE, SIDE]
        assert 1 < r["max"] <= 255  # range 255, as requested by both
        assert bool(r["reasons"]) == (r["status"] == "rebuilt")
    report = bufconv.verify(cache)
    assert report.ok
    assert set(report.ranges.values()) == {255}
    assert debris(cache) == []


LOCK_HOLDER = r"""
import os, sys, time
from pathlib import Path
from bufconv.cache.lock import locked
with locked(Path(sys.argv[1])):
    print(os.getpid(), flush=True)
    time.sleep(600)
"""


def test_lock_of_a_killed_holder_does_not_block_the_next_builder(dataset: Path, tmp_path: Path) -> None:
    """A process holding the cache lock is SIGKILLed: the kernel frees the lock, the next
    builder proceeds (no hang) and leaves no lock file."""
    cache = tmp_path / "offline_buffer.pt"
    holder = subprocess.Popen(
        [sys.executable, "-c", LOCK_HOLDER, str(cache)], stdout=subprocess.PIPE, text=True, env=child_env()
    )
    try:
        assert holder.stdout is not None
        assert int(holder.stdout.readline()) == holder.pid
        with pytest.raises(LockTimeoutError, match=f"pid {holder.pid}"), locked(cache, timeout=0.2):
            pass  # the lock is really held
        assert debris(cache) == [f".{cache.name}.lock"]
    finally:
        holder.kill()
        holder.wait()
        assert holder.stdout is not None
        holder.stdout.close()
    buffer = bufconv.load_or_build(dataset, cache, workers=1, use_drq=False, lock_timeout=WAIT_S)
    assert buffer.status == "built"
    assert len(buffer) == EPISODES * FRAMES
    assert bufconv.verify(cache).ok
    assert debris(cache) == []
