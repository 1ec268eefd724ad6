"""Planning a sharded build: how many shards, which episodes each holds, and whether datasets can share one buffer.

    parse_shards()  `--shards N|auto`
    plan_shards()   runs of whole episodes, balanced by frames (deterministic: same inputs, same shards)
    check_agree()   several datasets go into one buffer only when their tensors agree

Nothing here reads or writes a shard: the plan is computed from the requests' metadata.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..cache.freshness import Request
from ..cache.sharded import shard_name
from ..errors import DatasetError
from .plan import stored_chw
from .preview import plan_build

#: `--shards auto`: shards of about this many bytes of uint8 pixels (a shard is a few seconds to
#: a minute of one core's decoding, and one memory map; 1M frames of two 480x640 cameras make ~1,700).
AUTO_SHARD_BYTES = 1 << 30

_DISAGREE = "{b} cannot share a buffer with {a}: {what}; {fix}"

Shards = int | str
"""A shard count, or "auto" (by size: `AUTO_SHARD_BYTES` of pixels a shard)."""


def parse_shards(value: str | int) -> Shards:
    """'auto' or a count >= 1.

    Raises:
        ValueError: anything else.
    """
    if isinstance(value, str) and value.strip().lower() == "auto":
        return "auto"
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"--shards takes a count >= 1 or 'auto'; got {value!r}") from None
    if count < 1:
        raise ValueError(f"--shards takes a count >= 1 or 'auto'; got {value!r}")
    return count


@dataclass(frozen=True)
class ShardPlan:
    """One shard: a run of whole episodes of one dataset."""

    index: int
    dataset: int
    """Position of its dataset in the build's list."""
    episodes: tuple[int, ...]
    frames: int

    @property
    def file(self) -> str:
        return shard_name(self.index)


def plan_shards(requests: Sequence[Request], shards: Shards) -> list[ShardPlan]:
    """Cut the requests' episodes into shards at episode boundaries, balanced by frames.

    A count is shared among the datasets in proportion to their frames (each gets at least
    one shard, and at most one per episode); "auto" gives each dataset one shard per
    `AUTO_SHARD_BYTES` of pixels. Within a dataset, shard j ends at the episode boundary
    nearest to j/n of its frames. Deterministic: the same requests and count give the same plan.
    """
    lengths = [[r.source.episodes[e].length for e in r.selection.episodes] for r in requests]
    totals = [sum(ls) for ls in lengths]
    if shards == "auto":
        counts = [
            min(len(ls), max(1, math.ceil(total * _frame_bytes(r) / AUTO_SHARD_BYTES)))
            for r, ls, total in zip(requests, lengths, totals, strict=True)
        ]
    else:
        counts = _share(int(shards), totals, [len(ls) for ls in lengths])
    plan: list[ShardPlan] = []
    for d, (request, ls, count) in enumerate(zip(requests, lengths, counts, strict=True)):
        episodes = request.selection.episodes
        cuts = [0, *_cuts(ls, count), len(ls)]
        for a, b in itertools.pairwise(cuts):
            plan.append(ShardPlan(len(plan), d, tuple(episodes[a:b]), sum(ls[a:b])))
    return plan


def _frame_bytes(request: Request) -> int:
    return max(
        1,
        sum(math.prod(stored_chw(request.source, k, request.options)) for k in request.selection.image_keys),
    )


def _share(count: int, totals: Sequence[int], most: Sequence[int]) -> list[int]:
    """`count` shards shared in proportion to `totals` (largest remainder), each in [1, most]."""
    grand = sum(totals) or 1
    quotas = [count * t / grand for t in totals]
    counts = [min(m, max(1, math.floor(q))) for q, m in zip(quotas, most, strict=True)]
    order = sorted(range(len(totals)), key=lambda d: (-(quotas[d] - math.floor(quotas[d])), d))
    while sum(counts) < count and any(c < m for c, m in zip(counts, most, strict=True)):
        for d in order:
            if sum(counts) >= count:
                break
            if counts[d] < most[d]:
                counts[d] += 1
    return counts


def _cuts(lengths: Sequence[int], count: int) -> list[int]:
    """Episode positions where shards 2..count of one dataset start (count - 1 of them)."""
    cumulative = [0]
    for n in lengths:
        cumulative.append(cumulative[-1] + n)
    total, m = cumulative[-1], len(lengths)
    cuts: list[int] = []
    previous = 0
    for j in range(1, count):
        target = total * j / count
        cut = min(range(1, m), key=lambda k: (abs(cumulative[k] - target), k))
        cut = min(max(cut, previous + 1), m - (count - j))
        cuts.append(cut)
        previous = cut
    return cuts


# ---- several datasets ------------------------------------------------------------------------


def check_agree(requests: Sequence[Request]) -> None:
    """Several datasets share one buffer only when every tensor has the same name, dtype and row shape.

    Raises:
        DatasetError: one line naming the first key that differs, how, and the fix.
    """
    if len(requests) < 2:
        return
    first = requests[0]
    a_name, a_spec = str(first.source.root), _spec(first)
    for other in requests[1:]:
        b_name, b_spec = str(other.source.root), _spec(other)
        what, fix = _difference(a_spec, b_spec, a_name, b_name)
        if what:
            raise DatasetError(
                _DISAGREE.format(a=a_name, b=b_name, what=what, fix=fix), path=other.source.root
            )


def _spec(request: Request) -> dict[str, Any]:
    tensors = plan_build(request.source, request.options).tensors
    sel = request.selection
    return {
        "state": list(sel.state_keys),
        "complementary": list(sel.complementary_keys),
        "tensors": {k: (t["dtype"], list(t["shape"][1:])) for k, t in tensors.items()},
    }


def _difference(a: Mapping[str, Any], b: Mapping[str, Any], a_name: str, b_name: str) -> tuple[str, str]:
    separately = "build them into separate caches"
    for name, (dtype, shape) in a["tensors"].items():
        if name not in b["tensors"]:
            return (
                f"it has no {name!r}, which {a_name} has",
                f"select common keys with --keys, or {separately}",
            )
        other_dtype, other_shape = b["tensors"][name]
        if other_shape != shape:
            fix = f"resize both with --resize H,W, or {separately}" if len(shape) == 3 else separately
            return f"{name!r} has rows of shape {other_shape}, {a_name} {shape}", fix
        if other_dtype != dtype:
            return f"{name!r} is {other_dtype}, {a_name} {dtype}", separately
    for name in b["tensors"]:
        if name not in a["tensors"]:
            return (
                f"it has {name!r}, which {a_name} has not",
                f"select common keys with --keys, or {separately}",
            )
    if a["state"] != b["state"]:
        return (
            f"its state keys come in another order ({b['state']} against {a['state']})",
            "give one order with --keys",
        )
    return "", ""
