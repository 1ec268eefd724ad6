"""LeRobot integration: the learner's offline and online buffers, its entry point, a processor step.

Importing this package does not import LeRobot; each name below imports it on first use and
works with both module layouts (`lerobot.rl.*` in 0.4+, `lerobot.scripts.rl.*` and
`lerobot.utils.buffer` in 0.3.x).

    from bufconv.lerobot import initialize_offline_replay_buffer, initialize_replay_buffer, ImageRangeProcessorStep
    python -m bufconv.lerobot.learner --config_path train_config.json
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "initialize_offline_replay_buffer": "bufconv.lerobot.offline",
    "initialize_replay_buffer": "bufconv.lerobot.online",
    "resolve_image_range": "bufconv.lerobot.offline",
    "install": "bufconv.lerobot.learner",
    "ImageRangeProcessorStep": "bufconv.lerobot.processor",
    "buffer_to_lerobot_dataset": "bufconv.buffer.export",
}

__all__ = [  # literal, for linters; matches _EXPORTS
    "ImageRangeProcessorStep",
    "buffer_to_lerobot_dataset",
    "initialize_offline_replay_buffer",
    "initialize_replay_buffer",
    "install",
    "resolve_image_range",
]

if TYPE_CHECKING:
    from ..buffer.export import buffer_to_lerobot_dataset
    from .learner import install
    from .offline import initialize_offline_replay_buffer, resolve_image_range
    from .online import initialize_replay_buffer
    from .processor import ImageRangeProcessorStep


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'bufconv.lerobot' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
