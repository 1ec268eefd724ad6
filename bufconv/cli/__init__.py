"""The `bufconv` command: a thin layer of click over the library.

Each command parses its options, calls one library function and prints the result. Library
errors become one line on stderr and exit status 1 (`--verbose` shows the traceback); usage
errors exit with 2. `-v/--verbose` and `-q/--quiet` work before or after the command name.
SIGTERM stops a build as Ctrl-C does (nothing replaced, nothing left), and a reader that goes
away (`| head`) ends the output quietly.

    app.py    the group, shared flags, error handling, output helpers
    build.py  build, inspect          read.py   verify, info, export
    check.py  check, demo
"""

from __future__ import annotations

from . import build, check, read  # noqa: F401  (each registers its commands on the group)
from .app import cli, main

__all__ = ["cli", "main"]
