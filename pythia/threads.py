"""Thread policy for NumPy's BLAS: one thread for small matrix products, all cores for large ones.

NumPy's bundled OpenBLAS starts one thread per core and splits every product above ~64^3
multiply-adds across them. On 2 cores that is a loss for small models: waking the second thread
and its spinning after the call cost more than the halved product saves (and the spinner takes
the core that Python or an OpenMP kernel thread needed). Measured per training step (see
benchmarks/README.md, "Training speed"): config S is faster on one BLAS thread, M and L on two.

OpenBLAS has no per-call thread argument, but its `openblas_set_num_threads` may be called at
run time, so `blas_threads(n)` wraps a whole forward or backward pass. The library is found
through the symbols NumPy's wheel exports (scipy-openblas names them with a `scipy_` prefix and
a `64_` suffix); with another BLAS, or none found, every call here does nothing.

The user's choice wins: when OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS or OMP_NUM_THREADS is set,
the thread count is never changed.
"""
from __future__ import annotations

import ctypes
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

USER_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
# a pass whose largest product has fewer m*n*k multiply-adds runs on one BLAS thread. Measured
# (2 shared cores, another process busy): config S (largest 256*48*192 = 2.4e6) took 5.8 ms/step
# median on one thread vs 7-25 ms on two; M (768*128*512 = 5.0e7) 75 ms on one vs 52-60 on two
SMALL_MNK = 8_000_000

_SET_NAMES = ("scipy_openblas_set_num_threads64_", "scipy_openblas_set_num_threads",
              "openblas_set_num_threads64_", "openblas_set_num_threads")
_GET_NAMES = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
              "openblas_get_num_threads64_", "openblas_get_num_threads")

_lib: tuple | None = None          # (set_fn, get_fn) once looked up; (None, None) if not found


def _candidate_paths() -> list[str]:
    """Shared libraries that may hold NumPy's OpenBLAS: those already mapped, then NumPy's wheel folder."""
    paths: list[str] = []
    try:
        with open("/proc/self/maps") as f:           # Linux: the copy NumPy actually loaded
            for line in f:
                p = line.rsplit(None, 1)[-1]
                if "openblas" in p.lower() and p not in paths:
                    paths.append(p)
    except OSError:
        pass
    import numpy
    root = Path(numpy.__file__).resolve().parent
    for folder in (root.parent / "numpy.libs", root / ".dylibs"):
        if folder.is_dir():
            paths += [str(p) for p in sorted(folder.iterdir()) if "openblas" in p.name.lower()]
    return paths


def _find() -> tuple:
    global _lib
    if _lib is None:
        _lib = (None, None)
        for path in _candidate_paths():
            try:
                lib = ctypes.CDLL(path)
            except OSError:
                continue
            setter = next((getattr(lib, n) for n in _SET_NAMES if hasattr(lib, n)), None)
            getter = next((getattr(lib, n) for n in _GET_NAMES if hasattr(lib, n)), None)
            if setter is not None and getter is not None:
                setter.argtypes, setter.restype = [ctypes.c_int], None
                getter.argtypes, getter.restype = [], ctypes.c_int
                _lib = (setter, getter)
                break
    return _lib


def user_chose() -> bool:
    """True when the environment fixes the BLAS thread count (then Pythia never changes it)."""
    return any(os.environ.get(k, "").strip() for k in USER_ENV)


def blas_get() -> int | None:
    """BLAS threads now in use, or None when NumPy's OpenBLAS was not found."""
    getter = _find()[1]
    return None if getter is None else int(getter())


def blas_set(n: int) -> None:
    """Use n BLAS threads from now on (does nothing without OpenBLAS)."""
    setter = _find()[0]
    if setter is not None:
        setter(int(n))


def threads_for(mnk: int) -> int | None:
    """BLAS threads for a model whose largest product has mnk multiply-adds; None = leave as is."""
    if user_chose() or mnk >= SMALL_MNK:
        return None
    return 1


@contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Run the block with n BLAS threads, then restore the previous count; None changes nothing."""
    if n is None:
        yield
        return
    before = blas_get()
    if before is None or before == n:
        yield
        return
    blas_set(n)
    try:
        yield
    finally:
        blas_set(before)


def describe() -> str:
    """One line for logs and benchmark output: BLAS threads and the thread-related environment."""
    env = {k: os.environ[k] for k in USER_ENV + ("OMP_WAIT_POLICY",) if k in os.environ}
    return f"blas_threads={blas_get()} cores={os.cpu_count()} env={env} platform={sys.platform}"
