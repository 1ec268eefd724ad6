"""LeRobot 0.6.1's own replay-buffer tests (tests/utils/test_replay_buffer.py), held against `OnlineBuffer`.

Each test below is one of LeRobot's, with the same steps and assertions, read through the
public interface (`buffer[i]`, oldest first, where LeRobot reads its ring's slots). Two
adaptations, both from the range contract: images are uint8 values over 255 (LeRobot's
`torch.rand` floats are not pixel values and cannot round-trip through uint8 storage), and
LeRobot's async-iterator fixture, whose "images" are 0, 1, ..., 9 everywhere, uses pixels
0, 25, ..., 225 instead (its values are refused by either range, as they should be).
`test_to_lerobot_dataset*` are at the end (`OnlineBuffer.to_lerobot_dataset`); LeRobot-only
tests (`from_lerobot_dataset`, `random_crop_vectorized`) are covered elsewhere or do not apply.
"""

from __future__ import annotations

import pytest
import torch

from bufconv.buffer.online import OnlineBuffer

OBS_IMAGE, OBS_STATE, ACTION = "observation.image", "observation.state", "action"


def state_dims() -> list[str]:
    return [OBS_IMAGE, OBS_STATE]


def create_empty_replay_buffer(
    optimize_memory: bool = False, use_drq: bool = False, image_augmentation_function=None
) -> OnlineBuffer:
    # optimize_memory has no counterpart: bufconv always stores a frame once
    return OnlineBuffer(
        10, device="cpu", state_keys=state_dims(), use_drq=use_drq,
        image_augmentation_function=image_augmentation_function,
    )  # fmt: skip


def create_random_image() -> torch.Tensor:
    return torch.randint(0, 256, (3, 84, 84)).float() / 255


def create_dummy_state() -> dict:
    return {OBS_IMAGE: create_random_image(), OBS_STATE: torch.randn(10)}


def create_dummy_action() -> torch.Tensor:
    return torch.randn(4)


def dict_properties() -> list:
    return ["state", "next_state"]


@pytest.fixture
def replay_buffer() -> OnlineBuffer:
    return create_empty_replay_buffer()


def test_empty_buffer_sample_raises_error(replay_buffer):
    assert len(replay_buffer) == 0
    assert replay_buffer.capacity == 10
    with pytest.raises(RuntimeError, match="Cannot sample from an empty buffer"):
        replay_buffer.sample(1)


def test_zero_capacity_buffer_raises_error():
    with pytest.raises(ValueError, match="Capacity must be greater than 0."):
        OnlineBuffer(0, device="cpu", state_keys=["observation", "next_observation"])


def test_add_transition(replay_buffer):
    state, action = create_dummy_state(), create_dummy_action()
    replay_buffer.add(state, action, 1.0, state, False, False)
    assert len(replay_buffer) == 1
    got = replay_buffer[0]
    assert torch.equal(got[ACTION][0], action)
    assert got["reward"][0] == 1.0
    assert not got["done"][0] and not got["truncated"][0]
    for dim in state_dims():
        assert torch.equal(got["state"][dim][0], state[dim])
        assert torch.equal(got["next_state"][dim][0], state[dim])


def test_add_over_capacity():
    # LeRobot passes state_keys that are not in the states (it ignores them); bufconv keeps the
    # keys it is given, so here they are the states' keys.
    replay_buffer = OnlineBuffer(2, device="cpu", state_keys=state_dims())
    states = [create_dummy_state() for _ in range(3)]
    actions = [create_dummy_action() for _ in range(3)]
    replay_buffer.add(states[0], actions[0], 1.0, states[0], False, False)
    replay_buffer.add(states[1], actions[1], 1.0, states[1], False, False)
    replay_buffer.add(states[2], actions[2], 1.0, states[2], True, True)
    assert len(replay_buffer) == 2
    newest = replay_buffer[1]  # LeRobot's slot 0 after wrapping: the third transition
    for dim in state_dims():
        assert torch.equal(newest["state"][dim][0], states[2][dim])
        assert torch.equal(newest["next_state"][dim][0], states[2][dim])
    assert torch.equal(newest[ACTION][0], actions[2])
    assert newest["reward"][0] == 1.0
    assert newest["done"][0] and newest["truncated"][0]


