"""End to end: LeRobot's actor on gym-hil's MuJoCo Panda env, LeRobot's learner on bufconv's buffers.

Real processes talking over LeRobot's gRPC transport on 127.0.0.1, the example config
(scripts/hil_serl/train_config.json), demonstrations recorded from the same env by LeRobot's own
writer. What the policy's image encoder sees is recorded from inside the learner, per batch half
(scripts/hil_serl/encoder_probe.py, a `--bufconv.hook`). Each process runs in its own process
group and is stopped by it; every wait is bounded.
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from bufconv.cache.segments import summary

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

#: LeRobot's checkpoint period in the kill test: its first checkpoint comes early, the next one
#: late enough (at the learner's step rate) for a kill between them.
SAVE_FREQ = 60
#: Generous bounds for a shared 2-core machine (a run takes ~1 s per env step there).
START_S = 240
STEPS_S = 300


def _load(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"hil_serl_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


hil = _load(ROOT / "scripts" / "hil_serl" / "run.py")
encoder_probe = _load(ROOT / "scripts" / "hil_serl" / "encoder_probe.py")


@pytest.fixture(scope="module")
def demos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """3 scripted episodes of 8 frames from PandaPickCube-v0, written by LeRobot's writer (v3.0, AV1)."""
    return hil.ensure_demos(tmp_path_factory.mktemp("hil_serl") / "demos")


@pytest.fixture
def processes() -> Iterator[list]:
    """Started processes; stopped by their process groups whatever the test's outcome."""
    started: list = []
    yield started
    for p in reversed(started):
        p.stop(grace_s=5)  # also closes its log (a process that exited early included)
    for p in started:
        with pytest.raises(ProcessLookupError):
            os.killpg(p.popen.pid, 0)  # nothing of the group is left running


def _run(tmp_path: Path, demos: Path, name: str, **config) -> tuple[Path, Path]:
    run = tmp_path / name
    run.mkdir()
    config_path = hil.write_config(
        run / "train_config.json", dataset=demos, output_dir=run / "train", port=hil.free_port(), **config
    )
    return run, config_path


def _steps_at_least(probe: Path, n: int, after: float = 0.0):
    def condition():
        done = [r for r in hil.steps(hil.read_probe(probe)) if r["t"] > after]
        return done if len(done) >= n else None

    return condition


def _encoder_spans(probe: Path) -> list[dict]:
    return [r for r in hil.read_probe(probe) if r.get("event") == "encoder" and "online" in r]


def test_learner_killed_between_checkpoints_loses_nothing_and_resumes_its_policy(
    tmp_path: Path, demos: Path, processes: list
) -> None:
    """Range 255 end to end: LeRobot's checkpoint at SAVE_FREQ steps, then SIGKILL at a random
    moment well before the next one (none falls in the window). What the actor sent more
    than ~2 s before the kill (its own record of what the learner acknowledged) is all back after
    resume=true; the resumed policy is the checkpoint's, weight for weight; the actor goes on."""
    run, config = _run(tmp_path, demos, "run", save_freq=SAVE_FREQ)
    probe, sent = run / "probe.jsonl", run / "sent.jsonl"
    learner = hil.learner(config, run / "learner.log", probe=probe, image_range=255)
    processes.append(learner)
    actor = hil.actor(config, run / "actor.log", run / "actor", image_range=255, sent=sent)
    processes.append(actor)
    checkpoint = run / "train" / "checkpoints" / f"{SAVE_FREQ:06d}"
    hil.wait_until(
        # LeRobot writes the checkpoint folder first, then the buffers: wait for both
        lambda: (
            checkpoint.is_dir()
            and (run / "train" / "online_buffer" / "manifest.json").is_file()
            and _steps_at_least(probe, SAVE_FREQ)()
        ),
        START_S + STEPS_S,
        processes,
        "20 optimization steps and a checkpoint",
    )
    log = learner.tail(10**7)
    assert "image encoder(s) of GaussianActorPolicy check every forward against range 255" in log
    assert "ImageRangeProcessorStep" in actor.tail(10**7)  # the actor's env processor carries the step
    spans = _encoder_spans(probe)
    assert spans
    for record in spans:  # every training batch, both halves, in [0,255] (and not [0,1])
        for half in ("online", "offline"):
            lo, hi = record[half]
            assert lo >= 0.0 and 1.0 < hi <= 255.0, record

    # A random moment after LeRobot's checkpoint, well before the next one (at the step rate seen
    # so far): background commits, not the checkpoint, must keep what the actor sends meanwhile
    # (a new message about every 10 env steps).
    done = hil.steps(hil.read_probe(probe))
    rate = (done[-1]["step"] - done[0]["step"]) / max(1e-3, done[-1]["t"] - done[0]["t"])
    window_s = min(15.0, 0.5 * SAVE_FREQ / max(rate, 1e-3))
    time.sleep(random.Random(int.from_bytes(os.urandom(4), "little")).uniform(3.0, max(3.5, window_s)))
    learner.kill()  # SIGKILL, as an OOM kill would
    kill_time = time.time()
    next_checkpoint = run / "train" / "checkpoints" / f"{2 * SAVE_FREQ:06d}"
    assert not next_checkpoint.exists(), f"a checkpoint fell in the window ({rate:.1f} steps/s)"
    committed = summary(run / "train" / "online_buffer")["transitions"]
    assert committed >= 10  # at least the online_step_before_learning transitions
    killed_at = learner.popen.returncode, len(hil.read_probe(probe))
    assert killed_at[0] == -9
    acknowledged = [r for r in hil.read_probe(sent) if r.get("event") == "sent"]
    surely = sum(r["transitions"] for r in acknowledged if r["t"] < kill_time - 2.0)
    assert surely > 0
    assert surely <= committed <= sum(r["transitions"] for r in acknowledged), (surely, committed)

    resumed_config = hil.write_config(
        run / "resume_config.json",
        dataset=demos,
        output_dir=run / "train",
        port=hil.read_port(config),
        resume=True,
    )
    restarted = hil.learner(resumed_config, run / "learner-resumed.log", probe=probe, image_range=255)
    processes.append(restarted)
    records = hil.wait_until(
        lambda: [r for r in hil.read_probe(probe)[killed_at[1] :] if r.get("event") == "buffers"],
        START_S,
        [restarted, actor],
        "the resumed learner's buffers",
    )
    assert records[0]["online_size"] == committed  # every committed transition is back, nothing more
    assert "uncommitted transitions dropped" not in restarted.tail(10**7)
    # the resumed policy is the last checkpoint's (LeRobot 0.6.1 alone rebuilds it from fresh weights)
    from safetensors.torch import load_file

    saved = load_file(run / "train" / "checkpoints" / "last" / "pretrained_model" / "model.safetensors")
    made = [r for r in hil.read_probe(probe)[killed_at[1] :] if r.get("event") == "policy"]
    assert made, "the resumed learner made no policy"
    resumed_policy, expected = made[0]["sha1"], encoder_probe.tensor_digests(saved)
    assert set(expected) <= set(resumed_policy)
    assert {k: resumed_policy[k] for k in expected} == expected
    resumed_from = records[0]["t"]
    after = hil.wait_until(
        lambda: [
            r
            for r in hil.steps(hil.read_probe(probe))
            if r["t"] > resumed_from and r["online_size"] > committed
        ],
        STEPS_S,
        [restarted, actor],
        "new transitions from the reconnected actor",
    )
    assert after[0]["step"] > SAVE_FREQ  # the optimization step count went on from the checkpoint
    assert "reconnecting" in actor.tail(10**7)
    for record in _encoder_spans(probe):
        for half in ("online", "offline"):
            lo, hi = record[half]
            assert lo >= 0.0 and 1.0 < hi <= 255.0, record


