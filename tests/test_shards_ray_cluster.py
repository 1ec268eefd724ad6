"""A sharded build on a Ray cluster of two nodes started with `ray start` (a head and a worker,
both on 127.0.0.1, one CPU each), reached by its address as a user's cluster would be; the test
stops both nodes, and every process they started, by process id."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

import bufconv  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore::ResourceWarning"),
]

RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _processes_of(marker: str) -> list[int]:
    """Processes whose command line names `marker` (the cluster's own temporary folder)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if marker in (entry / "cmdline").read_bytes().decode(errors="replace"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _stop(nodes: list[subprocess.Popen[bytes]], marker: str) -> None:
    """SIGTERM each node's process group, then kill what is left of the cluster, by pid."""
    for node in nodes:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (any(n.poll() is None for n in nodes) or _processes_of(marker)):
        time.sleep(0.5)
    for pid in _processes_of(marker):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for node in nodes:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGKILL)
        node.wait(timeout=10)


@pytest.fixture(scope="module")
def two_nodes() -> Iterator[str]:
    """The address of a running head plus one worker node; stopped after the module."""
    temp = tempfile.mkdtemp(prefix="bcray-", dir="/tmp")  # short: Ray's socket paths must stay short
    port = _free_port()
    address = f"127.0.0.1:{port}"
    # No token: the cluster listens on 127.0.0.1 only, and lives as long as this module.
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
    patch = pytest.MonkeyPatch()
    patch.setenv("RAY_AUTH_MODE", "disabled")
    common = ["--block", "--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    nodes: list[subprocess.Popen[bytes]] = []
    log = open(Path(temp) / "nodes.log", "wb")  # noqa: SIM115 - closed below
    try:
        head = [RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", f"--temp-dir={temp}"]
        nodes.append(
            subprocess.Popen([*head, *common], env=env, stdout=log, stderr=log, start_new_session=True)
        )
        _wait_for_nodes(address, 1, nodes, temp)
        worker = [RAY, "start", f"--address={address}"]
        nodes.append(
            subprocess.Popen([*worker, *common], env=env, stdout=log, stderr=log, start_new_session=True)
        )
        _wait_for_nodes(address, 2, nodes, temp)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        _stop(nodes, temp)
        log.close()
        patch.undo()
        survivors = _processes_of(temp)
        shutil.rmtree(temp, ignore_errors=True)
        assert not survivors, "a process of the test cluster survived"


def _wait_for_nodes(address: str, count: int, nodes: list[subprocess.Popen[bytes]], temp: str) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any(n.poll() is not None for n in nodes):
            raise RuntimeError("a Ray node exited: " + (Path(temp) / "nodes.log").read_text()[-2000:])
        try:
            ray.init(address=address, log_to_driver=False)
            alive = sum(1 for node in ray.nodes() if node["Alive"])
        except (ConnectionError, RuntimeError):
            alive = 0
        finally:
            ray.shutdown()
        if alive >= count:
            return
        time.sleep(1)
    raise RuntimeError(f"the Ray cluster at {address} did not get {count} node(s) in time")


def test_a_build_on_a_two_node_cluster_writes_the_local_bytes(
    two_nodes: str, tmp_path: Path, lerobot_dataset: Callable[..., Path]
) -> None:
    a, b = lerobot_dataset(lengths=(5, 1, 7, 3)), lerobot_dataset(lengths=(3, 4), seed=7)
    remote = bufconv.build([a, b], tmp_path / "ray", shards=4, ray=two_nodes)
    assert remote.status == "built" and remote.shards == 4 and len(remote.built) == 4
    assert not ray.is_initialized()  # the build connected, and disconnected again
    local = bufconv.build([a, b], tmp_path / "local", shards=4)
    for name in local.built:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "local" / name).read_bytes(), name
    shards = [json.loads((tmp_path / f / "manifest.json").read_text())["shards"] for f in ("ray", "local")]
    assert shards[0] == shards[1]
    assert bufconv.verify(tmp_path / "ray").ok
