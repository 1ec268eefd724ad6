"""Oracle tests: bufconv's cache against LeRobot's own decoding and `ReplayBuffer.from_lerobot_dataset`.

Every dataset here is written by LeRobot's own writer (the `lerobot_dataset` fixture). The cache
is read back with plain `torch.load(..., weights_only=True, mmap=True)` (no bufconv), and every
frame and every transition is compared exactly with what LeRobot 0.6.1 itself produces from the
same files: `LeRobotDataset(..., video_backend="pyav")[i]` for pixels, and the tensors that
`ReplayBuffer.from_lerobot_dataset` stores (in dataset order) for transitions.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import bufconv

REPO_ID = "bufconv/test"  # the repo id the fixture writes with; the data is read from `root`

# name -> Spec fields of the dataset (see tests/conftest.py)
CASES: dict[str, dict[str, Any]] = {
    # two cameras of different, non-square shapes; episode lengths (5, 1, 7, 3)
    "two-cameras": {},
    # the front camera rolls over into a second mp4 with several episodes in each file,
    # while the wrist camera keeps every episode in one file
    "rolled-over-videos": {"video_files_size_in_mb": 0.02, "lengths": (5, 1, 7, 3, 9, 4, 6, 2)},
    # every episode in its own mp4
    "file-per-episode": {"video_files_size_in_mb": 0.001},
    # done inferred from episode ends
    "no-next-done": {"with_done": False},
    # `image` features: PNG bytes in the parquet, no video at all
    "image-features": {"use_videos": False},
}


@dataclass
class Oracle:
    """A LeRobot-written dataset and what LeRobot itself makes of it."""

    root: Path
    items: list[dict[str, Any]]
    """`LeRobotDataset(..., video_backend="pyav")[i]` for every frame i."""
    camera_keys: list[str]
    state_keys: list[str]
    buffer: Any
    """`lerobot.rl.buffer.ReplayBuffer.from_lerobot_dataset` of the dataset (no DrQ, no memory optimisation)."""


def lerobot_oracle(root: Path) -> Oracle:
    """Decode every frame and build the replay buffer with LeRobot itself."""
    from lerobot.datasets import LeRobotDataset
    from lerobot.rl.buffer import ReplayBuffer

    dataset = LeRobotDataset(REPO_ID, root=root, video_backend="pyav")
    items = [dataset[i] for i in range(len(dataset))]
    state_keys = [k for k in dataset.meta.features if k.startswith("observation.")]
    buffer = ReplayBuffer.from_lerobot_dataset(
        dataset,
        device="cpu",
        state_keys=state_keys,
        use_drq=False,
        storage_device="cpu",
        optimize_memory=False,
    )
    assert len(buffer) == len(dataset) == len(items)
    return Oracle(root, items, list(dataset.meta.camera_keys), state_keys, buffer)


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def oracle(request: pytest.FixtureRequest, lerobot_dataset: Callable[..., Path]) -> Oracle:
    return lerobot_oracle(lerobot_dataset(**CASES[request.param]))


def load_plain(path: Path) -> dict[str, Any]:
    """The cache as anyone reads it: plain torch, weights only, memory-mapped."""
    top = torch.load(path, weights_only=True, mmap=True)
    assert top["format"] == "bufconv.offline_buffer"
    assert top["format_version"] == 1
    return top


def assert_frames_match(path: Path, oracle: Oracle) -> None:
    """Every stored uint8 frame equals LeRobot's PyAV decode of it, and every row its parquet values."""
    top = load_plain(path)
    tensors, meta = top["tensors"], top["meta"]
    n = len(oracle.items)
    assert meta["frames"] == n
    assert sorted(meta["keys"]["images"]) == sorted(oracle.camera_keys)
    assert meta["keys"]["state"] == oracle.state_keys
    for key in oracle.camera_keys:
        stored = tensors[key]
        expected_shape = tuple(oracle.items[0][key].shape)  # LeRobot gives (C, H, W)
        assert stored.dtype == torch.uint8
        assert tuple(stored.shape) == (n, *expected_shape)
        assert meta["ranges"][key] == {"storage": "uint8", "output": 1}
        for i, item in enumerate(oracle.items):
            theirs = item[key]
            assert theirs.dtype == torch.float32
            assert torch.equal(stored[i].float() / 255, theirs), (
                f"{key} frame {i}: pixels differ from LeRobot's"
            )
            assert torch.equal(stored[i], (theirs * 255).round().to(torch.uint8)), f"{key} frame {i}"
    for i, item in enumerate(oracle.items):
        assert torch.equal(tensors["observation.state"][i], item["observation.state"])
        assert torch.equal(tensors["action"][i], item["action"])
        assert tensors["episode_index"][i] == item["episode_index"]
        assert tensors["frame_index"][i] == item["frame_index"]
        assert tensors["timestamp"][i] == item["timestamp"]


