"""The dataset part of an offline buffer: rows of named columns, from one cache or from shards.

    CacheColumns    one cache file's tensors (memory-mapped, or moved to the storage device)
    ShardColumns    a sharded folder's shards behind one row index, each mapped when first touched

A buffer names its columns ("state/<key>", "action", "reward", "done", "truncated",
"complementary_info/<name>") and asks for rows by global row number; `next_rows` gives the row
of each row's next_state. Shards hold whole episodes, so a row and its next row always lie in
the same shard.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Protocol

import numpy as np
import torch

from ..cache.reader import CacheFile
from ..cache.sharded import ShardedCache
from .batch import take_rows
from .recycle import OutputPool


class Columns(Protocol):
    """Rows of named columns, read by row number."""

    frames: int
    sorted_rows: bool
    """Whether `take` wants its rows sorted (it then gathers without a second copy)."""

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        """dtype and row shape of a column."""
        ...

    def take(self, name: str, rows: torch.Tensor, pool: OutputPool | None = None) -> torch.Tensor:
        """Rows `rows` (int64) of column `name`."""
        ...

    def next_rows(self, rows: torch.Tensor) -> torch.Tensor:
        """The row of each row's next_state."""
        ...


class CacheColumns:
    """The columns of one cache file (`names`: column name -> tensor name in the cache)."""

    sorted_rows = False

    def __init__(self, tensors: Mapping[str, torch.Tensor], names: Mapping[str, str], frames: int) -> None:
        self.frames = frames
        self._tensors = {name: tensors[tensor] for name, tensor in names.items()}
        self._next_index = tensors["next_index"]

    @classmethod
    def of(cls, cache: CacheFile, names: Mapping[str, str], device: torch.device) -> CacheColumns:
        tensors = (
            cache.tensors if device.type == "cpu" else {k: t.to(device) for k, t in cache.tensors.items()}
        )
        return cls(tensors, names, cache.frames)

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        tensor = self._tensors[name]
        return tensor.dtype, tuple(tensor.shape[1:])

    def take(self, name: str, rows: torch.Tensor, pool: OutputPool | None = None) -> torch.Tensor:
        return take_rows(self._tensors[name], rows, pool)

    def next_rows(self, rows: torch.Tensor) -> torch.Tensor:
        return take_rows(self._next_index, rows)


class ShardColumns:
    """The columns of a sharded folder: a cumulative-offsets index over lazily mapped shards.

    Rows must come sorted (`sorted_rows`): then the rows of each shard are one contiguous run of
    the request, and each shard's rows are copied straight into their place in the output, so a
    gather over shards costs what a gather over one file costs, plus a searchsorted.
    """

    sorted_rows = True

    def __init__(self, sharded: ShardedCache, names: Mapping[str, str]) -> None:
        self.sharded = sharded
        self.frames = sharded.frames
        self._names = dict(names)
        tensors = sharded.manifest["tensors"]
        self._specs = {
            name: (_TORCH_DTYPES[tensors[t]["dtype"]], tuple(tensors[t]["shape"][1:]))
            for name, t in names.items()
        }
        self._offsets = sharded.offsets
        self._arrays: dict[int, dict[str, np.ndarray | torch.Tensor]] = {}

    @classmethod
    def materialized(
        cls, sharded: ShardedCache, names: Mapping[str, str], device: torch.device
    ) -> CacheColumns:
        """Every shard read and concatenated on `device` (a storage device other than the CPU)."""
        tensors: dict[str, torch.Tensor] = {}
        next_parts = []
        for i in range(sharded.count):
            cache = sharded.shard(i)
            next_parts.append(cache.tensors["next_index"].to(device) + int(sharded.offsets[i]))
        tensors["next_index"] = torch.cat(next_parts)
        for tensor in set(names.values()):
            tensors[tensor] = torch.cat(
                [sharded.shard(i).tensors[tensor].to(device) for i in range(sharded.count)]
            )
        return CacheColumns(tensors, names, sharded.frames)

    def spec(self, name: str) -> tuple[torch.dtype, tuple[int, ...]]:
        return self._specs[name]

    def _shard(self, index: int) -> dict[str, np.ndarray | torch.Tensor]:
        arrays = self._arrays.get(index)
        if arrays is None:
            tensors = self.sharded.shard(index).tensors
            arrays = {
                name: tensors[t] if tensors[t].dtype == torch.bfloat16 else tensors[t].numpy()
                for name, t in [*self._names.items(), ("next_index", "next_index")]
            }
            self._arrays[index] = arrays
        return arrays

    def _runs(self, rows: np.ndarray) -> list[tuple[int, int, int]]:
        """(shard, start, end): the run rows[start:end] that lies in shard `shard` (rows sorted)."""
        bounds = np.searchsorted(rows, self._offsets, side="left")
        return [
            (s, int(bounds[s]), int(bounds[s + 1]))
            for s in range(len(self._offsets) - 1)
            if bounds[s + 1] > bounds[s]
        ]

    def take(self, name: str, rows: torch.Tensor, pool: OutputPool | None = None) -> torch.Tensor:
        dtype, shape = self._specs[name]
        index = rows.numpy()
        if dtype == torch.bfloat16:
            parts = [
                self._shard(s)[name].index_select(0, rows[a:b] - int(self._offsets[s]))  # type: ignore[union-attr]
                for s, a, b in self._runs(index)
            ]
            return torch.cat(parts) if parts else torch.empty((0, *shape), dtype=dtype)
        if pool is not None and dtype == torch.uint8:
            out = pool.empty((len(index), *shape), torch.uint8)
        else:
            out = torch.empty((len(index), *shape), dtype=dtype)
        target = out.numpy()
        for s, a, b in self._runs(index):
            source = self._shard(s)[name]
            np.take(source, index[a:b] - self._offsets[s], axis=0, out=target[a:b], mode="clip")
        return out

    def next_rows(self, rows: torch.Tensor) -> torch.Tensor:
        index = rows.numpy()
        out = np.empty(len(index), dtype=np.int64)
        for s, a, b in self._runs(index):
            offset = self._offsets[s]
            out[a:b] = np.take(self._shard(s)["next_index"], index[a:b] - offset) + offset
        return torch.from_numpy(out)


_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in (
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "bool",
    )
}
