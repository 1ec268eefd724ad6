"""`manifest.json`: the small JSON file that says what a folder of cache files holds.

An online buffer's folder (`segments`) and a sharded cache (`sharded`) each keep one, with its
own `format` string. It is replaced atomically (temporary name, fsync, rename, fsync of the
folder): whoever reads it sees the old one or the new one, whole. No torch here (`info`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .. import errors as E
from ..errors import unwritable_folder
from .header import invalid

MANIFEST = "manifest.json"


def read_manifest(folder: Path, *, format: str, version: int, what: str) -> dict[str, Any]:
    """`<folder>/manifest.json`, checked for its `format` and `format_version`.

    Args:
        what: The kind of folder, for messages ("an online buffer folder").

    Raises:
        InvalidCacheError: `not-a-cache` (missing, another format), `unreadable`, `unsupported-version`.
    """
    path = folder / MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise invalid(folder, E.NOT_A_CACHE, f"no {MANIFEST}: not {what}") from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise invalid(folder, E.UNREADABLE, f"{MANIFEST} cannot be read ({e})") from e
    if not isinstance(manifest, dict) or manifest.get("format") != format:
        raise invalid(folder, E.NOT_A_CACHE, f"{MANIFEST} is not a {format} manifest")
    if manifest.get("format_version") != version:
        raise invalid(
            folder,
            E.UNSUPPORTED_VERSION,
            f"{MANIFEST}: format version {manifest.get('format_version')!r}; this bufconv reads {version}",
        )
    return manifest


def manifest_format(folder: str | os.PathLike[str]) -> str | None:
    """The `format` of `<folder>/manifest.json`; None if there is none, "" if it cannot be read."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return ""
    return str(data.get("format", "")) if isinstance(data, dict) else ""


def write_manifest(folder: Path, manifest: Mapping[str, Any]) -> None:
    """Replace `<folder>/manifest.json` atomically (temporary file, fsync, rename, fsync of the folder).

    Raises:
        CacheError: the folder is not writable.
    """
    final = folder / MANIFEST
    tmp = folder / f".{MANIFEST}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, final)
    except OSError as e:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise unwritable_folder(folder, e) from e
    with contextlib.suppress(OSError):  # not every filesystem lets a directory be opened/fsynced
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
