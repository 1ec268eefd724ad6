"""The range contract: what value range images are in, checked wherever they cross a boundary.

A range is 1 (floats in [0,1], LeRobot's convention) or 255 (floats in [0,255], for encoders
that normalise their own inputs). A uint8 tensor is always range 255. The checks refuse the
three ways the original bug shows up:

- values above 1 where [0,1] was declared (someone forgot to divide by 255);
- values never above 1 where [0,255] was declared (someone divided when they should not);
- values inside [0, 1/255] (divided by 255 twice): the images are ~255x too small and the
  policy is blind. This is refused whatever the declared range.

An all-zero image is ambiguous (black frame, either range) and accepted.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .errors import DOUBLE_NORMALIZED, RANGE_MISMATCH, RangeMismatchError, UnitMismatchError
from .options import validate_depth_unit, validate_range
from .pixelmap import PixelMap, check_mapped

#: Values at or below this (and not all zero) are taken as "divided by 255 twice".
DOUBLE_NORMALIZED_MAX = 1.0 / 255.0 + 1e-6
_SLACK = 1e-4  # float round-off above the top of a range

OBS_IMAGE = "observation.image"
OBS_IMAGES = "observation.images"
OBS_STATE = "observation.state"
OBS_ENV_STATE = "observation.environment_state"

_MESSAGE = "{key}: declared range {declared} (floats in [0,{declared}]) but the values span [{lo:.6g}, {hi:.6g}]: {diagnosis}"
_FIX_TO_1 = (
    "these look like [0,255] images; build the buffer with --range 255, or divide by 255 once before it"
)
_FIX_TO_255 = "these look like [0,1] images; build the buffer with --range 1, or stop dividing by 255 before the encoder (bufconv.lerobot.ImageRangeProcessorStep(image_range=255) does it for live images)"
_FIX_DOUBLE = "the images were divided by 255 twice (values inside [0, 1/255]); remove one of the divisions"
_FIX_NEGATIVE = "negative values: the images are already normalised (x/255 - 0.5 or mean/std); hand the raw range to the buffer and normalise once, inside the encoder"
_FIX_ABOVE_255 = "values above 255 are not pixel values; check what is being fed in"
_FIX_UINT8 = "a uint8 tensor holds [0,255] pixels; convert it with bufconv.to_range(x, 255, 1)"
_FIX_NAN = "the images contain NaN or inf"


def range_problem(x: torch.Tensor, image_range: int, *, name: str = "image") -> RangeMismatchError | None:
    """The range problem of `x` against `image_range`, or None if it fits. (The bool half of `check_range`.)"""
    declared = validate_range(image_range)
    if x.numel() == 0:
        return None
    if x.dtype == torch.uint8:
        if declared == 255:
            return None
        lo, hi = (float(v) for v in torch.aminmax(x))
        return _error(name, declared, lo, hi, _FIX_UINT8, RANGE_MISMATCH)
    if not x.is_floating_point():
        raise TypeError(f"{name}: expected a float or uint8 image tensor, got {x.dtype}")
    lo_t, hi_t = torch.aminmax(x.detach())
    return span_problem(float(lo_t), float(hi_t), declared, name=name)


def span_problem(lo: float, hi: float, image_range: int, *, name: str = "image") -> RangeMismatchError | None:
    """The range problem of float images whose values span [lo, hi] (`range_problem` once the
    min and max are known: a caller that computed them in its own pass checks with this)."""
    declared = image_range
    if not (math.isfinite(lo) and math.isfinite(hi)):  # math's: a tenth of numpy's cost on floats
        return _error(name, declared, lo, hi, _FIX_NAN, RANGE_MISMATCH)
    if lo == 0.0 and hi == 0.0:
        return None  # a black frame: valid in either range
    if lo < -_SLACK:
        return _error(name, declared, lo, hi, _FIX_NEGATIVE, RANGE_MISMATCH)
    if hi <= DOUBLE_NORMALIZED_MAX:
        return _error(name, declared, lo, hi, _FIX_DOUBLE, DOUBLE_NORMALIZED)
    if declared == 1 and hi > 1.0 + _SLACK:
        return _error(name, declared, lo, hi, _FIX_TO_1, RANGE_MISMATCH)
    if declared == 255 and hi <= 1.0 + _SLACK:
        return _error(name, declared, lo, hi, _FIX_TO_255, RANGE_MISMATCH)
    if declared == 255 and hi > 255.0 + _SLACK * 255:
        return _error(name, declared, lo, hi, _FIX_ABOVE_255, RANGE_MISMATCH)
    return None


def _error(name: str, declared: int, lo: float, hi: float, diagnosis: str, code: str) -> RangeMismatchError:
    return RangeMismatchError(
        _MESSAGE.format(key=name, declared=declared, lo=lo, hi=hi, diagnosis=diagnosis),
        key=name,
        expected=declared,
        found_min=lo,
        found_max=hi,
        problem=code,
    )


def check_range(x: torch.Tensor, image_range: int, *, name: str = "image") -> None:
    """Raise `RangeMismatchError` unless `x` holds images in the declared range.

    Args:
        x: Images, float (any shape) or uint8 (always range 255).
        image_range: 1 or 255.
        name: The key, for the message.

    Raises:
        RangeMismatchError: naming the key, the declared range, the observed min/max and the fix.
    """
    problem = range_problem(x, image_range, name=name)
    if problem is not None:
        raise problem


def to_range(x: torch.Tensor, src: int, dst: int) -> torch.Tensor:
    """Convert images from range `src` to range `dst`; returns float32.

    A uint8 tensor is always range 255, whatever `src` says.
    """
    src, dst = validate_range(src), validate_range(dst)
    if x.dtype == torch.uint8:
        src = 255
    y = x.to(torch.float32)
    if src == dst:
        return y if y is not x else y.clone()
    return y * 255.0 if dst == 255 else y / 255.0


def to_uint8(x: torch.Tensor, image_range: int, *, scratch: np.ndarray | None = None) -> torch.Tensor:
    """Store images of range `image_range` as uint8 (rounded half to even; uint8 input is returned as is).

    Args:
        scratch: float32 memory shaped like `x` to compute in (a buffer adding many images
            reuses one instead of fresh pages for each).
    """
    if x.dtype == torch.uint8:
        return x
    scale = 255.0 if validate_range(image_range) == 1 else 1.0
    if x.device.type == "cpu" and x.dtype == torch.float32:
        # numpy: the same float32 product and rounding as torch's, 3x faster for a live image
        # (torch's float -> uint8 cast alone costs more than numpy's whole conversion).
        scaled = np.multiply(x.detach().numpy(), np.float32(scale), dtype=np.float32, out=scratch)
        np.rint(scaled, out=scaled)
        np.clip(scaled, 0, 255, out=scaled)
        return torch.from_numpy(scaled.astype(np.uint8))
    scaled_t = x * scale if scale != 1.0 else x
    return scaled_t.round().clamp_(0, 255).to(torch.uint8)


def from_uint8(
    x: torch.Tensor, image_range: int, dtype: torch.dtype = torch.float32, *, out: torch.Tensor | None = None
) -> torch.Tensor:
    """uint8 pixels to `dtype` in range `image_range` (exactly LeRobot's `x.float() / 255` for range 1).

    Args:
        out: A float32 tensor shaped like `x` to write into (float32 `dtype` only).
    """
    if dtype == torch.uint8:
        return x
    y = x.to(torch.float32) if out is None else out.copy_(x)
    if validate_range(image_range) == 1:
        y.div_(255.0)  # in place: one float allocation per batch, not two (same values as y / 255)
    return y if dtype == torch.float32 else y.to(dtype)


def _looks_like_image_key(key: str) -> bool:
    return key.startswith(OBS_IMAGE) or "image" in key or "pixels" in key


def _tensors_to_check(
    value: Any, keys: Iterable[str] | None, prefix: str
) -> Iterable[tuple[str, torch.Tensor]]:
    if isinstance(value, torch.Tensor):
        if value.ndim >= 3 and (value.is_floating_point() or value.dtype == torch.uint8):
            yield prefix, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            if isinstance(v, torch.Tensor) and (
                k in keys if keys is not None else _looks_like_image_key(str(k))
            ):
                if v.ndim >= 3:
                    yield str(k), v
            elif isinstance(v, Mapping):
                yield from _tensors_to_check(v, keys, str(k))


def guard_encoder(
    module: nn.Module,
    image_range: int,
    *,
    keys: Iterable[str] | None = None,
    every: int = 1,
    pixel_maps: Sequence[PixelMap] | None = None,
    names: Sequence[str] | None = None,
    where: str = "policy encoder",
    depth_units: Mapping[str, str] | None = None,
) -> torch.utils.hooks.RemovableHandle:
    """Check the images reaching `module.forward` against `image_range` (a forward pre-hook).

    Image tensors passed positionally or by keyword (ndim >= 3) are checked, as are image
    entries of observation dicts (`keys`, or keys containing "image"/"pixels").

    Args:
        module: The encoder.
        image_range: The range the encoder expects: 1, or 255 if it normalises its inputs itself.
        keys: Dict keys to check (default: image-looking keys).
        every: Check one call in `every` (the check costs one min/max pass over the images).
        pixel_maps: What the encoder receives when a normalizer runs before it (SPEC section 14):
            the map of each camera whose images are concatenated along dim 0 into one positional
            input, in order (LeRobot's SAC encoders take all cameras as one batch). A tensor is then
            checked against the image of [0,255] under its camera's map (`pixelmap.map_problem`),
            not against a range. Cameras whose map is the range alone are checked as without maps.
        names: The cameras' keys, for messages (with `pixel_maps`).
        where: The path, for messages (with `pixel_maps`).
        depth_units: Depth keys of observation dicts and the unit each is declared in ("mm" or
            "m"): those entries are checked with `check_unit`, not against the image range.

    Returns:
        The hook handle; `.remove()` it to stop checking.

    Raises:
        RangeMismatchError: from the hooked forward, when images are in the wrong range.
    """
    validate_range(image_range)
    wanted = None if keys is None else set(keys)
    units = dict(depth_units or {})
    if wanted is not None:
        wanted |= set(units)
    calls = [0]
    maps = list(pixel_maps) if pixel_maps else None
    labels = list(names) if names else None
    plain = maps is None or all(m.is_range(image_range) for m in maps)

    def check_mapped_batch(tensor: torch.Tensor, fallback: str) -> None:
        if maps is None:
            return
        if tensor.ndim < 4 or tensor.shape[0] % len(maps):
            if all(m.same_as(maps[0]) for m in maps):
                check_mapped(tensor, maps[0], name=fallback, where=where)
            return  # cameras with different maps, not split evenly: nothing to tell them apart by
        for i, chunk in enumerate(torch.chunk(tensor, len(maps), dim=0)):
            name = labels[i] if labels and i < len(labels) else f"{fallback} camera {i}"
            if maps[i].is_range(image_range):
                check_range(chunk, image_range, name=name)
            else:
                check_mapped(chunk, maps[i], name=name, where=where)

    def hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        calls[0] += 1
        if (calls[0] - 1) % every:
            return
        for i, arg in enumerate(args):
            for name, tensor in _tensors_to_check(arg, wanted, f"{type(_module).__name__} input {i}"):
                if name in units:
                    check_unit(tensor, units[name], name=name)
                elif plain:
                    check_range(tensor, image_range, name=name)
                else:
                    check_mapped_batch(tensor, name)
        for key, arg in kwargs.items():
            for name, tensor in _tensors_to_check(arg, wanted, key):
                if name in units:
                    check_unit(tensor, units[name], name=name)
                elif plain:
                    check_range(tensor, image_range, name=name)
                else:
                    check_mapped_batch(tensor, name)

    return module.register_forward_pre_hook(hook, with_kwargs=True)


def preprocess_observation(observations: Mapping[str, Any], image_range: int = 1) -> dict[str, Any]:
    """LeRobot's `envs.utils.preprocess_observation`, with the image range as a parameter.

    Gym observations (numpy) in, LeRobot observations (torch, batched) out: `pixels` become
    `observation.image` / `observation.images.<camera>` as float32 (B, C, H, W) in
    `image_range` (1 gives exactly LeRobot's output); `environment_state` and `agent_pos`
    become `observation.environment_state` and `observation.state`.

    Raises:
        ValueError: images are not uint8 channel-last.
    """
    image_range = validate_range(image_range)
    out: dict[str, Any] = {}
    if "pixels" in observations:
        pixels = observations["pixels"]
        images = (
            {f"{OBS_IMAGES}.{k}": v for k, v in pixels.items()}
            if isinstance(pixels, Mapping)
            else {OBS_IMAGE: pixels}
        )
        for key, image in images.items():
            tensor = torch.from_numpy(np.asarray(image))
            if tensor.ndim == 3:
                tensor = tensor.unsqueeze(0)
            _, h, w, c = tensor.shape
            if not (c < h and c < w):
                raise ValueError(f"{key}: expected channel-last images, got shape {tuple(tensor.shape)}")
            if tensor.dtype != torch.uint8:
                raise ValueError(f"{key}: expected uint8 images, got {tensor.dtype}")
            tensor = tensor.permute(0, 3, 1, 2).contiguous().to(torch.float32)
            out[key] = tensor / 255 if image_range == 1 else tensor
    if "environment_state" in observations:
        env_state = torch.from_numpy(np.asarray(observations["environment_state"])).float()
        out[OBS_ENV_STATE] = env_state.unsqueeze(0) if env_state.dim() == 1 else env_state
    if "agent_pos" in observations:
        agent_pos = torch.from_numpy(np.asarray(observations["agent_pos"])).float()
        out[OBS_STATE] = agent_pos.unsqueeze(0) if agent_pos.dim() == 1 else agent_pos
    if "robot_state" in observations:
        out["observation.robot_state"] = _nested_to_torch(observations["robot_state"])
    for key in ("policy", "camera_obs"):  # IsaacLab Arena observations pass through, as in LeRobot
        if key in observations:
            out[f"observation.{key}"] = observations[key]
    # Other array keys become float `observation.<key>` (batched), as LeRobot passes them through.
    handled = {"pixels", "environment_state", "agent_pos", "robot_state", "policy", "camera_obs"}
    for key, value in observations.items():
        target = f"observation.{key}"
        if key in handled or target in out or not isinstance(value, (np.ndarray, torch.Tensor)):
            continue
        tensor = (torch.from_numpy(value) if isinstance(value, np.ndarray) else value).float()
        out[target] = tensor.unsqueeze(0) if tensor.dim() == 1 else tensor
    return out


def _nested_to_torch(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _nested_to_torch(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    return value


# ---- the unit contract of depth keys (SPEC section 15) ----------------------------------------

#: Depth beyond this many metres is implausible for a robot's camera, and below this many
#: millimetres everywhere in a frame as well: the line between the two units.
UNIT_SPLIT = 20.0
MM_PER_METRE = 1000.0

_UNIT_MESSAGE = "{key}: declared unit {unit} but the depth values span [{lo:.6g}, {hi:.6g}]: {diagnosis}"
_FIX_M_IN_MM = (
    "these look like metres (nothing beyond {split:g}); declare metres (--depth-unit m, depth_unit='m'), "
    "or convert them with bufconv.to_unit(x, 'm', 'mm') before they enter"
)
_FIX_MM_IN_M = (
    "these look like millimetres (values beyond {split:g}); declare millimetres (--depth-unit mm, "
    "depth_unit='mm'), or convert them with bufconv.to_unit(x, 'mm', 'm') before they enter"
)
_FIX_NEGATIVE_DEPTH = "negative values: depth is a distance; these are normalised or not depth at all"


def unit_problem(x: torch.Tensor, unit: str, *, name: str = "depth") -> UnitMismatchError | None:
    """The unit problem of depth `x` against `unit` ("mm" or "m"), or None if it fits (the bool
    half of `check_unit`).

    Non-finite values are left out (simulators mark "no return" with inf); a frame that is all
    zero (no return anywhere) or all non-finite is ambiguous and accepted.
    """
    unit = validate_depth_unit(unit)
    if x.numel() == 0:
        return None
    values = x.detach()
    if values.is_floating_point():
        finite = values[torch.isfinite(values)]
        if finite.numel() == 0:
            return None
        lo_t, hi_t = torch.aminmax(finite)
    else:
        lo_t, hi_t = torch.aminmax(values.to(torch.int64))
    return depth_span_problem(float(lo_t), float(hi_t), unit, name=name)


def depth_span_problem(lo: float, hi: float, unit: str, *, name: str = "depth") -> UnitMismatchError | None:
    """The unit problem of depth values spanning [lo, hi] (`unit_problem` once min and max are known)."""
    if lo == 0.0 and hi == 0.0:
        return None
    if lo < 0.0:
        diagnosis = _FIX_NEGATIVE_DEPTH
    elif unit == "mm" and hi <= UNIT_SPLIT:
        diagnosis = _FIX_M_IN_MM.format(split=UNIT_SPLIT)
    elif unit == "m" and hi > UNIT_SPLIT:
        diagnosis = _FIX_MM_IN_M.format(split=UNIT_SPLIT)
    else:
        return None
    return UnitMismatchError(
        _UNIT_MESSAGE.format(key=name, unit=unit, lo=lo, hi=hi, diagnosis=diagnosis),
        key=name,
        unit=unit,
        found_min=lo,
        found_max=hi,
    )


def check_unit(x: torch.Tensor, unit: str, *, name: str = "depth") -> None:
    """Raise `UnitMismatchError` unless `x` holds depth in `unit`.

    Metres where millimetres are declared (values that never exceed ~20) and millimetres where
    metres are declared (values above ~20) are refused, as are negative values.

    Args:
        x: Depth, float or integer, any shape.
        unit: "mm" or "m".
        name: The key, for the message.

    Raises:
        UnitMismatchError: naming the key, the declared unit, the observed span and the fix.
    """
    problem = unit_problem(x, unit, name=name)
    if problem is not None:
        raise problem


def to_unit(x: torch.Tensor, src: str, dst: str) -> torch.Tensor:
    """Convert depth from unit `src` to unit `dst` ("mm" or "m"); returns float32.

    The arithmetic is LeRobot's (`x * 1000` from metres, `x / 1000` from millimetres, in float32),
    so a converted frame equals what LeRobot's reader gives for `depth_output_unit=dst`.
    """
    src, dst = validate_depth_unit(src), validate_depth_unit(dst)
    y = x.to(torch.float32)
    if src == dst:
        return y if y is not x else y.clone()
    return y * MM_PER_METRE if dst == "mm" else y / MM_PER_METRE
