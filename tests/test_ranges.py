"""The range contract (SPEC section 3): conversions, checks, the encoder guard, preprocessing.

Oracle: LeRobot's own `lerobot.envs.utils.preprocess_observation`.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from bufconv import (
    RangeMismatchError,
    check_range,
    guard_encoder,
    preprocess_observation,
    range_problem,
    to_range,
)
from bufconv.ranges import from_uint8, to_uint8

RANGES = (1, 255)
PAIRS = [(src, dst) for src in RANGES for dst in RANGES]

# ---------------------------------------------------------------------------------------------
# strategies


def pixel_arrays(min_max: int = 0) -> st.SearchStrategy[np.ndarray]:
    """uint8 images (N, C, H, W) of small random shape; the brightest pixel is at least `min_max`."""
    shapes = hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=6)
    arrays = hnp.arrays(np.uint8, shapes, elements=st.integers(0, 255))
    return arrays.filter(lambda a: int(a.max()) >= min_max)


def image_in_range(image_range: int) -> st.SearchStrategy[torch.Tensor]:
    """Float images whose values are anywhere in [0, image_range] (not only multiples of 1/255)."""
    shapes = hnp.array_shapes(min_dims=3, max_dims=4, min_side=1, max_side=6)
    elements = st.floats(0.0, float(image_range), width=32, allow_nan=False, allow_infinity=False)
    return hnp.arrays(np.float32, shapes, elements=elements).map(torch.from_numpy)


# ---------------------------------------------------------------------------------------------
# to_range


@pytest.mark.parametrize(("src", "dst"), PAIRS)
@settings(max_examples=40, deadline=None)
@given(data=st.data())
def test_to_range_round_trips_within_float_tolerance(src: int, dst: int, data: st.DataObject) -> None:
    """to_range(src->dst->src) returns the input (float32 tolerance) and always float32."""
    x = data.draw(image_in_range(src))
    y = to_range(x, src, dst)
    assert y.dtype == torch.float32
    assert y.shape == x.shape
    expected = x * 255.0 if (src, dst) == (1, 255) else x / 255.0 if (src, dst) == (255, 1) else x
    torch.testing.assert_close(y, expected, rtol=1e-6, atol=1e-6)
    back = to_range(y, dst, src)
    assert back.dtype == torch.float32
    torch.testing.assert_close(back, x, rtol=1e-5, atol=1e-5 * src)


@pytest.mark.parametrize(("src", "dst"), PAIRS)
@settings(max_examples=25, deadline=None)
@given(pixels=pixel_arrays())
def test_to_range_uint8_is_always_range_255(src: int, dst: int, pixels: np.ndarray) -> None:
    """A uint8 tensor is range 255 whatever `src` says: dst 255 gives the values, dst 1 gives LeRobot's x/255."""
    x = torch.from_numpy(pixels)
    y = to_range(x, src, dst)
    assert y.dtype == torch.float32
    expected = x.to(torch.float32) if dst == 255 else x.to(torch.float32) / 255.0
    assert torch.equal(y, expected)


def test_to_range_same_range_returns_a_copy() -> None:
    """src == dst never aliases the caller's tensor (writing the result must not corrupt the input)."""
    x = torch.rand(1, 3, 4, 4)
    y = to_range(x, 1, 1)
    y.zero_()
    assert x.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, 2, 256, 1.5, True, "255"])
def test_to_range_rejects_unknown_ranges(bad: object) -> None:
    """Only 1 and 255 are ranges."""
    with pytest.raises(ValueError, match="image_range must be 1"):
        to_range(torch.rand(1, 3, 2, 2), bad, 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="image_range must be 1"):
        check_range(torch.rand(1, 3, 2, 2), bad)  # type: ignore[arg-type]


@pytest.mark.parametrize("image_range", RANGES)
@settings(max_examples=25, deadline=None)
@given(pixels=pixel_arrays())
def test_uint8_storage_round_trip_is_exact(image_range: int, pixels: np.ndarray) -> None:
    """Storing a range's floats as uint8 and reading them back reproduces LeRobot's floats exactly."""
    u8 = torch.from_numpy(pixels)
    floats = from_uint8(u8, image_range)
    assert floats.dtype == torch.float32
    expected = u8.float() / 255 if image_range == 1 else u8.float()
    assert torch.equal(floats, expected)
    assert torch.equal(to_uint8(floats, image_range), u8)
    assert from_uint8(u8, image_range, torch.uint8) is u8


# ---------------------------------------------------------------------------------------------
# check_range


