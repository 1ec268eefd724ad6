"""Sharded builds: one or more datasets into a folder of shards, built here or as Ray tasks.

The names of the sharded build, from the modules that hold them (import them from here or there):

    shard_plan.py    planning: `parse_shards`, `plan_shards` (runs of whole episodes, balanced by
                     frames), `check_agree` (several datasets share a buffer only when their tensors agree)
    shard_build.py   building: `ensure_sharded` (each shard's freshness, the stale ones built by
                     `pipeline.ensure` here, in local processes or as Ray tasks, the manifest last),
                     `build_sharded` (`bufconv build DATASET... --shards N|auto [--ray]`)
    shard_folder.py  the folder: where a build may write, whether it holds these shards, its manifest

The public `build` (`convert/build.py`) picks a sharded build or a single file.
"""

from __future__ import annotations

from .shard_build import RAY_RETRIES, ShardedBuildResult, build_sharded, ensure_sharded, requests_for
from .shard_folder import datasets_of
from .shard_plan import AUTO_SHARD_BYTES, ShardPlan, Shards, check_agree, parse_shards, plan_shards

__all__ = [
    "AUTO_SHARD_BYTES",
    "RAY_RETRIES",
    "ShardPlan",
    "ShardedBuildResult",
    "Shards",
    "build_sharded",
    "check_agree",
    "datasets_of",
    "ensure_sharded",
    "parse_shards",
    "plan_shards",
    "requests_for",
]
