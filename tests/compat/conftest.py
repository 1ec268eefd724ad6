"""Fixtures of the compatibility run: one LeRobot release installed, datasets written by its writer."""

from __future__ import annotations

from pathlib import Path

import pytest
from lerobot_release import VERSION, write_dataset


def pytest_report_header() -> str:
    return f"LeRobot {VERSION} (the release under test)"


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`@pytest.mark.fails_on("0.3.3", reason=...)`: expected to fail on that release, said in the report.
    `@pytest.mark.only_on("0.3.3", reason=...)`: what only that release has; on the others a skip
    whose reason the report shows (`-ra`), never a silent one."""
    for item in items:
        for mark in item.iter_markers("only_on"):
            if VERSION not in mark.args:
                item.add_marker(
                    pytest.mark.skip(
                        reason=f"LeRobot {VERSION}: applies to {', '.join(mark.args)} only: {mark.kwargs['reason']}"
                    )
                )
        for mark in item.iter_markers("fails_on"):
            if mark.args[0] == VERSION:
                item.add_marker(
                    pytest.mark.xfail(strict=True, reason=f"LeRobot {VERSION}: {mark.kwargs['reason']}")
                )


@pytest.fixture(autouse=True)
def _offline(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing from the hub: every dataset here is written by the test."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A dataset written by the installed release's own writer (shared: do not modify)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_HUB_OFFLINE", "1")
        return write_dataset(tmp_path_factory.mktemp("lerobot") / "dataset")
