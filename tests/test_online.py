"""The online buffer against LeRobot 0.6.1's `ReplayBuffer`: the same stream in, the same transitions out.

Both receive one stream of actor transitions (episodes of several lengths, done and truncated
ends, complementary_info, more transitions than the capacity). bufconv stores images as uint8
and each frame once; LeRobot stores float32 and, without `optimize_memory`, next_state apart.
Compared by index (0 = the oldest kept), images in one range.
"""

from __future__ import annotations

import pytest
import torch
from streams import FRONT, STATE, WRIST, stream

import bufconv
from bufconv.buffer.online import OnlineBuffer
from bufconv.errors import RangeMismatchError


def lerobot_buffer(capacity: int, **kwargs):
    from lerobot.rl.buffer import ReplayBuffer

    return ReplayBuffer(capacity=capacity, device="cpu", storage_device="cpu", use_drq=False, **kwargs)


def lerobot_slot(buffer, index: int) -> int:
    """LeRobot's ring slot of its index-th oldest transition."""
    return (buffer.position - buffer.size + index) % buffer.capacity


@pytest.mark.parametrize(("capacity", "lengths"), [(200, [5, 1, 7, 3]), (20, [6, 1, 9, 4, 12, 2, 8, 5])])
def test_same_stream_same_transitions_as_lerobot(capacity: int, lengths: list[int]) -> None:
    transitions = stream(lengths)
    ours = OnlineBuffer(capacity=capacity, image_range=1, use_drq=False)
    theirs = lerobot_buffer(capacity)
    for t in transitions:
        ours.add(**t)
        theirs.add(**t)
    assert len(ours) == len(theirs) == min(capacity, len(transitions))
    for i in range(len(ours)):
        mine = ours[i]
        slot = lerobot_slot(theirs, i)
        for key in (FRONT, WRIST, STATE):
            # LeRobot stores the [0,1] floats; bufconv stores uint8 and gives back x / 255: the same floats
            assert torch.equal(mine["state"][key][0], theirs.states[key][slot]), (i, key)
            assert torch.equal(mine["next_state"][key][0], theirs.next_states[key][slot]), (i, key)
        assert torch.equal(mine["action"][0], theirs.actions[slot])
        assert mine["reward"][0] == theirs.rewards[slot]
        assert bool(mine["done"][0]) == bool(theirs.dones[slot])
        assert bool(mine["truncated"][0]) == bool(theirs.truncateds[slot])
        for name in ("discrete_penalty", "is_intervention"):
            assert float(mine["complementary_info"][name][0]) == float(theirs.complementary_info[name][slot])


def test_batches_have_lerobots_layout() -> None:
    transitions = stream([4, 6])
    ours = OnlineBuffer(capacity=50, image_range=1, use_drq=True)
    theirs = lerobot_buffer(50)
    for t in transitions:
        ours.add(**t)
        theirs.add(**t)
    mine, reference = ours.sample(8), theirs.sample(8)
    assert set(mine) == set(reference)
    for part in ("state", "next_state"):
        assert set(mine[part]) == set(reference[part])
        for key in reference[part]:
            assert (mine[part][key].dtype, mine[part][key].shape) == (
                reference[part][key].dtype,
                reference[part][key].shape,
            ), key
    for name in ("action", "reward", "done", "truncated"):
        assert (mine[name].dtype, mine[name].shape) == (reference[name].dtype, reference[name].shape), name
    assert set(mine["complementary_info"]) == set(reference["complementary_info"])
    for name, value in reference["complementary_info"].items():
        assert (mine["complementary_info"][name].dtype, mine["complementary_info"][name].shape) == (
            value.dtype,
            value.shape,
        )
    assert float(mine["state"][FRONT].min()) >= 0.0 and float(mine["state"][FRONT].max()) <= 1.0


def test_images_are_stored_once_as_uint8() -> None:
    """One frame per transition, plus one per episode (its true last next_state)."""
    lengths = [5, 1, 7, 3]
    buffer = OnlineBuffer(capacity=100, image_range=1)
    for t in stream(lengths):
        buffer.add(**t)
    store = buffer._store
    assert store is not None
    assert store.frames[FRONT].dtype == torch.uint8 and store.frames[STATE].dtype == torch.float32
    assert store.end_frame == sum(lengths) + len(lengths)


def test_range_255_buffer_and_uint8_input() -> None:
    buffer = OnlineBuffer(capacity=10, image_range=255, use_drq=False)
    for t in stream([3], uint8=True):
        buffer.add(**t)
    batch = buffer[0]
    assert batch["state"][FRONT].dtype == torch.float32
    assert float(batch["state"][FRONT].max()) > 1.0
    assert torch.equal(batch["state"][FRONT][0], stream([3], uint8=True)[0]["state"][FRONT][0].float())


