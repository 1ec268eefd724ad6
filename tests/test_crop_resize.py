"""Build-time crop and resize: frames equal LeRobot's `ImageCropResizeProcessorStep` on its own frames.

The oracle is LeRobot 0.6.1 itself: `LeRobotDataset(..., video_backend="pyav")[i]` gives the
[0,1] frames its learner sees, and `ImageCropResizeProcessorStep(crop_params_dict, resize_size)`
crops and resizes them as the actor's env processor does. bufconv's uint8 frames / 255 must be
within uint8 rounding of that (0.5/255, plus float32 noise).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import bufconv
from bufconv.cli import cli
from bufconv.errors import DatasetError

FRONT, WRIST = "observation.images.front", "observation.images.wrist"  # 48x64 and 40x32 (conftest)
ROUNDING = 0.5 / 255 + 1e-6

CASES: dict[str, dict[str, Any]] = {
    # crops touching the borders (front: top, left and bottom; wrist: bottom and right), downscaled
    "crop-to-borders-and-downscale": {
        "crop": {FRONT: (0, 0, 48, 40), WRIST: (10, 2, 30, 30)},
        "resize": (24, 20),
    },
    # no crop, upscaled to a non-square size
    "upscale": {"crop": None, "resize": (72, 96)},
    # one camera cropped, everything resized to a square
    "one-crop-square": {"crop": {WRIST: (5, 4, 20, 16)}, "resize": (32, 32)},
    # crop only: pixels copied exactly
    "crop-only": {"crop": {FRONT: (7, 9, 33, 41)}, "resize": None},
}


def lerobot_frames(root: Path, crop: dict | None, resize: tuple[int, int] | None) -> dict[str, torch.Tensor]:
    """Every frame of every camera, as LeRobot's learner gets them after its crop/resize step."""
    from lerobot.datasets import LeRobotDataset
    from lerobot.processor import ImageCropResizeProcessorStep

    dataset = LeRobotDataset("bufconv/test", root=root, video_backend="pyav")
    step = ImageCropResizeProcessorStep(crop_params_dict=crop, resize_size=resize)
    out: dict[str, list[torch.Tensor]] = {FRONT: [], WRIST: []}
    for i in range(len(dataset)):
        item = dataset[i]
        processed = step.observation({FRONT: item[FRONT], WRIST: item[WRIST]})
        for key in out:
            out[key].append(processed[key])
    return {key: torch.stack(frames) for key, frames in out.items()}


