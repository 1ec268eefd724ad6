"""The cache format (docs/format.md) pinned: top level, header keys, tensor dtypes and shapes,
the zip container (alignment, flags, CRCs, record order, integrity comment), loading with plain
torch (without bufconv importable, with and without mmap, with `calculate_storage_offsets`),
and property-based round trips of the writer, zip64 included.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
import subprocess
import sys
import tempfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from datetime import datetime as dt
from datetime import timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils.serialization import config as serialization_config

import bufconv
from bufconv.cache.archive import read_layout
from bufconv.cache.reader import TensorSpec, read_cache
from bufconv.cache.writer import CacheWriter

PROJECT = Path(__file__).resolve().parents[1]
FRONT = "observation.images.front"
WRIST = "observation.images.wrist"
PREFIX = b"bufconv.offline_buffer integrity xxh3_128:"

#: docs/format.md section 4, all of it.
META_KEYS = {
    "bufconv_version",
    "created",
    "frames",
    "keys",
    "ranges",
    "crop",
    "resize",
    "actions",
    "episodes",
    "done_source",
    "source",
    "fingerprint",
    "fingerprint_inputs",
    "source_stats",
    "tensors",
}
SMALL_RECORDS = {
    ".format_version": b"1",
    ".storage_alignment": b"64",
    "byteorder": b"little",
    "version": b"3\n",
}

#: Dtypes `CacheWriter.array` can fill (numpy has no bfloat16).
DTYPES = {
    torch.uint8: np.uint8,
    torch.int8: np.int8,
    torch.int16: np.int16,
    torch.int32: np.int32,
    torch.int64: np.int64,
    torch.float16: np.float16,
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.bool: np.bool_,
}


def xxh(data: bytes) -> str:
    return "xxh3_128:" + xxhash.xxh3_128(data).hexdigest()


def tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().numpy().tobytes()


@contextlib.contextmanager
def calculated_offsets(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """torch.load computing storage offsets itself (miniz's layout rules), with its debug asserts on."""
    monkeypatch.setenv("TORCH_SERIALIZATION_DEBUG", "1")
    before = serialization_config.load.calculate_storage_offsets
    serialization_config.load.calculate_storage_offsets = True
    try:
        yield
    finally:
        serialization_config.load.calculate_storage_offsets = before
        monkeypatch.delenv("TORCH_SERIALIZATION_DEBUG")


@pytest.fixture(scope="module")
def dataset(lerobot_dataset: Callable[..., Path]) -> Path:
    return lerobot_dataset()


@pytest.fixture(scope="module")
def cache(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("format") / "offline_buffer.pt"
    bufconv.build(dataset, path, workers=1)
    return path


@pytest.fixture(scope="module")
def top(cache: Path) -> dict[str, Any]:
    return torch.load(cache, weights_only=True, mmap=True)


# ---- the object tree -------------------------------------------------------------------------


def test_top_level(top: dict[str, Any]) -> None:
    """Exactly {"format", "format_version", "meta", "tensors"}; format name and version 1."""
    assert set(top) == {"format", "format_version", "meta", "tensors"}
    assert top["format"] == "bufconv.offline_buffer"
    assert top["format_version"] == 1
    assert type(top["format_version"]) is int
    assert all(isinstance(t, torch.Tensor) for t in top["tensors"].values())


def test_meta_has_exactly_the_documented_keys(top: dict[str, Any], dataset: Path) -> None:
    """meta holds the keys of docs/format.md section 4 and nothing else, with the documented shapes."""
    meta = top["meta"]
    assert set(meta) == META_KEYS
    assert meta["bufconv_version"] == bufconv.__version__
    created = dt.fromisoformat(meta["created"])
    assert created.utcoffset() == timedelta(0)
    assert abs(dt.now(timezone.utc) - created) < timedelta(hours=1)
    assert meta["frames"] == 16
    assert meta["keys"] == {
        "state": [FRONT, WRIST, "observation.state"],
        "images": [FRONT, WRIST],
        "action": "action",
        "complementary_info": ["complementary_info.discrete_penalty"],
    }
    assert meta["ranges"] == {k: {"storage": "uint8", "output": 1} for k in (FRONT, WRIST)}
    assert meta["episodes"] == [
        {"episode_index": 0, "start": 0, "length": 5},
        {"episode_index": 1, "start": 5, "length": 1},
        {"episode_index": 2, "start": 6, "length": 7},
        {"episode_index": 3, "start": 13, "length": 3},
    ]
    assert meta["done_source"] == "next.done"
    assert meta["crop"] == {} and meta["resize"] is None
    actions = meta["actions"]
    assert set(actions) == {"dims", "names", "min", "max", "mean", "std", "kinds", "gripper"}
    assert actions["dims"] == 3 and all(len(actions[k]) == 3 for k in ("min", "max", "mean", "std", "kinds"))
    assert all(
        kind == {"kind": "continuous", "min": lo, "max": hi}
        for kind, lo, hi in zip(actions["kinds"], actions["min"], actions["max"], strict=True)
    )
    assert actions["gripper"]["index"] == 2 and actions["gripper"]["found_by"] == "last dimension"
    assert set(meta["source"]) == {"root", "repo_id", "codebase_version", "fps", "revision"}
    assert Path(meta["source"]["root"]) == dataset.resolve()
    assert meta["source"]["codebase_version"] == "v3.0"
    assert meta["source"]["fps"] == 10
    assert list(meta["tensors"]) == list(top["tensors"])
    for name, info in meta["tensors"].items():
        assert set(info) == {"dtype", "shape", "checksum"}, name
    for rel, stat in meta["source_stats"].items():
        assert isinstance(stat, list) and len(stat) == 2, rel
        assert stat[0] == (dataset / rel).stat().st_size


def test_meta_is_plain_json(top: dict[str, Any]) -> None:
    """meta holds JSON values only: it survives json.dumps/json.loads unchanged."""
    meta = top["meta"]
    assert json.loads(json.dumps(meta)) == meta

    def walk(value: object) -> None:
        if isinstance(value, dict):
            assert all(isinstance(k, str) for k in value)
            for v in value.values():
                walk(v)
        elif isinstance(value, list):
            for v in value:
                walk(v)
        else:
            assert value is None or type(value) in (str, int, float, bool), type(value)

    walk(meta)


def test_fingerprint_is_sha256_of_its_inputs(top: dict[str, Any], dataset: Path) -> None:
    """fingerprint = sha256 of the canonical JSON of fingerprint_inputs, whose file entries are each
    file's size and xxh3-128 (computed here independently); the folder path is not hashed."""
    meta = top["meta"]
    inputs = meta["fingerprint_inputs"]
    canonical = json.dumps(inputs, sort_keys=True, separators=(",", ":"))
    assert meta["fingerprint"] == "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()
    assert inputs["format_version"] == 1
    assert inputs["converter_version"] == 1
    assert set(inputs) == {"format_version", "converter_version", "options", "source"}
    assert inputs["options"] == {
        "ranges": {FRONT: 1, WRIST: 1},
        "state_keys": [FRONT, WRIST, "observation.state"],
        "episodes": "0-3",
        "tolerance_s": 0.0001,
    }
    assert inputs["source"]["codebase_version"] == "v3.0"
    files = inputs["source"]["files"]
    expected = {
        "meta/info.json",
        "meta/tasks.parquet",
        "data/chunk-000/file-000.parquet",
        f"videos/{FRONT}/chunk-000/file-000.mp4",
        f"videos/{WRIST}/chunk-000/file-000.mp4",
        *(p.relative_to(dataset).as_posix() for p in dataset.glob("meta/episodes/*/*.parquet")),
    }
    assert set(files) == expected
    for rel, entry in files.items():
        content = (dataset / rel).read_bytes()
        assert entry == {"size": len(content), "digest": xxh(content)}, rel
    assert str(dataset) not in canonical


def test_tensor_dtypes_and_shapes(top: dict[str, Any]) -> None:
    """The table of docs/format.md section 3: images uint8 NCHW, bookkeeping dtypes, N rows each."""
    tensors, meta = top["tensors"], top["meta"]
    n = meta["frames"]
    assert tensors[FRONT].dtype == torch.uint8 and tuple(tensors[FRONT].shape) == (n, 3, 48, 64)
    assert tensors[WRIST].dtype == torch.uint8 and tuple(tensors[WRIST].shape) == (n, 3, 40, 32)
    assert tensors["observation.state"].dtype == torch.float32
    assert tuple(tensors["observation.state"].shape) == (n, 6)
    assert tensors["action"].dtype == torch.float32 and tuple(tensors["action"].shape) == (n, 3)
    expected = {
        "reward": torch.float32,
        "done": torch.bool,
        "truncated": torch.bool,
        "episode_index": torch.int64,
        "next_index": torch.int64,
        "frame_index": torch.int64,
        "timestamp": torch.float32,
    }
    for name, dtype in expected.items():
        assert tensors[name].dtype == dtype, name
        assert tuple(tensors[name].shape) == (n,), name
    assert tensors["complementary_info.discrete_penalty"].shape[0] == n
    assert set(tensors) == {
        FRONT,
        WRIST,
        "observation.state",
        "action",
        "complementary_info.discrete_penalty",
        *expected,
    }
    for name, t in tensors.items():
        info = meta["tensors"][name]
        assert info["dtype"] == str(t.dtype).removeprefix("torch.")
        assert info["shape"] == list(t.shape)
    # next_state is a row index, never a stored copy
    assert not any("next" in name and name != "next_index" for name in tensors)


def test_per_tensor_checksums_are_xxh3_128_of_the_bytes(top: dict[str, Any]) -> None:
    """Each header checksum is "xxh3_128:" + xxh3-128 of the tensor's C-order bytes (xxhash, independently)."""
    for name, t in top["tensors"].items():
        assert top["meta"]["tensors"][name]["checksum"] == xxh(tensor_bytes(t)), name


# ---- the container ---------------------------------------------------------------------------


def _local_records(path: Path) -> list[tuple[zipfile.ZipInfo, int, int]]:
    """(info, flags, data offset) per record, parsed from the local headers here, not by bufconv."""
    out = []
    with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
        for info in archive.infolist():
            f.seek(info.header_offset)
            sig, _, flags, method, _, _, _, _, _, name_len, extra_len = struct.unpack(
                "<IHHHHHIIIHH", f.read(30)
            )
            assert sig == 0x04034B50
            assert method == 0, f"{info.filename} is compressed"
            assert f.read(name_len).decode() == info.filename
            out.append((info, flags, info.header_offset + 30 + name_len + extra_len))
    return out


def test_zip_container_layout(cache: Path) -> None:
    """Stored records under offline_buffer/, tensors first then data.pkl and the small records,
    flags 0x0808, 64-byte aligned data, CRC 0 for tensors and real CRCs for small records;
    bufconv.cache.archive.read_layout agrees with this independent parse."""
    records = _local_records(cache)
    names = [info.filename for info, _, _ in records]
    assert all(name.startswith("offline_buffer/") for name in names)
    short = [name.removeprefix("offline_buffer/") for name in names]
    n_tensors = len(torch.load(cache, weights_only=True, mmap=True)["tensors"])
    assert short == [f"data/{i}" for i in range(n_tensors)] + ["data.pkl", *SMALL_RECORDS]
    layout = read_layout(cache)
    with zipfile.ZipFile(cache) as archive:
        for (info, flags, offset), name in zip(records, short, strict=True):
            assert flags == 0x0808, name
            assert offset % 64 == 0, f"{name} starts at {offset}"
            assert layout.records[name] == (offset, info.file_size)
            if name.startswith("data/"):
                assert info.CRC == 0, name
            else:
                content = archive.read(info.filename)
                assert zlib.crc32(content) == info.CRC, name
                if name in SMALL_RECORDS:
                    assert content == SMALL_RECORDS[name]


def test_integrity_comment(cache: Path) -> None:
    """The archive comment is the file's last 74 bytes: the prefix and the xxh3-128 of every byte
    that is not tensor payload, before the comment (recomputed here)."""
    data = cache.read_bytes()
    comment = data[-74:]
    with zipfile.ZipFile(cache) as archive:
        assert archive.comment == comment
    assert comment.startswith(PREFIX)
    assert len(comment) == len(PREFIX) + 32
    payload = sorted(
        (offset, offset + info.file_size)
        for info, _, offset in _local_records(cache)
        if info.filename.startswith("offline_buffer/data/")
    )
    structure, cursor = [], 0
    for start, end in payload:
        structure.append(data[cursor:start])
        cursor = end
    structure.append(data[cursor:-74])
    assert comment[len(PREFIX) :].decode() == xxhash.xxh3_128(b"".join(structure)).hexdigest()


_PLAIN_LOAD = r"""
import json, sys
sys.meta_path[:] = [f for f in sys.meta_path if "bufconv" not in repr(f)]
sys.path_hooks[:] = [h for h in sys.path_hooks if "bufconv" not in repr(h)]
sys.path_importer_cache.clear()
sys.path[:] = [p for p in sys.path if "bufconv" not in p and p.rstrip("/") != sys.argv[2]]
try:
    import bufconv
except ImportError:
    pass
else:
    raise SystemExit("bufconv is importable: " + bufconv.__file__)
import os, torch, xxhash
from torch.utils.serialization import config
out = {}
for mode in ("mmap", "read", "mmap+offsets", "read+offsets"):
    config.load.calculate_storage_offsets = mode.endswith("offsets")
    os.environ["TORCH_SERIALIZATION_DEBUG"] = "1" if mode.endswith("offsets") else "0"
    top = torch.load(sys.argv[1], weights_only=True, mmap=mode.startswith("mmap"))
    out[mode] = {
        "keys": sorted(top),
        "meta": top["meta"],
        "sums": {k: "xxh3_128:" + xxhash.xxh3_128(t.contiguous().numpy().tobytes()).hexdigest()
                 for k, t in top["tensors"].items()},
    }
out["bufconv_loaded"] = [m for m in sys.modules if m.split(".")[0] == "bufconv"]
print(json.dumps(out))
"""


def test_plain_torch_load_without_bufconv(cache: Path, tmp_path: Path) -> None:
    """In a process where `import bufconv` fails, torch.load(weights_only=True) opens the cache with
    and without mmap, and with calculate_storage_offsets (TORCH_SERIALIZATION_DEBUG=1 checks each
    computed offset), giving tensors that match the header checksums."""
    done = subprocess.run(
        [sys.executable, "-I", "-c", _PLAIN_LOAD, str(cache), str(PROJECT)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out.pop("bufconv_loaded") == []
    meta = read_cache(cache).meta
    expected = {name: info["checksum"] for name, info in meta["tensors"].items()}
    assert set(out) == {"mmap", "read", "mmap+offsets", "read+offsets"}
    for mode, result in out.items():
        assert result["keys"] == ["format", "format_version", "meta", "tensors"], mode
        assert result["meta"] == meta, mode
        assert result["sums"] == expected, mode


def test_torch_computes_the_same_offsets(
    cache: Path, top: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """With calculate_storage_offsets (and its debug asserts) torch finds every record where it is."""
    with calculated_offsets(monkeypatch):
        for mmap in (True, False):
            loaded = torch.load(cache, weights_only=True, mmap=mmap)
            for name, t in top["tensors"].items():
                assert torch.equal(loaded["tensors"][name], t), (mmap, name)


# ---- property-based round trips --------------------------------------------------------------

shapes = st.lists(st.integers(0, 4), min_size=0, max_size=3).map(tuple)
specs_strategy = st.lists(
    st.tuples(st.sampled_from(list(DTYPES)), shapes),
    min_size=0,
    max_size=6,
)


def _array(dtype: torch.dtype, shape: tuple[int, ...]) -> st.SearchStrategy[np.ndarray]:
    return hnp.arrays(DTYPES[dtype], shape)


@st.composite
def tensor_sets(draw: st.DrawFn) -> list[tuple[str, np.ndarray, torch.dtype]]:
    specs = draw(specs_strategy)
    names = draw(
        st.lists(
            st.text("abcxyz._-0123456789", min_size=1, max_size=10),
            min_size=len(specs),
            max_size=len(specs),
            unique=True,
        )
    )
    return [
        (name, draw(_array(dtype, shape)), dtype) for name, (dtype, shape) in zip(names, specs, strict=True)
    ]


def _write(path: Path, items: list[tuple[str, np.ndarray, torch.dtype]], meta: dict[str, Any]) -> None:
    specs = [TensorSpec(name, dtype, tuple(array.shape)) for name, array, dtype in items]
    with CacheWriter(path, specs) as writer:
        for name, array, _ in items:
            writer.write(name, array)
        writer.seal(meta)
        writer.commit()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=tensor_sets())
def test_writer_round_trip_any_dtype_and_shape(items: list[tuple[str, np.ndarray, torch.dtype]]) -> None:
    """Any tensors (all fillable dtypes, 0-d, zero-size dims) written with CacheWriter come back
    bit-exact from torch.load (mmap or not, computed offsets or not); checksums are xxh3-128 of
    the bytes; the container stays aligned and its integrity comment holds."""
    with tempfile.TemporaryDirectory() as folder, pytest.MonkeyPatch.context() as monkeypatch:
        path = Path(folder) / "any.pt"
        _write(path, items, {"note": "round trip"})
        assert sorted(os.listdir(folder)) == ["any.pt"]
        modes = [(True, False), (False, False), (True, True), (False, True)]
        for mmap, offsets in modes:
            context = calculated_offsets(monkeypatch) if offsets else contextlib.nullcontext()
            with context:
                top = torch.load(path, weights_only=True, mmap=mmap)
            assert top["format"] == "bufconv.offline_buffer" and top["format_version"] == 1
            assert top["meta"]["note"] == "round trip"
            assert list(top["tensors"]) == [name for name, _, _ in items]
            for name, array, dtype in items:
                t = top["tensors"][name]
                assert t.dtype == dtype and tuple(t.shape) == array.shape, name
                assert tensor_bytes(t) == array.tobytes(), (name, mmap, offsets)
        for name, array, dtype in items:
            info = top["meta"]["tensors"][name]
            assert info == {
                "dtype": str(dtype).removeprefix("torch."),
                "shape": list(array.shape),
                "checksum": xxh(array.tobytes()),
            }
        for _, _, offset in _local_records(path):
            assert offset % 64 == 0
        assert path.read_bytes()[-74:].startswith(PREFIX)


@st.composite
def caches(draw: st.DrawFn) -> tuple[list[tuple[str, np.ndarray, torch.dtype]], dict[str, Any]]:
    """A complete, consistent cache: episodes, bookkeeping tensors, an image key and extra columns."""
    lengths = draw(st.lists(st.integers(1, 3), min_size=1, max_size=3))
    n = sum(lengths)
    episode_ids = draw(
        st.lists(st.integers(0, 50), min_size=len(lengths), max_size=len(lengths), unique=True)
    )
    starts = np.cumsum([0, *lengths[:-1]])
    episode_index = np.repeat(np.array(episode_ids, np.int64), lengths)
    last = np.zeros(n, bool)
    last[starts + np.array(lengths) - 1] = True
    done = draw(hnp.arrays(np.bool_, n)) & last
    index = np.arange(n, dtype=np.int64)
    h, w = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    image_range = draw(st.sampled_from([1, 255]))
    items: list[tuple[str, np.ndarray, torch.dtype]] = [
        ("observation.images.cam", draw(hnp.arrays(np.uint8, (n, 3, h, w))), torch.uint8),
        ("action", draw(hnp.arrays(np.float32, (n, draw(st.integers(0, 3))))), torch.float32),
        ("reward", draw(hnp.arrays(np.float32, n)), torch.float32),
        ("done", done, torch.bool),
        ("truncated", last & ~done, torch.bool),
        ("episode_index", episode_index, torch.int64),
        ("next_index", np.where(last, index, index + 1), torch.int64),
    ]
    extra = draw(st.lists(st.tuples(st.sampled_from(list(DTYPES)), shapes), max_size=3))
    state = []
    for i, (dtype, rest) in enumerate(extra):
        state.append(f"observation.extra{i}")
        items.append((state[-1], draw(_array(dtype, (n, *rest))), dtype))
    meta = {
        "frames": n,
        "keys": {
            "state": ["observation.images.cam", *state],
            "images": ["observation.images.cam"],
            "action": "action",
            "complementary_info": [],
        },
        "ranges": {"observation.images.cam": {"storage": "uint8", "output": image_range}},
        "episodes": [
            {"episode_index": e, "start": int(s), "length": n_}
            for e, s, n_ in zip(episode_ids, starts, lengths, strict=True)
        ],
        "fingerprint": "sha256:" + "0" * 64,
        "fingerprint_inputs": {},
        "bufconv_version": "0.1.0",
        "created": "2026-01-01T00:00:00+00:00",
        "source": {
            "root": "/nowhere",
            "repo_id": None,
            "codebase_version": "v3.0",
            "fps": 10,
            "revision": None,
        },
        "done_source": "next.done",
    }
    return items, meta


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cache_items=caches())
def test_writer_round_trip_through_read_cache(
    cache_items: tuple[list[tuple[str, np.ndarray, torch.dtype]], dict[str, Any]],
) -> None:
    """Complete caches written with CacheWriter pass bufconv's own reader with every check
    (integrity, consistency, tensor checksums) and give back the data and header written."""
    items, meta = cache_items
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "offline_buffer.pt"
        _write(path, items, meta)
        cache = read_cache(path, verify_payload=True)
        assert {k: v for k, v in cache.meta.items() if k != "tensors"} == meta
        for name, array, dtype in items:
            t = cache.tensors[name]
            assert t.dtype == dtype and tuple(t.shape) == array.shape
            assert tensor_bytes(t) == array.tobytes(), name
            assert cache.meta["tensors"][name]["checksum"] == xxh(array.tobytes())


# ---- zip64 -----------------------------------------------------------------------------------


def _sparse_folder(tmp_path: Path, need: int) -> Path:
    """A folder for a big sparse file: tmpfs when it has room (reading holes there is ~50x faster
    than on disk, so the checksums of 4.3 GB of zeros take a second), else tmp_path."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        stat = os.statvfs(shm)
        if stat.f_bavail * stat.f_frsize > need + (256 << 20):
            return Path(tempfile.mkdtemp(prefix="bufconv-zip64-", dir=shm))
    return tmp_path


@pytest.mark.slow
def test_zip64_tensor_over_4_gib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A 4.3e9-byte tensor (sparse: only a few bytes written) followed by a small one: the archive
    switches to zip64 as torch does, and torch.load(mmap=True), with computed offsets too, reads
    the written bytes back; the header checksum is the xxh3-128 of all 4.3e9 bytes."""
    big = 4_300_000_000
    folder = _sparse_folder(tmp_path, big)
    path = folder / "big.pt"
    try:
        specs = [TensorSpec("big", torch.uint8, (big,)), TensorSpec("after", torch.int64, (3,))]
        # preallocate=False keeps the file sparse (a build preallocates, so a full disk fails early)
        with CacheWriter(path, specs, preallocate=False) as writer:
            writer.write("big", [1, 2, 3, 4])
            writer.write("big", [251, 252, 253, 254], first_row=big - 4)
            writer.write("after", [7, -8, 2**40])
            writer.seal({"note": "zip64"})
            writer.commit()
        assert path.stat().st_size > 2**32

        with zipfile.ZipFile(path) as archive:
            infos = {i.filename.removeprefix("offline_buffer/"): i for i in archive.infolist()}
        assert infos["data/0"].file_size == big
        assert infos["data/1"].header_offset > 2**32  # located through a zip64 extra field
        for _, _, offset in _local_records(path):
            assert offset % 64 == 0

        def check(top: dict[str, Any]) -> None:
            t = top["tensors"]["big"]
            assert t.shape == (big,) and t.dtype == torch.uint8
            assert t[:4].tolist() == [1, 2, 3, 4]
            assert t[-4:].tolist() == [251, 252, 253, 254]
            assert t[1 << 31 : (1 << 31) + 8].tolist() == [0] * 8
            assert top["tensors"]["after"].tolist() == [7, -8, 2**40]

        check(torch.load(path, weights_only=True, mmap=True))
        with calculated_offsets(monkeypatch):
            check(torch.load(path, weights_only=True, mmap=True))

        expected = xxhash.xxh3_128()
        expected.update(bytes([1, 2, 3, 4]))
        zeros = bytes(1 << 24)
        remaining = big - 8
        while remaining:
            step = min(remaining, len(zeros))
            expected.update(zeros[:step])
            remaining -= step
        expected.update(bytes([251, 252, 253, 254]))
        cache_meta = torch.load(path, weights_only=True, mmap=True)["meta"]
        assert cache_meta["tensors"]["big"]["checksum"] == "xxh3_128:" + expected.hexdigest()
        layout = read_layout(path)
        for info, _, offset in _local_records(path):
            assert layout.records[info.filename.removeprefix("offline_buffer/")] == (offset, info.file_size)
    finally:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        if folder != tmp_path:
            with contextlib.suppress(OSError):
                folder.rmdir()
