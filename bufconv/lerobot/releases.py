"""The LeRobot releases bufconv supports: the one list, and the check of the installed one.

Every release here is tested: 0.6.1 by the main suite (`.venv`), the others by the compatibility
run (`scripts/compat.sh`, which reads this table: `python bufconv/lerobot/releases.py` prints it,
one release a line). What differs between them is read where it is, by what each release has
(`bufconv.lerobot.compat` for module layouts and the processor step, `bufconv.buffer.lerobot_dataset`
for the dataset writer), never by comparing version numbers in the code that uses them.

This file imports nothing but the standard library, so that a shell script can run it directly.
"""

from __future__ import annotations

import re
import sys
from typing import NamedTuple


class Release(NamedTuple):
    """A supported LeRobot release and how the compatibility run installs it."""

    version: str
    python: str
    """The Python the compatibility run uses (its `requires-python` allows it)."""
    requirement: str
    """What the compatibility run installs, with bufconv's own `lerobot` extra beside it."""
    layout: str
    """The dataset layout its writer writes."""
    modules: str
    """Where its learner and replay buffer live."""


#: Oldest first. The last is the oracle of the main suite (pyproject's `dev` extra).
RELEASES: tuple[Release, ...] = (
    Release(
        "0.3.3",
        "3.10",
        "lerobot[grpcio-dep]==0.3.3",
        "v2.1",
        "lerobot.scripts.rl.learner, lerobot.utils.buffer",
    ),
    Release("0.4.4", "3.12", "lerobot[grpcio-dep]==0.4.4", "v3.0", "lerobot.rl.learner, lerobot.rl.buffer"),
    Release("0.5.1", "3.12", "lerobot[grpcio-dep]==0.5.1", "v3.0", "lerobot.rl.learner, lerobot.rl.buffer"),
    Release(
        "0.6.1", "3.12", "lerobot[dataset,grpcio-dep]==0.6.1", "v3.0", "lerobot.rl.learner, lerobot.rl.buffer"
    ),
)
SUPPORTED = tuple(r.version for r in RELEASES)
ORACLE = RELEASES[-1].version
"""The release of the main suite; the compatibility run covers the others."""


class UnsupportedReleaseError(ImportError):
    """The installed LeRobot is older than every supported release (or not a release at all)."""


def supported_text() -> str:
    return f"bufconv supports LeRobot {', '.join(SUPPORTED)} (tested; releases in between are accepted)"


def _key(version: str) -> tuple[int, ...] | None:
    match = re.match(r"(\d+)\.(\d+)(?:\.(\d+))?", version)
    return tuple(int(part or 0) for part in match.groups()) if match else None


def check_version(version: str) -> None:
    """Raise `UnsupportedReleaseError` for a LeRobot release older than the oldest supported one.

    Releases newer than the newest tested one are accepted: where their layout differs, the
    import that fails says what it looked for (`bufconv.lerobot.compat.import_first`).
    """
    key, oldest = _key(version), _key(SUPPORTED[0])
    assert oldest is not None
    if key is None or key < oldest:
        raise UnsupportedReleaseError(
            f"LeRobot {version} is installed; {supported_text()}: "
            f"pip install 'lerobot=={ORACLE}' (or any of {', '.join(SUPPORTED)})"
        )


def installed_version() -> str | None:
    """The installed LeRobot's version (None if it is not installed)."""
    from importlib import metadata

    try:
        return metadata.version("lerobot")
    except metadata.PackageNotFoundError:
        return None


def check_installed() -> str:
    """The installed LeRobot's version, checked by `check_version`.

    Raises:
        ImportError: LeRobot is not installed.
        UnsupportedReleaseError: it is older than the oldest supported release.
    """
    version = installed_version()
    if version is None:
        raise ImportError(f"LeRobot is not installed; {supported_text()}: pip install 'bufconv[lerobot]'")
    check_version(version)
    return version


if __name__ == "__main__":  # the table, for scripts/compat.sh: version python requirement layout
    wanted = sys.argv[1:]
    unknown = [v for v in wanted if v not in SUPPORTED]
    if unknown:
        sys.exit(f"unknown release {', '.join(unknown)}; supported: {', '.join(SUPPORTED)}")
    for release in RELEASES:
        if release.version in wanted or (not wanted and release.version != ORACLE):
            print(release.version, release.python, release.requirement, release.layout)
