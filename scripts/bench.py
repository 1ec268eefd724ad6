#!/usr/bin/env python
"""Benchmark bufconv against LeRobot, side by side, in one run; prints ratios and writes JSON.

    .venv/bin/python scripts/bench.py                 # 4,000 frames, HIL-SERL shape
    .venv/bin/python scripts/bench.py --frames 200    # the small CI configuration
    .venv/bin/python scripts/bench.py --dataset PATH  # an existing dataset
    .venv/bin/python scripts/bench.py --rgbd-only --rgbd-frames 3000   # the RGB-D build only

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

RGB-D (issue 20; --rgbd-frames, default --frames; 0 skips it): a second dataset, also written by
LeRobot's writer, with the same two RGB cameras and one 128x128 depth camera (uint16 mm from a
RealSense-like scene, recorded as LeRobot records depth: lossless hevc gray12le of 12-bit log
codes), episodes of 100 frames (a shorter tail joins the last one: LeRobot's writer fails on hevc
depth episodes under 3 frames). Its payload is the uint8 RGB bytes plus 2 bytes a depth pixel.
  rgbd_lerobot       ReplayBuffer.from_lerobot_dataset on it, then sample(256) without DrQ (with DrQ,
                     LeRobot 0.6.1's sample fails on a 1-channel image beside 3-channel ones: recorded)
  rgbd_floor         PyAV decode of every video file once: RGB files to rgb24, depth files to gray12le
                     (LeRobot's depth read), each kind timed apart; the floor takes each kind's faster
                     threading
  rgbd_build_1, rgbd_build_all   bufconv build, 1 worker / all cores (checked to hold the depth keys)
  rgbd_sample        bufconv sample(256), as `sample`
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
DEPTH_CAMERA = "observation.images.front_depth"
MIN_DEPTH_EPISODE = 3  # LeRobot 0.6.1's writer fails (mux EINVAL) on a hevc depth episode of fewer frames


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


def _depth_keys(dataset: str | Path) -> list[str]:
    """The dataset's depth features (LeRobot's `info.is_depth_map`), from its meta/info.json."""
    features = json.loads((Path(dataset) / "meta" / "info.json").read_text())["features"]
    return sorted(k for k, f in features.items() if (f.get("info") or {}).get("is_depth_map"))


def _decode_files(files: list[str], threads: int, depth_keys: list[str]) -> tuple[dict[str, float], int]:
    """Decode every file once, front to back, as LeRobot's PyAV reader converts it: seconds by kind."""
    import av

    seconds = {"rgb": 0.0, "depth": 0.0}
    frames = 0
    for path in files:
        kind = "depth" if any(f"{os.sep}{k}{os.sep}" in path for k in depth_keys) else "rgb"
        start = time.perf_counter()
        with av.open(path) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            stream.codec_context.thread_count = threads
            for frame in container.decode(stream):
                frame.to_ndarray(format="gray12le" if kind == "depth" else "rgb24")
                frames += 1
        seconds[kind] += time.perf_counter() - start
    return seconds, frames


