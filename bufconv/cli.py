"""The `bufconv` command: a thin layer of click over the library.

Each command parses its options, calls one library function and prints the result. Library
errors become one line on stderr and exit status 1 (`--verbose` shows the traceback); usage
errors exit with 2.
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from . import __version__
from .errors import BufconvError, DatasetError
from .options import DEFAULT_TOLERANCE_S, parse_crop, parse_episodes, parse_keys, parse_resize

F = TypeVar("F", bound=Callable[..., Any])

RANGE = click.Choice(["1", "255"])
_RANGE_TEXT = {1: "floats in [0,1]", 255: "floats in [0,255]"}


def _fail(message: str) -> None:
    click.echo(f"bufconv: error: {' '.join(message.split())}", err=True)


def handle_errors(command: F) -> F:
    """Turn any error into one line on stderr and exit status 1 (`--verbose` adds the traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = click.get_current_context().find_root().params.get("verbose")
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors: click prints them and exits 2
        except KeyboardInterrupt:
            _fail("interrupted; nothing was replaced")
            sys.exit(130)
        except (BufconvError, ValueError, OSError) as e:
            if verbose:
                traceback.print_exc()
            _fail(str(e) or type(e).__name__)
            sys.exit(1)
        except Exception as e:  # a bug: still one line, and the way to see more
            if verbose:
                traceback.print_exc()
            _fail(f"internal error ({type(e).__name__}: {e}); rerun with --verbose and report the traceback")
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


def _parsed(parse: Callable[[str], Any]) -> Callable[[click.Context, click.Parameter, str | None], Any]:
    """A click callback that parses an option with `parse`; a bad value is a usage error (exit 2)."""

    def callback(_ctx: click.Context, _param: click.Parameter, value: str | None) -> Any:
        if value is None:
            return None
        try:
            return parse(value)
        except ValueError as e:
            raise click.BadParameter(str(e)) from None

    return callback


def _parsed_each(
    parse: Callable[[str], Any],
) -> Callable[[click.Context, click.Parameter, tuple[str, ...]], tuple[Any, ...]]:
    """`_parsed` for an option given several times."""

    def callback(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> tuple[Any, ...]:
        return tuple(_parsed(parse)(ctx, param, value) for value in values)

    return callback


def _one_crop_per_camera(crops: tuple[tuple[str, Any], ...]) -> dict[str, Any] | None:
    keys = [key for key, _ in crops]
    for key in keys:
        if keys.count(key) > 1:
            raise click.BadParameter(
                f"two crops for {key!r}; give each camera one --crop", param_hint="--crop"
            )
    return dict(crops) or None


def _g(value: float | None) -> str:
    return "?" if value is None else f"{value:.4g}"


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _ranges(ranges: dict[str, int]) -> str:
    return (
        "; ".join(f"{k} -> {_RANGE_TEXT[v]} (stored uint8)" for k, v in ranges.items()) or "(no image keys)"
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="bufconv")
@click.option("--verbose", is_flag=True, help="Show the traceback of an error.")
def cli(verbose: bool) -> None:
    """Convert LeRobot datasets into versioned, range-checked offline replay buffers.

    \b
    Quick start:
      bufconv demo
      bufconv build user/pick_cube --range 255 -o offline_buffer.pt
      bufconv verify offline_buffer.pt --dataset user/pick_cube
    """
    # Commands print what matters themselves; library log lines only with --verbose.
    logging.basicConfig(level=logging.INFO if verbose else logging.ERROR, format="bufconv: %(message)s")


@cli.command()
@click.argument("dataset")
@click.option(
    "-o",
    "--output",
    default="offline_buffer.pt",
    show_default=True,
    type=click.Path(dir_okay=False),
    help="Cache file to write.",
)
@click.option(
    "--range",
    "image_range",
    type=RANGE,
    default="1",
    show_default=True,
    help="Range image batches come out in: 1 = [0,1] (LeRobot), 255 = [0,255] (encoders that normalise themselves).",
)
@click.option(
    "--keys",
    callback=_parsed(parse_keys),
    help="Observation keys for the state, comma-separated (default: all observation.* features).",
)
@click.option(
    "--episodes", callback=_parsed(parse_episodes), help="Episodes to include, e.g. 0-9,15 (default: all)."
)
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=None,
    help="Most decoding processes (default: all cores; one per two cores is used at most).",
)
@click.option(
    "--tolerance-s",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_TOLERANCE_S,
    show_default=True,
    help="Largest allowed gap between a parquet timestamp and its video frame, in seconds.",
)
@click.option(
    "--crop",
    "crops",
    multiple=True,
    metavar="KEY=TOP,LEFT,HEIGHT,WIDTH",
    callback=_parsed_each(parse_crop),
    help="Crop one camera's frames, as LeRobot's crop_params_dict (repeat for each camera).",
)
@click.option(
    "--resize",
    metavar="H,W",
    callback=_parsed(parse_resize),
    help="Resize every camera's frames after the crop, as LeRobot's resize_size (bilinear, antialiased).",
)
@click.option("--force", is_flag=True, help="Rebuild even if the cache is up to date.")
@click.option("--quiet", is_flag=True, help="No progress bar and no summary.")
@handle_errors
def build(
    dataset: str,
    output: str,
    image_range: str,
    keys: tuple[str, ...] | None,
    episodes: tuple[int, ...] | None,
    workers: int | None,
    tolerance_s: float,
    crops: tuple[tuple[str, tuple[int, int, int, int]], ...],
    resize: tuple[int, int] | None,
    force: bool,
    quiet: bool,
) -> None:
    """Build an offline buffer cache from DATASET (a folder or a repo id).

    If OUTPUT is already up to date for this dataset and these options, nothing is decoded.
    --crop and --resize apply LeRobot's ImageCropResizeProcessorStep to the frames while
    decoding, so offline images match the live ones the env processor crops and resizes.

    \b
    Example:
      bufconv build ~/.cache/huggingface/lerobot/me/pick_cube --range 255 --episodes 0-9
      bufconv build me/pick_cube --crop observation.images.front=0,80,480,480 --resize 128,128
    """
    from .convert.pipeline import build as run_build

    result = run_build(
        dataset,
        output,
        image_range=int(image_range),
        keys=keys,
        episodes=episodes,
        workers=workers,
        tolerance_s=tolerance_s,
        crop=_one_crop_per_camera(crops),
        resize=resize,
        force=force,
        progress=not quiet and sys.stderr.isatty(),
    )
    if quiet:
        return
    if result.status == "fresh":
        click.echo(
            f"{result.path} is up to date ({result.frames:,} frames, {result.episodes} episodes); "
            "nothing decoded. Use --force to rebuild."
        )
    else:
        for reason in result.reasons:
            click.echo(f"stale: {reason}")
        click.echo(
            f"{result.status} {result.path}: {result.frames:,} frames, {result.episodes} episodes in "
            f"{result.seconds:.2f} s ({result.frames_per_second:,.0f} frames/s); file {_size(result.file_bytes)} "
            f"(uint8 pixels {_size(result.payload_bytes)})"
        )
    click.echo(f"ranges: {_ranges(result.ranges)}")


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--dataset", help="Also check the cache is fresh for this dataset.")
@click.option(
    "--range", "image_range", type=RANGE, default=None, help="The range you expect the cache to declare."
)
@click.option("--quick", is_flag=True, help="Skip the tensor checksums.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify(path: str, dataset: str | None, image_range: str | None, quick: bool, as_json: bool) -> None:
    """Check a cache (or any .pt file) and report problems. Exit 0: none; 1: problems.

    Safe on untrusted files: they are opened with weights_only=True and never executed. For a
    file bufconv did not write, the value ranges of image-like tensors are reported, which
    shows an old double-normalized buffer.

    \b
    Example:
      bufconv verify offline_buffer.pt --dataset me/pick_cube --range 255
    """
    from .cache.verification import verify as run_verify

    try:
        report = run_verify(
            path, dataset=dataset, image_range=None if image_range is None else int(image_range), quick=quick
        )
    except DatasetError as e:  # --dataset names no dataset: a wrong argument, not a problem of the cache
        raise click.BadParameter(str(e), param_hint="'--dataset'") from None
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        click.echo(
            f"{path}: {state} ({report.kind}; checked: {', '.join(report.checked) or 'nothing further'})"
        )
        if report.ranges:
            click.echo(f"ranges: {_ranges(report.ranges)}")
        for o in report.observed:
            click.echo(f"observed {o.name}: {o.dtype} {o.shape} values in [{o.min:.6g}, {o.max:.6g}]")
        for p in report.problems:
            click.echo(f"[{p.code}] {p.message}")
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.argument("path", type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
@handle_errors
def info(path: str, as_json: bool) -> None:
    """Summarise a cache from its header, without reading pixel data.

    \b
    Example:
      bufconv info offline_buffer.pt --json
    """
    from .cache.reader import read_header

    meta = read_header(path)
    size = Path(path).stat().st_size
    if as_json:
        click.echo(json.dumps({"path": path, "file_bytes": size, "meta": meta}, indent=2))
        return
    source = meta["source"]
    click.echo(
        f"{path}: bufconv cache, format 1 (bufconv {meta['bufconv_version']}, created {meta['created']}), {_size(size)}"
    )
    click.echo(
        f"source: {source['root']} ({source.get('repo_id') or 'local'}, {source['codebase_version']}, {source['fps']} fps)"
    )
    click.echo(
        f"frames: {meta['frames']:,} in {len(meta['episodes'])} episodes; done from {meta['done_source']}"
    )
    click.echo(f"fingerprint: {meta['fingerprint']}")
    crops = meta.get("crop") or {}
    crop_text = "; ".join(f"{k} {','.join(map(str, c))} (top,left,height,width)" for k, c in crops.items())
    resize = meta.get("resize")
    click.echo(f"crop: {crop_text or 'none'}; resize: {'x'.join(map(str, resize)) if resize else 'none'}")
    actions = meta.get("actions")
    if actions:
        click.echo(f"actions ({actions['dims']} dims, {source['fps']} fps):")
        for d in range(actions["dims"]):
            name = actions["names"][d] if actions.get("names") else f"action[{d}]"
            kind = actions["kinds"][d]
            shape = (
                f"discrete {{{', '.join(f'{v:g}' for v in kind['values'])}}}"
                if kind["kind"] == "discrete"
                else "continuous"
            )
            gripper = " (gripper)" if (actions.get("gripper") or {}).get("index") == d else ""
            click.echo(
                f"  {name}{gripper}: [{_g(actions['min'][d])}, {_g(actions['max'][d])}] "
                f"mean {_g(actions['mean'][d])} std {_g(actions['std'][d])}, {shape}"
            )
    click.echo("tensors:")
    width = max(len(k) for k in meta["tensors"])
    for name, t in meta["tensors"].items():
        note = f"  -> {_RANGE_TEXT[meta['ranges'][name]['output']]}" if name in meta["ranges"] else ""
        click.echo(f"  {name:<{width}}  {t['dtype']:<8} {t['shape']}{note}")


@cli.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False),
    default=None,
    help="Where to write the demo dataset and cache (default: a new temporary folder).",
)
@handle_errors
def demo(directory: str | None) -> None:
    """Run the whole job on an embedded example, offline.

    Writes a small LeRobot v3.0 dataset (real AV1 video, made by bufconv), builds it with
    --range 255, verifies the cache, samples a batch and shows the observed value ranges.
    """
    from .demo import run_demo

    run_demo(directory, echo=click.echo)


@cli.command()
@click.argument("source", metavar="CACHE|DATASET")
@click.option(
    "--config",
    "config_path",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="The LeRobot training config (train_config.json); LeRobot itself is not needed.",
)
@click.option(
    "--processor",
    type=click.Path(exists=True, dir_okay=False),
    help="The actor's observation processor pipeline as LeRobot saves it (JSON), to check the order of its steps.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the findings as JSON.")
@handle_errors
def check(source: str, config_path: str, processor: str | None, as_json: bool) -> None:
    """Check a cache or dataset against a LeRobot training config. Exit 0: no errors; 1: errors; 2: usage.

    Compares image keys and shapes (after crop/resize) with the policy's input features, the
    image range with what the policy expects, actions with end_effector_bounds (the fraction of
    frames outside, per axis), the gripper with the env's gripper settings, fps, and the order of
    the range and crop/resize steps. Each finding has a code, a severity and a fix.

    \b
    Example:
      bufconv check offline_buffer.pt --config train_config.json
      bufconv check me/pick_cube --config train_config.json --json
    """
    from .contract.check import check as run_check

    try:
        report = run_check(source, config_path, processor=processor)
    except BufconvError as e:  # an unreadable config or source is a usage error
        _fail(str(e))
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        errors = len(report.errors)
        warnings = len(report.findings) - errors
        state = "ok" if not report.findings else f"{errors} error(s), {warnings} warning(s)"
        click.echo(f"{report.source}: {state} against {report.config} (checked: {', '.join(report.checked)})")
        for f in report.findings:
            click.echo(f"[{f.code}] {f.severity}: {f.message}")
    sys.exit(0 if report.ok else 1)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="bufconv")
