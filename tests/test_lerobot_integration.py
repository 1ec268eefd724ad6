"""bufconv inside LeRobot 0.6.1 (SPEC section 8): the learner's offline buffer, its entry point, a processor step.

Everything here runs against the installed LeRobot: its real `TrainRLServerPipelineConfig`,
its `OnlineOfflineMixer` and online `ReplayBuffer`, its processor pipelines and its dataset loader.
"""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import bufconv
from bufconv.lerobot import (
    ImageRangeProcessorStep,
    initialize_offline_replay_buffer,
    install,
    resolve_image_range,
)

FRONT, WRIST, STATE = "observation.images.front", "observation.images.wrist", "observation.state"
FRAMES = 16  # the default test dataset: episodes of 5, 1, 7, 3 frames


def make_config(
    root: Path, output_dir: Path, keys: tuple[str, ...] = (FRONT, WRIST, STATE), capacity: int = 40
):
    """LeRobot's own RL training config, as `python -m lerobot.rl.learner --config_path ...` would build it."""
    from lerobot.configs.default import DatasetConfig
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.policies.gaussian_actor.configuration_gaussian_actor import GaussianActorConfig
    from lerobot.rl.train_rl import TrainRLServerPipelineConfig

    shapes = {FRONT: (3, 48, 64), WRIST: (3, 40, 32), STATE: (6,)}
    features = {
        key: PolicyFeature(type=FeatureType.STATE if key == STATE else FeatureType.VISUAL, shape=shapes[key])
        for key in keys
    }
    policy = GaussianActorConfig(
        input_features=features,
        output_features={"action": PolicyFeature(type=FeatureType.ACTION, shape=(3,))},
        offline_buffer_capacity=capacity,
    )
    return TrainRLServerPipelineConfig(
        dataset=DatasetConfig(repo_id="bufconv/test", root=str(root)),
        policy=policy,
        output_dir=output_dir,
    )


@pytest.fixture
def config(tmp_path: Path, lerobot_dataset):
    return make_config(lerobot_dataset(), tmp_path / "outputs" / "train")


# ---------------------------------------------------------------------------------------------
# the drop-in initialize_offline_replay_buffer


def test_drop_in_builds_hits_and_rebuilds_on_a_range_change(config) -> None:
    """First call builds <output_dir>/offline_buffer.pt, the second hits, a changed range is rebuilt with a reason."""
    cache = Path(config.output_dir) / "offline_buffer.pt"
    built = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    assert built.status == "built"
    assert built.stale_reasons == []
    assert cache.is_file()
    assert built.path == cache.absolute()
    assert built.image_range == 1
    assert len(built) == FRAMES
    assert built.state_keys == [FRONT, WRIST, STATE]
    assert built.capacity == 40  # policy.offline_buffer_capacity
    bufconv.check_range(built.sample(4)["state"][FRONT], 1)
    del built

    hit = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    assert hit.status == "hit"
    assert hit.stale_reasons == []

    explicit = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu", image_range=255)
    assert explicit.status == "rebuilt"
    assert explicit.image_range == 255
    assert any("range" in reason and "255" in reason for reason in explicit.stale_reasons), (
        explicit.stale_reasons
    )
    assert float(explicit.sample(4)["state"][FRONT].max()) > 1
    bufconv.check_range(explicit.sample(4)["state"][WRIST], 255)

    back = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    assert back.status == "rebuilt"
    assert back.image_range == 1

    config.policy.normalise_inputs = True  # a fork's flag: the encoder divides by 255 itself
    assert resolve_image_range(config) == 255
    flagged = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    assert flagged.status == "rebuilt"
    assert flagged.image_range == 255
    assert any("range" in reason for reason in flagged.stale_reasons), flagged.stale_reasons
    assert initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu").status == "hit"


def test_drop_in_on_stale_error_refuses_instead_of_rebuilding(config) -> None:
    """on_stale='error' raises StaleCacheError saying what changed, and leaves the cache alone."""
    initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    cache = Path(config.output_dir) / "offline_buffer.pt"
    before = cache.read_bytes()
    with pytest.raises(bufconv.StaleCacheError) as info:
        initialize_offline_replay_buffer(
            config, device="cpu", storage_device="cpu", image_range=255, on_stale="error"
        )
    assert any("range" in reason for reason in info.value.reasons)
    assert cache.read_bytes() == before


