"""The `bufconv` command: a thin layer of click over the library.

Each command parses its options, calls one library function and prints the result. Library
errors become one line on stderr and exit status 1 (`--verbose` shows the traceback); usage
errors exit with 2. `-v/--verbose` and `-q/--quiet` work before or after the command name.
SIGTERM stops a build as Ctrl-C does (nothing replaced, nothing left), and a reader that goes
away (`| head`) ends the output quietly.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from . import __version__
from .errors import BufconvError, DatasetError

if TYPE_CHECKING:
    from .convert.preview import BuildPlan
from .options import DEFAULT_TOLERANCE_S, parse_crop, parse_episodes, parse_keys, parse_resize

F = TypeVar("F", bound=Callable[..., Any])

RANGE = click.Choice(["1", "255"])
_RANGE_TEXT = {1: "floats in [0,1]", 255: "floats in [0,255]"}


def _fail(message: str) -> None:
    click.echo(f"bufconv: error: {' '.join(message.split())}", err=True)


def _echo(text: str = "") -> None:
    """Print a line on stdout; once its reader has gone (`bufconv verify ... | head -1`), drop
    the rest quietly: a closed pipe is not an error, and the command keeps its exit status."""
    try:
        click.echo(text)
    except BrokenPipeError:
        _drop_stdout()


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so nothing (not even the flush at exit) writes to a closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):  # an in-memory stdout (tests) has no descriptor to replace
        pass


def _stdout_closed() -> bool:
    try:
        sys.stdout.flush()
    except BrokenPipeError:
        return True
    except (OSError, ValueError):
        return False
    return False


class _Terminated(KeyboardInterrupt):
    """Raised in the main thread on SIGTERM (`timeout`, SLURM, `docker stop`): the build stops
    as on Ctrl-C, its temporary file and lock are removed and the old cache stays."""


def _on_sigterm(_signum: int, _frame: object) -> None:
    raise _Terminated


def _flag(name: str) -> bool:
    """Whether a shared flag (`verbose`, `quiet`) was given, before or after the command name."""
    return bool(click.get_current_context().find_root().meta.get(f"bufconv.{name}"))


def handle_errors(command: F) -> F:
    """Turn any error into one line on stderr and exit status 1 (`--verbose` adds the traceback)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        verbose = _flag("verbose")
        try:
            return command(*args, **kwargs)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors: click prints them and exits 2
        except _Terminated:
            _fail("terminated (SIGTERM); nothing was replaced")
            sys.exit(128 + signal.SIGTERM)
        except KeyboardInterrupt:
            _fail("interrupted; nothing was replaced")
            sys.exit(130)
        except BrokenPipeError as e:
            if not _stdout_closed():
                _fail(str(e))
                sys.exit(1)
            _drop_stdout()  # the reader of our output left: not an error
            sys.exit(0)
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


def _parse_shards(value: str) -> int | str:
    from .convert.shards import parse_shards

    return parse_shards(value)


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


def _remember(ctx: click.Context, param: click.Parameter, value: bool) -> None:
    """Record a shared flag on the root context, wherever it was typed."""
    if value and param.name:
        ctx.find_root().meta[f"bufconv.{param.name}"] = True
        if param.name == "verbose":
            logging.getLogger().setLevel(logging.INFO)


#: Flags every command takes, before or after its name (`bufconv -v build ...` = `bufconv build ... -v`).
_SHARED_FLAGS = (
    ("-v", "--verbose", "Show the traceback of an error, and what the library logs."),
    ("-q", "--quiet", "Print nothing but errors (and --json output); no progress bar."),
)


def _shared_flags() -> list[click.Option]:
    return [
        click.Option([short, long], is_flag=True, expose_value=False, callback=_remember, help=text)
        for short, long, text in _SHARED_FLAGS
    ]


class _Group(click.Group):
    """A group whose commands all take the shared flags (a command's own option of the same name wins)."""

    def add_command(self, cmd: click.Command, name: str | None = None) -> None:
        taken = {opt for param in cmd.params for opt in param.opts}
        cmd.params.extend(flag for flag in _shared_flags() if not taken & set(flag.opts))
        super().add_command(cmd, name)


