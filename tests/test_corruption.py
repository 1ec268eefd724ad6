"""Damaged, foreign and malicious `.pt` files: always caught, never executed, always rebuilt.

A small cache of a LeRobot-written dataset is damaged one byte at a time at 40 positions (every
part of the file: local headers, padding, each tensor's payload, data descriptors, `data.pkl`,
the small records, the central directory, the end records and the integrity comment), and
truncated or extended. Each damaged file must be reported by `bufconv.verify` and by
`bufconv verify` (exit 1), and `load_or_build` must replace it with a cache that verifies.
Files whose unpickling would run code are checked and replaced without running it, and an old
double-normalized LeRobot buffer is diagnosed as such.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import struct
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import xxhash
from click.testing import CliRunner

import bufconv
from bufconv.cache.archive import ArchiveWriter
from bufconv.cli import cli

FRONT = "observation.images.front"
STATE = "observation.state"
DAMAGE_CODES = {"unreadable", "not-a-cache", "checksum-mismatch", "inconsistent", "unsupported-version"}
N_POSITIONS = 40
_CENTRAL_SIG = b"PK\x01\x02"
_ZIP64_END_SIG = b"PK\x06\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_END_SIG = b"PK\x05\x06"


@dataclass(frozen=True)
class Original:
    """A valid cache and what a rebuild must reproduce."""

    dataset: Path
    data: bytes
    fingerprint: str
    tensors: dict[str, torch.Tensor]
    positions: list[tuple[str, int]]


def landmarks(path: Path) -> list[tuple[str, int]]:
    """Byte offsets in every part of a cache file, with what lies there."""
    data = path.read_bytes()
    size = len(data)
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        comment = archive.comment
    out: list[tuple[str, int]] = [("first byte of the file", 0)]
    for info in infos:
        name = info.filename.split("/", 1)[1]
        header = info.header_offset
        name_len, extra_len = struct.unpack("<HH", data[header + 26 : header + 30])
        start = header + 30 + name_len + extra_len
        if name == "data/0":
            out += [
                ("data/0 local header: version needed", header + 4),
                ("data/0 local header: name", header + 30),
                ("data/0 local header: last FB padding byte", start - 1),
                ("data/0 payload: first byte", start),
                ("data/0 payload: last byte", start + info.file_size - 1),
                ("data/0 data descriptor: size", start + info.file_size + 8),
            ]
        if name.startswith("data/") or name == "data.pkl":
            out.append((f"{name} payload: middle", start + info.file_size // 2))
        if name == "data.pkl":
            out += [("data.pkl: first byte", start), ("data.pkl: last byte", start + info.file_size - 1)]
        if name in (".format_version", "byteorder", "version"):
            out.append((f"{name} record content", start))
    central = data.index(_CENTRAL_SIG)
    last_entry = data.rindex(_CENTRAL_SIG)
    end = data.rindex(_END_SIG)
    out += [
        ("central directory: first entry signature", central),
        ("central directory: version needed to extract", central + 6),
        ("central directory: CRC-32 of the last entry", last_entry + 16),
        ("central directory: local header offset of the last entry", last_entry + 42),
        ("central directory: name of the last entry", last_entry + 46),
        ("zip64 end record", data.rindex(_ZIP64_END_SIG)),
        ("zip64 end locator", data.rindex(_ZIP64_LOCATOR_SIG) + 8),
        ("end record: signature", end),
        ("end record: central directory offset", end + 16),
        ("end record: comment length", end + 20),
        ("integrity comment: first byte", size - len(comment)),
        ("integrity comment: a digest byte", size - 10),
        ("last byte of the file", size - 1),
    ]
    assert len({o for _, o in out}) == len(out) <= N_POSITIONS, "landmarks overlap or are too many"
    step = size // (N_POSITIONS - len(out) + 1)
    offset = step // 2
    while len(out) < N_POSITIONS:
        if offset not in {o for _, o in out}:
            out.append((f"evenly spaced byte {offset}", offset))
        offset += step
    return out


@pytest.fixture(scope="module")
def original(lerobot_dataset: Callable[..., Path], tmp_path_factory: pytest.TempPathFactory) -> Original:
    dataset = lerobot_dataset()
    path = tmp_path_factory.mktemp("corruption") / "offline_buffer.pt"
    result = bufconv.build(dataset, path, workers=1)
    top = torch.load(path, weights_only=True)
    return Original(
        dataset=dataset,
        data=path.read_bytes(),
        fingerprint=result.fingerprint,
        tensors={k: v.clone() for k, v in top["tensors"].items()},
        positions=landmarks(path),
    )


def load(dataset: Path, cache: Path, **kwargs: Any) -> bufconv.OfflineBuffer:
    return bufconv.load_or_build(dataset, cache, workers=1, use_drq=False, **kwargs)


def verify_cli(*args: str) -> tuple[int, Any]:
    """`bufconv verify ... --json`: exit code and parsed report. It must exit, not crash."""
    result = CliRunner().invoke(cli, ["verify", *args, "--json"])
    assert result.exception is None or isinstance(result.exception, SystemExit), (
        f"verify crashed: {result.exception!r}\n{result.output}"
    )
    return result.exit_code, json.loads(result.stdout)


def assert_rejected(path: Path, allowed: set[str] = DAMAGE_CODES) -> set[str]:
    """verify() and `bufconv verify` both report the file as damaged, with codes from `allowed`."""
    report = bufconv.verify(path)
    codes = {p.code for p in report.problems}
    assert not report.ok
    assert codes, "a rejected file must say why"
    assert codes <= allowed, report.problems
    exit_code, out = verify_cli(str(path))
    assert exit_code == 1
    assert out["ok"] is False
    assert out["path"] == str(path)
    assert {p["code"] for p in out["problems"]} == codes
    assert all(p["message"] for p in out["problems"])
    return codes


def assert_rebuilt(path: Path, original: Original) -> None:
    """load_or_build replaces the file with a cache equal to the original, which verifies."""
    buffer = load(original.dataset, path)
    assert buffer.status == "rebuilt"
    assert buffer.stale_reasons
    assert bufconv.verify(path).ok
    top = torch.load(path, weights_only=True)
    assert top["meta"]["fingerprint"] == original.fingerprint
    assert top["tensors"].keys() == original.tensors.keys()
    for name, tensor in original.tensors.items():
        assert torch.equal(top["tensors"][name], tensor), name
    assert load(original.dataset, path).status == "hit"


def test_original_cache_is_valid(original: Original, tmp_path: Path) -> None:
    """The control: the undamaged file verifies (API and CLI) and is a hit."""
    path = tmp_path / "offline_buffer.pt"
    path.write_bytes(original.data)
    assert bufconv.verify(path).ok
    assert verify_cli(str(path))[0] == 0
    assert load(original.dataset, path).status == "hit"


@pytest.mark.parametrize("index", range(N_POSITIONS))
def test_flipped_byte_is_caught_and_rebuilt(index: int, original: Original, tmp_path: Path) -> None:
    """One byte inverted anywhere in the file: verify reports it, load_or_build rebuilds it."""
    label, offset = original.positions[index]
    path = tmp_path / "offline_buffer.pt"
    data = bytearray(original.data)
    data[offset] ^= 0xFF
    path.write_bytes(data)
    try:
        assert_rejected(path)
    except Exception as e:
        raise AssertionError(f"byte {offset} ({label}) flipped: {e!r}") from e
    assert_rebuilt(path, original)


def truncations(size: int, comment: int) -> dict[str, int | bytes]:
    """Kept length (int) or bytes appended (bytes), by name."""
    return {
        "empty": 0,
        "1 byte": 1,
        "local header only": 30,
        "first payload cut": 1000,
        "half": size // 2,
        "central directory cut": size - comment - 100,
        "end record cut": size - comment - 10,
        "comment removed": size - comment,
        "last byte missing": size - 1,
        "trailing garbage": b"\0" * 16,
        "a second end record": b"PK\x05\x06" + b"\0" * 18,
    }


TRUNCATIONS = list(truncations(1000, 74))


@pytest.mark.parametrize("name", TRUNCATIONS)
def test_truncated_or_extended_cache_is_caught_and_rebuilt(
    name: str, original: Original, tmp_path: Path
) -> None:
    """Cut short at several lengths, or with bytes appended: reported by verify, rebuilt by load_or_build."""
    comment = len(zipfile.ZipFile(io.BytesIO(original.data)).comment)
    change = truncations(len(original.data), comment)[name]
    path = tmp_path / "offline_buffer.pt"
    path.write_bytes(original.data[:change] if isinstance(change, int) else original.data + change)
    assert_rejected(path)
    assert_rebuilt(path, original)


# ---- files whose unpickling would run code --------------------------------------------------


class RunsCode:
    """Unpickles into the call `function(*args)`: what a malicious `.pt` file carries."""

    def __init__(self, function: Callable[..., Any], *args: Any) -> None:
        self.function = function
        self.args = args

    def __reduce__(self) -> tuple[Any, ...]:
        return (self.function, self.args)


def payload(kind: str, marker: Path) -> RunsCode:
    if kind == "exec":
        return RunsCode(exec, f"with open({str(marker)!r}, 'w') as f: f.write('the pickle ran')")
    return RunsCode(os.system, f"touch '{marker}'")


def save_malicious(path: Path, container: str, marker: Path, kind: str) -> None:
    """A `.pt` holding image tensors and a trap, in torch's zip, torch's legacy format, or
    disguised as a bufconv cache (valid integrity record, per docs/format.md §6)."""
    obj = {"states": {FRONT: torch.rand(4, 3, 16, 16)}, "hook": payload(kind, marker)}
    if container == "zip":
        torch.save(obj, path)
    elif container == "legacy":
        torch.save(obj, path, _use_new_zipfile_serialization=False)
    else:
        top = {
            "format": "bufconv.offline_buffer",
            "format_version": 1,
            "meta": payload(kind, marker),
            "tensors": {},
        }
        prefix = b"bufconv.offline_buffer integrity xxh3_128:"
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            writer = ArchiveWriter(fd)
            writer.add("data.pkl", pickle.dumps(top, protocol=2))
            for name, data in (
                (".format_version", b"1"),
                (".storage_alignment", b"64"),
                ("byteorder", b"little"),
                ("version", b"3\n"),
            ):
                writer.add(name, data)
            writer.finish_directory(len(prefix) + 32)
            writer.write_comment(prefix + xxhash.xxh3_128(writer.structure_bytes()).hexdigest().encode())
        finally:
            os.close(fd)


@pytest.mark.parametrize("kind", ["exec", "os.system"])
@pytest.mark.parametrize("container", ["zip", "legacy", "disguised-as-cache"])
def test_malicious_pickle_is_reported_and_replaced_without_running(
    container: str, kind: str, original: Original, tmp_path: Path
) -> None:
    """verify (API and CLI) and load_or_build never unpickle code: the marker file the payload
    would write never appears, the file is reported (not-a-cache/unreadable) and replaced.
    Loading it with plain unrestricted torch.load afterwards proves the trap was live."""
    marker = tmp_path / "marker"
    path = tmp_path / "offline_buffer.pt"
    trap = tmp_path / "trap.pt"
    save_malicious(trap, container, marker, kind)
    path.write_bytes(trap.read_bytes())

    codes = assert_rejected(path, allowed={"not-a-cache", "unreadable"})
    if container == "disguised-as-cache":
        assert codes == {"unreadable"}  # passes the integrity check, refused by safe loading
    assert not marker.exists()
    assert_rebuilt(path, original)
    assert not marker.exists()

    torch.load(trap, weights_only=False)
    assert marker.exists(), "the payload is a working one: unrestricted unpickling runs it"


# ---- foreign buffers: the range diagnosis ----------------------------------------------------


def save_lerobot_buffer(path: Path, images: torch.Tensor, container: str) -> None:
    """torch.save of a LeRobot ReplayBuffer's storage (how people cached offline buffers)."""
    from lerobot.rl.buffer import ReplayBuffer

    buffer = ReplayBuffer(
        capacity=len(images),
        device="cpu",
        state_keys=[FRONT, STATE],
        image_augmentation_function=lambda x: x,
        use_drq=False,
        storage_device="cpu",
    )
    for image in images:
        state = {FRONT: image[None], STATE: torch.randn(1, 6)}
        buffer.add(state, torch.randn(1, 3), 0.0, state, False, False)
    storage = {
        "states": buffer.states,
        "next_states": buffer.next_states,
        "actions": buffer.actions,
        "rewards": buffer.rewards,
        "dones": buffer.dones,
        "truncateds": buffer.truncateds,
    }
    torch.save(storage, path, _use_new_zipfile_serialization=container == "zip")


