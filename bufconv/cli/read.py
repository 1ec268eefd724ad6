"""`bufconv verify`, `info` and `export`: what a cache, a sharded folder or an online buffer holds."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import click

from ..errors import DatasetError
from .app import (
    _RANGE_TEXT,
    RANGE,
    _echo,
    _flag,
    _g,
    _ranges,
    _size,
    cli,
    handle_errors,
)


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
    from ..cache.verification import verify as run_verify

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
        if report.depth_units:
            _echo("depth units: " + ", ".join(f"{k} {u}" for k, u in report.depth_units.items()))
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
    from ..cache.header import read_header, summarize
    from ..cache.segments import is_buffer_folder
    from ..cache.sharded import is_sharded_folder

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
    depth = meta.get("depth") or {}
    for name, t in meta["tensors"].items():
        note = f"  -> {_RANGE_TEXT[meta['ranges'][name]['output']]}" if name in meta["ranges"] else ""
        if name in depth:
            note = f"  -> depth ({depth[name]['stored']}) as float32 {depth[name]['unit']}"
        _echo(f"  {name:<{width}}  {t['dtype']:<8} {t['shape']}{note}")


def _sharded_info(path: str, as_json: bool) -> None:
    from ..cache.sharded import summary

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
    from ..cache.segments import summary

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
    from ..buffer.export import export_lerobot

    started = time.perf_counter()
    _, count = export_lerobot(path, root, repo_id=repo_id, fps=fps)
    if not _flag("quiet"):
        _echo(
            f"exported {count:,} transitions from {path} to {root} in {time.perf_counter() - started:.1f} s"
        )
