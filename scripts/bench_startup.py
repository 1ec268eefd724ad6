"""Learner start-up, side by side: time from `python -m ...learner` to its first optimization step.

    .venv/bin/python scripts/bench_startup.py --frames 1000 --workdir /tmp/bench_startup

Three learners on the same config (scripts/hil_serl/train_config.json) and the same offline
dataset (two 128x128 AV1 cameras, written by LeRobot's writer in gym-hil's shape), one after
the other, each in a fresh process and output folder:

- **LeRobot 0.6.1**: its own buffers (`ReplayBuffer.from_lerobot_dataset`, which decodes every
  frame and, at the first step, compiles its DrQ augmentation with `torch.compile`);
- **bufconv, cold**: bufconv's buffers, building `offline_buffer.pt` from the dataset;
- **bufconv, cache hit**: the same, with the cache the cold run built (`--bufconv.cache`: a
  second run on the same data; a restart with `resume=true` finds it in its output folder).

So that the actor's speed does not enter the measurement, a stand-in actor (LeRobot's gRPC
transport, this process) sends `online_step_before_learning` transitions as soon as the learner
listens. Times come from inside the learner (scripts/hil_serl/encoder_probe.py): `start` is when
the learner's modules are imported, `buffers` when both buffers exist, `first step` when the first
optimization step has ended; all from the moment the process was started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "hil_serl"))
import record_demos  # noqa: E402
import run as hil  # noqa: E402

KINDS = ("lerobot", "bufconv-cold", "bufconv-hit")
LABELS = {
    "lerobot": "LeRobot 0.6.1",
    "bufconv-cold": "bufconv, cold (builds)",
    "bufconv-hit": "bufconv, cache hit",
}


def make_dataset(root: Path, frames: int, episode_length: int = 100) -> Path:
    """Synthetic frames in gym-hil's shape, written by LeRobot's writer (v3.0, AV1)."""
    from lerobot.datasets import LeRobotDataset

    dataset = LeRobotDataset.create(
        repo_id="local/gym_hil_pick_cube",
        fps=10,
        features=record_demos.features(),
        root=root,
        use_videos=True,
        image_writer_threads=4,
    )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:128, 0:128]
    written = episode = 0
    while written < frames:
        length = min(episode_length, frames - written)
        for i in range(length):
            front = np.stack([(xx + 3 * i + episode) % 256, (2 * yy + i) % 256, (xx + yy) % 256], -1)
            front = np.clip(front + rng.integers(-10, 11, front.shape), 0, 255).astype(np.uint8)
            dataset.add_frame(
                {
                    "observation.images.front": front,
                    "observation.images.wrist": front[::-1, ::-1].copy(),
                    "observation.state": rng.uniform(-1, 1, 18).astype(np.float32),
                    "action": np.array([*rng.uniform(-1, 1, 3), rng.uniform(0, 2)], np.float32),
                    "next.reward": np.array([float(i == length - 1)], np.float32),
                    "next.done": np.array([i == length - 1]),
                    "complementary_info.discrete_penalty": np.zeros(1, np.float32),
                    "task": "pick up the cube",
                }
            )
        dataset.save_episode()
        written += length
        episode += 1
    dataset.finalize()
    return root


def _transitions(n: int) -> list[dict[str, Any]]:
    """What LeRobot's actor sends for gym-hil: batch-of-one tensors, images in [0,1]."""
    import torch

    g = torch.Generator().manual_seed(0)

    def observation() -> dict[str, torch.Tensor]:
        return {
            "observation.images.front": torch.rand(1, 3, 128, 128, generator=g),
            "observation.images.wrist": torch.rand(1, 3, 128, 128, generator=g),
            "observation.state": torch.rand(1, 18, generator=g) * 2 - 1,
        }

    states = [observation() for _ in range(n + 1)]
    return [
        {
            "state": states[i],
            "action": torch.tensor([[0.1, 0.0, -0.5, 1.0]]),
            "reward": 0.0,
            "next_state": states[i + 1],
            "done": i == n - 1,
            "truncated": False,
            "complementary_info": {"discrete_penalty": torch.tensor([0.0]), "is_intervention": False},
        }
        for i in range(n)
    ]


