"""Messages that must point the right way (issue 14): each names what is actually wrong, and
never suggests a fix that does not apply (or, for untrusted files, one that executes them).

Datasets are real LeRobot-written ones (tests/conftest.py), damaged one field at a time.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bufconv.cli import cli


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def error_line(result: Result) -> str:
    """The single `bufconv: error:` line of a failed command, its paths replaced by <path>."""
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("bufconv: error: ")
    return re.sub(r"(?<!\S)/\S*", "<path>", lines[0])


def edit_info(root: Path, change: Callable[[dict], None]) -> Path:
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    change(info)
    info_path.write_text(json.dumps(info, indent=4))
    return info_path


@pytest.fixture
def out(tmp_path: Path) -> Path:
    return tmp_path / "out" / "offline_buffer.pt"


# ---- meta/info.json ------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["features", "fps"])
def test_info_json_without_a_key_names_the_key(
    dataset_copy: Callable[..., Path], out: Path, key: str
) -> None:
    """info.json lacking 'features' (or 'fps'): the file is named with the missing key; the
    message does not tell the user to point DATASET at the folder holding info.json (it does)."""
    root = dataset_copy()
    info_path = edit_info(root, lambda info: info.pop(key))
    result = run("build", str(root), "-o", str(out))
    line = error_line(result)
    assert str(info_path) in result.stderr
    assert f"has no {key!r} key" in line
    assert "re-download" in line
    assert "Point DATASET" not in line and "not a LeRobot dataset" not in line


def test_missing_codebase_version_is_not_called_unsupported(
    dataset_copy: Callable[..., Path], out: Path
) -> None:
    """No 'codebase_version': says the key is missing and which layout the folder has, never
    "codebase_version 'unknown' is not supported"."""
    root = dataset_copy()
    edit_info(root, lambda info: info.pop("codebase_version"))
    line = error_line(run("build", str(root), "-o", str(out)))
    assert "no 'codebase_version' key" in line
    assert "v3.0 layout" in line
    assert "unknown" not in line.replace("layout is unknown", "")
    assert "not supported" not in line


def test_v21_label_on_a_v30_layout_says_they_disagree(dataset_copy: Callable[..., Path], out: Path) -> None:
    """A v3.0 folder labelled v2.1: the message names both the label and the layout found."""
    root = dataset_copy()
    edit_info(root, lambda info: info.update(codebase_version="v2.1"))
    line = error_line(run("build", str(root), "-o", str(out)))
    assert "codebase_version is 'v2.1'" in line
    assert "v3.0 layout" in line
    assert "disagree" in line
    assert "set codebase_version to 'v3.0'" in line


def test_missing_episode_table_says_the_dataset_is_incomplete(
    dataset_copy: Callable[..., Path], out: Path
) -> None:
    """No episode table at all (neither layout): incomplete dataset, not "point DATASET at ..."."""
    root = dataset_copy()
    shutil.rmtree(root / "meta" / "episodes")
    line = error_line(run("build", str(root), "-o", str(out)))
    assert "episode table" in line and "missing" in line and "re-download" in line
    assert "Point DATASET" not in line


@pytest.mark.parametrize(
    ("key", "role"),
    [
        ("action", "the transition's action"),
        ("next.reward", "the transition's reward"),
        ("timestamp", "bookkeeping"),
        ("complementary_info.discrete_penalty", "complementary_info"),
    ],
)
def test_keys_naming_a_non_observation_feature(
    lerobot_dataset: Callable[..., Path], out: Path, key: str, role: str
) -> None:
    """`--keys action`: the feature exists; the message says what it is and what --keys takes,
    never "no feature 'action'"."""
    line = error_line(run("build", str(lerobot_dataset()), "-o", str(out), "--keys", key))
    assert f"{key!r} is " in line and role in line
    assert "not an observation" in line
    assert "no feature" not in line
    assert "observation.images.front" in line  # the keys it could have meant


# ---- files bufconv did not write ----------------------------------------------------------------


class _Executes:
    """Unpickling this runs `os.system`: a malicious checkpoint."""

    def __reduce__(self) -> tuple[object, ...]:
        import os

        return (os.system, ("touch /tmp/bufconv-must-not-run",))


def test_random_bytes_are_not_said_to_hold_python_objects(tmp_path: Path) -> None:
    """Random bytes, raw or after a pickle's protocol prefix: damaged/not a torch file, and no
    talk of Python objects; never torch's advice to retry with weights_only=False."""
    rng = random.Random(14)
    for i, prefix in enumerate([b"", b"\x80\x02", b"\x80\x02\x8a\x0a"]):
        path = tmp_path / f"noise{i}.pt"
        path.write_bytes(prefix + bytes(rng.randrange(256) for _ in range(4096)))
        result = run("verify", str(path), "--json")
        assert result.exit_code == 1, result.output
        messages = " ".join(p["message"] for p in json.loads(result.stdout)["problems"])
        assert "Python objects" not in messages and "Python code" not in messages, messages
        assert "weights_only" not in result.output
        assert "damaged" in messages or "truncated" in messages, messages


