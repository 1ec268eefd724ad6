"""The `bufconv` group: shared flags, error handling and output helpers of every command.

Each command parses its options, calls one library function and prints the result. Library
errors become one line on stderr and exit status 1 (`--verbose` shows the traceback); usage
errors exit with 2. `-v/--verbose` and `-q/--quiet` work before or after the command name.
SIGTERM stops a build as Ctrl-C does (nothing replaced, nothing left), and a reader that goes
away (`| head`) ends the output quietly.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import sys
import traceback
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from ..errors import BufconvError
from ..version import __version__

if TYPE_CHECKING:
    pass

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
    from ..convert.shard_plan import parse_shards

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


def main() -> None:
    """Console-script entry point."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    cli(prog_name="bufconv")
