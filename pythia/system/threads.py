"""Thread policy for NumPy's BLAS: one thread when that is faster, all cores otherwise, by measurement.

NumPy's bundled OpenBLAS starts one thread per core and splits every product above ~64^3
multiply-adds across them. Its threads wait for work by spinning, and a split product ends when
its slower half does. On 2 cores that is a loss twice over: for small products, waking the
second thread costs more than the halved product saves; and when another process holds a core,
the half given to the descheduled thread waits a whole time slice. Measured per training step
on the project's 2 shared cores with one other busy process: config M took 52-60 ms on two
threads when the machine was otherwise quiet, 75 ms on one, and 480-660 ms on two when busy.

So `BlasChooser` times each forward/backward pass and keeps the thread count that was faster:
it starts from a static guess (one thread when the pass's largest product is small), now and
then runs one pass with the other count, switches if that pass beat all of the last five, and
otherwise waits twice as long before trying again (from 20 to 2000 passes' time, and at least
1 s), so a losing option costs at most a few percent. OpenBLAS has no per-call thread argument,
but `openblas_set_num_threads` may be called at run time; the library is found through the symbols NumPy's wheel exports
(scipy-openblas names them with a `scipy_` prefix and a `64_` suffix); with another BLAS, or
none found, nothing here does anything.

The user's choice wins: when OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS or OMP_NUM_THREADS is set,
the thread count is never changed.
"""
from __future__ import annotations

import ctypes
import os
import sys
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")

USER_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
# a pass whose largest product has fewer m*n*k multiply-adds starts on one BLAS thread (the
# chooser below may later move it). Measured (quiet machine, threads awake), x (N, C) @ w
# (C, 4C): 5.9e5 (64 x 48) 15.9 us on one thread vs 10.7 on two; 2.4e6 (256 x 48, config S)
# 57 vs 30 us; 3.0e5 (32 x 48) and 6.6e4 (one token at C = 128) level. This line was 8e6 while
# kernel threads slept at once (config S then took 5.8 ms/step on one thread, 7-25 on two on
# a busy machine); with them spinning briefly, config S steps in 3.1 ms on two, 3.8 on one.
SMALL_MNK = 500_000

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


class BlasChooser:
    """Per pass kind (a key such as ("backward", rows)): run it on the faster BLAS thread count."""

    RETRY_MIN = 1.0                         # seconds, at least, between trials of the other count
    PASSES_MIN, PASSES_MAX = 20, 2000       # ... and at least this many passes' time (doubling on a loss)
    HISTORY = 5                             # recent pass times the current choice is judged by

    def __init__(self) -> None:
        self._state: dict = {}              # key -> [current, other, times, last change, backoff passes]
        self.switches = 0                   # how often a trial won (for tests and logs)

    @contextmanager
    def run(self, key, guess: int | None) -> Iterator[int | None]:
        """Time the block under the chosen thread count and yield it (None when Pythia chooses
        nothing: BLAS not found, or the user fixed the threads); guess is the static choice
        (None: all)."""
        full, fixed = blas_get(), user_chose()
        if full is None or full <= 1 or fixed:
            yield None if fixed else full
            return
        st = self._state.get(key)
        if st is None:
            first = guess or full
            st = self._state[key] = [first, full if first != full else 1, deque(maxlen=self.HISTORY),
                                     time.perf_counter(), self.PASSES_MIN]
        current, other, times, since, passes = st
        # a trial costs at most one pass on the worse count, once per `passes` passes (>= 1 s)
        trial = len(times) >= 2 and time.perf_counter() - since >= max(self.RETRY_MIN, passes * _median(times))
        n = other if trial else current
        if n != full:
            blas_set(n)
        t0 = time.perf_counter()
        try:
            yield n
        finally:
            dt = time.perf_counter() - t0
            if n != full:
                blas_set(full)
        if not trial:
            times.append(dt)
        elif dt < min(times):                         # the other count beat every recent pass: switch
            self.switches += 1
            times.clear(); times.append(dt)
            st[:] = [other, current, times, time.perf_counter(), self.PASSES_MIN]
        else:                                         # it lost: wait twice as long before the next trial
            st[3], st[4] = time.perf_counter(), min(2 * passes, self.PASSES_MAX)

    def choices(self) -> dict:
        """The thread count now chosen for each key."""
        return {k: st[0] for k, st in self._state.items()}


def _median(xs) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def describe() -> str:
    """One line for logs and benchmark output: BLAS threads and the thread-related environment."""
    env = {k: os.environ[k] for k in USER_ENV + ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT") if k in os.environ}
    return f"blas_threads={blas_get()} cores={os.cpu_count()} env={env} platform={sys.platform}"


# ----------------------------------------------------------------------------- shards of a batch
# OpenBLAS on two threads splits every product of a small model in two and synchronises after
# each one; at config M it reached ~120 GFLOP/s on both cores together, while one thread alone
# does ~80. Splitting the batch instead (each core takes half the sequences, with one BLAS
# thread and serial kernels, and the gradients are added at the end) keeps both cores busy
# with no per-product handoff, and the kernels between products run in parallel for free.
# Measured at config M: 44 ms/step instead of 54 (min of 60 steps, quiet machine).

SHARD_MIN_MNK = 8_000_000   # config S (2.4e6) stays unsplit: splitting it was slower


def cores() -> int:
    """CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:                          # not Linux
        return os.cpu_count() or 1


def shards_for(batch: int, mnk: int) -> int:
    """How many shards a training pass over `batch` sequences runs as (1 = not split).

    Split when there are several cores and sequences, the largest product has at least
    SHARD_MIN_MNK multiply-adds, Pythia can set NumPy's BLAS to one thread, and the user fixed
    no thread count (then Pythia uses the threads it was given as they are).
    """
    n = min(cores(), batch)
    if n < 2 or mnk < SHARD_MIN_MNK or user_chose() or blas_get() is None:
        return 1
    return n


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
