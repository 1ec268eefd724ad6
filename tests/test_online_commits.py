"""Background commits of the online buffer (SPEC section 11, "Nothing lost between checkpoints").

What is added reaches the folder every `commit_interval_s` without `checkpoint()`; `add` never
waits for the disk; a process killed at a random moment loses at most the last interval;
small segments are merged (a bounded number of files) without changing what resumes; a normal
exit, `close()` and garbage collection commit what is left; the offline buffer's added
transitions are committed the same way.
"""

from __future__ import annotations

import gc
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from bufconv import OnlineBuffer
from bufconv.buffer import persist
from bufconv.cache import segments as seg

ROOT = Path(__file__).resolve().parents[1]
CAMERA, STATE = "observation.images.front", "observation.state"
WAIT_S = 30.0  # a deadline for conditions, never a measured duration


def transition(n: int) -> dict:
    """Transition number n, derived from n alone (so a resumed buffer can be checked by number)."""
    g = torch.Generator().manual_seed(n)
    return {
        "state": {
            CAMERA: torch.randint(0, 256, (3, 32, 32), generator=g).float() / 255,
            STATE: torch.full((4,), float(n)),
        },
        "action": torch.full((2,), float(n)),
        "reward": float(n % 7),
        "next_state": {
            CAMERA: torch.randint(0, 256, (3, 32, 32), generator=g).float() / 255,
            STATE: torch.full((4,), n + 0.5),
        },
        "done": n % 10 == 9,
        "truncated": False,
    }


def assert_numbered(buffer: OnlineBuffer, first: int = 0) -> None:
    """The buffer holds transitions first, first+1, ... exactly as `transition` made them."""
    if not len(buffer):
        return
    batch = buffer[list(range(len(buffer)))]
    numbers = batch["action"][:, 0].to(torch.int64).tolist()
    assert numbers == list(range(first, first + len(buffer)))
    for i, n in enumerate(numbers):
        t = transition(n)
        assert torch.equal(batch["state"][CAMERA][i], (t["state"][CAMERA] * 255).round() / 255)
        assert torch.equal(batch["next_state"][CAMERA][i], (t["next_state"][CAMERA] * 255).round() / 255)
        assert torch.equal(batch["next_state"][STATE][i], t["next_state"][STATE])


