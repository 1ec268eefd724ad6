"""The v2.1 layout (LeRobot 0.3.x): bufconv's reader against LeRobot's converter and against PyAV.

A v2.1 dataset is written by bufconv's writer, a copy is converted to v3.0 by LeRobot's own
`convert_dataset_v21_to_v30` (in-process, offline), and both are built: the two caches must be
tensor for tensor identical, and equal to what LeRobot itself decodes and puts in its replay
buffer from the converted copy. That is, bufconv reads v2.1 files exactly as LeRobot reads the
same files once converted. Separately, the v2.1 cache is checked against a plain PyAV decode of
the per-episode mp4 files and against the arrays the writer was given. One variant spreads the
episodes over two chunk folders; edits of the v2.1 metadata files make a cache stale.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest
import torch
from conftest import Spec, episode_frames
from test_oracle import assert_frames_match, assert_transitions_match, lerobot_oracle

import bufconv
from bufconv.errors import StaleCacheError
from bufconv.source.writer import EpisodeData, write_dataset

SPEC = Spec(lengths=(7, 5, 3, 1))
FRONT, WRIST = (k for k, _ in SPEC.cameras)
VARIANTS: dict[str, dict[str, Any]] = {  # write_dataset arguments
    "videos": {},  # both cameras as AV1 mp4, one per episode
    "png-images": {"image_keys": (WRIST,)},  # the wrist camera as PNG bytes in the parquet
    # two episodes per chunk: episodes 2 and 3 live in data/chunk-001 and videos/chunk-001
    "two-chunks": {"chunks_size": 2},
}


@dataclass
class Pair:
    """A v2.1 dataset, the episodes it was written from, and LeRobot's v3.0 conversion of a copy."""

    episodes: list[EpisodeData]
    image_keys: tuple[str, ...]
    v21: Path
    v30: Path
    v30_old: Path


def written_episodes() -> list[EpisodeData]:
    """The conftest's frames (two non-square cameras, state, action, reward, done, complementary), as arrays."""
    return [
        EpisodeData({k: np.stack([f[k] for f in frames]) for k in frames[0]}, task="pick the cube")
        for frames in episode_frames(SPEC)
    ]


