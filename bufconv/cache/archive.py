"""The zip container `torch.load` reads, written so tensors can be filled in place.

`torch.save` needs every tensor in memory and then copies it into the file. A cache holds
hundreds of megabytes of frames, so bufconv lays the archive out first (local headers, aligned
holes for the tensor bytes), lets the decoders' writer thread fill those holes with `pwrite`,
and writes the pickle, the small records and the central directory last.

The layout follows what torch's writer (miniz) produces, record for record: stored entries,
flag 0x0808 with a data descriptor after each record, payloads 64-byte aligned by an "FB"
padding extra field, zip64 extra fields past 4 GiB, and (always) a zip64 end record. So `torch.load` reads
it with or without `mmap=True`, and even with `calculate_storage_offsets`. CRC-32 fields are
zero for tensor records, as torch writes them under `set_crc32_options(False)`; integrity is
checked with xxh3-128 instead (see docs/format.md).
"""

from __future__ import annotations

import collections
import io
import math
import os
import pickle
import struct
import zipfile
import zlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # imported where tensors are pickled: reading an archive needs no torch
    import torch

ARCHIVE_NAME = "offline_buffer"
ALIGNMENT = 64
_U32 = 0xFFFFFFFF
_LOCAL_SIG = 0x04034B50
_CENTRAL_SIG = 0x02014B50
_DESCRIPTOR_SIG = 0x08074B50
_ZIP64_END_SIG = 0x06064B50
_ZIP64_LOCATOR_SIG = 0x07064B50
_END_SIG = 0x06054B50
_FLAGS = 0x0808  # bit 3: sizes in a data descriptor; bit 11: UTF-8 names (as torch's writer)


class ArchiveError(Exception):
    """Raised when a file is not a zip archive this module can read (internal; wrapped by cache.py)."""


@dataclass
class _Entry:
    name: bytes
    header_offset: int
    size: int
    crc: int


