"""The actor's transitions reach a learner that went away and came back: none dropped at the actor.

LeRobot 0.6.1's actor streams every transitions message of its run through one client-streaming
call, `SendTransitions(transitions_stream(queue))`, whose `Empty` reply comes only when the stream
ends: the actor never learns what the learner received. When the learner dies, the call raises and
what it had taken from the queue is gone: the message being sent, those in gRPC's buffers, and one
more (gRPC's request thread, blocked in the dead call's generator, takes the next message from the
queue and drops it). `bufconv.lerobot.actor.reconnecting` starts the stream again; this module
makes each message its own call, so that its `Empty` reply acknowledges it:

- `delivering(send_transitions, learner_service_client)` runs LeRobot's own `send_transitions`
  (and its `transitions_stream`, chunking and channel) once per message: the stream it reads
  (`Outbox.call`) ends after one message; the call's reply acknowledges that message;
- a call that raised gives its message back, first in line for the next call (after
  `RECONNECT_DELAY_S`); a message taken by a call that had already ended is given back too;
- while the learner is down, messages wait in the actor's queue (in memory: an actor that dies
  loses them).

What can still be lost or doubled (measured in tests/test_actor_delivery.py): a message the learner
acknowledged is the learner's: what its transition queue and buffer held uncommitted when it died
is lost there (bufconv's learner commits its buffer every second). A learner shutting down
gracefully replies `Empty` to a message it dropped (LeRobot's receiver returns on its shutdown
event): lost. A message resent after a call that raised is delivered twice where the learner had
received it whole and died (or the connection broke) before its reply reached the actor: at most
one message per learner death (one call at a time), seen once in two unpaced SIGKILLs. Messages
still queued when the actor shuts down are not sent; with `concurrency.actor=processes` (spawn)
the child process runs LeRobot's unpatched function. One call per message costs one round trip
per message (LeRobot's actor sends one message per episode).
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
from queue import Empty
from typing import Any

log = logging.getLogger("bufconv")

RECONNECT_DELAY_S = 2.0


class Outbox:
    """The actor's transitions queue, read one message per call; a message goes only when acknowledged."""

    def __init__(self, queue: Any) -> None:
        self.queue = queue
        self.again: collections.deque[bytes] = collections.deque()  # given back: sent first
        self.lock = threading.Lock()  # one reader at a time (a dead call's generator included)
        self.delivered = 0
        self.resent = 0

    def call(self, shutdown_event: Any) -> _Call:
        return _Call(self, shutdown_event)

    def give_back(self, message: bytes) -> None:
        with self.lock:
            self.again.appendleft(message)


class _Call:
    """One `SendTransitions` call's view of the outbox: its queue (`get`) and its shutdown event
    (`is_set`, true once it has taken a message, so that LeRobot's `transitions_stream` ends there)."""

    def __init__(self, outbox: Outbox, shutdown_event: Any) -> None:
        self.outbox = outbox
        self.shutdown_event = shutdown_event
        self.message: bytes | None = None
        self.ended = False

    def is_set(self) -> bool:
        return self.ended or self.message is not None or bool(self.shutdown_event.is_set())

    def get(self, block: bool = True, timeout: float | None = None) -> bytes:
        outbox = self.outbox
        with outbox.lock:
            if self.is_set():
                raise Empty
            if outbox.again:
                message = outbox.again.popleft()
                outbox.resent += 1
            else:
                message = outbox.queue.get(block, timeout)  # raises Empty as the queue does
            if self.ended:  # taken by the generator of a call that had already ended
                outbox.again.appendleft(message)
                raise Empty
            self.message = message
            return message

    def end(self, acknowledged: bool) -> None:
        with self.outbox.lock:
            self.ended = True
            message, self.message = self.message, None
            if message is None:
                return
            if acknowledged:
                self.outbox.delivered += 1
            else:
                self.outbox.again.appendleft(message)


class _AcknowledgingStub:
    """The learner stub handed to LeRobot's `send_transitions`: its `SendTransitions` reply ends the call."""

    def __init__(self, stub: Any, call: _Call) -> None:
        self.stub = stub
        self.call = call
        self.failed = False

    def SendTransitions(self, requests: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = self.stub.SendTransitions(requests, *args, **kwargs)
        except BaseException:
            self.failed = True
            self.call.end(acknowledged=False)
            raise
        self.call.end(acknowledged=True)
        return reply

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stub, name)


class _KeptOpen:
    """The channel handed to LeRobot's `send_transitions`, which closes it after each call in process mode."""

    def __init__(self, channel: Any) -> None:
        self.channel = channel

    def close(self) -> None:
        pass

    def __getattr__(self, name: str) -> Any:
        return getattr(self.channel, name)


def delivering(send_transitions: Any, learner_service_client: Any) -> Any:
    """LeRobot's `send_transitions(cfg, queue, shutdown_event, ...)`, once per message until shutdown.

    Each call gets one message (a given-back one first) and LeRobot's stream ends after it; a call
    that raised gives it back and the next starts after `RECONNECT_DELAY_S`. One channel (LeRobot's
    `learner_service_client`) serves every call; gRPC reconnects it by itself.
    """
    if hasattr(send_transitions, "__wrapped__"):
        return send_transitions

    @functools.wraps(send_transitions)
    def run(cfg: Any, queue: Any, shutdown_event: Any, *args: Any, **kwargs: Any) -> None:
        config = cfg.policy.actor_learner_config
        stub, channel = learner_service_client(host=config.learner_host, port=config.learner_port)
        outbox = Outbox(queue)
        try:
            while not shutdown_event.is_set():
                call = outbox.call(shutdown_event)
                acknowledging = _AcknowledgingStub(stub, call)
                try:
                    send_transitions(
                        cfg, call, call, learner_client=acknowledging, grpc_channel=_KeptOpen(channel)
                    )
                finally:
                    call.end(acknowledged=False)  # a call that did not reach the stub (an error before it)
                if acknowledging.failed and not shutdown_event.wait(RECONNECT_DELAY_S):
                    log.warning(
                        "bufconv: send_transitions: the learner went away; reconnecting (%d delivered, %d resent)",
                        outbox.delivered,
                        outbox.resent,
                    )
        finally:
            channel.close()

    return run
