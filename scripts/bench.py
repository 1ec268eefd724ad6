#!/usr/bin/env python
"""Benchmark bufconv against LeRobot, side by side, in one run; prints ratios and writes JSON.

    .venv/bin/python scripts/bench.py                 # 4,000 frames, HIL-SERL shape
    .venv/bin/python scripts/bench.py --frames 200    # the small CI configuration
    .venv/bin/python scripts/bench.py --dataset PATH  # an existing dataset

The dataset (unless given) is written with LeRobot's own writer in the HIL-SERL shape: two
128x128 AV1 cameras, 18-d state, 4-d action, reward and done, episodes of 100 frames. Every
measurement runs in a fresh Python process, so imports, page cache of the process and peak RSS
are its own; RSS is reported above the process's baseline after imports.

Measurements:
  lerobot            ReplayBuffer.from_lerobot_dataset (as the learner calls it), then sample(256)
  floor              PyAV decode of every video file once, front to back, to rgb24 (the decoder's limit)
  build_1, build_all bufconv build with 1 worker / all cores (and build_1_progress: with a progress bar)
  warm               load_or_build on a fresh cache (a hit) plus the first sample(256)
  sample             bufconv sample(256): float32 (CPU learner) and uint8 (GPU learner's host side)
  iterator           get_iterator(async_prefetch=True) wait per step, with an update as long as sampling
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

EPISODE_LENGTH = 100
CAMERAS = ("observation.images.front", "observation.images.wrist")
IMAGE = (128, 128)
BATCH = 256


# ---- measuring helpers (run inside the fresh processes) -------------------------------------


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _rss_mb() -> float:
    """Current RSS, after resetting the peak to it: imports' transient peaks must not count."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
    return _status_mb("VmRSS")


def _peak_mb() -> float:
    return _status_mb("VmHWM")


def _children_peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024