class ArchiveWriter:
    """Writes a torch-readable zip to a file descriptor with `pwrite`, leaving tensor bytes as holes.

    Every byte the writer itself writes (headers, descriptors, small records, directory) is
    "structure"; the reserved payloads are the rest. `structure` collects the former in file
    order so an integrity digest can cover the whole file without reading the payloads back.
    """

    def __init__(self, fd: int, archive_name: str = ARCHIVE_NAME) -> None:
        self.fd = fd
        self.prefix = archive_name + "/"
        self.pos = 0
        self.entries: list[_Entry] = []
        self.payloads: list[tuple[int, int]] = []
        self.structure: list[bytes] = []

    def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            written = os.pwrite(self.fd, view, self.pos)
            view = view[written:]
            self.pos += written
        self.structure.append(bytes(data))

    def _local_header(self, name: bytes, size: int) -> bytes:
        cursor = self.pos
        zip64 = b""
        if size >= _U32 or cursor >= _U32:
            fields = (struct.pack("<QQ", size, size) if size >= _U32 else b"") + (
                struct.pack("<Q", cursor) if cursor >= _U32 else b""
            )
            zip64 = struct.pack("<HH", 0x0001, len(fields)) + fields
        start = cursor + 30 + len(name) + len(zip64) + 4
        pad = (-start) % ALIGNMENT
        extra = zip64 + b"FB" + struct.pack("<H", pad) + b"Z" * pad
        header = struct.pack("<IHHHHHIIIHH", _LOCAL_SIG, 0, _FLAGS, 0, 0, 0, 0, 0, 0, len(name), len(extra))
        return header + name + extra

    def _descriptor(self, header_offset: int, size: int, crc: int) -> bytes:
        if size >= _U32 or header_offset >= _U32:
            return struct.pack("<IIQQ", _DESCRIPTOR_SIG, crc, size, size)
        return struct.pack("<IIII", _DESCRIPTOR_SIG, crc, size, size)

    def reserve(self, name: str, size: int) -> int:
        """Add a record of `size` bytes to be filled later; return where its bytes start."""
        full = (self.prefix + name).encode()
        header_offset = self.pos
        self._write(self._local_header(full, size))
        data_offset = self.pos
        self.payloads.append((data_offset, size))
        self.pos += size
        if size:  # as miniz: an empty record has no descriptor (torch's offset arithmetic relies on it)
            self._write(self._descriptor(header_offset, size, 0))
        self.entries.append(_Entry(full, header_offset, size, 0))
        return data_offset

    def add(self, name: str, data: bytes) -> None:
        """Add a small record written now (with its real CRC-32)."""
        full = (self.prefix + name).encode()
        header_offset = self.pos
        crc = zlib.crc32(data)
        self._write(self._local_header(full, len(data)))
        self._write(data)
        self._write(self._descriptor(header_offset, len(data), crc))
        self.entries.append(_Entry(full, header_offset, len(data), crc))

    def finish_directory(self, comment_length: int) -> None:
        """Write the central directory and end records, declaring a comment of `comment_length` bytes.

        The caller then appends the comment (an integrity digest of everything before it) with
        `write_comment`.
        """
        cd_start = self.pos
        for e in self.entries:
            big_size, big_ofs = e.size >= _U32, e.header_offset >= _U32
            fields = (struct.pack("<QQ", e.size, e.size) if big_size else b"") + (
                struct.pack("<Q", e.header_offset) if big_ofs else b""
            )
            extra = struct.pack("<HH", 0x0001, len(fields)) + fields if fields else b""
            size32 = _U32 if big_size else e.size
            ofs32 = _U32 if big_ofs else e.header_offset
            version = 45 if fields else 0
            self._write(
                struct.pack(
                    "<IHHHHHHIIIHHHHHII",
                    _CENTRAL_SIG,
                    version,
                    version,
                    _FLAGS,
                    0,
                    0,
                    0,
                    e.crc,
                    size32,
                    size32,
                    len(e.name),
                    len(extra),
                    0,
                    0,
                    0,
                    0,
                    ofs32,
                )
                + e.name
                + extra
            )
        cd_size = self.pos - cd_start
        zip64_end = self.pos
        n = len(self.entries)
        self._write(struct.pack("<IQHHIIQQQQ", _ZIP64_END_SIG, 44, 45, 45, 0, 0, n, n, cd_size, cd_start))
        self._write(struct.pack("<IIQI", _ZIP64_LOCATOR_SIG, 0, zip64_end, 1))
        self._write(
            struct.pack(
                "<IHHHHIIH",
                _END_SIG,
                0,
                0,
                min(n, 0xFFFF),
                min(n, 0xFFFF),
                min(cd_size, _U32),
                min(cd_start, _U32),
                comment_length,
            )
        )

    def write_comment(self, comment: bytes) -> None:
        """Append the archive comment: the file's last bytes, not part of `structure`."""
        written = os.pwrite(self.fd, comment, self.pos)
        if written != len(comment):
            raise OSError("short write of the archive comment")
        self.pos += written

    def structure_bytes(self) -> bytes:
        """All structure written so far, in file order (tensor payloads excluded)."""
        return b"".join(self.structure)


# ---- pickling tensors the way torch.save does -------------------------------------------


@dataclass(frozen=True)
class StorageRef:
    """Stands for storage record `data/<key>` (`numel` elements of `dtype`) while pickling."""

    key: str
    dtype: torch.dtype
    numel: int


@dataclass(frozen=True)
class TensorRef:
    """A contiguous tensor over a `StorageRef`, pickled exactly as torch.save pickles a tensor.

    No memory is allocated for it: the pickle only names the storage record, the dtype and
    the shape (a placeholder `torch.empty` of a multi-gigabyte cache fails where memory
    overcommit is strict).
    """

    storage: StorageRef
    shape: tuple[int, ...]

    def __reduce_ex__(self, protocol: object) -> tuple[Any, ...]:
        stride: list[int] = []
        step = 1
        for size in reversed(self.shape):
            stride.append(step)
            step *= max(size, 1)
        hooks: collections.OrderedDict[Any, Any] = collections.OrderedDict()
        args = (self.storage, 0, tuple(self.shape), tuple(reversed(stride)), False, hooks)
        import torch._utils

        return (torch._utils._rebuild_tensor_v2, args)


