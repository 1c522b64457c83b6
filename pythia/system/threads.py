"""The thread policy, in one place: how many BLAS threads, kernel threads and batch shards a pass uses.

One deterministic rule, from the size of a pass's widest product (m*n*k multiply-adds of the
largest per-token matrix times the pass's rows); nothing is timed at run time, so the same
command on the same machine and thread count computes the same numbers every run:

    user fixed OPENBLAS_NUM_THREADS / GOTO_NUM_THREADS / OMP_NUM_THREADS
                          -> nothing is changed, ever
    mnk < SMALL_MNK       -> one BLAS thread, kernels serial (waking a second thread costs more
                             than the halved product saves)
    training pass, mnk >= SHARD_MIN_MNK, several cores and sequences, OpenBLAS found
                          -> the batch split into min(cores, B) row shards, one per core, each on
                             one BLAS thread with serial kernels (pythia.system.sharding)
    otherwise             -> every core for BLAS and the kernels

The measurements behind the two thresholds are in benchmarks/README.md. OpenBLAS has no
per-call thread argument, but `openblas_set_num_threads` may be called at run time; the library
is found through the symbols NumPy's wheel exports (scipy-openblas names them with a `scipy_`
prefix and a `64_` suffix); with another BLAS, or none found, the BLAS part does nothing.
"""
from __future__ import annotations

import ctypes
import os
import sys
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

USER_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
SMALL_MNK = 4_000_000       # below: one BLAS thread, serial kernels (config S: 2.4e6)
SHARD_MIN_MNK = 8_000_000   # from here on: a training pass splits the batch across cores

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


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                          # not Linux
        return os.cpu_count() or 1


# ----------------------------------------------------------------------------- the rule

def blas_threads_for(mnk: int) -> int | None:
    """BLAS threads for an unsplit pass whose widest product has mnk multiply-adds; None = all (as is)."""
    if user_chose() or mnk >= SMALL_MNK:
        return None
    return 1


def shards_for(batch: int, mnk: int) -> int:
    """How many row shards a training pass over `batch` sequences runs as (1 = not split)."""
    n = min(cores(), batch)
    if n < 2 or mnk < SHARD_MIN_MNK or user_chose() or blas_get() is None:
        return 1
    return n


def widest_per_token(model) -> int:
    """Multiply-adds per token of the model's widest matrix: the largest 2-d parameter that is
    not an embedding table (no axis of the vocabulary's size, not one row per position)."""
    model = getattr(model, "base", model)                        # an adapted model runs its frozen base's products
    cfg = model.config
    sizes = [p.size for p in model.params.values()
             if p.ndim == 2 and cfg.vocab_size not in p.shape and p.shape[0] != cfg.block_size]
    return max(sizes or [p.size for p in model.params.values()])


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


@contextmanager
def for_pass(mnk: int) -> Iterator[None]:
    """An unsplit pass under the rule: small ones on one BLAS thread with serial kernels (their
    loops are too short to repay waking a thread that slept through the products between them)."""
    from .. import kernels
    n = blas_threads_for(mnk)
    with blas_threads(n):
        limit = kernels.set_thread_limit(1) if n == 1 else None
        try:
            yield
        finally:
            if limit is not None:
                kernels.set_thread_limit(limit)


def describe() -> str:
    """One line for logs and benchmark output: BLAS threads and the thread-related environment."""
    env = {k: os.environ[k] for k in USER_ENV + ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    return f"blas_threads={blas_get()} cores={cores()} env={env} platform={sys.platform}"


# ----------------------------------------------------------------------------- worker threads

class Workers:
    """Runs a function on several items at once: the calling thread takes the first item, a
    pool thread each of the others; meanwhile BLAS uses one thread and each Python thread's
    kernels one OpenMP thread, so n items keep n cores busy without oversubscribing them."""

    def __init__(self, n: int):
        from .. import kernels
        self.n = n
        self._kernels = kernels
        self._pool = ThreadPoolExecutor(max(1, n - 1), thread_name_prefix="pythia-shard",
                                        initializer=kernels.set_thread_limit, initargs=(1,))

    def close(self) -> None:
        """Let the pool's threads end (they are idle between map() calls)."""
        self._pool.shutdown(wait=False)

    def map(self, fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
        """[fn(item) for item in items], computed concurrently; an exception in any is raised
        here once every item has finished (no worker outlives the call)."""
        before = blas_get()
        blas_set(1)
        limit = self._kernels.set_thread_limit(1)
        futures = []
        try:
            futures = [self._pool.submit(fn, item) for item in items[1:]]
            first = fn(items[0])
            return [first] + [f.result() for f in futures]
        finally:
            wait(futures)                           # also after Ctrl-C: workers write into our buffers
            self._kernels.set_thread_limit(limit)
            if before is not None:
                blas_set(before)
