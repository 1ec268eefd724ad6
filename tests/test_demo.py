"""End-to-end smoke test: `bufconv demo` writes a real v3.0 dataset, builds it with range 255,
verifies it, samples a batch, shows the range guard, and says so."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import av
from click.testing import CliRunner

import bufconv
from bufconv.cli import cli

CAMERAS = {"observation.images.front": (96, 128), "observation.images.wrist": (64, 64)}


def check_demo_output(stdout: str, directory: Path) -> None:
    """What a successful demo printed and left in `directory`."""
    dataset = directory / "pick_cube"
    cache = directory / "offline_buffer.pt"

    # 1. the dataset: LeRobot v3.0 with real encoded video
    assert "wrote a LeRobot v3.0 dataset with AV1 video: 4 episodes, 120 frames" in stdout
    info = json.loads((dataset / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0"
    videos = sorted(dataset.glob("videos/*/chunk-*/file-*.mp4"))
    assert {p.parts[-3] for p in videos} == set(CAMERAS)
    for video in videos:
        with av.open(str(video)) as container:
            stream = container.streams.video[0]
            key = video.parts[-3]
            assert (stream.codec_context.height, stream.codec_context.width) == CAMERAS[key]
            assert sum(1 for _ in container.decode(stream)) == 120

    # 2. built with range 255
    assert re.search(r"built offline_buffer\.pt with --range 255: 120 frames in [\d.]+ s", stdout), stdout
    # 3. verified
    assert re.search(r"^3\. verified: .*checksums.*freshness: ok$", stdout, re.MULTILINE), stdout
    # 4. sampled batches come out as floats really in [0,255], not [0,1]
    pattern = r"^\s+(observation\.images\.\w+): float32 \(32, 3, \d+, \d+\) values in \[([\d.]+), ([\d.]+)\]"
    observed = {k: (float(lo), float(hi)) for k, lo, hi in re.findall(pattern, stdout, re.MULTILINE)}
    assert set(observed) == set(CAMERAS), stdout
    for key, (lo, hi) in observed.items():
        h, w = CAMERAS[key]
        assert f"{key}: float32 (32, 3, {h}, {w})" in stdout
        assert 0.0 <= lo <= hi <= 255.0, (key, lo, hi)
        assert hi > 1.0, f"{key} came out in [0,1], not [0,255]"
    # 5. the range guard refused [0,1] images in the [0,255] buffer
    guard = r"^5\. range guard: a live \[0,1\] image was refused by the \[0,255\] buffer"
    assert re.search(guard, stdout, re.MULTILINE), stdout
    assert "bufconv demo: ok" in stdout

    # the cache itself passes verification independently, declaring range 255
    report = bufconv.verify(cache, dataset=dataset, image_range=255)
    assert report.ok, report.problems
    assert report.ranges == dict.fromkeys(CAMERAS, 255)
    assert report.frames == 120


def test_demo_cli_runs_twice_in_the_same_folder(tmp_path: Path) -> None:
    """`bufconv demo --dir DIR` exits 0 with the documented summary, and again in the same DIR."""
    directory = tmp_path / "demo"
    for _ in range(2):
        result = CliRunner().invoke(cli, ["demo", "--dir", str(directory)])
        assert result.exit_code == 0, result.output
        assert "Traceback" not in result.stderr
        check_demo_output(result.stdout, directory)
    assert sorted(p.name for p in directory.iterdir()) == ["offline_buffer.pt", "pick_cube"]


def test_demo_never_deletes_a_pick_cube_folder_it_did_not_make(tmp_path: Path) -> None:
    """`--dir` pointing at a folder holding someone's own `pick_cube`: the demo refuses, in one
    line naming the folder, and the folder's files are untouched."""
    own = tmp_path / "pick_cube"
    own.mkdir()
    (own / "episode_notes.txt").write_text("mine")
    result = CliRunner().invoke(cli, ["demo", "--dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    assert str(own) in result.stderr and "--dir" in result.stderr
    assert (own / "episode_notes.txt").read_text() == "mine"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pick_cube"]


def test_demo_console_script(tmp_path: Path) -> None:
    """The installed `bufconv demo` works in a fresh process (no network, no LeRobot needed at runtime)."""
    script = Path(sys.executable).with_name("bufconv")
    done = subprocess.run(
        [str(script), "demo", "--dir", "d"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    check_demo_output(done.stdout, tmp_path / "d")