def test_sample_with_1_transition(replay_buffer):
    state, next_state, action = create_dummy_state(), create_dummy_state(), create_dummy_action()
    replay_buffer.add(state, action, 1.0, next_state, False, False)
    got = replay_buffer.sample(1)
    expected = {"state": state, "next_state": next_state}
    for part in dict_properties():
        for k, v in expected[part].items():
            assert got[part][k].shape[0] == 1 and got[part][k].device.type == "cpu"
            assert torch.equal(got[part][k][0], v), k
    for key, value in ((ACTION, action), ("reward", 1.0), ("done", False), ("truncated", False)):
        tensor = value if isinstance(value, torch.Tensor) else torch.tensor(value)
        assert got[key].shape[0] == 1 and got[key].device.type == "cpu"
        assert torch.equal(got[key][0], tensor.to(got[key].dtype)), key


def test_sample_with_batch_bigger_than_buffer_size(replay_buffer):
    replay_buffer.add(create_dummy_state(), create_dummy_action(), 1.0, create_dummy_state(), False, False)
    got = replay_buffer.sample(10)
    for part in dict_properties():
        for k in state_dims():
            assert got[part][k].shape[0] == 1
    for key in (ACTION, "reward", "done", "truncated"):
        assert got[key].shape[0] == 1


def test_sample_batch(replay_buffer):
    states = [create_dummy_state() for _ in range(4)]
    actions = [create_dummy_action() for _ in range(4)]
    for i, (done, truncated) in enumerate([(False, False), (False, False), (True, True), (True, True)]):
        replay_buffer.add(states[i], actions[i], float(i + 1), states[i], done, truncated)
    got = replay_buffer.sample(3)
    for part in dict_properties():
        for k in got[part]:
            assert got[part][k].shape[0] == 3
            for item in got[part][k]:
                assert any(torch.equal(item, s[k]) for s in states), k
    for item in got[ACTION]:
        assert any(torch.equal(item, a) for a in actions)
    for key in (ACTION, "reward", "done", "truncated"):
        assert got[key].shape[0] == 3


def test_buffer_sample_alignment():
    buffer = OnlineBuffer(capacity=100, device="cpu", state_keys=["state_value"])
    for i in range(100):
        signature = float(i) / 100.0
        state = {"state_value": torch.tensor([[signature]]).float()}
        is_end = (i + 1) % 10 == 0
        next_signature = signature if is_end else float(i + 1) / 100.0
        next_state = {"state_value": torch.tensor([[next_signature]]).float()}
        buffer.add(
            state, torch.tensor([[2.0 * signature]]).float(), 3.0 * signature, next_state, is_end, False
        )
    batch = buffer.sample(50)
    for i in range(50):
        state_sig = batch["state"]["state_value"][i].item()
        next_sig = batch["next_state"]["state_value"][i].item()
        assert abs(batch[ACTION][i].item() - 2.0 * state_sig) < 1e-4
        assert abs(batch["reward"][i].item() - 3.0 * state_sig) < 1e-4
        if batch["done"][i].item() > 0.5:
            assert abs(next_sig - state_sig) < 1e-4
        else:
            assert abs(next_sig - state_sig - 0.01) < 1e-4 or abs(next_sig - state_sig) < 1e-4


def _stored_bytes(buffer: OnlineBuffer) -> int:
    store = buffer._store
    assert store is not None
    return sum(t[0].nbytes for t in store.frames.values()) * (store.end_frame - store.first_frame)


def test_memory_optimization():
    """LeRobot: optimize_memory (next_state=None) holds fewer bytes. bufconv: a frame is stored once
    either way, so linking by value costs what next_state=None costs, and both are a quarter of
    LeRobot's float32 images."""
    states = [create_dummy_state() for _ in range(4)]
    actions = [create_dummy_action() for _ in range(4)]
    full, optimized = create_empty_replay_buffer(), create_empty_replay_buffer(True)
    for i in range(3):
        full.add(states[i], actions[i], 1.0, states[i + 1], False, False)
        optimized.add(states[i], actions[i], 1.0, states[i + 1], False, False)
    full.add(states[3], actions[3], 1.0, states[3], True, True)
    optimized.add(states[3], actions[3], 1.0, None, True, True)
    assert _stored_bytes(optimized) <= _stored_bytes(full)
    lerobot_optimized = 4 * sum(v.nelement() * 4 for v in states[0].values())  # float32 states only
    assert _stored_bytes(full) < lerobot_optimized / 2


def test_check_image_augmentations_with_drq_and_dummy_image_augmentation_function():
    replay_buffer = create_empty_replay_buffer(
        use_drq=True, image_augmentation_function=lambda x: torch.ones_like(x) * 10
    )
    state = create_dummy_state()
    replay_buffer.add(state, create_dummy_action(), 1.0, state, False, False)
    sampled = replay_buffer.sample(1)
    assert torch.all(sampled["state"][OBS_IMAGE] == 10)
    assert torch.all(sampled["next_state"][OBS_IMAGE] == 10)