def _timed(fn: Any, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def measure(name: str, dataset: str, cache: str, workers: int) -> dict[str, Any]:
    """One measurement; runs in its own process."""
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    out: dict[str, Any] = {"name": name}
    if name == "floor":
        import av

        baseline = _rss_mb()
        files = sorted(glob.glob(os.path.join(dataset, "videos", "**", "*.mp4"), recursive=True))
        start = time.perf_counter()
        frames = 0
        for path in files:
            with av.open(path) as container:
                stream = container.streams.video[0]
                stream.thread_type = "AUTO"
                for frame in container.decode(stream):
                    frame.to_ndarray(format="rgb24")
                    frames += 1
        out.update(seconds=time.perf_counter() - start, frames=frames, files=len(files))
    elif name.startswith("build"):
        import bufconv

        baseline = _rss_mb()
        progress = name.endswith("progress")
        result = bufconv.build(dataset, cache, image_range=1, workers=workers, force=True, progress=progress)
        out.update(
            seconds=result.seconds,
            frames=result.frames,
            file_bytes=result.file_bytes,
            payload_bytes=result.payload_bytes,
            children_peak_mb=_children_peak_mb(),
        )
    elif name == "warm":
        import bufconv

        baseline = _rss_mb()
        start = time.perf_counter()
        buffer = bufconv.load_or_build(dataset, cache, image_range=1, workers=workers)
        loaded = time.perf_counter() - start
        buffer.sample(BATCH)
        out.update(seconds=time.perf_counter() - start, load_seconds=loaded, status=buffer.status)
    elif name == "sample":
        import bufconv

        baseline = _rss_mb()
        buffer = bufconv.open_buffer(cache, verify_payload=False, generator=torch.Generator().manual_seed(0))
        for dtype_name, dtype in (("float32", torch.float32), ("uint8", torch.uint8)):
            for drq in (True, False):
                buffer.use_drq = drq
                buffer.sample(BATCH, image_dtype=dtype)  # warm up
                times = _timed(lambda dtype=dtype: buffer.sample(BATCH, image_dtype=dtype), 30)
                out[f"{dtype_name}_drq{int(drq)}_ms"] = 1000 * statistics.median(times)
        buffer.use_drq = True
        batch = buffer.sample(BATCH, image_dtype=torch.uint8)
        out["uint8_batch_bytes"] = sum(
            v.numel() * v.element_size() for v in [*batch["state"].values(), *batch["next_state"].values()]
        )
        out["seconds"] = 0.0
    elif name == "iterator":
        import bufconv

        baseline = _rss_mb()
        buffer = bufconv.open_buffer(cache, verify_payload=False, generator=torch.Generator().manual_seed(0))
        buffer.sample(BATCH)
        sample_s = statistics.median(_timed(lambda: buffer.sample(BATCH), 10))
        for kind in ("sleep", "compute"):
            iterator = buffer.get_iterator(BATCH, async_prefetch=True, queue_size=2)
            next(iterator)
            waits = []
            for _ in range(40):
                start = time.perf_counter()
                next(iterator)
                waits.append(time.perf_counter() - start)
                _update(kind, sample_s)
            iterator.close()
            out[f"wait_{kind}_ms"] = 1000 * statistics.mean(waits)
            out[f"wait_{kind}_p90_ms"] = 1000 * float(np.percentile(waits, 90))
        out.update(sample_ms=1000 * sample_s, seconds=0.0)
    elif name == "lerobot":
        from lerobot.datasets import LeRobotDataset
        from lerobot.rl.buffer import ReplayBuffer

        baseline = _rss_mb()
        start = time.perf_counter()
        ds = LeRobotDataset("bench/hilserl", root=dataset, video_backend="pyav")
        keys = [k for k in ds.meta.features if k.startswith("observation.")]
        # As the learner's initialize_offline_replay_buffer calls it.
        buffer = ReplayBuffer.from_lerobot_dataset(
            ds, device="cpu", state_keys=keys, storage_device="cpu", optimize_memory=True, capacity=len(ds)
        )
        out.update(seconds=time.perf_counter() - start, frames=len(ds))
        for drq in (True, False):
            buffer.use_drq = drq
            buffer.sample(BATCH)  # warm up (compiles the DrQ shift on first use)
            out[f"sample_float32_drq{int(drq)}_ms"] = 1000 * statistics.median(
                _timed(lambda: buffer.sample(BATCH), 20)
            )
    else:
        raise SystemExit(f"unknown measurement {name}")
    out["baseline_rss_mb"] = baseline
    out["peak_rss_mb"] = _peak_mb()
    out["peak_above_baseline_mb"] = _peak_mb() - baseline
    return out


def _update(kind: str, seconds: float) -> None:
    """Stand-in for a learner's update that takes as long as sampling does."""
    if kind == "sleep":  # a GPU learner: the host mostly waits on the device
        time.sleep(seconds)
        return
    import torch

    end = time.perf_counter() + seconds  # a CPU learner: busy with torch math
    a = torch.randn(256, 256)
    while time.perf_counter() < end:
        a = torch.tanh(a @ a.T / 256)


# ---- orchestration ----------------------------------------------------------------------------


def make_dataset(root: Path, frames: int) -> None:
    """The benchmark dataset, written by LeRobot's own writer (HIL-SERL shape)."""
    import numpy as np
    from lerobot.datasets import LeRobotDataset

    features: dict[str, Any] = {
        k: {"dtype": "video", "shape": (*IMAGE, 3), "names": ["height", "width", "channels"]} for k in CAMERAS
    }
    features.update(
        {
            "observation.state": {"dtype": "float32", "shape": (18,), "names": None},
            "action": {"dtype": "float32", "shape": (4,), "names": None},
            "next.reward": {"dtype": "float32", "shape": (1,), "names": None},
            "next.done": {"dtype": "bool", "shape": (1,), "names": None},
            "complementary_info.discrete_penalty": {"dtype": "float32", "shape": (1,), "names": None},
        }
    )
    dataset = LeRobotDataset.create(
        repo_id="bench/hilserl", fps=10, features=features, root=root, use_videos=True, image_writer_threads=4
    )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : IMAGE[0], 0 : IMAGE[1]]
    written = 0
    episode = 0
    while written < frames:
        length = min(EPISODE_LENGTH, frames - written)
        for i in range(length):
            front = np.stack([(xx + 3 * i + episode) % 256, (2 * yy + i) % 256, (xx + yy) % 256], -1).astype(
                np.uint8
            )
            front = np.clip(front.astype(np.int16) + rng.integers(-10, 11, front.shape), 0, 255).astype(
                np.uint8
            )
            dataset.add_frame(
                {
                    CAMERAS[0]: front,
                    CAMERAS[1]: front[::-1, ::-1].copy(),
                    "observation.state": rng.standard_normal(18).astype(np.float32),
                    "action": rng.standard_normal(4).astype(np.float32),
                    "next.reward": np.array([float(i == length - 1)], np.float32),
                    "next.done": np.array([i == length - 1]),
                    "complementary_info.discrete_penalty": np.zeros(1, np.float32),
                    "task": "pick the cube",
                }
            )
        dataset.save_episode()
        written += length
        episode += 1
    dataset.finalize()


