"""The offline buffer (SPEC section 7): LeRobot's `ReplayBuffer` interface, LeRobot's values.

Oracle: `lerobot.rl.buffer.ReplayBuffer.from_lerobot_dataset` on the same LeRobot-written dataset
(decoded with LeRobot's PyAV backend) and LeRobot's `random_shift` for the DrQ augmentation.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bufconv
from bufconv.buffer.drq import random_shift
from bufconv.buffer.offline import OfflineBuffer
from bufconv.source.writer import EpisodeData, write_dataset

IMAGE_KEYS = ("observation.images.front", "observation.images.wrist")
STATE_KEYS = (*IMAGE_KEYS, "observation.state")
PAD = 4
ALL_SHIFTS = torch.cartesian_prod(torch.arange(2 * PAD + 1), torch.arange(2 * PAD + 1))  # (81, 2)

# ---------------------------------------------------------------------------------------------
# helpers


def lerobot_augmentation() -> Callable[[torch.Tensor], torch.Tensor]:
    """LeRobot's default DrQ augmentation without its torch.compile wrapper."""
    from lerobot.rl.buffer import random_shift as lerobot_random_shift

    return functools.partial(lerobot_random_shift, pad=PAD)


def describe(batch: object) -> object:
    """Keys, shapes and dtypes of a (nested) batch."""
    if isinstance(batch, dict):
        return {k: describe(v) for k, v in batch.items()}
    if isinstance(batch, torch.Tensor):
        return (tuple(batch.shape), batch.dtype)
    return batch


def assert_batches_equal(a: dict, b: dict) -> None:
    """torch.equal on every tensor of two batches with the same structure."""
    assert describe(a) == describe(b)
    for key, value in a.items():
        if isinstance(value, dict):
            assert_batches_equal(value, b[key])
        elif isinstance(value, torch.Tensor):
            assert torch.equal(value, b[key]), key
        else:
            assert value == b[key], key


def batches_differ(a: dict, b: dict) -> bool:
    for key, value in a.items():
        if isinstance(value, dict):
            if batches_differ(value, b[key]):
                return True
        elif isinstance(value, torch.Tensor) and not torch.equal(value, b[key]):
            return True
    return False


def is_shift_of(image: torch.Tensor, frame: torch.Tensor) -> bool:
    """Whether `image` (C, H, W) is a DrQ shift (pad 4, replicate) of `frame`, for some offset."""
    candidates = random_shift(frame.expand(len(ALL_SHIFTS), *frame.shape), ALL_SHIFTS, PAD)
    return bool((candidates == image).flatten(1).all(dim=1).any())


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------------
# the LeRobot oracle


@dataclass
class Oracle:
    cache: Path
    cache_255: Path
    replay: object  # lerobot.rl.buffer.ReplayBuffer, transitions in dataset order


ORACLE_SPECS = {
    "video-done-complementary": {},
    # LeRobot's DrQ concatenates all cameras, so it needs them the same size: this spec has that
    "image-no-done": {
        "with_done": False,
        "with_complementary": False,
        "use_videos": False,
        "cameras": (("observation.images.front", (40, 32)), ("observation.images.wrist", (40, 32))),
    },
}


@pytest.fixture(scope="module", params=list(ORACLE_SPECS))
def oracle(
    request: pytest.FixtureRequest, lerobot_dataset, tmp_path_factory: pytest.TempPathFactory
) -> Oracle:
    """One LeRobot dataset, its bufconv caches (range 1 and 255) and LeRobot's own buffer of it."""
    from lerobot.datasets import LeRobotDataset
    from lerobot.rl.buffer import ReplayBuffer

    root = lerobot_dataset(**ORACLE_SPECS[request.param])
    folder = tmp_path_factory.mktemp("oracle")
    cache = bufconv.build(root, folder / "offline_buffer.pt", image_range=1).path
    cache_255 = bufconv.build(root, folder / "offline_buffer_255.pt", image_range=255).path
    logging.getLogger("libav").setLevel(logging.ERROR)
    dataset = LeRobotDataset("bufconv/test", root=root, video_backend="pyav")
    replay = ReplayBuffer.from_lerobot_dataset(
        dataset,
        device="cpu",
        state_keys=list(STATE_KEYS),
        image_augmentation_function=lerobot_augmentation(),
        use_drq=False,
        storage_device="cpu",
        optimize_memory=False,  # keep LeRobot's next_state as computed from the dataset
    )
    return Oracle(Path(cache), Path(cache_255), replay)


