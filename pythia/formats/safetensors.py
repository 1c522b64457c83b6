"""A NumPy-only reader and writer for the safetensors format (Hugging Face's weight files).

Layout of a file:
    8 bytes      N, the header length, unsigned little-endian
    N bytes      JSON header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                               "__metadata__": {...} (optional)}
    rest         the data buffer; begin/end are byte offsets into it, little-endian, C order

The reader memory-maps the file, so each tensor is read from disk once, straight into its float32
copy; read_into() instead reads a tensor into an array the caller owns, mapping nothing. The
writer (save_safetensors) writes F32 tensors only, in the order given, padding the header with
spaces to a multiple of 8 bytes so every tensor starts aligned.
F32, F16 and BF16 tensors convert to float32 (bf16 is the top half of an f32: bits << 16).
Anything malformed raises pythia.errors.GPT2Error with a one-line message.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import GPT2Error

MAX_HEADER = 100_000_000  # the format's own limit on the JSON header size

# Every dtype the format defines, with its item size in bytes (sub-byte types unsupported here).
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
FLOAT_DTYPES = ("F32", "F16", "BF16")


class SafetensorsFile:
    """Header of one .safetensors file plus lazy float32 access to its tensors.

        f = SafetensorsFile(path)
        f.keys()            # tensor names, in file order
        f.shape(name)       # tuple
        f.dtype(name)       # "F32" | "F16" | "BF16" | ...
        f.get(name)         # np.ndarray float32, C-contiguous, owns its data
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        from ..system.inputs import open_regular
        if not os.path.lexists(self.path):
            raise GPT2Error(f"{self.path} not found; a GPT-2 directory needs model.safetensors")
        f, size = open_regular(self.path, "weights file", GPT2Error,
                               hint="a GPT-2 directory needs model.safetensors as a regular file")
        with f:
            head = f.read(8)
            if len(head) < 8:
                raise GPT2Error(f"{self.path} is truncated: {size} bytes, less than the 8-byte header length")
            n = int.from_bytes(head, "little")
            if n > MAX_HEADER:
                raise GPT2Error(f"{self.path}: header length {n} is implausible; not a safetensors file")
            if 8 + n > size:
                raise GPT2Error(f"{self.path} is truncated: header says {n} bytes but the file has {size - 8}")
            raw = f.read(n)
        try:
            header = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise GPT2Error(f"{self.path}: the header is not valid JSON ({e}); the file is corrupt") from None
        if not isinstance(header, dict):
            raise GPT2Error(f"{self.path}: the header must be a JSON object; the file is corrupt")
        self.metadata = header.pop("__metadata__", None) or {}
        self._data_start = 8 + n
        self._data_size = size - self._data_start
        self._entries: dict[str, tuple[str, tuple[int, ...], int, int]] = {}
        for name, entry in header.items():
            self._entries[name] = self._check_entry(name, entry)
        self._map: np.memmap | None = None

    def _check_entry(self, name: str, entry: object) -> tuple[str, tuple[int, ...], int, int]:
        where = f"{self.path}: tensor {name!r}"
        if not isinstance(entry, dict):
            raise GPT2Error(f"{where}: header entry is not an object; the file is corrupt")
        dtype, shape, offsets = entry.get("dtype"), entry.get("shape"), entry.get("data_offsets")
        if dtype not in DTYPE_SIZES:
            raise GPT2Error(f"{where} has unknown dtype {dtype!r}; Pythia reads {', '.join(FLOAT_DTYPES)}")
        if not isinstance(shape, list) or not all(type(d) is int and d >= 0 for d in shape):
            raise GPT2Error(f"{where}: shape {shape!r} is not a list of non-negative integers")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(type(o) is int for o in offsets)):
            raise GPT2Error(f"{where}: data_offsets {offsets!r} is not a pair of integers")
        begin, end = offsets
        if not 0 <= begin <= end <= self._data_size:
            raise GPT2Error(f"{where}: data_offsets [{begin}, {end}] lie outside the {self._data_size}-byte data "
                            "buffer; the file is truncated or corrupt")
        nbytes = int(np.prod(shape, dtype=np.int64)) * DTYPE_SIZES[dtype]
        if end - begin != nbytes:
            raise GPT2Error(f"{where}: shape {shape} in {dtype} needs {nbytes} bytes but data_offsets span "
                            f"{end - begin}; the file is corrupt")
        return dtype, tuple(shape), begin, end

    def keys(self) -> list[str]:
        return list(self._entries)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def shape(self, name: str) -> tuple[int, ...]:
        return self._entries[name][1]

    def dtype(self, name: str) -> str:
        return self._entries[name][0]

    def get(self, name: str, *, copy: bool = True) -> np.ndarray:
        """Tensor `name` as a new float32 array (F32, F16 or BF16 on disk).

        copy=False returns F32 tensors as read-only views of the mapped file instead (no second
        copy in memory while the caller copies them into place); F16/BF16 are converted either way.
        """
        if name not in self._entries:
            raise GPT2Error(f"{self.path} has no tensor {name!r}")
        dtype, shape, begin, end = self._entries[name]
        if dtype not in FLOAT_DTYPES:
            raise GPT2Error(f"{self.path}: tensor {name!r} has dtype {dtype}; Pythia reads only "
                            f"{', '.join(FLOAT_DTYPES)} weights")
        if self._map is None:
            self._map = np.memmap(self.path, dtype=np.uint8, mode="r")  # the file has >= 8 bytes
        raw = self._map[self._data_start + begin:self._data_start + end]
        if dtype == "F32":
            out = raw.view("<f4").reshape(shape)
            out = out.astype(np.float32) if copy else out             # copy: native byte order
        elif dtype == "F16":
            out = raw.view("<f2").reshape(shape).astype(np.float32)   # exact: every f16 is an f32
        else:
            # bf16 holds the high 16 bits of an f32: widen to u32 and shift into place (exact),
            # in place, so the only allocation is the float32 result itself.
            out = raw.view("<u2").reshape(shape).astype(np.uint32)
            out <<= 16
            out = out.view(np.float32)
        return out

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Read F32 tensor `name` into out (float32, C-contiguous, the tensor's shape) straight from
        the file: no mapping, so nothing but out holds the data (what a large model's loader wants)."""
        dtype, shape, begin, end = self._entries[name]
        if dtype != "F32" or out.dtype != np.float32 or out.shape != shape or not out.flags.c_contiguous:
            raise ValueError(f"read_into needs an F32 tensor and a C-contiguous float32 array of its shape, got "
                             f"{dtype} {shape} into {out.dtype} {out.shape}")
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin)
            n = f.readinto(view)
        if n != end - begin:
            raise GPT2Error(f"{self.path}: tensor {name!r} ends early (read {n} of {end - begin} bytes); "
                            "the file is truncated")
        if out.dtype.byteorder == ">":                         # the file is little-endian
            out.byteswap(inplace=True)

    def close(self) -> None:
        """Drop this object's memory map (arrays already returned stay valid: copies are
        independent, and views keep the mapping alive while they exist)."""
        self._map = None


def load_safetensors(path: str | Path) -> dict[str, np.ndarray]:
    """Every floating-point tensor of a safetensors file as float32 (other dtypes are skipped)."""
    f = SafetensorsFile(path)
    try:
        return {name: f.get(name) for name in f.keys() if f.dtype(name) in FLOAT_DTYPES}
    finally:
        f.close()


def save_safetensors(path: str | Path, tensors: dict[str, np.ndarray], metadata: dict[str, str] | None = None) -> None:
    """Write tensors (float32, any shape) as one safetensors file at path, in the dict's order.

    Header: {"__metadata__": metadata, name: {"dtype": "F32", "shape": [...], "data_offsets":
    [begin, end]}, ...}, begin/end relative to the data buffer, which holds the tensors end to end,
    little-endian, C order. Each tensor is written from its own memory: no concatenated copy."""
    header: dict = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    offset = 0
    arrays = []
    for name, a in tensors.items():
        a = np.asarray(a, dtype="<f4", order="C")             # F32 little-endian, C order (0-d stays 0-d)
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
        arrays.append(a)
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)                             # data starts 8-byte aligned
    with open(path, "wb") as f:
        f.write(len(raw).to_bytes(8, "little"))
        f.write(raw)
        for a in arrays:
            f.write(memoryview(a.reshape(-1).view(np.uint8)))