def images(top: float) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    return torch.rand(6, 3, 32, 32, generator=generator) * top


@pytest.mark.parametrize("container", ["zip", "legacy"])
def test_legacy_double_normalized_buffer_is_diagnosed(
    container: str, original: Original, tmp_path: Path
) -> None:
    """An old LeRobot buffer whose images were divided by 255 twice: exit 1 with not-a-cache and
    double-normalized, the observed range reported; load_or_build replaces it with a real cache."""
    path = tmp_path / "offline_buffer.pt"
    save_lerobot_buffer(path, images(1 / 255), container)
    exit_code, out = verify_cli(str(path))
    assert exit_code == 1
    assert out["ok"] is False
    codes = [p["code"] for p in out["problems"]]
    assert "not-a-cache" in codes
    assert "double-normalized" in codes
    assert set(codes) <= {"not-a-cache", "double-normalized"}
    double = [p["message"] for p in out["problems"] if p["code"] == "double-normalized"]
    assert any(f"states.{FRONT}" in m for m in double)
    observed = {o["name"]: o for o in out["observed"]}
    assert 0 <= observed[f"states.{FRONT}"]["min"] <= observed[f"states.{FRONT}"]["max"] <= 1 / 255

    buffer = load(original.dataset, path)
    assert buffer.status == "rebuilt"
    assert buffer.stale_reasons
    assert bufconv.verify(path).ok


@pytest.mark.parametrize(
    ("top", "expected", "problem"),
    [(1.0, "255", True), (1.0, "1", False), (255.0, "1", True), (255.0, "255", False)],
)
def test_foreign_buffer_checked_against_an_expected_range(
    top: float, expected: str, problem: bool, tmp_path: Path
) -> None:
    """`verify --range R` on a foreign file flags images outside range R as range-mismatch (and
    only then); without --range a well-scaled foreign file is only not-a-cache."""
    path = tmp_path / "offline_buffer.pt"
    save_lerobot_buffer(path, images(top), "zip")
    exit_code, out = verify_cli(str(path), "--range", expected)
    assert exit_code == 1
    codes = [p["code"] for p in out["problems"]]
    assert "double-normalized" not in codes
    assert ("range-mismatch" in codes) == problem
    if problem:
        assert any(
            f"states.{FRONT}" in p["message"] for p in out["problems"] if p["code"] == "range-mismatch"
        )
    assert [p["code"] for p in verify_cli(str(path))[1]["problems"]] == ["not-a-cache"]
