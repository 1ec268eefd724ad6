"""A learner resumed with `resume=true` goes on from its last checkpoint's weights (LeRobot #4560).

LeRobot 0.6.1's learner, on resume, replaces the config it was started with by the checkpoint's
`train_config.json` (`handle_resume_logic`; what `validate()` had set, `policy.pretrained_path`
included, is gone). `make_policy` loads weights only from `policy.pretrained_path`: `null` in a run
that started from scratch (a fresh policy), or the weights the run started from (not the
checkpoint's). `load_training_state` then restores the optimizers, RNG, step and the algorithm's
own tensors (critics, targets, temperature): the actor and encoder go on from fresh weights under
Adam moments of others, and the actor receives those fresh weights first (the learner pushes them
right after `make_policy`). It also turns any error into "not resuming" (step 0) with one log line.

`mend_resume(module)` wraps two of the learner module's functions:

- `handle_resume_logic`: the config it returns has `policy.pretrained_path` at the checkpoint's
  `pretrained_model/` (as `lerobot-train`'s own resume does), so `make_policy` loads the
  checkpoint's weights before anything is pushed to the actor;
- `load_training_state`: a resume that restored nothing raises, and so does a policy whose
  weights are not the checkpoint's `model.safetensors` (`from_pretrained` loads non-strictly).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

log = logging.getLogger("bufconv")

#: The learner functions wrapped (each keeps LeRobot's as `__wrapped__`).
RESUME_FUNCTIONS = ("handle_resume_logic", "load_training_state")
CHECKPOINT = Path("checkpoints") / "last"  # LeRobot's CHECKPOINTS_DIR / LAST_CHECKPOINT_LINK


class ResumeError(RuntimeError):
    """A resumed learner would not go on from its last checkpoint."""


def last_checkpoint(cfg: Any) -> Path:
    return Path(cfg.output_dir) / CHECKPOINT


def wrap_handle_resume_logic(original: Any) -> Any:
    """LeRobot's `handle_resume_logic`, whose resumed config loads the policy from the last checkpoint."""

    @functools.wraps(original)
    def handle_resume_logic(cfg: Any) -> Any:
        cfg = original(cfg)
        if getattr(cfg, "resume", False) and getattr(cfg, "policy", None) is not None:
            pretrained = last_checkpoint(cfg) / "pretrained_model"
            if cfg.policy.pretrained_path != pretrained:
                log.info(
                    "bufconv: resume: the policy's weights from %s (the checkpoint's config said %s)",
                    pretrained,
                    cfg.policy.pretrained_path,
                )
            cfg.policy.pretrained_path = pretrained
        return cfg

    return handle_resume_logic


def policy_mismatches(policy: Any, model_file: Path) -> list[str]:
    """The tensors of the checkpoint's `model.safetensors` that the policy lacks or holds otherwise."""
    import torch
    from safetensors.torch import load_file

    state = policy.state_dict()
    return [
        key
        for key, tensor in load_file(str(model_file)).items()
        if key not in state or not torch.equal(state[key].detach().cpu(), tensor)
    ]


def wrap_load_training_state(original: Any) -> Any:
    """LeRobot's `load_training_state`, which raises where a resume would not go on from the checkpoint."""

    @functools.wraps(original)
    def load_training_state(cfg: Any, optimizers: Any, algorithm: Any = None, device: Any = "cpu") -> Any:
        result = original(cfg=cfg, optimizers=optimizers, algorithm=algorithm, device=device)
        if not getattr(cfg, "resume", False):
            return result
        checkpoint = last_checkpoint(cfg)
        if result[0] is None:
            raise ResumeError(
                f"resume=true, but LeRobot restored no training state from {checkpoint} (its error is logged above)"
            )
        policy = getattr(algorithm, "policy", None)
        if policy is not None:
            wrong = policy_mismatches(policy, checkpoint / "pretrained_model" / "model.safetensors")
            if wrong:
                raise ResumeError(
                    f"resume=true, but {len(wrong)} of the policy's tensors are not the checkpoint's"
                    f" ({', '.join(wrong[:3])}{', ...' if len(wrong) > 3 else ''})"
                )
        return result

    return load_training_state


def mend_resume(module: Any) -> Any:
    """Wrap the learner module's resume functions (see the module's docstring); once only."""
    wraps = {"handle_resume_logic": wrap_handle_resume_logic, "load_training_state": wrap_load_training_state}
    for name, wrap in wraps.items():
        function = getattr(module, name, None)
        if function is not None and not hasattr(function, "__wrapped__"):
            setattr(module, name, wrap(function))
    return module
