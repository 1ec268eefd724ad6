"""DrQ's random-shift augmentation (pad by replicating the border, crop back at a random offset)."""

from __future__ import annotations

from collections.abc import Callable

import torch

PAD = 4  # LeRobot's default random-shift padding


def random_shift(
    images: torch.Tensor,
    shifts: torch.Tensor,
    pad: int = PAD,
    empty: Callable[[tuple[int, ...], torch.dtype], torch.Tensor] | None = None,
) -> torch.Tensor:
    """DrQ's random shift: pad by replicating the border, crop back at per-image offsets.

    Equal to LeRobot's `random_shift` (pad `pad`, replicate, random crop) for the same
    offsets, computed as a clamped gather so it works on uint8 and never materialises the pad.

    Args:
        images: (B, C, H, W), any dtype.
        shifts: int64 (B, 2): per image (dy, dx) in [0, 2 * pad].
        empty: Allocator for the intermediate and the result (`empty(shape, dtype)`).
    """
    b, c, h, w = images.shape
    device = images.device
    rows = (torch.arange(h, device=device)[None, :] + shifts[:, :1] - pad).clamp_(0, h - 1)
    cols = (torch.arange(w, device=device)[None, :] + shifts[:, 1:] - pad).clamp_(0, w - 1)
    shape = (b, c, h, w)
    by_rows = (
        images.gather(2, rows[:, None, :, None].expand(shape))
        if empty is None
        else torch.gather(images, 2, rows[:, None, :, None].expand(shape), out=empty(shape, images.dtype))
    )
    if empty is None:
        return by_rows.gather(3, cols[:, None, None, :].expand(shape))
    return torch.gather(by_rows, 3, cols[:, None, None, :].expand(shape), out=empty(shape, images.dtype))


def draw_shifts(count: int, generator: torch.Generator, device: torch.device, pad: int = PAD) -> torch.Tensor:
    """Per-image (dy, dx) offsets in [0, 2 * pad], drawn on the CPU generator, moved to `device`."""
    return torch.randint(0, 2 * pad + 1, (count, 2), generator=generator).to(device, non_blocking=True)