def test_resolve_image_range_order() -> None:
    """Explicit argument, then cfg/policy image_range, then self-normalising flags, else LeRobot's 1."""
    policy = types.SimpleNamespace(input_features={})
    cfg = types.SimpleNamespace(policy=policy)
    assert resolve_image_range(cfg) == 1
    policy.normalize_inputs = True
    assert resolve_image_range(cfg) == 255
    assert resolve_image_range(cfg, image_range=1) == 1
    policy.image_range = 1
    assert resolve_image_range(cfg) == 1
    cfg.image_range = 255
    assert resolve_image_range(cfg) == 255
    with pytest.raises(ValueError, match="image_range must be 1"):
        resolve_image_range(cfg, image_range=100)


def test_drop_in_takes_state_keys_from_policy_input_features(tmp_path: Path, lerobot_dataset) -> None:
    """Only the policy's input features become state keys (here: one camera and the state)."""
    config = make_config(lerobot_dataset(), tmp_path / "out", keys=(FRONT, STATE))
    buf = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    assert buf.state_keys == [FRONT, STATE]
    batch = buf.sample(3)
    assert set(batch["state"]) == set(batch["next_state"]) == {FRONT, STATE}


def test_drop_in_mixes_with_lerobot_online_buffer(tmp_path: Path, lerobot_dataset) -> None:
    """LeRobot's OnlineOfflineMixer and concatenate_batch_transitions take bufconv's batches with an online ReplayBuffer."""
    from lerobot.rl.buffer import ReplayBuffer, concatenate_batch_transitions
    from lerobot.rl.buffer import random_shift as lerobot_random_shift
    from lerobot.rl.data_sources import OnlineOfflineMixer

    config = make_config(lerobot_dataset(), tmp_path / "out", keys=(FRONT, STATE))
    offline = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    online = ReplayBuffer(  # as the learner's initialize_replay_buffer makes it
        capacity=10,
        device="cpu",
        state_keys=config.policy.input_features.keys(),
        image_augmentation_function=functools.partial(lerobot_random_shift, pad=4),  # no torch.compile
        storage_device="cpu",
        optimize_memory=True,
    )
    generator = torch.Generator().manual_seed(0)
    for t in range(5):  # live transitions as the actor sends them: [0,1] images with a batch dim
        state = {
            FRONT: torch.rand(1, 3, 48, 64, generator=generator),
            STATE: torch.randn(1, 6, generator=generator),
        }
        next_state = {
            FRONT: torch.rand(1, 3, 48, 64, generator=generator),
            STATE: torch.randn(1, 6, generator=generator),
        }
        online.add(
            state=state,
            action=torch.randn(1, 3, generator=generator),
            reward=float(t),
            next_state=next_state,
            done=t == 4,
            truncated=False,
            complementary_info={"discrete_penalty": torch.tensor([-1.0])},
        )
    offline_batch = offline.sample(4)
    online_batch = online.sample(4)
    assert set(offline_batch) >= {
        "state",
        "action",
        "reward",
        "next_state",
        "done",
        "truncated",
        "complementary_info",
    }
    mixed = concatenate_batch_transitions(online_batch, offline_batch)
    for part in ("state", "next_state"):
        assert set(mixed[part]) == {FRONT, STATE}
        assert mixed[part][FRONT].shape == (8, 3, 48, 64)
        assert mixed[part][FRONT].dtype == torch.float32
        assert mixed[part][STATE].shape == (8, 6)
        bufconv.check_range(mixed[part][FRONT], 1)  # both halves in LeRobot's [0,1]
    for key, shape in (("action", (8, 3)), ("reward", (8,)), ("done", (8,)), ("truncated", (8,))):
        assert mixed[key].shape == shape, key
        assert mixed[key].dtype == torch.float32, key
    assert mixed["complementary_info"]["discrete_penalty"].shape == (8,)

    mixer = OnlineOfflineMixer(online_buffer=online, offline_buffer=offline, online_ratio=0.5)
    batch = mixer.sample(10)
    assert batch["state"][FRONT].shape == (10, 3, 48, 64)
    assert batch["action"].shape == (10, 3)
    iterator = mixer.get_iterator(batch_size=6, async_prefetch=False, queue_size=2)
    for _ in range(2):
        batch = next(iterator)
        assert batch["next_state"][STATE].shape == (6, 6)
        assert batch["done"].shape == (6,)
    iterator.close()


