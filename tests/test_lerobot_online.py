"""The learner's online buffer and checkpoints with LeRobot 0.6.1's real config and checkpoint code.

`initialize_replay_buffer` and `initialize_offline_replay_buffer` start from
`TrainRLServerPipelineConfig`; LeRobot's own `save_training_checkpoint` runs with its buffer
part replaced (its policy/optimizer part is stubbed here: no policy is trained); the run then
resumes with `cfg.resume=True` and finds the same transitions, and the cache is not rebuilt.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from test_lerobot_integration import FRONT, STATE, WRIST, make_config

from bufconv.errors import RangeMismatchError
from bufconv.lerobot import initialize_replay_buffer, install


def transitions(
    count: int, seed: int, *, intervention_every: int = 3, shapes: dict[str, tuple[int, ...]] | None = None
) -> list[dict]:
    """Actor transitions shaped like the config's features, images in [0,1], episodes of 4."""
    g = torch.Generator().manual_seed(seed)

    images = shapes or {FRONT: (3, 48, 64), WRIST: (3, 40, 32)}

    def observation() -> dict[str, torch.Tensor]:
        out = {
            key: torch.randint(0, 256, (1, *shape), generator=g).float() / 255
            for key, shape in images.items()
        }
        return {**out, STATE: torch.randn((1, 6), generator=g)}

    out, current = [], observation()
    for i in range(count):
        following = observation()
        out.append(
            {
                "state": current,
                "action": torch.rand((1, 3), generator=g),
                "reward": float(i),
                "next_state": following,
                "done": i % 4 == 3,
                "truncated": False,
                "complementary_info": {"is_intervention": float(i % intervention_every == 0)},
            }
        )
        current = observation() if i % 4 == 3 else following
    return out


def same(a, b) -> None:
    assert len(a) == len(b)
    x, y = a[list(range(len(a)))], b[list(range(len(b)))]
    for part in ("state", "next_state"):
        for key in (FRONT, WRIST, STATE):
            assert torch.equal(x[part][key], y[part][key]), (part, key)
    for name in ("action", "reward", "done", "truncated"):
        assert torch.equal(x[name], y[name]), name


@pytest.fixture
def learner(monkeypatch: pytest.MonkeyPatch):
    """LeRobot's learner module with bufconv installed; its policy/optimizer saving stubbed."""
    import lerobot.rl.learner as module

    for name in ("initialize_offline_replay_buffer", "initialize_replay_buffer", "save_training_checkpoint"):
        monkeypatch.setattr(module, name, getattr(module, name))
    saved = []
    monkeypatch.setattr(module, "save_checkpoint", lambda **kwargs: saved.append(kwargs["step"]))
    monkeypatch.setattr(module, "update_last_checkpoint", lambda checkpoint_dir: None)
    monkeypatch.setattr(module, "write_json", lambda data, path: None)
    install(module)
    module.saved_steps = saved
    return module


def test_start_add_checkpoint_resume(tmp_path: Path, lerobot_dataset, learner) -> None:
    cfg = make_config(lerobot_dataset(), tmp_path / "outputs" / "train")
    cfg.policy.online_buffer_capacity = 50
    online = learner.initialize_replay_buffer(cfg, "cpu", "cpu")
    offline = learner.initialize_offline_replay_buffer(cfg, "cpu", "cpu")
    assert (online.status, len(online), offline.status) == ("new", 0, "built")
    stream = transitions(30, seed=1)
    for t in stream:
        online.add(**t)
        if t["complementary_info"]["is_intervention"]:
            offline.add(**t)  # as LeRobot's learner copies interventions
    learner.save_training_checkpoint(
        cfg,
        7,
        30,
        None,
        None,
        {},
        online,
        offline_replay_buffer=offline,
        dataset_repo_id=cfg.dataset.repo_id,
        fps=10,
    )
    output = Path(cfg.output_dir)
    assert learner.saved_steps == [7]  # LeRobot's own policy part ran
    assert (output / "online_buffer" / "manifest.json").is_file()
    assert (output / "offline_added" / "manifest.json").is_file()
    assert not (output / "dataset").exists() and not (output / "dataset_offline").exists()
    cache = output / "offline_buffer.pt"
    cache_stat = cache.stat()

    # more transitions after LeRobot's checkpoint: committed in the background and by close()
    more = transitions(5, seed=2)
    for t in more:
        online.add(**t)
    online.close()
    offline.close()

    cfg.resume = True
    resumed = learner.initialize_replay_buffer(cfg, "cpu", "cpu")
    resumed_offline = learner.initialize_offline_replay_buffer(cfg, "cpu", "cpu")
    assert (resumed.status, resumed.lost) == ("resumed", 0)
    reference = initialize_replay_buffer_like(cfg, [*stream, *more])
    same(reference, resumed)
    assert resumed_offline.status == "hit"  # the cache is served as it is: never rewritten
    assert (cache.stat().st_mtime_ns, cache.stat().st_ino) == (cache_stat.st_mtime_ns, cache_stat.st_ino)
    interventions = [t for t in stream if t["complementary_info"]["is_intervention"]]
    assert len(resumed_offline) == resumed_offline.dataset_transitions + len(interventions)
    added = resumed_offline[list(range(resumed_offline.dataset_transitions, len(resumed_offline)))]
    assert torch.equal(added["action"], torch.cat([t["action"] for t in interventions]))
    assert torch.equal(added["state"][FRONT], torch.cat([t["state"][FRONT] for t in interventions]))

    # a live image in the wrong range is refused on add, and the buffer is unchanged
    bad = dict(stream[0], state={**stream[0]["state"], FRONT: stream[0]["state"][FRONT] * 255})
    with pytest.raises(RangeMismatchError):
        resumed.add(**bad)
    assert len(resumed) == len(stream) + len(more)
    resumed.close()
    resumed_offline.close()


def initialize_replay_buffer_like(cfg, stream):
    """The buffer the run held at its checkpoint, rebuilt in memory."""
    from bufconv import OnlineBuffer

    buffer = OnlineBuffer(
        capacity=cfg.policy.online_buffer_capacity, state_keys=list(cfg.policy.input_features)
    )
    for t in stream:
        buffer.add(**t)
    return buffer


def test_without_resume_an_existing_online_buffer_is_refused(tmp_path: Path, lerobot_dataset) -> None:
    from bufconv.errors import CacheError

    cfg = make_config(lerobot_dataset(), tmp_path / "outputs" / "train")
    online = initialize_replay_buffer(cfg, "cpu", "cpu")
    for t in transitions(3, seed=0):
        online.add(**t)
    online.checkpoint()
    online.close()
    with pytest.raises(CacheError, match="already holds an online buffer"):
        initialize_replay_buffer(cfg, "cpu", "cpu")
