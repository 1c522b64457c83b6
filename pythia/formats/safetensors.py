"""A NumPy-only reader and writer for the safetensors format (Hugging Face's weight files).

Layout of a file:
    8 bytes      N, the header length, unsigned little-endian
    N bytes      JSON header: {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]},
                               "__metadata__": {...} (optional)}
    rest         the data buffer; begin/end are byte offsets into it, little-endian, C order

The reader never maps the file: read_into() reads a tensor with plain file reads into a float32
array the caller owns (a model's own buffer), converting F16/BF16 a chunk at a time, so nothing
but that array holds the tensor (a mapping would count the file's pages in the process's memory
beside the model, and a whole-tensor conversion would need a second full-size array). The
writer (save_safetensors) writes F32 tensors only, in the order given, padding the header with
spaces to a multiple of 8 bytes so every tensor starts aligned.
F32, F16 and BF16 tensors convert to float32 (bf16 is the top half of an f32: bits << 16).
Anything malformed raises pythia.errors.GPT2Error with a one-line message.
"""
from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np

from ..errors import GPT2Error

MAX_HEADER = 100_000_000  # the format's own limit on the JSON header size

# Every dtype the format defines, with its item size in bytes (sub-byte types unsupported here).
DTYPE_SIZES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
               "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "F64": 8, "I64": 8, "U64": 8}
FLOAT_DTYPES = ("F32", "F16", "BF16")
CHUNK = 1 << 20  # F16/BF16 values converted per read: a 2 MB buffer, whatever the tensor's size


class SafetensorsFile:
    """Header of one .safetensors file plus float32 access to its tensors.

        f = SafetensorsFile(path)
        f.keys()            # tensor names, in file order
        f.shape(name)       # tuple
        f.dtype(name)       # "F32" | "F16" | "BF16" | ...
        f.get(name)         # np.ndarray float32, C-contiguous, owns its data
        f.read_into(name, out)  # the same values into a float32 array the caller owns
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

    def get(self, name: str) -> np.ndarray:
        """Tensor `name` as a new float32 array (F32, F16 or BF16 on disk), read by read_into."""
        if name not in self._entries:
            raise GPT2Error(f"{self.path} has no tensor {name!r}")
        out = np.empty(self._entries[name][1], np.float32)
        self.read_into(name, out)
        return out

    def read_into(self, name: str, out: np.ndarray, start: int = 0) -> None:
        """Read tensor `name` (F32, F16 or BF16) into out (float32, C-contiguous, the tensor's shape)
        with file reads: F32 bytes land in out directly; F16/BF16 are read CHUNK values at a time
        into one small buffer and widened into their slice of out, so no full-size temporary exists.
        With start, out holds only the rows start..start + len(out) of the tensor (a slab of a
        large matrix, for a caller that reads it piecewise)."""
        if name not in self._entries:
            raise GPT2Error(f"{self.path} has no tensor {name!r}")
        dtype, shape, begin, end = self._entries[name]
        if dtype not in FLOAT_DTYPES:
            raise GPT2Error(f"{self.path}: tensor {name!r} has dtype {dtype}; Pythia reads only "
                            f"{', '.join(FLOAT_DTYPES)} weights")
        if not isinstance(out, np.ndarray) or out.dtype != np.float32 or not out.flags.c_contiguous \
                or not out.flags.writeable:
            raise ValueError(f"read_into needs a writeable C-contiguous float32 array for {name!r}, got "
                             f"{getattr(out, 'dtype', type(out).__name__)}")
        whole = start == 0 and out.shape == shape
        rows = len(shape) >= 1 and out.shape[1:] == shape[1:] and out.ndim == len(shape) \
            and 0 <= start and start + out.shape[0] <= shape[0]
        if not (whole or rows):
            raise ValueError(f"read_into needs out of {name!r}'s shape {shape}, or of rows start.. of it; got "
                             f"shape {out.shape} from row {start}")
        flat = out.reshape(-1)                                  # (n,) a view: out is contiguous
        row = math.prod(shape[1:])                              # values per row of the tensor
        with open(self.path, "rb") as f:
            f.seek(self._data_start + begin + start * row * DTYPE_SIZES[dtype])
            if dtype == "F32":
                self._read_exact(f, memoryview(flat.view(np.uint8)), name, 0)
                if sys.byteorder == "big":                     # the file is little-endian
                    flat.byteswap(inplace=True)
                return
            buf = np.empty(min(CHUNK, flat.size), "<u2")        # (chunk,) the raw 16-bit values
            for lo in range(0, flat.size, CHUNK):
                raw = buf[:min(CHUNK, flat.size - lo)]          # (m,)
                self._read_exact(f, memoryview(raw.view(np.uint8)), name, 2 * lo)
                dst = flat[lo:lo + raw.size]                    # (m,) float32 slice of out
                if dtype == "F16":
                    dst[...] = raw.view("<f2")                  # exact: every f16 is an f32
                else:
                    # bf16 holds the high 16 bits of an f32: widen to u32 and shift into place (exact)
                    np.left_shift(raw, 16, out=dst.view(np.uint32), dtype=np.uint32)

    def _read_exact(self, f, view: memoryview, name: str, done: int) -> None:
        """Fill view from f; GPT2Error naming the tensor when the file ends first (done: bytes of
        the tensor read before this call)."""
        n = f.readinto(view)
        if n != len(view):
            total = self._entries[name][3] - self._entries[name][2]
            raise GPT2Error(f"{self.path}: tensor {name!r} ends early (read {done + (n or 0)} of {total} bytes); "
                            "the file is truncated")

    def close(self) -> None:
        """Nothing to release: every read opens and closes the file (kept so callers may say when
        they are done with a file)."""


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
