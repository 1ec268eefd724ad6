"""Bad input to `bufconv build`: one readable error line naming the culprit and the fix, a
non-zero exit, no traceback, and nothing half-written (no cache, temporary file or lock file).

Most cases run in-process through click's `CliRunner`; the decode failures also run through
the installed console script, so anything FFmpeg or a worker process prints on the real
stderr would be seen too.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import bufconv
from bufconv.cli import cli

FRONT = "observation.images.front"
WRIST = "observation.images.wrist"
FRONT_MP4 = f"videos/{FRONT}/chunk-000/file-000.mp4"
WRIST_MP4 = f"videos/{WRIST}/chunk-000/file-000.mp4"


def build_fails(*args: str) -> str:
    """Run `bufconv build ARGS` in-process; check the failure is clean; return the error line."""
    result = CliRunner().invoke(cli, ["build", *args])
    assert result.exit_code != 0, result.output
    assert isinstance(result.exception, SystemExit), f"unhandled {result.exception!r}"
    assert result.stdout == ""
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bufconv: error: ")
    return lines[0]


def build_fails_subprocess(*args: str, cwd: Path) -> str:
    """The same, through the installed console script and the process's real stderr."""
    script = Path(sys.executable).with_name("bufconv")
    done = subprocess.run(
        [str(script), "build", *args], cwd=cwd, capture_output=True, text=True, timeout=300, check=False
    )
    assert done.returncode == 1, done.stdout + done.stderr
    assert done.stdout == ""
    assert "Traceback" not in done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("bufconv: error: ")
    return lines[0]


def prose(line: str) -> str:
    """The message without its absolute paths (tmp_path names contain test names: words like
    "missing" or "timestamps" must come from the message, not from the path)."""
    return re.sub(r"(?<!\S)/\S*", "<path>", line)


def assert_nothing_written(folder: Path) -> None:
    """The output folder holds no cache, no `.<name>.tmp-*` file and no lock file (or does not exist)."""
    if folder.exists():
        assert sorted(p.name for p in folder.iterdir()) == []


@pytest.fixture
def out(tmp_path: Path) -> Path:
    """Where the failed builds are asked to write (its folder must stay empty)."""
    return tmp_path / "out" / "offline_buffer.pt"


def test_folder_that_is_not_a_dataset(tmp_path: Path, out: Path) -> None:
    """A folder without meta/info.json: named, with the fix (point at the folder holding it)."""
    folder = tmp_path / "not_a_dataset"
    (folder / "data").mkdir(parents=True)
    (folder / "data" / "something.parquet").write_bytes(b"")
    line = build_fails(str(folder), "-o", str(out))
    assert str(folder) in line
    assert "not a LeRobot dataset" in prose(line)
    assert "meta/info.json" in prose(line)
    assert "Point DATASET" in prose(line)
    assert_nothing_written(out.parent)


def test_path_that_does_not_exist(tmp_path: Path, out: Path) -> None:
    """A DATASET path that is neither a folder nor a repo id: named, with what to pass instead."""
    missing = tmp_path / "nowhere" / "dataset"
    line = build_fails(str(missing), "-o", str(out))
    assert str(missing) in line
    assert "no such folder" in prose(line)
    assert "repo id" in prose(line)
    assert_nothing_written(out.parent)


@pytest.mark.parametrize("version", ["v2.0", "v4.0"])
def test_unsupported_codebase_version(dataset_copy: Callable[..., Path], out: Path, version: str) -> None:
    """Another codebase_version: the message names info.json, the version found and the supported ones."""
    root = dataset_copy()
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    info["codebase_version"] = version
    info_path.write_text(json.dumps(info, indent=4))
    line = build_fails(str(root), "-o", str(out))
    assert str(info_path) in line
    text = prose(line)
    assert f"codebase_version {version!r} is not supported" in text
    assert "v2.1" in text and "v3.0" in text
    assert_nothing_written(out.parent)


def test_missing_video_file(dataset_copy: Callable[..., Path], out: Path) -> None:
    """A deleted mp4: the message names the file and says to re-download (or drop the camera)."""
    root = dataset_copy()
    (root / WRIST_MP4).unlink()
    line = build_fails(str(root), "-o", str(out))
    assert str(root / WRIST_MP4) in line
    assert "missing" in prose(line)
    assert "re-download" in prose(line)
    assert_nothing_written(out.parent)


