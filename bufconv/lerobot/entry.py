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
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import torch
from torch import nn

from ..options import validate_depth_unit, validate_range
from ..pixelmap import PixelMap, check_mapped
from ..ranges import check_range, check_unit, guard_encoder

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


def guard_policy(
    policy: nn.Module,
    image_range: int,
    maps: dict[str, PixelMap] | None = None,
    depth_units: Mapping[str, str | None] | None = None,
) -> int:
    """`guard_encoder` on each of the policy's image encoders; returns how many were guarded.

    Args:
        policy: A LeRobot policy.
        image_range: The range of its buffers.
        maps: What each image key's encoder receives (`encoder_maps`): with a normalizer before the
            encoder (LeRobot's default MEAN_STD), each camera is checked against the image of [0,255]
            under its map, not against the range. None: the range alone (an IDENTITY normalizer).
        depth_units: The policy's depth keys and their unit (SPEC section 15; None: not known,
            not checked): never checked against the image range. An encoder that takes a depth
            camera (LeRobot's take their cameras concatenated along dim 0) checks each camera's
            chunk: depth by `check_unit` where it arrives as delivered (no normalizer before the
            encoder), else not there (the buffers' `add` and `bufconv check` cover its unit).
    """
    units = dict(depth_units or {})
    owners = encoder_owners(policy)
    for owner, encoder in owners:
        keys = list(getattr(owner, "image_keys", None) or [])
        if any(k in units for k in keys):
            _guard_chunks(encoder, keys, image_range, maps or {}, units)
            continue
        chunk_maps = [maps[k] for k in keys if maps and k in maps] if maps else []
        if maps and len(chunk_maps) != len(keys):
            chunk_maps = []  # an encoder over keys the config does not name: the range alone
        guard_encoder(
            encoder,
            image_range,
            pixel_maps=chunk_maps or None,
            names=keys or None,
            where=_WHERE,
            depth_units={k: u for k, u in units.items() if u is not None} or None,
        )
    if owners:
        described = sorted({m.describe() for k, m in (maps or {}).items() if k not in units})
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


_WHERE = "learner batch or actor observation -> policy encoder"


def _guard_chunks(
    encoder: nn.Module,
    keys: list[str],
    image_range: int,
    maps: Mapping[str, PixelMap],
    units: Mapping[str, str | None],
) -> None:
    """The guard of an encoder whose cameras include depth: each positional (B*K, C, H, W) input
    split into its K cameras (LeRobot's order, `image_keys`), each checked as its key requires."""

    def check(key: str, chunk: torch.Tensor) -> None:
        pixel_map = maps.get(key)
        raw = pixel_map is None or pixel_map.is_range(image_range)
        if key in units:
            unit = units[key]
            if raw and unit is not None:  # depth as delivered; under a normalizer it is no longer in a unit
                check_unit(chunk, unit, name=key)
        elif raw:
            check_range(chunk, image_range, name=key)
        else:
            assert pixel_map is not None
            check_mapped(chunk, pixel_map, name=key, where=_WHERE)

    def hook(_module: nn.Module, args: tuple[Any, ...]) -> None:
        for arg in args:
            if isinstance(arg, torch.Tensor) and arg.ndim == 4 and len(arg) % len(keys) == 0:
                for key, chunk in zip(keys, torch.chunk(arg, len(keys), dim=0), strict=True):
                    check(key, chunk)

    encoder.register_forward_pre_hook(hook)


def policy_depth_units(policy_cfg: Any, depth_unit: str | None) -> dict[str, str | None]:
    """The policy config's depth keys (VISUAL (1, H, W) `<cam>_depth` features), each in `depth_unit`
    (None: a unit not known here)."""
    from .offline import policy_depth_keys

    unit = None if depth_unit is None else validate_depth_unit(depth_unit)
    return {key: unit for key in policy_depth_keys(SimpleNamespace(policy=policy_cfg))}


def guarded_make_policy(
    make_policy: Callable[..., Any], image_range: int | None, depth_unit: str | None = None
) -> Callable[..., Any]:
    """LeRobot's `make_policy`, whose policies check their image encoders' inputs.

    The range is `image_range`, else the one `resolve_image_range` finds in the policy config;
    the map each encoder is checked against comes from the config's normalizer (SPEC section 14).
    Depth keys of the policy are checked against `depth_unit` (the training config's
    `dataset.depth_output_unit`, which `make_policy` is not given); None: they are left unchecked
    by the guard (never range-checked).
    """
    if hasattr(make_policy, "__wrapped__"):
        return make_policy

    def make_guarded_policy(*args: Any, **kwargs: Any) -> Any:
        from .offline import resolve_image_range

        policy = make_policy(*args, **kwargs)
        policy_cfg = kwargs.get("cfg", args[0] if args else None)
        resolved = resolve_image_range(SimpleNamespace(policy=policy_cfg), image_range)
        guard_policy(
            policy, resolved, encoder_maps(policy_cfg, resolved), policy_depth_units(policy_cfg, depth_unit)
        )
        return policy

    make_guarded_policy.__wrapped__ = make_policy  # type: ignore[attr-defined]
    return make_guarded_policy
