"""Batches made ahead of the learner by background threads, delivered in a fixed order."""

from __future__ import annotations

import atexit
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

T = TypeVar("T")


class _Prefetch:
    """Bookkeeping of the prefetch threads: which batch to make next, and the made ones, in order."""

    def __init__(self, ahead: int) -> None:
        self.ahead = ahead
        self.claimed = 0  # batches handed to producers
        self.taken = 0  # batches handed to the consumer
        self.ready: dict[int, Any] = {}
        self.stopped = False
        self.cond = threading.Condition()
        self.threads: list[threading.Thread] = []

    def claim(self) -> int | None:
        """The next batch number to make, once fewer than `ahead` are pending; None when stopped."""
        with self.cond:
            while not self.stopped and self.claimed - self.taken >= self.ahead:
                self.cond.wait()
            if self.stopped:
                return None
            self.claimed += 1
            return self.claimed - 1

    def deliver(self, k: int, item: Any) -> None:
        with self.cond:
            self.ready[k] = item
            self.cond.notify_all()

    def take(self, k: int) -> Any:
        with self.cond:
            while k not in self.ready:
                self.cond.wait()
            self.taken = k + 1
            self.cond.notify_all()
            return self.ready.pop(k)

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.ready.clear()
            self.cond.notify_all()


#: Prefetching iterators alive: stopped at interpreter exit, so no producer is killed inside a
#: torch kernel (which aborts the process: "terminate called without an active exception").
_running: weakref.WeakSet[_Prefetch] = weakref.WeakSet()


@atexit.register
def _stop_prefetching() -> None:
    states = list(_running)
    for state in states:
        state.stop()
    for state in states:  # let a producer inside a kernel finish it before the interpreter goes
        for thread in state.threads:
            thread.join(timeout=5)


def prefetched(make: Callable[[int], T], ahead: int, threads: int) -> Iterator[T]:
    """Yield make(0), make(1), ... in order, made by `threads` threads at most `ahead` batches early.

    An exception from `make` is raised to the consumer at its place in the sequence. Closing
    the iterator (or interpreter exit) stops the threads.
    """
    state = _Prefetch(ahead)

    def produce() -> None:
        while True:
            k = state.claim()
            if k is None:
                return
            try:
                item: Any = make(k)
            except BaseException as e:  # handed to the consumer instead of dying silently
                item = e
            state.deliver(k, item)

    workers = [
        threading.Thread(target=produce, name=f"bufconv-prefetch-{i}", daemon=True) for i in range(threads)
    ]
    state.threads = workers
    for worker in workers:
        worker.start()
    _running.add(state)
    try:
        k = 0
        while True:
            item = state.take(k)
            if isinstance(item, BaseException):
                raise item
            yield item
            k += 1
    finally:
        state.stop()
        _running.discard(state)
        for worker in workers:
            worker.join(timeout=5)


def batches(
    sample: Callable[..., T],
    generator: torch.Generator,
    batch_size: int,
    async_prefetch: bool,
    queue_size: int,
    image_dtype: torch.dtype,
    threads: int,
) -> Iterator[T]:
    """A buffer's endless `get_iterator` (LeRobot's signature) over its `sample`.

    With `async_prefetch`, `threads` background threads sample ahead of the learner, at most
    `queue_size` batches beyond those being made (more threads help only when cores are idle
    while the learner updates, e.g. a GPU learner whose batches stay on the CPU). Batches come
    out in a fixed order, and batch k is drawn from its own generator seeded from the buffer's
    generator, so the sequence is the same for the same seed however the threads are scheduled.
    """
    if not async_prefetch:
        while True:
            yield sample(batch_size, image_dtype=image_dtype)
    base = int(torch.randint(0, 2**62, (1,), generator=generator))

    def make(k: int) -> T:
        return sample(batch_size, image_dtype=image_dtype, generator=torch.Generator().manual_seed(base + k))

    yield from prefetched(make, ahead=queue_size + max(1, threads), threads=max(1, threads))