def test_out_of_range_image_is_refused_and_the_buffer_is_unchanged() -> None:
    transitions = stream([3])
    buffer = OnlineBuffer(capacity=10, image_range=1)
    buffer.add(**transitions[0])
    bad = dict(transitions[1], state={**transitions[1]["state"], FRONT: transitions[1]["state"][FRONT] * 255})
    with pytest.raises(RangeMismatchError, match=r"state\['observation.images.front'\]"):
        buffer.add(**bad)
    assert len(buffer) == 1
    twice = dict(
        transitions[1],
        next_state={**transitions[1]["next_state"], WRIST: transitions[1]["next_state"][WRIST] / 255},
    )
    with pytest.raises(RangeMismatchError):
        buffer.add(**twice)
    assert len(buffer) == 1
    buffer.add(**transitions[1])
    assert len(buffer) == 2
    range255 = OnlineBuffer(capacity=10, image_range=255)
    with pytest.raises(RangeMismatchError):
        range255.add(**transitions[0])  # [0,1] images into a [0,255] buffer


def test_empty_and_zero_capacity_match_lerobot() -> None:
    with pytest.raises(ValueError, match="Capacity must be greater than 0."):
        OnlineBuffer(capacity=0)
    with pytest.raises(ValueError, match="Capacity must be greater than 0."):
        lerobot_buffer(0)
    with pytest.raises(RuntimeError, match="Cannot sample from an empty buffer"):
        OnlineBuffer(capacity=5).sample(4)
    with pytest.raises(RuntimeError, match="Cannot sample from an empty buffer"):
        lerobot_buffer(5).sample(4)


def test_next_state_none_links_to_the_next_state_never_across_episodes() -> None:
    """LeRobot's optimize_memory callers pass next_state=None: it is the next transition's state,
    or, at an episode's end, the state itself (LeRobot would pair it with the next episode)."""
    transitions = stream([3, 2])
    buffer = OnlineBuffer(capacity=20, image_range=1, use_drq=False)
    for t in transitions:
        buffer.add(**dict(t, next_state=None))
    for i in range(len(buffer)):
        batch = buffer[i]
        if transitions[i]["done"] or transitions[i]["truncated"]:
            expected = transitions[i]["state"][FRONT]
        else:
            expected = transitions[i + 1]["state"][FRONT]
        assert torch.equal(batch["next_state"][FRONT], expected), i
    # while the newest still waits for its next frame it is never drawn
    open_buffer = OnlineBuffer(
        capacity=20, image_range=1, use_drq=False, generator=torch.Generator().manual_seed(0)
    )
    for t in transitions[:2]:
        open_buffer.add(**dict(t, next_state=None))
    for _ in range(20):
        drawn = open_buffer.sample(2)  # at most len(buffer), as LeRobot
        assert torch.equal(drawn["state"][FRONT], transitions[0]["state"][FRONT].expand(2, -1, -1, -1))


def test_every_transition_can_be_sampled_including_the_newest() -> None:
    transitions = stream([4])
    buffer = OnlineBuffer(
        capacity=10, image_range=1, use_drq=False, generator=torch.Generator().manual_seed(1)
    )
    for t in transitions:
        buffer.add(**t)
    actions = torch.cat([buffer.sample(4)["action"] for _ in range(100)])
    added = torch.cat([t["action"] for t in transitions])
    seen = {int(torch.argmin((added - a).abs().sum(1))) for a in actions}
    assert seen == {0, 1, 2, 3}


def test_state_keys_select_and_missing_keys_are_named() -> None:
    transitions = stream([2])
    buffer = OnlineBuffer(capacity=5, state_keys=[FRONT, STATE])
    buffer.add(**transitions[0])
    assert set(buffer[0]["state"]) == {FRONT, STATE}
    with pytest.raises(KeyError, match="observation.state"):
        buffer.add(**dict(transitions[1], state={FRONT: transitions[1]["state"][FRONT]}))


def test_iterator_and_public_name() -> None:
    assert bufconv.OnlineBuffer is OnlineBuffer
    buffer = OnlineBuffer(capacity=10, generator=torch.Generator().manual_seed(3))
    for t in stream([5]):
        buffer.add(**t)
    iterator = buffer.get_iterator(4, async_prefetch=True)
    first = next(iterator)
    assert first["state"][FRONT].shape == (4, 3, 12, 16)
    iterator.close()  # type: ignore[attr-defined]
