"""`bufconv build` and `bufconv inspect`: a dataset in, a cache (or its plan) out."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

import click

from ..options import (
    DEFAULT_DEPTH_UNIT,
    DEFAULT_TOLERANCE_S,
    DEPTH_UNITS,
    parse_crop,
    parse_episodes,
    parse_keys,
    parse_resize,
)
from .app import (
    RANGE,
    F,
    _echo,
    _flag,
    _one_crop_per_camera,
    _parse_shards,
    _parsed,
    _parsed_each,
    _ranges,
    _size,
    cli,
    handle_errors,
)

if TYPE_CHECKING:
    from ..convert.preview import BuildPlan


def _selection_options(command: F) -> F:
    """The options that choose what a cache holds: `build` and `inspect` share them."""
    for option in reversed(
        [
            click.option(
                "--range",
                "image_range",
                type=RANGE,
                default="1",
                show_default=True,
                help="Range image batches come out in: 1 = [0,1] (LeRobot), 255 = [0,255] (encoders that normalise themselves).",
            ),
            click.option(
                "--depth-unit",
                type=click.Choice(DEPTH_UNITS),
                default=DEFAULT_DEPTH_UNIT,
                show_default=True,
                help="Unit depth cameras' batches come out in: mm (LeRobot's depth_output_unit default) or m.",
            ),
            click.option(
                "--keys",
                callback=_parsed(parse_keys),
                help="Observation keys for the state, comma-separated (default: all observation.* features).",
            ),
            click.option(
                "--episodes",
                callback=_parsed(parse_episodes),
                help="Episodes to include, e.g. 0-9,15 (default: all).",
            ),
            click.option(
                "--tolerance-s",
                type=click.FloatRange(min=0, min_open=True),
                default=DEFAULT_TOLERANCE_S,
                show_default=True,
                help="Largest allowed gap between a parquet timestamp and its video frame, in seconds.",
            ),
            click.option(
                "--crop",
                "crops",
                multiple=True,
                metavar="KEY=TOP,LEFT,HEIGHT,WIDTH",
                callback=_parsed_each(parse_crop),
                help="Crop one camera's frames, as LeRobot's crop_params_dict (repeat for each camera).",
            ),
            click.option(
                "--resize",
                metavar="H,W",
                callback=_parsed(parse_resize),
                help="Resize every camera's frames after the crop, as LeRobot's resize_size (bilinear, antialiased).",
            ),
        ]
    ):
        command = option(command)
    return command


def _has_depth(plan: BuildPlan) -> bool:
    return any(c.depth is not None and c.selected for c in plan.cameras)


def _unit_flag(plan: BuildPlan) -> str:
    return f" --depth-unit {plan.depth_unit}" if _has_depth(plan) else ""


def _depth_text(entry: dict[str, Any] | None) -> str:
    """A depth camera's storage and unit, e.g. 'depth: 12-bit log codes (0.01-10 m) -> float32 mm'."""
    if entry is None:
        return "depth (its info is incomplete: see bufconv build)"
    q = entry.get("quantization")
    if entry["stored"] == "codes12" and q:
        kind = "log" if q.get("use_log") else "linear"
        stored = f"{q.get('bits', 12)}-bit {kind} codes ({q['depth_min']:g}-{q['depth_max']:g} m)"
    elif entry["stored"] == "uint16":
        stored = f"uint16 {entry['source_unit']}"
    else:
        stored = f"float32 {entry['source_unit']}"
    return f"depth: {stored} -> float32 {entry['unit']}"


