"""The actor side and the config layout held against one LeRobot release (scripts/compat.sh).

On 0.3.x the actor processes observations with gym wrappers (`gym_manipulator.make_robot_env`),
not processor steps: bufconv's range conversion wraps the env that function returns, after
`ImageCropResizeWrapper` and its clamp to [0,1]. The env here is the release's own
`make_robot_env` with its own wrappers; only the hardware (robot, teleop, the base `RobotEnv`,
the teleop control and reset wrappers, which move the arm) is stood in for by a fake env that
returns pixel observations as a robot's cameras do.
"""

from __future__ import annotations

import importlib
import queue
import threading
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lerobot_release as release
import numpy as np
import pytest
import torch
from lerobot_release import FRONT, STATE, VERSION, WRIST

import bufconv
from bufconv.errors import RangeMismatchError

GYM_WRAPPERS = "0.3.3"  # the release whose actor has gym wrappers instead of processor steps
#: Where each release's config holds crop/resize.
PREPROCESSING = {
    "0.3.3": "env.wrapper",
    "0.4.4": "env.processor.image_preprocessing",
    "0.5.1": "env.processor.image_preprocessing",
    "0.6.1": "env.processor.image_preprocessing",
}
CROP = {FRONT: (4, 6, 40, 52), WRIST: (0, 0, 40, 32)}  # (top, left, height, width)
RESIZE = (32, 32)


def actor_module() -> Any:
    return release.first("lerobot.rl.actor", "lerobot.scripts.rl.actor")


def env_config(crop: dict[str, tuple[int, ...]] | None, resize: tuple[int, int] | None) -> Any:
    """The release's real-robot env config with this crop/resize, where that release keeps them."""
    configs = importlib.import_module("lerobot.envs.configs")
    if PREPROCESSING[VERSION] == "env.wrapper":
        wrapper = configs.EnvTransformConfig(
            crop_params_dict=crop, resize_size=resize, control_mode="leader", use_gripper=False
        )
        return configs.HILSerlRobotEnvConfig(wrapper=wrapper, device="cpu", fps=release.FPS)
    preprocessing = configs.ImagePreprocessingConfig(crop_params_dict=crop, resize_size=resize)
    processor = configs.HILSerlProcessorConfig(image_preprocessing=preprocessing)
    return configs.HILSerlRobotEnvConfig(processor=processor)


# ---------------------------------------------------------------------------------------------
# the config layout


def test_crop_and_resize_are_read_where_the_release_keeps_them(dataset: Path, tmp_path: Path) -> None:
    """The start-up check's crop/resize come from that release's fields, and its messages name them."""
    from bufconv.contract.config import read_config
    from bufconv.lerobot.preflight import preprocessing

    cfg = release.make_config(dataset, tmp_path / "out")
    cfg.env = env_config(CROP, RESIZE)
    assert preprocessing(cfg) == (CROP, RESIZE)
    assert read_config(cfg).preprocessing_field == PREPROCESSING[VERSION]
    cache = tmp_path / "c.pt"
    bufconv.build(dataset, cache)  # no crop/resize: the policy's (3, 32, 32) does not fit
    for key in (FRONT, WRIST):
        cfg.policy.input_features[key].shape = (3, *RESIZE)
    report = bufconv.check(cache, cfg)
    messages = " ".join(f.message for f in report.errors)
    assert f"build with --resize 32,32 ({PREPROCESSING[VERSION]}.resize_size)" in messages, messages
    assert f"the config's {PREPROCESSING[VERSION]} crops 4,6,40,52" in messages, messages
    built = tmp_path / "fits.pt"
    bufconv.build(dataset, built, crop=CROP, resize=RESIZE)
    codes = {f.code for f in bufconv.check(built, cfg).errors}
    assert not codes & {"shape-mismatch", "crop-mismatch"}, codes


# ---------------------------------------------------------------------------------------------
# the actor's images: 0.3.x's gym wrappers