def stand_in_actor(port: int, transitions: int, stop: threading.Event) -> None:
    """Connect to the learner as LeRobot's actor does and send `transitions` transitions once."""
    import grpc
    from lerobot.transport import services_pb2, services_pb2_grpc
    from lerobot.transport.utils import grpc_channel_options, send_bytes_in_chunks, transitions_to_bytes

    channel = grpc.insecure_channel(f"127.0.0.1:{port}", grpc_channel_options())
    stub = services_pb2_grpc.LearnerServiceStub(channel)
    payload = transitions_to_bytes(_transitions(transitions))
    while not stop.is_set():
        try:
            stub.Ready(services_pb2.Empty(), timeout=2)
            break
        except grpc.RpcError:
            stop.wait(0.2)
    if not stop.is_set():
        stub.SendTransitions(
            iter(list(send_bytes_in_chunks(payload, services_pb2.Transition, log_prefix="")))
        )
    channel.close()


def measure(kind: str, work: Path, dataset: Path, timeout_s: float) -> dict[str, float]:
    run = work / kind
    shutil.rmtree(run, ignore_errors=True)
    run.mkdir(parents=True)
    cache = work / "offline_buffer.pt"  # shared by the bufconv runs (--bufconv.cache)
    if kind == "bufconv-cold":
        cache.unlink(missing_ok=True)
    port = hil.free_port()
    config = hil.write_config(run / "train_config.json", dataset=dataset, output_dir=run / "train", port=port)
    before = json.loads(config.read_text())["policy"]["online_step_before_learning"]
    probe = run / "probe.jsonl"
    stop = threading.Event()
    stock = kind == "lerobot"
    learner = hil.learner(
        config, run / "learner.log", probe=probe, stock=stock, cache=None if stock else cache
    )
    sender = threading.Thread(target=stand_in_actor, args=(port, before, stop), daemon=True)
    sender.start()
    try:
        hil.wait_until(lambda: hil.steps(hil.read_probe(probe)), timeout_s, [learner], f"{kind}'s first step")
    finally:
        stop.set()
        learner.stop(grace_s=5)
        sender.join(timeout=10)
    events: dict[str, float] = {}
    for record in hil.read_probe(probe):
        events.setdefault(record["event"], record["t"] - learner.started)
    return {"imports": events["start"], "buffers": events["buffers"], "first_step": events["step"]}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1000, help="offline dataset size")
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--timeout", type=float, default=1800.0, help="per learner, seconds")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    work = args.workdir.resolve()
    dataset = work / f"dataset-{args.frames}"
    if not (dataset / "meta" / "info.json").exists():
        shutil.rmtree(dataset, ignore_errors=True)
        make_dataset(dataset, args.frames)
    results = {kind: measure(kind, work, dataset, args.timeout) for kind in KINDS}
    print(
        f"learner start-up, {args.frames:,} offline frames (two 128x128 cameras), seconds from process start"
    )
    print(f"  {'':28}{'imports':>10}{'buffers':>10}{'first step':>12}")
    for kind in KINDS:
        r = results[kind]
        print(f"  {LABELS[kind]:28}{r['imports']:10.1f}{r['buffers']:10.1f}{r['first_step']:12.1f}")
    stock = results["lerobot"]
    print("  ratios, LeRobot / bufconv")
    for kind in ("bufconv-cold", "bufconv-hit"):
        ours = results[kind]
        print(
            f"    {LABELS[kind]:26} buffers ready {stock['buffers'] / ours['buffers']:5.2f}x, "
            f"first step {stock['first_step'] / ours['first_step']:5.2f}x"
        )
    if args.json:
        args.json.write_text(json.dumps({"frames": args.frames, "results": results}, indent=2))


if __name__ == "__main__":
    main()
