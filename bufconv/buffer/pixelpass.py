"""Float32 camera images to uint8 in one pass, with their min and max (the range check's input).

`to_uint8_into` is the compiled kernel of `_pixelpass.c` when the install built it (setup.py,
an optional extension: a machine without a C compiler still installs bufconv), else the same
computation in numpy, five passes instead of one. Both give to_uint8's pixels (the float32
product, rounded half to even) for every accepted value; `COMPILED` says which one runs.
"""

from __future__ import annotations

import numpy as np

try:
    from ._pixelpass import to_uint8_into as _compiled
except ImportError:  # built without a compiler, or run from a source tree never built
    _compiled = None

COMPILED = _compiled is not None
_ROUND_INTO_LOW_BYTE = np.float32(1.5 * 2**23)  # floats in [2**23, 2**24) are the integers: ulp 1


def to_uint8_into(src: np.ndarray, dst: np.ndarray, scale: float) -> tuple[float, float]:
    """`dst := round_half_even(float32(src * scale))` as uint8, and `(src.min(), src.max())`.

    Args:
        src: float32 (the kernel reads it when C-contiguous, numpy otherwise).
        dst: uint8, C-contiguous, as many values as `src`.
        scale: 255 for images in [0, 1], 1 for images in [0, 255].

    Returns:
        The min and max (both NaN if `src` holds a NaN, as numpy's). `dst` is meaningful only where the caller
        accepts them (values within a few hundredths of [0, 255] after scaling): a caller that
        refuses the image must treat `dst` as garbage.
    """
    if _compiled is not None and src.flags.c_contiguous:
        return _compiled(src, dst, scale)
    return numpy_to_uint8_into(src, dst, scale)


def numpy_to_uint8_into(src: np.ndarray, dst: np.ndarray, scale: float) -> tuple[float, float]:
    """`to_uint8_into` in numpy (the fallback, and the reference the kernel is tested against)."""
    lo, hi = float(src.min()), float(src.max())
    scratch = np.multiply(src.reshape(dst.shape), np.float32(scale), dtype=np.float32)
    # Adding 1.5 * 2**23 rounds (the FPU's round-half-even) to a float whose low mantissa byte
    # is the integer: for accepted values that byte is the pixel.
    np.add(scratch, _ROUND_INTO_LOW_BYTE, out=scratch)
    np.copyto(dst, scratch.view(np.uint32), casting="unsafe")
    return lo, hi
