#!/usr/bin/env python
"""The online buffer against LeRobot's, side by side in one run: memory, add, checkpoint, resume.

    .venv/bin/python scripts/bench_online.py                  # 1,000 and 10,000 transitions
    .venv/bin/python scripts/bench_online.py --sizes 100 --commit-seconds 2 --hour-rate 2   # the CI one

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
  background commits
                bufconv only: --commit-seconds of adds paced at 100 a second, per-add latency
                (p50/p99/max) memory only and with commits every second; then checkpoint() with
                commits on (it writes the tail) and without them (all of it)
Once: an hour of one-second commits at --hour-rate transitions a second, simulated without the
waits (the commits and merges the thread makes, 32x32 cameras, capacity 100,000): the segment
files in the folder, and a resume of it in a fresh process.
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


def measure(side: str, size: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """One side at one size, in this (fresh) process."""
    import torch

    torch.set_num_threads(1)
    if side.endswith("-add"):
        return measure_add(side, size)
    if side == "bufconv-commits":
        return measure_commits(size, workdir, args.commit_seconds)
    if side == "bufconv-hour":
        return measure_hour(workdir, args.hour_rate)
    if side == "bufconv-hour-resume":
        from bufconv import OnlineBuffer

        started = time.perf_counter()
        buffer = OnlineBuffer(capacity=100_000, path=workdir / "hour")
        return {"resume_s": time.perf_counter() - started, "resumed": len(buffer), "lost": buffer.lost}
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

        # commits only at checkpoint(), as LeRobot's: both sides write all N at the first one
        buffer = OnlineBuffer(capacity=size, path=folder, commit_interval_s=None)
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


# ---- background commits (issue 18) ----------------------------------------------------------

RATE = 100  # transitions a second, as a learner fed by a few actors at 10-30 fps
HOUR_S = 3600


def _paced_latencies(buffer: Any, transitions: Any, rate: float) -> list[float]:
    """Each add's latency (ms), adds paced at `rate` a second (so background commits interleave)."""
    period = 1.0 / rate
    due = time.perf_counter()
    out = []
    for t in transitions:
        now = time.perf_counter()
        if now < due:
            time.sleep(due - now)
        started = time.perf_counter_ns()
        buffer.add(**t)
        out.append((time.perf_counter_ns() - started) / 1e6)
        due += period
    return out


def _percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "max_ms": ordered[-1]}


def measure_commits(size: int, workdir: Path, seconds: float) -> dict[str, Any]:
    """bufconv at RATE adds a second for `seconds`: per-add latency with background commits on and
    memory only, then the cost of a checkpoint (the tail) with them on, and without them (all)."""
    import torch

    from bufconv import OnlineBuffer

    torch.set_num_threads(1)
    pool = _pool()
    count = int(RATE * seconds)
    out: dict[str, Any] = {"rate": RATE, "adds": count}
    memory = OnlineBuffer(capacity=size)
    out["memory_only"] = _percentiles(_paced_latencies(memory, _stream(pool, count), RATE))
    del memory
    background = OnlineBuffer(capacity=size, path=workdir / f"commits-{size}", commit_interval_s=1.0)
    out["background"] = _percentiles(_paced_latencies(background, _stream(pool, count), RATE))
    started = time.perf_counter()
    result = background.checkpoint()
    out["checkpoint_background_s"] = time.perf_counter() - started
    out["checkpoint_background_transitions"] = result.transitions
    background.close()
    plain = OnlineBuffer(capacity=size, path=workdir / f"plain-{size}", commit_interval_s=None)
    _add_all(plain, _stream(pool, count))
    started = time.perf_counter()
    out["checkpoint_plain_transitions"] = plain.checkpoint().transitions
    out["checkpoint_plain_s"] = time.perf_counter() - started
    plain.close()
    return out


