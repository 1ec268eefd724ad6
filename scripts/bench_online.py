#!/usr/bin/env python
"""The online buffer against LeRobot's, side by side in one run: memory, add, checkpoint, resume.

    .venv/bin/python scripts/bench_online.py                  # 1,000 and 10,000 transitions
    .venv/bin/python scripts/bench_online.py --sizes 200      # the small CI configuration

The stream is the HIL-SERL shape: two 128x128 cameras ([0,1] floats, as the actor sends them),
18-d state, 4-d action, complementary_info, episodes of 50 transitions. LeRobot is measured as
its learner uses it: `ReplayBuffer(optimize_memory=True)`, checkpointed with
`to_lerobot_dataset` (what `save_training_checkpoint` does), resumed with
`from_lerobot_dataset` (what `initialize_replay_buffer` does with `resume`). Every measurement
runs in a fresh process; memory is the RSS the buffer adds, per transition.

Measurements, at each size N:
  add           N adds into an empty buffer of capacity N (throughput; RSS per transition)
  add, first fill / steady state
                per-add cost, memory only (bufconv path=None), in a process of its own: N adds
                into an empty buffer of capacity N, then N more into the full one (the ring
                wrapping); bufconv's per-add latency (p50/p99/max) over N more after that
  checkpoint    the first checkpoint of the N transitions
  checkpoint2   1,000 more transitions (the oldest retired), then a checkpoint
  resume        a fresh process opening the checkpoint (after its imports)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

CAMERAS = ("observation.images.front", "observation.images.wrist")
STATE = "observation.state"
EPISODE = 50
MORE = 1000


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def _pool() -> list[dict[str, Any]]:
    """64 distinct observations, made before anything is measured and reused by every stream."""
    import torch

    g = torch.Generator().manual_seed(0)
    return [
        {
            **{key: torch.randint(0, 256, (1, 3, 128, 128), generator=g).float() / 255 for key in CAMERAS},
            STATE: torch.randn((1, 18), generator=g),
        }
        for _ in range(64)
    ]


def _stream(pool: list[dict[str, Any]], count: int, start: int = 0) -> Any:
    """Transitions numbered from `start`: episodes of EPISODE, observations from `pool`."""
    import torch

    action = torch.full((1, 4), 0.5)
    for n in range(start, start + count):
        end = n % EPISODE == EPISODE - 1
        yield {
            "state": pool[n % 64],
            "action": action,
            "reward": 0.0,
            "next_state": pool[(n + 1) % 64],
            "done": end,
            "truncated": False,
            "complementary_info": {"discrete_penalty": 0.0, "is_intervention": 0.0},
        }


def _add_all(buffer: Any, transitions: Any) -> float:
    started = time.perf_counter()
    for t in transitions:
        buffer.add(**t)
    return time.perf_counter() - started


def add_latency(buffer: Any, transitions: Any) -> dict[str, float]:
    """Per-add latency over `transitions` (each add timed alone): p50, p99 and max, in ms.

    Takes any buffer, so one with background commits is measured the same way.
    """
    times = []
    clock = time.perf_counter_ns
    for t in transitions:
        started = clock()
        buffer.add(**t)
        times.append(clock() - started)
    times.sort()

    def at(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] / 1e6

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": times[-1] / 1e6}


def measure_add(side: str, size: int) -> dict[str, Any]:
    """Per-add cost of one side, memory only: first fill, steady state (ring wrapping), latency."""
    if side == "bufconv-add":
        from bufconv import OnlineBuffer

        buffer: Any = OnlineBuffer(capacity=size)
    else:
        from lerobot.rl.buffer import ReplayBuffer

        buffer = ReplayBuffer(
            capacity=size, device="cpu", storage_device="cpu", use_drq=False, optimize_memory=True
        )
    pool = _pool()
    # Transitions made before the timer: the stream's dicts are not part of an add.
    fill, steady = list(_stream(pool, size)), list(_stream(pool, size, start=size))
    out: dict[str, Any] = {
        "side": side,
        "size": size,
        "add_fill_ms": _add_all(buffer, fill) / size * 1e3,
        "add_steady_ms": _add_all(buffer, steady) / size * 1e3,
    }
    if side == "bufconv-add":
        out["latency"] = add_latency(buffer, list(_stream(pool, size, start=2 * size)))
    return out


def measure(side: str, size: int, workdir: Path) -> dict[str, Any]:
    """One side at one size, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    if side.endswith("-add"):
        return measure_add(side, size)
    out: dict[str, Any] = {"side": side, "size": size}
    folder = workdir / f"{side}-{size}"
    if side == "bufconv-resume":
        from bufconv import OnlineBuffer

        started = time.perf_counter()
        buffer = OnlineBuffer(capacity=size, path=workdir / f"bufconv-{size}")
        out["resume_s"] = time.perf_counter() - started
        out["resumed"] = len(buffer)
        return out
    if side == "lerobot-resume":
        from lerobot.datasets import LeRobotDataset
        from lerobot.rl.buffer import ReplayBuffer

        started = time.perf_counter()
        dataset = LeRobotDataset("bench/online", root=workdir / f"lerobot-{size}")
        buffer = ReplayBuffer.from_lerobot_dataset(
            dataset, capacity=size, device="cpu", state_keys=[*CAMERAS, STATE], optimize_memory=True
        )
        out["resume_s"] = time.perf_counter() - started
        out["resumed"] = len(buffer)
        return out
    if side == "bufconv":
        from bufconv import OnlineBuffer

        buffer = OnlineBuffer(capacity=size, path=folder)
    else:
        from lerobot.rl.buffer import ReplayBuffer

        buffer = ReplayBuffer(
            capacity=size, device="cpu", storage_device="cpu", use_drq=False, optimize_memory=True
        )
    pool = _pool()
    before = _rss_mb()  # both allocate their storage at the first add
    out["add_s"] = _add_all(buffer, _stream(pool, size))
    out["rss_mb"] = _rss_mb() - before
    out["bytes_per_transition"] = out["rss_mb"] * 2**20 / size

    def checkpoint() -> float:
        started = time.perf_counter()
        if side == "bufconv":
            buffer.checkpoint()
        else:
            shutil.rmtree(folder, ignore_errors=True)  # as save_training_checkpoint does
            buffer.to_lerobot_dataset(repo_id="bench/online", fps=10, root=folder)
        return time.perf_counter() - started

    out["checkpoint_s"] = checkpoint()
    _add_all(buffer, _stream(pool, MORE, start=size))
    out["checkpoint2_s"] = checkpoint()
    out["disk_mb"] = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    if side == "bufconv":
        buffer.close()
    return out


