"""Oracle tests for the other codecs LeRobot writes: h264 and hevc, long GOPs, B-frames.

tests/test_oracle.py sees LeRobot's default (AV1, GOP 2, no frame reordering). Here LeRobot
0.6.1's own writer encodes with `RGBEncoderConfig(vcodec="h264" | "hevc", g=...)`: B-frames
(packets out of presentation order) and GOPs far longer than 2 (`g=None` leaves the encoder's
default keyframe interval of 250: a keyframe at the start of each file and at scene cuts only;
`g=8` several GOPs per file).

LeRobot 0.6.1 cannot append such an episode to a shared mp4 (its `concatenate_video_files` fails
to mux B-frame packets: EINVAL), so these datasets keep one mp4 per episode and camera
(`video_files_size_in_mb=0.001`): the only way its writer produces such files.

Each stored frame is compared with two decoders:

- an independent sequential PyAV decode of the mp4 (every frame, front to back, rgb24);
- LeRobot's own PyAV reader (`LeRobotDataset(..., video_backend="pyav")[i]`), and the transitions
  with `ReplayBuffer.from_lerobot_dataset`. LeRobot's reader seeks to a keyframe before each
  query; on hevc with `g=8` (x265's open GOPs) it cannot read back some frames of the files it
  wrote (`FrameTimestampError`: the nearest frame it decodes is 0.1-0.2 s off). For that
  case the frames LeRobot does read are compared with it, and every frame, the unreadable ones
  included, with the sequential decode.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import pyarrow.parquet as pq
import pytest
import torch
from test_oracle import REPO_ID, assert_frames_match, assert_transitions_match, lerobot_oracle, load_plain

import bufconv

LENGTHS = (20, 3, 13)


@dataclass(frozen=True)
class Case:
    vcodec: str
    g: int | None
    lerobot_reads_every_frame: bool

    def spec(self) -> dict[str, Any]:
        return {
            "lengths": LENGTHS,
            "video_files_size_in_mb": 0.001,
            "rgb_encoder": (("vcodec", self.vcodec), ("g", self.g)),
        }


CASES = {
    "h264-one-gop": Case("h264", None, True),
    "h264-gop-8": Case("h264", 8, True),
    "hevc-one-gop": Case("hevc", None, True),
    "hevc-gop-8": Case("hevc", 8, False),  # LeRobot's seeking reader fails on some frames
}


@dataclass
class Written:
    case: Case
    root: Path
    cache: Path


@pytest.fixture(scope="module", params=list(CASES), ids=list(CASES))
def written(
    request: pytest.FixtureRequest,
    lerobot_dataset: Callable[..., Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Written:
    case = CASES[request.param]
    root = lerobot_dataset(**case.spec())
    cache = tmp_path_factory.mktemp(request.param) / "offline_buffer.pt"
    bufconv.build(root, cache, workers=1)
    return Written(case, root, cache)


def episode_videos(root: Path) -> list[dict[str, Any]]:
    """The episode table: per episode, each camera's mp4 (relative path) and from_timestamp."""
    (path,) = sorted((root / "meta/episodes").glob("*/*.parquet"))
    rows = pq.read_table(path).to_pylist()
    cameras = sorted({c.split("/")[1] for c in rows[0] if c.startswith("videos/")})
    return [
        {
            cam: (
                f"videos/{cam}/chunk-{row[f'videos/{cam}/chunk_index']:03d}/file-{row[f'videos/{cam}/file_index']:03d}.mp4",
                row[f"videos/{cam}/from_timestamp"],
            )
            for cam in cameras
        }
        for row in rows
    ]


def decode_sequentially(path: Path) -> dict[int, torch.Tensor]:
    """Every frame of an mp4, front to back, as rgb24 like LeRobot: uint8 (3, H, W) by time in 1e-4 s."""
    frames = {}
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        assert stream.time_base is not None
        for frame in container.decode(stream):
            assert frame.pts is not None
            time = round(float(frame.pts * stream.time_base) * 1e4)
            frames[time] = torch.from_numpy(frame.to_ndarray(format="rgb24")).permute(2, 0, 1)
    return frames


def test_files_have_b_frames_and_long_gops(written: Written) -> None:
    """The precondition: each camera's longest file is in the codec asked for, holds packets out of
    presentation order (B-frames) and a GOP longer than LeRobot's default of 2."""
    for cam, (rel, _) in episode_videos(written.root)[0].items():  # episode 0: 20 frames
        with av.open(str(written.root / rel)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == written.case.vcodec, cam
            packets = [(p.pts, p.is_keyframe) for p in container.demux(stream) if p.size]
        pts = [p for p, _ in packets]
        assert pts != sorted(pts), f"{cam}: no B-frames (packets in presentation order)"
        keyframes = [i for i, (_, key) in enumerate(packets) if key] + [len(packets)]
        longest = max(b - a for a, b in itertools.pairwise(keyframes))
        assert longest > 2, f"{cam}: GOPs of at most {longest} packets"
        if written.case.g is None:  # the encoder's own interval (250), cut only at scene changes
            assert longest > 8, f"{cam}: keyframes at {keyframes[:-1]}"
        else:
            assert len(keyframes) > 2, f"{cam}: one GOP, but g={written.case.g}"


def test_frames_equal_a_sequential_pyav_decode(written: Written) -> None:
    """Frame i of episode e is the frame of its mp4 shown at from_timestamp + i / fps, decoded front to back."""
    tensors = load_plain(written.cache)["tensors"]
    fps = 10
    row = 0
    for e, (length, videos) in enumerate(zip(LENGTHS, episode_videos(written.root), strict=True)):
        for cam, (rel, start) in videos.items():
            by_time = decode_sequentially(written.root / rel)
            for i in range(length):
                wanted = round((start + i / fps) * 1e4)
                assert wanted in by_time, f"{cam} episode {e} frame {i}: no decoded frame at that time"
                assert torch.equal(tensors[cam][row + i], by_time[wanted]), f"{cam} episode {e} frame {i}"
        row += length
    assert row == len(tensors["action"])


def test_frames_and_transitions_equal_lerobots(written: Written) -> None:
    """Every frame equals LeRobot's PyAV decode and every transition `from_lerobot_dataset`'s. On
    hevc with g=8, where LeRobot's reader fails on some frames (those are checked above against
    the sequential decode), every frame it does return equals bufconv's, and it fails only with
    FrameTimestampError."""
    if written.case.lerobot_reads_every_frame:
        oracle = lerobot_oracle(written.root)
        assert_frames_match(written.cache, oracle)
        assert_transitions_match(written.cache, oracle)
        return

    from lerobot.datasets import LeRobotDataset
    from lerobot.datasets.video_utils import FrameTimestampError

    dataset = LeRobotDataset(REPO_ID, root=written.root, video_backend="pyav")
    tensors = load_plain(written.cache)["tensors"]
    read = 0
    for i in range(len(dataset)):
        try:
            item = dataset[i]
        except FrameTimestampError:
            continue
        read += 1
        for cam in dataset.meta.camera_keys:
            assert torch.equal(tensors[cam][i].float() / 255, item[cam]), f"{cam} frame {i}"
    assert read > len(dataset) // 2, f"LeRobot read only {read} of {len(dataset)} frames"