def test_malicious_pickle_names_the_code_and_never_advises_executing_it(tmp_path: Path) -> None:
    """A pickle that would call os.system: reported as referring to that code, not executed,
    and the output never repeats torch's "weights_only=False will likely succeed"."""
    import torch

    path = tmp_path / "trap.pt"
    torch.save({"x": _Executes()}, path)
    for args in (["verify", str(path)], ["verify", str(path), "--json"]):
        result = run(*args)
        assert result.exit_code == 1, result.output
        assert "Python code (posix.system)" in result.stdout, result.stdout
        assert "not executed" in result.stdout
        assert "weights_only" not in result.output and "add_safe_globals" not in result.output
    assert not Path("/tmp/bufconv-must-not-run").exists()


# ---- verify --dataset -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(lerobot_dataset: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache of the default test dataset (read-only for the tests)."""
    import bufconv

    path = tmp_path_factory.mktemp("messages") / "offline_buffer.pt"
    bufconv.build(lerobot_dataset(), path, workers=1)
    return path


def test_verify_dataset_typo_is_a_usage_error(built: Path, tmp_path: Path) -> None:
    """`verify --dataset` with a path that is no dataset: exit 2 naming --dataset, not [stale]."""
    typo = tmp_path / "pick_cub"
    result = run("verify", str(built), "--dataset", str(typo))
    assert result.exit_code == 2, result.output
    assert "--dataset" in result.stderr and str(typo) in result.stderr
    assert "stale" not in result.output and "Traceback" not in result.stderr


def test_verify_against_another_dataset_is_not_called_stale(
    built: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    """`verify --dataset OTHER` (same features, other content): one different-dataset problem
    naming both datasets and the fix; nothing listed as [stale]."""
    other = lerobot_dataset(seed=1)
    result = run("verify", str(built), "--dataset", str(other), "--json")
    assert result.exit_code == 1, result.output
    problems = json.loads(result.stdout)["problems"]
    assert [p["code"] for p in problems] == ["different-dataset"], problems
    message = problems[0]["message"]
    assert str(other) in message and str(lerobot_dataset()) in message
    assert "pass the dataset it was built from" in message


def test_verify_against_a_dataset_without_its_keys(built: Path, lerobot_dataset: Callable[..., Path]) -> None:
    """Another dataset that lacks the cache's cameras: different-dataset, naming the missing key."""
    other = lerobot_dataset(cameras=(("observation.images.top", (24, 32)),))
    result = run("verify", str(built), "--dataset", str(other))
    assert result.exit_code == 1, result.output
    assert "[different-dataset]" in result.stdout
    assert "observation.images.front" in result.stdout
    assert "[stale]" not in result.stdout


def test_verify_against_a_changed_copy_of_its_dataset_is_stale(
    built: Path, dataset_copy: Callable[..., Path]
) -> None:
    """Control: the same dataset with one file changed (in another folder) is still [stale],
    with the file named."""
    root = dataset_copy()
    edit_info(root, lambda info: info.update(robot_type="changed"))
    result = run("verify", str(built), "--dataset", str(root))
    assert result.exit_code == 1, result.output
    assert "[stale] meta/info.json changed" in result.stdout
    assert "different-dataset" not in result.stdout
