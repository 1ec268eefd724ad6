"""Depth cameras (issue 20, SPEC section 15) on datasets LeRobot 0.6.1's own writer recorded.

Three storages, as LeRobot writes them: hevc gray12le video of log-quantized 12-bit codes, and
TIFF image features of uint16 millimetres or float32 metres; odd frame sizes, several episodes,
beside an RGB camera. Every frame a bufconv batch delivers equals LeRobot's own decode of it
(`LeRobotDataset(..., depth_output_unit=unit)[i]`), in either unit.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import bufconv
from bufconv.buffer.batch import Batcher
from bufconv.cli import cli
from bufconv.errors import StaleCacheError
from bufconv.source.depth import DepthDecoder

RGB = "observation.images.front"
DEPTH = "observation.images.front_depth"
DEPTH_HW = (21, 35)  # odd on both sides
LENGTHS = (
    5,
    3,
    4,
)  # LeRobot 0.6.1 fails (mux EINVAL) to append a hevc depth episode of under 3 frames to a video file
STORAGES = ("video", "uint16", "float32")


def depth_frame(rng: np.random.Generator, storage: str, *, values_in: str | None = None) -> np.ndarray:
    """A depth frame as a RealSense (uint16 mm) or a simulator (float32 m) gives it: 0.2 to 6 m,
    with a sharp edge (near object on a far wall) and a few pixels of no return (0)."""
    h, w = DEPTH_HW
    metres = rng.uniform(0.2, 6.0, (h, w, 1))
    metres[: h // 2, : w // 3] = rng.uniform(0.3, 0.35)  # the near object
    metres[rng.random((h, w, 1)) < 0.03] = 0.0
    if storage == "float32":
        unit = values_in or "m"
        return (metres * (1000.0 if unit == "mm" else 1.0)).astype(np.float32)
    return np.round(metres * 1000.0).astype(np.uint16)


def write_rgbd(root: Path, storage: str, *, values_in: str | None = None) -> Path:
    """An RGB-D dataset written by LeRobot's own writer (LeRobotDataset.create/add_frame/save_episode)."""
    from lerobot.datasets import LeRobotDataset

    kind = "video" if storage == "video" else "image"
    features = {
        RGB: {"dtype": kind, "shape": (24, 32, 3), "names": ["height", "width", "channels"]},
        DEPTH: {
            "dtype": kind,
            "shape": (*DEPTH_HW, 1),
            "names": ["height", "width", "channels"],
            "info": {"is_depth_map": True},
        },
        "observation.state": {"dtype": "float32", "shape": (3,), "names": None},
        "action": {"dtype": "float32", "shape": (2,), "names": None},
        "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
        "next.done": {"dtype": "bool", "shape": (1,), "names": None},
    }
    logging.getLogger("libav").setLevel(logging.ERROR)
    dataset = LeRobotDataset.create(
        repo_id="bufconv/rgbd", fps=10, features=features, root=root, use_videos=storage == "video"
    )
    rng = np.random.default_rng(7)
    for length in LENGTHS:
        for i in range(length):
            dataset.add_frame(
                {
                    RGB: rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
                    DEPTH: depth_frame(rng, storage, values_in=values_in),
                    "observation.state": rng.standard_normal(3).astype(np.float32),
                    "action": rng.standard_normal(2).astype(np.float32),
                    "next.reward": np.array([float(i == length - 1)], np.float32),
                    "next.done": np.array([i == length - 1]),
                    "task": "pick",
                }
            )
        dataset.save_episode()
    dataset.finalize()
    return root


