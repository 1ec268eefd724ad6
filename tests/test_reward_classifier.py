"""The reward classifier in the actor receives what it received in training, at image range 1 and 255.

A classifier is trained for a few steps by LeRobot's own training entry point on a small video
dataset written by LeRobot's writer, then run in the actor's real-robot env pipeline
(`lerobot.rl.gym_manipulator.make_processors` on a real `RobotEnv`, with stand-in robot and
teleoperator objects where there is no hardware). What the classifier's network receives
(`Classifier.predict`'s arguments) is recorded on both sides and compared frame by frame.

What LeRobot 0.6.1 does (read in its source, and checked below where marked):

- The model: `lerobot.rewards.classifier.modeling_classifier.Classifier`, config
  `RewardClassifierConfig` (registered as "reward_classifier" on `RewardModelConfig`, not on
  `PreTrainedConfig`). It loads its backbone with
  `transformers.AutoModel.from_pretrained(config.model_name, trust_remote_code=True)` (default
  "lerobot/resnet10", a hub download: here a tiny random-init `ResNetModel` saved to a tmp
  folder is passed as model_name). model_type "cnn": the backbone's `last_hidden_state` goes
  through `SpatialLearnedEmbeddings(height=4, width=4)`, so the backbone must make a 4x4 feature
  map (the 3-stage ResNet here: 64x64 -> 4x4). Its image inputs are the `input_features` whose
  key starts with "observation.image", in that order; the label is `batch["next.reward"]`.
- The training entry point: `lerobot-train` (`lerobot.scripts.lerobot_train.main` -> `train`),
  with `--reward_model.type=reward_classifier` (`TrainPipelineConfig.reward_model`, a
  `RewardModelConfig` choice; `--policy.*` is for policies only), or a `--config_path` JSON with
  a "reward_model" block as LeRobot's HIL-SERL guide writes it (used here). `input_features` must
  be given (JSON, e.g. `--reward_model.input_features='{"observation.images.front": {"type":
  "VISUAL", "shape": [3, 64, 64]}}'`): nothing fills them from the dataset.
  `cfg.is_reward_model_training` is `reward_model is not None`. It needs `accelerate`
  (`lerobot[accelerate-dep]`, in bufconv's dev extra).
- Training batches: the dataset is opened with `return_uint8=True` and the loop divides camera
  tensors by 255 (`[0,1]`), then `preprocessor(batch)`, then `Classifier.forward` ->
  `predict(images)`. The preprocessor is `make_classifier_processor(config, dataset_stats=
  dataset.meta.stats)`: `PolicyProcessorPipeline(name="classifier_preprocessor", steps=
  [NormalizerProcessorStep(input_features, normalization_mapping={"VISUAL": MEAN_STD}, stats),
  NormalizerProcessorStep(output_features (empty), ...), DeviceProcessorStep(device)])`, so a
  camera reaches `predict` as `(x/255 - mean) / (std + 1e-8)` with per-channel (3,1,1) stats.
- `DatasetConfig.use_imagenet_stats` (default true) replaces every non-depth camera's "mean" and
  "std" in `dataset.meta.stats` by ImageNet's (`IMAGENET_STATS`: mean (0.485, 0.456, 0.406),
  std (0.229, 0.224, 0.225), shape (3,1,1)) before the preprocessor is built: the saved mean/std
  are ImageNet's, min/max/quantiles stay the dataset's (checked). With false, they are the
  dataset's own per-camera stats (checked too: both are trained here).
- The checkpoint (`save_checkpoint`): `<output_dir>/checkpoints/<step:06d>/pretrained_model/`
  holds config.json, model.safetensors, train_config.json, `classifier_preprocessor.json`,
  `classifier_preprocessor_step_0_normalizer_processor.safetensors`,
  `classifier_preprocessor_step_1_normalizer_processor.safetensors`,
  `classifier_postprocessor.json`. The JSON is {"name": "classifier_preprocessor", "steps":
  [{"registry_name": "normalizer_processor", "config": {"eps": 1e-08, "features": {key:
  {"type": "VISUAL", "shape": [3, H, W]}}, "norm_map": {"VISUAL": "MEAN_STD"}}, "state_file":
  "classifier_preprocessor_step_0_normalizer_processor.safetensors"}, {the same for the empty
  output features, step_1}, {"registry_name": "device_processor", "config": {"device": "cpu",
  "float_dtype": null}}]}. A state file is flat: "<feature>.<stat>" for every feature of the
  dataset (not only the cameras: action, index, timestamp, ... too), stat in min, max, mean, std,
  count, q01, q10, q50, q90, q99; a camera's mean and std are (3, 1, 1) float32 (checked).
- The actor: `make_processors(env, teleop, cfg.env, device)` for a non-"gym_hil" env reads
  `env.robot.bus.motors`, and builds [VanillaObservationProcessorStep (uint8 HWC "pixels" ->
  float CHW /255 with a batch dim, "observation.images.<camera>"), (crop/resize), (time limit),
  (gripper penalty), RewardClassifierProcessorStep(pretrained_path=cfg.processor.
  reward_classifier.pretrained_path), AddBatchDimensionProcessorStep, DeviceProcessorStep]. The
  classifier step loads only the model (`Classifier.from_pretrained`), never the saved
  preprocessor, and calls `predict_reward(images)` on the [0,1] images: what the network
  receives is not what it was trained on (checked: [0,1] against training's normalized
  [-2.12, 2.64] with ImageNet stats, [-1.72, 1.89] with this dataset's: off by 2.1 and 1.7).

bufconv's `with_range_step(make_processors, image_range, classifier_input="trained")` gives the
classifier its training input, whatever range the policy's images are put in.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from reward_classifier_harness import CAMERAS, SIZE, capture_classifier_inputs, train_config, write_backbone

pytestmark = [
    # LeRobot's RobotEnv builds its action space from float64 bounds; gymnasium warns when casting them.
    pytest.mark.filterwarnings(
        r"ignore:.*Box (low|high)'s precision lowered by casting to float32:UserWarning"
    ),
]

HARNESS = Path(__file__).resolve().parent / "reward_classifier_harness.py"
REPO_ID = "bufconv/reward_classifier"
LENGTHS = (4, 4, 4)
STEPS, BATCH = 3, 4  # 3 batches of 4 frames: every one of the 12 frames is seen once in training
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
MOTORS = ("shoulder_pan", "shoulder_lift", "elbow_flex", "wrist_flex", "wrist_roll", "gripper")
ATOL = 1e-3
#: Stock LeRobot's classifier input is off from its training input by more than this (at some pixel).
STOCK_OFF = 0.5
TRAIN_S = 300


@dataclass
class Trained:
    checkpoint: Path  # the checkpoint's pretrained_model folder
    dataset: Path
    use_imagenet_stats: bool
    inputs: dict[int, dict[str, torch.Tensor]]  # frame index -> camera -> (3, H, W), as predict got it
    pixels: dict[int, dict[str, np.ndarray]]  # frame index -> camera -> (H, W, 3) uint8, training's decode


@pytest.fixture(scope="module")
def dataset(lerobot_dataset) -> Path:
    """3 episodes of 4 frames, two 64x64 AV1 cameras, `next.reward` 1 on each episode's last frame."""
    return lerobot_dataset(cameras=tuple((key, SIZE) for key in CAMERAS), lengths=LENGTHS)


