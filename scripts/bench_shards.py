#!/usr/bin/env python
"""Sharded caches against the single file, side by side in one run; prints ratios and writes JSON.

    .venv/bin/python scripts/bench_shards.py --frames 4000     # the rows in docs/benchmarks.md
    .venv/bin/python scripts/bench_shards.py --frames 200      # the small CI configuration

The dataset is scripts/bench.py's (LeRobot's own writer, two 128x128 AV1 cameras, episodes of 100
frames), written once into --workdir. Every measurement runs in a fresh Python process:

  build_single   bufconv.build(..., force=True) into one file (all cores, as `bufconv build`)
  build_sharded  the same into --shards shards, locally (no Ray), force=True
  sample         sample(256), float32, median of 30, over the single file and over the shards
  learner_rss    open_buffer on the sharded cache and --batches sample(256, uint8) calls: the process's
                 anonymous memory (what it allocated) and file pages (mapped cache pages, reclaimable
                 page cache) above its baseline, against the cache's size
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

BATCH = 256


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no {field} in /proc/self/status")


def _mapped_mb(folder: str) -> float:
    """Resident pages of this process's mappings of files in `folder` (the shards), from smaps."""
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()
            if head and "-" in head[0] and len(head) >= 5:  # a mapping's header line
                inside = len(head) >= 6 and head[5].startswith(folder)
            elif inside and line.startswith("Rss:"):
                total += int(head[1])
    return total / 1024


def measure(name: str, dataset: str, single: str, sharded: str, shards: int, batches: int) -> dict[str, Any]:
    import torch

    import bufconv

    torch.set_num_threads(1)
    if name == "build_single":
        started = time.perf_counter()
        result = bufconv.build(dataset, single, force=True, workers=None)
        return {"seconds": time.perf_counter() - started, "file_bytes": result.file_bytes}
    if name == "build_sharded":
        started = time.perf_counter()
        result = bufconv.build(dataset, sharded, force=True, workers=None, shards=shards)
        return {"seconds": time.perf_counter() - started, "file_bytes": result.file_bytes, "shards": shards}
    if name in ("sample_single", "sample_sharded"):
        buffer = bufconv.open_buffer(single if name == "sample_single" else sharded, use_drq=True)
        buffer.generator.manual_seed(0)
        for _ in range(5):  # warm: every shard opened, the pages of the rows read once
            buffer.sample(BATCH)
        times = []
        for _ in range(30):
            started = time.perf_counter()
            buffer.sample(BATCH)
            times.append(time.perf_counter() - started)
        return {"seconds": statistics.median(times)}
    if name == "learner_rss":
        anon, file = _status_mb("RssAnon"), _status_mb("RssFile")
        buffer = bufconv.open_buffer(sharded, use_drq=True, verify_payload=False)
        buffer.generator.manual_seed(0)
        for _ in range(
            batches
        ):  # uint8: the host side of a GPU learner (the float conversion is on the device)
            batch = buffer.sample(BATCH, image_dtype=torch.uint8)
        del batch
        return {
            "seconds": 0.0,
            "anon_mb": _status_mb("RssAnon") - anon,
            "file_mb": _status_mb("RssFile") - file,
            "cache_mapped_mb": _mapped_mb(str(Path(sharded).absolute())),
            "shards_opened": buffer._data.sharded.opened,  # type: ignore[attr-defined]
            "batches": batches,
        }
    raise SystemExit(f"unknown measurement {name}")


