"""The actor's transitions across a learner killed and restarted, over LeRobot 0.6.1's real transport.

The learner side is LeRobot's own `start_learner` (its gRPC server and `LearnerService`) in a
subprocess that writes the numbers of every transitions message its servicer hands on; it is
SIGKILLed while messages flow and started again on the same port. The actor side is LeRobot's own
`send_transitions` as `python -m bufconv.lerobot.actor` runs it (`install`), in a thread, fed
numbered messages of ~0.4 MB (one transition of a 3x128x128 float camera, as LeRobot's actor
serializes them) before, during and after the restart. What arrived is counted against what was
produced. With bufconv: nothing lost, at most one message doubled (one the dying learner had
received whole before its reply came back: seen in 1 of 2 runs without pacing, none paced).
Reconnecting alone (LeRobot's stream restarted) loses what was in flight at the kill plus the
message its dead call's generator takes afterwards (2 to 4 paced, 9 and 14 without pacing); LeRobot
alone loses everything after the kill.
"""

from __future__ import annotations

import collections
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

WAIT_S = 90  # bounds on every wait (learner start-up is ~5 s on 2 cores)
PACE_S = 0.02  # between produced messages: a steady stream, not a condition


def serve(port: int, received: Path) -> None:
    """The learner side: LeRobot's `start_learner`; one line per message its servicer hands on."""
    from queue import Queue

    import lerobot.rl.learner as learner
    from lerobot.transport.utils import bytes_to_transitions

    config = SimpleNamespace(
        learner_host="127.0.0.1",
        learner_port=port,
        policy_parameters_push_frequency=3600,
        queue_get_timeout=0.1,
    )
    cfg = SimpleNamespace(
        policy=SimpleNamespace(actor_learner_config=config, concurrency=SimpleNamespace(learner="threads"))
    )
    transitions: Queue = Queue()
    threading.Thread(
        target=learner.start_learner,
        args=(Queue(), transitions, Queue(), threading.Event(), cfg),
        daemon=True,
    ).start()
    with open(received, "a", buffering=1) as out:
        while True:
            numbers = [int(t["reward"]) for t in bytes_to_transitions(transitions.get())]
            out.write(" ".join(map(str, numbers)) + "\n")


class Learner:
    def __init__(self, port: int, received: Path) -> None:
        self.popen = subprocess.Popen(
            [sys.executable, __file__, str(port), str(received)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def kill(self) -> None:
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
        self.popen.wait(WAIT_S)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(condition: Any, what: str) -> Any:
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        time.sleep(0.05)
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def ready(port: int) -> bool:
    import grpc
    from lerobot.transport import services_pb2, services_pb2_grpc

    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        try:
            services_pb2_grpc.LearnerServiceStub(channel).Ready(services_pb2.Empty(), timeout=1)
        except grpc.RpcError:
            return False
    return True


def received_numbers(path: Path) -> list[int]:
    if not path.exists():
        return []
    text = path.read_text()
    complete = text[: text.rfind("\n") + 1]  # a line cut by SIGKILL is not counted
    return [int(n) for line in complete.splitlines() for n in line.split()]


class Producer:
    """The actor's env loop: numbered messages into its transitions queue, as LeRobot serializes them."""

    def __init__(self, queue: Any) -> None:
        import torch

        self.queue = queue
        self.image = torch.rand(1, 3, 128, 128)
        self.produced: list[int] = []

    def put(self, count: int = 1) -> None:
        from lerobot.transport.utils import transitions_to_bytes

        for _ in range(count):
            n = len(self.produced)
            state = {"observation.image": self.image}
            transition = {"state": state, "action": None, "reward": float(n), "next_state": state}
            self.queue.put(transitions_to_bytes([transition]))
            self.produced.append(n)
            time.sleep(PACE_S)


def run(send_transitions: Any, tmp_path: Path) -> dict[str, int]:
    """Produce across a learner SIGKILL and restart; count what the learner side received."""
    from torch.multiprocessing import Queue

    port, received = free_port(), tmp_path / "received.txt"
    learner = Learner(port, received)
    config = SimpleNamespace(learner_host="127.0.0.1", learner_port=port, queue_get_timeout=0.1)
    cfg = SimpleNamespace(
        policy=SimpleNamespace(actor_learner_config=config, concurrency=SimpleNamespace(actor="threads")),
        output_dir=tmp_path,
    )
    queue, shutdown = Queue(), threading.Event()
    producer = Producer(queue)
    sender = threading.Thread(target=send_transitions, args=(cfg, queue, shutdown, None), daemon=True)
    try:
        wait_for(lambda: ready(port), "the learner serves")
        sender.start()
        while len(received_numbers(received)) < 10:  # messages flow...
            producer.put()
            assert len(producer.produced) < 2000, "the learner receives nothing"
        learner.kill()  # ...when the learner dies
        killed_at = len(producer.produced)
        producer.put(20)  # the learner is down
        learner = Learner(port, received)
        wait_for(lambda: ready(port), "the restarted learner serves")
        producer.put(20)
        last = producer.produced[-1]
        # Messages go in order (one given back goes first): what has not arrived with the last is lost.
        wait_for(lambda: last in received_numbers(received), "the last message arrives")
    finally:
        shutdown.set()
        sender.join(WAIT_S)
        learner.kill()
    counts = collections.Counter(received_numbers(received))
    result = {
        "produced": len(producer.produced),
        "killed_at": killed_at,
        "lost": sum(1 for n in producer.produced if n not in counts),
        "duplicated": sum(c - 1 for c in counts.values()),
    }
    print(f"\n{send_transitions.__module__}.{send_transitions.__name__}: {result}")
    return result


@pytest.fixture
def actor(monkeypatch: pytest.MonkeyPatch):
    import lerobot.rl.actor as module

    for name in ("make_processors", "make_policy", "send_transitions", "send_interactions", "receive_policy"):
        monkeypatch.setattr(module, name, getattr(module, name))
    return module


def test_bufconvs_actor_loses_nothing_across_a_learner_restart(actor, tmp_path: Path) -> None:
    from bufconv.lerobot.actor import install

    install(actor)
    result = run(actor.send_transitions, tmp_path)
    assert result["lost"] == 0
    assert result["duplicated"] <= 1  # the one message a dying learner may have received unreplied


def test_reconnecting_alone_loses_the_messages_in_flight(actor, tmp_path: Path) -> None:
    from bufconv.lerobot.actor import reconnecting

    result = run(reconnecting(actor.send_transitions), tmp_path)
    assert result["lost"] >= 1  # at least the message the dead call's generator took afterwards
    assert result["lost"] < result["produced"] - result["killed_at"]  # the rest arrived


if __name__ == "__main__":
    serve(int(sys.argv[1]), Path(sys.argv[2]))