def assert_transitions_match(path: Path, oracle: Oracle) -> None:
    """Every transition of the cache equals the one LeRobot's `from_lerobot_dataset` stored at the same index."""
    theirs = oracle.buffer
    n = len(theirs)
    buf = bufconv.open_buffer(path, use_drq=False)
    assert len(buf) == n
    ours = buf[list(range(n))]

    assert sorted(ours["state"]) == sorted(theirs.states) == sorted(oracle.state_keys)
    for key in oracle.state_keys:
        for side, their_side in (("state", theirs.states), ("next_state", theirs.next_states)):
            mine = ours[side][key]
            assert mine.dtype == torch.float32
            assert mine.shape == their_side[key][:n].shape, f"{side}[{key}]"
            for i in range(n):
                assert torch.equal(mine[i], their_side[key][i]), f"{side}[{key!r}] of transition {i}"
    for i in range(n):
        assert torch.equal(ours["action"][i], theirs.actions[i]), f"action {i}"
        assert ours["reward"][i] == theirs.rewards[i], f"reward {i}"
        assert ours["done"][i] == theirs.dones[i].float(), f"done {i}"
    assert ours["action"].dtype == ours["reward"].dtype == ours["done"].dtype == torch.float32
    assert ours["reward"].shape == ours["done"].shape == (n,)

    # LeRobot always stores truncated=False; bufconv marks an episode's last frame when it is not done.
    assert not theirs.truncateds[:n].any()
    episode = torch.tensor([int(item["episode_index"]) for item in oracle.items])
    last = torch.ones(n, dtype=torch.bool)
    last[:-1] = episode[1:] != episode[:-1]
    expected_truncated = last & ~theirs.dones[:n]
    assert ours["truncated"].dtype == torch.float32
    assert torch.equal(ours["truncated"], expected_truncated.float())

    # complementary_info: same keys (LeRobot strips the prefix), same shapes, same values.
    info = ours["complementary_info"]
    assert info is not None
    assert sorted(info) == sorted(theirs.complementary_info_keys) == ["discrete_penalty"]
    for key in theirs.complementary_info_keys:
        their_values = theirs.complementary_info[key][:n]
        assert info[key].shape == their_values.shape, f"complementary_info[{key}]"
        assert torch.equal(info[key], their_values), f"complementary_info[{key}]"


def test_frames_equal_lerobot_pyav_decode(oracle: Oracle, tmp_path: Path) -> None:
    """Every stored uint8 frame (read with plain torch.load) is exactly LeRobot's PyAV decode, before its /255."""
    path = tmp_path / "c.pt"
    result = bufconv.build(oracle.root, path, workers=1)
    assert result.status == "built"
    assert_frames_match(path, oracle)


def test_transitions_equal_lerobot_replay_buffer(oracle: Oracle, tmp_path: Path) -> None:
    """Every transition equals `ReplayBuffer.from_lerobot_dataset`'s, and truncated follows bufconv's rule."""
    path = tmp_path / "c.pt"
    bufconv.build(oracle.root, path, workers=1)
    assert_transitions_match(path, oracle)