def test_stock_lerobot_mixes_ranges_in_one_batch_bufconv_does_not(
    tmp_path: Path, demos: Path, processes: list
) -> None:
    """lerobot#4558 side by side, with LeRobot's own actor: the encoder's input per batch half."""
    seen = {}
    for name, stock in (("stock", True), ("bufconv", False)):
        run, config = _run(tmp_path, demos, name)
        probe = run / "probe.jsonl"
        pair = [
            hil.learner(config, run / "learner.log", probe=probe, stock=stock),
            hil.actor(config, run / "actor.log", run / "actor", lerobot_actor=True),
        ]
        processes.extend(pair)
        hil.wait_until(_steps_at_least(probe, 5), START_S + STEPS_S, pair, f"5 optimization steps ({name})")
        for p in reversed(pair):
            p.stop(grace_s=5)
        seen[name] = hil.halves(hil.read_probe(probe))
    # LeRobot 0.6.1: the offline half holds floats in [0,255] (video decoded with return_uint8,
    # never divided), the online half [0,1] from the actor: one batch, two ranges.
    assert seen["stock"]["offline"][1] > 1.0
    assert seen["stock"]["online"][1] <= 1.0
    # bufconv: both halves in [0,1], the range the config implies (and the guard checked it).
    for half in ("online", "offline"):
        lo, hi = seen["bufconv"][half]
        assert lo >= 0.0 and 1.0 / 255.0 < hi <= 1.0, (half, seen)


def test_lerobots_default_normalization_trains_guarded_end_to_end(
    tmp_path: Path, demos: Path, processes: list
) -> None:
    """Range 1 with LeRobot's default MEAN_STD on ImageNet stats: the guard checks the map's interval.

    The encoder receives standardized images, (p/255 - mean)/std, negative values included: the
    range-only guard refused them at the first step; the chain's guard lets every batch through.
    """
    run, config = _run(tmp_path, demos, "mean_std", visual="MEAN_STD")
    probe = run / "probe.jsonl"
    learner = hil.learner(config, run / "learner.log", probe=probe, image_range=1)
    processes.append(learner)
    actor = hil.actor(config, run / "actor.log", run / "actor", image_range=1)
    processes.append(actor)
    hil.wait_until(_steps_at_least(probe, 5), START_S + STEPS_S, processes, "5 optimization steps (MEAN_STD)")
    log = learner.tail(10**7)
    assert "check every forward against range 1 (the encoder receives (p/255 - [0.485, 0.456, 0.406])" in log
    assert "bufconv image chain: offline -> policy" in log
    assert "RangeMismatchError" not in log and "RangeMismatchError" not in actor.tail(10**7)
    spans = _encoder_spans(probe)
    assert spans
    for record in spans:  # every batch, both halves, inside the image of [0,255] under the map
        for half in ("online", "offline"):
            lo, hi = record[half]
            assert lo >= -2.1179 - 1e-3 and hi <= 2.6400 + 1e-3, record
    assert min(record["offline"][0] for record in spans) < 0.0  # standardized, not [0,1]