@pytest.fixture(scope="module")
def rgbd(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return {s: write_rgbd(tmp_path_factory.mktemp(s) / "dataset", s) for s in STORAGES}


def lerobot_depth(root: Path, unit: str) -> torch.Tensor:
    """LeRobot 0.6.1's own decode of every depth frame: float32 (N, 1, H, W) in `unit`.

    Image features: `LeRobotDataset(..., depth_output_unit=unit)[i]`. Videos: the functions its
    `__getitem__` calls (`decode_video_frames(..., is_depth=True)`, then `dequantize_depth` with
    the feature's `DepthEncoderConfig`), given every timestamp of a file in one call: one item
    at a time, LeRobot 0.6.1 fails on its own hevc depth videos (a seek into the file drops the
    frame it should land on: `FrameTimestampError`, "loaded timestamps 0.7, 0.9" for a query at
    0.8, the first frame of the second episode, which a front-to-back decode of the file has).
    """
    from lerobot.datasets import LeRobotDataset

    dataset = LeRobotDataset("bufconv/rgbd", root=root, video_backend="pyav", depth_output_unit=unit)
    if dataset.meta.features[DEPTH]["dtype"] != "video":
        return torch.stack([dataset[i][DEPTH] for i in range(len(dataset))])
    from lerobot.configs.video import DepthEncoderConfig
    from lerobot.datasets.depth_utils import dequantize_depth
    from lerobot.datasets.video_utils import decode_video_frames

    encoder = DepthEncoderConfig.from_video_info(dataset.meta.features[DEPTH]["info"])
    by_file: dict[Path, list[float]] = {}
    for e in range(dataset.meta.total_episodes):  # episodes in order, so files in order
        episode = dataset.meta.episodes[e]
        offset = episode[f"videos/{DEPTH}/from_timestamp"]
        rows = range(episode["dataset_from_index"], episode["dataset_to_index"])
        path = root / dataset.meta.get_video_file_path(e, DEPTH)
        by_file.setdefault(path, []).extend(offset + float(dataset.hf_dataset[i]["timestamp"]) for i in rows)
    frames = []
    for path, timestamps in by_file.items():
        codes = decode_video_frames(path, timestamps, 1e-4, "pyav", is_depth=True)
        frames.append(
            dequantize_depth(
                codes,
                depth_min=encoder.depth_min,
                depth_max=encoder.depth_max,
                shift=encoder.shift,
                use_log=encoder.use_log,
                output_unit=unit,
            )
        )
    return torch.cat(frames)


def assert_close(got: torch.Tensor, expected: torch.Tensor) -> None:
    assert got.dtype == torch.float32 and got.shape == expected.shape
    # float32 rounding: 1e-5 relative (a no-return pixel is 0 in both)
    assert torch.allclose(got, expected, rtol=1e-5, atol=0.0), (got - expected).abs().max()


@pytest.mark.parametrize("unit", ["mm", "m"])
@pytest.mark.parametrize("storage", STORAGES)
def test_every_frame_equals_lerobots_decode(
    rgbd: dict[str, Path], tmp_path: Path, storage: str, unit: str
) -> None:
    buf = bufconv.load_or_build(rgbd[storage], tmp_path / "c.pt", depth_unit=unit, use_drq=False)
    assert buf.depth_keys == [DEPTH] and buf.depth_units == {DEPTH: unit}
    assert buf.image_keys == [RGB]
    stored = buf.meta["tensors"][DEPTH]
    # 2 bytes a pixel, except float depth (no 2-byte form holds it losslessly)
    assert stored["dtype"] == ("float32" if storage == "float32" else "int16")
    assert stored["shape"] == [sum(LENGTHS), 1, *DEPTH_HW]
    batch = buf[list(range(len(buf)))]
    expected = lerobot_depth(rgbd[storage], unit)
    assert_close(batch["state"][DEPTH], expected)
    next_index = (
        buf.meta and torch.load(tmp_path / "c.pt", weights_only=True, mmap=True)["tensors"]["next_index"]
    )
    assert_close(batch["next_state"][DEPTH], expected[next_index])
    if unit == "mm":  # the dataset's own values: the RealSense's millimetres, a simulator's metres x 1000
        assert float(expected.max()) > 1000
    else:
        assert float(expected.max()) < 10


def test_header_records_quantization_read_from_the_dataset(rgbd: dict[str, Path], tmp_path: Path) -> None:
    info = json.loads((rgbd["video"] / "meta" / "info.json").read_text())["features"][DEPTH]["info"]
    result = bufconv.build(rgbd["video"], tmp_path / "c.pt")
    entry = torch.load(tmp_path / "c.pt", weights_only=True)["meta"]["depth"][DEPTH]
    assert (
        entry["stored"] == "codes12" and entry["unit"] == "mm" and entry["pix_fmt"] == info["video.pix_fmt"]
    )
    for name in ("depth_min", "depth_max", "shift", "use_log"):
        assert entry["quantization"][name] == info[f"video.{name}"]
    assert result.depth_units == {DEPTH: "mm"}


def test_quantization_is_never_assumed(rgbd: dict[str, Path], tmp_path: Path) -> None:
    import shutil

    root = tmp_path / "dataset"
    shutil.copytree(rgbd["video"], root)
    info_path = root / "meta" / "info.json"
    info = json.loads(info_path.read_text())
    del info["features"][DEPTH]["info"]["video.shift"]
    info_path.write_text(json.dumps(info))
    with pytest.raises(bufconv.DatasetError, match="video.shift"):
        bufconv.build(root, tmp_path / "c.pt")


@pytest.mark.parametrize("storage", ["video", "float32"])
def test_a_changed_unit_makes_the_cache_stale(rgbd: dict[str, Path], tmp_path: Path, storage: str) -> None:
    path = tmp_path / "c.pt"
    assert bufconv.load_or_build(rgbd[storage], path).status == "built"
    assert bufconv.load_or_build(rgbd[storage], path, depth_unit="mm").status == "hit"
    reason = f"depth unit of {DEPTH}: cache mm, requested m"
    with pytest.raises(StaleCacheError) as raised:
        bufconv.load_or_build(rgbd[storage], path, depth_unit="m", on_stale="error")
    assert reason in raised.value.reasons
    buf = bufconv.load_or_build(rgbd[storage], path, depth_unit="m")
    assert buf.status == "rebuilt" and buf.stale_reasons == [reason]
    assert buf.depth_units == {DEPTH: "m"}
    result = CliRunner().invoke(cli, ["build", str(rgbd[storage]), "-o", str(path)])
    assert result.exit_code == 0, result.output
    assert f"stale: depth unit of {DEPTH}: cache m, requested mm" in result.output
    assert f"depth units: {DEPTH} mm" in result.output


def test_cli_shows_the_unit(rgbd: dict[str, Path], tmp_path: Path) -> None:
    runner = CliRunner()
    inspect = runner.invoke(cli, ["inspect", str(rgbd["video"]), "--depth-unit", "m"])
    assert inspect.exit_code == 0, inspect.output
    assert "depth: 12-bit log codes (0.01-10 m) -> float32 m" in inspect.output
    assert "--depth-unit m" in inspect.output
    path = tmp_path / "c.pt"
    built = runner.invoke(cli, ["build", str(rgbd["uint16"]), "-o", str(path), "--depth-unit", "m"])
    assert built.exit_code == 0, built.output
    info = runner.invoke(cli, ["info", str(path)])
    assert "-> depth (uint16) as float32 m" in info.output
    as_json = json.loads(runner.invoke(cli, ["info", str(path), "--json"]).output)
    assert as_json["depth"][DEPTH]["unit"] == "m"
    assert as_json["options"]["depth_units"] == {DEPTH: "m"}
    bad = runner.invoke(cli, ["build", str(rgbd["uint16"]), "--depth-unit", "cm"])
    assert bad.exit_code == 2


# ---- the unit contract --------------------------------------------------------------------------


def test_metres_refused_where_mm_are_declared_and_the_reverse() -> None:
    metres = torch.tensor([[0.0, 0.31, 5.9]])
    mm = metres * 1000
    bufconv.check_unit(mm, "mm", name=DEPTH)
    bufconv.check_unit(metres, "m", name=DEPTH)
    bufconv.check_unit(torch.zeros(3), "mm")  # no return anywhere: ambiguous, accepted
    with pytest.raises(bufconv.UnitMismatchError) as raised:
        bufconv.check_unit(metres, "mm", name=DEPTH)
    error = raised.value
    assert isinstance(error, bufconv.RangeMismatchError) and error.problem == "unit-mismatch"
    assert (
        error.key == DEPTH
        and error.unit == "mm"
        and (error.found_min, error.found_max) == (0.0, pytest.approx(5.9))
    )
    assert DEPTH in error.message and "declared unit mm" in error.message and "[0, 5.9]" in error.message
    assert "--depth-unit m" in error.message and "to_unit" in error.message
    with pytest.raises(bufconv.UnitMismatchError, match=r"declared unit m .*\[0, 5900\].*--depth-unit mm"):
        bufconv.check_unit(mm, "m", name=DEPTH)
    with pytest.raises(bufconv.UnitMismatchError, match="uint16|millimetres"):
        bufconv.check_unit(torch.tensor([300, 4000], dtype=torch.int32), "m", name=DEPTH)
    assert bufconv.unit_problem(metres, "mm") is not None and bufconv.unit_problem(metres, "m") is None
    assert torch.equal(bufconv.to_unit(metres, "m", "mm"), metres * 1000.0)
    assert torch.equal(bufconv.to_unit(mm, "mm", "m"), mm / 1000.0)
    assert bufconv.to_unit(torch.tensor([300], dtype=torch.int16), "mm", "mm").dtype == torch.float32


def test_encoder_guard_checks_depth_by_unit() -> None:
    seen = []
    module = torch.nn.Module()
    module.forward = lambda observation: seen.append(observation)  # type: ignore[method-assign]
    handle = bufconv.guard_encoder(module, 1, depth_units={DEPTH: "mm"})
    rgb = torch.rand(2, 3, 8, 8)
    module(observation={RGB: rgb, DEPTH: torch.full((2, 1, 8, 8), 750.0)})  # mm depth is not a range problem
    with pytest.raises(bufconv.UnitMismatchError, match=DEPTH):
        module(observation={RGB: rgb, DEPTH: torch.full((2, 1, 8, 8), 0.75)})
    handle.remove()
    assert len(seen) == 1


def test_verify_reports_depth_that_contradicts_its_unit(tmp_path: Path) -> None:
    """A float32 depth feature in millimetres: LeRobot's writer infers "m" from the dtype (the x1000
    mismatch of sim-vs-RealSense data); built as metres, verify sees millimetre values."""
    root = write_rgbd(tmp_path / "dataset", "float32", values_in="mm")
    assert (
        json.loads((root / "meta" / "info.json").read_text())["features"][DEPTH]["info"]["depth_unit"] == "m"
    )
    path = tmp_path / "c.pt"
    bufconv.build(root, path, depth_unit="m")
    report = bufconv.verify(path)
    assert [p.code for p in report.problems] == ["unit-mismatch"]
    assert DEPTH in report.problems[0].message and "declared unit m" in report.problems[0].message
    result = CliRunner().invoke(cli, ["verify", str(path), "--json"])
    assert result.exit_code == 1
    assert json.loads(result.output)["problems"][0]["code"] == "unit-mismatch"


def test_verify_of_a_sound_depth_cache(rgbd: dict[str, Path], tmp_path: Path) -> None:
    for storage in STORAGES:
        path = tmp_path / f"{storage}.pt"
        bufconv.build(rgbd[storage], path, depth_unit="m")
        report = bufconv.verify(path, dataset=rgbd[storage])
        assert report.ok, report.problems
        assert report.depth_units == {DEPTH: "m"}


# ---- crop, resize, DrQ -------------------------------------------------------------------------


@pytest.mark.parametrize("storage", STORAGES)
def test_nearest_resize_keeps_only_values_of_its_frame(
    rgbd: dict[str, Path], tmp_path: Path, storage: str
) -> None:
    crop = {DEPTH: (1, 2, 17, 30), RGB: (0, 0, 24, 32)}
    plain = bufconv.load_or_build(rgbd[storage], tmp_path / "plain.pt", use_drq=False)
    resized = bufconv.load_or_build(
        rgbd[storage], tmp_path / "resized.pt", crop=crop, resize=(12, 13), use_drq=False
    )
    everything = list(range(len(plain)))
    frames = plain[everything]["state"][DEPTH]
    out = resized[everything]["state"][DEPTH]
    assert out.shape == (len(plain), 1, 12, 13)
    top, left, h, w = crop[DEPTH]
    blended = 0
    for frame, small in zip(frames, out, strict=True):
        values = set(frame[:, top : top + h, left : left + w].flatten().tolist())
        assert set(small.flatten().tolist()) <= values  # never a blend of two depths
        blended += len(set(small.flatten().tolist()) - values)
    assert blended == 0
    # nearest-exact of the cropped frames, as torch computes it on LeRobot's decode
    cropped = frames[:, :, top : top + h, left : left + w]
    expected = torch.nn.functional.interpolate(cropped, size=(12, 13), mode="nearest-exact")
    assert torch.equal(out, expected)


def test_drq_shifts_depth_with_its_cameras_offsets() -> None:
    """A depth key gets the shift of its camera's RGB key (`<cam>_depth` beside `<cam>`): the
    pixel a depth value describes stays under the same RGB pixel."""
    b, h, w = 64, 11, 13
    rows = torch.arange(h).view(1, 1, h, 1).expand(b, 1, h, w)
    cols = torch.arange(w).view(1, 1, 1, w).expand(b, 1, h, w)
    rgb = torch.cat([rows, cols, rows], dim=1).to(torch.uint8).contiguous()
    codes = (rows * 100 + cols).to(torch.int16).contiguous()
    entry = {"unit": "mm", "stored": "uint16", "source_unit": "mm", "quantization": None}
    batcher = Batcher([RGB, DEPTH], [RGB], 255, torch.device("cpu"), depth={DEPTH: DepthDecoder(entry)})
    batch_rows = {
        f"state/{RGB}": rgb, f"next_state/{RGB}": rgb, f"state/{DEPTH}": codes, f"next_state/{DEPTH}": codes,
        "action": torch.zeros(b, 2), "reward": torch.zeros(b), "done": torch.zeros(b), "truncated": torch.zeros(b),
    }  # fmt: skip
    batch = batcher(
        batch_rows, [], augment=True, image_dtype=torch.float32, generator=torch.Generator().manual_seed(3)
    )
    for part in ("state", "next_state"):
        image, depth = batch[part][RGB], batch[part][DEPTH]
        assert depth.dtype == torch.float32 and depth.shape == (b, 1, h, w)
        assert torch.equal(depth[:, 0], image[:, 0] * 100 + image[:, 1])
    shifted = batch["state"][DEPTH] != codes.float()
    assert shifted.any()  # the shift happened
    assert not torch.equal(batch["state"][DEPTH], batch["next_state"][DEPTH])  # state and next_state apart


def test_sampled_depth_batches(rgbd: dict[str, Path], tmp_path: Path) -> None:
    buf = bufconv.load_or_build(
        rgbd["video"], tmp_path / "c.pt", generator=torch.Generator().manual_seed(0), use_drq=True
    )
    batch = buf.sample(8)
    depth = batch["state"][DEPTH]
    assert depth.dtype == torch.float32 and depth.shape == (8, 1, *DEPTH_HW)
    bufconv.check_unit(depth, "mm", name=DEPTH)
    assert batch["state"][RGB].shape == (8, 3, 24, 32)


# ---- bufconv check ----------------------------------------------------------------------------


def _config(tmp_path: Path, depth_shape: list[int], unit: str | None) -> Path:
    cfg = {
        "policy": {
            "type": "sac",
            "input_features": {
                RGB: {"type": "VISUAL", "shape": [3, 24, 32]},
                DEPTH: {"type": "VISUAL", "shape": depth_shape},
                "observation.state": {"type": "STATE", "shape": [3]},
            },
            "output_features": {"action": {"type": "ACTION", "shape": [2]}},
            "normalization_mapping": {"VISUAL": "IDENTITY", "STATE": "IDENTITY", "ACTION": "IDENTITY"},
        },
        "dataset": {"repo_id": "bufconv/rgbd", **({"depth_output_unit": unit} if unit else {})},
    }
    path = tmp_path / f"config-{unit}-{'x'.join(map(str, depth_shape))}.json"
    path.write_text(json.dumps(cfg))
    return path


def test_check_compares_depth_unit_and_shape_with_the_config(rgbd: dict[str, Path], tmp_path: Path) -> None:
    path = tmp_path / "c.pt"
    bufconv.build(rgbd["video"], path)
    good = bufconv.check(path, _config(tmp_path, [1, *DEPTH_HW], None))  # LeRobot's default: mm
    assert not [f for f in good.findings if f.details.get("key") == DEPTH], good.findings
    assert "depth unit" in good.checked
    metres = bufconv.check(path, _config(tmp_path, [1, *DEPTH_HW], "m"))
    found = [f for f in metres.findings if f.code == "unit-mismatch"]
    assert len(found) == 1 and found[0].severity == "error" and "--depth-unit m" in found[0].message
    shape = bufconv.check(path, _config(tmp_path, [1, 16, 16], "mm"))
    assert [f.code for f in shape.findings if f.details.get("key") == DEPTH] == ["shape-mismatch"]
    from_dataset = bufconv.check(rgbd["video"], _config(tmp_path, [1, *DEPTH_HW], "m"))
    assert not [
        f for f in from_dataset.findings if f.details.get("key") == DEPTH
    ]  # a dataset has no unit yet


def test_uint16_millimetres_above_int16_survive_storage() -> None:
    """uint16 depth is stored in int16 bits: 40 m (40000 mm, above int16's 32767) comes back whole."""
    mm = np.array([[[[0, 305, 32767, 32768, 40000, 65535]]]], dtype=np.uint16)
    stored = torch.from_numpy(mm.view(np.int16))
    entry = {"unit": "mm", "stored": "uint16", "source_unit": "mm", "quantization": None}
    assert torch.equal(DepthDecoder(entry)(stored), torch.from_numpy(mm.astype(np.float32)))
    metres = DepthDecoder({**entry, "unit": "m"})(stored)
    assert torch.equal(metres, torch.from_numpy(mm.astype(np.float32)) / 1000.0)
    assert DepthDecoder(entry).span(stored) == (0.0, 65535.0)
