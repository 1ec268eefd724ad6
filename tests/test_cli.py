"""The `bufconv` command line: help texts, build/info/verify behaviour, exit codes and errors.

Commands run in-process through click's `CliRunner` (click >= 8.2 keeps stdout and stderr
apart: `result.stdout`, `result.stderr`), and once through the installed console script.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result

import bufconv
import bufconv.cache.header
import bufconv.cache.reader
import bufconv.convert.pipeline
import bufconv.convert.units
from bufconv.cache.archive import read_layout
from bufconv.cli import cli

FRONT = "observation.images.front"
WRIST = "observation.images.wrist"
PROBLEM_CODES = {
    "unreadable",
    "not-a-cache",
    "unsupported-version",
    "checksum-mismatch",
    "inconsistent",
    "range-mismatch",
    "double-normalized",
    "stale",
}


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args), catch_exceptions=True)


def stderr_lines(result: Result) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def dataset(lerobot_dataset: Callable[..., Path]) -> Path:
    """The default tiny LeRobot-written dataset: 4 episodes (5, 1, 7, 3 frames), two cameras."""
    return lerobot_dataset()


@pytest.fixture(scope="module")
def cache(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of `dataset` built once through the library (read-only for the tests)."""
    path = tmp_path_factory.mktemp("cli-cache") / "offline_buffer.pt"
    bufconv.build(dataset, path, workers=1)
    return path


