"""Zero-copy reader for ``.safetensors`` files.

The header is parsed here (rather than through the ``safetensors`` package) so every offset can be
checked against the real file size before a tensor is touched: a truncated download is reported
by name instead of surfacing later as a bus error. Tensors are ``torch.frombuffer`` views of one
copy-on-write ``mmap`` of the file, so opening a 14 GB checkpoint reads only its header; pages
are read from disk when a tensor is first used, and a write to a tensor never reaches the file.
"""
from __future__ import annotations

import json
import math
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

HEADER_SIZE_BYTES = 8
METADATA_KEY = "__metadata__"

DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class SafetensorsError(ValueError):
    """The file is not a readable safetensors file (truncated, corrupt header, bad offsets)."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    begin: int  # byte offsets relative to the start of the data section
    end: int

    @property
    def numel(self) -> int:
        return math.prod(self.shape)


def _corrupt(path: Path, detail: str) -> SafetensorsError:
    return SafetensorsError(f"{path}: truncated or corrupt safetensors file: {detail}; download it again")


def _parse_entry(path: Path, name: str, raw) -> TensorEntry:
    if not isinstance(raw, dict) or not {"dtype", "shape", "data_offsets"} <= raw.keys():
        raise _corrupt(path, f"header entry of tensor '{name}' lacks dtype/shape/data_offsets")
    if raw["dtype"] not in DTYPES:
        raise _corrupt(path, f"tensor '{name}' has unsupported dtype '{raw['dtype']}'")
    shape, offsets = raw["shape"], raw["data_offsets"]
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise _corrupt(path, f"tensor '{name}' has an invalid shape {shape!r}")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)
            and 0 <= offsets[0] <= offsets[1]):
        raise _corrupt(path, f"tensor '{name}' has invalid data_offsets {offsets!r}")
    entry = TensorEntry(name, DTYPES[raw["dtype"]], tuple(shape), offsets[0], offsets[1])
    needed = entry.numel * entry.dtype.itemsize
    if entry.end - entry.begin != needed:
        raise _corrupt(path, f"tensor '{name}' spans {entry.end - entry.begin} bytes but shape {list(shape)} "
                             f"of {raw['dtype']} needs {needed}")
    return entry


class SafetensorsFile:
    """Header of a safetensors file plus lazily created, memory-mapped tensors."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with self.path.open("rb") as f:
                prefix = f.read(HEADER_SIZE_BYTES)
                if len(prefix) < HEADER_SIZE_BYTES:
                    raise _corrupt(self.path, f"the file has only {size} bytes, too short for a header")
                (header_len,) = struct.unpack("<Q", prefix)
                if header_len > size - HEADER_SIZE_BYTES:
                    raise _corrupt(self.path, f"the header claims {header_len} bytes but the file has only {size}")
                header_bytes = f.read(header_len)
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
        except FileNotFoundError:
            raise SafetensorsError(f"{self.path}: file not found") from None
        try:
            header = json.loads(header_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise _corrupt(self.path, f"the header is not valid JSON ({e})") from None
        if not isinstance(header, dict):
            raise _corrupt(self.path, "the header is not a JSON object")
        self.metadata = header.pop(METADATA_KEY, None) or {}
        self._data_start = HEADER_SIZE_BYTES + header_len
        self.entries = {name: _parse_entry(self.path, name, raw) for name, raw in header.items()}
        self._check_data_fits(size)

    def _check_data_fits(self, size: int) -> None:
        available = size - self._data_start
        for entry in sorted(self.entries.values(), key=lambda e: e.end):
            if entry.end > available:
                raise _corrupt(self.path, f"tensor '{entry.name}' ends at byte {self._data_start + entry.end} "
                                          f"but the file has only {size} bytes")

    def keys(self) -> list[str]:
        return list(self.entries)

    def tensor(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        if entry.numel == 0:
            return torch.empty(entry.shape, dtype=entry.dtype)
        flat = torch.frombuffer(self._map, dtype=entry.dtype, count=entry.numel,
                                offset=self._data_start + entry.begin)
        return flat.view(entry.shape)

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor, as views of the mapping (the mapping lives as long as any view does)."""
        return {name: self.tensor(name) for name in self.entries}