def test_truncated_video_half(dataset_copy: Callable[..., Path], out: Path, tmp_path: Path) -> None:
    """An mp4 cut to half its size: decoding fails with a line naming the file and the fix, through the
    real console script (worker processes, real stderr). An existing cache is left untouched."""
    root = dataset_copy()
    bufconv.build(root, out, workers=1)
    old = out.read_bytes()
    old_inode = out.stat().st_ino

    video = root / FRONT_MP4
    with open(video, "r+b") as f:
        f.truncate(video.stat().st_size // 2)
    line = build_fails_subprocess(str(root), "-o", str(out), "--workers", "2", cwd=tmp_path)
    assert str(video) in line
    assert "damaged" in prose(line) or "truncated" in prose(line)
    assert "re-download" in prose(line)
    # The failed rebuild left the previous cache exactly as it was, and no temporary or lock file.
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert out.stat().st_ino == old_inode
    assert out.read_bytes() == old


@pytest.mark.parametrize("workers", ["1", "2"])
def test_truncated_video_to_a_few_hundred_bytes(
    dataset_copy: Callable[..., Path], out: Path, workers: str
) -> None:
    """An mp4 cut to 300 bytes (not even a whole header): the file is named, with the fix."""
    root = dataset_copy()
    video = root / FRONT_MP4
    with open(video, "r+b") as f:
        f.truncate(300)
    line = build_fails(str(root), "-o", str(out), "--workers", workers)
    assert str(video) in line
    assert "re-download" in prose(line)
    assert_nothing_written(out.parent)


def _shift_timestamps(root: Path, episode: int, shift: float) -> float:
    """Add `shift` seconds to one episode's parquet timestamps, keeping schema and metadata.

    Returns the episode's first (shifted) timestamp in its video file's timeline.
    """
    data = root / "data" / "chunk-000" / "file-000.parquet"
    table = pq.read_table(data)
    episodes = table.column("episode_index").to_numpy()
    assert (episodes == episode).any()
    timestamps = table.column("timestamp").to_numpy().copy()
    timestamps[episodes == episode] += np.float32(shift)
    index = table.schema.get_field_index("timestamp")
    field = table.schema.field(index)
    shifted = table.set_column(index, field, pa.array(timestamps, type=field.type))
    assert shifted.schema.equals(table.schema, check_metadata=True)
    pq.write_table(shifted, data)
    assert pq.read_schema(data).equals(table.schema, check_metadata=True)

    meta = pq.read_table(root / "meta" / "episodes" / "chunk-000" / "file-000.parquet").to_pylist()
    row = next(r for r in meta if r["episode_index"] == episode)
    return float(row[f"videos/{FRONT}/from_timestamp"]) + float(timestamps[episodes == episode][0])


@pytest.mark.parametrize("via", ["runner", "console-script"])
def test_timestamps_outside_tolerance(
    dataset_copy: Callable[..., Path], out: Path, tmp_path: Path, via: str
) -> None:
    """Parquet timestamps of episode 2 shifted by +30 ms: no silent nearest frame; the error names
    the video file, the episode and the timestamp that has no frame."""
    root = dataset_copy()
    wanted = _shift_timestamps(root, episode=2, shift=0.03)
    if via == "runner":
        line = build_fails(str(root), "-o", str(out), "--workers", "1")
    else:
        line = build_fails_subprocess(str(root), "-o", str(out), cwd=tmp_path)
    assert str(root / FRONT_MP4) in line or str(root / WRIST_MP4) in line
    text = prose(line)
    assert "episode 2" in text
    assert f"t={wanted:.6f}" in text
    assert "no frame within" in text
    assert "does not match the parquet timestamps" in text
    assert "re-encode" in text
    assert_nothing_written(out.parent)


def test_unknown_key(lerobot_dataset: Callable[..., Path], out: Path) -> None:
    """`--keys observation.nope`: the message names the key and lists the keys that exist."""
    root = lerobot_dataset()
    line = build_fails(str(root), "-o", str(out), "--keys", "observation.nope")
    assert str(root) in line
    assert "'observation.nope'" in prose(line)
    for key in (FRONT, WRIST, "observation.state"):
        assert key in prose(line)
    assert_nothing_written(out.parent)


def test_unknown_episode(lerobot_dataset: Callable[..., Path], out: Path) -> None:
    """`--episodes 99`: the message names the episode and the ones the dataset has."""
    root = lerobot_dataset()
    line = build_fails(str(root), "-o", str(out), "--episodes", "99")
    assert str(root) in line
    assert "episode(s) 99 not in the dataset" in prose(line)
    assert "0-3" in prose(line)
    assert_nothing_written(out.parent)


@pytest.mark.parametrize(("option", "value"), [("--episodes", "x"), ("--episodes", "3-1"), ("--keys", ",")])
def test_unreadable_selection_is_a_usage_error(
    lerobot_dataset: Callable[..., Path], out: Path, option: str, value: str
) -> None:
    """`--episodes x` (or an empty --keys) is a usage error: exit 2, says how to write it, nothing written."""
    result = CliRunner().invoke(cli, ["build", str(lerobot_dataset()), "-o", str(out), option, value])
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.stderr
    assert f"Invalid value for '{option}'" in result.stderr
    assert ("0-9,15" if option == "--episodes" else "comma-separated") in result.stderr
    assert_nothing_written(out.parent)


def test_output_below_a_regular_file(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """`-o somefile/out.pt` where somefile is a regular file (fails even as root, unlike chmod):
    the message names the file, says it is not a folder and to choose another output; the file is untouched."""
    blocker = tmp_path / "somefile"
    blocker.write_bytes(b"not a folder")
    line = build_fails(str(lerobot_dataset()), "-o", str(blocker / "out.pt"))
    assert str(blocker) in line
    assert "not a folder" in prose(line)
    assert "-o/--output" in prose(line)
    assert blocker.read_bytes() == b"not a folder"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["somefile"]


def test_output_in_a_folder_root_cannot_write(lerobot_dataset: Callable[..., Path]) -> None:
    """`-o /sys/offline_buffer.pt`: sysfs refuses new files even to root (EACCES, or EROFS when
    mounted read-only); the message names the folder and says to choose a writable one."""
    line = build_fails(str(lerobot_dataset()), "-o", "/sys/offline_buffer.pt")
    assert "/sys" in line
    assert "cannot write the cache here" in prose(line)
    assert "writable folder" in prose(line)
    assert not Path("/sys/offline_buffer.pt").exists()
    assert not list(Path("/sys").glob(".offline_buffer.pt*"))


def test_output_that_is_a_folder(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """`-o FOLDER` (an existing folder) and `-o NEW/` (a trailing slash) mean FOLDER/offline_buffer.pt."""
    for output, folder in ((str(tmp_path), tmp_path), (f"{tmp_path / 'new'}/", tmp_path / "new")):
        result = CliRunner().invoke(cli, ["build", str(lerobot_dataset()), "-o", output, "--workers", "1"])
        assert result.exit_code == 0, result.output
        assert result.stdout.startswith(f"built {folder / 'offline_buffer.pt'}:"), result.stdout
        assert sorted(p.name for p in folder.iterdir() if p.is_file()) == ["offline_buffer.pt"]
        assert bufconv.verify(folder / "offline_buffer.pt").ok


def test_repo_id_not_on_disk_while_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: Path
) -> None:
    """A repo id absent from $HF_LEROBOT_HOME with HF_HUB_OFFLINE=1: says it is not on disk, that the
    hub is offline, and how to fix it (download command or a local folder)."""
    home = tmp_path / "lerobot_home"
    home.mkdir()
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = build_fails("someone/missing_dataset", "-o", str(out))
    assert "someone/missing_dataset" in line
    assert str(home / "someone" / "missing_dataset") in line
    text = prose(line)
    assert "not on disk" in text
    assert "HF_HUB_OFFLINE" in text
    assert "download" in text and "local folder" in text
    assert sorted(p.name for p in home.iterdir()) == []
    assert_nothing_written(out.parent)


def test_interrupted_download_leaves_nothing_that_looks_like_a_dataset(
    lerobot_dataset: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, out: Path
) -> None:
    """A download that dies halfway (here: after copying meta/ only) fails with the hub's error and
    leaves no `user/name` folder, so the next run fetches again instead of building from half a
    dataset; a download that completes is then found and built."""
    import huggingface_hub

    home = tmp_path / "lerobot_home"
    monkeypatch.setenv("HF_LEROBOT_HOME", str(home))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    source = lerobot_dataset()
    fetched: list[Path] = []

    def dies_halfway(repo_id: str, *, repo_type: str, local_dir: Path) -> str:
        fetched.append(Path(local_dir))
        shutil.copytree(source / "meta", Path(local_dir) / "meta")
        raise ConnectionError("connection reset by peer")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", dies_halfway)
    line = build_fails("someone/flaky", "-o", str(out))
    assert "someone/flaky" in line and "connection reset by peer" in line
    assert not (home / "someone" / "flaky").exists()
    assert_nothing_written(out.parent)

    def completes(repo_id: str, *, repo_type: str, local_dir: Path) -> str:
        fetched.append(Path(local_dir))
        if Path(local_dir).exists():  # huggingface_hub resumes into the folder it left
            shutil.rmtree(local_dir)
        shutil.copytree(source, local_dir)
        return str(local_dir)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", completes)
    result = CliRunner().invoke(cli, ["build", "someone/flaky", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert (home / "someone" / "flaky" / "meta" / "info.json").is_file()
    assert len(fetched) == 2
    assert bufconv.cache.reader.read_header(out)["source"]["repo_id"] == "someone/flaky"


def test_a_copy_of_the_intact_dataset_builds(dataset_copy: Callable[..., Path], out: Path) -> None:
    """Control for the cases above: the unmodified copy builds, so each failure is the damage's doing."""
    root = dataset_copy()
    result = CliRunner().invoke(cli, ["build", str(root), "-o", str(out), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    shutil.rmtree(out.parent)
