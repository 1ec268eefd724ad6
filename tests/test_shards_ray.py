"""Sharded builds on a real local Ray cluster (`ray.init(num_cpus=2)`, one per module): the same
bytes as a local build, a worker killed mid-build (Ray retries it; without retries a re-run
builds only the missing shard). Two nodes started with `ray start`: test_shards_ray_cluster.py."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import bufconv  # noqa: E402
from bufconv.cache.freshness import prepare  # noqa: E402
from bufconv.convert import shard_build  # noqa: E402
from bufconv.convert import shards as sh  # noqa: E402
from bufconv.errors import CacheError  # noqa: E402
from bufconv.options import BuildOptions  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """One local Ray cluster for the module (starting one costs seconds on 2 cores), on 127.0.0.1.

    Ray gives its raylet 30 s to register with its GCS; on a loaded 2-core machine that start-up
    once timed out in CI (no raylet log at all). The cluster's start, and only that, is tried a
    second time with a fresh folder; a second timeout fails the tests.
    """
    temp = tmp_path_factory.mktemp("ray")
    try:
        _start(temp)
    except Exception as e:  # Ray raises a bare Exception for this
        if "timed out during startup" not in str(e):
            raise
        ray.shutdown()
        _reap(str(temp))
        temp = tmp_path_factory.mktemp("ray")
        _start(temp)
    try:
        yield
    finally:
        ray.shutdown()
        _reap(str(temp))


def _start(temp: Path) -> None:
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _node_ip_address="127.0.0.1",
        _temp_dir=str(temp),
    )


def _reap(marker: str) -> None:
    """Wait for the processes of the cluster (named by its temporary folder) to exit; kill the
    ones still there after 10 s (Ray's agents linger after shutdown), by pid."""
    deadline = time.monotonic() + 10
    while _pids(marker) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in _pids(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _pids(marker: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
    return found


def _same_files(a: Path, b: Path) -> None:
    names = sorted(p.name for p in a.glob("shard-*.pt"))
    assert names == sorted(p.name for p in b.glob("shard-*.pt")) and names
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    manifest_a, manifest_b = (json.loads((f / "manifest.json").read_text()) for f in (a, b))
    assert manifest_a["shards"] == manifest_b["shards"]


def test_a_ray_build_writes_the_bytes_of_a_local_build(
    cluster: None, tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    a, b = lerobot_dataset(lengths=(5, 1, 7, 3)), lerobot_dataset(lengths=(3, 4), seed=7)
    local = bufconv.build([a, b], tmp_path / "local", shards=3, image_range=255)
    remote = bufconv.build([a, b], tmp_path / "ray", shards=3, image_range=255, ray="local")
    assert local.status == remote.status == "built" and remote.built == local.built
    _same_files(tmp_path / "local", tmp_path / "ray")
    single = bufconv.load_or_build(a, tmp_path / "a.pt", image_range=255, use_drq=False)
    buffer = bufconv.load_or_build([a, b], tmp_path / "ray", image_range=255, use_drq=False)
    assert buffer.status == "hit" and len(buffer) == 23
    rows = list(range(16))
    for key, value in single[rows]["state"].items():
        assert bufconv.__name__ and value.equal(buffer[rows]["state"][key]), key
    # Again on Ray: every shard is fresh, nothing is sent to the cluster.
    assert bufconv.build([a, b], tmp_path / "ray", image_range=255, ray="local").built == []


_REAL_TASK = shard_build._shard_task


def _dying_shard_task(job: shard_build._Job) -> dict:
    """Runs on a Ray worker: the first attempt at shard 1 kills its own worker (SIGKILL) after
    the shard's temporary file is written, before it is renamed; later attempts build."""
    from bufconv.cache import writer

    marker = Path(job.path).parent.parent / f"killed-{job.plan.file}"
    if job.plan.index == 1:
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            pass
        else:
            writer.CacheWriter.commit = lambda self: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
    return _REAL_TASK(job)


@contextlib.contextmanager
def _dying_worker() -> Iterator[None]:
    """Ray builds run `_dying_shard_task` (this module, pickled by value: workers cannot import tests/)."""
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(shard_build, "_shard_task", _dying_shard_task)
        yield


def test_a_worker_killed_mid_build_is_retried_by_ray(
    cluster: None, tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3))
    with _dying_worker():
        result = bufconv.build(dataset, tmp_path / "out" / "ray", shards=3, ray="local")
    assert (tmp_path / "out" / "killed-shard-00001.pt").exists()  # the worker did die
    assert result.status == "built" and result.built == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    assert not list((tmp_path / "out" / "ray").glob(".*.tmp-*"))  # the dead worker's file was removed
    assert bufconv.verify(tmp_path / "out" / "ray").ok
    bufconv.build(dataset, tmp_path / "local", shards=3)
    _same_files(tmp_path / "local", tmp_path / "out" / "ray")


def test_without_retries_a_rerun_builds_only_the_missing_shard(
    cluster: None, tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    dataset = lerobot_dataset(lengths=(5, 1, 7, 3))
    folder = tmp_path / "out" / "ray"
    requests = [prepare(dataset, BuildOptions())]
    with (
        _dying_worker(),
        pytest.raises(CacheError, match=r"shard-00001.pt: its Ray worker died .* run the build again"),
    ):
        sh.ensure_sharded(requests, folder, shards=3, ray="local", retries=0)
    assert sorted(p.name for p in folder.glob("*.pt")) == ["shard-00000.pt", "shard-00002.pt"]
    assert not (folder / "manifest.json").exists()  # written last: the folder is not a cache yet
    again = bufconv.build(dataset, folder, shards=3)  # locally, this time
    assert again.status == "rebuilt" and again.built == ["shard-00001.pt"]
    assert bufconv.verify(folder).ok
