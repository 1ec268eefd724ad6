"""A build spread over worker processes writes exactly what a single-worker build writes."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import pytest
import torch


def _load(path: Path) -> dict:
    return torch.load(path, weights_only=True, mmap=True)


@pytest.mark.parametrize(
    "fields",
    [
        pytest.param({"lengths": (9, 1, 12, 4, 7, 6)}, id="one-file-per-camera-split-by-episode"),
        pytest.param(
            {"lengths": (9, 1, 12, 4, 7, 6), "video_files_size_in_mb": 0.02}, id="several-files-per-camera"
        ),
        pytest.param({"lengths": (5, 1, 7), "use_videos": False}, id="png-images"),
    ],
)
def test_parallel_build_is_identical_to_single_worker(
    lerobot_dataset: Callable[..., Path], tmp_path: Path, fields: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Same tensors and same checksums with 1, 2 and 3 workers (units split long files at episode boundaries)."""
    import bufconv.convert.pipeline

    pools = []
    real_pool = bufconv.convert.pipeline.WorkerPool
    monkeypatch.setattr(bufconv.convert.pipeline, "WorkerPool", lambda n: pools.append(n) or real_pool(n))
    planned = []
    real_plan = bufconv.convert.pipeline.plan_units
    monkeypatch.setattr(
        bufconv.convert.pipeline,
        "plan_units",
        lambda *args, processes, **kw: (
            planned.append(processes) or real_plan(*args, processes=processes, **kw)
        ),
    )
    dataset = lerobot_dataset(**fields)
    single = bufconv.build(dataset, tmp_path / "w1.pt", workers=1)
    assert pools == []  # one worker: decoded in this process
    reference = _load(single.path)
    for workers in (2, 3):
        result = bufconv.build(dataset, tmp_path / f"w{workers}.pt", workers=workers)
        other = _load(result.path)
        assert list(other["tensors"]) == list(reference["tensors"])
        for name, tensor in reference["tensors"].items():
            assert torch.equal(other["tensors"][name], tensor), name
        assert other["meta"]["tensors"] == reference["meta"]["tensors"]  # dtypes, shapes and checksums
        assert other["meta"]["fingerprint"] == reference["meta"]["fingerprint"]
    assert pools == [2, 3]  # the other builds really ran worker processes
    assert planned == [0, 2, 3]  # and their units were sized for them


def test_worker_processes_only_where_they_pay(
    lerobot_dataset: Callable[..., Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Worker processes only pay off above MIN_PARALLEL_PIXELS to decode (frames x pixels of every
    camera) and with two cores per process: otherwise, or with one worker, the build stays in-process."""
    import bufconv.convert.plan
    from bufconv.options import BuildOptions
    from bufconv.source.layouts import open_dataset

    source = open_dataset(lerobot_dataset())
    selection = source.select(BuildOptions())
    frames = sum(source.episodes[e].length for e in selection.episodes)
    pixels = frames * sum(
        math.prod(bufconv.convert.plan.frame_chw(source, key)[1:]) for key in selection.image_keys
    )

    def processes(workers: int, cores: int = 64, min_pixels: int = pixels) -> int:
        monkeypatch.setattr(bufconv.convert.plan, "default_workers", lambda: cores)
        monkeypatch.setattr(bufconv.convert.plan, "MIN_PARALLEL_PIXELS", min_pixels)
        return bufconv.convert.plan.worker_processes(source, selection, BuildOptions(workers=workers))

    assert processes(2) == 2
    assert processes(5) == 5
    assert processes(1) == 0  # one worker: this process alone
    assert processes(2, min_pixels=pixels + 1) == 0  # too little to decode
    assert processes(8, cores=8) == 4  # one process per two cores (decoding + conversion threads)
    assert processes(2, cores=3) == 0  # a single process: no pool
    assert processes(2, cores=2) == 0


def test_split_units_cover_every_frame_once(lerobot_dataset: Callable[..., Path]) -> None:
    """With several workers, one long file is cut into units at episode boundaries, covering each row exactly once."""
    from bufconv.cache.freshness import prepare
    from bufconv.convert.plan import plan_units
    from bufconv.options import BuildOptions

    dataset = lerobot_dataset(lengths=(9, 1, 12, 4, 7, 6))
    request = prepare(dataset, BuildOptions(workers=3))

    import numpy as np

    lengths = [request.source.episodes[e].length for e in request.selection.episodes]
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    timestamps = request.source.read_columns(request.selection.episodes, ["timestamp"])["timestamp"]
    keys = request.selection.image_keys
    per_key = {}
    for processes in (2, 3):
        units = plan_units(
            request.source, request.selection, request.options, lambda key: key, starts, timestamps,
            processes=processes,
        )  # type: ignore[arg-type]  # fmt: skip
        # Units of about a third of a process's share: split at episode boundaries once full.
        share = -(-sum(lengths) * len(keys) // (3 * processes))
        for key in keys:
            mine = [u for u in units if u.key == key]
            assert len(mine) > 1  # the single file was split
            assert all(u.frames < share + max(lengths) for u in mine)
            rows = np.concatenate([job.rows for u in mine for job in u.jobs])
            assert sorted(rows.tolist()) == list(range(sum(lengths)))
            per_key[processes, key] = len(mine)
    assert all(per_key[3, key] > per_key[2, key] for key in keys)  # sized by the processes, not --workers


def _bad_unit(tmp_path: Path, name: str):
    import numpy as np

    from bufconv.cache.sink import Target
    from bufconv.convert.units import VideoUnit
    from bufconv.source.video import FrameJob

    target = Target(str(tmp_path / "out.bin"), 0, "uint8", (1, 3, 4, 4))
    (tmp_path / "out.bin").write_bytes(b"\0" * 48)
    job = FrameJob(0, np.array([0]), np.array([0.0]))
    return VideoUnit("observation.images.x", tmp_path / f"{name}.mp4", (job,), target, 1e-4, 1)


def test_an_error_in_a_worker_process_reaches_the_caller(tmp_path: Path) -> None:
    """A unit failing in the worker process is raised here, with its message (not a hang, not a generic error)."""
    import time

    from bufconv.convert.workers import WorkerPool
    from bufconv.errors import DecodeError

    units = [_bad_unit(tmp_path, "first"), _bad_unit(tmp_path, "second")]
    taken_here = []

    def slow_local(unit: object) -> int:
        taken_here.append(unit)
        time.sleep(1.0)  # the other unit goes to the worker process and fails there
        return 0

    with WorkerPool(2) as pool, pytest.raises(DecodeError) as raised:
        pool.run(units, slow_local)
    assert len(taken_here) == 1
    other = next(u for u in units if u is not taken_here[0])
    assert str(other.path) in str(raised.value)


def test_an_error_here_stops_the_worker_processes(tmp_path: Path) -> None:
    """A unit failing in this process stops the pool at once and is raised (no hang waiting on workers)."""
    from bufconv.convert.units import run_unit
    from bufconv.convert.workers import WorkerPool
    from bufconv.errors import DecodeError

    units = [_bad_unit(tmp_path, f"u{i}") for i in range(4)]
    with WorkerPool(2) as pool, pytest.raises(DecodeError, match=r"u\d.mp4"):
        pool.run(units, run_unit)
    assert all(worker.process.wait(timeout=10) is not None for worker in pool.workers)
