"""The learner and actor entry points' own parts: `--bufconv.*` options, hooks, the encoder guard,
the actor's range step and its reconnection (the real processes: tests/test_hil_serl.py)."""

from __future__ import annotations

import sys
import threading
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from bufconv.errors import RangeMismatchError
from bufconv.lerobot import actor as bufconv_actor
from bufconv.lerobot.entry import (
    guard_policy,
    guarded_make_policy,
    image_encoders,
    load_hook,
    parse_bool,
    parse_interval,
    parse_range,
    run_hooks,
    split_options,
)


def test_split_options_takes_bufconv_names_out_and_leaves_lerobots() -> None:
    argv = [
        "--config_path=c.json",
        "--bufconv.image_range=255",
        "--bufconv.hook",
        "a.py",
        "--bufconv.hook=b",
        "--resume=true",
    ]
    options, rest = split_options(argv, ("image_range", "hook"))
    assert options == {"image_range": ["255"], "hook": ["a.py", "b"]}
    assert rest == ["--config_path=c.json", "--resume=true"]


@pytest.mark.parametrize("arg", ["--bufconv.nope=1", "--bufconv.image_range=", "--bufconv.image_range"])
def test_split_options_refuses_unknown_names_and_missing_values(arg: str) -> None:
    with pytest.raises(ValueError, match="--bufconv.NAME=VALUE"):
        split_options([arg], ("image_range",))


def test_parse_bool_and_range() -> None:
    assert parse_bool("TRUE", "guard") is True
    assert parse_bool("off", "guard") is False
    with pytest.raises(ValueError, match="guard"):
        parse_bool("maybe", "guard")
    assert parse_range(None) is None
    assert parse_range(["1", "255"]) == 255
    with pytest.raises(ValueError, match="image_range"):
        parse_range(["128"])


class _Encoder(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))


class _Policy(nn.Module):
    """LeRobot's layout: observation encoders holding an `image_encoder`, shared by two owners."""

    def __init__(self) -> None:
        super().__init__()
        self.actor_encoder = nn.Module()
        self.actor_encoder.image_encoder = _Encoder()
        self.critic_encoder = nn.Module()
        self.critic_encoder.image_encoder = self.actor_encoder.image_encoder


def test_guard_policy_checks_every_image_encoder_once() -> None:
    policy = _Policy()
    assert image_encoders(policy) == [policy.actor_encoder.image_encoder]
    assert guard_policy(policy, 1) == 1
    encoder = policy.actor_encoder.image_encoder
    encoder(torch.rand(2, 3, 8, 8))  # [0,1]: fine
    with pytest.raises(RangeMismatchError, match="declared range 1"):
        encoder(torch.rand(2, 3, 8, 8) * 255)


def test_guarded_make_policy_takes_the_range_from_the_option_or_the_config() -> None:
    made = guarded_make_policy(lambda cfg, env_cfg=None: _Policy(), None)
    assert guarded_make_policy(made, 255) is made  # wrapped once
    policy = made(cfg=types.SimpleNamespace(), env_cfg=None)  # LeRobot's config: range 1
    with pytest.raises(RangeMismatchError):
        policy.actor_encoder.image_encoder(torch.rand(1, 3, 4, 4) * 255)
    policy = guarded_make_policy(lambda cfg: _Policy(), 255)(types.SimpleNamespace())
    policy.actor_encoder.image_encoder(torch.rand(1, 3, 4, 4) * 255)
    with pytest.raises(RangeMismatchError, match="declared range 255"):
        policy.actor_encoder.image_encoder(torch.rand(1, 3, 4, 4))


def test_hooks_load_from_a_file_or_a_module_and_install_on_the_target(tmp_path: Path) -> None:
    hook = tmp_path / "my_hook.py"
    hook.write_text("def install(module):\n    module.hooked = getattr(module, 'hooked', 0) + 1\n")
    target = types.ModuleType("target")
    run_hooks([str(hook), "json"], target)  # json: a module without install() is only imported
    assert target.hooked == 1
    with pytest.raises(ImportError, match="no file"):
        load_hook(str(tmp_path / "missing.py"))


def test_actor_range_step_goes_right_after_lerobots_vanilla_observation_step() -> None:
    from lerobot.processor import DataProcessorPipeline, VanillaObservationProcessorStep
    from lerobot.processor.hil_processor import GymHILAdapterProcessorStep

    from bufconv.lerobot import ImageRangeProcessorStep

    def make_processors(env, teleop, cfg, device="cpu"):
        steps = [GymHILAdapterProcessorStep(), VanillaObservationProcessorStep()]
        return DataProcessorPipeline(steps=steps), DataProcessorPipeline(steps=[])

    env_processor, _ = bufconv_actor.with_range_step(make_processors, 255)(None, None, None)
    names = [type(step).__name__ for step in env_processor.steps]
    assert names == [
        "GymHILAdapterProcessorStep",
        "VanillaObservationProcessorStep",
        "ImageRangeProcessorStep",
    ]
    assert isinstance(env_processor.steps[-1], ImageRangeProcessorStep)
    assert env_processor.steps[-1].image_range == 255


