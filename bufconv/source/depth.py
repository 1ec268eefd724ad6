"""Depth cameras as LeRobot 0.6.x records them, and how bufconv stores and delivers them.

LeRobot marks a depth feature with `info.is_depth_map` (shape (H, W, 1)) and stores it either as
lossless hevc video of 12-bit codes (`video.pix_fmt` "gray12le"), quantized from metres with
`video.depth_min`, `video.depth_max`, `video.shift` and `video.use_log`, or as TIFF images in
the parquet data: uint16 millimetres or float32 metres (`info.depth_unit`). Its reader decodes
either to float32 in `DatasetConfig.depth_output_unit` ("mm" by default).

bufconv stores what the dataset holds, losslessly, and converts at the batch boundary:

    stored      tensor dtype          what it holds
    "codes12"   int16 (N, 1, H, W)    the 12-bit codes of the video (0..4095), as decoded
    "uint16"    int16 (N, 1, H, W)    the TIFF's uint16 values, bit for bit (read: `x.view(uint16)`)
    "float32"   float32 (N, 1, H, W)  the TIFF's float32 values in the cache's unit: LeRobot's own
                                      float32 conversion (x * 1000 for metres into mm) done at build
                                      time (no 2-byte form holds float depth losslessly)

(int16 rather than torch.uint16: torch 2.11 has no gather, hence no DrQ shift, for uint16.)
`DepthDecoder` turns stored rows into float32 in the cache's unit with LeRobot's own arithmetic
(for codes: its `dequantize_depth`, evaluated once for all 4096 codes into a lookup table), so a
batch equals LeRobot's decode of the same frames. Nothing here imports torch at import time.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import DatasetError, DecodeError

if TYPE_CHECKING:
    import av
    import torch

#: The depth pixel formats bufconv reads, and their bits per code (LeRobot writes gray12le only).
DEPTH_PIX_FMTS = {"gray12le": 12}
#: What each stored kind is kept as in a cache.
STORED_DTYPES = {"codes12": "int16", "uint16": "int16", "float32": "float32"}
MM_PER_METRE = 1000.0
_UINT16_MAX = 65535.0
QUANTIZATION_FIELDS = ("depth_min", "depth_max", "shift", "use_log")

_NO_QUANTIZATION = (
    "{key!r} is a depth video without {missing} in its info (meta/info.json); bufconv reads the quantization "
    "from the dataset and never assumes it: add the values it was recorded with (LeRobot's DepthEncoderConfig)"
)
_BAD_PIX_FMT = (
    "{key!r} is a depth video with pixel format {found!r}; bufconv reads {supported} "
    "(LeRobot's depth encoding); re-encode it, or leave the key out with --keys"
)
_NO_UNIT = (
    '{key!r} is a depth image feature without a \'depth_unit\' ("mm" or "m") in its info (meta/info.json); '
    "bufconv cannot tell millimetres from metres: set it to the unit the frames were recorded in"
)
_WRONG_MODE = (
    "{where}: a {mode} TIFF in a depth feature declared in {unit}; bufconv stores millimetre depth as "
    "uint16 and metre depth as float32 (as LeRobot's writer records them): set the feature's depth_unit "
    "to the frames' unit, or write them in that dtype"
)


def is_depth(info: Mapping[str, Any] | None) -> bool:
    """Whether a feature's `info` marks a depth map (LeRobot's `depth_keys`, legacy key included)."""
    info = info or {}
    return bool(info.get("is_depth_map") or info.get("video.is_depth_map"))


@dataclass(frozen=True)
class Quantization:
    """LeRobot's depth quantizer (metres): code q stands for the depth of its `dequantize_depth`."""

    depth_min: float
    depth_max: float
    shift: float
    use_log: bool
    bits: int = 12

    def to_json(self) -> dict[str, Any]:
        return {
            "depth_min": self.depth_min,
            "depth_max": self.depth_max,
            "shift": self.shift,
            "use_log": self.use_log,
            "bits": self.bits,
        }


@dataclass(frozen=True)
class DepthStorage:
    """How one depth key is stored in a cache, read from its feature (never assumed)."""

    stored: str
    """"codes12", "uint16" or "float32" (module docstring)."""
    source_unit: str | None
    """The unit of the stored values ("mm"/"m") for TIFFs; the quantizer's for codes (metres, None)."""
    quantization: Quantization | None = None
    pix_fmt: str | None = None

    @property
    def dtype(self) -> str:
        return STORED_DTYPES[self.stored]

    def entry(self, unit: str) -> dict[str, Any]:
        """The header's `depth` entry of this key, delivered in `unit`."""
        return {
            "unit": unit,
            "stored": self.stored,
            "dtype": self.dtype,
            "source_unit": self.source_unit,
            "pix_fmt": self.pix_fmt,
            "quantization": None if self.quantization is None else self.quantization.to_json(),
        }


