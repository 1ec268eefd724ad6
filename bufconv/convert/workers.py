"""A small pool of decoding processes, started as `python -m bufconv.convert.workers`.

multiprocessing's spawn and forkserver re-import the caller's main module in every worker, so a
script calling `bufconv.build(workers=4)` without an `if __name__ == "__main__"` guard would
start builds recursively; fork copies a process that may hold threads (torch, gRPC) and locks.
These workers are plain subprocesses that import only bufconv's decoding code (no torch). The
parent sends each a pickled unit over its stdin and reads a pickled result from its stdout.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import selectors
import struct
import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO, Any

from ..errors import DecodeError

_HEADER = struct.Struct("<Q")


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_HEADER.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    header = stream.read(_HEADER.size)
    if len(header) < _HEADER.size:
        raise EOFError("the other side closed the pipe")
    (size,) = _HEADER.unpack(header)
    data = stream.read(size)
    if len(data) < size:
        raise EOFError("the other side closed the pipe mid-message")
    return pickle.loads(data)


def serve() -> None:
    """Worker main loop: run units from stdin until it closes, answer each on stdout."""
    from .units import run_unit

    requests, replies = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # anything printed must not corrupt the reply stream
    while True:
        try:
            unit = _receive(requests)
        except EOFError:
            return
        try:
            reply: tuple[str, Any] = ("ok", run_unit(unit))
        except Exception as e:  # sent back whole: the parent re-raises it
            reply = ("error", e)
        _send(replies, reply)


class _Worker:
    def __init__(self) -> None:
        env = dict(os.environ)
        package_parent = str(Path(__file__).resolve().parents[1])
        if package_parent not in sys.path:  # bufconv imported from a path the child would not search
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [env.get("PYTHONPATH"), package_parent]))
        # A session of their own: Ctrl-C reaches the parent only, which stops the workers.
        self.process = subprocess.Popen(
            [sys.executable, "-m", "bufconv.convert.workers"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            start_new_session=True,
        )
        assert self.process.stdin is not None and self.process.stdout is not None
        self.stdin, self.stdout = self.process.stdin, self.process.stdout
        self.unit: Any = None

    def close(self, kill: bool) -> None:
        """Close the pipes (the worker exits on end of input) and reap it in the background:
        waiting here would add the worker's interpreter shutdown to the build."""
        if kill and self.process.poll() is None:
            self.process.kill()
        for stream in (self.stdin, self.stdout):
            with contextlib.suppress(OSError):  # a killed worker's pipe
                stream.close()
        threading.Thread(target=self.process.wait, name="bufconv-reap-worker", daemon=True).start()


class WorkerPool:
    """Decoding processes, started as soon as the pool is made (they import while the parent prepares).

    Use as a context manager; `run` may be called once. Leaving the block stops the workers
    (killing them if a unit failed).

    Args:
        workers: Decoders in all. The calling process is one of them (it decodes too, while a
            thread serves the others), so `workers - 1` processes are started.
    """

    def __init__(self, workers: int) -> None:
        self.workers = [_Worker() for _ in range(max(1, workers) - 1)]
        self._failed = False

    @property
    def size(self) -> int:
        """Decoders in all, the calling process included."""
        return len(self.workers) + 1

    def __enter__(self) -> WorkerPool:
        return self

    def __exit__(self, kind: object, *rest: object) -> None:
        for worker in self.workers:
            worker.close(kill=self._failed or kind is not None)

    def run(
        self,
        units: Sequence[Any],
        local: Callable[[Any], int],
        on_done: Callable[[Any, int], None] | None = None,
    ) -> None:
        """Run `units` (give the largest first): here with `local(unit)`, and in the worker processes.

        `on_done(unit, frames)` is called after each unit, from either thread, one at a time.

        Raises:
            The first error a unit raised, or DecodeError if a worker died.
        """
        pending = deque(units)
        lock = threading.Lock()
        errors: list[BaseException] = []

        def take() -> Any:
            with lock:
                return pending.popleft() if pending and not errors else None

        def done(unit: Any, frames: int) -> None:
            if on_done is not None:
                with lock:
                    on_done(unit, frames)

        self._failed = True
        server = threading.Thread(
            target=self._serve, args=(take, done, errors), name="bufconv-pool", daemon=True
        )
        server.start()
        try:
            while (unit := take()) is not None:
                done(unit, local(unit))
        except BaseException as e:
            errors.append(e)
            for worker in self.workers:  # stop the others now, not after their units: their pipes
                if worker.process.poll() is None:  # then end, which wakes the serving thread
                    worker.process.kill()
            raise
        finally:
            server.join()
        if errors:
            raise errors[0]
        self._failed = False

    def _serve(
        self, take: Callable[[], Any], done: Callable[[Any, int], None], errors: list[BaseException]
    ) -> None:
        """Feed the worker processes units until none are left (runs in a thread)."""
        selector = selectors.DefaultSelector()
        try:
            for worker in self.workers:
                unit = take()
                if unit is not None:
                    worker.unit = unit
                    _send(worker.stdin, unit)
                    selector.register(worker.stdout, selectors.EVENT_READ, worker)
            busy = len(selector.get_map())
            while busy:
                for key, _ in selector.select():
                    worker = key.data
                    try:
                        status, value = _receive(worker.stdout)
                    except (EOFError, OSError, ValueError):  # died, or killed because the parent failed
                        if not errors:
                            errors.append(
                                DecodeError(
                                    f"a decoding worker died (exit status {worker.process.wait()}) while decoding "
                                    f"{getattr(worker.unit, 'path', worker.unit)}; retry with --workers 1 to see why"
                                )
                            )
                        return
                    if status == "error":
                        errors.append(value)
                        return
                    done(worker.unit, value)
                    unit = take()
                    if unit is not None:
                        worker.unit = unit
                        _send(worker.stdin, unit)
                    else:
                        selector.unregister(worker.stdout)
                        busy -= 1
        except OSError:  # a pipe broke while sending: the worker is gone
            if not errors:
                errors.append(DecodeError("a decoding worker died; retry with --workers 1 to see why"))
        except BaseException as e:  # surfaced by run()
            errors.append(e)
        finally:
            selector.close()


if __name__ == "__main__":
    serve()