def test_actor_range_step_goes_after_a_clamping_crop_resize() -> None:
    """LeRobot's ImageCropResizeProcessorStep clamps to [0,1] after resizing: [0,255] images must
    come out of it, never go into it (the clamp-before-range bug of the devlog)."""
    from lerobot.processor import DataProcessorPipeline, VanillaObservationProcessorStep
    from lerobot.processor.hil_processor import ImageCropResizeProcessorStep

    def make_processors(env, teleop, cfg, device="cpu"):
        steps = [VanillaObservationProcessorStep(), ImageCropResizeProcessorStep(resize_size=(64, 64))]
        return DataProcessorPipeline(steps=steps), DataProcessorPipeline(steps=[])

    env_processor, _ = bufconv_actor.with_range_step(make_processors, 255)(None, None, None)
    names = [type(step).__name__ for step in env_processor.steps]
    assert names == [
        "VanillaObservationProcessorStep",
        "ImageCropResizeProcessorStep",
        "ImageRangeProcessorStep",
    ]


def test_actor_streams_reconnect_until_shutdown(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream that ends (the learner went away) is started again; shutdown stops it."""
    monkeypatch.setattr(bufconv_actor, "RECONNECT_DELAY_S", 0.01)
    shutdown = threading.Event()
    calls = []

    def send_transitions(cfg, queue, shutdown_event, channel=None):
        calls.append(channel)
        if len(calls) == 3:
            shutdown_event.set()

    bufconv_actor.reconnecting(send_transitions)("cfg", "queue", shutdown, "channel")
    assert calls == ["channel"] * 3


def test_actor_install_patches_lerobots_actor(monkeypatch: pytest.MonkeyPatch) -> None:
    import lerobot.rl.actor as lerobot_actor

    for name in ("make_processors", "make_policy", *bufconv_actor.STREAMS):
        monkeypatch.setattr(lerobot_actor, name, getattr(lerobot_actor, name))  # restored after the test
    originals = {name: getattr(lerobot_actor, name) for name in bufconv_actor.STREAMS}
    assert bufconv_actor.install(image_range=255, guard=True) is lerobot_actor
    for name, original in originals.items():
        assert getattr(lerobot_actor, name).__wrapped__ is original
    assert hasattr(lerobot_actor.make_processors, "__wrapped__")
    assert hasattr(lerobot_actor.make_policy, "__wrapped__")


def test_learner_main_passes_its_options_on(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """`--bufconv.*` reach install() and the hooks; LeRobot's parser sees only its own arguments."""
    import lerobot.rl.learner as lerobot_learner

    from bufconv.lerobot import learner as bufconv_learner

    for name in (
        "initialize_offline_replay_buffer",
        "initialize_replay_buffer",
        "save_training_checkpoint",
        "make_policy",
        "train_cli",
    ):
        monkeypatch.setattr(lerobot_learner, name, getattr(lerobot_learner, name))
    hook = tmp_path / "hook.py"
    hook.write_text("def install(module):\n    module.hook_saw = module.initialize_replay_buffer\n")
    argv = [
        "learner",
        "--config_path=c.json",
        "--bufconv.image_range=255",
        f"--bufconv.hook={hook}",
        "--bufconv.cache=/data/offline_buffer.pt",
        "--bufconv.commit_interval_s=0.5",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    seen = []
    monkeypatch.setattr(lerobot_learner, "train_cli", lambda: seen.append(list(sys.argv)))
    bufconv_learner.main()
    assert seen == [["learner", "--config_path=c.json"]]
    assert lerobot_learner.initialize_replay_buffer.keywords == {"image_range": 255, "commit_interval_s": 0.5}
    assert lerobot_learner.initialize_offline_replay_buffer.keywords == {
        "image_range": 255,
        "commit_interval_s": 0.5,
        "cache_path": "/data/offline_buffer.pt",  # one cache for every run on the same data
    }
    assert lerobot_learner.hook_saw is lerobot_learner.initialize_replay_buffer
    assert hasattr(lerobot_learner.make_policy, "__wrapped__")
    monkeypatch.delattr(lerobot_learner, "hook_saw")


@pytest.mark.parametrize(
    ("arg", "message"),
    [
        ("--bufconv.buffers=both", "--bufconv.buffers"),
        ("--bufconv.commit_interval_s=0", "--bufconv.commit_interval_s"),
    ],
)
def test_learner_main_refuses_a_bad_option_in_one_line(
    monkeypatch: pytest.MonkeyPatch, arg: str, message: str
) -> None:
    from bufconv.lerobot import learner as bufconv_learner

    monkeypatch.setattr(sys, "argv", ["learner", arg])
    with pytest.raises(SystemExit, match=f"bufconv: error: {message}"):
        bufconv_learner.main()


def test_commit_interval_option_parses_seconds_or_none() -> None:
    assert parse_interval(None, 1.0) == 1.0
    assert parse_interval(["2", "0.25"], 1.0) == 0.25
    assert parse_interval(["none"], 1.0) is None
    for bad in ("0", "-1", "soon", "nan"):
        with pytest.raises(ValueError, match="expected seconds > 0, or none"):
            parse_interval([bad], 1.0)
