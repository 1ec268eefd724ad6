"""`add` converts straight into the ring: what it stores, what it refuses, what a refusal leaves.

The CPU path of `RowMaker` checks each float32 image in one min/max pass, converts it into a
free frame slot and reuses the previous next frame when the state is the same tensor, equal
floats, or equal once converted. These tests pin what that path must keep: the stored pixels
are `to_uint8` of the inputs, a refused transition changes nothing, a state is always checked
unless it is the very values already checked, and the result is LeRobot's.
"""

from __future__ import annotations

import pytest
import torch
from streams import FRONT, STATE, WRIST, stream

from bufconv.buffer.online import OnlineBuffer
from bufconv.errors import RangeMismatchError
from bufconv.ranges import _SLACK as SLACK
from bufconv.ranges import check_range, to_uint8

KEYS = (FRONT, WRIST, STATE)


def observation(g: torch.Generator, image_range: int = 1, shape: tuple[int, ...] = (1, 3, 12, 16)) -> dict:
    pixels = torch.randint(1, 256, shape, generator=g).float()
    scale = 255.0 if image_range == 1 else 1.0
    return {
        FRONT: pixels / scale,
        WRIST: torch.randint(1, 256, (*shape[:-3], 3, 8, 8), generator=g).float() / scale,
        STATE: torch.randn((*shape[:-3], 5), generator=g),
    }


def transition(state: dict, next_state: dict | None, n: int = 0, done: bool = False) -> dict:
    return {
        "state": state,
        "action": torch.full((1, 4), float(n)),
        "reward": float(n),
        "next_state": next_state,
        "done": done,
        "truncated": False,
        "complementary_info": {"discrete_penalty": float(n)},
    }


def stored(buffer: OnlineBuffer, part: str, key: str) -> torch.Tensor:
    """Every kept transition's `part` image of `key`, as the uint8 pixels stored."""
    batch = buffer[list(range(len(buffer)))]
    return to_uint8(batch[part][key], buffer.image_range)


def contents(buffer: OnlineBuffer) -> dict:
    batch = buffer[list(range(len(buffer)))]
    out = {f"{p}/{k}": batch[p][k].clone() for p in ("state", "next_state") for k in KEYS}
    out.update({k: batch[k].clone() for k in ("action", "reward", "done", "truncated")})
    return out


def frames(buffer: OnlineBuffer) -> int:
    store = buffer._store
    assert store is not None
    return store.end_frame - store.first_frame


def as_uint8(x: torch.Tensor, image_range: int) -> torch.Tensor:
    return to_uint8(x[0] if x.ndim == 4 else x, image_range)


def test_uint8_equal_but_float_different_state_reuses_the_frame_and_stores_its_pixels() -> None:
    """A state whose floats differ from the previous next_state but round to the same pixels: one
    frame for both (what is stored is identical), and a batch gives to_uint8 of each input."""
    g = torch.Generator().manual_seed(0)
    a, b = observation(g), observation(g)
    nudged = {k: v.clone() for k, v in a.items()}
    nudged[FRONT] = (nudged[FRONT] + 1e-4).clamp(max=1.0)  # 255x + 0.0255: the same pixels
    nudged[WRIST] = nudged[WRIST] * (1 - 1e-6)
    assert not torch.equal(nudged[FRONT], a[FRONT])
    assert torch.equal(as_uint8(nudged[FRONT], 1), as_uint8(a[FRONT], 1))
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    buffer.add(**transition(b, a, 0))
    buffer.add(**transition(nudged, b, 1))
    assert frames(buffer) == 3  # b, a (shared with nudged), b
    for key in (FRONT, WRIST):
        assert torch.equal(stored(buffer, "state", key)[1], as_uint8(nudged[key], 1))
        assert torch.equal(stored(buffer, "next_state", key)[0], as_uint8(a[key], 1))
        assert torch.equal(stored(buffer, "next_state", key)[1], as_uint8(b[key], 1))
    assert torch.equal(buffer[1]["state"][STATE][0], a[STATE][0])