def tensor_ref(key: str, dtype: torch.dtype, shape: tuple[int, ...]) -> TensorRef:
    """A `TensorRef` for a tensor of `shape` and `dtype` stored in record `data/<key>`."""
    return TensorRef(StorageRef(key, dtype, math.prod(shape)), tuple(shape))


#: The legacy storage class torch.save names in a pickle for each dtype (by its header name).
STORAGE_TYPES = {
    "uint8": "ByteStorage", "int8": "CharStorage", "int16": "ShortStorage", "int32": "IntStorage",
    "int64": "LongStorage", "float16": "HalfStorage", "bfloat16": "BFloat16Storage",
    "float32": "FloatStorage", "float64": "DoubleStorage", "bool": "BoolStorage",
}  # fmt: skip


class _StoragePickler(pickle.Pickler):
    """Pickles an object tree like torch.save: tensors by reference to numbered storage records."""

    def persistent_id(self, obj: Any) -> Any:
        import torch

        if isinstance(obj, StorageRef):
            storage = STORAGE_TYPES[str(obj.dtype).removeprefix("torch.")]
            return ("storage", getattr(torch, storage), obj.key, "cpu", obj.numel)
        if isinstance(obj, (torch.Tensor, torch.TypedStorage, torch.UntypedStorage)):
            raise TypeError("real tensors are not pickled here; use tensor_ref()")
        return None


def pickle_tree(obj: Any) -> bytes:
    """Pickle `obj` (plain values and `TensorRef`s) with protocol 2, as torch.save writes data.pkl."""
    buffer = io.BytesIO()
    _StoragePickler(buffer, protocol=2).dump(obj)
    return buffer.getvalue()


# ---- reading ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """Where things are in an archive: record data spans and the trailing comment."""

    records: dict[str, tuple[int, int]]
    """Record name (without the archive prefix) -> (data offset, size)."""
    archive_name: str
    comment: bytes
    file_size: int

    def structure_spans(self, payload_names: list[str]) -> list[tuple[int, int]]:
        """Byte spans (start, end) outside the given payloads and before the comment."""
        holes = sorted(self.records[name] for name in payload_names)
        end = self.file_size - len(self.comment)
        spans, cursor = [], 0
        for offset, size in holes:
            if offset > cursor:
                spans.append((cursor, offset))
            cursor = max(cursor, offset + size)
        if cursor < end:
            spans.append((cursor, end))
        return spans


def read_layout(path: str | os.PathLike[str]) -> Layout:
    """Parse the central directory and local headers of a zip archive.

    Raises:
        ArchiveError: the file is not a readable zip archive in torch's layout.
    """
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f, zipfile.ZipFile(f) as archive:
            infos = archive.infolist()
            if not infos:
                raise ArchiveError("the archive is empty")
            first = infos[0].filename
            if "/" not in first:
                raise ArchiveError(f"record {first!r} is not inside a folder, as torch.save writes them")
            archive_name = first.split("/", 1)[0]
            records: dict[str, tuple[int, int]] = {}
            for info in infos:
                if not info.filename.startswith(archive_name + "/"):
                    raise ArchiveError(f"record {info.filename!r} is outside {archive_name}/")
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ArchiveError(f"record {info.filename!r} is compressed")
                f.seek(info.header_offset)
                header = f.read(30)
                if len(header) != 30 or struct.unpack("<I", header[:4])[0] != _LOCAL_SIG:
                    raise ArchiveError(f"bad local header for {info.filename!r}")
                name_len, extra_len = struct.unpack("<HH", header[26:30])
                data_offset = info.header_offset + 30 + name_len + extra_len
                if data_offset + info.file_size > size:
                    raise ArchiveError(f"record {info.filename!r} runs past the end of the file")
                records[info.filename[len(archive_name) + 1 :]] = (data_offset, info.file_size)
            comment = archive.comment
    except (
        OSError,
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        struct.error,
        ValueError,
        EOFError,
        KeyError,
        IndexError,
        OverflowError,
        NotImplementedError,  # zipfile's reaction to a damaged "version needed" field
    ) as e:
        raise ArchiveError(str(e) or type(e).__name__) from e
    return Layout(records, archive_name, comment, size)
