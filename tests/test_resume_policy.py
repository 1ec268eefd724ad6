"""Resume restores the training: LeRobot 0.6.1's real learner loop, stopped at a checkpoint and resumed.

The learner's own `add_actor_information_and_train` runs in a thread (no gRPC, no env: the
actor's transitions are put straight into its transition queue as LeRobot's transport delivers
them), trains with `RLTrainer` and LeRobot's SAC, and saves its checkpoint with LeRobot's own
`save_training_checkpoint` (bufconv's buffer part). It is then resumed as `python -m
lerobot.rl.learner --config_path=<checkpoint>/pretrained_model/train_config.json --resume=true`
would: `cfg.validate()`, `handle_resume_logic`, the same loop, stopped right after
`load_training_state`. With bufconv's learner every policy weight and every optimizer state tensor
equals the checkpoint's files, and so do the weights pushed to the actor first; with LeRobot's own
resume (LeRobot #4560) the optimizers are restored but the policy is rebuilt from fresh weights,
and those fresh weights are what the actor receives.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest
import torch
from test_chain_lerobot import CAMERAS, imagenet_config
from test_lerobot_online import transitions

from bufconv.lerobot import install

STEPS = 3  # optimization steps before the checkpoint
WAIT_S = 120  # generous bound on each learner run (a few seconds on 2 cores)


def run_config(root: Path, output_dir: Path, *, resume: bool = False):
    """A small LeRobot RL config with a `gym_manipulator` env (features only: no env is made here)."""
    from lerobot.configs.types import FeatureType, PolicyFeature
    from lerobot.envs.configs import HILSerlRobotEnvConfig

    cfg = imagenet_config(root, output_dir)
    features = {**cfg.policy.input_features, "action": PolicyFeature(type=FeatureType.ACTION, shape=(3,))}
    cfg.env = HILSerlRobotEnvConfig(
        fps=10, features=features, features_map={key: key for key in features}, task="test"
    )
    cfg.policy.dataset_stats["action"] = {"min": [-3.0] * 3, "max": [3.0] * 3}  # the dataset's actions
    cfg.algorithm = None  # validate() makes it from the policy, as for a config file without one
    cfg.job_name = "resume"
    cfg.seed = 3
    cfg.batch_size = 4
    cfg.save_freq = STEPS
    cfg.policy.device = "cpu"
    cfg.policy.push_to_hub = False
    cfg.policy.online_step_before_learning = 4
    cfg.policy.online_buffer_capacity = 64
    cfg.policy.actor_learner_config.policy_parameters_push_frequency = 10_000  # the first push only
    cfg.wandb.enable = False
    cfg.resume = resume
    return cfg


def run_learner(module: Any, cfg: Any, messages: list[bytes], stop_after: str) -> dict[str, Any]:
    """LeRobot's learner loop in a thread until `stop_after` (a module function) has returned once.

    Returns what that call saw (its arguments by name), the first parameters pushed to the actor,
    and the buffers (closed).
    """
    import inspect

    seen: dict[str, Any] = {}
    shutdown = threading.Event()
    original = getattr(module, stop_after)
    signature = inspect.signature(original)

    def spy(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        seen.update(signature.bind(*args, **kwargs).arguments, result=result)
        shutdown.set()  # the loop ends at its next turn
        return result

    setattr(module, stop_after, spy)
    transition_queue: Queue = Queue()
    parameters_queue: Queue = Queue()
    for message in messages:
        transition_queue.put(message)
    failed: list[BaseException] = []

    def target() -> None:
        try:
            module.add_actor_information_and_train(
                cfg, None, shutdown, transition_queue, Queue(), parameters_queue
            )
        except BaseException as e:
            failed.append(e)
            shutdown.set()

    thread = threading.Thread(target=target, daemon=True)
    try:
        thread.start()
        thread.join(WAIT_S)
    finally:
        shutdown.set()
        thread.join(WAIT_S)
        setattr(module, stop_after, original)
    assert not thread.is_alive()
    if failed:
        raise failed[0]
    assert "result" in seen, f"{stop_after} was not called"
    try:
        seen["first_push"] = parameters_queue.get_nowait()
    except Empty:
        seen["first_push"] = None
    return seen


def transition_messages() -> list[bytes]:
    from lerobot.transport.utils import transitions_to_bytes

    stream = transitions(24, seed=5, shapes={key: (3, *hw) for key, hw in CAMERAS})
    return [transitions_to_bytes(stream[i : i + 8]) for i in range(0, len(stream), 8)]


@pytest.fixture
def learner(monkeypatch: pytest.MonkeyPatch):
    """LeRobot's learner module with bufconv's learner installed (restored after the test)."""
    import lerobot.rl.learner as module

    for name in vars(module):
        if callable(getattr(module, name)) and not name.startswith("__"):
            monkeypatch.setattr(module, name, getattr(module, name))
    install(module)
    return module


@pytest.fixture
def trained(tmp_path: Path, lerobot_dataset, learner) -> Path:
    """A run folder: STEPS optimization steps, then LeRobot's checkpoint (bufconv's learner)."""
    output_dir = tmp_path / "train"
    cfg = run_config(lerobot_dataset(cameras=CAMERAS), output_dir)
    cfg.validate()
    cfg = learner.handle_resume_logic(cfg)
    seen = run_learner(learner, cfg, transition_messages(), "save_training_checkpoint")
    assert seen["optimization_step"] == STEPS
    for name in ("replay_buffer", "offline_replay_buffer"):
        seen[name].close()
    return output_dir


def resume(learner: Any, output_dir: Path, monkeypatch: pytest.MonkeyPatch, root: Path):
    """The run resumed as LeRobot's CLI does it; stopped after load_training_state."""
    checkpoint = output_dir / "checkpoints" / "last"
    config_path = checkpoint / "pretrained_model" / "train_config.json"
    monkeypatch.setattr(sys, "argv", ["learner", f"--config_path={config_path}", "--resume=true"])
    cfg = run_config(root, output_dir, resume=True)
    cfg.validate()  # LeRobot's validate() points policy.pretrained_path at the checkpoint here...
    assert Path(cfg.policy.pretrained_path) == config_path.parent
    cfg = learner.handle_resume_logic(cfg)  # ...and handle_resume_logic replaces the config
    seen = run_learner(learner, cfg, [], "load_training_state")
    algorithm = seen["algorithm"]
    return checkpoint, algorithm, seen