def measure_hour(workdir: Path, rate: int) -> dict[str, Any]:
    """An hour of one-second commits at `rate` transitions a second, simulated without the waits:
    the commits and merges the thread would make, one per `rate` adds (32x32 cameras, so the hour's
    360,000 transitions fit a small disk), capacity LeRobot's 100,000. Then a fresh resume."""
    import torch

    from bufconv import OnlineBuffer

    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    small = [
        {**{key: torch.randint(0, 256, (1, 3, 32, 32), generator=g).float() / 255 for key in CAMERAS},
         STATE: torch.randn((1, 18), generator=g)}
        for _ in range(64)
    ]  # fmt: skip
    folder = workdir / "hour"
    buffer = OnlineBuffer(capacity=100_000, path=folder, commit_interval_s=None)
    most_files = 0
    started = time.perf_counter()
    for second in range(HOUR_S):
        _add_all(buffer, _stream(small, rate, start=second * rate))
        buffer.checkpoint()
        buffer.commits.merge()
        most_files = max(most_files, len(list(folder.glob("seg-*.pt"))))
    out = {
        "commits": HOUR_S,
        "transitions": HOUR_S * rate,
        "kept": len(buffer),
        "files": len(list(folder.glob("seg-*.pt"))),
        "most_files": most_files,
        "disk_mb": sum(p.stat().st_size for p in folder.glob("seg-*.pt")) / 1e6,
        "simulated_s": time.perf_counter() - started,
    }
    buffer.close()
    return out


def _child(side: str, size: int, workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", side, "--sizes", str(size), "--workdir", str(workdir),
               "--commit-seconds", str(args.commit_seconds), "--hour-rate", str(args.hour_rate)]  # fmt: skip
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=args.timeout,
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
    parser.add_argument(
        "--commit-seconds",
        type=float,
        default=10.0,
        help=f"seconds of adds at {RATE}/s for the commit latencies",
    )
    parser.add_argument(
        "--hour-rate", type=int, default=100, help="transitions a second in the simulated hour of commits"
    )
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    if args.measure:
        print(json.dumps(measure(args.measure, sizes[0], args.workdir, args)))
        return
    shutil.rmtree(args.workdir, ignore_errors=True)
    args.workdir.mkdir(parents=True)
    rows: dict[int, dict[str, Any]] = {}
    for size in sizes:
        row = {side: _child(side, size, args.workdir, args) for side in ("lerobot", "bufconv")}
        for side in ("lerobot", "bufconv"):
            row[side].update(_child(f"{side}-resume", size, args.workdir, args))
            row[side].update(_child(f"{side}-add", size, args.workdir, args))
        row["bufconv"]["commits"] = _child("bufconv-commits", size, args.workdir, args)
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
        commits = mine["commits"]
        print(
            f"  background commits, bufconv: {commits['adds']:,} adds at {commits['rate']}/s, latency per add"
        )
        for label, key in (("memory only", "memory_only"), ("commits every 1 s", "background")):
            q = commits[key]
            print(f"  {label:28}p50 {q['p50_ms']:.4f} ms, p99 {q['p99_ms']:.4f} ms, max {q['max_ms']:.4f} ms")
        print(
            f"  {'checkpoint, commits on':28}{commits['checkpoint_background_s']:.4f} s "
            f"({commits['checkpoint_background_transitions']} transitions: the tail); without them "
            f"{commits['checkpoint_plain_s']:.4f} s ({commits['checkpoint_plain_transitions']:,})"
        )
    hour = _child("bufconv-hour", 0, args.workdir, args)
    hour.update(_child("bufconv-hour-resume", 0, args.workdir, args))
    print(
        f"\nan hour of one-second commits at {args.hour_rate}/s, simulated ({hour['transitions']:,} transitions, "
        f"two 32x32 cameras, capacity 100,000): {hour['files']} segment files at the end "
        f"(at most {hour['most_files']}), {hour['disk_mb']:.0f} MB; resume (fresh process) "
        f"{hour['resume_s']:.2f} s for {hour['resumed']:,} transitions"
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
    (args.workdir / "bench-online.json").write_text(
        json.dumps({"rows": rows, "ratios": ratios, "hour": hour}, indent=1)
    )


if __name__ == "__main__":
    main()