def run(name: str, args: argparse.Namespace, dataset: Path) -> dict[str, Any]:
    command = [sys.executable, __file__, "--measure", name, "--dataset", str(dataset), "--workdir", str(args.workdir),
               "--shards", str(args.shards), "--batches", str(args.batches)]  # fmt: skip
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=1800)
    if done.returncode != 0:
        raise SystemExit(f"measurement {name} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=4000)
    parser.add_argument("--shards", type=int, default=8)
    parser.add_argument("--batches", type=int, default=1, help="sample(256) calls of the learner_rss row")
    parser.add_argument("--repeat", type=int, default=3, help="builds are the median of this many runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bench"))
    parser.add_argument("--dataset", type=Path)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--measure", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    single, sharded = args.workdir / "shards-single.pt", args.workdir / "shards-folder"
    if args.measure:
        result = measure(
            args.measure, str(args.dataset), str(single), str(sharded), args.shards, args.batches
        )
        print(json.dumps(result))
        return
    dataset = args.dataset or args.workdir / f"hilserl-{args.frames}"
    if not dataset.exists():
        spec = importlib.util.spec_from_file_location("bench", Path(__file__).with_name("bench.py"))
        assert spec is not None and spec.loader is not None
        bench = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench)
        print(f"writing a {args.frames}-frame dataset with LeRobot's writer into {dataset} ...", flush=True)
        bench.make_dataset(dataset, args.frames)
    results: dict[str, Any] = {}
    for name in ("build_single", "build_sharded"):  # alternated, so drift hits both alike
        results[name] = {"runs": []}
    for _ in range(args.repeat):
        for name in ("build_single", "build_sharded"):
            results[name]["runs"].append(run(name, args, dataset))
    for name in ("build_single", "build_sharded"):
        runs = results[name].pop("runs")
        results[name] = {**runs[-1], "seconds": statistics.median(r["seconds"] for r in runs)}
    for name in ("sample_single", "sample_sharded", "learner_rss"):
        results[name] = run(name, args, dataset)
    cache_mb = results["build_sharded"]["file_bytes"] / 1e6
    ratios = {
        "build_sharded_over_single": results["build_sharded"]["seconds"] / results["build_single"]["seconds"],
        "sample_sharded_over_single": results["sample_sharded"]["seconds"]
        / results["sample_single"]["seconds"],
        "learner_anon_over_cache": results["learner_rss"]["anon_mb"] / cache_mb,
        "learner_cache_pages_over_cache": results["learner_rss"]["cache_mapped_mb"] / cache_mb,
    }
    cores = len(os.sched_getaffinity(0))
    touched = args.batches * BATCH * 2
    print(f"{args.frames:,} frames, cache {cache_mb:,.1f} MB, {args.shards} shards, {cores} cores")
    print(f"  build, one file                              {results['build_single']['seconds']:8.2f} s")
    print(
        f"  build, {args.shards} shards, local                        {results['build_sharded']['seconds']:8.2f} s"
    )
    print(
        f"  sample(256) f32, one file                    {results['sample_single']['seconds'] * 1e3:8.2f} ms"
    )
    print(
        f"  sample(256) f32, {args.shards} shards                      {results['sample_sharded']['seconds'] * 1e3:8.2f} ms"
    )
    rss = results["learner_rss"]
    print(f"  learner after {args.batches} x sample(256, uint8) (<= {touched:,} rows): anonymous +{rss['anon_mb']:.1f} MB, "
          f"cache pages resident {rss['cache_mapped_mb']:.1f} MB of {cache_mb:,.1f} MB "
          f"({rss['shards_opened']} shards open; all file pages +{rss['file_mb']:.1f} MB, libraries included)")  # fmt: skip
    print(f"  sharded build / one-file build     {ratios['build_sharded_over_single']:6.2f}x  (goal <= 1.3x)")
    print(
        f"  sharded sample / one-file sample   {ratios['sample_sharded_over_single']:6.2f}x  (goal <= 1.2x)"
    )
    print(f"  learner anonymous memory / cache   {ratios['learner_anon_over_cache']:6.3f}")
    print(f"  learner resident cache / cache     {ratios['learner_cache_pages_over_cache']:6.3f}")
    report = {
        "frames": args.frames,
        "shards": args.shards,
        "cores": cores,
        "machine": platform.platform(),
        "results": results,
        "ratios": ratios,
    }
    path = args.json or args.workdir / f"bench-shards-{args.frames}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
