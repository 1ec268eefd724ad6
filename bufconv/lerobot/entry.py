"""What the learner and actor entry points share: `--bufconv.*` options, hooks, the encoder guard.

`python -m bufconv.lerobot.learner` and `python -m bufconv.lerobot.actor` take LeRobot's own
arguments plus a few of bufconv's, spelled `--bufconv.NAME=VALUE` and taken out of `sys.argv`
before LeRobot's parser (which refuses names it does not know) sees the rest:

- `--bufconv.image_range=1|255`: the range images reach the policy in (default: the config's,
  see `resolve_image_range`; 1 for LeRobot's own policies);
- `--bufconv.guard=true|false`: check every forward of the policy's image encoders against
  that range (`bufconv.guard_encoder`; default true);
- `--bufconv.hook=FILE.py|MODULE` (repeatable): a module imported before LeRobot starts; its
  `install(module)`, if any, is called with LeRobot's learner or actor module (for probes and
  for working around bugs of a LeRobot release without editing its files).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

from torch import nn

from ..options import validate_range
from ..pixelmap import PixelMap
from ..ranges import guard_encoder

log = logging.getLogger("bufconv")

PREFIX = "--bufconv."
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off")
_USAGE = "expected --bufconv.NAME=VALUE with NAME one of {names}; got {arg!r}"


def split_options(argv: Sequence[str], names: Iterable[str]) -> tuple[dict[str, list[str]], list[str]]:
    """Take `--bufconv.NAME=VALUE` (or `--bufconv.NAME VALUE`) out of `argv`.

    Returns:
        (values per name, in the order given; the other arguments, for LeRobot's parser).

    Raises:
        ValueError: an unknown NAME, or a NAME without a value.
    """
    known = tuple(names)
    options: dict[str, list[str]] = {}
    rest: list[str] = []
    args = iter(argv)
    for arg in args:
        if not arg.startswith(PREFIX):
            rest.append(arg)
            continue
        name, has_value, value = arg[len(PREFIX) :].partition("=")
        if not has_value:
            value = next(args, "")
        if name not in known or not value:
            raise ValueError(_USAGE.format(names=", ".join(known), arg=arg))
        options.setdefault(name, []).append(value)
    return options, rest


def parse_bool(text: str, name: str) -> bool:
    if text.lower() in _TRUE:
        return True
    if text.lower() in _FALSE:
        return False
    raise ValueError(f"--bufconv.{name}: expected true or false; got {text!r}")


def parse_range(values: list[str] | None) -> int | None:
    if not values:
        return None
    try:
        return validate_range(int(values[-1]))
    except ValueError as e:
        raise ValueError(f"--bufconv.image_range: {e}") from None


def parse_interval(values: list[str] | None, default: float | None) -> float | None:
    """`--bufconv.commit_interval_s`: seconds > 0, or none/off (commits only at checkpoints)."""
    if not values:
        return default
    text = values[-1].strip().lower()
    if text in ("none", "off", "null"):
        return None
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise ValueError(f"--bufconv.commit_interval_s: expected seconds > 0, or none; got {values[-1]!r}")
    return seconds


def load_hook(spec: str) -> ModuleType:
    """Import a hook: a `.py` file (by path) or a module name."""
    if spec.endswith(".py"):
        path = Path(spec)
        if not path.is_file():
            raise ImportError(f"--bufconv.hook: no file {spec}")
        module_spec = importlib.util.spec_from_file_location(f"bufconv_hook_{path.stem}", path)
        if module_spec is None or module_spec.loader is None:
            raise ImportError(f"--bufconv.hook: cannot import {spec}")
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_spec.name] = module
        module_spec.loader.exec_module(module)
        return module
    return importlib.import_module(spec)


def run_hooks(specs: Iterable[str], target: ModuleType) -> None:
    """Import each hook and call its `install(target)` where it has one."""
    for spec in specs:
        hook = load_hook(spec)
        install = getattr(hook, "install", None)
        if callable(install):
            install(target)
        log.info("bufconv: hook %s loaded", spec)


def encoder_owners(policy: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(owner, encoder) for every `image_encoder` submodule of a LeRobot policy, each encoder once.

    (LeRobot's SAC/Gaussian-actor policies hold one per observation encoder, shared between the
    actor and the critics when `shared_encoder` is set; the owner knows its cameras, `image_keys`.)
    """
    found: dict[int, tuple[nn.Module, nn.Module]] = {}
    for module in policy.modules():
        encoder = getattr(module, "image_encoder", None)
        if isinstance(encoder, nn.Module):
            found.setdefault(id(encoder), (module, encoder))
    return list(found.values())


def image_encoders(policy: nn.Module) -> list[nn.Module]:
    """The image encoders of a LeRobot policy: every `image_encoder` submodule, each once."""
    return [encoder for _, encoder in encoder_owners(policy)]


def encoder_maps(policy_cfg: Any, image_range: int) -> dict[str, PixelMap]:
    """What each image key's encoder receives, from the policy config's normalizer and the range."""
    from ..contract.chain import encoder_maps as chain_maps
    from ..contract.config import read_config

    return chain_maps(read_config(SimpleNamespace(policy=policy_cfg), image_range=image_range))


def guard_policy(policy: nn.Module, image_range: int, maps: dict[str, PixelMap] | None = None) -> int:
    """`guard_encoder` on each of the policy's image encoders; returns how many were guarded.

    Args:
        policy: A LeRobot policy.
        image_range: The range of its buffers.
        maps: What each image key's encoder receives (`encoder_maps`): with a normalizer before the
            encoder (LeRobot's default MEAN_STD), each camera is checked against the image of [0,255]
            under its map, not against the range. None: the range alone (an IDENTITY normalizer).
    """
    owners = encoder_owners(policy)
    for owner, encoder in owners:
        keys = list(getattr(owner, "image_keys", None) or [])
        chunk_maps = [maps[k] for k in keys if maps and k in maps] if maps else []
        if maps and len(chunk_maps) != len(keys):
            chunk_maps = []  # an encoder over keys the config does not name: the range alone
        guard_encoder(
            encoder,
            image_range,
            pixel_maps=chunk_maps or None,
            names=keys or None,
            where="learner batch or actor observation -> policy encoder",
        )
    if owners:
        described = sorted({m.describe() for m in (maps or {}).values()})
        log.info(
            "bufconv: %d image encoder(s) of %s check every forward against range %d%s",
            len(owners),
            type(policy).__name__,
            image_range,
            f" (the encoder receives {'; '.join(described)})" if described else "",
        )
    else:
        log.warning("bufconv: %s has no image_encoder to guard", type(policy).__name__)
    return len(owners)


def guarded_make_policy(make_policy: Callable[..., Any], image_range: int | None) -> Callable[..., Any]:
    """LeRobot's `make_policy`, whose policies check their image encoders' inputs.

    The range is `image_range`, else the one `resolve_image_range` finds in the policy config;
    the map each encoder is checked against comes from the config's normalizer (SPEC section 14).
    """
    if hasattr(make_policy, "__wrapped__"):
        return make_policy

    def make_guarded_policy(*args: Any, **kwargs: Any) -> Any:
        from .offline import resolve_image_range

        policy = make_policy(*args, **kwargs)
        policy_cfg = kwargs.get("cfg", args[0] if args else None)
        resolved = resolve_image_range(SimpleNamespace(policy=policy_cfg), image_range)
        guard_policy(policy, resolved, encoder_maps(policy_cfg, resolved))
        return policy

    make_guarded_policy.__wrapped__ = make_policy  # type: ignore[attr-defined]
    return make_guarded_policy