@pytest.fixture
def cache_copy(cache: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy.pt"
    shutil.copyfile(cache, target)
    return target


# ---- help ------------------------------------------------------------------------------------


def test_group_and_every_command_have_help_text() -> None:
    """`bufconv --help` and `bufconv <cmd> --help` exit 0 and show each command's docstring."""
    assert set(cli.commands) == {"build", "verify", "info", "demo", "check", "inspect", "export"}
    top = invoke("--help")
    assert top.exit_code == 0, top.output
    assert cli.help and cli.help.strip()
    for name, command in cli.commands.items():
        assert command.help and command.help.strip(), f"{name} has no docstring"
        assert name in top.stdout
        result = invoke(name, "--help")
        assert result.exit_code == 0, result.output
        first_line = command.help.strip().splitlines()[0]
        assert first_line in " ".join(result.stdout.split()), (name, result.stdout)
        assert result.stderr == ""
        assert invoke(name, "-h").exit_code == 0


def test_console_script_runs_in_a_subprocess(tmp_path: Path) -> None:
    """The installed `bufconv` entry point (not `python -m`) works: --help and --version."""
    script = Path(sys.executable).with_name("bufconv")
    assert script.is_file(), f"console script missing at {script}"
    done = subprocess.run(
        [str(script), "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    for name in ("build", "verify", "info", "demo", "inspect"):
        assert re.search(rf"^\s+{name}\b", done.stdout, re.MULTILINE), done.stdout
    version = subprocess.run(
        [str(script), "--version"], cwd=tmp_path, capture_output=True, text=True, timeout=120, check=False
    )
    assert version.returncode == 0
    assert bufconv.__version__ in version.stdout


# ---- build -----------------------------------------------------------------------------------


def test_build_writes_default_output_and_prints_summary(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without -o the cache goes to ./offline_buffer.pt; the summary gives frames, episodes,
    throughput, file size and the ranges, and agrees with the file."""
    monkeypatch.chdir(tmp_path)
    result = invoke("build", str(dataset), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    output = tmp_path / "offline_buffer.pt"
    assert output.is_file()
    summary = re.search(
        r"^built (?P<path>\S+): (?P<frames>[\d,]+) frames, (?P<episodes>\d+) episodes in [\d.]+ s "
        r"\((?P<fps>[\d,]+|inf) frames/s\); file (?P<mb>[\d.,]+) MB",
        result.stdout,
        re.MULTILINE,
    )
    assert summary, result.stdout
    assert Path(summary["path"]) == output.absolute()
    meta = bufconv.cache.reader.read_header(output)
    assert int(summary["frames"].replace(",", "")) == meta["frames"] == 16
    assert int(summary["episodes"]) == len(meta["episodes"]) == 4
    assert float(summary["mb"].replace(",", "")) == pytest.approx(output.stat().st_size / 1e6, abs=0.051)
    ranges_line = next(line for line in result.stdout.splitlines() if line.startswith("ranges:"))
    assert f"{FRONT} -> floats in [0,1]" in ranges_line
    assert f"{WRIST} -> floats in [0,1]" in ranges_line
    assert bufconv.verify(output).ok


def test_build_range_255_is_printed_and_recorded(dataset: Path, tmp_path: Path) -> None:
    """`--range 255` shows up in the printed ranges and in the header."""
    output = tmp_path / "c.pt"
    result = invoke("build", str(dataset), "-o", str(output), "--range", "255", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert f"{FRONT} -> floats in [0,255]" in result.stdout
    meta = bufconv.cache.reader.read_header(output)
    assert meta["ranges"] == {
        FRONT: {"storage": "uint8", "output": 255},
        WRIST: {"storage": "uint8", "output": 255},
    }


def _fail_decoding(*args: object, **kwargs: object) -> None:
    raise RuntimeError("decoding was attempted")


def test_second_build_is_up_to_date_and_decodes_nothing(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A fresh cache is reported up to date: exit 0, nothing decoded, the file is not rewritten."""
    output = tmp_path / "offline_buffer.pt"
    first = invoke("build", str(dataset), "-o", str(output), "--workers", "1")
    assert first.exit_code == 0, first.output
    before = output.stat()

    monkeypatch.setattr(bufconv.convert.units, "decode_video", _fail_decoding)
    monkeypatch.setattr(bufconv.convert.pipeline, "run_unit", _fail_decoding)
    second = invoke("build", str(dataset), "-o", str(output))
    assert second.exit_code == 0, second.output
    assert "up to date" in second.stdout and "nothing decoded" in second.stdout
    assert "16 frames, 4 episodes" in second.stdout
    assert "ranges:" in second.stdout
    after = output.stat()
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )

    # Control: the same patches do stop a build that has to decode.
    forced = invoke("build", str(dataset), "-o", str(output), "--force", "--workers", "1")
    assert forced.exit_code == 1, forced.output
    assert "decoding was attempted" in forced.stderr
    assert output.stat().st_ino == before.st_ino  # the failed rebuild left the old cache in place
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offline_buffer.pt"]


def test_force_rebuilds(dataset: Path, tmp_path: Path) -> None:
    """`--force` rebuilds a fresh cache (a new file replaces the old one) and says so."""
    output = tmp_path / "offline_buffer.pt"
    assert invoke("build", str(dataset), "-o", str(output), "--workers", "1").exit_code == 0
    before = output.stat()
    result = invoke("build", str(dataset), "-o", str(output), "--force", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"rebuilt {output}: 16 frames, 4 episodes")
    assert "up to date" not in result.stdout
    assert output.stat().st_ino != before.st_ino
    assert bufconv.verify(output).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == ["offline_buffer.pt"]


def test_build_keys_and_episodes(dataset: Path, tmp_path: Path) -> None:
    """`--keys` chooses the state keys and `--episodes 0,2-3` the episodes (5 + 7 + 3 frames)."""
    output = tmp_path / "sub.pt"
    result = invoke(
        "build",
        str(dataset),
        "-o",
        str(output),
        "--keys",
        f"observation.state,{FRONT}",
        "--episodes",
        "0,2-3",
        "--workers",
        "1",
    )
    assert result.exit_code == 0, result.output
    assert "15 frames, 3 episodes" in result.stdout
    assert WRIST not in result.stdout
    meta = bufconv.cache.reader.read_header(output)
    assert meta["keys"]["state"] == [FRONT, "observation.state"]
    assert meta["keys"]["images"] == [FRONT]
    assert WRIST not in meta["tensors"]
    assert [row["episode_index"] for row in meta["episodes"]] == [0, 2, 3]
    assert [row["length"] for row in meta["episodes"]] == [5, 7, 3]
    assert meta["frames"] == 15
    assert bufconv.verify(output).ok


def test_build_with_two_workers_matches_one_worker(dataset: Path, cache: Path, tmp_path: Path) -> None:
    """`--workers 2` (decoding in worker processes) writes the same tensors as one worker."""
    output = tmp_path / "w2.pt"
    result = invoke("build", str(dataset), "-o", str(output), "--workers", "2")
    assert result.exit_code == 0, result.output
    ours = torch.load(output, weights_only=True, mmap=True)["tensors"]
    reference = torch.load(cache, weights_only=True, mmap=True)["tensors"]
    assert list(ours) == list(reference)
    for name in reference:
        assert torch.equal(ours[name], reference[name]), name


def test_build_quiet_prints_nothing(dataset: Path, tmp_path: Path) -> None:
    """`--quiet` builds the cache and prints nothing on stdout (or stderr)."""
    output = tmp_path / "q.pt"
    result = invoke("build", str(dataset), "-o", str(output), "--quiet", "--workers", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert result.stderr == ""
    assert bufconv.verify(output).ok
    again = invoke("build", str(dataset), "-o", str(output), "--quiet")
    assert again.exit_code == 0 and again.stdout == ""


# ---- info ------------------------------------------------------------------------------------


def test_info_text(cache: Path) -> None:
    """`info PATH` summarises the header: source, frames, episodes, fingerprint and each tensor."""
    result = invoke("info", str(cache))
    assert result.exit_code == 0, result.output
    meta = bufconv.cache.reader.read_header(cache)
    assert "bufconv cache, format 1" in result.stdout
    assert "frames: 16 in 4 episodes" in result.stdout
    assert meta["fingerprint"] in result.stdout
    for name in meta["tensors"]:
        assert re.search(rf"^\s+{re.escape(name)}\s", result.stdout, re.MULTILINE), name
    assert re.search(rf"{re.escape(FRONT)}\s+uint8\s+\[16, 3, 48, 64\]\s+-> floats in \[0,1\]", result.stdout)


def test_info_json(cache: Path) -> None:
    """`info PATH --json` prints the header's fields as documented: frames, ranges (in the shape
    `verify --json` uses), episodes, tensors, fingerprint; source files with ISO 8601 times
    instead of raw nanosecond stats."""
    result = invoke("info", str(cache), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["path"] == str(cache)
    assert report["kind"] == "bufconv-cache" and report["format_version"] == 1
    assert report["file_bytes"] == cache.stat().st_size
    meta = bufconv.cache.reader.read_header(cache)
    for key in ("frames", "ranges", "episodes", "tensors", "fingerprint", "source", "keys", "created"):
        assert report[key] == meta[key], key
    assert report["frames"] == 16
    assert report["ranges"][FRONT] == {"storage": "uint8", "output": 1}
    assert report["ranges"] == json.loads(invoke("verify", str(cache), "--json").stdout)["ranges"]
    assert [row["length"] for row in report["episodes"]] == [5, 1, 7, 3]
    assert report["tensors"][FRONT]["shape"] == [16, 3, 48, 64]
    assert report["fingerprint"].startswith("sha256:")
    assert "source_stats" not in report and "fingerprint_inputs" not in report
    assert report["options"] == meta["fingerprint_inputs"]["options"]
    files = report["source_files"]
    assert set(files) == set(meta["fingerprint_inputs"]["source"]["files"])
    for rel, entry in files.items():
        assert entry["digest"].startswith("xxh3_128:") and entry["size"] > 0, rel
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", entry["modified"]), entry


def test_info_does_not_read_pixel_data(cache_copy: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`info` never hashes or reads the payload: it succeeds on a cache whose pixels are corrupted
    (which `verify` rejects), and no checksum it computes touches a tensor record."""
    layout = read_layout(cache_copy)
    meta = bufconv.cache.reader.read_header(cache_copy)
    index = list(meta["tensors"]).index(FRONT)
    offset, size = layout.records[f"data/{index}"]
    with open(cache_copy, "r+b") as f:
        f.seek(offset + size // 2)
        byte = f.read(1)
        f.seek(offset + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    payloads = [layout.records[name] for name in layout.records if name.startswith("data/")]

    spans_read: list[tuple[int, int]] = []
    real_checksum_spans = bufconv.cache.header.checksum_spans

    def spy(path: object, spans: list[tuple[int, int]]) -> str:
        spans_read.extend(spans)
        return real_checksum_spans(path, spans)  # type: ignore[arg-type]

    def forbidden(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("info verified tensor checksums")

    monkeypatch.setattr(bufconv.cache.header, "checksum_spans", spy)  # the integrity digest
    monkeypatch.setattr(bufconv.cache.reader, "checksum_spans", spy)  # tensor checksums
    monkeypatch.setattr(bufconv.cache.reader, "mismatched_tensors", forbidden)
    for args in (["info", str(cache_copy)], ["info", str(cache_copy), "--json"]):
        result = invoke(*args)
        assert result.exit_code == 0, result.output
    assert spans_read, "info no longer checks the integrity digest"
    for start, length in spans_read:
        for p_start, p_size in payloads:
            if p_size:
                assert start + length <= p_start or start >= p_start + p_size, "info read tensor bytes"
    monkeypatch.undo()

    verified = invoke("verify", str(cache_copy), "--json")
    assert verified.exit_code == 1
    report = json.loads(verified.stdout)
    assert [p["code"] for p in report["problems"]] == ["checksum-mismatch"]
    assert FRONT in report["problems"][0]["message"]


# ---- verify ----------------------------------------------------------------------------------


def test_verify_ok_exits_0(cache: Path, dataset: Path) -> None:
    """A good cache verifies: exit 0, 'ok', with and without --dataset/--range/--quick."""
    for extra in ([], ["--quick"], ["--dataset", str(dataset), "--range", "1"]):
        result = invoke("verify", str(cache), *extra)
        assert result.exit_code == 0, (extra, result.output)
        assert result.stdout.startswith(f"{cache}: ok")
    assert "freshness" in invoke("verify", str(cache), "--dataset", str(dataset)).stdout
    assert "checksums" not in invoke("verify", str(cache), "--quick").stdout.splitlines()[0]


def test_verify_problems_exit_1(cache: Path) -> None:
    """A range the cache does not declare is a problem: exit 1, one [range-mismatch] per image key."""
    result = invoke("verify", str(cache), "--range", "255")
    assert result.exit_code == 1, result.output
    assert "2 problem(s)" in result.stdout
    assert result.stdout.count("[range-mismatch]") == 2


def test_verify_usage_errors_exit_2(cache: Path) -> None:
    """Usage errors exit 2: a range other than 1/255, a missing PATH, an unknown option."""
    bad_range = invoke("verify", str(cache), "--range", "7")
    assert bad_range.exit_code == 2
    assert "--range" in bad_range.stderr
    missing = invoke("verify")
    assert missing.exit_code == 2
    assert "PATH" in missing.stderr
    assert invoke("verify", str(cache), "--nope").exit_code == 2
    assert invoke("build").exit_code == 2
    assert invoke("build", "x", "--workers", "0").exit_code == 2


def test_verify_json_shape(cache: Path, tmp_path: Path) -> None:
    """`verify --json` prints {"ok", "path", "problems": [{"code", "message"}], ...}, ok or not."""
    good = invoke("verify", str(cache), "--json")
    assert good.exit_code == 0
    report = json.loads(good.stdout)
    assert report["ok"] is True
    assert report["path"] == str(cache)
    assert report["problems"] == []
    assert report["frames"] == 16

    bad = invoke("verify", str(cache), "--range", "255", "--json")
    assert bad.exit_code == 1
    report = json.loads(bad.stdout)
    assert report["ok"] is False
    assert isinstance(report["path"], str)
    assert len(report["problems"]) == 2
    for problem in report["problems"]:
        assert set(problem) == {"code", "message"}
        assert problem["code"] == "range-mismatch"
        assert isinstance(problem["message"], str) and problem["message"]

    foreign = tmp_path / "foreign.pt"
    torch.save({"state": torch.rand(2, 3, 16, 16) / 255}, foreign)
    result = invoke("verify", str(foreign), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    codes = [p["code"] for p in report["problems"]]
    assert "not-a-cache" in codes and "double-normalized" in codes
    assert set(codes) <= PROBLEM_CODES


# ---- errors ----------------------------------------------------------------------------------


def test_error_is_one_line_without_traceback_and_verbose_shows_it(tmp_path: Path) -> None:
    """A library error is one 'bufconv: error:' line, exit 1; `--verbose` adds the traceback."""
    missing = str(tmp_path / "no_such_dataset")
    plain = invoke("build", missing, "-o", str(tmp_path / "c.pt"))
    assert plain.exit_code == 1
    assert isinstance(plain.exception, SystemExit)
    lines = stderr_lines(plain)
    assert len(lines) == 1, plain.stderr
    assert lines[0].startswith("bufconv: error: ") and missing in lines[0]
    assert "Traceback" not in plain.stderr
    assert plain.stdout == ""

    verbose = invoke("--verbose", "build", missing, "-o", str(tmp_path / "c.pt"))
    assert verbose.exit_code == 1
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "DatasetError" in verbose.stderr
    assert stderr_lines(verbose)[-1] == lines[0]


def test_verify_of_missing_file_is_reported(tmp_path: Path) -> None:
    """`verify` of a path that does not exist reports it (exit 1, code unreadable), no traceback."""
    result = invoke("verify", str(tmp_path / "nothing.pt"), "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert [p["code"] for p in report["problems"]] == ["unreadable"]
    assert "Traceback" not in result.stderr


def test_verify_of_random_bytes_is_one_unreadable_problem(tmp_path: Path) -> None:
    """Random bytes are neither a zip archive nor a legacy torch pickle: one problem, `unreadable`,
    in the text (one problem line) and in --json."""
    noise = tmp_path / "noise.pt"
    noise.write_bytes(random.Random(0).randbytes(4096))
    text = invoke("verify", str(noise))
    assert text.exit_code == 1
    lines = [line for line in text.stdout.splitlines() if line.startswith("[")]
    assert len(lines) == 1 and lines[0].startswith("[unreadable] "), text.stdout
    assert "1 problem(s)" in text.stdout
    as_json = invoke("verify", str(noise), "--json")
    assert as_json.exit_code == 1
    report = json.loads(as_json.stdout)
    assert [p["code"] for p in report["problems"]] == ["unreadable"]
    assert report["kind"] == "unreadable"
    assert bufconv.verify(noise).problems == bufconv.verify(noise, quick=True).problems


def test_info_of_a_foreign_file_is_one_error_line(tmp_path: Path) -> None:
    """`info` on a torch file bufconv did not write: exit 1 with one readable line naming it."""
    foreign = tmp_path / "foreign.pt"
    torch.save({"x": torch.zeros(3)}, foreign)
    result = invoke("info", str(foreign))
    assert result.exit_code == 1
    lines = stderr_lines(result)
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bufconv: error: ") and str(foreign) in lines[0]
    assert "not one bufconv wrote" in lines[0].replace(str(foreign), "")
    assert os.path.exists(foreign)