def measure(name: str, dataset: str, cache: str, workers: int) -> dict[str, Any]:
    """One measurement; runs in its own process. `rgbd_<name>` is `<name>` on the RGB-D dataset."""
    import numpy as np
    import torch

    torch.set_num_threads(os.cpu_count() or 1)
    out: dict[str, Any] = {"name": name}
    rgbd = name.startswith("rgbd_")
    depth_keys = _depth_keys(dataset)
    if rgbd and not depth_keys:
        raise SystemExit(f"{name}: {dataset} has no depth feature (info.is_depth_map)")
    name = name.removeprefix("rgbd_")
    if name == "floor":
        import av  # before the baseline, as a build imports it

        baseline = _rss_mb()
        files = sorted(glob.glob(os.path.join(dataset, "videos", "**", "*.mp4"), recursive=True))
        for label, threads in (("default_threads", 0), ("one_thread", 1)):
            start = time.perf_counter()
            by_kind, frames = _decode_files(files, threads, depth_keys)
            out[f"seconds_{label}"] = time.perf_counter() - start
            if depth_keys:
                out.update({f"seconds_{kind}_{label}": s for kind, s in by_kind.items()})
        # The floor: the faster of FFmpeg's default threading and one thread (faster for small frames).
        out.update(
            seconds=min(out["seconds_default_threads"], out["seconds_one_thread"]),
            frames=frames,
            files=len(files),
        )
        if depth_keys:  # each kind with its faster threading (hevc and AV1 need not agree)
            for kind in ("rgb", "depth"):
                out[f"seconds_{kind}"] = min(
                    out[f"seconds_{kind}_default_threads"], out[f"seconds_{kind}_one_thread"]
                )
            out["seconds"] = min(out["seconds"], out["seconds_rgb"] + out["seconds_depth"])
    elif name.startswith("build"):
        import bufconv

        progress = name.endswith("progress")
        # Like the floor (timed after `import av`), the build is timed and its memory measured
        # once the process has imported what a build needs; that import is reported apart.
        start = time.perf_counter()
        import av  # noqa: F401
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
        if rgbd:
            out.update(_built_depth(result, depth_keys))
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
        import logging

        from lerobot.datasets import LeRobotDataset
        from lerobot.rl.buffer import ReplayBuffer

        logging.getLogger("libav").setLevel(logging.ERROR)

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
            try:
                buffer.sample(BATCH)  # warm up (compiles the DrQ shift on first use)
            except RuntimeError as error:
                if not rgbd:
                    raise
                # LeRobot 0.6.1's DrQ concatenates every image key along the batch: a 1-channel
                # depth map beside 3-channel cameras does not concatenate.
                out[f"sample_float32_drq{int(drq)}_error"] = str(error).splitlines()[0]
                continue
            out[f"sample_float32_drq{int(drq)}_ms"] = 1000 * statistics.median(
                _timed(lambda: buffer.sample(BATCH), 20)
            )
    else:
        raise SystemExit(f"unknown measurement {name}")
    out["baseline_rss_mb"] = baseline
    out["peak_rss_mb"] = _peak_mb()
    out["peak_above_baseline_mb"] = _peak_mb() - baseline
    return out


def _built_depth(result: Any, depth_keys: list[str]) -> dict[str, Any]:
    """What an RGB-D build stored, from its header; refuses a cache without the dataset's depth keys."""
    import math

    meta = result.cache.meta
    stored = meta.get("depth") or {}
    built = meta["keys"].get("depth") or []
    if (
        sorted(built) != depth_keys
        or sorted(stored) != depth_keys
        or sorted(result.depth_units) != depth_keys
    ):
        raise RuntimeError(
            f"the RGB-D build did not store the dataset's depth keys {depth_keys}: header keys {built}, "
            f"header depth {sorted(stored)}, depth_units {result.depth_units}"
        )
    sizes = {"uint8": 1, "int16": 2, "float32": 4}
    cameras: dict[str, Any] = {}
    rgb_bytes = depth_bytes = 0
    for key in [*meta["keys"]["images"], *built]:
        tensor = meta["tensors"][key]
        size = math.prod(tensor["shape"]) * sizes[tensor["dtype"]]
        cameras[key] = {"dtype": tensor["dtype"], "shape": tensor["shape"]}
        if key in stored:
            cameras[key].update(stored=stored[key]["stored"], unit=stored[key]["unit"])
            depth_bytes += size
        else:
            rgb_bytes += size
    return {
        "rgb_bytes": rgb_bytes,
        "depth_bytes": depth_bytes,
        "cameras": cameras,
        "depth_units": dict(result.depth_units),
    }


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