@pytest.fixture(scope="module", params=[True, False], ids=["imagenet-stats", "dataset-stats"])
def trained(request, dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Trained:
    """`lerobot-train` for STEPS steps in a subprocess, recording what `Classifier.predict` received."""
    run = tmp_path_factory.mktemp("reward_classifier")
    backbone = write_backbone(run / "backbone")
    config = run / "train_config.json"
    config.write_text(
        json.dumps(
            train_config(
                dataset,
                REPO_ID,
                backbone,
                run / "train",
                steps=STEPS,
                batch_size=BATCH,
                use_imagenet_stats=request.param,
            ),
            indent=2,
        )
    )
    capture = run / "capture.pt"
    env = {
        **os.environ,
        "HF_HOME": str(run / "hf"),  # nothing is written outside the run folder, nothing downloaded
        "HF_LEROBOT_HOME": str(run / "hf" / "lerobot"),
        "HF_DATASETS_CACHE": str(run / "hf" / "datasets"),
        "HF_HUB_OFFLINE": "1",
        "WANDB_MODE": "disabled",
    }
    result = subprocess.run(
        [sys.executable, str(HARNESS), str(capture), f"--config_path={config}"],
        cwd=run,
        env=env,
        capture_output=True,
        text=True,
        timeout=TRAIN_S,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    saved = torch.load(capture, weights_only=False)
    inputs: dict[int, dict[str, torch.Tensor]] = {}
    for record in saved["records"]:
        assert record["index"] is not None
        for row, index in enumerate(record["index"].tolist()):
            inputs.setdefault(index, {key: image[row] for key, image in record["images"].items()})
    pixels = saved["pixels"]
    assert len(saved["records"]) == STEPS
    assert sorted(inputs) == sorted(pixels) == list(range(sum(LENGTHS))), "every frame is seen in training"
    for frame in pixels.values():
        assert set(frame) == set(CAMERAS)
        assert all(image.shape == (*SIZE, 3) and image.dtype == np.uint8 for image in frame.values())
    checkpoint = run / "train" / "checkpoints" / f"{STEPS:06d}" / "pretrained_model"
    return Trained(checkpoint, dataset, request.param, inputs, pixels)


# ---------------------------------------------------------------------------------------------
# stand-ins for the hardware, and the actor's real pipeline


class StandInRobot:
    """What `RobotEnv` and `make_processors` use of a LeRobot `Robot`: a bus with motors, cameras, observations."""

    name = "stand_in"

    def __init__(self) -> None:
        self.bus = SimpleNamespace(motors=dict.fromkeys(MOTORS))
        self.cameras = dict.fromkeys(CAMERAS.values())
        self.pixels = {camera: np.zeros((*SIZE, 3), np.uint8) for camera in self.cameras}
        self.connected = False

    @property
    def is_connected(self) -> bool:
        return self.connected

    def connect(self, calibrate: bool = True) -> None:
        self.connected = True

    def disconnect(self) -> None:
        self.connected = False

    def show(self, pixels: dict[str, np.ndarray]) -> None:
        """The cameras' next images, by LeRobot key."""
        self.pixels = {CAMERAS[key]: image.copy() for key, image in pixels.items()}

    def get_observation(self) -> dict[str, Any]:
        return {**{f"{m}.pos": 0.0 for m in MOTORS}, **{c: image.copy() for c, image in self.pixels.items()}}

    def send_action(self, action: dict[str, Any]) -> dict[str, Any]:
        return action


class StandInTeleop:
    """What the action pipeline's teleop steps use of a LeRobot `Teleoperator`."""

    def get_action(self) -> dict[str, Any]:
        return {}

    def get_teleop_events(self) -> dict[str, Any]:
        return {}


def actor_env(checkpoint: Path):
    """A real `RobotEnv` on the stand-in robot, and the actor's env config with the trained classifier."""
    from lerobot.envs.configs import (
        GripperConfig,
        HILSerlProcessorConfig,
        HILSerlRobotEnvConfig,
        ResetConfig,
    )
    from lerobot.envs.configs import RewardClassifierConfig as EnvRewardClassifierConfig
    from lerobot.rl.gym_manipulator import RobotEnv

    robot = StandInRobot()
    env = RobotEnv(robot=robot, use_gripper=False, display_cameras=False, reset_pose=None, reset_time_s=0.0)
    cfg = HILSerlRobotEnvConfig(
        fps=10,
        processor=HILSerlProcessorConfig(
            gripper=GripperConfig(use_gripper=False),
            reset=ResetConfig(reset_time_s=0.0, control_time_s=5.0, terminate_on_success=False),
            inverse_kinematics=None,
            reward_classifier=EnvRewardClassifierConfig(pretrained_path=str(checkpoint)),
        ),
    )
    return env, robot, cfg


def run_actor(make_processors, trained: Trained) -> dict[int, dict[str, Any]]:
    """Each frame through the actor's env processor: per frame, the classifier's input and the policy's images."""
    from lerobot.processor import TransitionKey
    from lerobot.rl.gym_manipulator import reset_and_build_transition

    env, robot, cfg = actor_env(trained.checkpoint)
    env_processor, action_processor = make_processors(env, StandInTeleop(), cfg, "cpu")
    names = [type(step).__name__ for step in env_processor.steps]
    assert "VanillaObservationProcessorStep" in names, names
    seen = {}
    for index, pixels in sorted(trained.pixels.items()):
        robot.show(pixels)
        with capture_classifier_inputs() as records:
            transition = reset_and_build_transition(env, env_processor, action_processor)
        assert len(records) == 1, f"the classifier ran {len(records)} times for one frame ({names})"
        (classifier,) = records
        observation = transition[TransitionKey.OBSERVATION]
        for key in CAMERAS:
            assert classifier["images"][key].shape == (1, 3, *SIZE)
        seen[index] = {
            "classifier": {key: classifier["images"][key][0] for key in CAMERAS},
            "policy": {key: observation[key].detach().cpu().float() for key in CAMERAS},
        }
    env.close()
    return seen


def off_from_training(seen: dict[int, dict[str, Any]], trained: Trained) -> float:
    """The largest |classifier input in the actor - classifier input in training| over every frame and camera."""
    return max(
        float((seen[index]["classifier"][key] - trained.inputs[index][key]).abs().max())
        for index in trained.inputs
        for key in CAMERAS
    )


def value_range(seen: dict[int, dict[str, Any]], part: str) -> tuple[float, float]:
    values = [t for frame in seen.values() for t in frame[part].values()]
    return min(float(t.min()) for t in values), max(float(t.max()) for t in values)


# ---------------------------------------------------------------------------------------------
# LeRobot 0.6.1 on its own


def test_lerobot_train_saves_the_classifier_preprocessor_it_trained_with(trained: Trained) -> None:
    """The checkpoint's files, the saved stats, and training's input = the saved normalization of LeRobot's decode."""
    from safetensors.torch import load_file

    folder = trained.checkpoint
    for name in (
        "config.json",
        "model.safetensors",
        "train_config.json",
        "classifier_preprocessor.json",
        "classifier_preprocessor_step_0_normalizer_processor.safetensors",
        "classifier_postprocessor.json",
    ):
        assert (folder / name).is_file(), sorted(p.name for p in folder.iterdir())
    assert json.loads((folder / "config.json").read_text())["type"] == "reward_classifier"
    pipeline = json.loads((folder / "classifier_preprocessor.json").read_text())
    assert pipeline["name"] == "classifier_preprocessor"
    steps = pipeline["steps"]
    assert [step["registry_name"] for step in steps] == [
        "normalizer_processor",
        "normalizer_processor",
        "device_processor",
    ]
    assert set(steps[0]["config"]["features"]) == set(CAMERAS)
    assert steps[0]["config"]["norm_map"] == {"VISUAL": "MEAN_STD"}
    assert steps[1]["config"]["features"] == {}
    state = load_file(folder / steps[0]["state_file"])
    assert "action.mean" in state  # every dataset feature's stats, not only the inputs'
    written = json.loads((trained.dataset / "meta" / "stats.json").read_text())  # LeRobot's writer's stats
    for key in CAMERAS:
        mean, std = state[f"{key}.mean"], state[f"{key}.std"]
        assert mean.shape == std.shape == (3, 1, 1)
        assert mean.dtype == std.dtype == torch.float32
        if trained.use_imagenet_stats:  # replaced by ImageNet's; the other stats stay the dataset's
            expected_mean, expected_std = torch.tensor(IMAGENET_MEAN), torch.tensor(IMAGENET_STD)
        else:
            expected_mean = torch.tensor(written[key]["mean"]).flatten()
            expected_std = torch.tensor(written[key]["std"]).flatten()
        torch.testing.assert_close(mean.flatten(), expected_mean.float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(std.flatten(), expected_std.float(), atol=1e-6, rtol=0)
        torch.testing.assert_close(
            state[f"{key}.q50"].flatten(),
            torch.tensor(written[key]["q50"]).flatten().float(),
            atol=1e-6,
            rtol=0,
        )
        # What predict received in training: the saved normalization of the [0,1] decode.
        for index, inputs in trained.inputs.items():
            image = torch.from_numpy(trained.pixels[index][key]).permute(2, 0, 1).float() / 255
            expected = (image - mean) / (std + 1e-8)
            torch.testing.assert_close(inputs[key], expected, atol=1e-5, rtol=0)
    lo = min(float(t.min()) for frame in trained.inputs.values() for t in frame.values())
    hi = max(float(t.max()) for frame in trained.inputs.values() for t in frame.values())
    assert lo < -1.5 and hi > 1.5, (lo, hi)  # normalized: well outside [0,1]


def test_stock_lerobot_actor_feeds_the_classifier_other_than_its_training(trained: Trained) -> None:
    """LeRobot 0.6.1's make_processors: plain [0,1] images reach the classifier, not its normalized training input."""
    from lerobot.rl import gym_manipulator

    seen = run_actor(gym_manipulator.make_processors, trained)
    off = off_from_training(seen, trained)
    assert off > STOCK_OFF, off  # far more than ATOL: the documented stock bug
    lo, hi = value_range(seen, "classifier")
    assert lo >= 0.0 and hi <= 1.0, (lo, hi)
    for index, frame in seen.items():  # exactly the [0,1] pixels, unnormalized
        for key in CAMERAS:
            image = torch.from_numpy(trained.pixels[index][key]).permute(2, 0, 1).float() / 255
            torch.testing.assert_close(frame["classifier"][key], image, atol=1e-6, rtol=0)
    lo, hi = value_range(seen, "policy")
    assert lo >= 0.0 and 1.0 / 255 < hi <= 1.0, (lo, hi)


# ---------------------------------------------------------------------------------------------
# bufconv's actor


@pytest.mark.parametrize("image_range", [1, 255])
def test_bufconv_actor_feeds_the_classifier_its_training_input(trained: Trained, image_range: int) -> None:
    """with_range_step(..., classifier_input="trained"): the classifier's input = training's, within 1e-3."""
    from lerobot.rl import gym_manipulator

    from bufconv.lerobot.actor import with_range_step

    make = with_range_step(gym_manipulator.make_processors, image_range, classifier_input="trained")
    seen = run_actor(make, trained)
    off = off_from_training(seen, trained)
    assert off <= ATOL, f"classifier input off from training by {off} at range {image_range}"
    lo, hi = value_range(seen, "policy")
    if image_range == 1:
        assert lo >= 0.0 and 1.0 / 255 < hi <= 1.0, (lo, hi)
    else:
        assert lo >= 0.0 and 1.0 < hi <= 255.0, (lo, hi)


@pytest.mark.parametrize("image_range", [1, 255])
def test_bufconv_actor_keeps_lerobot_classifier_input_when_asked(trained: Trained, image_range: int) -> None:
    """classifier_input="lerobot": LeRobot 0.6.1's plain [0,1] classifier input, at either range."""
    from lerobot.rl import gym_manipulator

    from bufconv.lerobot.actor import with_range_step

    stock = run_actor(gym_manipulator.make_processors, trained)
    make = with_range_step(gym_manipulator.make_processors, image_range, classifier_input="lerobot")
    seen = run_actor(make, trained)
    for index, frame in seen.items():
        for key in CAMERAS:
            torch.testing.assert_close(
                frame["classifier"][key], stock[index]["classifier"][key], atol=1e-6, rtol=0
            )
    assert off_from_training(seen, trained) > STOCK_OFF


def test_bufconv_check_reads_the_saved_preprocessor_as_the_training_path(trained: Trained) -> None:
    """The chain's classifier-training path, read without LeRobot, is what training fed the network."""
    from bufconv.contract.check import check_config
    from bufconv.contract.normalizer import read_saved

    normalizers = read_saved(trained.checkpoint)
    assert set(normalizers) == set(CAMERAS)
    config = {"env": {"processor": {"reward_classifier": {"pretrained_path": str(trained.checkpoint)}}}}
    mended = check_config(config)
    assert not mended.findings  # bufconv's actor: the actor path is the training path
    links = {(link.path, link.key): link for link in mended.chain if link.network == "reward classifier"}
    for index, frame in trained.pixels.items():
        for key, image in frame.items():
            pixels = torch.from_numpy(image).permute(2, 0, 1)
            mapped = links[("classifier training", key)].first_layer.apply(pixels)
            torch.testing.assert_close(mapped, trained.inputs[index][key], atol=1e-5, rtol=0)
    stock = check_config(config, processor=[{"registry_name": "reward_classifier_processor"}])
    assert {(f.code, f.severity) for f in stock.findings} == {("classifier-input-mismatch", "warning")}
    ranged = check_config(
        config,
        processor=[
            {"registry_name": "bufconv_image_range", "config": {"image_range": 255}},
            {"registry_name": "reward_classifier_processor"},
        ],
    )
    assert {(f.code, f.severity) for f in ranged.findings} == {("classifier-input-mismatch", "error")}
