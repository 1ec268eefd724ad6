"""Command-line usability (issue 14): shared flags wherever a user types them, `build --json`,
`build --dry-run` and `inspect`, a closed pipe, the progress display, and `info` without torch.

In-process through click's `CliRunner`, except where a real process is the point (a closed
pipe, an interpreter without torch imported).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

import bufconv
import bufconv.convert.pipeline
from bufconv.cli import cli

FRONT = "observation.images.front"
WRIST = "observation.images.wrist"
CLI = "from bufconv.cli import main; main()"


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


@pytest.fixture(scope="module")
def dataset(lerobot_dataset: Callable[..., Path]) -> Path:
    return lerobot_dataset()


@pytest.fixture(scope="module")
def cache(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("usability") / "offline_buffer.pt"
    bufconv.build(dataset, path, workers=1)
    return path


def child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


# ---- shared flags --------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
@pytest.mark.parametrize("flag", ["--verbose", "-v"])
def test_verbose_before_or_after_the_command(tmp_path: Path, where: str, flag: str) -> None:
    """`bufconv -v build X` and `bufconv build X --verbose` both show the traceback of an error."""
    args = ["build", str(tmp_path / "missing"), "-o", str(tmp_path / "c.pt")]
    result = invoke(*([flag, *args] if where == "before" else [*args, flag]))
    assert result.exit_code == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("bufconv: error: ")


@pytest.mark.parametrize(
    "args", [["-q", "build"], ["build", "-q"], ["build", "--quiet"], ["--quiet", "build"]]
)
def test_quiet_before_or_after_the_command(dataset: Path, tmp_path: Path, args: list[str]) -> None:
    """`-q/--quiet` anywhere: the build happens and nothing is printed."""
    output = tmp_path / "q.pt"
    command, flags = (args[1:], args[:1]) if args[0] != "build" else (args[:1], args[1:])
    result = invoke(*flags, *command, str(dataset), "-o", str(output), "--workers", "1")
    assert result.exit_code == 0, result.output
    assert result.stdout == "" and result.stderr == ""
    assert bufconv.verify(output).ok


def test_quiet_verify_keeps_the_exit_status(cache: Path) -> None:
    """`verify -q`: no output, the exit status still says ok (0) or problems (1)."""
    assert invoke("verify", str(cache), "-q").stdout == ""
    assert invoke("verify", str(cache), "-q").exit_code == 0
    bad = invoke("-q", "verify", str(cache), "--range", "255")
    assert bad.exit_code == 1 and bad.stdout == ""


def test_every_command_lists_the_shared_flags() -> None:
    for name in cli.commands:
        text = invoke(name, "--help").stdout
        assert "-v, --verbose" in text and "-q, --quiet" in text, name


# ---- build --json, -o FOLDER ---------------------------------------------------------------------


def test_build_json_reports_built_hit_and_rebuilt(dataset: Path, tmp_path: Path) -> None:
    """`build --json`: status built, then hit (nothing decoded), then rebuilt with its reasons;
    path, frames, seconds and ranges in the shape of `verify --json`."""
    output = tmp_path / "j.pt"
    runs = [
        invoke("build", str(dataset), "-o", str(output), "--json", "--workers", "1"),
        invoke("build", str(dataset), "-o", str(output), "--json"),
        invoke("build", str(dataset), "-o", str(output), "--json", "--range", "255", "--workers", "1"),
    ]
    reports = []
    for result in runs:
        assert result.exit_code == 0, result.output
        assert result.stderr == ""
        reports.append(json.loads(result.stdout))
    assert [r["status"] for r in reports] == ["built", "hit", "rebuilt"]
    assert reports[0]["reasons"] == reports[1]["reasons"] == []
    assert f"range of {FRONT}: cache 1, requested 255" in reports[2]["reasons"]
    for report in reports:
        assert report["path"] == str(output)
        assert report["frames"] == 16 and report["episodes"] == 4
        assert isinstance(report["seconds"], float) and report["seconds"] >= 0
        assert report["file_bytes"] == output.stat().st_size
    assert reports[2]["ranges"] == json.loads(invoke("verify", str(output), "--json").stdout)["ranges"]
    assert reports[2]["ranges"][FRONT] == {"storage": "uint8", "output": 255}


# ---- inspect and build --dry-run -----------------------------------------------------------------


def test_inspect_describes_cameras_keys_episodes_and_the_cache_size(dataset: Path, tmp_path: Path) -> None:
    """`inspect`: each camera with codec, size and frames; the other keys with dtype, shape and
    role; layout version, fps, episodes; and a cache size within 1% of what a build writes."""
    result = invoke("inspect", str(dataset))
    assert result.exit_code == 0, result.output
    text = result.stdout
    assert "LeRobot v3.0 dataset" in text and "10 fps" in text and "4 episodes, 16 frames" in text
    assert f"{FRONT}" in text and "video av1" in text and "48x64, 16 frames" in text and "40x32" in text
    assert "observation.state" in text and "float32" in text and "[6]" in text
    assert "complementary_info.discrete_penalty" in text
    plan = json.loads(invoke("inspect", str(dataset), "--json").stdout)
    cameras = {c["key"]: c for c in plan["cameras"]}
    assert cameras[FRONT]["codec"] == "av1" and (cameras[FRONT]["height"], cameras[FRONT]["width"]) == (
        48,
        64,
    )
    columns = {c["key"]: c for c in plan["columns"]}
    assert columns["action"]["role"] == "action" and columns["action"]["shape"] == [3]
    assert columns["observation.state"]["role"] == "state"
    assert columns["timestamp"]["role"] == "bookkeeping"
    output = tmp_path / "c.pt"
    bufconv.build(dataset, output, workers=1)
    assert plan["file_bytes"] == pytest.approx(output.stat().st_size, rel=0.01)
    meta = bufconv.cache.reader.read_header(output)
    assert {k: v["shape"] for k, v in plan["tensors"].items()} == {
        k: v["shape"] for k, v in meta["tensors"].items()
    }
    assert {k: v["dtype"] for k, v in plan["tensors"].items()} == {
        k: v["dtype"] for k, v in meta["tensors"].items()
    }


def test_inspect_with_keys_and_episodes_sizes_that_selection(dataset: Path, tmp_path: Path) -> None:
    """`--keys`/`--episodes` on inspect: the size of that cache; a camera left out is marked."""
    args = ["--keys", f"observation.state,{FRONT}", "--episodes", "0,2-3"]
    result = invoke("inspect", str(dataset), *args)
    assert result.exit_code == 0, result.output
    assert "episodes 0,2-3 (3 episodes, 15 frames)" in result.stdout
    assert "(not selected)" in result.stdout
    plan = json.loads(invoke("inspect", str(dataset), *args, "--json").stdout)
    output = tmp_path / "sub.pt"
    bufconv.build(dataset, output, keys=f"observation.state,{FRONT}", episodes="0,2-3", workers=1)
    assert plan["file_bytes"] == pytest.approx(output.stat().st_size, rel=0.01)
    bad = invoke("inspect", str(dataset), "--keys", "action")
    assert bad.exit_code == 1 and "not an observation" in bad.stderr


def test_build_dry_run_prints_the_plan_and_writes_nothing(dataset: Path, tmp_path: Path) -> None:
    """`build --dry-run` prints what `inspect` prints, names the output, and writes nothing."""
    folder = tmp_path / "out"
    result = invoke("build", str(dataset), "-o", f"{folder}/", "--dry-run")
    assert result.exit_code == 0, result.output
    plan_lines = invoke("inspect", str(dataset)).stdout.splitlines()
    assert result.stdout.splitlines()[: len(plan_lines)] == plan_lines
    assert f"nothing written; the cache would go to {folder / 'offline_buffer.pt'}" in result.stdout
    assert not folder.exists()
    as_json = json.loads(invoke("build", str(dataset), "--dry-run", "--json", "-o", str(tmp_path)).stdout)
    assert as_json["dry_run"] is True and as_json["output"] == str(tmp_path / "offline_buffer.pt")
    assert list(tmp_path.iterdir()) == []


# ---- a closed pipe -------------------------------------------------------------------------------


@pytest.mark.parametrize(("extra", "status"), [([], 0), (["--range", "255"], 1)])
def test_closed_pipe_is_not_an_error(cache: Path, extra: list[str], status: int) -> None:
    """`bufconv verify ... | head -1`: the reader closed the pipe before the output; no error
    line, and the exit status is the report's (0 ok, 1 problems), not a failure."""
    with subprocess.Popen(
        [sys.executable, "-c", CLI, "verify", str(cache), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=child_env(),
    ) as process:
        assert process.stdout is not None and process.stderr is not None
        process.stdout.close()  # before the child prints anything: its first write finds no reader
        stderr = process.stderr.read().decode()
        assert process.wait(timeout=300) == status, stderr
    assert "Broken pipe" not in stderr and "error" not in stderr.lower(), stderr


# ---- progress ------------------------------------------------------------------------------------


def test_progress_names_phases_and_counts_frames(dataset: Path, tmp_path: Path) -> None:
    """A build reports its phases in order (hashing, decoding, writing), and the progress bar
    counts frames as the summary does (16 frames, not 16 frames x 2 cameras)."""

    class Recorder:
        def __init__(self) -> None:
            self.phases: list[str] = []
            self.frames = 0

        def __call__(self, frames: int) -> None:
            self.frames += frames

        def phase(self, name: str) -> None:
            self.phases.append(name)

    recorder = Recorder()
    bufconv.build(dataset, tmp_path / "p.pt", workers=1, progress=recorder)
    assert [p for i, p in enumerate(recorder.phases) if p not in recorder.phases[:i]] == [
        "hashing",
        "decoding",
        "writing",
    ]
    assert recorder.frames == 16 * 2  # per camera: the library reports what it decoded

    seen: dict[str, float] = {}
    real_exit = bufconv.convert.pipeline._ProgressBar.__exit__

    def record(self: bufconv.convert.pipeline._ProgressBar, *exc: object) -> None:
        seen.update(n=self.bar.n, total=self.bar.total)
        real_exit(self, *exc)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bufconv.convert.pipeline._ProgressBar, "__exit__", record)
        bufconv.build(dataset, tmp_path / "bar.pt", workers=1, progress=True)
    assert seen == {"n": 16, "total": 16}


# ---- info without torch --------------------------------------------------------------------------


def test_info_and_quick_verify_do_not_import_torch(cache: Path, dataset: Path) -> None:
    """`info` and `verify --quick` (with --range and --dataset too) read the header without
    importing torch; a full `verify` still does."""
    probe = (
        "import sys\n"
        "from bufconv.cli import main\n"
        "try:\n"
        "    main()\n"
        "except SystemExit as e:\n"
        "    print('torch' in sys.modules, e.code, file=sys.stderr)\n"
    )
    for args, torch_used in (
        (["info", str(cache)], False),
        (["info", str(cache), "--json"], False),
        (["verify", str(cache), "--quick", "--range", "1", "--dataset", str(dataset)], False),
        (["verify", str(cache)], True),
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, *args], capture_output=True, text=True, env=child_env(), timeout=300
        )
        assert done.stderr.strip().splitlines()[-1] == f"{torch_used} 0", (args, done.stderr)
