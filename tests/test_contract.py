"""`bufconv check`: a cache or dataset against a LeRobot training config (SPEC section 12).

The devlog's case: a dataset recorded in simulation (actions spanning the sim's workspace, a
continuous gripper in [-1,1]) checked against the real robot's config (tighter bounds, a
gripper of three commands {0,1,2}), and against the sim's own config, which must pass.
"""

from __future__ import annotations

import json
import logging
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from click.testing import CliRunner

import bufconv
from bufconv.cli import cli
from bufconv.contract.config import read_config
from bufconv.errors import ConfigError, ContractError
from bufconv.source.writer import EpisodeData, write_dataset

REFERENCE = Path("/work/shared/reference/lerobot-gym-hil/train_config.json")
FRONT, STATE = "observation.images.front", "observation.state"
SIM_BOUNDS = {"min": [0.05, -0.2, 0.01], "max": [0.45, 0.35, 0.4]}
ROBOT_BOUNDS = {"min": [0.15, -0.15, 0.02], "max": [0.35, 0.15, 0.25]}
LENGTHS = (25, 15)


def sim_actions(rng: np.random.Generator, n: int) -> np.ndarray:
    low, high = np.array(SIM_BOUNDS["min"]), np.array(SIM_BOUNDS["max"])
    xyz = low + rng.random((n, 3)) * (high - low)
    gripper = rng.uniform(-1, 1, (n, 1))
    return np.concatenate([xyz, gripper], axis=1).astype(np.float32)


@pytest.fixture(scope="module")
def sim_dataset(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray]:
    """A dataset recorded in sim: actions spanning the sim's bounds (each end reached), gripper in [-1,1]."""
    rng = np.random.default_rng(3)
    episodes, actions = [], []
    for length in LENGTHS:
        action = sim_actions(rng, length)
        episodes.append(
            EpisodeData(
                {
                    FRONT: rng.integers(0, 256, (length, 24, 32, 3), dtype=np.uint8),
                    STATE: rng.standard_normal((length, 4)).astype(np.float32),
                    "action": action,
                    "next.reward": np.zeros(length, np.float32),
                    "next.done": np.arange(length) == length - 1,
                }
            )
        )
        actions.append(action)
    all_actions = np.concatenate(actions)
    episodes[0].frames["action"][0, :3] = SIM_BOUNDS["min"]  # the data spans the sim bounds exactly
    episodes[0].frames["action"][1, :3] = SIM_BOUNDS["max"]
    all_actions[:2, :3] = [SIM_BOUNDS["min"], SIM_BOUNDS["max"]]
    root = write_dataset(tmp_path_factory.mktemp("sim") / "dataset", episodes, fps=10)
    return root, all_actions


def config(*, robot: bool, **changes: Any) -> dict[str, Any]:
    """The reference LeRobot 0.6.1 config, for the test dataset's features, on the robot or in sim."""
    cfg = json.loads(REFERENCE.read_text())
    env = cfg["env"]
    env["features"] = {
        FRONT: {"type": "VISUAL", "shape": [3, 24, 32]},
        STATE: {"type": "STATE", "shape": [4]},
        "action": {"type": "ACTION", "shape": [4]},
    }
    env["features_map"] = {k: k for k in env["features"]}
    env["processor"]["inverse_kinematics"] = {
        "urdf_path": None,
        "target_frame_name": None,
        "end_effector_bounds": ROBOT_BOUNDS if robot else SIM_BOUNDS,
        "end_effector_step_sizes": {"x": 0.02, "y": 0.02, "z": 0.02},
    }
    if robot:
        env["name"], env["robot"] = (
            "real_robot",
            {"type": "so100_follower_end_effector", "port": "/dev/ttyACM0"},
        )
    cfg["policy"]["dataset_stats"]["action"] = {"min": [-1.0, -1.0, -1.0, -1.0], "max": [1.0, 1.0, 1.0, 1.0]}
    for path, value in changes.items():
        *parents, last = path.split("__")
        node = cfg
        for name in parents:
            node = node[name]
        node[last] = value
    return cfg