class FakeRobotEnv:
    """Stands in for 0.3.x's `RobotEnv` (a robot's cameras and joints): uint8 HWC pixels, a state."""

    def __new__(cls, **kwargs: Any) -> Any:
        import gymnasium as gym

        class Env(gym.Env):
            observation_space = gym.spaces.Dict(
                {
                    **{
                        key: gym.spaces.Box(0, 255, (*release.SHAPES[key], 3), np.uint8)
                        for key in (FRONT, WRIST)
                    },
                    STATE: gym.spaces.Box(-10, 10, (6,), np.float32),
                }
            )
            action_space = gym.spaces.Box(-1, 1, (3,), np.float32)

            def __init__(self) -> None:
                self.rng = np.random.default_rng(0)
                self.frames: list[dict[str, np.ndarray]] = []

            def _observation(self) -> dict[str, Any]:
                pixels = {
                    key.rsplit(".", 1)[1]: self.rng.integers(
                        0, 256, (*release.SHAPES[key], 3), dtype=np.uint8
                    )
                    for key in (FRONT, WRIST)
                }
                self.frames.append(pixels)
                return {"pixels": pixels, "agent_pos": self.rng.standard_normal(6).astype(np.float32)}

            def reset(self, seed: Any = None, options: Any = None) -> Any:
                return self._observation(), {}

            def step(self, action: Any) -> Any:
                return self._observation(), 0.0, False, False, {}

        return Env()


