"""LeRobot's learner with bufconv's buffers: same arguments as `python -m lerobot.rl.learner`.

python -m bufconv.lerobot.learner --config_path train_config.json [--bufconv.image_range=255]

The offline buffer is served from a cache (`initialize_offline_replay_buffer`), the online one
is a `bufconv.OnlineBuffer` (`initialize_replay_buffer`), checkpoints commit both buffers
with `checkpoint()` instead of rewriting them as LeRobot datasets, and the policy's image
encoders check every batch against the range; `resume=true` goes on from the last checkpoint's
policy weights (LeRobot 0.6.1 rebuilds the policy from fresh ones: `bufconv.lerobot.resume`);
everything else is LeRobot's. Options (see
`bufconv.lerobot.entry`): `--bufconv.image_range`, `--bufconv.guard`, `--bufconv.hook`,
`--bufconv.cache=PATH` (the offline cache, instead of `<output_dir>/offline_buffer.pt`: one
cache for every run on the same data, as LeRobot refuses to start a new run in an existing
output_dir), `--bufconv.commit_interval_s=SECONDS` (background commits of both buffers, default
1; `none`: only at LeRobot's checkpoints), and `--bufconv.buffers=lerobot`, which keeps
LeRobot's own buffers (to compare).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

from ..buffer.commits import DEFAULT_COMMIT_INTERVAL_S
from .entry import guarded_make_policy, parse_bool, parse_interval, parse_range, run_hooks, split_options
from .offline import initialize_offline_replay_buffer
from .online import initialize_replay_buffer, wrap_save_training_checkpoint
from .resume import mend_resume

OPTIONS = ("image_range", "guard", "hook", "buffers", "cache", "commit_interval_s")


def install(
    module: Any = None,
    *,
    online: bool = True,
    image_range: int | None = None,
    guard: bool = False,
    buffers: bool = True,
    cache_path: str | None = None,
    commit_interval_s: float | None = DEFAULT_COMMIT_INTERVAL_S,
) -> Any:
    """Make LeRobot's learner use bufconv's buffers (and check what its encoders see).

    Replaces `initialize_offline_replay_buffer`, and with `online` (where the module has them)
    `initialize_replay_buffer` and the buffer part of `save_training_checkpoint` (buffers are
    checkpointed with `checkpoint()`; policy and optimizer checkpoints stay LeRobot's). A resumed
    run loads the policy from its last checkpoint (`bufconv.lerobot.resume.mend_resume`).

    Args:
        module: The learner module to patch (default: the installed LeRobot's).
        online: Also replace the online buffer and the checkpoint's buffer part.
        image_range: The range for both buffers and the guard (default: the config's).
        guard: Wrap the module's `make_policy` so that every forward of the policy's image
            encoders is range-checked (`bufconv.guard_encoder`).
        buffers: Replace the buffers (False keeps LeRobot's own, for comparisons).
        cache_path: The offline cache (default `<output_dir>/offline_buffer.pt`).
        commit_interval_s: Seconds between background commits of the online buffer and the
            offline buffer's added transitions, independent of LeRobot's `save_freq` (None:
            only at LeRobot's checkpoints).

    Returns:
        The patched module.
    """
    if module is None:
        from .compat import learner_module

        module = learner_module()
    if not hasattr(module, "initialize_offline_replay_buffer"):
        raise ImportError(f"{module.__name__} has no initialize_offline_replay_buffer to replace")
    if guard and hasattr(module, "make_policy"):
        module.make_policy = guarded_make_policy(module.make_policy, image_range)
    mend_resume(module)  # resume=true goes on from the last checkpoint's weights (bufconv.lerobot.resume)
    if not buffers:
        return module
    common: dict[str, Any] = {"commit_interval_s": commit_interval_s}
    if image_range is not None:
        common["image_range"] = image_range
    offline_options = dict(common, cache_path=cache_path) if cache_path is not None else common
    module.initialize_offline_replay_buffer = functools.partial(
        initialize_offline_replay_buffer, **offline_options
    )
    if online:
        if hasattr(module, "initialize_replay_buffer"):
            module.initialize_replay_buffer = functools.partial(initialize_replay_buffer, **common)
        save = getattr(module, "save_training_checkpoint", None)
        if save is not None and not hasattr(save, "__wrapped__"):
            module.save_training_checkpoint = wrap_save_training_checkpoint(save)
    return module


def main() -> None:
    try:
        options, sys.argv[1:] = split_options(sys.argv[1:], OPTIONS)
        buffers = (options.get("buffers") or ["bufconv"])[-1]
        if buffers not in ("bufconv", "lerobot"):
            raise ValueError(f"--bufconv.buffers: expected bufconv or lerobot; got {buffers!r}")
        module = install(
            image_range=parse_range(options.get("image_range")),
            guard=parse_bool((options.get("guard") or ["true"])[-1], "guard"),
            buffers=buffers == "bufconv",
            cache_path=options["cache"][-1] if options.get("cache") else None,
            commit_interval_s=parse_interval(options.get("commit_interval_s"), DEFAULT_COMMIT_INTERVAL_S),
        )
        run_hooks(options.get("hook", []), module)
    except (ImportError, ValueError) as e:
        sys.exit(f"bufconv: error: {e}")
    module.train_cli()


if __name__ == "__main__":
    main()