def test_check_image_augmentations_with_drq_and_default_image_augmentation_function():
    replay_buffer = create_empty_replay_buffer(use_drq=True)
    state = create_dummy_state()
    replay_buffer.add(state, create_dummy_action(), 1.0, state, False, False)
    sampled = replay_buffer.sample(1)
    assert sampled["state"][OBS_IMAGE].shape == (1, 3, 84, 84)
    assert sampled["next_state"][OBS_IMAGE].shape == (1, 3, 84, 84)


def _populate_buffer_for_async_test(capacity: int = 10) -> OnlineBuffer:
    buffer = OnlineBuffer(capacity=capacity, device="cpu", state_keys=[OBS_IMAGE, OBS_STATE])
    for i in range(capacity):
        state = {
            OBS_IMAGE: torch.full((3, 128, 128), 25.0 * i) / 255,
            OBS_STATE: torch.arange(11).float() + i,
        }
        buffer.add(
            state=state, action=torch.tensor([0.0]), reward=0.0, next_state=state, done=False, truncated=False
        )
    return buffer


@pytest.mark.parametrize(("queue_size", "iterations"), [(1, 1), (2, 5)])
def test_async_iterator_shapes(queue_size: int, iterations: int):
    iterator = _populate_buffer_for_async_test().get_iterator(
        batch_size=2, async_prefetch=True, queue_size=queue_size
    )
    for _ in range(iterations):
        batch = next(iterator)
        for part in dict_properties():
            assert batch[part][OBS_IMAGE].shape == (2, 3, 128, 128)
            assert batch[part][OBS_STATE].shape == (2, 11)
    del iterator  # can be disposed of without blocking


# ---- LeRobot's test_to_lerobot_dataset* (OnlineBuffer.to_lerobot_dataset, LeRobot's signature) ----


def create_dataset_from_replay_buffer(tmp_path):
    states = [create_dummy_state() for _ in range(4)]
    actions = [create_dummy_action() for _ in range(4)]
    replay_buffer = create_empty_replay_buffer()
    replay_buffer.add(states[0], actions[0], 1.0, states[0], False, False)
    replay_buffer.add(states[1], actions[1], 1.0, states[1], False, False)
    replay_buffer.add(states[2], actions[2], 1.0, states[2], True, True)
    replay_buffer.add(states[3], actions[3], 1.0, states[3], True, True)
    return replay_buffer.to_lerobot_dataset("dummy/repo", root=tmp_path / "test"), replay_buffer


def test_to_lerobot_dataset_with_empty_buffer(replay_buffer):
    with pytest.raises(ValueError, match="The replay buffer is empty. Cannot convert to a dataset."):
        replay_buffer.to_lerobot_dataset("dummy_repo")


def test_to_lerobot_dataset(tmp_path):
    ds, buffer = create_dataset_from_replay_buffer(tmp_path)

    assert len(ds) == len(buffer), "Dataset should have the same size as the Replay Buffer"
    assert ds.fps == 1, "FPS should be 1"
    assert ds.repo_id == "dummy/repo", "The dataset should have `dummy/repo` repo id"
    for dim in state_dims():
        assert dim in ds.features
        shape = tuple(buffer[0]["state"][dim][0].shape)
        # LeRobot's ReplayBuffer records the CHW tensor shape of an image under the names
        # height/width/channels; bufconv records (H, W, C), the dataset convention of those names.
        expected = (*shape[1:], shape[0]) if dim == OBS_IMAGE else shape
        assert tuple(ds.features[dim]["shape"]) == expected
    assert ds.num_episodes == 2
    assert ds.num_frames == 4
    for i in range(len(ds)):
        stored = buffer[i]
        for feature, value in ds[i].items():
            if feature == ACTION:
                assert torch.equal(value, stored["action"][0])
            elif feature == "next.reward":
                assert torch.equal(value.reshape(()), stored["reward"][0])
            elif feature == "next.done":
                assert torch.equal(value.reshape(()), stored["done"][0])
            elif feature == OBS_IMAGE:
                # uint8 pixels both ways (PNG is lossless): LeRobot's own test needs rtol=0.3 here
                torch.testing.assert_close(value, stored["state"][OBS_IMAGE][0], rtol=0, atol=1e-6)
            elif feature == OBS_STATE:
                assert torch.equal(value, stored["state"][OBS_STATE][0])
