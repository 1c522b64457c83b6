"""Read the .npy members of an .npz archive one at a time, each straight into a caller's array.

np.load(...)[key] returns a new array per member; a loader that wants the bytes in a buffer of
its own (a quantizer assembling one matrix, then dropping it) would hold both. Here a member's
.npy header is parsed and its data read with readinto into the caller's C-contiguous array, so
nothing else holds the data. The archive is opened once; `close()` (or `with`) releases it.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

CHUNK = 1 << 20   # bytes per readinto: a zip member's readinto reads into a temporary bytes of that size


class NpzMembers:
    """The members of the .npz at `path`; `names` are the keys np.load would give (no ".npy")."""

    def __init__(self, path: str | Path):
        self._file = open(path, "rb")
        try:
            self._zip = zipfile.ZipFile(self._file)
        except BaseException:
            self._file.close()
            raise
        self.names = [m.filename[:-4] for m in self._zip.infolist() if m.filename.endswith(".npy")]

    def read_into(self, name: str, out: np.ndarray) -> None:
        """Fill `out` (C-contiguous, writeable) with member `name`; ValueError when the member's
        dtype or shape is not out's (saying which), EOFError when its data ends early. An
        unusual member (Fortran order, another byte order) is read whole, then copied."""
        with self._zip.open(name + ".npy") as fp:
            version = np.lib.format.read_magic(fp)
            header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = header(fp)
            if dtype != out.dtype or tuple(shape) != out.shape:
                raise ValueError(f"is {dtype} {tuple(shape)}, expected {out.dtype} {out.shape}")
            if fortran or not out.flags.c_contiguous:
                fp.seek(0)
                out[...] = np.lib.format.read_array(fp, allow_pickle=False)
                return
            view = memoryview(out.reshape(-1).view(np.uint8))
            got = 0
            while got < len(view):
                n = fp.readinto(view[got:got + CHUNK])
                if not n:
                    raise EOFError(f"its data ends after {got} of {len(view)} bytes")
                got += n

    def close(self) -> None:
        self._zip.close()
        self._file.close()

    def __enter__(self) -> "NpzMembers":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
