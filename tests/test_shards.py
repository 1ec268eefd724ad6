"""Sharded caches built locally (SPEC section 13): planning, equality with the single file,
per-shard staleness and corruption, several datasets, verify/info/open_buffer on the folder.
The Ray builds are tested in test_shards_ray.py."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import bufconv
from bufconv.cache.freshness import prepare
from bufconv.cache.reader import read_cache
from bufconv.cache.segments import is_buffer_folder
from bufconv.cache.sharded import is_sharded_folder, read_manifest
from bufconv.cli import cli
from bufconv.convert import shard_build
from bufconv.convert import shards as sh
from bufconv.errors import DatasetError, StaleCacheError
from bufconv.options import BuildOptions


def _transitions(buffer: bufconv.OfflineBuffer) -> dict[str, torch.Tensor]:
    batch = buffer[list(range(len(buffer)))]
    flat = {f"state/{k}": v for k, v in batch["state"].items()}
    flat |= {f"next_state/{k}": v for k, v in batch["next_state"].items()}
    flat |= {k: batch[k] for k in ("action", "reward", "done", "truncated")}  # type: ignore[literal-required]
    flat |= {f"info/{k}": v for k, v in (batch["complementary_info"] or {}).items()}
    return flat


def _assert_same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def _requests(*datasets: Path, **options: object) -> list:
    return [prepare(d, BuildOptions.create(**options)) for d in datasets]  # type: ignore[arg-type]


def test_plan_cuts_at_episode_boundaries_deterministically(lerobot_dataset: Callable[..., Path]) -> None:
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3, 4, 6))
    requests = _requests(dataset)
    plan = sh.plan_shards(requests, 3)
    assert plan == sh.plan_shards(_requests(dataset), 3)  # same inputs, same shards
    assert [s.episodes for s in plan] == [(0, 1), (2, 3), (4, 5)]
    assert [s.frames for s in plan] == [6, 10, 10]
    assert [s.file for s in plan] == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    assert len(sh.plan_shards(requests, 50)) == 6  # at most one shard per episode
    assert len(sh.plan_shards(requests, "auto")) == 1  # a few kB of pixels: one shard
    # Two datasets share the count by frames, each at least one shard.
    two = sh.plan_shards(_requests(dataset, lerobot_dataset(lengths=(2, 2))), 4)
    assert [s.dataset for s in two] == [0, 0, 0, 1]
    with pytest.raises(ValueError, match="count >= 1 or 'auto'"):
        sh.parse_shards("0")


def test_sharded_build_equals_the_single_file_transition_for_transition(
    tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3, 4))
    single = bufconv.load_or_build(dataset, tmp_path / "one.pt", image_range=255, use_drq=False)
    sharded = bufconv.load_or_build(dataset, tmp_path / "sharded", image_range=255, shards=3, use_drq=False)
    assert sharded.status == "built" and is_sharded_folder(tmp_path / "sharded")
    assert not is_buffer_folder(tmp_path / "sharded")  # the online buffer's reader does not claim it
    assert len(sharded) == len(single) == 20
    _assert_same(_transitions(single), _transitions(sharded))
    # Any order, duplicates, negative indices: as the single file.
    idx = [19, 0, 7, 7, -1, 6, 12, 5]
    _assert_same(
        {k: v for k, v in single[idx]["state"].items()}, {k: v for k, v in sharded[idx]["state"].items()}
    )
    # The shards are format-v1 caches any reader opens; the same shards, built again, are the same bytes.
    again = bufconv.build(dataset, tmp_path / "again", image_range=255, shards=3)
    assert again.status == "built" and again.shards == 3
    for name in ("shard-00000.pt", "shard-00001.pt", "shard-00002.pt"):
        assert (tmp_path / "sharded" / name).read_bytes() == (tmp_path / "again" / name).read_bytes(), name
        assert read_cache(tmp_path / "again" / name).frames > 0
    # A second load is a hit; nothing rebuilt.
    hit = bufconv.load_or_build(dataset, tmp_path / "sharded", image_range=255)
    assert hit.status == "hit" and hit.stale_reasons == []


def test_sampling_is_uniform_over_all_transitions_as_the_single_file(
    tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    """The same generator draws the same transitions from both (sorted, for the sharded gather)."""
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3, 4))
    single = bufconv.load_or_build(dataset, tmp_path / "one.pt", use_drq=False)
    sharded = bufconv.load_or_build(dataset, tmp_path / "sharded", shards=4, use_drq=False)
    batch = sharded.sample(16, generator=torch.Generator().manual_seed(3))
    drawn = torch.randint(0, 20, (16,), generator=torch.Generator().manual_seed(3)).sort().values
    assert torch.equal(batch["action"], single[drawn]["action"])
    assert torch.equal(
        batch["next_state"]["observation.state"], single[drawn]["next_state"]["observation.state"]
    )
    # Live transitions go to one store after the dataset's rows, as in the single-file buffer.
    row = single[[3]]
    one = lambda b: {k: v[0] for k, v in b.items()}  # noqa: E731
    sharded.add(one(row["state"]), row["action"][0], 1.0, one(row["next_state"]), True, False)
    assert len(sharded) == 21 and float(sharded[[20]]["reward"][0]) == 1.0


def test_shards_are_mapped_lazily(tmp_path: Path, lerobot_dataset: Callable[..., Path]) -> None:
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3, 4))
    bufconv.build(dataset, tmp_path / "sharded", shards=5)
    buffer = bufconv.open_buffer(tmp_path / "sharded", use_drq=False)
    sharded = buffer._data.sharded  # type: ignore[attr-defined]
    assert buffer.status == "opened" and len(buffer) == 20 and sharded.opened == 0
    buffer[[0, 1]]
    assert sharded.opened == 1  # only the shard those rows live in
    buffer[list(range(20))]
    assert sharded.opened == 5


def test_a_corrupted_shard_is_named_by_verify_and_rebuilt_alone(
    tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3, 4))
    folder = tmp_path / "sharded"
    bufconv.build(dataset, folder, shards=3)
    before = {p.name: p.stat().st_ino for p in folder.glob("shard-*.pt")}
    cache = read_cache(folder / "shard-00001.pt")
    start, size = cache.layout.records["data/0"]  # the first image tensor's pixels
    del cache
    with open(folder / "shard-00001.pt", "r+b") as f:
        f.seek(start + size // 2)
        byte = f.read(1)
        f.seek(start + size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    report = bufconv.verify(folder)
    assert not report.ok and report.kind == "bufconv-sharded-cache"
    assert [p.code for p in report.problems] == ["checksum-mismatch"]
    assert report.problems[0].message.startswith("shard-00001.pt: ")
    assert bufconv.verify(folder, quick=True).ok  # the payload is what is damaged
    # Told not to read the payload (a cache of terabytes, verified once): headers only, a hit.
    assert bufconv.load_or_build(dataset, folder, verify_payload=False).status == "hit"
    with pytest.raises(StaleCacheError, match="shard-00001.pt"):
        bufconv.load_or_build(dataset, folder, on_stale="error")
    buffer = bufconv.load_or_build(dataset, folder)
    assert buffer.status == "rebuilt"
    assert len(buffer.stale_reasons) == 1 and buffer.stale_reasons[0].startswith("shard-00001.pt: ")
    after = {p.name: p.stat().st_ino for p in folder.glob("shard-*.pt")}
    assert after["shard-00000.pt"] == before["shard-00000.pt"]
    assert after["shard-00002.pt"] == before["shard-00002.pt"]
    assert after["shard-00001.pt"] != before["shard-00001.pt"]
    assert bufconv.verify(folder).ok


def test_an_interrupted_build_resumes_with_the_missing_shards(
    tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3, 4))
    folder = tmp_path / "sharded"
    bufconv.build(dataset, folder, shards=3)
    (folder / "manifest.json").unlink()  # killed before the manifest: shards 0 and 2 were done
    (folder / "shard-00001.pt").unlink()
    report = bufconv.verify(folder)
    assert report.kind == "unreadable" or not report.ok
    result = bufconv.build(dataset, folder, shards=3)
    assert result.status == "rebuilt" and result.built == ["shard-00001.pt"]
    assert bufconv.verify(folder).ok
    # Another shard count: every shard changes, and the extra files go.
    result = bufconv.build(dataset, folder, shards=2)
    assert result.shards == 2 and sorted(p.name for p in folder.glob("shard-*")) == [
        "shard-00000.pt",
        "shard-00001.pt",
    ]
    assert bufconv.build(dataset, folder).status == "hit"  # keeps the folder's count
    before = {p.name: p.stat().st_ino for p in folder.glob("shard-*.pt")}
    forced = bufconv.build(dataset, folder, force=True)
    assert forced.status == "rebuilt" and forced.built == sorted(before)
    assert all(p.stat().st_ino != before[p.name] for p in folder.glob("shard-*.pt"))  # written anew


def test_several_datasets_in_one_buffer(tmp_path: Path, lerobot_dataset: Callable[..., Path]) -> None:
    a, b = lerobot_dataset(lengths=(5, 1, 7)), lerobot_dataset(lengths=(3, 4), seed=7)
    buffer = bufconv.load_or_build([a, b], tmp_path / "mixed", shards=3, use_drq=False)
    manifest = read_manifest(tmp_path / "mixed")
    assert [d["root"] for d in manifest["datasets"]] == [str(a), str(b)]
    assert [s["dataset"] for s in manifest["shards"]] == [0, 0, 1]
    assert len(buffer) == 20
    one_a = bufconv.load_or_build(a, tmp_path / "a.pt", use_drq=False)
    one_b = bufconv.load_or_build(b, tmp_path / "b.pt", use_drq=False)
    assert torch.equal(buffer[list(range(13))]["action"], one_a[list(range(13))]["action"])
    assert torch.equal(buffer[list(range(13, 20))]["action"], one_b[list(range(7))]["action"])
    # The folder knows its datasets: None serves it again (the learner drop-in's way).
    assert bufconv.load_or_build(None, tmp_path / "mixed").status == "hit"


def test_datasets_whose_features_differ_get_one_line_and_nothing_written(
    tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    a = lerobot_dataset(lengths=(5, 1))
    b = lerobot_dataset(
        lengths=(3,), cameras=(("observation.images.front", (32, 32)), ("observation.images.wrist", (40, 32)))
    )
    with pytest.raises(DatasetError) as raised:
        bufconv.build([a, b], tmp_path / "mixed", shards=2)
    message = str(raised.value)
    assert "\n" not in message
    assert "'observation.images.front' has rows of shape [3, 32, 32]" in message and "[3, 48, 64]" in message
    assert "--resize" in message
    assert not (tmp_path / "mixed").exists()
    done = CliRunner().invoke(cli, ["build", str(a), str(b), "-o", str(tmp_path / "cli"), "--shards", "2"])
    assert done.exit_code == 1 and done.output.count("\n") == 1 and "observation.images.front" in done.output
    assert not (tmp_path / "cli").exists()


def test_cli_build_verify_info_on_a_sharded_folder(
    tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    a, b = lerobot_dataset(lengths=(5, 1, 7)), lerobot_dataset(lengths=(3, 4), seed=7)
    out = tmp_path / "mixed"
    runner = CliRunner()
    done = runner.invoke(
        cli, ["build", str(a), str(b), "-o", str(out), "--shards", "3", "--range", "255", "--json"]
    )
    assert done.exit_code == 0, done.output
    result = json.loads(done.output)
    assert result["status"] == "built" and result["shards"] == 3 and result["frames"] == 20
    assert result["built"] == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    done = runner.invoke(cli, ["build", str(a), str(b), "-o", str(out), "--range", "255"])
    assert done.exit_code == 0 and "is up to date" in done.output and "3 shards" in done.output
    done = runner.invoke(cli, ["verify", str(out)])
    assert done.exit_code == 0 and "bufconv-sharded-cache" in done.output
    done = runner.invoke(cli, ["verify", str(out), "--json", "--range", "1"])
    report = json.loads(done.output)
    assert done.exit_code == 1 and {p["code"] for p in report["problems"]} == {"range-mismatch"}
    done = runner.invoke(cli, ["info", str(out)])
    assert done.exit_code == 0, done.output
    assert "sharded cache" in done.output and "shard-00002.pt" in done.output and str(b) in done.output
    info = json.loads(runner.invoke(cli, ["info", str(out), "--json"]).output)
    assert info["kind"] == "bufconv-sharded-cache" and info["frames"] == 20 and len(info["shards"]) == 3
    # A stray shard (a build that did not finish) is reported as uncommitted.
    (out / "shard-00009.pt").write_bytes((out / "shard-00000.pt").read_bytes())
    report = json.loads(runner.invoke(cli, ["verify", str(out), "--json"]).output)
    assert [p["code"] for p in report["problems"]] == ["uncommitted"]


def test_local_processes_build_the_same_bytes(
    tmp_path: Path, lerobot_dataset: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With cores for several decoding processes, shards build in a process pool: same files."""
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3))
    here = bufconv.build(dataset, tmp_path / "here", shards=2, workers=1)
    monkeypatch.setattr(shard_build, "default_workers", lambda: 4)
    pool = bufconv.build(dataset, tmp_path / "pool", shards=2, workers=4)
    assert here.built == pool.built == ["shard-00000.pt", "shard-00001.pt"]
    for name in here.built:
        assert (tmp_path / "here" / name).read_bytes() == (tmp_path / "pool" / name).read_bytes()
    assert sorted(os.listdir(tmp_path / "pool")) == sorted(os.listdir(tmp_path / "here"))


def test_nothing_but_the_ray_path_imports_ray() -> None:
    """Ray is an optional extra: building, loading and the CLI import it only for --ray."""
    import subprocess
    import sys

    code = (
        "import sys, bufconv.convert.shards, bufconv.buffer.loader, bufconv.cache.sharded, bufconv.cli; "
        "assert 'ray' not in sys.modules"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_the_learner_drop_in_serves_a_sharded_cache(
    tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    """`initialize_offline_replay_buffer(cfg, cache_path=FOLDER)`: the folder's datasets, all of them."""
    pytest.importorskip("lerobot")
    from test_lerobot_integration import make_config

    from bufconv.lerobot import initialize_offline_replay_buffer

    a, b = lerobot_dataset(), lerobot_dataset(lengths=(3, 4), seed=7)
    folder = tmp_path / "shards"
    bufconv.build([a, b], folder, shards=3)
    config = make_config(a, tmp_path / "outputs" / "train")
    buffer = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu", cache_path=folder)
    assert buffer.status == "hit" and buffer.dataset_transitions == 16 + 7
    assert buffer.sample(8)["state"]["observation.images.front"].shape == (8, 3, 48, 64)