@settings(max_examples=40, deadline=None)
@given(pixels=pixel_arrays(min_max=2))
def test_check_range_accepts_images_in_their_declared_range(pixels: np.ndarray) -> None:
    """Real pixels are accepted as x/255 in range 1, as floats in range 255, and as uint8 in range 255."""
    u8 = torch.from_numpy(pixels)
    check_range(u8.float() / 255, 1)
    check_range(u8.float(), 255)
    check_range(u8, 255)
    assert range_problem(u8.float() / 255, 1) is None


@pytest.mark.parametrize("image_range", RANGES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.uint8])
def test_check_range_accepts_all_zero_images(image_range: int, dtype: torch.dtype) -> None:
    """A black frame is valid in either range (but a uint8 black frame is still uint8: range 255 only)."""
    zeros = torch.zeros(2, 3, 8, 8, dtype=dtype)
    if dtype == torch.uint8 and image_range == 1:
        with pytest.raises(RangeMismatchError):
            check_range(zeros, image_range)
    else:
        check_range(zeros, image_range)


@settings(max_examples=30, deadline=None)
@given(pixels=pixel_arrays(min_max=2))
def test_check_range_refuses_255_images_in_range_1(pixels: np.ndarray) -> None:
    """Floats above 1 where [0,1] was declared: someone forgot to divide by 255."""
    x = torch.from_numpy(pixels).float()
    with pytest.raises(RangeMismatchError) as info:
        check_range(x, 1, name="observation.images.front")
    error = info.value
    assert error.problem == "range-mismatch"
    assert error.key == "observation.images.front"
    assert error.expected == 1
    assert error.found_min == float(x.min())
    assert error.found_max == float(x.max())
    assert "observation.images.front" in str(error)
    assert "declared range 1" in str(error)
    assert f"{float(x.max()):.6g}" in str(error)


@settings(max_examples=30, deadline=None)
@given(pixels=pixel_arrays(min_max=2))
def test_check_range_refuses_unit_images_in_range_255(pixels: np.ndarray) -> None:
    """Floats that never exceed 1 where [0,255] was declared: someone divided by 255."""
    x = torch.from_numpy(pixels).float() / 255
    with pytest.raises(RangeMismatchError) as info:
        check_range(x, 255, name="cam")
    assert info.value.problem == "range-mismatch"
    assert info.value.expected == 255
    assert info.value.found_max == pytest.approx(float(x.max()))
    assert "declared range 255" in str(info.value)


@pytest.mark.parametrize("image_range", RANGES)
def test_check_range_refuses_negative_values(image_range: int) -> None:
    """Already-normalised images (x/255 - 0.5, mean/std) are refused in both ranges."""
    x = torch.linspace(0, 1, 3 * 8 * 8).reshape(1, 3, 8, 8) - 0.5
    with pytest.raises(RangeMismatchError) as info:
        check_range(x, image_range)
    assert info.value.found_min == pytest.approx(-0.5)
    assert "negative" in str(info.value)


@pytest.mark.parametrize("image_range", RANGES)
@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_check_range_refuses_nan_and_inf(image_range: int, bad: float) -> None:
    """A single NaN/inf pixel is refused, even in an otherwise valid image."""
    x = torch.full((1, 3, 4, 4), 0.5 if image_range == 1 else 128.0)
    x[0, 1, 2, 3] = bad
    with pytest.raises(RangeMismatchError, match="NaN or inf"):
        check_range(x, image_range)


@pytest.mark.parametrize("image_range", RANGES)
@settings(max_examples=30, deadline=None)
@given(pixels=pixel_arrays(min_max=1))
def test_check_range_names_double_normalization(image_range: int, pixels: np.ndarray) -> None:
    """Images divided by 255 twice (values inside [0, 1/255]) are refused in either range, and named so."""
    x = torch.from_numpy(pixels).float() / 255 / 255
    with pytest.raises(RangeMismatchError) as info:
        check_range(x, image_range, name="observation.images.wrist")
    error = info.value
    assert error.problem == "double-normalized"
    assert "divided by 255 twice" in str(error)
    assert "observation.images.wrist" in str(error)
    assert error.found_max <= 1 / 255 + 1e-6
    problem = range_problem(x, image_range)
    assert problem is not None
    assert problem.problem == "double-normalized"


