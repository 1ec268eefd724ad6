"""`bufconv verify`, `info` and `export` on an online buffer's folder, through the command line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner
from streams import FRONT, stream

from bufconv.buffer.online import OnlineBuffer
from bufconv.cli import cli


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "online_buffer"
    buffer = OnlineBuffer(capacity=50, image_range=255, path=path)
    for t in stream([4, 3], uint8=True):
        buffer.add(**t)
    buffer.checkpoint()
    buffer.close()
    return path


def test_verify_a_folder(folder: Path) -> None:
    result = CliRunner().invoke(cli, ["verify", str(folder)])
    assert result.exit_code == 0, result.output
    assert "ok (bufconv-online-buffer" in result.output
    assert f"{FRONT} -> floats in [0,255]" in result.output
    refused = CliRunner().invoke(cli, ["verify", str(folder), "--range", "1", "--json"])
    assert refused.exit_code == 1
    assert [p["code"] for p in json.loads(refused.output)["problems"]] == ["range-mismatch"]
    segment = folder / "seg-000001.pt"
    data = bytearray(segment.read_bytes())
    data[len(data) // 2] ^= 1
    segment.write_bytes(bytes(data))
    damaged = CliRunner().invoke(cli, ["verify", str(folder)])
    assert damaged.exit_code == 1 and "[checksum-mismatch] seg-000001.pt" in damaged.output


def test_info_a_folder(folder: Path) -> None:
    result = CliRunner().invoke(cli, ["info", str(folder)])
    assert result.exit_code == 0, result.output
    assert "bufconv online buffer" in result.output
    assert "transitions: 7 of capacity 50" in result.output
    data = json.loads(CliRunner().invoke(cli, ["info", str(folder), "--json"]).output)
    assert (data["transitions"], data["image_range"], data["segments"]) == (7, 255, 1)


def test_export_a_folder(folder: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        cli, ["export", str(folder), "--lerobot", str(tmp_path / "out"), "--fps", "10"]
    )
    assert result.exit_code == 0, result.output
    assert "exported 7 transitions" in result.output
    assert (tmp_path / "out" / "meta" / "info.json").is_file()
    again = CliRunner().invoke(cli, ["export", str(folder), "--lerobot", str(tmp_path / "out")])
    assert again.exit_code == 1 and "already exists" in again.output
