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

from ..contract.check import CheckReport, check, check_config
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
    cfg: Any,
    cache: str | os.PathLike[str] | None,
    *,
    image_range: int | None = None,
    on_mismatch: str = "error",
) -> CheckReport:
    """Check the cache against the config; raise or log what does not fit.

    The image chain (what each network's first layer sees, per path) is logged; a mismatch in it
    (`normalizer-range-mismatch`, `path-mismatch`) stops the learner here, before the first step,
    never mid-training.

    Args:
        cfg: The training config (object or JSON path).
        cache: The offline buffer's cache file; None for a run without offline data (the chain alone).
        image_range: The range the learner uses, if not the config's.
        on_mismatch: "error" raises `ContractError` on any error finding; "warn" logs them.

    Returns:
        The report (warnings are always logged).
    """
    if on_mismatch not in ON_MISMATCH:
        raise ValueError(f"on_mismatch must be 'error' or 'warn'; got {on_mismatch!r}")
    report = check_config(cfg, image_range=image_range) if cache is None else check(cache, cfg, image_range=image_range)
    for line in report.chain_lines():
        log.info("bufconv image chain: %s", line)
    for finding in report.findings:
        if finding.severity != "error" or on_mismatch == "warn":
            log.warning("bufconv check: [%s] %s: %s", finding.code, finding.severity, finding.message)
    if not report.ok and on_mismatch == "error":
        lines = "; ".join(f"[{f.code}] {f.message}" for f in report.errors)
        command = f"`bufconv check {'CACHE ' if cache is not None else 'CACHE|DATASET '}--config CONFIG`"
        raise ContractError(
            f"the {'offline data' if cache is not None else 'image chain'} does not fit the training config: "
            f"{lines} (on_mismatch='warn' trains anyway; {command} shows the same)",
            path=report.source,
            findings=report.findings,
        )
    return report