def depth_storage(key: str, dtype: str, info: Mapping[str, Any] | None) -> DepthStorage:
    """The storage of depth feature `key` (`dtype` "video" or "image") from its info.

    Raises:
        DatasetError: a quantization value, the pixel format or the unit is missing or unknown.
    """
    info = info or {}
    if dtype == "video":
        pix_fmt = info.get("video.pix_fmt")
        if pix_fmt not in DEPTH_PIX_FMTS:
            raise DatasetError(
                _BAD_PIX_FMT.format(key=key, found=pix_fmt, supported=", ".join(DEPTH_PIX_FMTS))
            )
        missing = [f"video.{name}" for name in QUANTIZATION_FIELDS if info.get(f"video.{name}") is None]
        if missing:
            raise DatasetError(_NO_QUANTIZATION.format(key=key, missing=", ".join(missing)))
        try:
            quantization = Quantization(
                float(info["video.depth_min"]),
                float(info["video.depth_max"]),
                float(info["video.shift"]),
                bool(info["video.use_log"]),
                DEPTH_PIX_FMTS[pix_fmt],
            )
        except (TypeError, ValueError) as e:
            raise DatasetError(
                f"{key!r}: its depth quantization in meta/info.json is not numbers ({e})"
            ) from e
        if quantization.use_log and not quantization.depth_min + quantization.shift > 0:
            raise DatasetError(f"{key!r}: video.depth_min + video.shift must be > 0 for log quantization")
        return DepthStorage("codes12", None, quantization, pix_fmt)
    unit = info.get("depth_unit")
    if unit not in ("mm", "m"):
        raise DatasetError(_NO_UNIT.format(key=key))
    return DepthStorage("uint16" if unit == "mm" else "float32", unit)


# ---- decoding (the build) ----------------------------------------------------------------------


def depth_frame(frame: av.VideoFrame) -> np.ndarray:
    """A decoded depth video frame as int16 (H, W, 1) codes: LeRobot's `to_ndarray("gray12le")`."""
    return frame.to_ndarray(format="gray12le").view(np.int16)[:, :, None]


def decode_depth_image(data: bytes, storage: DepthStorage, *, where: str, unit: str = "mm") -> np.ndarray:
    """One TIFF depth frame as stored: int16 (H, W, 1) holding uint16 bits, or float32 (H, W, 1) in `unit`.

    The values are LeRobot's (`np.array` of the PIL image: I;16 -> uint16, F -> float32; a float
    frame converted to `unit` as its reader converts to `depth_output_unit`, in float32).

    Raises:
        DecodeError: not an image PIL reads, or a mode that does not match the declared unit.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            mode = image.mode
            array: np.ndarray
            if mode in ("I;16", "I;16L", "I;16B") and storage.stored == "uint16":
                array = np.asarray(image).astype(np.uint16).view(np.int16)
            elif mode == "F" and storage.stored == "float32":
                array = np.asarray(image, dtype=np.float32)
                if storage.source_unit != unit:
                    factor = np.float32(MM_PER_METRE)
                    array = array * factor if unit == "mm" else array / factor
            else:
                raise DecodeError(_WRONG_MODE.format(where=where, mode=mode, unit=storage.source_unit))
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DecodeError(
            f"{where}: cannot decode the depth image ({e}); the data is damaged: re-download the dataset"
        ) from e
    if array.ndim != 2:
        raise DecodeError(f"{where}: a depth image has one channel; this one has shape {array.shape}")
    return array[:, :, None]


# ---- delivery (batches) ----------------------------------------------------------------------


def check_entry(key: str, entry: Any, dtype: str, shape: tuple[int, ...]) -> str | None:
    """The first problem of a header's depth entry for tensor `key` (dtype, shape), or None."""
    if not isinstance(entry, dict):
        return f"depth key {key!r} has no depth declaration"
    stored = entry.get("stored")
    if entry.get("unit") not in ("mm", "m") or stored not in STORED_DTYPES:
        return f"depth key {key!r} has no valid unit and storage ({entry!r})"
    if dtype != STORED_DTYPES[stored] or len(shape) != 4 or shape[1] != 1:
        return (
            f"depth {key!r} is {dtype} {list(shape)}; {stored} depth is {STORED_DTYPES[stored]} (N, 1, H, W)"
        )
    if stored == "codes12":
        q = entry.get("quantization")
        if not isinstance(q, dict) or any(
            not isinstance(q.get(f), (int, float)) for f in QUANTIZATION_FIELDS
        ):
            return f"depth key {key!r} stores codes without their quantization"
    elif entry.get("source_unit") not in ("mm", "m"):
        return f"depth key {key!r} stores {stored} values without their unit"
    return None