def test_transitions_equal_lerobot_values(oracle: Oracle) -> None:
    """Every transition (state, action, reward, next_state, done, truncated, extra) equals LeRobot's, in order."""
    buf = bufconv.open_buffer(oracle.cache)
    rb = oracle.replay
    n = len(rb)
    assert len(buf) == n == buf.dataset_transitions
    assert buf.status == "opened"  # no dataset was consulted
    assert buf.image_keys == list(IMAGE_KEYS)
    batch = buf[list(range(n))]
    for key in STATE_KEYS:
        assert batch["state"][key].dtype == rb.states[key].dtype == torch.float32
        assert torch.equal(batch["state"][key], rb.states[key][:n]), key
        assert torch.equal(batch["next_state"][key], rb.next_states[key][:n]), key
    assert torch.equal(batch["action"], rb.actions[:n])
    assert torch.equal(batch["reward"], rb.rewards[:n])
    assert torch.equal(batch["done"], rb.dones[:n].float())
    assert torch.equal(batch["truncated"], rb.truncateds[:n].float())
    if rb.has_complementary_info:
        assert set(batch["complementary_info"]) == set(rb.complementary_info_keys)
        for key, value in batch["complementary_info"].items():
            assert torch.equal(value, rb.complementary_info[key][:n]), key
    else:
        assert batch["complementary_info"] is None


def test_range_255_transitions_are_lerobot_times_255(oracle: Oracle) -> None:
    """A range-255 cache delivers LeRobot's images * 255 (the exact uint8 values as float); the rest is unchanged."""
    buf = bufconv.open_buffer(oracle.cache_255)
    assert buf.image_range == 255
    rb = oracle.replay
    n = len(rb)
    batch = buf[list(range(n))]
    for key in IMAGE_KEYS:
        expected = rb.states[key][:n] * 255
        assert torch.equal(batch["state"][key], expected), key
        assert torch.equal(batch["state"][key], batch["state"][key].round())
        assert torch.equal(batch["next_state"][key], rb.next_states[key][:n] * 255), key
    assert torch.equal(batch["state"]["observation.state"], rb.states["observation.state"][:n])
    assert torch.equal(batch["action"], rb.actions[:n])


@pytest.mark.parametrize("use_drq", [False, True])
def test_sampled_batches_match_lerobot_layout(oracle: Oracle, use_drq: bool) -> None:
    """sample() gives the same keys, shapes and dtypes as LeRobot's sample(), with and without DrQ.

    LeRobot 0.6.1 cannot DrQ-augment cameras of different sizes (it concatenates them); there the
    layout is compared with LeRobot's un-augmented batches (DrQ keeps shapes and dtypes).
    """
    buf = bufconv.open_buffer(oracle.cache, use_drq=use_drq, generator=torch.Generator().manual_seed(0))
    rb = oracle.replay
    sizes = {tuple(rb.states[key].shape[1:]) for key in IMAGE_KEYS}
    rb.use_drq = use_drq and len(sizes) == 1
    try:
        for batch_size in (1, 5):
            theirs = rb.sample(batch_size)
            ours = buf.sample(batch_size)
            assert describe(dict(ours)) == describe(dict(theirs))
    finally:
        rb.use_drq = False


def test_drq_samples_are_shifts_of_the_right_transitions(oracle: Oracle) -> None:
    """With DrQ, each sampled image is a pad-4 replicate shift of LeRobot's frame for that transition."""
    buf = bufconv.open_buffer(oracle.cache, use_drq=True, generator=torch.Generator().manual_seed(1))
    rb = oracle.replay
    n = len(rb)
    states = rb.states["observation.state"][:n]
    batch = buf.sample(12)
    shifted = 0
    for b in range(12):
        (row,) = (
            torch.nonzero((states == batch["state"]["observation.state"][b]).all(dim=1)).flatten().tolist()
        )
        for key in IMAGE_KEYS:
            assert is_shift_of(batch["state"][key][b], rb.states[key][row]), (b, key)
            assert is_shift_of(batch["next_state"][key][b], rb.next_states[key][row]), (b, key)
            shifted += not torch.equal(batch["state"][key][b], rb.states[key][row])
        assert torch.equal(batch["action"][b], rb.actions[row])
    assert shifted > 0  # the augmentation did something