def wait_for(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"not within {WAIT_S} s: {what}"
        time.sleep(0.02)


def committed(folder: Path) -> int:
    manifest = json.loads((folder / "manifest.json").read_text())
    return int(manifest["transitions"]["end"])


def test_added_transitions_are_committed_without_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "online"
    buffer = OnlineBuffer(capacity=100, path=folder, commit_interval_s=0.05)
    for n in range(25):
        buffer.add(**transition(n))
    wait_for(lambda: (folder / "manifest.json").exists() and committed(folder) == 25, "25 committed")
    reader = OnlineBuffer(capacity=100, path=folder, read_only=True)  # what a crash would leave
    assert len(reader) == 25
    assert_numbered(reader)
    assert buffer.commits is not None and buffer.commits.last is not None
    assert buffer.commits.error is None
    buffer.close()


def test_without_an_interval_nothing_is_committed_before_checkpoint(tmp_path: Path) -> None:
    folder = tmp_path / "online"
    buffer = OnlineBuffer(capacity=100, path=folder, commit_interval_s=None)
    for n in range(5):
        buffer.add(**transition(n))
    time.sleep(0.3)
    assert not (folder / "manifest.json").exists()
    assert buffer.checkpoint().transitions == 5
    buffer.close()


def test_add_and_sample_never_wait_for_the_disk(tmp_path: Path, monkeypatch) -> None:
    """A commit stuck in its segment write: adds and samples go on meanwhile, then it lands."""
    entered, release, writing = threading.Event(), threading.Event(), threading.Event()
    real_write = seg.write_segment

    def stuck_write(*args, **kwargs):
        entered.set()
        writing.set()
        try:
            release.wait(10)  # an add that waited for the disk goes on only after this
            return real_write(*args, **kwargs)
        finally:
            writing.clear()

    monkeypatch.setattr(seg, "write_segment", stuck_write)
    buffer = OnlineBuffer(capacity=1000, path=tmp_path / "online", commit_interval_s=0.05)
    for n in range(10):
        buffer.add(**transition(n))
    assert entered.wait(WAIT_S), "no background commit started"
    for n in range(10, 210):  # all while the disk write is stuck
        buffer.add(**transition(n))
        buffer.sample(4)
    assert len(buffer) == 210
    assert writing.is_set(), "the adds waited for the stuck write"
    release.set()
    buffer.checkpoint()  # waits for the stuck commit, then commits the tail
    buffer.close()
    monkeypatch.setattr(seg, "write_segment", real_write)
    resumed = OnlineBuffer(capacity=1000, path=tmp_path / "online")
    assert (len(resumed), resumed.lost) == (210, 0)
    assert_numbered(resumed)
    resumed.close()


def test_close_and_garbage_collection_commit_what_is_left(tmp_path: Path) -> None:
    for how in ("close", "gc"):
        folder = tmp_path / how
        buffer = OnlineBuffer(capacity=100, path=folder, commit_interval_s=3600)
        for n in range(12):
            buffer.add(**transition(n))
        if how == "close":
            buffer.close()
        else:
            del buffer
            gc.collect()
        assert committed(folder) == 12, how


CHILD = """
import json, sys, time
sys.path.insert(0, {tests!r})
from test_online_commits import transition
from bufconv import OnlineBuffer

buffer = OnlineBuffer(capacity={capacity}, path={folder!r}, commit_interval_s={interval})
start = len(buffer) and int(buffer[[len(buffer) - 1]]["action"][0, 0]) + 1
log = open({log!r}, "a", buffering=1)
log.write(json.dumps({{"resumed": len(buffer), "first": start, "lost": buffer.lost}}) + "\\n")
n = start
while True:
    buffer.add(**transition(n))
    log.write(json.dumps({{"n": n, "t": time.monotonic()}}) + "\\n")  # after add returned
    n += 1
    time.sleep({pause})
"""


@pytest.mark.slow
def test_sigkill_at_random_moments_loses_at_most_the_last_interval(tmp_path: Path) -> None:
    """A process adds ~100 transitions a second, commits every second, never calls checkpoint(),
    and is SIGKILLed at random moments, then resumed and killed again. Each time, the folder holds
    exactly the transitions 0..k-1 (equal by number), and every transition added more than one
    interval (plus the commit's own write, bounded here by SLACK_S) before the kill is among them."""
    interval, slack_s, capacity = 1.0, 0.75, 100_000
    folder = tmp_path / "online"
    rng = random.Random(int.from_bytes(os.urandom(4), "little"))
    kept = 0
    for round_ in range(3):
        log = tmp_path / f"added-{round_}.jsonl"
        script = CHILD.format(
            tests=str(ROOT / "tests"), capacity=capacity, folder=str(folder), interval=interval, log=str(log), pause=0.01
        )  # fmt: skip
        with open(tmp_path / f"stderr-{round_}.txt", "wb") as stderr:
            child = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stderr=stderr)
        wait_for(lambda log=log: log.exists() and log.read_text().count('"n"') > 50, "the child adding")
        time.sleep(rng.uniform(1.5, 4.0))  # a random moment (seeded from the OS: a new one each run)
        child.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        child.wait()
        rows = [json.loads(line) for line in log.read_text().splitlines()]
        assert rows[0]["resumed"] == rows[0]["first"] == kept  # it went on from what the folder held
        times = {row["n"]: row["t"] for row in rows[1:]}
        reader = OnlineBuffer(capacity=capacity, path=folder, read_only=True)
        assert_numbered(reader)  # 0..k-1, each equal to what was added under its number: nothing else
        assert len(reader) <= max(times) + 1
        surely = [n for n, t in times.items() if t < killed_at - interval - slack_s]
        assert surely, f"round {round_}: the child added nothing early enough to check"
        assert len(reader) > max(surely), (
            f"round {round_}: transitions {len(reader)}..{max(surely)} were added more than "
            f"{interval + slack_s} s before the kill but are not in the folder"
        )
        kept = len(reader)


