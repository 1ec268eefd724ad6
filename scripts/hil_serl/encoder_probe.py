"""A learner `--bufconv.hook` that records what the policy's image encoder sees, per batch half.

    BUFCONV_PROBE=probe.jsonl python -m bufconv.lerobot.learner --config_path ... \\
        --bufconv.hook=scripts/hil_serl/encoder_probe.py

LeRobot's `OnlineOfflineMixer` puts the online transitions first in each batch and the offline
ones after; the Gaussian-actor encoder sees the images of all cameras stacked, camera after
camera. For every encoder forward during training this appends one JSON line to the file named by
`$BUFCONV_PROBE`: `{"event": "encoder", "t", "online": [min, max], "offline": [min, max]}`
(the dummy forward at construction and other shapes: `"all": [min, max]`), and after every
optimization step `{"event": "step", "t", "step", "online_size"}`; once the buffers exist,
`{"event": "buffers", "t", "online_size", ...}`; once the policy is made, `{"event": "policy", "t",
"sha1": {name: digest of the tensor's bytes}}` (what a resumed learner starts from). Times are `time.time()`. It records; it never checks (that is
`--bufconv.guard`'s job), so stock LeRobot's learner can be probed too (`--bufconv.buffers=lerobot
--bufconv.guard=false`).
"""

from __future__ import annotations

import json
import os
import threading
import time
from types import ModuleType
from typing import Any

ENV = "BUFCONV_PROBE"


class Probe:
    def __init__(self, path: str) -> None:
        self._file = open(path, "a", buffering=1)  # noqa: SIM115  (open for the process's life)
        self._lock = threading.Lock()
        self.batch_size = 0
        self.n_online = 0
        self.cameras = 0

    def write(self, **record: Any) -> None:
        with self._lock:
            self._file.write(json.dumps({"t": time.time(), **record}) + "\n")

    def encoder_hook(self, _module: Any, args: tuple[Any, ...]) -> None:
        images = args[0] if args else None
        if images is None or not hasattr(images, "shape") or images.ndim != 4:
            return
        x = images.detach().float()
        rows, b, n = x.shape[0], self.batch_size, self.n_online
        if b and self.cameras and rows == b * self.cameras and 0 < n < b:
            per_camera = x.reshape(self.cameras, b, *x.shape[1:])
            online, offline = per_camera[:, :n], per_camera[:, n:]
            self.write(event="encoder", online=_span(online), offline=_span(offline))
        else:
            self.write(event="encoder", all=_span(x))


def tensor_digests(tensors: Any) -> dict[str, str]:
    """Each tensor's SHA-1 over its dtype, shape and bytes (a policy's state dict, or a safetensors file's)."""
    import hashlib

    import torch

    out = {}
    for name, tensor in tensors.items():
        t = tensor.detach().cpu().contiguous().reshape(-1)
        digest = hashlib.sha1(f"{t.dtype}{tuple(tensor.shape)}".encode())
        digest.update(t.view(torch.uint8).numpy().tobytes())
        out[name] = digest.hexdigest()
    return out


def _span(x: Any) -> list[float]:
    return [round(float(x.min()), 4), round(float(x.max()), 4)]


def install(learner: ModuleType) -> None:
    path = os.environ.get(ENV)
    if not path:
        raise ImportError(f"encoder_probe: set ${ENV} to the JSONL file to write")
    probe = Probe(path)
    probe.write(event="start", pid=os.getpid())
    make_policy = learner.make_policy

    def make_probed_policy(*args: Any, **kwargs: Any) -> Any:
        policy = make_policy(*args, **kwargs)
        probe.write(event="policy", sha1=tensor_digests(policy.state_dict()))
        encoders = {id(m.image_encoder): m for m in policy.modules() if hasattr(m, "image_encoder")}
        for owner in encoders.values():
            probe.cameras = len(getattr(owner, "image_keys", ())) or probe.cameras
            owner.image_encoder.register_forward_pre_hook(probe.encoder_hook)
        return policy

    learner.make_policy = make_probed_policy
    trainer_class = learner.RLTrainer

    class ProbedTrainer(trainer_class):  # type: ignore[misc,valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            ratio = getattr(self.data_mixer, "online_ratio", 1.0)
            has_offline = getattr(self.data_mixer, "offline_buffer", None) is not None
            probe.batch_size = self.batch_size
            probe.n_online = max(1, int(self.batch_size * ratio)) if has_offline else self.batch_size
            online = getattr(self.data_mixer, "online_buffer", None)
            probe.write(
                event="buffers",
                batch_size=probe.batch_size,
                n_online=probe.n_online,
                online_size=None if online is None else len(online),  # what a resume brought back
            )

        def training_step(self) -> Any:
            stats = super().training_step()
            online = getattr(self.data_mixer, "online_buffer", None)
            probe.write(
                event="step",
                step=int(getattr(self.algorithm, "optimization_step", -1)),
                online_size=None if online is None else len(online),
            )
            return stats

    learner.RLTrainer = ProbedTrainer


def read(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a probe file (a torn last line, from a killed learner, is skipped)."""
    records = []
    with open(path) as f:
        for line in f:
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records