# ---------------------------------------------------------------------------------------------
# the learner entry point


def _lerobot_learner() -> types.ModuleType:
    try:
        return importlib.import_module("lerobot.rl.learner")
    except ImportError as e:
        pytest.fail(f"LeRobot's learner cannot be imported here (install lerobot[hilserl] for grpcio): {e}")


def _restore_learner_after_test(monkeypatch: pytest.MonkeyPatch, learner: types.ModuleType) -> None:
    for name in (
        "initialize_offline_replay_buffer",
        "initialize_replay_buffer",
        "save_training_checkpoint",
        "make_policy",  # main() guards the policy's encoders
    ):
        monkeypatch.setattr(learner, name, getattr(learner, name))  # monkeypatch restores them


def test_install_patches_lerobot_learner(monkeypatch: pytest.MonkeyPatch) -> None:
    """install() makes lerobot.rl.learner's buffer functions bufconv's (restored after the test)."""
    from bufconv.lerobot import initialize_replay_buffer

    learner = _lerobot_learner()
    original = learner.initialize_offline_replay_buffer
    saving = learner.save_training_checkpoint
    _restore_learner_after_test(monkeypatch, learner)
    assert original is not initialize_offline_replay_buffer
    assert install() is learner
    assert learner.initialize_offline_replay_buffer.func is initialize_offline_replay_buffer
    assert learner.initialize_replay_buffer.func is initialize_replay_buffer
    assert learner.initialize_replay_buffer.keywords == {"commit_interval_s": 1.0}  # every second
    assert learner.save_training_checkpoint.__wrapped__ is saving
    install()  # twice: wrapped once
    assert learner.save_training_checkpoint.__wrapped__ is saving


def test_install_patches_a_given_module_and_refuses_foreign_ones() -> None:
    """install(module) replaces the function on that module; a module without it is an ImportError."""
    module = types.ModuleType("some_learner")
    module.initialize_offline_replay_buffer = lambda cfg, device, storage_device: None
    assert install(module) is module
    assert module.initialize_offline_replay_buffer.func is initialize_offline_replay_buffer
    with pytest.raises(ImportError, match="initialize_offline_replay_buffer"):
        install(types.ModuleType("not_a_learner"))