# ---------------------------------------------------------------------------------------------
# DrQ random shift against LeRobot's


def _lerobot_shift_by_hand(images: torch.Tensor, shifts: torch.Tensor, pad: int) -> torch.Tensor:
    """LeRobot's augmentation for given offsets: F.pad(mode='replicate'), then crop at (dy, dx)."""
    _, _, h, w = images.shape
    padded = F.pad(images, (pad, pad, pad, pad), mode="replicate")
    return torch.stack([padded[i, :, dy : dy + h, dx : dx + w] for i, (dy, dx) in enumerate(shifts.tolist())])


@settings(max_examples=30, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    batch=st.integers(1, 6),
    h=st.integers(1, 12),
    w=st.integers(1, 12),
    pad=st.integers(1, 5),
)
def test_random_shift_equals_lerobot_pad_and_crop(seed: int, batch: int, h: int, w: int, pad: int) -> None:
    """random_shift(images, shifts) equals replicate-pad + crop at the same offsets, on float and uint8."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (batch, 3, h, w), dtype=torch.uint8, generator=generator)
    shifts = torch.randint(0, 2 * pad + 1, (batch, 2), generator=generator)
    expected = _lerobot_shift_by_hand(images.float() / 255, shifts, pad)
    assert torch.equal(random_shift(images.float() / 255, shifts, pad), expected)
    assert torch.equal(random_shift(images, shifts, pad).float() / 255, expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_shift_equals_lerobot_random_shift(seed: int) -> None:
    """For the offsets LeRobot's own random_shift draws, bufconv's shift gives LeRobot's output."""
    from lerobot.rl.buffer import random_shift as lerobot_random_shift

    images = torch.rand(5, 3, 20, 16, generator=torch.Generator().manual_seed(seed))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        theirs = lerobot_random_shift(images, pad=PAD)
        torch.manual_seed(seed)  # replay the draws of random_crop_vectorized: tops, then lefts
        tops = torch.randint(0, 2 * PAD + 1, (5,))
        lefts = torch.randint(0, 2 * PAD + 1, (5,))
    ours = random_shift(images, torch.stack([tops, lefts], dim=1), PAD)
    assert torch.equal(ours, theirs)


# ---------------------------------------------------------------------------------------------
# randomness, dtypes, iterators