@click.group(
    cls=_Group,
    params=_shared_flags(),
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
)
@click.version_option(__version__, prog_name="bufconv")
def cli() -> None:
    """Convert LeRobot datasets into versioned, range-checked offline replay buffers.

    \b
    Quick start:
      bufconv demo
      bufconv inspect user/pick_cube
      bufconv build user/pick_cube --range 255 -o offline_buffer.pt
      bufconv verify offline_buffer.pt --dataset user/pick_cube

    \b
    Shell completion (bash; zsh and fish likewise):
      eval "$(_BUFCONV_COMPLETE=bash_source bufconv)"
    """
    # Commands print what matters themselves; library log lines only with --verbose.
    logging.basicConfig(
        level=logging.INFO if _flag("verbose") else logging.ERROR, format="bufconv: %(message)s"
    )


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
        stored = f"{cam.stored[1]}x{cam.stored[2]}"
        note = (
            ""
            if not cam.selected
            else ""
            if stored == f"{cam.height}x{cam.width}"
            else f" -> stored {stored}"
        )
        left_out = "" if cam.selected else "  (not selected)"
        _echo(
            f"  {cam.key:<{width}}  {codec:<12} {cam.height}x{cam.width}{note}, {cam.frames:,} frames{left_out}"
        )
    _echo("other keys:")
    for col in plan.columns:
        _echo(f"  {col.key:<{width}}  {col.dtype:<8} {list(col.shape)!s:<8} {col.role}")
    _echo(
        f"a build of episodes {plan.episodes} ({plan.episode_count} episodes, {plan.frames:,} frames) with "
        f"--range {plan.image_range} writes {_size(plan.file_bytes)} (uint8 pixels {_size(plan.payload_bytes)}), "
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
        "keys": keys,
        "episodes": episodes,
        "tolerance_s": tolerance_s,
        "crop": _one_crop_per_camera(crops),
        "resize": resize,
    }
    if dry_run:
        from .convert.pipeline import cache_file
        from .convert.preview import plan_build
        from .options import BuildOptions

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
    from .convert.pipeline import build as run_build

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
    if result.status == "fresh":
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
            f"(uint8 pixels {_size(result.payload_bytes)})"
        )
        if count:
            built = getattr(result, "built", [])
            _echo(f"shards: {count} in {result.path}; built {len(built)}, {count - len(built)} were fresh")
    _echo(f"ranges: {_ranges(result.ranges)}")