def write_config(tmp_path: Path, cfg: dict[str, Any], name: str = "train_config.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(cfg))
    return path


def codes(report: Any) -> list[str]:
    return [f.code for f in report.findings]


@pytest.fixture(scope="module")
def sim_cache(sim_dataset: tuple[Path, np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return bufconv.build(sim_dataset[0], tmp_path_factory.mktemp("cache") / "offline_buffer.pt").path


# ---------------------------------------------------------------------------------------------
# the devlog's case


@pytest.mark.parametrize("source", ["cache", "dataset"])
def test_sim_data_against_the_robot_config(
    source: str, sim_dataset: tuple[Path, np.ndarray], sim_cache: Path, tmp_path: Path
) -> None:
    root, actions = sim_dataset
    report = bufconv.check(sim_cache if source == "cache" else root, config(robot=True))
    assert not report.ok
    bounds = [f for f in report.findings if f.code == "action-out-of-bounds"]
    assert [f.details["axis"] for f in bounds] == [0, 1, 2]
    for f in bounds:
        axis = f.details["axis"]
        lo, hi = ROBOT_BOUNDS["min"][axis], ROBOT_BOUNDS["max"][axis]
        expected = float(np.mean((actions[:, axis] < lo) | (actions[:, axis] > hi)))
        assert f.details["fraction"] == pytest.approx(expected)
        assert f"{expected:.1%} of frames" in f.message and f"[{lo:g}, {hi:g}]" in f.message
        assert f.severity == "error"
    (gripper,) = [f for f in report.findings if f.code == "gripper-mismatch"]
    assert gripper.severity == "error"
    assert "continuous in [-" in gripper.message and "{0, 1, 2}" in gripper.message
    assert gripper.details["axis"] == 3
    assert sorted(set(codes(report))) == ["action-out-of-bounds", "gripper-mismatch"]


def test_sim_data_against_the_sim_config_passes(
    sim_dataset: tuple[Path, np.ndarray], sim_cache: Path, tmp_path: Path
) -> None:
    for source in (sim_cache, sim_dataset[0]):
        report = bufconv.check(source, config(robot=False))
        assert report.ok and report.findings == [], report.findings
        assert {"shapes", "fps", "action bounds", "gripper"} <= set(report.checked)
    result = CliRunner().invoke(
        cli, ["check", str(sim_cache), "--config", str(write_config(tmp_path, config(robot=False)))]
    )
    assert result.exit_code == 0, result.output
    assert ": ok against" in result.output


def test_cli_check_exit_status_and_json(sim_cache: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    robot = write_config(tmp_path, config(robot=True))
    text = runner.invoke(cli, ["check", str(sim_cache), "--config", str(robot)])
    assert text.exit_code == 1
    assert "[action-out-of-bounds] error: action[0] (x):" in text.output
    assert "[gripper-mismatch] error:" in text.output
    as_json = runner.invoke(cli, ["check", str(sim_cache), "--config", str(robot), "--json"])
    assert as_json.exit_code == 1
    report = json.loads(as_json.output)
    assert report["ok"] is False
    assert all({"code", "severity", "message"} <= set(f) for f in report["findings"])
    assert [f["axis"] for f in report["findings"] if f["code"] == "action-out-of-bounds"] == [0, 1, 2]
    # usage errors: exit 2
    broken = tmp_path / "broken.json"
    broken.write_text("{not json")
    assert runner.invoke(cli, ["check", str(sim_cache), "--config", str(broken)]).exit_code == 2
    assert runner.invoke(cli, ["check", str(sim_cache)]).exit_code == 2
    assert runner.invoke(cli, ["check", str(tmp_path / "nowhere"), "--config", str(robot)]).exit_code == 2


# ---------------------------------------------------------------------------------------------
# range, shapes, fps, the order of steps


def test_range_mismatch_of_the_original_bug(sim_cache: Path) -> None:
    """A cache delivering [0,1] to an encoder that divides by 255 itself: the images reach it 255x too small."""
    cfg = config(robot=False)
    cfg["policy"]["normalise_inputs"] = True
    # An encoder that normalises its own inputs takes raw pixels: no normalizer before it (with
    # the reference's MEAN_STD, normalizer-range-mismatch is reported too: tests/test_chain.py).
    cfg["policy"]["normalization_mapping"]["VISUAL"] = "IDENTITY"
    report = bufconv.check(sim_cache, cfg)
    (finding,) = report.findings
    assert finding.code == "range-mismatch" and finding.severity == "error"
    assert "delivers floats in [0,1] (range 1)" in finding.message
    assert "policy.normalise_inputs" in finding.message and "--range 255" in finding.message
    # the learner's explicit image_range is what it will use
    assert bufconv.check(sim_cache, cfg, image_range=1).ok


def test_shapes_after_crop_and_resize(sim_dataset: tuple[Path, np.ndarray], tmp_path: Path) -> None:
    root = sim_dataset[0]
    cfg = config(robot=False)
    cfg["env"]["features"][FRONT]["shape"] = [3, 16, 16]
    report = bufconv.check(root, cfg)
    (finding,) = report.findings
    assert finding.code == "shape-mismatch"
    assert "takes (3, 16, 16) but the dataset gives (3, 24, 32)" in finding.message
    assert "--resize 16,16" in finding.message
    # with the crop and resize in the config's env processor, the dataset's shapes are those a build makes
    cfg["env"]["processor"]["image_preprocessing"] = {
        "crop_params_dict": {FRONT: [0, 4, 24, 24]},
        "resize_size": [16, 16],
    }
    assert bufconv.check(root, cfg).ok
    # a cache built otherwise than the config's processor crops
    plain = bufconv.build(root, tmp_path / "plain.pt").path
    assert set(codes(bufconv.check(plain, cfg))) == {"shape-mismatch", "crop-mismatch"}
    built = bufconv.build(root, tmp_path / "c.pt", crop={FRONT: (0, 4, 24, 24)}, resize=(16, 16)).path
    assert bufconv.check(built, cfg).findings == []
    cfg["env"]["processor"]["image_preprocessing"]["crop_params_dict"] = {FRONT: [0, 10, 24, 24]}
    (outside,) = [f for f in bufconv.check(root, cfg).findings if f.code == "crop-mismatch"]
    assert outside.code == "crop-mismatch" and "reaches column 33 but its frames are 24x32" in outside.message


def test_fps_mismatch(sim_cache: Path) -> None:
    (finding,) = bufconv.check(sim_cache, config(robot=False, env__fps=30)).findings
    assert finding.code == "fps-mismatch" and "recorded at 10 fps but env.fps is 30" in finding.message


def test_discrete_gripper_data_against_another_discrete_set(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    action = sim_actions(rng, 12)
    action[:, 3] = rng.integers(-1, 2, 12)  # {-1, 0, 1}: a keyboard teleop in sim
    episode = EpisodeData(
        {
            FRONT: np.zeros((12, 24, 32, 3), np.uint8),
            "action": action,
            "next.reward": np.zeros(12, np.float32),
        }
    )
    root = write_dataset(tmp_path / "d", [episode], fps=10)
    cfg = config(robot=False)
    cfg["policy"]["num_discrete_actions"] = 3
    (finding,) = [f for f in bufconv.check(root, cfg).findings if f.code == "gripper-mismatch"]
    assert "discrete {-1, 0, 1}" in finding.message and "policy.num_discrete_actions = 3" in finding.message


def test_range_step_before_a_clamping_resize(sim_cache: Path, tmp_path: Path) -> None:
    from lerobot.processor import (
        DataProcessorPipeline,
        ImageCropResizeProcessorStep,
        VanillaObservationProcessorStep,
    )

    from bufconv.lerobot import ImageRangeProcessorStep

    cfg = config(robot=False)
    cfg["policy"]["normalise_inputs"] = True
    cfg["env"]["processor"]["image_preprocessing"] = {"crop_params_dict": None, "resize_size": [24, 32]}
    wrong = [
        VanillaObservationProcessorStep(),
        ImageRangeProcessorStep(image_range=255),
        ImageCropResizeProcessorStep(resize_size=(24, 32)),
    ]
    report = bufconv.check(sim_cache, cfg, image_range=255, processor=wrong)
    clamp = [f for f in report.findings if f.code == "clamp-before-range"]
    assert len(clamp) == 1 and clamp[0].severity == "error"
    assert (
        "runs before ImageCropResizeProcessorStep" in clamp[0].message and "255x too dark" in clamp[0].message
    )
    right = [wrong[0], wrong[2], wrong[1]]
    assert not [
        f
        for f in bufconv.check(sim_cache, cfg, image_range=255, processor=right).findings
        if f.code == "clamp-before-range"
    ]
    # the same through LeRobot's saved pipeline JSON and the command line
    DataProcessorPipeline(steps=wrong, name="env_processor").save_pretrained(tmp_path / "pipeline")
    saved = next((tmp_path / "pipeline").glob("*.json"))
    result = CliRunner().invoke(
        cli,
        [
            "check",
            str(sim_cache),
            "--config",
            str(write_config(tmp_path, cfg)),
            "--processor",
            str(saved),
            "--json",
        ],
    )
    assert "clamp-before-range" in [f["code"] for f in json.loads(result.output)["findings"]]
    # without the pipeline, a config that resizes and wants [0,255] gets a warning
    warned = [
        f for f in bufconv.check(sim_cache, cfg, image_range=255).findings if f.code == "clamp-before-range"
    ]
    assert [f.severity for f in warned] == ["warning"]


def test_config_without_lerobot_types_and_bad_configs(tmp_path: Path) -> None:
    expected = read_config(REFERENCE)
    assert expected.fps == 10 and expected.image_range == 1
    assert expected.features[FRONT].shape == (3, 128, 128) and expected.features["action"].shape == (4,)
    assert expected.gripper is not None and expected.gripper.describe() == "continuous [0, 2]"
    broken = tmp_path / "x.json"
    broken.write_text("[")
    with pytest.raises(ConfigError, match="not a JSON training config"):
        read_config(broken)
    bad = config(robot=True)
    bad["env"]["processor"]["inverse_kinematics"]["end_effector_bounds"] = {"min": [0, 0], "max": [1]}
    with pytest.raises(ConfigError, match="end_effector_bounds"):
        read_config(bad)


# ---------------------------------------------------------------------------------------------
# the learner drop-in runs the check at start


def drop_in_config(root: Path, output_dir: Path, **env: Any) -> Any:
    ns = types.SimpleNamespace
    return ns(
        dataset=ns(repo_id="local/sim", root=str(root), episodes=None),
        policy=ns(
            input_features={
                FRONT: {"type": "VISUAL", "shape": [3, 16, 16]},
                STATE: {"type": "STATE", "shape": [4]},
            },
            output_features={"action": {"type": "ACTION", "shape": [4]}},
            offline_buffer_capacity=10,
        ),
        output_dir=str(output_dir),
        resume=False,
        env=ns(
            fps=env.get("fps", 10),
            processor=ns(image_preprocessing=ns(crop_params_dict=None, resize_size=(16, 16))),
        ),
    )


def test_drop_in_builds_with_the_config_resize_and_checks_at_start(
    sim_dataset: tuple[Path, np.ndarray], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from bufconv.lerobot import initialize_offline_replay_buffer

    cfg = drop_in_config(sim_dataset[0], tmp_path / "out")
    buf = initialize_offline_replay_buffer(cfg, device="cpu", storage_device="cpu")
    assert buf.sample(2)["state"][FRONT].shape == (2, 3, 16, 16)
    wrong = drop_in_config(sim_dataset[0], tmp_path / "out", fps=30)
    with pytest.raises(ContractError, match=r"\[fps-mismatch\]") as caught:
        initialize_offline_replay_buffer(wrong, device="cpu", storage_device="cpu")
    assert [f.code for f in caught.value.findings] == ["fps-mismatch"]
    with caplog.at_level(logging.WARNING, logger="bufconv"):
        warned = initialize_offline_replay_buffer(
            wrong, device="cpu", storage_device="cpu", on_mismatch="warn"
        )
    assert warned.status == "hit"
    assert "[fps-mismatch]" in caplog.text