@pytest.fixture(scope="module")
def cache(lerobot_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A range-1 cache of the default LeRobot-written dataset (16 frames, 4 episodes, 2 cameras)."""
    folder = tmp_path_factory.mktemp("cache")
    return Path(bufconv.build(lerobot_dataset(), folder / "offline_buffer.pt").path)


@pytest.fixture(scope="module")
def cache_255(lerobot_dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cache255")
    return Path(bufconv.build(lerobot_dataset(), folder / "offline_buffer.pt", image_range=255).path)


@pytest.mark.parametrize("use_drq", [False, True])
def test_same_seed_same_batches_different_seed_different(cache: Path, use_drq: bool) -> None:
    """A generator seeded alike gives identical batches (every tensor); another seed gives others."""
    buf = bufconv.open_buffer(cache, use_drq=use_drq)
    first = buf.sample(8, generator=torch.Generator().manual_seed(7))
    again = buf.sample(8, generator=torch.Generator().manual_seed(7))
    other = buf.sample(8, generator=torch.Generator().manual_seed(8))
    assert_batches_equal(dict(first), dict(again))
    assert batches_differ(dict(first), dict(other))
    # the buffer's own generator: two buffers seeded alike draw the same sequence
    a = bufconv.open_buffer(cache, use_drq=use_drq, generator=torch.Generator().manual_seed(3))
    b = bufconv.open_buffer(cache, use_drq=use_drq, generator=torch.Generator().manual_seed(3))
    for _ in range(3):
        assert_batches_equal(dict(a.sample(6)), dict(b.sample(6)))


@pytest.mark.parametrize("image_range", [1, 255])
@pytest.mark.parametrize("use_drq", [False, True])
def test_image_dtype_uint8_gives_raw_pixels_and_halves_stay_in_range(
    cache: Path, cache_255: Path, image_range: int, use_drq: bool
) -> None:
    """image_dtype=uint8 returns the raw pixels of the float batch; float16/bfloat16 are it in range."""
    buf = bufconv.open_buffer(cache if image_range == 1 else cache_255, use_drq=use_drq)

    def sample(dtype: torch.dtype) -> dict:
        return dict(buf.sample(10, image_dtype=dtype, generator=torch.Generator().manual_seed(11)))

    reference = sample(torch.float32)
    raw = sample(torch.uint8)
    for part in ("state", "next_state"):
        for key in IMAGE_KEYS:
            pixels = raw[part][key]
            assert pixels.dtype == torch.uint8
            as_float = pixels.float() / 255 if image_range == 1 else pixels.float()
            assert torch.equal(as_float, reference[part][key])
        assert torch.equal(raw[part]["observation.state"], reference[part]["observation.state"])
        assert raw[part]["observation.state"].dtype == torch.float32
    assert torch.equal(raw["action"], reference["action"])
    for dtype in (torch.float16, torch.bfloat16):
        half = sample(dtype)
        for part in ("state", "next_state"):
            for key in IMAGE_KEYS:
                image = half[part][key]
                assert image.dtype == dtype
                assert torch.equal(image, reference[part][key].to(dtype))
                assert float(image.min()) >= 0 and float(image.max()) <= image_range
                if image_range == 255:
                    assert float(image.max()) > 1
                bufconv.check_range(image.float(), image_range, name=key)


def _check_batch(batch: dict, batch_size: int) -> None:
    assert describe(batch)["action"] == ((batch_size, 3), torch.float32)
    for key in IMAGE_KEYS:
        image = batch["state"][key]
        assert image.dtype == torch.float32 and image.shape[0] == batch_size
        bufconv.check_range(image, 1, name=key)


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("bufconv-prefetch")]


@pytest.mark.parametrize("async_prefetch", [True, False])
def test_get_iterator_yields_valid_batches_and_stops_its_thread(cache: Path, async_prefetch: bool) -> None:
    """get_iterator yields valid batches (as LeRobot's learner consumes them) and close() ends its thread."""
    before = _prefetch_threads()
    buf = bufconv.open_buffer(cache)
    iterator = buf.get_iterator(batch_size=4, async_prefetch=async_prefetch, queue_size=2)
    for _ in range(5):
        _check_batch(dict(next(iterator)), 4)
    if async_prefetch:
        assert len(_prefetch_threads()) == len(before) + 1
    iterator.close()
    assert _prefetch_threads() == before


def test_get_iterator_surfaces_producer_errors(cache: Path) -> None:
    """An error in the prefetch thread reaches the consumer instead of hanging it."""
    before = _prefetch_threads()
    buf = bufconv.open_buffer(cache)
    iterator = buf.get_iterator(batch_size=-1, async_prefetch=True)  # torch.randint refuses a negative size
    with pytest.raises(RuntimeError):
        next(iterator)
    assert _prefetch_threads() == before


# ---------------------------------------------------------------------------------------------
# add: live transitions


def _live(image_range: int, value: int, *, as_uint8: bool = False, action: float = 0.0) -> dict:
    """One live transition in LeRobot's `ReplayBuffer.add` layout (batch dim 1), images filled with `value`."""
    generator = torch.Generator().manual_seed(value)

    def images(v: int) -> dict[str, torch.Tensor]:
        out = {}
        for key, (h, w) in zip(IMAGE_KEYS, ((48, 64), (40, 32)), strict=True):
            pixels = torch.randint(
                max(0, v - 20), v + 1, (1, 3, h, w), dtype=torch.uint8, generator=generator
            )
            out[key] = pixels if as_uint8 else bufconv.to_range(pixels, 255, image_range)
        return out

    state = {**images(value), "observation.state": torch.full((1, 6), float(value))}
    next_state = {**images(value + 1), "observation.state": torch.full((1, 6), float(value + 1))}
    return {
        "state": state,
        "action": torch.full((1, 3), action),
        "reward": 0.25,
        "next_state": next_state,
        "done": True,
        "truncated": False,
        "complementary_info": {"discrete_penalty": torch.tensor([-0.5])},
    }


@pytest.mark.parametrize("image_range", [1, 255])
def test_add_refuses_images_in_the_wrong_range(cache: Path, cache_255: Path, image_range: int) -> None:
    """[0,1] images into a range-255 buffer (and [0,255] into range 1) raise RangeMismatchError, naming it all."""
    buf = bufconv.open_buffer(cache if image_range == 1 else cache_255)
    n = len(buf)
    wrong_range = 255 if image_range == 1 else 1
    transition = _live(wrong_range, 200)
    image = transition["state"]["observation.images.front"]
    with pytest.raises(bufconv.RangeMismatchError) as info:
        buf.add(**transition)
    error = info.value
    message = str(error)
    assert "observation.images.front" in error.key and "observation.images.front" in message
    assert error.expected == image_range
    assert f"declared range {image_range}" in message
    assert error.found_min == pytest.approx(float(image.min()))
    assert error.found_max == pytest.approx(float(image.max()))
    assert f"{float(image.min()):.6g}" in message and f"{float(image.max()):.6g}" in message
    assert len(buf) == n  # nothing half-added


def test_add_refuses_double_normalized_images(cache: Path) -> None:
    """Images divided by 255 twice are refused with the double-normalized diagnosis."""
    buf = bufconv.open_buffer(cache)
    transition = _live(1, 200)
    transition["next_state"]["observation.images.wrist"] = (
        transition["next_state"]["observation.images.wrist"] / 255
    )
    with pytest.raises(bufconv.RangeMismatchError) as info:
        buf.add(**transition)
    assert info.value.problem == "double-normalized"
    assert "next_state" in info.value.key and "observation.images.wrist" in info.value.key


@pytest.mark.parametrize("image_range", [1, 255])
@pytest.mark.parametrize("as_uint8", [False, True])
def test_add_stores_and_reads_back_exactly(
    cache: Path, cache_255: Path, image_range: int, as_uint8: bool
) -> None:
    """Float images in range, or uint8, are stored and read back exactly (buf[len-1]), with the rest of the transition."""
    buf = bufconv.open_buffer(cache if image_range == 1 else cache_255)
    n = len(buf)
    transition = _live(image_range, 180, as_uint8=as_uint8, action=0.75)
    buf.add(**transition)
    assert len(buf) == n + 1
    got = buf[len(buf) - 1]
    assert torch.equal(buf[-1]["action"], got["action"])
    for part in ("state", "next_state"):
        for key in IMAGE_KEYS:
            expected = transition[part][key]
            if as_uint8:
                expected = bufconv.to_range(expected, 255, image_range)
            assert got[part][key].dtype == torch.float32
            assert torch.equal(got[part][key], expected), (part, key)
        assert torch.equal(got[part]["observation.state"], transition[part]["observation.state"])
    assert torch.equal(got["action"], transition["action"])
    assert got["reward"].tolist() == [0.25]
    assert got["done"].tolist() == [1.0]
    assert got["truncated"].tolist() == [0.0]
    assert got["complementary_info"]["discrete_penalty"].tolist() == [-0.5]


def test_add_keeps_a_bounded_ring_and_never_touches_the_dataset(cache: Path) -> None:
    """capacity=3: after 5 adds len == dataset + 3, the two oldest are gone, dataset rows and cache bytes unchanged."""
    digest = file_digest(cache)
    buf = bufconv.open_buffer(cache, capacity=3)
    n = len(buf)
    dataset_before = buf[list(range(n))]
    for k in range(5):
        buf.add(**_live(1, 100 + 10 * k, as_uint8=k % 2 == 0, action=float(k)))
        assert len(buf) == n + min(k + 1, 3)
    assert len(buf) == n + 3
    live = buf[list(range(n, n + 3))]
    assert sorted(live["action"][:, 0].tolist()) == [2.0, 3.0, 4.0]  # adds 0 and 1 were overwritten
    for b in range(3):
        k = int(live["action"][b, 0])
        expected = _live(1, 100 + 10 * k, as_uint8=k % 2 == 0, action=float(k))
        for key in IMAGE_KEYS:
            assert torch.equal(live["state"][key][b], bufconv.to_range(expected["state"][key][0], 1, 1))
    assert_batches_equal(dict(buf[list(range(n))]), dict(dataset_before))
    assert len(buf.sample(200)["action"]) == n + 3  # batch_size is capped at len(buf), as in LeRobot
    del buf
    assert file_digest(cache) == digest


def test_add_checks_shapes_and_keys(cache: Path) -> None:
    """A transition missing a state key, or with a wrong shape, is refused before anything is stored."""
    buf = bufconv.open_buffer(cache)
    n = len(buf)
    transition = _live(1, 50)
    del transition["next_state"]["observation.state"]
    with pytest.raises(KeyError, match=r"observation\.state"):
        buf.add(**transition)
    transition = _live(1, 50)
    transition["action"] = torch.zeros(1, 4)
    with pytest.raises(ValueError, match="action"):
        buf.add(**transition)
    assert len(buf) == n


# ---------------------------------------------------------------------------------------------
# no transition pairs frames of two episodes (property test)

CODE_IMAGE = "observation.images.cam"


def _code(episode: int, frame: int) -> int:
    """The pixel value that identifies (episode, frame) in the coded datasets (1..255, never 0)."""
    return 1 + 8 * episode + frame


@dataclass(frozen=True)
class Coded:
    """A dataset whose every value says which (episode, frame) it belongs to."""

    name: str
    lengths: tuple[int, ...]
    done: str  # "last": next.done at each episode end; "absent": no next.done; "never": all false;
    #            "early": also true at frame 1 of long episodes
    episodes: tuple[int, ...] | None = None  # selection passed to load_or_build

    def done_at(self, episode: int, frame: int) -> bool:
        last = frame == self.lengths[episode] - 1
        if self.done in ("last", "absent"):
            return last
        if self.done == "never":
            return False
        return last or (frame == 1 and self.lengths[episode] > 3)


CODED = [
    Coded("one-frame", (1,), "last"),
    Coded("mixed", (4, 1, 3), "last"),
    Coded("no-done-column", (2, 6, 1, 1, 3), "absent"),
    Coded("never-done", (3, 1, 5), "never"),
    Coded("early-done", (5, 2, 4), "early"),
    Coded("selected", (2, 6, 1, 1, 3), "last", episodes=(1, 3, 4)),
]


def _write_coded(root: Path, spec: Coded) -> Path:
    episodes = []
    for e, length in enumerate(spec.lengths):
        frames = np.arange(length)
        codes = np.array([_code(e, i) for i in frames], np.uint8)
        data = {
            CODE_IMAGE: np.broadcast_to(codes[:, None, None, None], (length, 6, 8, 3)).copy(),
            "observation.state": np.stack([np.full(length, e), frames], axis=1).astype(np.float32),
            "action": np.stack([np.full(length, e), frames], axis=1).astype(np.float32),
            "next.reward": (100 * e + frames).astype(np.float32),
        }
        if spec.done != "absent":
            data["next.done"] = np.array([spec.done_at(e, i) for i in frames])
        episodes.append(EpisodeData(frames=data))
    return write_dataset(root, episodes, fps=10, image_keys=(CODE_IMAGE,))


@pytest.fixture(scope="module")
def coded_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int], Path]:
    """A cache per coded dataset and range, built once."""
    caches = {}
    for spec in CODED:
        folder = tmp_path_factory.mktemp(spec.name)
        root = _write_coded(folder / "dataset", spec)
        for image_range in (1, 255):
            result = bufconv.build(
                root,
                folder / f"offline_buffer_{image_range}.pt",
                image_range=image_range,
                episodes=spec.episodes,
            )
            caches[spec.name, image_range] = Path(result.path)
    return caches