@cli.command()
@click.argument("dataset")
@_selection_options
@click.option("--json", "as_json", is_flag=True, help="Print the plan as JSON.")
@handle_errors
def inspect(
    dataset: str,
    image_range: str,
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
    from .convert.preview import plan_build
    from .options import BuildOptions

    plan = plan_build(
        dataset,
        BuildOptions.create(
            image_range=int(image_range), keys=keys, episodes=episodes, tolerance_s=tolerance_s,
            crop=_one_crop_per_camera(crops), resize=resize,
        ),
    )  # fmt: skip
    if as_json:
        _echo(json.dumps(plan.to_json(), indent=2))
    elif not _flag("quiet"):
        _print_plan(plan)


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--dataset", help="Also check the cache is fresh for this dataset.")
@click.option(
    "--range", "image_range", type=RANGE, default=None, help="The range you expect the cache to declare."
)
@click.option("--quick", is_flag=True, help="Skip the tensor checksums.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@handle_errors
def verify(path: str, dataset: str | None, image_range: str | None, quick: bool, as_json: bool) -> None:
    """Check a cache (or any .pt file, or an online buffer's folder) and report problems. Exit 0: none; 1: problems.

    Safe on untrusted files: they are opened with weights_only=True and never executed. For a
    file bufconv did not write, the value ranges of image-like tensors are reported, which
    shows an old double-normalized buffer. A buffer folder's segments are checked one by one.

    \b
    Examples:
      bufconv verify offline_buffer.pt --dataset me/pick_cube --range 255
      bufconv verify outputs/train/online_buffer
    """
    from .cache.verification import verify as run_verify

    try:
        report = run_verify(
            path, dataset=dataset, image_range=None if image_range is None else int(image_range), quick=quick
        )
    except DatasetError as e:  # --dataset names no dataset: a wrong argument, not a problem of the cache
        raise click.BadParameter(str(e), param_hint="'--dataset'") from None
    if as_json:
        _echo(json.dumps(report.to_json(), indent=2))
    elif not _flag("quiet"):
        state = "ok" if report.ok else f"{len(report.problems)} problem(s)"
        _echo(f"{path}: {state} ({report.kind}; checked: {', '.join(report.checked) or 'nothing further'})")
        if report.ranges:
            _echo(f"ranges: {_ranges(report.ranges)}")
        for o in report.observed:
            _echo(f"observed {o.name}: {o.dtype} {o.shape} values in [{o.min:.6g}, {o.max:.6g}]")
        for p in report.problems:
            _echo(f"[{p.code}] {p.message}")
    sys.exit(0 if report.ok else 1)


@cli.command()
@click.argument("path", type=click.Path())
@click.option("--json", "as_json", is_flag=True, help="Print the header as JSON.")
@handle_errors
def info(path: str, as_json: bool) -> None:
    """Summarise a cache from its header, without reading pixel data (or importing torch).

    --json prints the header's fields, with the source files' modification times as ISO 8601
    and the ranges as {key: {"storage": "uint8", "output": 1 | 255}}, as `verify --json`.

    An online buffer's folder is summarised from its manifest.

    \b
    Examples:
      bufconv info offline_buffer.pt --json
      bufconv info outputs/train/online_buffer
    """
    from .cache.header import read_header, summarize
    from .cache.segments import is_buffer_folder
    from .cache.sharded import is_sharded_folder

    if is_sharded_folder(path):
        _sharded_info(path, as_json)
        return
    if is_buffer_folder(path):
        _folder_info(path, as_json)
        return
    meta = read_header(path)
    if as_json:
        _echo(json.dumps(summarize(path, meta), indent=2))
        return
    if _flag("quiet"):
        return
    size = Path(path).stat().st_size
    source = meta["source"]
    _echo(
        f"{path}: bufconv cache, format 1 (bufconv {meta['bufconv_version']}, created {meta['created']}), {_size(size)}"
    )
    _echo(
        f"source: {source['root']} ({source.get('repo_id') or 'local'}, {source['codebase_version']}, {source['fps']} fps)"
    )
    _echo(f"frames: {meta['frames']:,} in {len(meta['episodes'])} episodes; done from {meta['done_source']}")
    _echo(f"fingerprint: {meta['fingerprint']}")
    crops = meta.get("crop") or {}
    crop_text = "; ".join(f"{k} {','.join(map(str, c))} (top,left,height,width)" for k, c in crops.items())
    resize = meta.get("resize")
    _echo(f"crop: {crop_text or 'none'}; resize: {'x'.join(map(str, resize)) if resize else 'none'}")
    actions = meta.get("actions")
    if actions:
        _echo(f"actions ({actions['dims']} dims, {source['fps']} fps):")
        for d in range(actions["dims"]):
            name = actions["names"][d] if actions.get("names") else f"action[{d}]"
            kind = actions["kinds"][d]
            shape = (
                f"discrete {{{', '.join(f'{v:g}' for v in kind['values'])}}}"
                if kind["kind"] == "discrete"
                else "continuous"
            )
            gripper = " (gripper)" if (actions.get("gripper") or {}).get("index") == d else ""
            _echo(
                f"  {name}{gripper}: [{_g(actions['min'][d])}, {_g(actions['max'][d])}] "
                f"mean {_g(actions['mean'][d])} std {_g(actions['std'][d])}, {shape}"
            )
    _echo("tensors:")
    width = max(len(k) for k in meta["tensors"])
    for name, t in meta["tensors"].items():
        note = f"  -> {_RANGE_TEXT[meta['ranges'][name]['output']]}" if name in meta["ranges"] else ""
        _echo(f"  {name:<{width}}  {t['dtype']:<8} {t['shape']}{note}")


def _sharded_info(path: str, as_json: bool) -> None:
    from .cache.sharded import summary

    data = summary(path)
    if as_json:
        _echo(json.dumps(data, indent=2))
        return
    if _flag("quiet"):
        return
    _echo(
        f"{path}: bufconv sharded cache, format {data['format_version']} (bufconv {data['bufconv_version']}, "
        f"updated {data['updated']}), {len(data['shards'])} shards, {_size(data['bytes'])}"
    )
    _echo(f"frames: {data['frames']:,} in {data['episodes']} episodes; fingerprint {data['fingerprint']}")
    _echo("datasets:")
    for i, d in enumerate(data["datasets"]):
        _echo(f"  [{i}] {d['root']} ({d.get('repo_id') or 'local'}, {d['codebase_version']}, {d['fps']} fps): "
              f"episodes {d['episodes']}, {d['frames']:,} frames")  # fmt: skip
    _echo(f"ranges: {_ranges({k: v['output'] for k, v in data['ranges'].items()})}")
    _echo("shards:")
    for shard in data["shards"]:
        _echo(
            f"  {shard['file']}  dataset [{shard['dataset']}] episodes {shard['episodes']}, "
            f"{shard['frames']:,} frames, {_size(shard['bytes'])}"
        )


def _folder_info(path: str, as_json: bool) -> None:
    from .cache.segments import summary

    data = summary(path)
    if as_json:
        _echo(json.dumps(data, indent=2))
        return
    if _flag("quiet"):
        return
    _echo(
        f"{path}: bufconv {data['kind']} buffer, format {data['format_version']} (bufconv {data['bufconv_version']}), "
        f"checkpoint {data['checkpoint']}{', ' + data['updated'] if data.get('updated') else ''}"
    )
    _echo(
        f"transitions: {data['transitions']:,} of capacity {data['capacity']:,} in {data['frames']:,} frames; "
        f"{data['segments']} segment(s), {_size(data['bytes'])}"
    )
    images = data["keys"].get("images", [])
    _echo(f"ranges: {_ranges({k: data['image_range'] for k in images})}")
    frames = (data.get("schema") or {}).get("frames", {})
    if frames:
        _echo("frames:")
        width = max(len(k) for k in frames)
        for name, column in frames.items():
            _echo(f"  {name:<{width}}  {column['dtype']:<8} {column['shape']}")


@cli.command()
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "--lerobot",
    "root",
    required=True,
    type=click.Path(file_okay=False),
    help="The LeRobot dataset folder to write (must not exist).",
)
@click.option("--repo-id", help="The dataset's repo id (default: bufconv/<folder name>).")
@click.option("--fps", type=click.IntRange(min=1), help="Frames per second (default: the cache's, or 10).")
@handle_errors
def export(path: str, root: str, repo_id: str | None, fps: int | None) -> None:
    """Write a buffer (a cache, or an online buffer's folder) as a LeRobot dataset. Needs LeRobot.

    Images are written as uint8 PNG `image` features, an episode ends where a transition is done
    or truncated, as LeRobot's learner writes its buffers. A folder is read at its last
    checkpoint, without disturbing a learner that is writing it.

    \b
    Example:
      bufconv export outputs/train/online_buffer --lerobot exported/online
    """
    from .buffer.export import export_lerobot

    started = time.perf_counter()
    _, count = export_lerobot(path, root, repo_id=repo_id, fps=fps)
    if not _flag("quiet"):
        _echo(
            f"exported {count:,} transitions from {path} to {root} in {time.perf_counter() - started:.1f} s"
        )


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

    run_demo(directory, echo=_echo)


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
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="bufconv")
