"""The fingerprint: every input that gives a cache its meaning invalidates it, and says so.

Each test builds a cache from a small LeRobot-written dataset (one mp4 per episode and camera,
so episode selections change the set of files read), changes one input, and checks that
`load_or_build` refuses (`on_stale="error"`) or rebuilds (`"rebuilt"`) with a reason naming
exactly that input. Unchanged inputs, including a touched but byte-identical file, keep the
cache fresh, and the stat fast path reuses recorded digests instead of re-reading files.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import bufconv
import bufconv.cache.fingerprint
import bufconv.cache.reader
import bufconv.cache.writer
import bufconv.convert.pipeline
from bufconv.cache import fingerprint as fp
from bufconv.errors import InvalidCacheError, StaleCacheError

FRONT = "observation.images.front"
WRIST = "observation.images.wrist"
STATE = "observation.state"
# LeRobot rolls every episode over into its own mp4 per camera at this size (4 episodes -> 4 files).
PER_EPISODE_FILES: dict[str, Any] = {"video_files_size_in_mb": 0.001}
DATA = "data/chunk-000/file-000.parquet"
EPISODES_META = "meta/episodes/chunk-000/file-000.parquet"
INFO = "meta/info.json"
TASKS = "meta/tasks.parquet"


def video(key: str, episode: int) -> str:
    return f"videos/{key}/chunk-000/file-{episode:03d}.mp4"


def load(dataset: Path, cache: Path, **kwargs: Any) -> bufconv.OfflineBuffer:
    """`load_or_build` with one decoding process (no worker start-up) and no augmentation."""
    return bufconv.load_or_build(dataset, cache, workers=1, use_drq=False, **kwargs)


def tensors_of(cache: Path) -> dict[str, torch.Tensor]:
    return torch.load(cache, weights_only=True)["tensors"]


@pytest.fixture
def dataset(dataset_copy: Callable[..., Path]) -> Path:
    """A private copy of a 4-episode LeRobot dataset with one mp4 per episode and camera."""
    root = dataset_copy(**PER_EPISODE_FILES)
    for key in (FRONT, WRIST):
        assert sorted(p.name for p in (root / f"videos/{key}/chunk-000").iterdir()) == [
            f"file-{e:03d}.mp4" for e in range(4)
        ], "precondition: one video file per episode"
    return root


# ---- mutations of the dataset ---------------------------------------------------------------


def nothing(_root: Path) -> None:
    pass


def edit_info_json(root: Path) -> None:
    info = json.loads((root / INFO).read_text())
    info["robot_type"] = "so100_follower_renamed"  # meaning-free for bufconv, but a new info.json
    (root / INFO).write_text(json.dumps(info, indent=4))


def rewrite_episode_metadata(root: Path) -> None:
    table = pq.read_table(root / EPISODES_META)
    pq.write_table(table, root / EPISODES_META, compression="none")  # same rows, other bytes


def double_actions(root: Path) -> None:
    table = pq.read_table(root / DATA)
    index = table.schema.get_field_index("action")
    doubled = pa.array(
        [[2 * v for v in row] for row in table.column("action").to_pylist()],
        type=table.schema.field(index).type,
    )
    pq.write_table(table.set_column(index, table.schema.field(index), doubled), root / DATA)


def append_mp4_free_box(root: Path) -> None:
    # A trailing top-level "free" box: a valid mp4 that decodes to the same frames, other bytes.
    with open(root / video(FRONT, 2), "ab") as f:
        f.write(struct.pack(">I", 16) + b"free" + b"\0" * 8)


def remove_tasks(root: Path) -> None:
    (root / TASKS).rename(root.parent / "tasks.parquet.bak")


def restore_tasks(root: Path) -> None:
    (root.parent / "tasks.parquet.bak").rename(root / TASKS)


@dataclass(frozen=True)
class Change:
    """One input changed between building a cache and asking for it again."""

    built_with: dict[str, Any] = field(default_factory=dict)
    requested: dict[str, Any] = field(default_factory=dict)
    before_build: Callable[[Path], None] = nothing
    after_build: Callable[[Path], None] = nothing
    reasons: tuple[str, ...] = ()

    @property
    def options_unchanged(self) -> bool:
        return self.built_with == self.requested


CHANGES = {
    "image-range": Change(
        requested={"image_range": 255},
        reasons=(f"range of {FRONT}: cache 1, requested 255", f"range of {WRIST}: cache 1, requested 255"),
    ),
    "state-keys": Change(
        requested={"state_keys": [STATE, FRONT]},
        reasons=(
            f"keys: cache {FRONT},{WRIST},{STATE}, requested {FRONT},{STATE}",
            *(f"{video(WRIST, e)} is no longer part of the dataset" for e in range(4)),
        ),
    ),
    "episodes-fewer": Change(
        requested={"episodes": "0-2"},
        reasons=(
            "episodes: cache 0-3, requested 0-2",
            f"{video(FRONT, 3)} is no longer part of the dataset",
            f"{video(WRIST, 3)} is no longer part of the dataset",
        ),
    ),
    "episodes-more": Change(
        built_with={"episodes": [0, 1]},
        reasons=(
            "episodes: cache 0-1, requested 0-3",
            *(f"{video(key, e)} is new in the dataset" for key in (FRONT, WRIST) for e in (2, 3)),
        ),
    ),
    "tolerance": Change(
        requested={"tolerance_s": 2e-4}, reasons=("tolerance_s: cache 0.0001, requested 0.0002",)
    ),
    "info-json": Change(after_build=edit_info_json, reasons=(f"{INFO} changed",)),
    "episode-metadata": Change(after_build=rewrite_episode_metadata, reasons=(f"{EPISODES_META} changed",)),
    "data-parquet": Change(after_build=double_actions, reasons=(f"{DATA} changed",)),
    "video-bytes": Change(after_build=append_mp4_free_box, reasons=(f"{video(FRONT, 2)} changed",)),
    "file-removed": Change(after_build=remove_tasks, reasons=(f"{TASKS} is no longer part of the dataset",)),
    "file-added": Change(
        before_build=remove_tasks, after_build=restore_tasks, reasons=(f"{TASKS} is new in the dataset",)
    ),
}


@pytest.mark.parametrize("name", list(CHANGES))
def test_each_changed_input_makes_the_cache_stale_with_a_reason_naming_it(
    name: str, dataset: Path, tmp_path: Path
) -> None:
    """One changed input: on_stale="error" refuses with exactly that reason (cache untouched),
    on_stale="rebuild" rebuilds with the same reasons, and the rebuilt cache is then a hit."""
    change = CHANGES[name]
    cache = tmp_path / "offline_buffer.pt"
    change.before_build(dataset)
    assert load(dataset, cache, **change.built_with).status == "built"
    assert load(dataset, cache, **change.built_with).status == "hit"
    change.after_build(dataset)
    before = cache.read_bytes()

    with pytest.raises(StaleCacheError) as refused:
        load(dataset, cache, on_stale="error", **change.requested)
    assert refused.value.reasons == list(change.reasons)
    assert cache.read_bytes() == before, "refusing a stale cache must not touch it"
    if change.options_unchanged:
        # `verify --dataset` checks freshness with the options the cache was built with: same reasons.
        report = bufconv.verify(cache, dataset=dataset)
        assert [(p.code, p.message) for p in report.problems] == [("stale", r) for r in change.reasons]

    rebuilt = load(dataset, cache, **change.requested)
    assert rebuilt.status == "rebuilt"
    assert rebuilt.stale_reasons == list(change.reasons)
    assert bufconv.verify(cache, dataset=dataset).ok
    again = load(dataset, cache, **change.requested)
    assert again.status == "hit"
    assert again.stale_reasons == []


def test_rebuilt_cache_holds_the_changed_data(dataset: Path, tmp_path: Path) -> None:
    """After a data parquet changed, the rebuilt cache holds the new values, not the old ones."""
    cache = tmp_path / "offline_buffer.pt"
    load(dataset, cache)
    old_action = tensors_of(cache)["action"].clone()
    double_actions(dataset)
    assert load(dataset, cache).status == "rebuilt"
    torch.testing.assert_close(tensors_of(cache)["action"], 2 * old_action)


# ---- the format version --------------------------------------------------------------------


def test_explain_names_a_format_version_difference() -> None:
    """`explain` reports a format version difference (and only that) between two input records."""
    inputs = {
        "format_version": 1,
        "options": {"ranges": {FRONT: 1}, "state_keys": [FRONT], "episodes": "0-3", "tolerance_s": 1e-4},
        "source": {"codebase_version": "v3.0", "files": {INFO: {"size": 1, "digest": "xxh3_128:00"}}},
    }
    assert fp.explain(inputs, json.loads(json.dumps(inputs))) == []
    assert fp.explain({**inputs, "format_version": 2}, inputs) == ["format version: cache 2, expected 1"]


@pytest.mark.parametrize(
    ("module", "name", "old", "field", "new", "reason"),
    [
        # A cache whose fingerprint inputs record format version 2 is stale for this bufconv (version 1).
        ("cache.freshness", "FORMAT_VERSION", 2, "format_version", 1, "format version: cache 2, expected 1"),
        # Another converter version (a bufconv that chose frames or transitions differently) is
        # stale, with that reason, though format and data are unchanged.
        (
            "cache.fingerprint", "CONVERTER_VERSION", 0, "converter_version", 1,
            "converter version: cache 0, now 1 (this bufconv converts differently)",
        ),
    ],
    ids=["format-version", "converter-version"],
)  # fmt: skip
def test_cache_fingerprinted_by_another_bufconv_is_stale(
    dataset: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    module: str,
    name: str,
    old: int,
    field: str,
    new: int,
    reason: str,
) -> None:
    """A cache whose fingerprint inputs record another format or converter version: hit for
    that bufconv, stale (with the reason) for this one, rebuilt, then a hit again."""
    cache = tmp_path / "offline_buffer.pt"
    with monkeypatch.context() as patch:
        patch.setattr(importlib.import_module(f"bufconv.{module}"), name, old)
        assert load(dataset, cache).status == "built"
        assert load(dataset, cache).status == "hit"
    assert torch.load(cache, weights_only=True)["meta"]["fingerprint_inputs"][field] == old

    with pytest.raises(StaleCacheError) as refused:
        load(dataset, cache, on_stale="error")
    assert refused.value.reasons == [reason]
    rebuilt = load(dataset, cache)
    assert (rebuilt.status, rebuilt.stale_reasons) == ("rebuilt", [reason])
    assert torch.load(cache, weights_only=True)["meta"]["fingerprint_inputs"][field] == new
    assert load(dataset, cache).status == "hit"


def test_file_whose_top_level_format_version_is_not_1_is_rejected(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """read_cache and verify reject format_version 2 as unsupported-version; load_or_build rebuilds it."""
    cache = tmp_path / "offline_buffer.pt"
    with monkeypatch.context() as patch:
        # what a future bufconv would write (and read back)
        patch.setattr(bufconv.cache.writer, "FORMAT_VERSION", 2)
        patch.setattr(bufconv.cache.reader, "FORMAT_VERSION", 2)
        load(dataset, cache)
    top = torch.load(cache, weights_only=True)
    assert (top["format"], top["format_version"]) == ("bufconv.offline_buffer", 2)

    with pytest.raises(InvalidCacheError) as rejected:
        bufconv.cache.reader.read_cache(cache)
    assert [p.code for p in rejected.value.problems] == ["unsupported-version"]
    report = bufconv.verify(cache)
    assert [p.code for p in report.problems] == ["unsupported-version"]
    assert "version 2" in report.problems[0].message

    with pytest.raises(StaleCacheError) as refused:
        load(dataset, cache, on_stale="error")
    assert len(refused.value.reasons) == 1
    assert "format version 2" in refused.value.reasons[0]
    rebuilt = load(dataset, cache)
    assert rebuilt.status == "rebuilt"
    assert rebuilt.stale_reasons == refused.value.reasons
    assert torch.load(cache, weights_only=True)["format_version"] == 1
    assert bufconv.verify(cache).ok


# ---- what keeps a cache fresh, and what the check costs --------------------------------------


@pytest.fixture
def digests(monkeypatch: pytest.MonkeyPatch, dataset: Path) -> list[str]:
    """Records every file the fingerprint reads in full (paths relative to the dataset)."""
    calls: list[str] = []
    real = bufconv.cache.fingerprint.file_digest

    def counting(path: Path) -> str:
        calls.append(Path(path).relative_to(dataset).as_posix())
        return real(path)

    monkeypatch.setattr(bufconv.cache.fingerprint, "file_digest", counting)
    return calls


def all_hashed_files(root: Path) -> list[str]:
    return sorted(
        [INFO, EPISODES_META, TASKS, DATA]
        + [p.relative_to(root).as_posix() for p in root.glob("videos/*/chunk-000/*.mp4")]
    )


def test_first_build_hashes_every_source_file_and_a_hit_hashes_none(
    dataset: Path, tmp_path: Path, digests: list[str]
) -> None:
    """Building reads every metadata, data and video file (stats excepted); checking an untouched
    dataset again reuses the digests recorded in the header (zero reads): the stat fast path."""
    cache = tmp_path / "offline_buffer.pt"
    assert load(dataset, cache).status == "built"
    # (ensure() fingerprints before and again under the lock, so a build may read a file twice.)
    assert sorted(set(digests)) == all_hashed_files(dataset)
    assert "meta/stats.json" not in digests  # stats do not change the buffer
    digests.clear()
    assert load(dataset, cache).status == "hit"
    assert bufconv.build(dataset, cache, workers=1).status == "hit"
    assert digests == []


@pytest.mark.parametrize("touched", [INFO, DATA, "video"])
def test_touched_file_is_read_again_once_and_the_cache_stays_fresh(
    touched: str, dataset: Path, tmp_path: Path, digests: list[str]
) -> None:
    """A new mtime without new bytes costs one re-read of that file (only it) and stays a hit."""
    rel = video(WRIST, 1) if touched == "video" else touched
    cache = tmp_path / "offline_buffer.pt"
    load(dataset, cache)
    digests.clear()
    st = (dataset / rel).stat()
    os.utime(dataset / rel, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    buffer = load(dataset, cache)
    assert (buffer.status, buffer.stale_reasons) == ("hit", [])
    assert digests == [rel]


def test_file_rewritten_with_the_same_bytes_keeps_the_cache_fresh(dataset: Path, tmp_path: Path) -> None:
    """Replacing a video with a byte-identical copy (new inode and mtime) is not a change."""
    cache = tmp_path / "offline_buffer.pt"
    load(dataset, cache)
    target = dataset / video(FRONT, 0)
    copy = tmp_path / "copy.mp4"
    shutil.copyfile(target, copy)
    target.unlink()
    shutil.copyfile(copy, target)
    assert load(dataset, cache).status == "hit"


def test_moved_dataset_stats_and_workers_do_not_invalidate(dataset: Path, tmp_path: Path) -> None:
    """The folder path, meta/stats.json and the worker count are not part of the fingerprint."""
    cache = tmp_path / "offline_buffer.pt"
    load(dataset, cache)
    moved = dataset.rename(tmp_path / "moved_dataset")
    stats = json.loads((moved / "meta/stats.json").read_text())
    (moved / "meta/stats.json").write_text(json.dumps({"edited": True, **stats}))
    buffer = bufconv.load_or_build(moved, cache, workers=2, use_drq=False)
    assert (buffer.status, buffer.stale_reasons) == ("hit", [])