@pytest.fixture
def robot_env(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The release's `gym_manipulator` with its hardware stood in for."""
    manipulator = importlib.import_module("lerobot.scripts.rl.gym_manipulator")
    monkeypatch.setattr(manipulator, "make_robot_from_config", lambda cfg: SimpleNamespace())
    monkeypatch.setattr(
        manipulator, "make_teleoperator_from_config", lambda cfg: SimpleNamespace(connect=lambda: None)
    )
    monkeypatch.setattr(manipulator, "RobotEnv", FakeRobotEnv)
    passing = lambda env, **kwargs: env  # noqa: E731  (teleop control and reset move the arm)
    monkeypatch.setattr(manipulator, "GearedLeaderControlWrapper", passing)
    monkeypatch.setattr(manipulator, "ResetWrapper", passing)
    module = actor_module()
    monkeypatch.setattr(module, "make_robot_env", module.make_robot_env)  # restored after the test
    return manipulator


#: 0.3.x's own TimeLimitWrapper skips gym.Wrapper.__init__, so every wrapper above it reaches its
#: action_space through gymnasium's deprecated attribute forwarding (the release's actor warns too).
lerobot_wrapper_warning = pytest.mark.filterwarnings(
    "ignore:.*env.action_space to get variables from other wrappers:UserWarning"
)


def env_cfg() -> Any:
    cfg = env_config(CROP, RESIZE)
    cfg.robot = SimpleNamespace(end_effector_step_sizes=None)
    return cfg


def lerobot_image(pixels: np.ndarray, key: str) -> torch.Tensor:
    """What 0.3.x's own wrappers make of a camera frame: /255, crop, resize, clamp to [0,1]."""
    import torchvision.transforms.functional as F

    image = torch.from_numpy(pixels).permute(2, 0, 1)[None].float() / 255
    return F.resize(F.crop(image, *CROP[key]), list(RESIZE)).clamp(0.0, 1.0)


@pytest.mark.only_on(GYM_WRAPPERS, reason="the actor processes observations with gym wrappers")
@lerobot_wrapper_warning
def test_actor_at_range_255_delivers_0_255_images_after_the_crop_resize_clamp(robot_env: Any) -> None:
    """`install` on the release's actor at range 255: its `make_robot_env` (the release's own, with
    `ConvertToLeRobotObservation` and `ImageCropResizeWrapper`) delivers crop/resized images in
    [0,255], values above 1 kept; they reach the learner's buffer through the release's transport;
    LeRobot's own [0,1] images are refused there."""
    from bufconv.lerobot.actor import install

    module = install(actor_module(), image_range=255, reconnect=False)
    env = module.make_robot_env(cfg=env_cfg())
    names = []
    layer = env
    while hasattr(layer, "env"):
        names.append(type(layer).__name__)
        layer = layer.env
    assert names[0] == "ImageRangeWrapper" and "ImageCropResizeWrapper" in names, names
    assert names.index("ImageCropResizeWrapper") > 0  # the range wrapper is outside the clamp
    raw = env.unwrapped
    obs, _ = env.reset()
    next_obs, *_ = env.step(env.action_space.sample())
    for observation, frame in ((obs, raw.frames[0]), (next_obs, raw.frames[1])):
        for key in (FRONT, WRIST):
            image = observation[key]
            assert image.shape == (1, 3, *RESIZE) and image.dtype == torch.float32
            assert image.max() > 1.0 and image.min() >= 0 and image.max() <= 255  # no clamp to [0,1]
            expected = lerobot_image(frame[key.rsplit(".", 1)[1]], key) * 255
            torch.testing.assert_close(image, expected, rtol=0, atol=1e-3)

    transport = importlib.import_module("lerobot.transport.utils")
    transition = {
        "state": obs, "action": torch.zeros(1, 3), "reward": 0.0, "next_state": next_obs,
        "done": False, "truncated": False, "complementary_info": {},
    }  # fmt: skip
    (received,) = transport.bytes_to_transitions(transport.transitions_to_bytes([transition]))
    buffer = bufconv.OnlineBuffer(
        capacity=4, image_range=255, state_keys=[FRONT, WRIST, STATE], use_drq=False
    )
    buffer.add(**received)
    stored = buffer[[0]]
    for key in (FRONT, WRIST):
        torch.testing.assert_close(stored["state"][key], obs[key].round(), rtol=0, atol=0.5)
        assert stored["state"][key].max() > 1.0
    lerobot_obs = {k: v / 255 if k != STATE else v for k, v in obs.items()}  # LeRobot's own [0,1] images
    with pytest.raises(RangeMismatchError):
        buffer.add(**dict(received, state=lerobot_obs))
    assert len(buffer) == 1


@pytest.mark.only_on(GYM_WRAPPERS, reason="the actor processes observations with gym wrappers")
@lerobot_wrapper_warning
def test_the_devlog_clamp_is_in_the_release_and_the_wrapper_avoids_it(robot_env: Any) -> None:
    """Converting to [0,255] before the release's `ImageCropResizeWrapper` (the devlog's placement)
    flattens every pixel to 1.0; bufconv's wrapper after it keeps them."""
    manipulator = robot_env
    before = manipulator.ImageCropResizeWrapper(
        SimpleNamespace(observation_space=FakeRobotEnv().observation_space), CROP, RESIZE
    )
    images = {key: torch.rand(1, 3, *release.SHAPES[key]) * 255 for key in (FRONT, WRIST)}
    before.env = SimpleNamespace(reset=lambda seed=None, options=None: (dict(images), {}))
    flattened, _ = before.reset()
    assert all(bool((flattened[key] <= 1.0).all()) for key in (FRONT, WRIST))  # the clamp
    from bufconv.lerobot.actor import install

    env = install(actor_module(), image_range=255, reconnect=False).make_robot_env(cfg=env_cfg())
    obs, _ = env.reset()
    assert all(float(obs[key].max()) > 1.0 for key in (FRONT, WRIST))


@pytest.mark.only_on(GYM_WRAPPERS, reason="the actor processes observations with gym wrappers")
@lerobot_wrapper_warning
def test_actor_at_range_1_only_checks(robot_env: Any) -> None:
    from bufconv.lerobot.actor import install

    env = install(actor_module(), image_range=1, reconnect=False).make_robot_env(cfg=env_cfg())
    obs, _ = env.reset()
    frame = env.unwrapped.frames[0]
    for key in (FRONT, WRIST):
        assert torch.equal(obs[key], lerobot_image(frame[key.rsplit(".", 1)[1]], key))


# ---------------------------------------------------------------------------------------------
# the encoder guard where the policy normalizes inside (0.3.x's SACObservationEncoder)


@pytest.mark.only_on(GYM_WRAPPERS, reason="its SAC policy normalizes inputs itself (NormalizeBuffer)")
def test_the_guard_checks_what_the_image_encoder_receives_after_the_policy_normalizer(
    dataset: Path, tmp_path: Path
) -> None:
    """0.3.x's `SACObservationEncoder` normalizes inside `forward`: the guard, on its `image_encoder`,
    checks the normalized images against the config's map, on the actor's `select_action`."""
    from lerobot.policies.sac.modeling_sac import SACPolicy

    from bufconv.lerobot.entry import guarded_make_policy

    cfg = release.make_config(dataset, tmp_path / "out")
    for key in (FRONT, WRIST):  # its encoder takes the cameras concatenated: one shape
        cfg.policy.input_features[key].shape = (3, 64, 64)
    # mean -10: the encoder receives [10, 11] from [0,1] images, never a raw image's values
    image_stats = {"mean": [[[-10.0]], [[-10.0]], [[-10.0]]], "std": [[[1.0]], [[1.0]], [[1.0]]]}
    cfg.policy.dataset_stats = {
        FRONT: image_stats, WRIST: image_stats,
        STATE: {"min": [-5.0] * 6, "max": [5.0] * 6}, "action": {"min": [-1.0] * 3, "max": [1.0] * 3},
    }  # fmt: skip
    policy = guarded_make_policy(lambda cfg: SACPolicy(cfg), 1)(cfg=cfg.policy).eval()
    batch = {key: torch.rand(1, 3, 64, 64) for key in (FRONT, WRIST)}
    batch[STATE] = torch.zeros(1, 6)
    with torch.no_grad():
        policy.select_action(batch=batch)  # [0,1] in, the encoder gets the normalized [10, 11]
        with pytest.raises(RangeMismatchError):
            policy.select_action(batch={**batch, FRONT: batch[FRONT] * 255})
        with pytest.raises(RangeMismatchError):  # unnormalized images at the encoder are refused
            policy.encoder_actor.image_encoder(torch.cat([batch[FRONT], batch[WRIST]]))


# ---------------------------------------------------------------------------------------------
# delivery: one transitions message per call, on the release's own send_transitions


def test_install_delivers_each_transitions_message_in_its_own_call(
    dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The release's `send_transitions(cfg, queue, shutdown_event, learner_client, grpc_channel)` and
    its `transitions_stream`, run by `install`'s delivery: each message one `SendTransitions` call."""
    from bufconv.lerobot.actor import install

    module = actor_module()
    calls: list[bytes] = []
    done = threading.Event()
    sent = [b"first message", b"second" * 100, b"third"]

    class Stub:
        def SendTransitions(self, requests: Any) -> Any:
            calls.append(b"".join(r.data for r in requests))
            if len(calls) == len(sent):
                done.set()
            return None

    channel = SimpleNamespace(close=lambda: None)
    monkeypatch.setattr(module, "learner_service_client", lambda host, port: (Stub(), channel))
    monkeypatch.setattr(module, "send_transitions", module.send_transitions)
    install(module)
    assert hasattr(module.send_transitions, "__wrapped__")
    cfg = release.make_config(dataset, tmp_path / "out")
    cfg.policy.actor_learner_config.queue_get_timeout = 0.05
    messages: queue.Queue[bytes] = queue.Queue()
    for message in sent:
        messages.put(message)
    shutdown = threading.Event()
    thread = threading.Thread(target=module.send_transitions, args=(cfg, messages, shutdown), daemon=True)
    thread.start()
    assert done.wait(30)
    shutdown.set()
    thread.join(30)
    assert [c for c in calls if c] == sent  # (a call open at shutdown ends with an empty stream)
