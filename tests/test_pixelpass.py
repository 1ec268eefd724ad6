"""The one-pass conversion (`bufconv.buffer.pixelpass`): the compiled kernel is built by the
dev install and gives exactly what numpy and `to_uint8` give, min, max and NaN included."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bufconv.buffer import pixelpass
from bufconv.ranges import to_uint8

# Sizes around the kernel's 16-value step: tails of every length, and one camera image.
SIZES = [(1,), (15,), (16,), (17,), (3, 5, 7), (3, 128, 128)]


def images(shape: tuple[int, ...], image_range: int, seed: int) -> np.ndarray:
    """Pixels with exact halves (the rounding's ties), both ends and the slack outside them."""
    g = np.random.default_rng(seed)
    n = int(np.prod(shape))
    pixels = np.minimum(g.integers(0, 256, n) + g.choice([0.0, 0.5, 0.49, 0.51], n), 255.0)
    pixels[: min(n, 4)] = [-0.02, 0.0, 255.0, 255.02][: min(n, 4)]
    g.shuffle(pixels)
    scale = 255.0 if image_range == 1 else 1.0
    return (pixels / scale).astype(np.float32).reshape(shape)


def run(convert, src: np.ndarray, scale: float) -> tuple[np.ndarray, float, float]:
    dst = np.full(src.shape, 7, np.uint8)
    lo, hi = convert(src, dst, scale)
    return dst, lo, hi


def test_the_dev_install_built_the_kernel() -> None:
    assert pixelpass.COMPILED, (
        "bufconv.buffer._pixelpass is not built: reinstall with a C compiler (scripts/setup.sh --dev)"
    )


@pytest.mark.parametrize("image_range", [1, 255])
@pytest.mark.parametrize("shape", SIZES, ids=str)
def test_the_kernel_gives_to_uint8s_pixels_and_numpys_min_and_max(shape, image_range: int) -> None:
    scale = 255.0 if image_range == 1 else 1.0
    for seed in range(3):
        src = images(shape, image_range, seed)
        expected = to_uint8(torch.from_numpy(src), image_range).numpy()
        for convert in (pixelpass.to_uint8_into, pixelpass.numpy_to_uint8_into):
            dst, lo, hi = run(convert, src, scale)
            np.testing.assert_array_equal(dst, expected, err_msg=convert.__name__)
            assert (lo, hi) == (float(src.min()), float(src.max())), convert.__name__


@pytest.mark.parametrize("where", [0, 37, 16 * 6 + 3, -1], ids=lambda w: f"at-{w}")  # body and tail
def test_a_nan_anywhere_gives_a_nan_min_and_max(where: int) -> None:
    src = images((3, 5, 7), 1, 0)
    src.reshape(-1)[where] = np.nan
    for convert in (pixelpass.to_uint8_into, pixelpass.numpy_to_uint8_into):
        _, lo, hi = run(convert, src, 255.0)
        assert np.isnan(lo) and np.isnan(hi), convert.__name__  # what span_problem refuses, as numpy gives


@pytest.mark.parametrize("value", [np.inf, -np.inf, 2.0, -1.0])
def test_values_outside_the_range_reach_the_check(value: float) -> None:
    src = images((17,), 1, 1)
    src[9] = value
    for convert in (pixelpass.to_uint8_into, pixelpass.numpy_to_uint8_into):
        _, lo, hi = run(convert, src, 255.0)
        assert (lo, hi) == (float(src.min()), float(src.max()))


def test_non_contiguous_input_is_converted_by_numpy() -> None:
    src = np.ascontiguousarray(images((3, 8, 8), 1, 2).transpose(0, 2, 1)).transpose(0, 2, 1)
    assert not src.flags.c_contiguous
    dst, lo, hi = run(pixelpass.to_uint8_into, src, 255.0)
    np.testing.assert_array_equal(dst, to_uint8(torch.from_numpy(src), 1).numpy())
    assert (lo, hi) == (float(src.min()), float(src.max()))


@pytest.mark.skipif(not pixelpass.COMPILED, reason="test_the_dev_install_built_the_kernel fails instead")
def test_the_kernel_refuses_other_dtypes_and_sizes() -> None:
    kernel = pixelpass._compiled
    with pytest.raises(TypeError, match="float32"):
        kernel(np.zeros(16, np.float64), np.zeros(16, np.uint8), 255.0)
    with pytest.raises(TypeError, match="uint8"):
        kernel(np.zeros(16, np.float32), np.zeros(16, np.int8), 255.0)
    with pytest.raises(ValueError, match="16 values, dst 15"):
        kernel(np.zeros(16, np.float32), np.zeros(15, np.uint8), 255.0)
    with pytest.raises((BufferError, ValueError)):
        kernel(np.zeros(16, np.float32), np.zeros(16, np.uint8)[None].repeat(2, 0)[:, ::2], 255.0)
