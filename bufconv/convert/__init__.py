"""Convert: a `cache.freshness.Request` in, a sealed cache file out.

Takes in a resolved request (dataset, selection, `BuildOptions`); plans decoding units, runs them
here or in worker processes, and hands on a cache file written through `cache.writer`.
Open `pipeline.py` first (`ensure`), then `plan.py`, `units.py`, `workers.py`; `build.py` holds
the public `build`, which picks `ensure` or a sharded build (`shard_plan.py`, `shard_build.py`,
`shard_folder.py`; `shards.py` gathers their names).
"""
