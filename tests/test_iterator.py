"""The prefetching iterator: ordered, reproducible whatever its thread count, and it stops cleanly."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

import bufconv


def _batches(cache: Path, threads: int, count: int) -> list[dict]:
    buffer = bufconv.open_buffer(cache, generator=torch.Generator().manual_seed(7))
    iterator = buffer.get_iterator(6, async_prefetch=True, queue_size=2, threads=threads)
    batches = [next(iterator) for _ in range(count)]
    iterator.close()
    return batches


def test_same_seed_same_sequence_with_one_or_three_threads(
    lerobot_dataset: Callable[..., Path], tmp_path: Path
) -> None:
    """Batch k comes from its own generator: thread scheduling cannot reorder or change batches."""
    cache = bufconv.build(lerobot_dataset(), tmp_path / "c.pt", workers=1).path
    one, three = _batches(cache, 1, 6), _batches(cache, 3, 6)
    for a, b in zip(one, three, strict=True):
        for key in a["state"]:
            assert torch.equal(a["state"][key], b["state"][key])
            assert torch.equal(a["next_state"][key], b["next_state"][key])
        assert torch.equal(a["action"], b["action"])
    assert not torch.equal(one[0]["action"], one[1]["action"])  # not the same batch repeated