def policy_differences(policy: torch.nn.Module, checkpoint: Path) -> tuple[list[str], int]:
    """Names of the policy's tensors that differ from the checkpoint's model.safetensors; how many were compared."""
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "pretrained_model" / "model.safetensors"))
    state = policy.state_dict()
    assert set(saved) <= set(state)
    by_storage = {state[k].data_ptr(): k for k in saved}
    for key in set(state) - set(saved):  # a tensor shared with a saved one (the shared encoder)
        assert state[key].data_ptr() in by_storage, key
    return [k for k in saved if not torch.equal(state[k].cpu(), saved[k])], len(saved)


def optimizer_differences(optimizers: dict[str, Any], checkpoint: Path) -> tuple[list[str], int]:
    from lerobot.optim.optimizers import load_optimizer_state_dict

    differ, compared = [], 0
    for name, optimizer in optimizers.items():
        saved = load_optimizer_state_dict(checkpoint / "training_state" / name)
        state = optimizer.state_dict()["state"]
        assert saved["state"] and len(saved["state"]) == len(state), name
        for index, tensors in saved["state"].items():
            for field, tensor in tensors.items():
                compared += 1
                if not torch.equal(torch.as_tensor(state[int(index)][field]).cpu(), tensor):
                    differ.append(f"{name}.{index}.{field}")
    return differ, compared


def first_push_differences(first_push: bytes, checkpoint: Path) -> list[str]:
    from lerobot.transport.utils import bytes_to_state_dict
    from safetensors.torch import load_file

    saved = load_file(str(checkpoint / "pretrained_model" / "model.safetensors"))
    pushed = bytes_to_state_dict(first_push)["policy"]
    assert pushed
    differ = []
    for key, tensor in pushed.items():
        full = f"actor.{key}"
        if full not in saved:  # the actor's encoder is the critic's (shared_encoder)
            full = f"encoder_critic.{key.removeprefix('encoder.')}"
        assert full in saved, key
        if not torch.equal(tensor, saved[full]):
            differ.append(key)
    return differ


def test_bufconv_resume_restores_weights_optimizers_and_what_the_actor_receives(
    learner, trained: Path, monkeypatch: pytest.MonkeyPatch, lerobot_dataset
) -> None:
    checkpoint, algorithm, seen = resume(learner, trained, monkeypatch, lerobot_dataset(cameras=CAMERAS))
    assert seen["result"][0] == STEPS
    differ, compared = policy_differences(algorithm.policy, checkpoint)
    assert compared > 10 and differ == []
    differ, compared = optimizer_differences(seen["optimizers"], checkpoint)
    assert compared > 10 and differ == []
    assert first_push_differences(seen["first_push"], checkpoint) == []


def test_lerobots_own_resume_rebuilds_the_policy_from_fresh_weights(
    learner, trained: Path, monkeypatch: pytest.MonkeyPatch, lerobot_dataset
) -> None:
    from bufconv.lerobot.resume import RESUME_FUNCTIONS

    for name in RESUME_FUNCTIONS:  # LeRobot's own, with bufconv's buffers
        monkeypatch.setattr(learner, name, getattr(learner, name).__wrapped__)
    checkpoint, algorithm, seen = resume(learner, trained, monkeypatch, lerobot_dataset(cameras=CAMERAS))
    assert seen["result"][0] == STEPS  # the step and the optimizers are restored...
    differ, compared = optimizer_differences(seen["optimizers"], checkpoint)
    assert differ == []
    differ, compared = policy_differences(algorithm.policy, checkpoint)
    assert len(differ) > compared // 2, (len(differ), compared)  # ...the policy's weights are not
    print(f"lerobot resume: {len(differ)} of {compared} policy tensors differ from the checkpoint's")
    assert first_push_differences(seen["first_push"], checkpoint)  # nor what the actor receives


@pytest.mark.parametrize("mended", [True, False], ids=["bufconv", "lerobot"])
def test_a_resume_that_restores_nothing_is_refused(
    learner, trained: Path, monkeypatch: pytest.MonkeyPatch, lerobot_dataset, mended: bool
) -> None:
    """An unreadable optimizer state: LeRobot logs it and trains on from step 0; bufconv refuses to start."""
    from bufconv.lerobot.resume import RESUME_FUNCTIONS, ResumeError

    if not mended:
        for name in RESUME_FUNCTIONS:
            monkeypatch.setattr(learner, name, getattr(learner, name).__wrapped__)
    (
        trained / "checkpoints" / "last" / "training_state" / "actor" / "optimizer_state.safetensors"
    ).write_bytes(b"")
    if mended:
        with pytest.raises(ResumeError, match="restored no training state"):
            resume(learner, trained, monkeypatch, lerobot_dataset(cameras=CAMERAS))
    else:
        _, _, seen = resume(learner, trained, monkeypatch, lerobot_dataset(cameras=CAMERAS))
        assert seen["result"] == (None, None)  # LeRobot's loop then counts from step 0
