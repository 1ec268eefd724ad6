"""The v2.1 layout (LeRobot 0.3.x): bufconv's reader against LeRobot's converter and against PyAV.

A v2.1 dataset is written by bufconv's writer, a copy is converted to v3.0 by LeRobot's own
`convert_dataset_v21_to_v30` (in-process, offline), and both are built: the two caches must be
tensor for tensor identical. That is, bufconv reads v2.1 files exactly as LeRobot reads the
same files once converted. Separately, the v2.1 cache is checked against a plain PyAV decode of
the per-episode mp4 files and against the arrays the writer was given.
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

import bufconv
from bufconv.source.writer import EpisodeData, write_dataset

SPEC = Spec(lengths=(7, 5, 3, 1))
FRONT, WRIST = (k for k, _ in SPEC.cameras)
VARIANTS: dict[str, tuple[str, ...]] = {
    "videos": (),  # both cameras as AV1 mp4, one per episode
    "png-images": (WRIST,),  # the wrist camera as PNG bytes in the parquet
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
    image_keys = VARIANTS[request.param]
    base = tmp_path_factory.mktemp(f"v21-{request.param}")
    episodes = written_episodes()
    v21 = write_dataset(base / "v21", episodes, fps=SPEC.fps, layout="v2.1", image_keys=image_keys)
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
            mp4 = pair.v21 / layout["video_path"].format(episode_chunk=0, video_key=key, episode_index=e)
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