def cached_frames(path: Path) -> dict[str, torch.Tensor]:
    tensors = torch.load(path, weights_only=True, mmap=True)["tensors"]
    return {key: tensors[key] for key in (FRONT, WRIST)}


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("workers", [1, 2], ids=["in-process", "worker-processes"])
def test_frames_equal_lerobot_crop_resize_step(
    name: str, workers: int, lerobot_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    crop, resize = CASES[name]["crop"], CASES[name]["resize"]
    root = lerobot_dataset()
    result = bufconv.build(root, tmp_path / "c.pt", crop=crop, resize=resize, workers=workers)
    ours = cached_frames(result.path)
    theirs = lerobot_frames(root, crop, resize)
    for key in (FRONT, WRIST):
        assert ours[key].dtype == torch.uint8
        assert ours[key].shape == theirs[key].shape, key
        difference = (ours[key].float() / 255 - theirs[key]).abs().max().item()
        if resize is None:
            assert difference == 0, key  # a crop copies pixels
        else:
            assert difference <= ROUNDING, (key, difference * 255)


def test_image_features_are_resized_like_videos(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """PNG frames stored in the parquet (no video) go through the same crop and resize."""
    crop, resize = {FRONT: (4, 0, 44, 64)}, (30, 30)
    root = lerobot_dataset(use_videos=False)
    result = bufconv.build(root, tmp_path / "c.pt", crop=crop, resize=resize)
    ours, theirs = cached_frames(result.path), lerobot_frames(root, crop, resize)
    for key in (FRONT, WRIST):
        assert (ours[key].float() / 255 - theirs[key]).abs().max().item() <= ROUNDING


def test_header_and_info_record_crop_and_resize(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    bufconv.build(lerobot_dataset(), path, crop={WRIST: (0, 0, 40, 30)}, resize=(16, 24))
    meta = torch.load(path, weights_only=True, mmap=True)["meta"]
    assert meta["crop"] == {WRIST: [0, 0, 40, 30]}
    assert meta["resize"] == [16, 24]
    assert meta["tensors"][FRONT]["shape"] == [16, 3, 16, 24]
    options = meta["fingerprint_inputs"]["options"]
    assert options["crop"] == {WRIST: [0, 0, 40, 30]} and options["resize"] == [16, 24]
    shown = CliRunner().invoke(cli, ["info", str(path)])
    assert shown.exit_code == 0, shown.output
    assert f"crop: {WRIST} 0,0,40,30 (top,left,height,width); resize: 16x24" in shown.output


def test_a_crop_outside_the_frame_is_a_clear_error(
    lerobot_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    with pytest.raises(
        DatasetError, match=r"crop of observation.images.wrist .* reaches column 32 but its frames are 40x32"
    ):
        bufconv.build(lerobot_dataset(), tmp_path / "c.pt", crop={WRIST: (0, 1, 40, 32)})
    with pytest.raises(DatasetError, match=r"reaches row 48 but its frames are 48x64"):
        bufconv.build(lerobot_dataset(), tmp_path / "c.pt", crop={FRONT: (1, 0, 48, 10)})
    with pytest.raises(DatasetError, match="not an image key of this build"):
        bufconv.build(lerobot_dataset(), tmp_path / "c.pt", crop={"observation.images.top": (0, 0, 8, 8)})
    assert not (tmp_path / "c.pt").exists()
    runner = CliRunner()
    bad = runner.invoke(
        cli, ["build", str(lerobot_dataset()), "-o", str(tmp_path / "c.pt"), "--crop", f"{WRIST}=0,0,41,8"]
    )
    assert bad.exit_code == 1 and "reaches row 40 but its frames are 40x32" in bad.output
    usage = runner.invoke(cli, ["build", str(lerobot_dataset()), "--crop", f"{WRIST}=0,0,8"])
    assert usage.exit_code == 2 and "KEY=TOP,LEFT,HEIGHT,WIDTH" in usage.output
    usage = runner.invoke(cli, ["build", str(lerobot_dataset()), "--resize", "0,8"])
    assert usage.exit_code == 2 and "H,W" in usage.output


def test_changing_crop_or_resize_makes_the_cache_stale(
    lerobot_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    root, path = lerobot_dataset(), tmp_path / "c.pt"
    # A cache built without crop/resize (as before they existed) reads as "none": fresh without them.
    assert bufconv.build(root, path).status == "built"
    assert bufconv.build(root, path).status == "hit"
    cropped = bufconv.build(root, path, crop={FRONT: (0, 0, 40, 40)})
    assert cropped.status == "rebuilt"
    assert cropped.reasons == [f"crop of {FRONT}: cache none, requested 0,0,40,40 (top,left,height,width)"]
    assert bufconv.build(root, path, crop={FRONT: (0, 0, 40, 40)}).status == "hit"
    resized = bufconv.build(root, path, crop={FRONT: (0, 0, 40, 40)}, resize=(20, 20))
    assert resized.reasons == ["resize: cache none, requested 20x20"]
    other = bufconv.build(root, path, crop={FRONT: (1, 0, 40, 40)}, resize=(24, 20))
    assert other.reasons == [
        f"crop of {FRONT}: cache 0,0,40,40 (top,left,height,width), requested 1,0,40,40 (top,left,height,width)",
        "resize: cache 20x20, requested 24x20",
    ]
    # load_or_build takes the same options and says why it rebuilt
    buf = bufconv.load_or_build(root, path, resize=(24, 20), use_drq=False)
    assert buf.status == "rebuilt"
    assert buf.stale_reasons == [f"crop of {FRONT}: cache 1,0,40,40 (top,left,height,width), requested none"]
    assert buf.sample(4)["state"][FRONT].shape == (4, 3, 24, 20)
    verified = bufconv.verify(path, dataset=root)
    assert verified.ok, verified.problems