def _child(side: str, size: int, workdir: Path, timeout: float) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", side, "--sizes", str(size), "--workdir", str(workdir)]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=timeout,
    )
    if done.returncode != 0:
        raise SystemExit(f"measurement {side} {size} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="1000,10000", help="comma-separated buffer sizes")
    parser.add_argument("--workdir", type=Path, default=Path("bench-out/online"))
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.measure:
        print(json.dumps(measure(args.measure, sizes[0], args.workdir)))
        return
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    rows: dict[int, dict[str, Any]] = {}
    for size in sizes:
        row = {side: _child(side, size, args.workdir, args.timeout) for side in ("lerobot", "bufconv")}
        for side in ("lerobot", "bufconv"):
            row[side].update(_child(f"{side}-resume", size, args.workdir, args.timeout))
            row[side].update(_child(f"{side}-add", size, args.workdir, args.timeout))
        rows[size] = row
        mine, theirs = row["bufconv"], row["lerobot"]
        print(f"\n{size:,} transitions (two 128x128 cameras), then {MORE:,} more")
        print(f"  {'':28}{'LeRobot 0.6.1':>16}{'bufconv':>12}{'ratio':>10}")

        for label, key, unit, scale in (
            ("memory per transition", "bytes_per_transition", "KB", 1 / 1024),
            ("add, all transitions", "add_s", "s", 1.0),
            ("first checkpoint", "checkpoint_s", "s", 1.0),
            (f"checkpoint after +{MORE:,}", "checkpoint2_s", "s", 1.0),
            ("resume (fresh process)", "resume_s", "s", 1.0),
            ("on disk", "disk_mb", "MB", 1.0),
        ):
            a, b = theirs[key] * scale, mine[key] * scale
            print(f"  {label:28}{a:>13.3f} {unit:<2}{b:>9.3f} {unit:<2}{a / b:>9.1f}x")
        print("  per add, memory only (ratio: LeRobot time / bufconv time)")
        for label, key in (("add, first fill", "add_fill_ms"), ("add, steady state", "add_steady_ms")):
            a, b = theirs[key], mine[key]
            print(f"  {label:28}{a:>13.4f} ms{b:>9.4f} ms{a / b:>9.2f}x")
        latency = mine["latency"]
        print(
            f"  {'add latency, bufconv':28}p50 {latency['p50_ms']:.4f} ms, p99 {latency['p99_ms']:.4f} ms,"
            f" max {latency['max_ms']:.4f} ms"
        )
    ratios = {
        str(size): {
            "memory_ours_over_lerobot": row["bufconv"]["bytes_per_transition"]
            / row["lerobot"]["bytes_per_transition"],
            "checkpoint_speedup": row["lerobot"]["checkpoint_s"] / row["bufconv"]["checkpoint_s"],
            "checkpoint2_speedup": row["lerobot"]["checkpoint2_s"] / row["bufconv"]["checkpoint2_s"],
            "add_speedup": row["lerobot"]["add_s"] / row["bufconv"]["add_s"],
            "add_fill_speedup": row["lerobot"]["add_fill_ms"] / row["bufconv"]["add_fill_ms"],
            "add_steady_speedup": row["lerobot"]["add_steady_ms"] / row["bufconv"]["add_steady_ms"],
            "resume_s": row["bufconv"]["resume_s"],
            "checkpoint2_s": row["bufconv"]["checkpoint2_s"],
        }
        for size, row in rows.items()
    }
    print("\nratios:", json.dumps(ratios, indent=1))
    (args.workdir / "bench-online.json").write_text(json.dumps({"rows": rows, "ratios": ratios}, indent=1))


if __name__ == "__main__":
    main()
