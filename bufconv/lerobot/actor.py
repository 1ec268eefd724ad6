"""LeRobot's actor, with live images in the learner's range: same arguments as `python -m lerobot.rl.actor`.

python -m bufconv.lerobot.actor --config_path train_config.json [--bufconv.image_range=255]

Four things differ from LeRobot's own actor:

- the env processor gets `ImageRangeProcessorStep(image_range)` right after LeRobot's
  `VanillaObservationProcessorStep`, so live images leave the actor in the range the learner's
  buffers and encoder use (and are checked there): LeRobot's config has no place for a step of
  one's own;
- the policy's image encoders check what they see (`--bufconv.guard`, default true), against
  the map of the config's normalizer (LeRobot's default MEAN_STD included);
- a reward classifier in the env processor receives what its training gave it: [0,1] images
  through its saved pre-processor, at either range (LeRobot 0.6.1's step skips that
  pre-processor; `--bufconv.classifier_input=lerobot` keeps its behaviour);
- when the learner goes away (killed, restarted with `resume=true`), the actor reconnects to it
  and goes on sending transitions: LeRobot 0.6.1's streaming threads end at the first gRPC
  error, so its actor keeps stepping the env for nobody. What it produced meanwhile waits in its
  queue, and the message that was in flight is sent again: each transitions message is its own
  call, acknowledged by its reply (`bufconv.lerobot.delivery`; what can still be lost is said there).

On LeRobot 0.3.x (`lerobot.scripts.rl.actor`), which has no processor steps, the first point is
done with a gym wrapper: `make_robot_env` (as the actor module imported it) is wrapped so that the
env it returns delivers images in `image_range`, after `ImageCropResizeWrapper` and its clamp
(`bufconv.lerobot.wrappers`); a reward classifier there is one of LeRobot's wrappers inside that env,
given its [0,1] images whatever the range (`--bufconv.classifier_input` changes nothing). The guard
finds 0.3.x's `SACObservationEncoder.image_encoder` as 0.4+'s, after the policy's own normalizer.
Its `send_transitions` has 0.6.1's signature and stream: reconnecting and delivery apply unchanged.

Options as for the learner (`bufconv.lerobot.entry`): `--bufconv.image_range`, `--bufconv.guard`,
`--bufconv.hook`; and `--bufconv.classifier_input=trained|lerobot`.
"""

from __future__ import annotations

import functools
import logging
import sys
from typing import Any

from .delivery import delivering
from .entry import guarded_make_policy, parse_bool, parse_range, run_hooks, split_options

log = logging.getLogger("bufconv")

ACTOR_MODULES = ("lerobot.rl.actor", "lerobot.scripts.rl.actor")
OPTIONS = ("image_range", "guard", "hook", "classifier_input")
#: The actor's streaming functions, each run in its own thread/process until shutdown.
STREAMS = ("send_transitions", "send_interactions", "receive_policy")
RECONNECT_DELAY_S = 2.0
#: LeRobot env-processor steps that produce or assume images in [0,1]; the range step goes after them.
_ZERO_ONE_STEPS = ("VanillaObservationProcessorStep", "ImageCropResizeProcessorStep")


def with_range_step(make_processors: Any, image_range: int, classifier_input: str = "trained") -> Any:
    """LeRobot's `make_processors`, whose env processor puts images in `image_range` and checks them.

    A reward classifier in the env processor (LeRobot's `RewardClassifierProcessorStep`) receives
    what its training gave it, whatever the range: [0,1] images through its saved pre-processor
    (`classifier_input="trained"`), or LeRobot's plain [0,1] images (`"lerobot"`).
    """
    if hasattr(make_processors, "__wrapped__"):
        return make_processors
    from .classifier import CLASSIFIER_INPUTS

    if classifier_input not in CLASSIFIER_INPUTS:
        raise ValueError(
            f"--bufconv.classifier_input: expected one of {', '.join(CLASSIFIER_INPUTS)}; got {classifier_input!r}"
        )

    @functools.wraps(make_processors)
    def make_ranged_processors(*args: Any, **kwargs: Any) -> Any:
        from .classifier import mend_classifier_steps
        from .processor import ImageRangeProcessorStep

        env_processor, action_processor = make_processors(*args, **kwargs)
        steps = list(env_processor.steps)
        # After every step that expects [0,1] images: LeRobot's crop/resize clamps to [0,1]
        # after resizing, which would flatten [0,255] images (`bufconv check`'s clamp-before-range).
        at = max((i + 1 for i, step in enumerate(steps) if type(step).__name__ in _ZERO_ONE_STEPS), default=0)
        steps.insert(at, ImageRangeProcessorStep(image_range=image_range))
        mend_classifier_steps(steps, at, image_range, classifier_input)
        env_processor.steps = steps
        log.info("bufconv: env processor: %s", " -> ".join(type(step).__name__ for step in steps))
        return env_processor, action_processor

    return make_ranged_processors


