"""The learner's start-up check: the offline buffer against the training config (`bufconv check`).

A policy trained in simulation meets the real robot through its config: the crop and resize
of the env processor, the image range, the workspace bounds, the gripper, fps. The drop-in
builds the offline buffer with the config's crop and resize, then runs `bufconv check` on it
before the first step, so a mismatch stops training (or is logged) instead of surfacing as a
blind or clipped policy hours later.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from ..contract.check import CheckReport, check
from ..contract.config import read_config
from ..errors import ContractError
from ..options import Crop

log = logging.getLogger("bufconv")

ON_MISMATCH = ("error", "warn")


def preprocessing(cfg: Any) -> tuple[dict[str, Crop] | None, tuple[int, int] | None]:
    """The env processor's crop (per image key) and resize, read from the config; (None, None) if none."""
    expected = read_config(cfg)
    return (expected.crop or None), expected.resize


def preflight(
    cfg: Any, cache: str | os.PathLike[str], *, image_range: int | None = None, on_mismatch: str = "error"
) -> CheckReport:
    """Check the cache against the config; raise or log what does not fit.

    Args:
        cfg: The training config (object or JSON path).
        cache: The offline buffer's cache file.
        image_range: The range the learner uses, if not the config's.
        on_mismatch: "error" raises `ContractError` on any error finding; "warn" logs them.

    Returns:
        The report (warnings are always logged).
    """
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be 'error' or 'warn'; got {on_mismatch!r}")
    report = check(cache, cfg, image_range=image_range)
    for finding in report.findings:
        if finding.severity != "error" or on_mismatch == "warn":
            log.warning("bufconv check: [%s] %s: %s", finding.code, finding.severity, finding.message)
    if not report.ok and on_mismatch == "error":
        lines = "; ".join(f"[{f.code}] {f.message}" for f in report.errors)
        raise ContractError(
            f"the offline data does not fit the training config: {lines} "
            "(on_mismatch='warn' trains anyway; `bufconv check CACHE --config CONFIG` shows the same)",
            path=report.source,
            findings=report.findings,
        )
    return report
