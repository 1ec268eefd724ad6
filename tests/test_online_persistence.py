"""Checkpoints of the online buffer: only what is new is written, whole or not at all, and resumed exactly."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from streams import FRONT, STATE, WRIST, stream

from bufconv.buffer.online import OnlineBuffer
from bufconv.cache import segments as seg
from bufconv.errors import CacheError


def equal_buffers(a: OnlineBuffer, b: OnlineBuffer) -> None:
    assert len(a) == len(b)
    if not len(a):
        return
    x, y = a[list(range(len(a)))], b[list(range(len(b)))]
    for part in ("state", "next_state"):
        for key in (FRONT, WRIST, STATE):
            assert torch.equal(x[part][key], y[part][key]), (part, key)
    for name in ("action", "reward", "done", "truncated"):
        assert torch.equal(x[name], y[name]), name
    for name in x["complementary_info"] or {}:
        assert torch.equal(x["complementary_info"][name], y["complementary_info"][name])


def fill(buffer: OnlineBuffer, transitions: list[dict]) -> None:
    for t in transitions:
        buffer.add(**t)


def test_checkpoint_then_resume_gives_the_same_buffer(tmp_path: Path) -> None:
    transitions = stream([5, 3, 8, 2])
    folder = tmp_path / "online_buffer"
    buffer = OnlineBuffer(capacity=100, image_range=1, path=folder)
    assert buffer.status == "new"
    fill(buffer, transitions)
    result = buffer.checkpoint()
    assert (result.transitions, result.checkpoint) == (len(transitions), 1)
    assert result.bytes == (folder / "seg-000001.pt").stat().st_size > 0
    buffer.close()

    resumed = OnlineBuffer(capacity=100, image_range=1, path=folder)
    assert (resumed.status, resumed.lost, resumed.warnings) == ("resumed", 0, [])
    equal_buffers(buffer, resumed)
    # and it goes on: new transitions, a second checkpoint with only those
    more = stream([4, 4], seed=1)
    fill(buffer, more)
    fill(resumed, more)
    second = resumed.checkpoint()
    assert (second.transitions, second.checkpoint) == (8, 2)
    resumed.close()
    again = OnlineBuffer(capacity=100, image_range=1, path=folder)
    equal_buffers(buffer, again)
    again.close()


def test_a_checkpoint_writes_only_what_is_new(tmp_path: Path) -> None:
    """The second checkpoint after 20 new transitions costs the same with 20 or 200 already stored."""
    sizes = {}
    for stored in (20, 200):
        buffer = OnlineBuffer(capacity=1000, path=tmp_path / f"b{stored}")
        fill(buffer, stream([stored]))
        buffer.checkpoint()
        fill(buffer, stream([20], seed=5))
        result = buffer.checkpoint()
        assert result.transitions == 20
        sizes[stored] = result.bytes
        buffer.close()
    assert sizes[20] == sizes[200]
    nothing = OnlineBuffer(capacity=10, path=tmp_path / "b20")
    assert nothing.checkpoint().bytes == 0  # nothing new: no segment
    nothing.close()


def test_segments_are_retired_as_the_ring_wraps(tmp_path: Path) -> None:
    folder = tmp_path / "ring"
    buffer = OnlineBuffer(capacity=10, path=folder)
    reference = OnlineBuffer(capacity=10)
    for k in range(8):
        part = stream([4], seed=k)
        fill(buffer, part)
        fill(reference, part)
        buffer.checkpoint()
    files = sorted(p.name for p in folder.glob("seg-*.pt"))
    # 10 transitions kept, 4 per checkpoint: the segments holding them (a segment retires with
    # its last transition), never the whole history
    assert files == ["seg-000006.pt", "seg-000007.pt", "seg-000008.pt"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert [s["file"] for s in manifest["segments"]] == files
    buffer.close()
    resumed = OnlineBuffer(capacity=10, path=folder)
    equal_buffers(reference, resumed)
    resumed.close()


def test_resume_with_a_smaller_capacity_keeps_the_newest(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    buffer = OnlineBuffer(capacity=50, path=folder)
    transitions = stream([6, 6, 6])
    fill(buffer, transitions)
    buffer.checkpoint()
    buffer.close()
    small = OnlineBuffer(capacity=5, path=folder)
    reference = OnlineBuffer(capacity=5)
    fill(reference, transitions)
    equal_buffers(reference, small)
    small.close()


def test_a_folder_is_used_by_one_buffer_and_refuses_mismatches(tmp_path: Path) -> None:
    folder = tmp_path / "b"
    buffer = OnlineBuffer(capacity=10, image_range=1, path=folder)
    fill(buffer, stream([3]))
    buffer.checkpoint()
    with pytest.raises(CacheError, match="is using this buffer folder"):
        OnlineBuffer(capacity=10, path=folder)
    buffer.close()
    with pytest.raises(CacheError, match="range 1, not 255"):
        OnlineBuffer(capacity=10, image_range=255, path=folder)
    with pytest.raises(CacheError, match="already holds an online buffer"):
        OnlineBuffer(capacity=10, path=folder, resume=False)


def _damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "flip":
        data[len(data) // 2] ^= 0x40  # inside the frames' payload
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(bytes(data[: len(data) // 2]))


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_a_damaged_segment_is_reported_and_skipped_on_resume(tmp_path: Path, how: str) -> None:
    folder = tmp_path / "b"
    buffer = OnlineBuffer(capacity=100, path=folder)
    first, second = stream([4, 2]), stream([5], seed=2)
    fill(buffer, first)
    buffer.checkpoint()
    fill(buffer, second)
    buffer.checkpoint()
    buffer.close()
    _damage(folder / "seg-000002.pt", how)

    opened = seg.open_folder(folder)
    assert [p.code for p in opened.problems] == ["checksum-mismatch" if how == "flip" else "unreadable"]
    assert "seg-000002.pt" in opened.problems[0].message

    resumed = OnlineBuffer(capacity=100, path=folder)
    assert resumed.lost == len(second)  # every transition of the damaged segment, nothing else
    assert any("seg-000002.pt" in w for w in resumed.warnings)
    reference = OnlineBuffer(capacity=100)
    fill(reference, first)
    equal_buffers(reference, resumed)
    # the folder was rewritten to agree with the resumed buffer, and goes on checkpointing
    fill(resumed, stream([3], seed=9))
    resumed.checkpoint()
    resumed.close()
    assert seg.open_folder(folder).problems == []
    assert (folder / "seg-000002.pt.damaged").exists()


def test_an_uncommitted_segment_is_dropped_and_counted(tmp_path: Path) -> None:
    """A segment written by a checkpoint whose manifest never landed (a crash in between)."""
    folder = tmp_path / "b"
    buffer = OnlineBuffer(capacity=100, path=folder)
    fill(buffer, stream([4]))
    buffer.checkpoint()
    manifest = (folder / "manifest.json").read_bytes()
    fill(buffer, stream([3], seed=1))
    buffer.checkpoint()
    buffer.close()
    (folder / "manifest.json").write_bytes(manifest)  # as if the process died before the rename
    assert [p.code for p in seg.open_folder(folder).problems] == ["uncommitted"]
    resumed = OnlineBuffer(capacity=100, path=folder)
    assert (len(resumed), resumed.lost) == (4, 3)
    assert not (folder / "seg-000002.pt").exists()
    resumed.close()


CHILD = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, {tests!r})
    from bufconv.buffer.online import OnlineBuffer
    from streams import stream
    buffer = OnlineBuffer(capacity={capacity}, path={folder!r})
    start = len(buffer) and buffer._store.end_transition
    transitions = stream([7] * 40, seed=11)
    for i, t in enumerate(transitions[start:], start):
        buffer.add(**t)
        if i % 9 == 8:
            result = buffer.checkpoint()
            with open({log!r}, "a") as f:
                f.write(json.dumps({{"committed": i + 1}}) + "\\n")
    """
)