def _print_plan(plan: BuildPlan) -> None:
    """The dataset and the cache a build would write (`inspect`, `build --dry-run`)."""
    where = plan.repo_id or "local"
    _echo(
        f"{plan.root}: LeRobot {plan.codebase_version} dataset ({where}), {plan.fps:g} fps, "
        f"{plan.episodes_in_dataset} episodes, {plan.frames_in_dataset:,} frames"
    )
    width = max([len(c.key) for c in plan.cameras] + [len(c.key) for c in plan.columns] + [8])
    _echo("cameras:" if plan.cameras else "cameras: none")
    for cam in plan.cameras:
        codec = f"{cam.kind} {cam.codec}" if cam.codec else f"{cam.kind} (PNG/JPEG in parquet)"
        if cam.depth is not None and not cam.codec:
            codec = f"{cam.kind} (TIFF in parquet)"
        stored = f"{cam.stored[1]}x{cam.stored[2]}"
        note = (
            ""
            if not cam.selected
            else ""
            if stored == f"{cam.height}x{cam.width}"
            else f" -> stored {stored}"
        )
        left_out = "" if cam.selected else "  (not selected)"
        depth = f", {_depth_text(cam.depth)}" if cam.depth is not None else ""
        _echo(
            f"  {cam.key:<{width}}  {codec:<12} {cam.height}x{cam.width}{note}, {cam.frames:,} frames{depth}{left_out}"
        )
    _echo("other keys:")
    for col in plan.columns:
        _echo(f"  {col.key:<{width}}  {col.dtype:<8} {list(col.shape)!s:<8} {col.role}")
    _echo(
        f"a build of episodes {plan.episodes} ({plan.episode_count} episodes, {plan.frames:,} frames) with "
        f"--range {plan.image_range}{_unit_flag(plan)} writes {_size(plan.file_bytes)} "
        f"({'pixels and depth' if _has_depth(plan) else 'uint8 pixels'} {_size(plan.payload_bytes)}), "
        f"{len(plan.tensors)} tensors"
    )


@cli.command()
@click.argument("datasets", metavar="DATASET...", nargs=-1, required=True)
@click.option(
    "-o",
    "--output",
    default=None,
    type=click.Path(),
    help="Cache file to write (default offline_buffer.pt); a folder (existing, or ending in /) means "
    "FOLDER/offline_buffer.pt. A sharded cache is a folder (default offline_buffer/).",
)
@_selection_options
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Most decoding processes (default: all cores; one per two cores is used at most).",
)
@click.option(
    "--shards",
    callback=_parsed(_parse_shards),
    metavar="N|auto",
    help="Build a folder of N shards (cut at episode boundaries), or 'auto' (about 1 GiB of pixels "
    "each); only stale shards are rebuilt. Implied by several DATASETs or --ray.",
)
@click.option(
    "--ray",
    "ray_address",
    is_flag=False,
    flag_value="local",
    default=None,
    metavar="[ADDRESS]",
    help="Build the shards as Ray tasks on the cluster at ADDRESS (as ray.init takes it; default: "
    "the local cluster). Needs bufconv[ray]. Give it last, or as --ray=ADDRESS.",
)
@click.option("--force", is_flag=True, help="Rebuild even if the cache is up to date.")
@click.option(
    "--dry-run", is_flag=True, help="Print what the build would write (as `inspect`), write nothing."
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print the result as JSON (status, reasons, path, frames, seconds).",
)
@handle_errors
def build(
    datasets: tuple[str, ...],
    output: str | None,
    image_range: str,
    depth_unit: str,
    keys: tuple[str, ...] | None,
    episodes: tuple[int, ...] | None,
    tolerance_s: float,
    crops: tuple[tuple[str, tuple[int, int, int, int]], ...],
    resize: tuple[int, int] | None,
    shards: int | str | None,
    ray_address: str | None,
    workers: int | None,
    force: bool,
    dry_run: bool,
    as_json: bool,
) -> None:
    """Build an offline buffer cache from DATASET (a folder or a repo id), or a sharded one from several.

    If OUTPUT is already up to date for this dataset and these options, nothing is decoded.
    --crop and --resize apply LeRobot's ImageCropResizeProcessorStep to the frames while
    decoding, so offline images match the live ones the env processor crops and resizes.
    Several DATASETs, --shards or --ray write a folder of shards and its manifest.json; the
    datasets must have the same keys and shapes.

    \b
    Example:
      bufconv build ~/.cache/huggingface/lerobot/me/pick_cube --range 255 --episodes 0-9
      bufconv build me/pick_cube --crop observation.images.front=0,80,480,480 --resize 128,128
      bufconv build me/pick_cube -o outputs/ --json
      bufconv build me/rgbd_pick --depth-unit m
      bufconv build me/pick_cube me/place_cube -o shards/ --shards auto --ray=127.0.0.1:6379
    """
    sharded = len(datasets) > 1 or shards is not None or ray_address is not None
    if output is None:
        output = "offline_buffer" if sharded else "offline_buffer.pt"
    quiet = _flag("quiet")
    show_progress = not quiet and not as_json and not dry_run and sys.stderr.isatty()
    if show_progress:  # importing torch and reading the metadata take a few seconds: say so
        click.echo("bufconv build: starting\r", err=True, nl=False)
    options: dict[str, Any] = {
        "image_range": int(image_range),
        "depth_unit": depth_unit,
        "keys": keys,
        "episodes": episodes,
        "tolerance_s": tolerance_s,
        "crop": _one_crop_per_camera(crops),
        "resize": resize,
    }
    if dry_run:
        from ..convert.pipeline import cache_file
        from ..convert.preview import plan_build
        from ..options import BuildOptions

        if len(datasets) > 1:
            raise click.UsageError("--dry-run takes one DATASET (inspect each dataset of a sharded build)")
        plan = plan_build(datasets[0], BuildOptions.create(**options))
        if as_json:
            _echo(
                json.dumps({"dry_run": True, "output": str(cache_file(output)), **plan.to_json()}, indent=2)
            )
        elif not quiet:
            _print_plan(plan)
            _echo(f"dry run: nothing written; the cache would go to {cache_file(output)}")
        return
    from ..convert.build import build as run_build

    result = run_build(
        list(datasets) if len(datasets) > 1 else datasets[0],
        output,
        workers=workers,
        force=force,
        progress=show_progress and not sharded,
        shards=shards,
        ray=ray_address,
        **options,
    )
    if as_json:
        _echo(json.dumps(result.to_json(), indent=2))
        return
    if quiet:
        return
    count = getattr(result, "shards", 0)
    in_shards = f", {count} shards" if count else ""
    if result.status == "hit":
        _echo(
            f"{result.path} is up to date ({result.frames:,} frames, {result.episodes} episodes{in_shards}); "
            "nothing decoded. Use --force to rebuild."
        )
    else:
        for reason in result.reasons:
            _echo(f"stale: {reason}")
        _echo(
            f"{result.status} {result.path}: {result.frames:,} frames, {result.episodes} episodes in "
            f"{result.seconds:.2f} s ({result.frames_per_second:,.0f} frames/s); file {_size(result.file_bytes)} "
            f"({'pixels and depth' if getattr(result, 'depth_units', None) else 'uint8 pixels'} {_size(result.payload_bytes)})"
        )
        if count:
            built = getattr(result, "built", [])
            _echo(f"shards: {count} in {result.path}; built {len(built)}, {count - len(built)} were fresh")
    _echo(f"ranges: {_ranges(result.ranges)}")
    depth_units = getattr(result, "depth_units", None)
    if depth_units:
        _echo("depth units: " + ", ".join(f"{k} {u}" for k, u in depth_units.items()))