def reconnecting(stream: Any) -> Any:
    """One of the actor's streaming functions, run again after the learner went away.

    Each is `f(cfg, queue, shutdown_event, ...)` and returns when its gRPC call ends (a lost
    learner ends it with an error that LeRobot logs); it is started again, every
    `RECONNECT_DELAY_S`, until the shutdown event is set. The gRPC channel reconnects by itself.
    """
    if hasattr(stream, "__wrapped__"):
        return stream

    @functools.wraps(stream)
    def run(cfg: Any, queue: Any, shutdown_event: Any, *args: Any, **kwargs: Any) -> None:
        while True:
            stream(cfg, queue, shutdown_event, *args, **kwargs)
            if shutdown_event.is_set() or shutdown_event.wait(RECONNECT_DELAY_S):
                return
            log.warning("bufconv: %s: the learner went away; reconnecting", stream.__name__)

    return run


def install(
    module: Any = None,
    *,
    image_range: int = 1,
    guard: bool = False,
    reconnect: bool = True,
    classifier_input: str = "trained",
) -> Any:
    """Make LeRobot's actor send images in `image_range`, check them, and survive learner restarts.

    Args:
        module: The actor module to patch (default: the installed LeRobot's).
        image_range: The range of the learner's buffers and encoder (1 or 255).
        guard: Range-check every forward of the policy's image encoders.
        reconnect: Restart the streaming functions when the learner goes away; transitions are
            sent one message per call, and a message whose call failed is sent again.
        classifier_input: What a reward classifier in the env processor receives: "trained" (its
            saved pre-processor on [0,1] images, as in its training) or "lerobot" (plain [0,1] images).

    Returns:
        The patched module.
    """
    if module is None:
        from .compat import import_first

        module = import_first(ACTOR_MODULES, "the LeRobot actor")
    if hasattr(module, "make_processors"):  # 0.4+: processor pipelines
        module.make_processors = with_range_step(module.make_processors, image_range, classifier_input)
    elif hasattr(module, "make_robot_env"):  # 0.3.x: gym wrappers
        from .wrappers import with_range_wrapper

        module.make_robot_env = with_range_wrapper(module.make_robot_env, image_range)
    else:
        raise ImportError(f"{module.__name__} has neither make_processors nor make_robot_env to extend")
    if guard and hasattr(module, "make_policy"):
        module.make_policy = guarded_make_policy(module.make_policy, image_range)
    if reconnect:
        for name in STREAMS:
            if name == "send_transitions" and hasattr(module, "learner_service_client"):
                module.send_transitions = delivering(module.send_transitions, module.learner_service_client)
            elif hasattr(module, name):
                setattr(module, name, reconnecting(getattr(module, name)))
    return module


def main() -> None:
    try:
        options, sys.argv[1:] = split_options(sys.argv[1:], OPTIONS)
        module = install(
            image_range=parse_range(options.get("image_range")) or 1,
            guard=parse_bool((options.get("guard") or ["true"])[-1], "guard"),
            classifier_input=(options.get("classifier_input") or ["trained"])[-1],
        )
        run_hooks(options.get("hook", []), module)
    except (ImportError, ValueError) as e:
        sys.exit(f"bufconv: error: {e}")
    module.actor_cli()


if __name__ == "__main__":
    main()