def test_kill_9_during_checkpoints_never_loses_a_committed_transition(tmp_path: Path) -> None:
    """A child adds a known stream and checkpoints every 9 transitions; SIGKILL at random moments.

    After each kill the folder reopens holding every transition the last completed checkpoint
    reported (by global number, equal to the stream), checksums verify, and `lost` counts only
    transitions no checkpoint committed.
    """
    import random

    rng = random.Random(1234)
    capacity = 1000
    folder, log = tmp_path / "b", tmp_path / "log.jsonl"
    reference = stream([7] * 40, seed=11)
    tests = str(Path(__file__).parent)
    script = CHILD.format(tests=tests, capacity=capacity, folder=str(folder), log=str(log))
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            filter(None, [str(Path(__file__).parents[1]), os.environ.get("PYTHONPATH")])
        ),
    )
    kills = 0
    for trial in range(6):
        child = subprocess.Popen([sys.executable, "-c", script], env=env)
        # wait until it is checkpointing, then kill it at a random moment
        deadline = time.monotonic() + 60
        start_lines = len(log.read_text().splitlines()) if log.exists() else 0
        while time.monotonic() < deadline and child.poll() is None:
            if log.exists() and len(log.read_text().splitlines()) > start_lines:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.25))
        if child.poll() is None:
            child.send_signal(signal.SIGKILL)
            kills += 1
        child.wait(timeout=30)
        committed = max((json.loads(line)["committed"] for line in log.read_text().splitlines()), default=0)
        opened = seg.open_folder(folder)
        assert all(p.code == "uncommitted" for p in opened.problems), opened.problems
        resumed = OnlineBuffer(capacity=capacity, path=folder)
        store = resumed._store
        assert store is not None
        assert store.end_transition >= committed, (trial, store.end_transition, committed)
        assert resumed.lost <= 9  # at most the transitions of the checkpoint being written
        kept = resumed[list(range(len(resumed)))]
        for i in range(len(resumed)):
            number = store.first_transition + i
            assert torch.equal(kept["action"][i], reference[number]["action"][0]), (trial, number)
            assert torch.equal(kept["state"][FRONT][i], reference[number]["state"][FRONT][0])
        resumed.close()
        if store.end_transition >= len(reference):
            break
    assert kills >= 1


