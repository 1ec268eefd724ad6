"""The output range is a declaration, not a different payload: range 1 and 255 caches of one dataset.

The same LeRobot-written dataset is built with image_range=1 and 255, through the API and
through `bufconv build --range`. The stored uint8 pixels and their checksums are identical; only
the declared output range (and so the fingerprint) differs, and batches come out in that range.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner

import bufconv
from bufconv.cli import cli

RANGES = (1, 255)


@pytest.fixture(scope="module")
def dataset(lerobot_dataset: Callable[..., Path]) -> Path:
    return lerobot_dataset()


@pytest.fixture(scope="module")
def caches(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[int, Path]:
    """range -> cache built through the API."""
    folder = tmp_path_factory.mktemp("ranges")
    out = {}
    for image_range in RANGES:
        result = bufconv.build(dataset, folder / f"r{image_range}.pt", image_range=image_range, workers=1)
        assert result.status == "built"
        assert result.ranges == {k: image_range for k in result.ranges}
        out[image_range] = result.path
    return out


def load_plain(path: Path) -> dict[str, Any]:
    return torch.load(path, weights_only=True, mmap=True)


def image_keys(top: dict[str, Any]) -> list[str]:
    keys = top["meta"]["keys"]["images"]
    assert len(keys) == 2
    return keys


def assert_same_payload(a: dict[str, Any], b: dict[str, Any]) -> None:
    """Identical tensors (uint8 images included) and identical per-tensor checksums."""
    assert list(a["tensors"]) == list(b["tensors"])
    for name in a["tensors"]:
        assert torch.equal(a["tensors"][name], b["tensors"][name]), name
    for key in image_keys(a):
        assert a["tensors"][key].dtype == torch.uint8
    assert a["meta"]["tensors"] == b["meta"]["tensors"]


def test_api_ranges_share_pixels_and_differ_in_declaration(caches: dict[int, Path]) -> None:
    """Range 1 and 255 store the same uint8 bytes; only ranges.output, the options and the fingerprint differ."""
    one, full = load_plain(caches[1]), load_plain(caches[255])
    assert_same_payload(one, full)
    for key in image_keys(one):
        assert one["meta"]["ranges"][key] == {"storage": "uint8", "output": 1}
        assert full["meta"]["ranges"][key] == {"storage": "uint8", "output": 255}
    assert one["meta"]["fingerprint"] != full["meta"]["fingerprint"]
    inputs_one, inputs_full = one["meta"]["fingerprint_inputs"], full["meta"]["fingerprint_inputs"]
    assert inputs_one["options"]["ranges"] == {k: 1 for k in image_keys(one)}
    assert inputs_full["options"]["ranges"] == {k: 255 for k in image_keys(one)}
    assert inputs_one["source"] == inputs_full["source"]  # same dataset identity: only the range changed


def test_cli_range_builds_the_same_caches(dataset: Path, caches: dict[int, Path], tmp_path: Path) -> None:
    """`bufconv build --range 1|255` writes what the API writes (same tensors, checksums and fingerprint)."""
    runner = CliRunner()
    fingerprints = {}
    for image_range in RANGES:
        output = tmp_path / f"cli{image_range}.pt"
        args = ["build", str(dataset), "-o", str(output), "--range", str(image_range), "--workers", "1"]
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, result.output
        expected = "floats in [0,1]" if image_range == 1 else "floats in [0,255]"
        assert "ranges:" in result.output
        assert expected in result.output
        top, api = load_plain(output), load_plain(caches[image_range])
        assert_same_payload(top, api)
        assert top["meta"]["ranges"] == api["meta"]["ranges"]
        assert top["meta"]["fingerprint"] == api["meta"]["fingerprint"]
        fingerprints[image_range] = top["meta"]["fingerprint"]
    assert fingerprints[1] != fingerprints[255]
    assert_same_payload(load_plain(tmp_path / "cli1.pt"), load_plain(tmp_path / "cli255.pt"))

    default = tmp_path / "default.pt"  # no --range: LeRobot's convention
    result = runner.invoke(cli, ["build", str(dataset), "-o", str(default), "--workers", "1"])
    assert result.exit_code == 0, result.output
    assert load_plain(default)["meta"]["fingerprint"] == fingerprints[1]


def test_cli_range_rejects_other_values(dataset: Path, tmp_path: Path) -> None:
    """`--range` accepts only 1 and 255 (usage error, exit 2, nothing written)."""
    output = tmp_path / "bad.pt"
    result = CliRunner().invoke(cli, ["build", str(dataset), "-o", str(output), "--range", "2"])
    assert result.exit_code == 2
    assert not output.exists()


@pytest.mark.parametrize("image_range", RANGES)
def test_batches_come_out_in_the_declared_range(caches: dict[int, Path], image_range: int) -> None:
    """Every transition's images are float32: uint8/255 exactly for range 1, uint8 as float for 255."""
    top = load_plain(caches[image_range])
    tensors = top["tensors"]
    buf = bufconv.open_buffer(caches[image_range], use_drq=False)
    assert buf.image_range == image_range
    n = len(buf)
    batch = buf[list(range(n))]
    for key in image_keys(top):
        stored, following = tensors[key], tensors[key][tensors["next_index"]]
        for side, raw in (("state", stored), ("next_state", following)):
            images = batch[side][key]
            assert images.dtype == torch.float32
            expected = raw.float() / 255 if image_range == 1 else raw.float()
            assert torch.equal(images, expected), f"{side}[{key}]"
            assert images.min() >= 0
            assert images.max() <= image_range
            if image_range == 255:  # not [0,1] data in disguise
                assert images.max() > 1
    # non-image state is untouched by the range
    assert torch.equal(batch["state"]["observation.state"], tensors["observation.state"].float())


def test_sample_uint8_gives_raw_pixels_in_both_ranges(caches: dict[int, Path]) -> None:
    """`sample(8, image_dtype=torch.uint8)` returns the stored uint8 rows whatever the declared range."""
    batches = {}
    for image_range in RANGES:
        top = load_plain(caches[image_range])
        tensors = top["tensors"]
        buf = bufconv.open_buffer(caches[image_range], use_drq=False)
        batch = buf.sample(8, image_dtype=torch.uint8, generator=torch.Generator().manual_seed(7))
        states = tensors["observation.state"]
        for b in range(8):
            # find the row by its state vector (unique random floats), then check its pixels
            matches = (states == batch["state"]["observation.state"][b]).all(dim=1).nonzero().flatten()
            assert len(matches) == 1
            row = int(matches[0])
            for key in image_keys(top):
                assert batch["state"][key].dtype == torch.uint8
                assert torch.equal(batch["state"][key][b], tensors[key][row])
                assert torch.equal(batch["next_state"][key][b], tensors[key][tensors["next_index"][row]])
        batches[image_range] = batch
    for key in image_keys(load_plain(caches[1])):
        assert torch.equal(batches[1]["state"][key], batches[255]["state"][key])
        assert torch.equal(batches[1]["next_state"][key], batches[255]["next_state"][key])
