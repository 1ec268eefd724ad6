#!/usr/bin/env python
"""Benchmark bufconv against LeRobot, side by side, in one run; prints ratios and writes JSON.

    .venv/bin/python scripts/bench.py                 # 4,000 frames, HIL-SERL shape
    .venv/bin/python scripts/bench.py --frames 200    # the small CI configuration
    .venv/bin/python scripts/bench.py --dataset PATH  # an existing dataset

The dataset (unless given) is written with LeRobot's own writer in the HIL-SERL shape: two
128x128 AV1 cameras, 18-d state, 4-d action, reward and done, episodes of 100 frames. Every
measurement runs in a fresh Python process, so imports, page cache of the process and peak RSS
are its own; RSS is reported above the process's baseline after imports. A build with worker
processes reports the peak RSS summed over its process tree (libraries the processes share are
counted once per process: an upper bound). RSS includes file pages the process maps: a warm start maps the cache while
verifying its checksums, so its peak counts those (reclaimable page cache, not allocations).

Measurements:
  lerobot            ReplayBuffer.from_lerobot_dataset (as the learner calls it), then sample(256)
  floor              PyAV decode of every video file once, front to back, to rgb24 (the decoder's limit)
  build_1, build_all bufconv build with 1 worker / all cores (and build_1_progress: with a progress bar;
                     build_1_resize: with --resize RESIZE, LeRobot's antialiased bilinear resize),
                     timed after the imports a build needs (reported apart, as the floor's `import av`)
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
RESIZE = (64, 64)  # build_1_resize: every camera resized while building (bufconv build --resize 64,64)
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


class TreeRss:
    """Samples the RSS of this process plus all its descendants (decoding workers) every 10 ms.

    A child that has not exec'd yet (same command line as its parent) is skipped: between
    fork and exec it shares its parent's pages, and counting them again would double the
    parent. ru_maxrss of children is no better: a child started by fork+exec inherits the
    parent's peak. (PSS would split shared pages exactly, but reading smaps_rollup costs ~2 ms
    a process, a quarter of a core at this rate: it would slow the build it measures.)
    """

    def __init__(self) -> None:
        import threading

        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    @staticmethod
    def tree_mb(pid: int, parent_cmdline: bytes = b"") -> float:
        total = 0.0
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if cmdline == parent_cmdline:
                return 0.0
            with open(f"/proc/{pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children") as f:
                    for child in f.read().split():
                        total += TreeRss.tree_mb(int(child), cmdline)
        except (FileNotFoundError, ProcessLookupError):
            pass
        return total

    def _run(self) -> None:
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, self.tree_mb(os.getpid()))

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return self.peak


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
        for label, threads in (("default_threads", 0), ("one_thread", 1)):
            start = time.perf_counter()
            frames = 0
            for path in files:
                with av.open(path) as container:
                    stream = container.streams.video[0]
                    stream.thread_type = "AUTO"
                    stream.codec_context.thread_count = threads
                    for frame in container.decode(stream):
                        frame.to_ndarray(format="rgb24")
                        frames += 1
            out[f"seconds_{label}"] = time.perf_counter() - start
        # The floor: the faster of FFmpeg's default threading and one thread (faster for small frames).
        out.update(
            seconds=min(out["seconds_default_threads"], out["seconds_one_thread"]),
            frames=frames,
            files=len(files),
        )
    elif name.startswith("build"):
        import bufconv

        progress = name.endswith("progress")
        # Like the floor (timed after `import av`), the build is timed and its memory measured
        # once the process has imported what a build needs; that import is reported apart.
        start = time.perf_counter()
        import av
        import pyarrow.compute
        import pyarrow.parquet  # noqa: F401

        import bufconv.convert.pipeline

        out["import_seconds"] = time.perf_counter() - start
        baseline = _rss_mb()
        # Worker processes: peak RSS summed over the process tree, sampled by a thread (it costs
        # the build a few percent of a core, so a 1-worker build uses the kernel's peak instead).
        tree = TreeRss() if workers > 1 else None
        tree_baseline = TreeRss.tree_mb(os.getpid())
        resize = RESIZE if name.endswith("resize") else None
        result = bufconv.build(
            dataset, cache, image_range=1, workers=workers, force=True, progress=progress, resize=resize
        )
        out.update(
            seconds=result.seconds,
            frames=result.frames,
            file_bytes=result.file_bytes,
            payload_bytes=result.payload_bytes,
            tree_peak_above_baseline_mb=(tree.stop() - tree_baseline) if tree else _peak_mb() - baseline,
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
        "--cache-dir",
        type=Path,
        help="where the cache is written (default: the workdir); e.g. /dev/shm to time builds without the disk",
    )
    parser.add_argument(
        "--no-lerobot",
        action="store_true",
        help="skip LeRobot's conversion (it needs ~1.2 GB of memory per 1,000 frames)",
    )
    parser.add_argument(
        "--repeat", type=int, default=3, help="runs of each build/decode measurement (median reported)"
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
    cache = (args.cache_dir or args.workdir) / f"offline_buffer-{dataset.name}.pt"
    print(f"dataset {dataset}; {cores} cores; {platform.processor() or platform.machine()}", flush=True)

    results: dict[str, Any] = {}
    names = [
        "floor",
        "build_1",
        "build_1_progress",
        "build_1_resize",
        "build_all",
        "warm",
        "sample",
        "iterator",
    ]
    if not args.no_lerobot:
        names.insert(0, "lerobot")
    for name in names:
        repeat = (
            args.repeat
            if name in ("floor", "build_1", "build_1_progress", "build_1_resize", "build_all")
            else 1
        )
        runs = [
            run_measurement(name, args, dataset, cache, cores if name == "build_all" else 1)
            for _ in range(repeat)
        ]
        runs.sort(key=lambda r: r["seconds"])
        results[name] = {**runs[len(runs) // 2], "runs_seconds": [r["seconds"] for r in runs]}

    report = summarize(results, cores)
    path = args.json or args.workdir / f"bench-{report['frames']}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


def summarize(results: dict[str, Any], cores: int) -> dict[str, Any]:
    """Print the table of results and ratios; return everything as one JSON-able dict."""
    build_1, build_all, floor, sample = (
        results["build_1"],
        results["build_all"],
        results["floor"],
        results["sample"],
    )
    lerobot = results.get("lerobot")
    payload_mb, file_mb = build_1["payload_bytes"] / 1e6, build_1["file_bytes"] / 1e6
    ratios: dict[str, float] = {
        "build 1 worker / decode floor": build_1["seconds"] / floor["seconds"],
        "build 1 worker / decode floor with FFmpeg's default threads": build_1["seconds"]
        / floor["seconds_default_threads"],
        f"build {cores} workers / decode floor": build_all["seconds"] / floor["seconds"],
        "build 1 worker with progress bar / quiet": results["build_1_progress"]["seconds"]
        / build_1["seconds"],
        f"build 1 worker with --resize {RESIZE[0]},{RESIZE[1]} / without": results["build_1_resize"][
            "seconds"
        ]
        / build_1["seconds"],
        "build 1 worker peak RSS above baseline / uint8 payload": build_1["peak_above_baseline_mb"]
        / payload_mb,
        f"build {cores} workers peak RSS, all processes / uint8 payload": build_all[
            "tree_peak_above_baseline_mb"
        ]
        / payload_mb,
        "cache file / uint8 payload": file_mb / payload_mb,
        "bytes to the device per batch: float32 / uint8": 4.0,
    }
    if lerobot is not None:
        ratios.update(
            {
                "LeRobot conversion / build 1 worker (speed-up)": lerobot["seconds"] / build_1["seconds"],
                f"LeRobot conversion / build {cores} workers (speed-up)": lerobot["seconds"]
                / build_all["seconds"],
                "build 1 worker peak RSS / LeRobot peak RSS": build_1["peak_above_baseline_mb"]
                / lerobot["peak_above_baseline_mb"],
                "sample f32 with DrQ: bufconv / LeRobot (time)": sample["float32_drq1_ms"]
                / lerobot["sample_float32_drq1_ms"],
                "sample f32 without DrQ: bufconv / LeRobot (time)": sample["float32_drq0_ms"]
                / lerobot["sample_float32_drq0_ms"],
                "GPU learner host work: LeRobot f32 gather / bufconv uint8 gather": lerobot[
                    "sample_float32_drq0_ms"
                ]
                / sample["uint8_drq0_ms"],
            }
        )

    def row(label: str, seconds: float | None, rss: float | None) -> None:
        cell_s = "-" if seconds is None else f"{seconds:.2f}"
        cell_m = "-" if rss is None else f"{rss:,.0f} MB"
        print(f"  {label:52} {cell_s:>9} {cell_m:>16}")

    print(
        f"\n{build_1['frames']:,} frames, uint8 payload {payload_mb:,.1f} MB, cache file {file_mb:,.1f} MB, {cores} cores"
    )
    print(f"  {'':52} {'seconds':>9} {'peak RSS +':>16}")
    row(
        "LeRobot ReplayBuffer.from_lerobot_dataset",
        lerobot and lerobot["seconds"],
        lerobot and lerobot["peak_above_baseline_mb"],
    )
    row(
        "decode floor: PyAV, each file once, to rgb24 (best)",
        floor["seconds"],
        floor["peak_above_baseline_mb"],
    )
    row("  ... with FFmpeg's default threads", floor["seconds_default_threads"], None)
    row("  ... with one decoder thread", floor["seconds_one_thread"], None)
    row("bufconv build, 1 worker", build_1["seconds"], build_1["peak_above_baseline_mb"])
    row(
        "bufconv build, 1 worker, progress bar",
        results["build_1_progress"]["seconds"],
        results["build_1_progress"]["peak_above_baseline_mb"],
    )
    row(
        f"bufconv build, 1 worker, --resize {RESIZE[0]},{RESIZE[1]}",
        results["build_1_resize"]["seconds"],
        results["build_1_resize"]["peak_above_baseline_mb"],
    )
    row(
        f"bufconv build, {cores} workers (RSS of all processes)",
        build_all["seconds"],
        build_all["tree_peak_above_baseline_mb"],
    )
    row("  ... importing what a build needs (once per process)", build_1["import_seconds"], None)
    row(
        "bufconv warm start: load_or_build hit + first sample",
        results["warm"]["seconds"],
        results["warm"]["peak_above_baseline_mb"],
    )
    print(f"\n  sample({BATCH}), median ms            bufconv f32   bufconv uint8   LeRobot f32")
    for drq in (1, 0):
        theirs = lerobot and lerobot[f"sample_float32_drq{drq}_ms"]
        cell = "-" if theirs is None else f"{theirs:.1f}"
        print(
            f"  DrQ {'on ' if drq else 'off'}                            {sample[f'float32_drq{drq}_ms']:10.1f}   {sample[f'uint8_drq{drq}_ms']:12.1f}   {cell:>11}"
        )
    it = results["iterator"]
    print(
        f"\n  async iterator, learner update as long as one sample ({it['sample_ms']:.0f} ms): wait per step "
        f"{it['wait_sleep_ms']:.1f} ms (p90 {it['wait_sleep_p90_ms']:.1f}) with a GPU-like update, "
        f"{it['wait_compute_ms']:.1f} ms (p90 {it['wait_compute_p90_ms']:.1f}) with a CPU-bound one"
    )
    print("\n  ratios")
    for label, value in ratios.items():
        print(f"    {label:66} {value:8.2f}")
    return {
        "frames": build_1["frames"],
        "cores": cores,
        "payload_mb": payload_mb,
        "file_mb": file_mb,
        "results": results,
        "ratios": ratios,
        "machine": {
            "platform": platform.platform(),
            "python": platform.python_version(),
            "processor": platform.processor(),
        },
    }


if __name__ == "__main__":
    main()
