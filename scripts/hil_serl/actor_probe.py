"""An actor `--bufconv.hook` that records what the learner acknowledged: the actor's own record of what it sent.

    BUFCONV_ACTOR_PROBE=sent.jsonl python -m bufconv.lerobot.actor --config_path ... \\
        --bufconv.hook=scripts/hil_serl/actor_probe.py

bufconv's actor sends each transitions message in a call of its own, whose reply acknowledges it
(`bufconv.lerobot.delivery`). For every acknowledged message this appends one JSON line to the
file named by `$BUFCONV_ACTOR_PROBE`: `{"event": "sent", "t", "transitions"}` (`time.time()`, the
number of transitions the message held). It records; it never changes what is sent.
"""

from __future__ import annotations

import json
import os
import threading
import time
from types import ModuleType
from typing import Any

ENV = "BUFCONV_ACTOR_PROBE"


def install(actor: ModuleType) -> None:
    path = os.environ.get(ENV)
    if not path:
        raise ImportError(f"actor_probe: set ${ENV} to the JSONL file to write")
    from lerobot.transport.utils import bytes_to_transitions

    from bufconv.lerobot import delivery

    out = open(path, "a", buffering=1)  # noqa: SIM115  (open for the process's life)
    lock = threading.Lock()
    end = delivery._Call.end

    def recorded_end(call: Any, acknowledged: bool) -> None:
        message = call.message
        end(call, acknowledged)
        if acknowledged and message is not None:
            count = len(bytes_to_transitions(message))
            with lock:
                out.write(json.dumps({"event": "sent", "t": time.time(), "transitions": count}) + "\n")

    delivery._Call.end = recorded_end  # type: ignore[method-assign]
