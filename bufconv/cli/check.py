"""`bufconv check` (data against a LeRobot training config) and `bufconv demo`."""

from __future__ import annotations

import json
import sys

import click

from ..errors import BufconvError
from .app import (
    _echo,
    _fail,
    cli,
    handle_errors,
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
    from ..demo import run_demo

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
    frames outside, per axis), the gripper with the env's gripper settings, fps, the order of
    the range and crop/resize steps, and the image chain: per path (offline, online, actor, the
    reward classifier's actor and training paths) the map from a stored pixel to the network's
    first layer, through the range, the policy's normalizer and the encoder's own normalization.
    Each finding has a code, a severity and a fix.

    \b
    Example:
      bufconv check offline_buffer.pt --config train_config.json
      bufconv check me/pick_cube --config train_config.json --json
    """
    from ..contract.check import check as run_check

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
        if report.chain:
            click.echo("image chain (what each network's first layer sees of a stored pixel p):")
            for line in report.chain_lines():
                click.echo(f"  {line}")
        for f in report.findings:
            click.echo(f"[{f.code}] {f.severity}: {f.message}")
    sys.exit(0 if report.ok else 1)