class DepthDecoder:
    """Stored depth rows of one key to float32 (B, 1, H, W) in the cache's unit, as LeRobot decodes them.

    Args:
        entry: The key's `depth` entry of a cache header.
    """

    def __init__(self, entry: Mapping[str, Any]) -> None:
        self.unit: str = entry["unit"]
        self.stored: str = entry["stored"]
        self.source_unit: str | None = entry.get("source_unit")
        q = entry.get("quantization")
        self.quantization = (
            None
            if q is None
            else Quantization(
                float(q["depth_min"]), float(q["depth_max"]), float(q["shift"]), bool(q["use_log"]),
                int(q.get("bits", 12)),
            )
        )  # fmt: skip
        self._tables: dict[Any, torch.Tensor] = {}

    def table(self, device: Any = None) -> torch.Tensor:
        """float32 (2**bits,): the depth of each code in `unit` (codes12 storage), on `device`."""
        import torch

        device = torch.device("cpu") if device is None else torch.device(device)
        table = self._tables.get(device)
        if table is None:
            assert self.quantization is not None
            table = dequantize_table(self.quantization, self.unit).to(device)
            self._tables[device] = table
        return table

    def __call__(self, stored: torch.Tensor, *, out: torch.Tensor | None = None) -> torch.Tensor:
        """float32 depth of `stored` rows (int16 or float32 (B, 1, H, W)), on their device."""
        import torch

        if self.stored == "codes12":
            table = self.table(stored.device)
            if stored.device.type == "cpu":  # numpy's gather: 4-5x torch's index_select here
                import numpy as np

                result = torch.empty(stored.shape, dtype=torch.float32) if out is None else out
                np.take(table.numpy(), stored.numpy().astype(np.intp), out=result.numpy(), mode="clip")
                return result
            index = stored.reshape(-1).to(torch.int32)
            flat = None if out is None else out.view(-1)
            values = torch.index_select(table, 0, index, out=flat) if flat is not None else table[index]
            return values.view(stored.shape)
        if self.stored == "float32":  # converted to the unit when the cache was built
            return stored if out is None else out.copy_(stored)
        values = stored.to(torch.int32).bitwise_and_(0xFFFF)
        y = values.to(torch.float32) if out is None else out.copy_(values)
        if self.source_unit == self.unit:
            return y
        # LeRobot's conversion of a TIFF feature to depth_output_unit, in float32.
        return y.mul_(MM_PER_METRE) if self.unit == "mm" else y.div_(MM_PER_METRE)

    def span(self, stored: torch.Tensor) -> tuple[float, float]:
        """(min, max) of the depth `stored` holds, in `unit` (a cheap pass: min/max of the stored values)."""
        import torch

        if stored.numel() == 0:
            return (0.0, 0.0)
        if self.stored == "uint16":
            lo_t, hi_t = torch.aminmax(stored.to(torch.int32).bitwise_and_(0xFFFF))
        elif self.stored == "float32":
            finite = stored[torch.isfinite(stored)]
            if finite.numel() == 0:
                return (0.0, 0.0)
            lo_t, hi_t = torch.aminmax(finite)
        else:
            lo_t, hi_t = torch.aminmax(stored)
        pair = torch.stack([lo_t, hi_t]).reshape(2, 1, 1, 1).to(stored.dtype)
        if self.stored == "uint16":
            pair = pair.to(torch.int32).to(torch.int16)  # back into the stored bits
        lo, hi = self(pair).reshape(2).tolist()
        return (float(lo), float(hi))


def dequantize_table(q: Quantization, unit: str) -> torch.Tensor:
    """float32 (2**bits,): LeRobot 0.6.1's `dequantize_depth` (its torch path) of every code, in `unit`.

    The same operations in the same order on float32 values: the table entry of a code is what
    LeRobot returns for a pixel holding that code.
    """
    import torch

    qmax = (1 << q.bits) - 1
    if q.use_log:
        log_min = math.log(q.depth_min + q.shift)
        log_max = math.log(q.depth_max + q.shift)
        scale, offset = (log_max - log_min) / qmax, log_min
    else:
        scale, offset = (q.depth_max - q.depth_min) / qmax, q.depth_min
    buf = torch.arange(qmax + 1, dtype=torch.float32)
    buf.mul_(scale).add_(offset)
    if q.use_log:
        buf.exp_().sub_(q.shift)
    buf.clamp_(q.depth_min, q.depth_max)
    if unit == "m":
        return buf
    return buf.mul_(MM_PER_METRE).round_().clamp_(0.0, _UINT16_MAX)