LIVE_EPISODE = 20  # added transitions use episodes 20, 21, ...


def _coded_live(k: int, image_range: int) -> dict:
    """The k-th added transition: episode LIVE_EPISODE + k, frame 0 -> 1 (or 0 -> 0 when done)."""
    e = LIVE_EPISODE + k
    done = k % 2 == 1
    nxt = 0 if done else 1

    def obs(frame: int) -> dict[str, torch.Tensor]:
        pixels = torch.full((1, 3, 6, 8), _code(e, frame), dtype=torch.uint8)
        image = pixels if k % 3 == 0 else bufconv.to_range(pixels, 255, image_range)
        return {CODE_IMAGE: image, "observation.state": torch.tensor([[float(e), float(frame)]])}

    return {
        "state": obs(0),
        "action": torch.tensor([[float(e), 0.0]]),
        "reward": 100.0 * e,
        "next_state": obs(nxt),
        "done": done,
        "truncated": False,
    }


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    spec=st.sampled_from(CODED),
    image_range=st.sampled_from([1, 255]),
    seed=st.integers(0, 2**32 - 1),
    batch_size=st.integers(1, 48),
    adds=st.integers(0, 6),
    capacity=st.integers(1, 4),
    use_drq=st.booleans(),
)
def test_no_transition_pairs_two_episodes(
    coded_caches: dict,
    spec: Coded,
    image_range: int,
    seed: int,
    batch_size: int,
    adds: int,
    capacity: int,
    use_drq: bool,
) -> None:
    """Every sampled transition's next_state is the next frame of the same episode, or itself when done/at the end."""
    buf = bufconv.open_buffer(
        coded_caches[spec.name, image_range],
        use_drq=use_drq,
        capacity=capacity,
        verify_payload=False,
        generator=torch.Generator().manual_seed(seed),
    )
    for k in range(adds):
        buf.add(**_coded_live(k, image_range))
    kept = set(range(max(0, adds - capacity), adds))
    selected = set(spec.episodes if spec.episodes is not None else range(len(spec.lengths)))
    assert len(buf) == sum(spec.lengths[e] for e in selected) + len(kept)
    batch = buf.sample(batch_size)
    for b in range(len(batch["action"])):
        e, i = (int(v) for v in batch["state"]["observation.state"][b])
        e2, i2 = (int(v) for v in batch["next_state"]["observation.state"][b])
        done = bool(batch["done"][b])
        truncated = bool(batch["truncated"][b])
        assert e2 == e, f"transition pairs episode {e} with episode {e2}"
        if e >= LIVE_EPISODE:
            assert e - LIVE_EPISODE in kept  # an overwritten live transition never comes back
            assert done == ((e - LIVE_EPISODE) % 2 == 1)
            assert i2 == (i if done else i + 1)
            assert not truncated
        else:
            assert e in selected
            last = i == spec.lengths[e] - 1
            assert done == spec.done_at(e, i)
            assert i2 == (i if done or last else i + 1)
            assert truncated == (last and not done)
        assert batch["action"][b].tolist() == [float(e), float(i) if e < LIVE_EPISODE else 0.0]
        assert float(batch["reward"][b]) == 100.0 * e + (i if e < LIVE_EPISODE else 0)
        for part, frame in (("state", i), ("next_state", i2)):
            image = batch[part][CODE_IMAGE][b]
            value = torch.tensor(float(_code(e, frame)))
            expected = value / 255 if image_range == 1 else value
            assert torch.equal(image, expected.expand_as(image)), (part, e, frame)


def test_open_buffer_is_an_offline_buffer(cache: Path) -> None:
    """open_buffer and load_or_build return the same class, with LeRobot's sampling interface."""
    buf = bufconv.open_buffer(cache)
    assert isinstance(buf, OfflineBuffer)
    for name in ("sample", "get_iterator", "add", "to_lerobot_dataset", "__len__"):
        assert callable(getattr(buf, name))
    with pytest.raises(IndexError):
        buf[len(buf)]
