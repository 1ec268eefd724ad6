"""The public build: one cache file, or a folder of shards, whichever the call asks for.

    build()  `bufconv.build` and `bufconv build`: `pipeline.ensure` for one file,
             `shard_build.build_sharded` for several datasets, `shards` or `ray`

It sits above both: the sharded build calls `pipeline.ensure` for each shard, so the function that
chooses between them can live in neither without an import circle.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from ..cache.freshness import prepare
from ..cache.sharded import is_sharded_folder
from ..options import DEFAULT_TOLERANCE_S, BuildOptions
from .pipeline import BuildResult, Progress, _ProgressBar, ensure
from .shard_build import build_sharded


def build(
    dataset: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    output: str | os.PathLike[str] = "offline_buffer.pt",
    *,
    image_range: int = 1,
    keys: Sequence[str] | str | None = None,
    episodes: Sequence[int] | str | None = None,
    tolerance_s: float = DEFAULT_TOLERANCE_S,
    workers: int | None = 1,
    force: bool = False,
    progress: Progress | bool | None = None,
    crop: Mapping[str, Sequence[int]] | Sequence[str] | None = None,
    resize: Sequence[int] | str | None = None,
    depth_unit: str = "mm",
    shards: int | str | None = None,
    ray: str | None = None,
) -> BuildResult:
    """Convert a LeRobot dataset into a cache file, unless `output` is already up to date.

    With several datasets, `shards` or `ray`, `output` is a folder of shards (SPEC section 13,
    `convert.shard_build`): the result is a `ShardedBuildResult`, and only stale shards are built.

    Args:
        dataset: A dataset folder, or a repo id under $HF_LEROBOT_HOME (several: a sharded cache).
        output: The cache file to write (a folder, for a sharded cache).
        image_range: 1 (batches in [0,1], LeRobot's convention) or 255 (batches in [0,255]).
        keys: Observation keys for `state` (default: all `observation.*` features).
        episodes: Episode indices, or a string like "0-9,15" (default: all).
        tolerance_s: Allowed distance between a parquet timestamp and its video frame.
        workers: Most decoding processes (None: all cores; at most one per two cores is used).
        force: Rebuild even if `output` is up to date.
        progress: True for a progress bar, or a callable receiving frame counts.
        crop: Per image key, (top, left, height, width) to crop from its frames (LeRobot's
            `crop_params_dict`; or CLI strings "KEY=TOP,LEFT,HEIGHT,WIDTH").
        resize: (height, width) every image key is resized to after its crop (LeRobot's
            `resize_size`): values equal LeRobot's `ImageCropResizeProcessorStep` up to uint8 rounding;
            depth keys are resized by nearest neighbour (every value one of its frame's).
        depth_unit: "mm" (LeRobot's default `depth_output_unit`) or "m": the unit depth keys are
            delivered in (recorded per key in the header and the fingerprint).
        shards: A shard count, or "auto" (shards of about 1 GiB of pixels); None: one file, unless
            `output` is already a sharded folder (then its count is kept).
        ray: Build the shards as Ray tasks on the cluster at this address ("local": the cluster
            `ray.init()` finds or starts); None: in local processes. Needs `bufconv[ray]`.

    Returns:
        A `BuildResult` (status "hit": already up to date, "built" or "rebuilt").

    Example:
        >>> bufconv.build("~/.cache/huggingface/lerobot/me/pick_cube", "offline_buffer.pt", image_range=255)
    """
    options = BuildOptions.create(
        image_range=image_range, keys=keys, episodes=episodes, tolerance_s=tolerance_s, workers=workers,
        crop=crop, resize=resize, depth_unit=depth_unit,
    )  # fmt: skip
    if (
        not isinstance(dataset, (str, os.PathLike))
        or shards is not None
        or ray is not None
        or is_sharded_folder(output)
    ):
        frames = progress if callable(progress) else None
        return build_sharded(dataset, output, options, shards=shards, ray=ray, force=force, progress=frames)
    if progress is True:
        with _ProgressBar() as bar:
            request = prepare(dataset, options)
            bar.start(request)
            return ensure(request, output, force=force, progress=bar)
    return ensure(prepare(dataset, options), output, force=force, progress=progress or None)