def test_a_state_one_pixel_away_from_the_previous_next_state_is_a_new_frame() -> None:
    g = torch.Generator().manual_seed(1)
    a, b = observation(g), observation(g)
    moved = {k: v.clone() for k, v in a.items()}
    moved[WRIST][0, 2, 7, 7] = 0.0 if float(moved[WRIST][0, 2, 7, 7]) > 0.5 else 1.0
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    buffer.add(**transition(b, a, 0))
    buffer.add(**transition(moved, b, 1))
    assert frames(buffer) == 4
    assert torch.equal(stored(buffer, "state", WRIST)[1], as_uint8(moved[WRIST], 1))
    assert torch.equal(stored(buffer, "next_state", WRIST)[0], as_uint8(a[WRIST], 1))
    assert torch.equal(stored(buffer, "next_state", WRIST)[1], as_uint8(b[WRIST], 1))
    assert torch.equal(stored(buffer, "state", FRONT)[1], as_uint8(a[FRONT], 1))


def test_the_previous_next_state_itself_is_reused() -> None:
    """The same tensors (an actor's stream): one frame per transition, and the right pixels."""
    g = torch.Generator().manual_seed(2)
    obs = [observation(g) for _ in range(6)]
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    for n in range(5):
        buffer.add(**transition(obs[n], obs[n + 1], n))
    assert frames(buffer) == 6
    for n in range(5):
        for key in (FRONT, WRIST):
            assert torch.equal(stored(buffer, "state", key)[n], as_uint8(obs[n][key], 1))
            assert torch.equal(stored(buffer, "next_state", key)[n], as_uint8(obs[n + 1][key], 1))


def test_a_state_sharing_only_some_tensors_with_the_previous_next_state_is_checked_and_stored() -> None:
    """Identity reuse needs every key to be the previous next_state's tensor, not the first one."""
    g = torch.Generator().manual_seed(13)
    a, b, c = observation(g), observation(g), observation(g)
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    buffer.add(**transition(a, b, 0))
    mixed = {**b, WRIST: c[WRIST]}  # FRONT and STATE are b's tensors, WRIST is not
    buffer.add(**transition(mixed, c, 1))
    assert torch.equal(stored(buffer, "state", WRIST)[1], as_uint8(c[WRIST], 1))
    assert torch.equal(stored(buffer, "state", FRONT)[1], as_uint8(b[FRONT], 1))
    with pytest.raises(RangeMismatchError):
        buffer.add(**transition({**c, WRIST: c[WRIST] * 255}, a, 2))
    assert len(buffer) == 2


def test_equal_values_in_new_tensors_are_reused() -> None:
    """The same values in fresh tensors (transitions deserialised apart): reused, not stored twice."""
    g = torch.Generator().manual_seed(3)
    obs = [observation(g) for _ in range(4)]
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    for n in range(3):
        copy = {k: v.clone() for k, v in obs[n].items()}
        buffer.add(**transition(copy, obs[n + 1], n))
    assert frames(buffer) == 4
    assert torch.equal(stored(buffer, "state", FRONT)[2], as_uint8(obs[2][FRONT], 1))


