"""LeRobot's learner with bufconv's buffers: same arguments as `python -m lerobot.rl.learner`.

python -m bufconv.lerobot.learner --config_path train_config.json

The offline buffer is served from a cache (`initialize_offline_replay_buffer`), the online one
is a `bufconv.OnlineBuffer` (`initialize_replay_buffer`), and checkpoints commit both buffers
with `checkpoint()` instead of rewriting them as LeRobot datasets; everything else is LeRobot's.
"""

from __future__ import annotations

import sys
from typing import Any

from .offline import initialize_offline_replay_buffer
from .online import initialize_replay_buffer, wrap_save_training_checkpoint


def install(module: Any = None, *, online: bool = True) -> Any:
    """Make LeRobot's learner use bufconv's buffers.

    Replaces `initialize_offline_replay_buffer`, and with `online` (where the module has them)
    `initialize_replay_buffer` and the buffer part of `save_training_checkpoint` (buffers are
    checkpointed with `checkpoint()`; policy and optimizer checkpoints stay LeRobot's).

    Args:
        module: The learner module to patch (default: the installed LeRobot's).
        online: Also replace the online buffer and the checkpoint's buffer part.

    Returns:
        The patched module.
    """
    if module is None:
        from .compat import learner_module

        module = learner_module()
    if not hasattr(module, "initialize_offline_replay_buffer"):
        raise ImportError(f"{module.__name__} has no initialize_offline_replay_buffer to replace")
    module.initialize_offline_replay_buffer = initialize_offline_replay_buffer
    if online:
        if hasattr(module, "initialize_replay_buffer"):
            module.initialize_replay_buffer = initialize_replay_buffer
        save = getattr(module, "save_training_checkpoint", None)
        if save is not None and not hasattr(save, "__wrapped__"):
            module.save_training_checkpoint = wrap_save_training_checkpoint(save)
    return module


def main() -> None:
    try:
        module = install()
    except ImportError as e:
        sys.exit(f"bufconv: error: {e}")
    module.train_cli()


if __name__ == "__main__":
    main()