@pytest.fixture(scope="module", params=list(VARIANTS), ids=list(VARIANTS))
def pair(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Pair:
    image_keys = tuple(VARIANTS[request.param].get("image_keys", ()))
    base = tmp_path_factory.mktemp(f"v21-{request.param}")
    episodes = written_episodes()
    v21 = write_dataset(base / "v21", episodes, fps=SPEC.fps, layout="v2.1", **VARIANTS[request.param])
    copy = base / "converted"
    shutil.copytree(v21, copy)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        from lerobot.scripts.convert_dataset_v21_to_v30 import convert_dataset

        convert_dataset(repo_id="bufconv/v21", root=str(copy), push_to_hub=False)
    return Pair(episodes, image_keys, v21, copy, base / "converted_old")


def info(root: Path) -> dict[str, Any]:
    return json.loads((root / "meta/info.json").read_text())


def load_plain(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True, mmap=True)


def test_converter_produced_v30(pair: Pair) -> None:
    """LeRobot's converter moved the v2.1 folder aside and left a v3.0 dataset at the root."""
    assert info(pair.v21)["codebase_version"] == "v2.1"
    assert info(pair.v30_old)["codebase_version"] == "v2.1"
    assert info(pair.v30)["codebase_version"] == "v3.0"
    assert (pair.v30 / "meta/episodes").is_dir()
    assert not (pair.v30 / "meta/episodes.jsonl").exists()
    features = info(pair.v30)["features"]
    assert features[FRONT]["dtype"] == "video"
    assert features[WRIST]["dtype"] == ("image" if WRIST in pair.image_keys else "video")


def test_v21_cache_equals_cache_of_lerobot_conversion(pair: Pair, tmp_path: Path) -> None:
    """Building the v2.1 original and LeRobot's v3.0 conversion gives identical tensors, checksums and meta."""
    a, b = tmp_path / "v21.pt", tmp_path / "v30.pt"
    bufconv.build(pair.v21, a, workers=1)
    bufconv.build(pair.v30, b, workers=1)
    old, new = load_plain(a), load_plain(b)
    assert old["meta"]["source"]["codebase_version"] == "v2.1"
    assert new["meta"]["source"]["codebase_version"] == "v3.0"

    assert list(old["tensors"]) == list(new["tensors"])
    for name in old["tensors"]:
        x, y = old["tensors"][name], new["tensors"][name]
        assert x.dtype == y.dtype, name
        assert x.shape == y.shape, name
        assert torch.equal(x, y), f"{name} differs between the v2.1 and the converted v3.0 dataset"
    assert old["meta"]["tensors"] == new["meta"]["tensors"]  # dtype, shape and checksum per tensor
    for name, spec in old["meta"]["tensors"].items():
        assert spec["checksum"] == new["meta"]["tensors"][name]["checksum"]
        assert spec["checksum"].startswith("xxh3_128:")
    for field in ("keys", "ranges", "episodes", "frames", "done_source"):
        assert old["meta"][field] == new["meta"][field], field
    assert old["meta"]["frames"] == sum(SPEC.lengths)
    assert [e["length"] for e in old["meta"]["episodes"]] == list(SPEC.lengths)
    assert sorted(old["meta"]["keys"]["images"]) == sorted([FRONT, WRIST])


def decode_all(path: Path) -> tuple[list[np.ndarray], list[float]]:
    """Every frame of an mp4 as rgb24 (as LeRobot's PyAV backend converts), with its timestamp."""
    frames, times = [], []
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        for frame in container.decode(stream):
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(float(frame.pts * stream.time_base))
    return frames, times


def test_v21_frames_equal_pyav_decode_and_written_values(pair: Pair, tmp_path: Path) -> None:
    """The v2.1 cache holds each episode's mp4 decoded by PyAV, PNG frames and numbers exactly as written."""
    path = tmp_path / "v21.pt"
    bufconv.build(pair.v21, path, workers=1)
    tensors = load_plain(path)["tensors"]
    layout = info(pair.v21)
    start = 0
    for e, episode in enumerate(pair.episodes):
        given = episode.frames
        n = len(given["action"])
        rows = slice(start, start + n)
        for key in (FRONT, WRIST):
            stored = tensors[key][rows].permute(0, 2, 3, 1).numpy()  # (n, H, W, 3)
            if key in pair.image_keys:  # lossless PNG: the very frames given to the writer
                assert np.array_equal(stored, given[key]), f"{key} episode {e}"
                continue
            chunk = e // layout["chunks_size"]
            mp4 = pair.v21 / layout["video_path"].format(episode_chunk=chunk, video_key=key, episode_index=e)
            decoded, times = decode_all(mp4)
            assert len(decoded) == n
            assert times == pytest.approx([i / SPEC.fps for i in range(n)], abs=1e-9)
            for i in range(n):
                assert np.array_equal(stored[i], decoded[i]), f"{key} episode {e} frame {i}"
            # and the lossy decode is close to what was encoded: the right episode, in order
            error = np.abs(stored.astype(np.int16) - given[key].astype(np.int16)).mean()
            assert error < 12, f"{key} episode {e}: mean error {error:.1f} against the written frames"
        assert torch.equal(tensors["observation.state"][rows], torch.from_numpy(given["observation.state"]))
        assert torch.equal(tensors["action"][rows], torch.from_numpy(given["action"]))
        assert torch.equal(tensors["reward"][rows], torch.from_numpy(given["next.reward"]).reshape(n))
        assert torch.equal(tensors["done"][rows], torch.from_numpy(given["next.done"]).reshape(n))
        penalty = torch.from_numpy(given["complementary_info.discrete_penalty"])
        assert torch.equal(
            tensors["complementary_info.discrete_penalty"][rows].reshape(n), penalty.reshape(n)
        )
        assert torch.equal(tensors["episode_index"][rows], torch.full((n,), e))
        assert torch.equal(tensors["frame_index"][rows], torch.arange(n))
        start += n
    assert start == len(tensors["action"])


def test_chunk_folders_follow_chunks_size(pair: Pair) -> None:
    """Episode e's parquet and mp4 files sit in chunk e // chunks_size; the two-chunks variant has two."""
    layout = info(pair.v21)
    expected = {f"chunk-{e // layout['chunks_size']:03d}" for e in range(len(SPEC.lengths))}
    data = {p.parent.name for p in (pair.v21 / "data").glob("*/episode_*.parquet")}
    assert data == expected
    assert layout["total_chunks"] == len(expected)
    if (pair.v21 / "videos").exists():
        assert {p.parts[-3] for p in (pair.v21 / "videos").glob("*/*/episode_*.mp4")} == expected
    if layout["chunks_size"] == 2:
        assert expected == {"chunk-000", "chunk-001"}


def test_v21_cache_equals_lerobots_decode_and_buffer_of_the_conversion(
    pair: Pair, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LeRobot 0.6.1 reads the converted copy (PyAV decode, `from_lerobot_dataset`): the caches of the
    v2.1 original and of the copy hold exactly LeRobot's frames and transitions.

    (The caches being equal to each other, above, would also hold if bufconv misread both layouts alike.)
    """
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    oracle = lerobot_oracle(pair.v30)
    for name, root in (("v21", pair.v21), ("v30", pair.v30)):
        path = tmp_path / f"{name}.pt"
        bufconv.build(root, path, workers=1)
        assert_frames_match(path, oracle)
        assert_transitions_match(path, oracle)


def rename_task_of_episode_0(root: Path) -> None:
    lines = (root / "meta/episodes.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["tasks"] = ["put the cube back"]
    (root / "meta/episodes.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")


def rename_task_0(root: Path) -> None:
    lines = (root / "meta/tasks.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    first["task"] = "put the cube back"
    (root / "meta/tasks.jsonl").write_text("\n".join([json.dumps(first), *lines[1:]]) + "\n")


@pytest.mark.parametrize(
    ("edit", "changed"),
    [(rename_task_of_episode_0, "meta/episodes.jsonl"), (rename_task_0, "meta/tasks.jsonl")],
    ids=["episodes.jsonl", "tasks.jsonl"],
)
def test_edited_v21_metadata_makes_the_cache_stale(
    edit: Any, changed: str, pair: Pair, tmp_path: Path
) -> None:
    """An edit of meta/episodes.jsonl or meta/tasks.jsonl (here a task's text, which leaves every
    tensor as it was) is refused as stale, naming the file, and a rebuild says the same."""
    root = tmp_path / "v21"
    shutil.copytree(pair.v21, root)
    cache = tmp_path / "offline_buffer.pt"
    assert bufconv.load_or_build(root, cache, workers=1, use_drq=False).status == "built"
    assert bufconv.load_or_build(root, cache, workers=1, use_drq=False).status == "hit"
    edit(root)
    with pytest.raises(StaleCacheError) as info_:
        bufconv.load_or_build(root, cache, workers=1, use_drq=False, on_stale="error")
    assert f"{changed} changed" in str(info_.value)
    rebuilt = bufconv.load_or_build(root, cache, workers=1, use_drq=False)
    assert rebuilt.status == "rebuilt"
    assert rebuilt.stale_reasons == [f"{changed} changed"]
