"""SIGTERM (sent by `timeout`, SLURM, `docker stop`) stops `bufconv build` as Ctrl-C does: the
old cache is untouched, and no temporary file or lock file is left. What a SIGKILL leaves (it
cannot be caught) is removed by the next run, even one that finds the cache up to date.

A real child process runs the console entry point; its decoding is slowed down so the signal
lands while the temporary file exists.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

import bufconv
from bufconv.cli import cli

#: `bufconv build ARGS` whose decoding waits a minute before each video (time to send a signal).
SLOW_BUILD = r"""
import time
import bufconv.convert.units as units
real = units.decode_video
def slow(*args, **kwargs):
    time.sleep(60)
    return real(*args, **kwargs)
units.decode_video = slow
from bufconv.cli import main
main()
"""


def child_env() -> dict[str, str]:
    root = str(Path(__file__).resolve().parents[1])
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")]))}


def debris(cache: Path) -> list[str]:
    return sorted(p.name for p in cache.parent.iterdir() if p.name.startswith(f".{cache.name}."))


def start_slow_rebuild(dataset: Path, cache: Path) -> subprocess.Popen[str]:
    """A `--force` rebuild of `cache`, returned once its temporary file exists."""
    process = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SLOW_BUILD,
            "build",
            str(dataset),
            "-o",
            str(cache),
            "--force",
            "--workers",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=child_env(),
    )
    deadline = time.monotonic() + 120
    while not any(".tmp-" in name for name in debris(cache)):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            out, err = process.communicate()
            pytest.fail(f"the build never reached its temporary file: {out}{err}")
        time.sleep(0.02)
    return process


@pytest.fixture
def old_cache(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> tuple[Path, Path, bytes]:
    dataset = lerobot_dataset()
    cache = tmp_path / "offline_buffer.pt"
    bufconv.build(dataset, cache, workers=1)
    return dataset, cache, cache.read_bytes()


def test_sigterm_stops_a_build_like_ctrl_c(old_cache: tuple[Path, Path, bytes]) -> None:
    """SIGTERM mid-build: exit 143 with one line saying so, the old cache byte-identical, and
    neither the full-size temporary file nor the lock file left."""
    dataset, cache, data = old_cache
    with start_slow_rebuild(dataset, cache) as process:
        assert any(".tmp-" in name for name in debris(cache))
        process.send_signal(signal.SIGTERM)
        out, err = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines == ["bufconv: error: terminated (SIGTERM); nothing was replaced"], err
    assert cache.read_bytes() == data
    assert debris(cache) == []


def test_next_run_removes_what_a_sigkill_left(old_cache: tuple[Path, Path, bytes]) -> None:
    """SIGKILL cannot be caught: the temporary file and the lock file stay. The next `build`
    finds the old cache up to date, says so, and removes both."""
    dataset, cache, data = old_cache
    with start_slow_rebuild(dataset, cache) as process:
        process.kill()
        process.communicate(timeout=60)
    left = debris(cache)
    assert any(".tmp-" in name for name in left) and f".{cache.name}.lock" in left, left
    result = CliRunner().invoke(cli, ["build", str(dataset), "-o", str(cache)])
    assert result.exit_code == 0, result.output
    assert "up to date" in result.stdout
    assert cache.read_bytes() == data
    assert debris(cache) == []