def episode_lengths(frames: int, minimum: int = 1) -> list[int]:
    """Episodes of EPISODE_LENGTH frames; a tail shorter than `minimum` joins the last episode."""
    lengths = [EPISODE_LENGTH] * (frames // EPISODE_LENGTH)
    tail = frames % EPISODE_LENGTH
    if tail and tail < minimum and lengths:
        lengths[-1] += tail
    elif tail:
        lengths.append(tail)
    if not lengths or lengths[-1] < minimum:
        raise SystemExit(f"a dataset of {frames} frames: at least {minimum} frames are needed")
    return lengths


def depth_frame(rng: Any, i: int, yy: Any, xx: Any) -> Any:
    """A RealSense-like depth frame in uint16 mm: a tilted wall 1.5-2.8 m away, a box ~0.6 m away
    moving across it, +-3 mm of noise and 2% of pixels with no return (0)."""
    import numpy as np

    depth = 1500 + 8 * yy + 2 * xx
    x0 = (4 * i) % (IMAGE[1] - 32)
    depth[40:80, x0 : x0 + 32] = 600 + 3 * i
    depth = depth + rng.integers(-3, 4, depth.shape)
    depth[rng.random(depth.shape) < 0.02] = 0
    return depth.astype(np.uint16)[:, :, None]


def make_dataset(root: Path, frames: int, *, depth: bool = False) -> None:
    """The benchmark dataset, written by LeRobot's own writer (HIL-SERL shape); with `depth`, a
    depth camera beside the two RGB ones, which LeRobot records as hevc gray12le video."""
    import logging

    import numpy as np
    from lerobot.datasets import LeRobotDataset

    logging.getLogger("libav").setLevel(logging.ERROR)
    features: dict[str, Any] = {
        k: {"dtype": "video", "shape": (*IMAGE, 3), "names": ["height", "width", "channels"]} for k in CAMERAS
    }
    if depth:
        features[DEPTH_CAMERA] = {
            "dtype": "video",
            "shape": (*IMAGE, 1),
            "names": ["height", "width", "channels"],
            "info": {"is_depth_map": True},
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
        repo_id="bench/rgbd" if depth else "bench/hilserl",
        fps=10,
        features=features,
        root=root,
        use_videos=True,
        image_writer_threads=4,
    )
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0 : IMAGE[0], 0 : IMAGE[1]]
    for episode, length in enumerate(episode_lengths(frames, MIN_DEPTH_EPISODE if depth else 1)):
        for i in range(length):
            front = np.stack([(xx + 3 * i + episode) % 256, (2 * yy + i) % 256, (xx + yy) % 256], -1).astype(
                np.uint8
            )
            front = np.clip(front.astype(np.int16) + rng.integers(-10, 11, front.shape), 0, 255).astype(
                np.uint8
            )
            frame = {
                CAMERAS[0]: front,
                CAMERAS[1]: front[::-1, ::-1].copy(),
                "observation.state": rng.standard_normal(18).astype(np.float32),
                "action": rng.standard_normal(4).astype(np.float32),
                "next.reward": np.array([float(i == length - 1)], np.float32),
                "next.done": np.array([i == length - 1]),
                "complementary_info.discrete_penalty": np.zeros(1, np.float32),
                "task": "pick the cube",
            }
            if depth:
                frame[DEPTH_CAMERA] = depth_frame(rng, i, yy, xx)
            dataset.add_frame(frame)
        dataset.save_episode()
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
        help="skip LeRobot's conversions (they need ~1.2 GB of memory per 1,000 frames, ~1.5 GB with depth)",
    )
    parser.add_argument(
        "--rgbd-frames",
        type=int,
        help="frames in the generated RGB-D dataset (two RGB cameras, one depth camera; default: --frames; 0: no RGB-D)",
    )
    parser.add_argument("--rgbd-dataset", type=Path, help="use this RGB-D dataset instead of generating one")
    parser.add_argument(
        "--rgbd-only", action="store_true", help="only the RGB-D measurements (none on the RGB dataset)"
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
    rgbd_frames = args.frames if args.rgbd_frames is None else args.rgbd_frames
    rgbd_dataset = args.rgbd_dataset
    if rgbd_dataset is None and rgbd_frames > 0:
        rgbd_dataset = args.workdir / f"rgbd-{rgbd_frames}"
    if args.rgbd_only and rgbd_dataset is None:
        raise SystemExit("--rgbd-only with no RGB-D dataset (--rgbd-frames 0)")

    report: dict[str, Any] = {}
    if not args.rgbd_only:
        dataset = args.dataset
        if dataset is None:
            dataset = args.workdir / f"hilserl-{args.frames}"
            if not (dataset / "meta" / "info.json").is_file():
                shutil.rmtree(dataset, ignore_errors=True)
                print(f"writing a {args.frames}-frame dataset with LeRobot's writer -> {dataset}", flush=True)
                make_dataset(dataset, args.frames)
        cache = (args.cache_dir or args.workdir) / f"offline_buffer-{dataset.name}.pt"
        print(f"dataset {dataset}; {cores} cores; {platform.processor() or platform.machine()}", flush=True)

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
        results = run_all(names, args, dataset, cache, cores)
        report = summarize(results, cores)

    if rgbd_dataset is not None:
        if args.rgbd_dataset is None and not (rgbd_dataset / "meta" / "info.json").is_file():
            shutil.rmtree(rgbd_dataset, ignore_errors=True)
            print(
                f"\nwriting a {rgbd_frames}-frame RGB-D dataset with LeRobot's writer -> {rgbd_dataset}",
                flush=True,
            )
            make_dataset(rgbd_dataset, rgbd_frames, depth=True)
        cache = (args.cache_dir or args.workdir) / f"offline_buffer-{rgbd_dataset.name}.pt"
        print(f"\nRGB-D dataset {rgbd_dataset}; {cores} cores", flush=True)
        names = ["rgbd_floor", "rgbd_build_1", "rgbd_build_all", "rgbd_sample"]
        if not args.no_lerobot:
            names.insert(0, "rgbd_lerobot")
        rgbd = summarize_rgbd(run_all(names, args, rgbd_dataset, cache, cores), cores)
        if args.rgbd_only:
            report = {"frames": rgbd["frames"], "cores": cores, "machine": _machine()}
        report["rgbd"] = rgbd

    default = f"bench-rgbd-{report['frames']}.json" if args.rgbd_only else f"bench-{report['frames']}.json"
    path = args.json or args.workdir / default
    path.write_text(json.dumps(report, indent=2))
    print(f"\nwrote {path}")


#: Measurements repeated --repeat times (the median reported); the others run once.
REPEATED = ("floor", "build_1", "build_1_progress", "build_1_resize", "build_all")


def run_all(
    names: list[str], args: argparse.Namespace, dataset: Path, cache: Path, cores: int
) -> dict[str, Any]:
    results: dict[str, Any] = {}
    for name in names:
        repeat = args.repeat if name.removeprefix("rgbd_") in REPEATED else 1
        workers = cores if name.endswith("build_all") else 1
        runs = [run_measurement(name, args, dataset, cache, workers) for _ in range(repeat)]
        runs.sort(key=lambda r: r["seconds"])
        results[name] = {**runs[len(runs) // 2], "runs_seconds": [r["seconds"] for r in runs]}
    return results


def _machine() -> dict[str, str]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "processor": platform.processor(),
    }


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
        "machine": _machine(),
    }


def summarize_rgbd(results: dict[str, Any], cores: int) -> dict[str, Any]:
    """Print the RGB-D table (build against LeRobot and the decode floor) and its ratios."""
    build_1, build_all, floor = results["rgbd_build_1"], results["rgbd_build_all"], results["rgbd_floor"]
    lerobot, sample = results.get("rgbd_lerobot"), results["rgbd_sample"]
    payload, rgb, depth = build_1["payload_bytes"], build_1["rgb_bytes"], build_1["depth_bytes"]
    if rgb + depth != payload:
        raise SystemExit(f"RGB-D payload {payload} is not uint8 RGB {rgb} + depth {depth} bytes")
    payload_mb, file_mb = payload / 1e6, build_1["file_bytes"] / 1e6
    ratios: dict[str, float] = {
        "build 1 worker / decode floor": build_1["seconds"] / floor["seconds"],
        f"build {cores} workers / decode floor": build_all["seconds"] / floor["seconds"],
        "decode floor: depth files / RGB files (time)": floor["seconds_depth"] / floor["seconds_rgb"],
        "build 1 worker peak RSS above baseline / payload": build_1["peak_above_baseline_mb"] / payload_mb,
        f"build {cores} workers peak RSS, all processes / payload": build_all["tree_peak_above_baseline_mb"]
        / payload_mb,
        "cache file / payload": file_mb / payload_mb,
    }
    if lerobot is not None:
        ratios.update(
            {
                "LeRobot conversion / build 1 worker (speed-up)": lerobot["seconds"] / build_1["seconds"],
                f"LeRobot conversion / build {cores} workers (speed-up)": lerobot["seconds"]
                / build_all["seconds"],
                "LeRobot peak RSS above baseline / payload": lerobot["peak_above_baseline_mb"] / payload_mb,
                "build 1 worker peak RSS / LeRobot peak RSS": build_1["peak_above_baseline_mb"]
                / lerobot["peak_above_baseline_mb"],
                "sample f32 without DrQ: bufconv / LeRobot (time)": sample["float32_drq0_ms"]
                / lerobot["sample_float32_drq0_ms"],
            }
        )

    def row(label: str, seconds: float | None, rss: float | None) -> None:
        cell_s = "-" if seconds is None else f"{seconds:.2f}"
        cell_m = "-" if rss is None else f"{rss:,.0f} MB"
        print(f"  {label:52} {cell_s:>9} {cell_m:>16}")

    cameras = build_1["cameras"]
    described = ", ".join(
        f"{key.rsplit('.', 1)[-1]} {'x'.join(map(str, c['shape'][2:]))} "
        + (f"depth {c['stored']} as {c['dtype']} ({c['unit']})" if "stored" in c else c["dtype"])
        for key, c in cameras.items()
    )
    print(
        f"\nRGB-D: {build_1['frames']:,} frames ({described}), payload {payload_mb:,.1f} MB "
        f"(uint8 RGB {rgb / 1e6:,.1f} MB + 2-byte depth {depth / 1e6:,.1f} MB), cache file {file_mb:,.1f} MB, "
        f"{cores} cores"
    )
    print(f"  {'':52} {'seconds':>9} {'peak RSS +':>16}")
    row(
        "LeRobot ReplayBuffer.from_lerobot_dataset",
        lerobot and lerobot["seconds"],
        lerobot and lerobot["peak_above_baseline_mb"],
    )
    row("decode floor: PyAV, each file once (best)", floor["seconds"], floor["peak_above_baseline_mb"])
    row("  ... RGB files to rgb24 (faster threading)", floor["seconds_rgb"], None)
    row("  ... depth files to gray12le (faster threading)", floor["seconds_depth"], None)
    row("  ... all files, FFmpeg's default threads", floor["seconds_default_threads"], None)
    row("  ... all files, one decoder thread", floor["seconds_one_thread"], None)
    row("bufconv build, 1 worker", build_1["seconds"], build_1["peak_above_baseline_mb"])
    row(
        f"bufconv build, {cores} workers (RSS of all processes)",
        build_all["seconds"],
        build_all["tree_peak_above_baseline_mb"],
    )
    print(f"\n  sample({BATCH}), median ms            bufconv f32   bufconv uint8   LeRobot f32")
    for drq in (1, 0):
        theirs = lerobot and lerobot.get(f"sample_float32_drq{drq}_ms")
        failed = lerobot is not None and f"sample_float32_drq{drq}_error" in lerobot
        cell = "fails" if failed else "-" if theirs is None else f"{theirs:.1f}"
        print(
            f"  DrQ {'on ' if drq else 'off'}                            {sample[f'float32_drq{drq}_ms']:10.1f}   {sample[f'uint8_drq{drq}_ms']:12.1f}   {cell:>11}"
        )
    for drq in (1, 0):
        if lerobot is not None and f"sample_float32_drq{drq}_error" in lerobot:
            print(
                f"  LeRobot's sample with DrQ {'on' if drq else 'off'}: {lerobot[f'sample_float32_drq{drq}_error']}"
            )
    print("\n  ratios (RGB-D)")
    for label, value in ratios.items():
        print(f"    {label:66} {value:8.2f}")
    return {
        "frames": build_1["frames"],
        "cores": cores,
        "payload_mb": payload_mb,
        "rgb_mb": rgb / 1e6,
        "depth_mb": depth / 1e6,
        "file_mb": file_mb,
        "cameras": cameras,
        "results": results,
        "ratios": ratios,
    }


if __name__ == "__main__":
    main()