def refused_cases() -> list:
    """(name, which part, how the camera is spoiled) for range 1: values the check refuses but
    which round to pixels equal to the previous next frame (a fast path that skipped the check
    of a state equal at uint8 level would store them)."""

    def above(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y.view(-1)[0] = 1.0005  # 255.13: rounds to 255, above 1 + 1e-4
        return y

    def nan(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y.view(-1)[5] = float("nan")
        return y

    def negative(x: torch.Tensor) -> torch.Tensor:
        y = x.clone()
        y.view(-1)[3] = -0.0015  # rounds to 0
        return y

    def twice(x: torch.Tensor) -> torch.Tensor:
        return x / 255

    return [
        pytest.param(part, spoil, id=f"{part}-{spoil.__name__}")
        for part in ("state", "next_state")
        for spoil in (above, nan, negative, twice)
    ]


@pytest.mark.parametrize(("part", "spoil"), refused_cases())
def test_a_refused_transition_changes_nothing(part: str, spoil) -> None:
    g = torch.Generator().manual_seed(4)
    obs = [observation(g) for _ in range(4)]
    # Pixels that make the spoiled values round to the previous next frame's pixels.
    obs[3][FRONT].view(-1)[0] = 1.0
    obs[3][FRONT].view(-1)[3] = 0.0
    buffer = OnlineBuffer(capacity=3, image_range=1, use_drq=False)
    for n in range(3):  # full: a refused add must not retire the oldest either
        buffer.add(**transition(obs[n], obs[n + 1], n))
    before, length = contents(buffer), len(buffer)
    store = buffer._store
    numbers = (store.first_frame, store.end_frame, store.first_transition, store.end_transition)
    bad = {k: v.clone() for k, v in obs[3].items()}
    state = {k: v.clone() for k, v in obs[3].items()}  # equal to the previous next_state, fresh tensors
    if part == "state":
        state[FRONT] = spoil(state[FRONT])
        args = transition(state, obs[0], 9)
    else:
        bad[WRIST] = spoil(bad[WRIST])
        args = transition(obs[3], bad, 9)
    with pytest.raises(RangeMismatchError) as refused:
        buffer.add(**args)
    spoiled = args[part][FRONT if part == "state" else WRIST]
    with pytest.raises(RangeMismatchError) as expected:
        check_range(spoiled, 1, name=f"{part}[{(FRONT if part == 'state' else WRIST)!r}]")
    assert str(refused.value) == str(expected.value)  # the message check_range gives
    assert len(buffer) == length
    assert (store.first_frame, store.end_frame, store.first_transition, store.end_transition) == numbers
    after = contents(buffer)
    for name, value in before.items():
        assert torch.equal(after[name], value), name
    # And the buffer goes on as if the refused add never happened (its state reuse included).
    buffer.add(**transition(obs[3], obs[0], 10))
    assert frames(buffer) <= 2 * 3 + 2
    assert torch.equal(stored(buffer, "state", FRONT)[-1], as_uint8(obs[3][FRONT], 1))
    assert torch.equal(stored(buffer, "next_state", WRIST)[-1], as_uint8(obs[0][WRIST], 1))


def test_a_refused_state_after_a_refused_next_state_is_still_checked() -> None:
    """The state of an add after a refusal is checked against the last *accepted* next_state."""
    g = torch.Generator().manual_seed(5)
    a, b, c = observation(g), observation(g), observation(g)
    buffer = OnlineBuffer(capacity=5, image_range=1, use_drq=False)
    buffer.add(**transition(a, b, 0))
    bad = {**c, FRONT: c[FRONT] * 255}
    with pytest.raises(RangeMismatchError):
        buffer.add(**transition(b, bad, 1))
    with pytest.raises(RangeMismatchError):
        buffer.add(**transition(bad, a, 2))  # the refused next_state is no previous frame
    assert len(buffer) == 1


@pytest.mark.parametrize("image_range", [1, 255])
def test_both_ranges_store_to_uint8_of_the_inputs(image_range: int) -> None:
    g = torch.Generator().manual_seed(6)
    obs = [observation(g, image_range) for _ in range(8)]
    # Halves: round half to even, as to_uint8 does; and the slack the check allows at both ends.
    scale = 255.0 if image_range == 1 else 1.0
    halves = torch.tensor([0.5, 1.5, 2.5, 3.5, 254.5, 127.5, 0.0, 255.0, 0.49, 254.51])
    obs[3][FRONT].view(-1)[:10] = halves / scale
    obs[4][FRONT].view(-1)[:2] = torch.tensor([-0.9 * SLACK, (1 + 0.9 * SLACK) * 255 / scale])
    buffer = OnlineBuffer(capacity=5, image_range=image_range, use_drq=False)
    for n in range(7):
        buffer.add(**transition(obs[n], obs[n + 1], n))
    assert len(buffer) == 5
    for i in range(5):
        n = 2 + i
        for key in (FRONT, WRIST):
            assert torch.equal(stored(buffer, "state", key)[i], as_uint8(obs[n][key], image_range)), (n, key)
            assert torch.equal(
                stored(buffer, "next_state", key)[i], as_uint8(obs[n + 1][key], image_range)
            ), (n, key)


def test_range_255_refuses_01_images() -> None:
    g = torch.Generator().manual_seed(7)
    a, b = observation(g, 1), observation(g, 1)
    buffer = OnlineBuffer(capacity=5, image_range=255, use_drq=False)
    with pytest.raises(RangeMismatchError, match="look like \\[0,1\\] images"):
        buffer.add(**transition(a, b))
    assert len(buffer) == 0


def test_unbatched_and_non_contiguous_inputs() -> None:
    """(C,H,W) rows, (1,C,H,W) rows and non-contiguous views (channel-last permuted, strided) store alike."""
    g = torch.Generator().manual_seed(8)
    obs = [observation(g) for _ in range(6)]

    def unbatched(o: dict) -> dict:
        return {k: v[0] for k, v in o.items()}

    def strided(o: dict) -> dict:
        out = {}
        for k, v in o.items():
            if v.ndim == 4:  # the same values through a channel-last layout, and every other column
                v = v.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)
                wide = torch.zeros((*v.shape[:-1], 2 * v.shape[-1]))
                wide[..., ::2] = v
                v = wide[..., ::2]
                assert not v.is_contiguous()
            out[k] = v
        return out

    forms = [lambda o: o, unbatched, strided]
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    for n in range(5):
        form = forms[n % 3]
        buffer.add(**transition(form(obs[n]), forms[(n + 1) % 3](obs[n + 1]), n))
    for n in range(5):
        for key in (FRONT, WRIST):
            assert torch.equal(stored(buffer, "state", key)[n], as_uint8(obs[n][key], 1))
            assert torch.equal(stored(buffer, "next_state", key)[n], as_uint8(obs[n + 1][key], 1))
        assert torch.equal(buffer[n]["state"][STATE][0], obs[n][STATE][0])
    assert frames(buffer) == 6  # equal values in other layouts are still reused


def test_uint8_and_float64_images() -> None:
    """uint8 images pass unchecked; float64 images take the general path (checked, to_uint8)."""
    g = torch.Generator().manual_seed(9)
    obs = [observation(g) for _ in range(4)]
    as_u8 = {**obs[1], FRONT: to_uint8(obs[1][FRONT], 1)}
    as_f64 = {**obs[2], FRONT: obs[2][FRONT].double(), WRIST: obs[2][WRIST].double()}
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    buffer.add(**transition(obs[0], as_u8, 0))
    buffer.add(**transition(as_u8, as_f64, 1))
    buffer.add(**transition(as_f64, obs[3], 2))
    for n in range(3):
        assert torch.equal(stored(buffer, "state", FRONT)[n], as_uint8(obs[n][FRONT], 1))
        assert torch.equal(stored(buffer, "next_state", WRIST)[n], as_uint8(obs[n + 1][WRIST], 1))
    bad = {**obs[3], WRIST: obs[3][WRIST].double() * 255}
    with pytest.raises(RangeMismatchError):
        buffer.add(**transition(obs[3], bad, 3))
    assert len(buffer) == 3


def test_next_state_none_and_episode_ends() -> None:
    """LeRobot's optimize_memory callers (next_state=None): the state of the next add closes the link."""
    g = torch.Generator().manual_seed(10)
    obs = [observation(g) for _ in range(5)]
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    buffer.add(**transition(obs[0], None, 0))
    buffer.add(**transition(obs[1], None, 1, done=True))
    buffer.add(**transition(obs[2], obs[3], 2))
    buffer.add(**transition(obs[3], None, 3))
    assert torch.equal(stored(buffer, "next_state", FRONT)[0], as_uint8(obs[1][FRONT], 1))
    assert torch.equal(stored(buffer, "next_state", FRONT)[1], as_uint8(obs[1][FRONT], 1))  # its own state
    assert torch.equal(stored(buffer, "next_state", FRONT)[2], as_uint8(obs[3][FRONT], 1))
    assert torch.equal(stored(buffer, "state", FRONT)[3], as_uint8(obs[3][FRONT], 1))


def test_the_frame_ring_grows_for_short_episodes_and_keeps_every_frame() -> None:
    """Episodes of one transition (two frames each) outgrow the ring's first size (capacity 10:
    12 slots); it grows, at most to 2 * capacity + 2, and every kept frame reads back after each
    add, on both sides of each growth, and with the ring wrapping afterwards."""
    g = torch.Generator().manual_seed(11)
    obs = [observation(g, 1, (1, 3, 24, 32)) for _ in range(121)]
    buffer = OnlineBuffer(capacity=10, image_range=1, use_drq=False)
    sizes = set()
    for n in range(60):
        state, next_state = obs[2 * n], obs[2 * n + 1]
        buffer.add(**transition(state, next_state, n, done=True))
        store = buffer._store
        assert store is not None
        sizes.add(store.frame_capacity)
        for i in range(len(buffer)):
            m = n - len(buffer) + 1 + i
            assert torch.equal(stored(buffer, "state", FRONT)[i], as_uint8(obs[2 * m][FRONT], 1)), (n, m)
            assert torch.equal(stored(buffer, "next_state", FRONT)[i], as_uint8(obs[2 * m + 1][FRONT], 1))
    assert min(sizes) == 12 and max(sizes) == 22 and store.ring == len(sizes) - 1 >= 2, sizes


def test_a_full_ring_is_written_over_in_place() -> None:
    """Long episodes (50 transitions): the frame ring keeps its first size (capacity + 1/16 + 2)
    through four wraps of the buffer, so a steady-state add writes into memory already in use."""
    g = torch.Generator().manual_seed(12)
    obs = [observation(g, 1) for _ in range(8)]
    buffer = OnlineBuffer(capacity=160, image_range=1, use_drq=False)
    for n in range(800):
        buffer.add(**transition(obs[n % 8], obs[(n + 1) % 8], n, done=n % 50 == 49))
    store = buffer._store
    assert store is not None
    assert (store.frame_capacity, store.ring) == (160 + 10 + 2, 0)
    assert torch.equal(stored(buffer, "next_state", FRONT)[-1], as_uint8(obs[800 % 8][FRONT], 1))


def test_the_same_stream_gives_lerobots_transitions() -> None:
    """A stream with done and truncated ends, past the capacity, against ReplayBuffer(optimize_memory=False)."""
    from lerobot.rl.buffer import ReplayBuffer

    transitions = stream([5, 1, 7, 3, 9, 2])
    # Some states equal to the previous next_state in fresh tensors, some nudged below a pixel.
    for n in range(1, len(transitions)):
        previous = transitions[n - 1]["next_state"]
        if transitions[n]["state"] is previous and n % 3 == 1:
            transitions[n]["state"] = {k: v.clone() for k, v in previous.items()}
        elif transitions[n]["state"] is previous and n % 3 == 2:
            transitions[n]["state"] = {k: (v * (1 - 1e-7) if k != STATE else v) for k, v in previous.items()}
    ours = OnlineBuffer(capacity=20, image_range=1, use_drq=False)
    theirs = ReplayBuffer(
        capacity=20, device="cpu", storage_device="cpu", use_drq=False, optimize_memory=False
    )
    for t in transitions:
        ours.add(**t)
        theirs.add(**t)
    assert len(ours) == len(theirs) == 20
    for i in range(20):
        mine = ours[i]
        slot = (theirs.position - theirs.size + i) % theirs.capacity
        for key in (FRONT, WRIST):
            assert torch.equal(to_uint8(mine["state"][key][0], 1), to_uint8(theirs.states[key][slot], 1))
            assert torch.equal(
                to_uint8(mine["next_state"][key][0], 1), to_uint8(theirs.next_states[key][slot], 1)
            )
        assert torch.equal(mine["state"][STATE][0], theirs.states[STATE][slot])
        assert torch.equal(mine["next_state"][STATE][0], theirs.next_states[STATE][slot])
        assert torch.equal(mine["action"][0], theirs.actions[slot])
        assert float(mine["reward"][0]) == float(theirs.rewards[slot])
        assert bool(mine["done"][0]) == bool(theirs.dones[slot])
        assert bool(mine["truncated"][0]) == bool(theirs.truncateds[slot])
        for name in ("discrete_penalty", "is_intervention"):
            assert float(mine["complementary_info"][name][0]) == float(theirs.complementary_info[name][slot])


def test_a_row_maker_on_a_store_of_its_own() -> None:
    """OfflineBuffer.add uses the same RowMaker: checked, converted, refused alike."""
    # OfflineBuffer needs a built cache (tests/test_buffer.py adds to one); here the RowMaker
    # contract on a store of its own, as OfflineBuffer builds one.
    from bufconv.buffer.rows import RowMaker
    from bufconv.buffer.store import TransitionStore, schema_for

    g = torch.Generator().manual_seed(12)
    a, b, c = observation(g), observation(g), observation(g)
    rows = {k: v[0] for k, v in a.items()}
    schema = schema_for(rows, torch.zeros(4), {FRONT, WRIST}, {"discrete_penalty": torch.zeros(())})
    store = TransitionStore(4, schema, torch.device("cpu"))
    maker = RowMaker(list(KEYS), 1)
    maker.add(store, a, torch.zeros(1, 4), 0.0, b, False, False, None)
    with pytest.raises(RangeMismatchError):
        maker.add(store, b, torch.zeros(1, 4), 0.0, {**c, FRONT: c[FRONT] * 255}, False, False, None)
    maker.add(store, b, torch.zeros(1, 4), 0.0, c, False, False, {"discrete_penalty": 1.0})
    assert len(store) == 2 and store.end_frame == 3
    out = store.gather(torch.arange(2))
    assert torch.equal(out[f"next_state/{FRONT}"][1], as_uint8(c[FRONT], 1))
    assert torch.equal(out[f"state/{FRONT}"][1], as_uint8(b[FRONT], 1))
    assert float(out["complementary_info/discrete_penalty"][1]) == 1.0


def test_a_row_placed_before_the_ring_grows_is_stored() -> None:
    """A frame converted into a free slot, then the ring grows before `add` takes it: the row's
    views still hold the pixels (old memory), and `add` copies them into the new ring."""
    from bufconv.buffer.store import TransitionStore, schema_for

    g = torch.Generator().manual_seed(13)
    obs = [observation(g) for _ in range(8)]
    rows = [{k: v[0].numpy() if k == STATE else to_uint8(v[0], 1).numpy() for k, v in o.items()} for o in obs]
    schema = schema_for({k: v[0] for k, v in obs[0].items()}, torch.zeros(4), {FRONT, WRIST}, {})
    store = TransitionStore(4, schema, torch.device("cpu"))
    columns = {"action": torch.zeros(4).numpy(), "reward": 0.0, "done": True, "truncated": False}
    for n in range(3):
        store.add(rows[2 * n], rows[2 * n + 1], columns, ends_episode=True)
    placed = store.free_frame(0)
    for key, value in rows[6].items():
        placed[key][...] = value
    ring, size = store.ring, store.frame_capacity
    store.make_room(store.frame_capacity)  # as if another add had needed more room first
    assert (store.ring, store.frame_capacity) != (ring, size)
    store.add(placed, None, columns, ends_episode=True)
    out = store.gather(torch.arange(len(store)))
    assert torch.equal(out[f"state/{FRONT}"][-1], to_uint8(obs[6][FRONT][0], 1))
    assert torch.equal(out[f"next_state/{FRONT}"][-1], to_uint8(obs[6][FRONT][0], 1))
    assert torch.equal(out[f"state/{FRONT}"][0], to_uint8(obs[0][FRONT][0], 1))