def test_case_layouts_are_what_they_claim(lerobot_dataset: Callable[..., Path], spec: type) -> None:
    """The rolled-over cases really share and split mp4 files (else the oracle above proves less)."""

    def files_per_camera(root: Path) -> dict[str, list[tuple[int, int]]]:
        table = pq.read_table(sorted((root / "meta/episodes").glob("*/*.parquet"))[0]).to_pylist()
        cameras = sorted({c.split("/")[1] for c in table[0] if c.startswith("videos/")})
        return {
            cam: [(row[f"videos/{cam}/chunk_index"], row[f"videos/{cam}/file_index"]) for row in table]
            for cam in cameras
        }

    rolled = files_per_camera(lerobot_dataset(**CASES["rolled-over-videos"]))
    front = rolled["observation.images.front"]
    assert len(set(front)) >= 2, "the front camera should roll over into several files"
    assert max(front.count(f) for f in set(front)) >= 2, "files should hold several episodes"
    assert rolled["observation.images.front"] != rolled["observation.images.wrist"]

    per_episode = files_per_camera(lerobot_dataset(**CASES["file-per-episode"]))
    for files in per_episode.values():
        assert len(set(files)) == len(files) == len(spec().lengths)

    image_root = lerobot_dataset(**CASES["image-features"])
    assert not (image_root / "videos").exists()


def test_parallel_build_equals_oracle(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """A build with 2 worker processes (files split across them) matches LeRobot and the 1-worker build."""
    root = lerobot_dataset(**CASES["rolled-over-videos"])
    oracle = lerobot_oracle(root)
    parallel, serial = tmp_path / "parallel.pt", tmp_path / "serial.pt"
    bufconv.build(root, parallel, workers=2)
    bufconv.build(root, serial, workers=1)
    assert_frames_match(parallel, oracle)
    assert_transitions_match(parallel, oracle)
    a, b = load_plain(parallel), load_plain(serial)
    assert a["tensors"].keys() == b["tensors"].keys()
    for name in a["tensors"]:
        assert torch.equal(a["tensors"][name], b["tensors"][name]), name
    assert a["meta"]["tensors"] == b["meta"]["tensors"]
    assert a["meta"]["fingerprint"] == b["meta"]["fingerprint"]


def test_truncated_episodes_equal_oracle(dataset_copy: Callable[..., Path], tmp_path: Path) -> None:
    """Episodes that end without `next.done` (time limit): next_state stays in the episode, truncated is set.

    The copy of a LeRobot-written dataset gets `next.done` false at the end of episodes 0 and 3
    (3 is the dataset's last frame), so LeRobot's boundary rules for next_state are exercised.
    """
    root = dataset_copy()
    data = sorted((root / "data").glob("*/*.parquet"))
    assert len(data) == 1
    table = pq.read_table(data[0])
    episode = table.column("episode_index").to_pylist()
    done = [bool(v) for v in table.column("next.done").to_pylist()]
    ends = [i for i in range(len(episode)) if i == len(episode) - 1 or episode[i + 1] != episode[i]]
    assert [done[i] for i in ends] == [True] * 4
    for i in (ends[0], ends[3]):
        done[i] = False
    column = table.schema.get_field_index("next.done")
    table = table.set_column(
        column, table.schema.field(column), pa.array(done, table.schema.field(column).type)
    )
    pq.write_table(table, data[0])

    oracle = lerobot_oracle(root)
    assert [bool(oracle.buffer.dones[i]) for i in ends] == [False, True, True, False]
    path = tmp_path / "c.pt"
    bufconv.build(root, path, workers=1)
    assert_transitions_match(path, oracle)
    truncated = load_plain(path)["tensors"]["truncated"]
    assert truncated.nonzero().flatten().tolist() == [ends[0], ends[3]]