@cli.command()
@click.argument("dataset")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@handle_errors
def inspect(
    dataset: str,
    image_range: str,
    depth_unit: str,
    keys: tuple[str, ...] | None,
    episodes: tuple[int, ...] | None,
    tolerance_s: float,
    crops: tuple[tuple[str, tuple[int, int, int, int]], ...],
    resize: tuple[int, int] | None,
    as_json: bool,
) -> None:
    """Describe DATASET before building it: cameras, keys, episodes, and the cache size.

    Shows each camera (codec, size, frames), the other keys with their dtypes and shapes and
    what a build makes of them, the episodes, fps and layout version, and the size of the
    cache a build with these options would write. Reads metadata only.

    \b
    Example:
      bufconv inspect me/pick_cube
      bufconv inspect me/pick_cube --keys observation.images.front,observation.state --episodes 0-9
    """
    from ..convert.preview import plan_build
    from ..options import BuildOptions

    plan = plan_build(
        dataset,
        BuildOptions.create(
            image_range=int(image_range), keys=keys, episodes=episodes, tolerance_s=tolerance_s,
            crop=_one_crop_per_camera(crops), resize=resize, depth_unit=depth_unit,
        ),
    )  # fmt: skip
    if as_json:
        _echo(json.dumps(plan.to_json(), indent=2))
    elif not _flag("quiet"):
        _print_plan(plan)