def run_measurement(
    name: str, args: argparse.Namespace, dataset: Path, cache: Path, workers: int
) -> dict[str, Any]:
    command = [
        sys.executable,
        __file__,
        "--measure",
        name,
        "--dataset",
        str(dataset),
        "--cache",
        str(cache),
        "--workers",
        str(workers),
    ]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=args.timeout)
    if done.returncode != 0:
        raise SystemExit(f"measurement {name} failed:\n{done.stderr[-3000:]}")
    result = json.loads(done.stdout.strip().splitlines()[-1])
    print(
        f"  {name:<18} {result['seconds']:8.2f} s   peak RSS +{result['peak_above_baseline_mb']:8.1f} MB",
        flush=True,
    )
    return result


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=4000, help="frames in the generated dataset")
    parser.add_argument("--dataset", type=Path, help="use this dataset instead of generating one")
    parser.add_argument(
        "--workdir", type=Path, default=Path("bench-out"), help="where datasets and caches go"
    )
    parser.add_argument(
        "--json", type=Path, help="write results here (default: <workdir>/bench-<frames>.json)"
    )
    parser.add_argument(
        "--no-lerobot",
        action="store_true",
        help="skip LeRobot's conversion (it needs ~1.8 GB per 1,000 frames)",
    )
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    parser.add_argument("--cache", help=argparse.SUPPRESS)
    parser.add_argument("--workers", type=int, default=1, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.measure:
        print(json.dumps(measure(args.measure, str(args.dataset), args.cache, args.workers)))
        return

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    args.workdir.mkdir(parents=True, exist_ok=True)
    dataset = args.dataset
    if dataset is None:
        dataset = args.workdir / f"hilserl-{args.frames}"
        if not (dataset / "meta" / "info.json").is_file():
            shutil.rmtree(dataset, ignore_errors=True)
            print(f"writing a {args.frames}-frame dataset with LeRobot's writer -> {dataset}", flush=True)
            make_dataset(dataset, args.frames)
    cache = args.workdir / f"offline_buffer-{dataset.name}.pt"
    print(f"dataset {dataset}; {cores} cores; {platform.processor() or platform.machine()}", flush=True)

    results: dict[str, Any] = {}
    names = ["floor", "build_1", "build_1_progress", "build_all", "warm", "sample", "iterator"]
    if not args.no_lerobot:
        names.insert(0, "lerobot")
    for name in names:
        results[name] = run_measurement(name, args, dataset, cache, cores if name == "build_all" else 1)

    payload_mb = results["build_1"]["payload_bytes"] / 1e6
    file_mb = results["build_1"]["file_bytes"] / 1e6
    frames = results["build_1"]["frames"]
    ratios: dict[str, float | None] = {
        "build_1 / floor": results["build_1"]["seconds"] / results["floor"]["seconds"],
        "build_all / floor": results["build_all"]["seconds"] / results["floor"]["seconds"],
        "build_1 with progress / quiet": results["build_1_progress"]["seconds"]
        / results["build_1"]["seconds"],
        "build peak RSS above baseline / uint8 payload": results["build_1"]["peak_above_baseline_mb"]
        / payload_mb,
        "cache file / uint8 payload": file_mb / payload_mb,
    }
    if "lerobot" in results:
        lr = results["lerobot"]
        ratios.update(
            {
                "LeRobot / build_1 (speed-up)": lr["seconds"] / results["build_1"]["seconds"],
                "LeRobot / build_all (speed-up)": lr["seconds"] / results["build_all"]["seconds"],
                "build_1 peak RSS / LeRobot peak RSS": results["build_1"]["peak_above_baseline_mb"]
                / lr["peak_above_baseline_mb"],
                "sample f32 DrQ: bufconv / LeRobot": results["sample"]["float32_drq1_ms"]
                / lr["sample_float32_drq1_ms"],
                "sample f32 no DrQ: bufconv / LeRobot": results["sample"]["float32_drq0_ms"]
                / lr["sample_float32_drq0_ms"],
                "sample uint8 host work: LeRobot f32 / bufconv (x cheaper)": lr["sample_float32_drq0_ms"]
                / results["sample"]["uint8_drq0_ms"],
            }
        )
    float_bytes = results["sample"]["uint8_batch_bytes"] * 4
    ratios["bytes to device: float32 / uint8"] = float_bytes / results["sample"]["uint8_batch_bytes"]

    print()
    print(f"{frames:,} frames, uint8 payload {payload_mb:,.1f} MB, cache file {file_mb:,.1f} MB")
    rows = [
        (
            "LeRobot from_lerobot_dataset",
            results.get("lerobot", {}).get("seconds"),
            results.get("lerobot", {}).get("peak_above_baseline_mb"),
        ),
        (
            "decode floor (PyAV, 1 process)",
            results["floor"]["seconds"],
            results["floor"]["peak_above_baseline_mb"],
        ),
        (
            "bufconv build, 1 worker",
            results["build_1"]["seconds"],
            results["build_1"]["peak_above_baseline_mb"],
        ),
        (
            "bufconv build, 1 worker + progress",
            results["build_1_progress"]["seconds"],
            results["build_1_progress"]["peak_above_baseline_mb"],
        ),
        (
            f"bufconv build, {cores} workers",
            results["build_all"]["seconds"],
            results["build_all"]["peak_above_baseline_mb"],
        ),
        (
            "bufconv warm start (hit + 1st sample)",
            results["warm"]["seconds"],
            results["warm"]["peak_above_baseline_mb"],
        ),
    ]
    print(f"{'':40} {'seconds':>9} {'peak RSS above baseline':>24}")
    for label, seconds, rss in rows:
        print(
            f"{label:40} {'-' if seconds is None else f'{seconds:9.2f}':>9} {'-' if rss is None else f'{rss:20.1f} MB':>24}"
        )
    s = results["sample"]
    print(f"\nsample({BATCH}) median ms       bufconv f32   bufconv uint8   LeRobot f32")
    for drq in (1, 0):
        lr_ms = results.get("lerobot", {}).get(f"sample_float32_drq{drq}_ms")
        print(
            f"  DrQ {'on ' if drq else 'off'}                    {s[f'float32_drq{drq}_ms']:10.1f}   {s[f'uint8_drq{drq}_ms']:12.1f}   {'-' if lr_ms is None else f'{lr_ms:10.1f}'}"
        )
    it = results["iterator"]
    print(
        f"\nasync iterator, update as long as sampling ({it['sample_ms']:.1f} ms): wait per step "
        f"{it['wait_sleep_ms']:.2f} ms (GPU-like update, p90 {it['wait_sleep_p90_ms']:.2f}), "
        f"{it['wait_compute_ms']:.2f} ms (CPU-bound update, p90 {it['wait_compute_p90_ms']:.2f})"
    )
    print("\nratios")
    for label, value in ratios.items():
        print(f"  {label:58} {'-' if value is None else f'{value:8.2f}'}")
    report = {
        "frames": frames,
        "cores": cores,
        "payload_mb": payload_mb,
        "file_mb": file_mb,
        "results": results,
        "ratios": ratios,
        "machine": {"platform": platform.platform(), "python": platform.python_version()},
    }
    path = args.json or args.workdir / f"bench-{frames}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