def test_check_range_refuses_the_lerobot_sim_encoder_symptom() -> None:
    """The SPEC's symptom: (x/255)/255 - 0.5 lands in [-0.5, -0.496] and is refused."""
    u8 = torch.randint(0, 256, (2, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    x = (u8.float() / 255) / 255 - 0.5
    assert float(x.min()) >= -0.5 and float(x.max()) <= -0.496
    for image_range in RANGES:
        with pytest.raises(RangeMismatchError):
            check_range(x, image_range)


def test_check_range_refuses_uint8_in_range_1() -> None:
    """A uint8 tensor holds [0,255] pixels, never [0,1] floats."""
    u8 = torch.full((1, 3, 4, 4), 7, dtype=torch.uint8)
    with pytest.raises(RangeMismatchError) as info:
        check_range(u8, 1, name="pixels")
    assert info.value.expected == 1
    assert info.value.found_max == 7.0
    assert "uint8" in str(info.value)
    check_range(u8, 255)


def test_range_mismatch_error_is_a_bufconv_error_and_a_value_error() -> None:
    """Callers can catch it as BufconvError or as ValueError."""
    from bufconv import BufconvError

    error = range_problem(torch.full((1, 3, 2, 2), 200.0), 1)
    assert isinstance(error, BufconvError)
    assert isinstance(error, ValueError)
    assert range_problem(torch.full((1, 3, 2, 2), 0.5), 1) is None


# ---------------------------------------------------------------------------------------------
# guard_encoder


class Encoder(nn.Module):
    """A small conv encoder that counts how often its forward body runs."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, kernel_size=3)
        self.calls = 0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.conv(images)


class DictEncoder(nn.Module):
    """Takes a LeRobot observation dict, as SAC's observation encoder does."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=3)
        self.calls = 0

    def forward(self, observation: dict[str, torch.Tensor]) -> torch.Tensor:
        self.calls += 1
        feature = self.conv(observation["observation.images.front"]).mean(dim=(1, 2, 3))
        return feature + observation["observation.state"].sum(dim=1)


def _pixels(batch: int = 2, h: int = 12, w: int = 10, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=generator)


@pytest.mark.parametrize("image_range", RANGES)
def test_guard_encoder_stops_wrong_range_before_forward(image_range: int) -> None:
    """Images in the wrong range raise from the pre-hook: the encoder body never runs."""
    encoder = Encoder()
    guard_encoder(encoder, image_range)
    pixels = _pixels()
    wrong = pixels.float() if image_range == 1 else pixels.float() / 255
    with pytest.raises(RangeMismatchError) as info:
        encoder(wrong)
    assert encoder.calls == 0
    assert info.value.expected == image_range
    with pytest.raises(RangeMismatchError, match="divided by 255 twice"):
        encoder(pixels.float() / 255 / 255)
    with pytest.raises(RangeMismatchError):
        encoder(images=wrong)  # keyword arguments are checked too
    assert encoder.calls == 0


@pytest.mark.parametrize("image_range", RANGES)
def test_guard_encoder_passes_right_inputs_unchanged(image_range: int) -> None:
    """Right-range inputs pass, and the output equals the unhooked module's exactly."""
    guarded, plain = Encoder(), Encoder()
    plain.load_state_dict(guarded.state_dict())
    guard_encoder(guarded, image_range)
    x = to_range(_pixels(), 255, image_range)
    assert torch.equal(guarded(x), plain(x))
    assert guarded.calls == 1


def test_guard_encoder_checks_image_keys_of_observation_dicts() -> None:
    """Image entries of dict observations are checked; state entries (any values) are not."""
    encoder = DictEncoder()
    handle = guard_encoder(encoder, 1)
    state = torch.tensor([[100.0, -3.0, 7.0]])  # not an image: large values are fine
    good = {"observation.images.front": _pixels(1).float() / 255, "observation.state": state}
    encoder(good)
    bad = {"observation.images.front": _pixels(1).float(), "observation.state": state}
    with pytest.raises(RangeMismatchError) as info:
        encoder(bad)
    assert info.value.key == "observation.images.front"
    assert encoder.calls == 1
    handle.remove()


def test_guard_encoder_keys_select_what_is_checked() -> None:
    """With `keys`, only those dict entries are checked."""
    encoder = DictEncoder()
    guard_encoder(encoder, 1, keys=["observation.images.wrist"])
    obs = {"observation.images.front": _pixels(1).float(), "observation.state": torch.zeros(1, 3)}
    encoder(obs)  # front is not in keys
    obs["observation.images.wrist"] = _pixels(1).float()
    with pytest.raises(RangeMismatchError, match=r"observation\.images\.wrist"):
        encoder(obs)


def test_guard_encoder_handle_remove_disables_it() -> None:
    """After handle.remove() the encoder accepts any input again."""
    encoder = Encoder()
    handle = guard_encoder(encoder, 1)
    wrong = _pixels().float()
    with pytest.raises(RangeMismatchError):
        encoder(wrong)
    handle.remove()
    encoder(wrong)
    assert encoder.calls == 1


def test_guard_encoder_every_n_checks_one_call_in_n() -> None:
    """every=3 checks calls 1, 4, 7, ...: the others run unchecked."""
    encoder = Encoder()
    guard_encoder(encoder, 1, every=3)
    wrong = _pixels().float()
    raised = []
    for _ in range(7):
        try:
            encoder(wrong)
            raised.append(False)
        except RangeMismatchError:
            raised.append(True)
    assert raised == [True, False, False, True, False, False, True]
    assert encoder.calls == 4


# ---------------------------------------------------------------------------------------------
# preprocess_observation against LeRobot's


def _gym_observation(seed: int, *, batched: bool, cameras: dict | None) -> dict:
    rng = np.random.default_rng(seed)
    lead = (2,) if batched else ()
    obs: dict = {
        "agent_pos": rng.standard_normal((*lead, 4)).astype(np.float64),
        "environment_state": rng.standard_normal((*lead, 5)).astype(np.float32),
    }
    if cameras is None:
        obs["pixels"] = rng.integers(0, 256, (*lead, 24, 32, 3), dtype=np.uint8)
    else:
        obs["pixels"] = {
            name: rng.integers(0, 256, (*lead, h, w, 3), dtype=np.uint8) for name, (h, w) in cameras.items()
        }
    return obs


OBSERVATION_CASES = [
    pytest.param(False, None, id="single-camera-array"),
    pytest.param(True, None, id="single-camera-array-batched"),
    pytest.param(False, {"front": (24, 32), "wrist": (16, 20)}, id="pixels-dict"),
    pytest.param(True, {"front": (24, 32), "wrist": (16, 20)}, id="pixels-dict-batched"),
]


@pytest.mark.parametrize(("batched", "cameras"), OBSERVATION_CASES)
def test_preprocess_observation_range_1_equals_lerobot(batched: bool, cameras: dict | None) -> None:
    """image_range=1 gives exactly LeRobot's output: same keys, shapes, dtypes and values."""
    from lerobot.envs.utils import preprocess_observation as lerobot_preprocess

    obs = _gym_observation(3, batched=batched, cameras=cameras)
    expected = lerobot_preprocess(obs)
    got = preprocess_observation(obs, image_range=1)
    assert set(got) == set(expected)
    assert "observation.state" in got
    assert "observation.environment_state" in got
    for key, value in expected.items():
        assert got[key].dtype == value.dtype, key
        assert got[key].shape == value.shape, key
        assert torch.equal(got[key], value), key


@pytest.mark.parametrize(("batched", "cameras"), OBSERVATION_CASES)
def test_preprocess_observation_range_255_is_lerobot_times_255(batched: bool, cameras: dict | None) -> None:
    """image_range=255 gives LeRobot's images * 255, exactly the uint8 pixels as float; the rest unchanged."""
    from lerobot.envs.utils import preprocess_observation as lerobot_preprocess

    obs = _gym_observation(4, batched=batched, cameras=cameras)
    expected = lerobot_preprocess(obs)
    got = preprocess_observation(obs, image_range=255)
    assert set(got) == set(expected)
    pixels = obs["pixels"] if isinstance(obs["pixels"], dict) else {None: obs["pixels"]}
    for name, raw in pixels.items():
        key = "observation.image" if name is None else f"observation.images.{name}"
        raw_chw = torch.from_numpy(raw).movedim(-1, -3).float()
        if raw_chw.ndim == 3:
            raw_chw = raw_chw.unsqueeze(0)
        assert got[key].dtype == torch.float32
        assert torch.equal(got[key], raw_chw)
        assert torch.equal(got[key], expected[key] * 255)
        check_range(got[key], 255)
    for key in ("observation.state", "observation.environment_state"):
        assert torch.equal(got[key], expected[key])


def test_preprocess_observation_passes_extra_keys_like_lerobot() -> None:
    """Extra gym keys become `observation.<key>` floats, as LeRobot 0.6.1 passes them through."""
    from lerobot.envs.utils import preprocess_observation as lerobot_preprocess

    obs = _gym_observation(5, batched=False, cameras=None)
    obs["joint_velocity"] = np.arange(3, dtype=np.float64)
    expected = lerobot_preprocess(obs)
    got = preprocess_observation(obs, image_range=1)
    assert set(got) == set(expected)
    assert torch.equal(got["observation.joint_velocity"], expected["observation.joint_velocity"])


@pytest.mark.parametrize("image_range", RANGES)
def test_preprocess_observation_refuses_what_lerobot_refuses(image_range: int) -> None:
    """Channel-first or float pixels are refused (LeRobot asserts; bufconv raises ValueError)."""
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="channel-last"):
        preprocess_observation({"pixels": rng.integers(0, 256, (3, 24, 32), dtype=np.uint8)}, image_range)
    with pytest.raises(ValueError, match="uint8"):
        preprocess_observation({"pixels": rng.random((24, 32, 3)).astype(np.float32)}, image_range)
