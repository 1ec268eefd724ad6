"""Recycled output memory never hands out memory a caller can still see."""

from __future__ import annotations

import gc
from collections.abc import Callable
from pathlib import Path

import torch

import bufconv
from bufconv.buffer.recycle import OutputPool


def test_memory_returns_only_when_every_view_is_gone() -> None:
    """A view (a slice of a batch) keeps the memory out of the pool; dropping it gives it back."""
    pool = OutputPool(keep=4)
    first = pool.empty((4, 8))
    first.fill_(1.0)
    view = first[:2]
    del first
    gc.collect()
    assert pool.held_bytes() == 0
    second = pool.empty((4, 8))
    second.fill_(2.0)
    assert torch.equal(view, torch.ones(2, 8))  # untouched by the second allocation
    del view
    gc.collect()
    assert pool.held_bytes() == 4 * 8 * 4
    third = pool.empty((4, 8))  # now the memory is reused
    assert pool.held_bytes() == 0
    assert third.shape == (4, 8)
    del second, third


def test_pool_keeps_at_most_keep_buffers_per_size() -> None:
    pool = OutputPool(keep=2)
    tensors = [pool.empty((16,), torch.uint8) for _ in range(5)]
    del tensors
    gc.collect()
    assert pool.held_bytes() == 2 * 16


def test_held_batches_survive_later_samples(lerobot_dataset: Callable[..., Path], tmp_path: Path) -> None:
    """Batches the learner still holds (directly, as slices, or queued by the iterator) keep their values."""
    cache = bufconv.build(lerobot_dataset(), tmp_path / "c.pt", workers=1).path
    buffer = bufconv.open_buffer(cache, generator=torch.Generator().manual_seed(0))
    held = [buffer.sample(8) for _ in range(3)]
    copies = [{k: v.clone() for k, v in batch["state"].items()} for batch in held]
    slices = [batch["next_state"]["observation.images.front"][:3] for batch in held]
    slice_copies = [s.clone() for s in slices]
    del held[1]  # give some memory back, so later samples do reuse memory
    gc.collect()
    for _ in range(10):
        buffer.sample(8)
    for batch, copy in zip([held[0], held[1]], [copies[0], copies[2]], strict=True):
        for key, value in batch["state"].items():
            assert torch.equal(value, copy[key]), key
    for part, copy in zip(slices, slice_copies, strict=True):
        assert torch.equal(part, copy)

    iterator = buffer.get_iterator(8, async_prefetch=True, queue_size=2)
    got = [next(iterator) for _ in range(4)]
    saved = [b["state"]["observation.images.wrist"].clone() for b in got]
    for _ in range(6):
        next(iterator)
    iterator.close()
    for batch, copy in zip(got, saved, strict=True):
        assert torch.equal(batch["state"]["observation.images.wrist"], copy)