def test_small_segments_are_merged_and_resume_is_unchanged(tmp_path: Path) -> None:
    folder = tmp_path / "online"
    buffer = OnlineBuffer(capacity=150, path=folder, commit_interval_s=None)
    for n in range(300):  # 300 commits of one transition; the ring wraps twice
        buffer.add(**transition(n))
        buffer.checkpoint()
        assert buffer.commits is not None
        buffer.commits.merge()
    files = sorted(p.name for p in folder.glob("seg-*.pt"))
    manifest = json.loads((folder / "manifest.json").read_text())
    assert files == sorted(s["file"] for s in manifest["segments"])  # no stray file
    assert len(files) <= 3 * seg.MERGE_FANOUT, files  # 300 commits, a few dozen KB each
    buffer.close()
    resumed = OnlineBuffer(capacity=150, path=folder)
    assert (len(resumed), resumed.lost, resumed.warnings) == (150, 0, [])
    assert_numbered(resumed, first=150)
    resumed.close()


def test_a_merge_cut_short_loses_nothing(tmp_path: Path, monkeypatch) -> None:
    """The merged segment written, the process dies before its manifest: the old segments stand."""
    folder = tmp_path / "online"
    buffer = OnlineBuffer(capacity=100, path=folder, commit_interval_s=None)
    for n in range(seg.MERGE_FANOUT):
        buffer.add(**transition(n))
        buffer.checkpoint()

    def dies(*args, **kwargs):
        raise KeyboardInterrupt("killed before the manifest")

    monkeypatch.setattr(persist, "write_manifest", dies)
    assert buffer.commits is not None
    with pytest.raises(KeyboardInterrupt):
        buffer.commits.merge()
    monkeypatch.undo()
    assert len(list(folder.glob("seg-*.pt"))) == seg.MERGE_FANOUT + 1  # the merged one is not named
    buffer.folder.close()  # type: ignore[union-attr]
    resumed = OnlineBuffer(capacity=100, path=folder)
    assert (len(resumed), resumed.lost) == (seg.MERGE_FANOUT, 0)
    assert_numbered(resumed)
    assert len(list(folder.glob("seg-*.pt"))) == seg.MERGE_FANOUT  # the unnamed file dropped
    resumed.close()


def test_a_merge_never_launders_a_corrupt_segment(tmp_path: Path) -> None:
    folder = tmp_path / "online"
    buffer = OnlineBuffer(capacity=100, path=folder, commit_interval_s=None)
    for n in range(seg.MERGE_FANOUT):
        buffer.add(**transition(n))
        buffer.checkpoint()
    victim = sorted(folder.glob("seg-*.pt"))[3]
    data = bytearray(victim.read_bytes())
    data[-200] ^= 0xFF  # inside the last tensor's payload
    victim.write_bytes(bytes(data))
    assert buffer.commits is not None
    assert buffer.commits.merge() == 0  # refused: the checksums are left for resume to report
    assert len(list(folder.glob("seg-*.pt"))) == seg.MERGE_FANOUT
    buffer.close()


def test_offline_added_transitions_are_committed_in_the_background(tmp_path: Path, lerobot_dataset) -> None:
    import bufconv

    cache = tmp_path / "offline_buffer.pt"
    added = tmp_path / "added"
    offline = bufconv.load_or_build(lerobot_dataset(), cache, added_path=added, commit_interval_s=0.05)
    rows = offline[[0, 1, 2]]
    for i in range(3):
        offline.add(
            {k: v[i] for k, v in rows["state"].items()},
            rows["action"][i],
            1.0,
            {k: v[i] for k, v in rows["next_state"].items()},
            False,
            False,
        )
    wait_for(
        lambda: (added / "manifest.json").exists() and committed(added) == 3, "3 added transitions committed"
    )
    offline.close()