def test_learner_entry_point_reaches_lerobot_parser(tmp_path: Path) -> None:
    """`python -m bufconv.lerobot.learner --help` imports cleanly and prints LeRobot's RL config usage."""
    result = subprocess.run(
        [sys.executable, "-m", "bufconv.lerobot.learner", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=180,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-3000:]
    assert "usage:" in result.stdout
    assert "--online_ratio" in result.stdout  # a field of LeRobot's TrainRLServerPipelineConfig
    assert "--dataset.repo_id" in result.stdout
    # (stderr may hold LeRobot's own torchcodec warning on machines without system FFmpeg)


def test_learner_entry_point_runs_lerobot_train_cli_with_the_drop_in(monkeypatch: pytest.MonkeyPatch) -> None:
    """bufconv.lerobot.learner.main() hands control to LeRobot's train_cli with the function already replaced."""
    import lerobot.rl.learner as lerobot_learner

    from bufconv.lerobot import initialize_offline_replay_buffer
    from bufconv.lerobot.learner import main

    seen = []
    monkeypatch.setattr(
        lerobot_learner, "train_cli", lambda: seen.append(lerobot_learner.initialize_offline_replay_buffer)
    )
    _restore_learner_after_test(monkeypatch, lerobot_learner)
    main()
    assert [f.func for f in seen] == [initialize_offline_replay_buffer]
    assert seen[0].keywords == {"commit_interval_s": 1.0}  # the default: every second


# ---------------------------------------------------------------------------------------------
# ImageRangeProcessorStep in a LeRobot processor pipeline


def _camera_observation(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "pixels": {
            "front": rng.integers(0, 256, (24, 32, 3), dtype=np.uint8),
            "wrist": rng.integers(0, 256, (16, 20, 3), dtype=np.uint8),
        },
        "agent_pos": rng.standard_normal(4).astype(np.float32),
    }


def _pipeline(*steps):
    from lerobot.processor import DataProcessorPipeline, identity_transition

    return DataProcessorPipeline(
        steps=list(steps), to_transition=identity_transition, to_output=identity_transition
    )


def _run(pipeline, observation: dict) -> dict:
    from lerobot.processor import TransitionKey, create_transition

    return pipeline(create_transition(observation=observation))[TransitionKey.OBSERVATION]


def test_processor_step_range_255_gives_the_uint8_values() -> None:
    """After VanillaObservationProcessorStep, image_range=255 turns uint8 HWC pixels into float32 CHW equal to them."""
    from lerobot.processor import VanillaObservationProcessorStep

    obs = _camera_observation()
    out = _run(_pipeline(VanillaObservationProcessorStep(), ImageRangeProcessorStep(image_range=255)), obs)
    for name, pixels in obs["pixels"].items():
        image = out[f"observation.images.{name}"]
        assert image.dtype == torch.float32
        expected = torch.from_numpy(pixels).permute(2, 0, 1).unsqueeze(0).to(torch.float32)
        assert image.shape == expected.shape
        assert torch.equal(image, expected)
    assert torch.equal(out[STATE], torch.from_numpy(obs["agent_pos"]).unsqueeze(0))


def test_processor_step_range_1_leaves_lerobot_output() -> None:
    """image_range=1 leaves LeRobot's [0,1] images exactly as VanillaObservationProcessorStep made them."""
    from lerobot.processor import VanillaObservationProcessorStep

    obs = _camera_observation(1)
    lerobot_only = _run(_pipeline(VanillaObservationProcessorStep()), obs)
    with_step = _run(
        _pipeline(VanillaObservationProcessorStep(), ImageRangeProcessorStep(image_range=1)), obs
    )
    assert set(with_step) == set(lerobot_only)
    for key, value in lerobot_only.items():
        assert with_step[key].dtype == value.dtype
        assert torch.equal(with_step[key], value), key


def test_processor_step_refuses_wrong_range_input() -> None:
    """Images already divided by 255 twice (or [0,255] floats claimed as [0,1]) are refused, not converted."""
    step = ImageRangeProcessorStep(image_range=255)
    pixels = torch.from_numpy(_camera_observation()["pixels"]["front"]).permute(2, 0, 1)[None].float()
    with pytest.raises(bufconv.RangeMismatchError, match="divided by 255 twice"):
        step.observation({"observation.images.front": pixels / 255 / 255})
    with pytest.raises(bufconv.RangeMismatchError):
        step.observation({"observation.images.front": pixels})
    out = step.observation({"observation.images.front": pixels.to(torch.uint8)})  # uint8 is range 255
    assert torch.equal(out["observation.images.front"], pixels)


def test_processor_step_config_round_trips_through_registry() -> None:
    """get_config names the step 'bufconv_image_range'; LeRobot rebuilds the pipeline from it, same behaviour."""
    from lerobot.processor import (
        DataProcessorPipeline,
        ProcessorStepRegistry,
        VanillaObservationProcessorStep,
        identity_transition,
    )

    assert ProcessorStepRegistry.get("bufconv_image_range") is ImageRangeProcessorStep
    pipeline = _pipeline(VanillaObservationProcessorStep(), ImageRangeProcessorStep(image_range=255))
    config = pipeline.get_config()
    entry = config["steps"][1]
    assert entry["registry_name"] == "bufconv_image_range"
    assert entry["config"] == {"image_range": 255, "input_range": 1}
    rebuilt = DataProcessorPipeline.from_config(
        config, to_transition=identity_transition, to_output=identity_transition
    )
    step = rebuilt.steps[1]
    assert isinstance(step, ImageRangeProcessorStep)
    assert (step.image_range, step.input_range) == (255, 1)
    obs = _camera_observation(2)
    assert torch.equal(
        _run(rebuilt, obs)["observation.images.front"], _run(pipeline, obs)["observation.images.front"]
    )


# ---------------------------------------------------------------------------------------------
# buffer -> LeRobot dataset (what the learner does at checkpoints)


def _live_transition(value: int, action: float, *, done: bool) -> dict:
    generator = torch.Generator().manual_seed(value)

    def obs(v: int) -> dict[str, torch.Tensor]:
        return {
            FRONT: torch.randint(v - 30, v + 1, (1, 3, 48, 64), generator=generator).float(),
            WRIST: torch.randint(v - 30, v + 1, (1, 3, 40, 32), generator=generator).float(),
            STATE: torch.full((1, 6), float(v)),
        }

    return {
        "state": obs(value),
        "action": torch.full((1, 3), action),
        "reward": 1.0,
        "next_state": obs(value + 1),
        "done": done,
        "truncated": False,
        "complementary_info": {"discrete_penalty": torch.tensor([-0.25])},
    }


def test_to_lerobot_dataset_round_trips_through_lerobot(tmp_path: Path, lerobot_dataset) -> None:
    """A range-255 buffer with live adds, written as a LeRobot dataset, loads back in LeRobot with the same frames."""
    from lerobot.datasets import LeRobotDataset

    buf = bufconv.load_or_build(lerobot_dataset(), tmp_path / "offline_buffer.pt", image_range=255)
    buf.add(**_live_transition(120, 0.5, done=False))
    buf.add(**_live_transition(200, 0.75, done=True))
    root = tmp_path / "dataset_offline"
    buf.to_lerobot_dataset("bufconv/exported", fps=10, root=root)

    loaded = LeRobotDataset("bufconv/exported", root=root)
    assert len(loaded) == len(buf) == FRAMES + 2
    assert loaded.meta.total_episodes == 4 + 1  # the dataset's episodes, then one live episode
    everything = buf[list(range(len(buf)))]
    for i in range(len(buf)):
        item = loaded[i]
        for key in (FRONT, WRIST):
            assert torch.equal(item[key], everything["state"][key][i] / 255), (i, key)
        assert torch.equal(item[STATE], everything["state"][STATE][i])
        assert torch.equal(item["action"], everything["action"][i])
        assert float(item["next.reward"]) == float(everything["reward"][i])
        assert bool(item["next.done"]) == bool(everything["done"][i])


def test_to_lerobot_dataset_writes_live_transitions_oldest_first(tmp_path: Path, lerobot_dataset) -> None:
    """After the ring wraps, live transitions are written in the order they were added, as LeRobot's buffer does."""
    from lerobot.datasets import LeRobotDataset

    buf = bufconv.load_or_build(
        lerobot_dataset(), tmp_path / "offline_buffer.pt", image_range=255, capacity=2
    )
    for k in range(3):
        buf.add(**_live_transition(100 + 20 * k, float(k), done=True))
    root = tmp_path / "exported"
    buf.to_lerobot_dataset("bufconv/exported", fps=10, root=root)
    loaded = LeRobotDataset("bufconv/exported", root=root)
    assert len(loaded) == FRAMES + 2
    live_actions = [float(loaded[i]["action"][0]) for i in range(FRAMES, FRAMES + 2)]
    assert live_actions == [1.0, 2.0]  # add 0 was overwritten; adds 1 and 2 follow in time order


def test_resume_serves_the_checkpoint_dataset(config) -> None:
    """On resume the drop-in reads <output_dir>/dataset_offline (as LeRobot does) and serves the same transitions."""
    first = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    checkpoint = Path(config.output_dir) / "dataset_offline"
    first.to_lerobot_dataset(config.dataset.repo_id, fps=10, root=checkpoint)
    config.resume = True
    resumed = initialize_offline_replay_buffer(config, device="cpu", storage_device="cpu")
    assert resumed.status == "rebuilt"  # another source dataset than the cache was built from
    assert resumed.stale_reasons
    assert len(resumed) == len(first)
    index = list(range(len(first)))
    expected, got = first[index], resumed[index]
    for part in ("state", "next_state"):
        for key in (FRONT, WRIST, STATE):
            assert torch.equal(got[part][key], expected[part][key]), (part, key)
    for key in ("action", "reward", "done", "truncated"):
        assert torch.equal(got[key], expected[key]), key