def test_verify_and_summary_understand_the_folder(tmp_path: Path) -> None:
    import bufconv

    folder = tmp_path / "b"
    buffer = OnlineBuffer(capacity=100, image_range=255, path=folder)
    fill(buffer, stream([4, 3], uint8=True))
    buffer.checkpoint()
    buffer.close()
    report = bufconv.verify(folder)
    assert report.ok and report.kind == "bufconv-online-buffer" and report.frames == 7
    assert report.ranges == {FRONT: 255, WRIST: 255}
    assert "checksums" in report.checked
    assert [p.code for p in bufconv.verify(folder, image_range=1).problems] == ["range-mismatch"]
    info = seg.summary(folder)
    assert (info["kind"], info["transitions"], info["segments"], info["image_range"]) == ("online", 7, 1, 255)
    _damage(folder / "seg-000001.pt", "flip")
    assert [p.code for p in bufconv.verify(folder).problems] == ["checksum-mismatch"]
    assert bufconv.verify(folder, quick=True).ok  # no payload read


def test_export_writes_a_lerobot_dataset_from_the_folder(tmp_path: Path) -> None:
    """`bufconv export` from an online buffer's folder: LeRobot reads back every transition,
    images equal in LeRobot's [0,1] range; a learner holding the folder is not disturbed."""
    from lerobot.datasets import LeRobotDataset

    from bufconv.buffer.export import export_lerobot

    folder = tmp_path / "b"
    buffer = OnlineBuffer(capacity=100, image_range=1, path=folder)
    transitions = stream([3, 2])
    fill(buffer, transitions)
    buffer.checkpoint()  # the learner keeps the folder (and its lock)
    _, count = export_lerobot(folder, tmp_path / "exported", fps=10)
    assert count == 5
    loaded = LeRobotDataset("bufconv/exported", root=tmp_path / "exported")
    assert len(loaded) == 5 and loaded.num_episodes == 2
    for i, t in enumerate(transitions):
        frame = loaded[i]
        assert torch.allclose(frame[FRONT], t["state"][FRONT][0], atol=0.5 / 255)
        assert torch.equal(frame["action"], t["action"][0])
    buffer.close()
