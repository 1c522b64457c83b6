"""The compiled backend of the Llama-family kernels: validate and allocate here, compute in
`pythia._llama_kernels`.

Every function has the name, signature and semantics of its twin in `reference_llama.py` and
validates through the same `_check_llama` functions. The thread count is chosen here, by the
size of the work alone (PARALLEL_MIN), at most the limit `kernels.set_thread_limit` set, and
passed to the extension, so a result does not depend on timing.
"""
from __future__ import annotations

import numpy as np

from . import _check, _check_llama, compiled

API_VERSION = 2  # bump together with API_VERSION in kernels/_llama.pyx
PARALLEL_MIN = 32768  # elements from which a loop is split over the threads (as in _kernels.pyx)
LEVEL: int | None = None  # matvec/vecmat code: None the widest the CPU runs, else 0 baseline, 1 AVX2 + FMA
_ext = None


_widest = 0  # the few-row products' code when LEVEL is None: the CPU's widest, or 0 (PYTHIA_KERNELS_ISA=baseline)


def bind(ext) -> None:
    """Route every kernel to the extension module `ext` (pythia._llama_kernels)."""
    global _ext, _widest
    from ._loader import isa_wanted
    _ext = ext
    _widest = 0 if isa_wanted() == "baseline" else ext.FEW_LEVEL


def _threads(n_elements: int) -> int:
    if n_elements < PARALLEL_MIN:
        return 1
    limit = compiled._threads                                 # set_thread_limit's, when the main backend is bound
    return _ext.max_threads() if limit is None else max(1, min(limit, _ext.max_threads()))


def rmsnorm_forward(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6):
    x, weight = _check_llama.rmsnorm_inputs(x, weight)
    eps = _check.positive_scalar("eps", eps)
    y = np.empty_like(x)
    rstd = np.empty(x.shape[:-1], np.float32)
    C = x.shape[-1]
    _ext.rmsnorm_forward(x, weight, y, rstd, x.size // C, C, eps, _threads(x.size))
    return y, rstd


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, rstd: np.ndarray):
    dy, x, weight, rstd = _check_llama.rmsnorm_grad_inputs(dy, x, weight, rstd)
    dx = np.empty_like(x)
    dweight = np.empty(x.shape[-1], np.float32)
    C = x.shape[-1]
    _ext.rmsnorm_backward(dy, x, weight, rstd, dx, dweight, x.size // C, C, _threads(x.size))
    return dx, dweight


def _rope(name, x, cos, sin, sign):
    x, cos, sin = _check_llama.rope_inputs(name, x, cos, sin)
    y = np.empty_like(x)
    T, hs = x.shape[-2:]
    _ext.rope_apply(x, cos, sin, y, x.size // hs, T, hs, sign, _threads(x.size))
    return y


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    return _rope("x", x, cos, sin, 1)


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    return _rope("dy", dy, cos, sin, -1)


def swiglu_forward(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    gate, up = _check_llama.pair_inputs("gate", gate, "up", up)
    y = np.empty_like(gate)
    _ext.swiglu_forward(gate, up, y, gate.size, _threads(2 * gate.size))
    return y


def swiglu_backward(dy: np.ndarray, gate: np.ndarray, up: np.ndarray):
    gate, up = _check_llama.pair_inputs("gate", gate, "up", up)
    dy = _check.float32_array("dy", dy)
    _check.same_shape("dy", dy, "gate", gate)
    dgate = np.empty_like(gate)
    dup = np.empty_like(gate)
    _ext.swiglu_backward(dy, gate, up, dgate, dup, gate.size, _threads(2 * gate.size))
    return dgate, dup


POOL_THREADS: int | None = None  # the few-row products' threads (set_pool_threads); None: all OpenMP allows


def set_pool_threads(n: int | None) -> int | None:
    """Threads the few-row products use from now on (None: all OpenMP allows); returns the
    previous setting. A process given a share of the cores (an MPI rank) sets its share."""
    global POOL_THREADS
    before, POOL_THREADS = POOL_THREADS, None if n is None else max(1, int(n))
    return before


def _pool_threads(n_elements: int) -> int:
    """Threads of the few-row products: POOL_THREADS, or all OpenMP allows, whatever
    set_thread_limit says. They run on their own pool (kernels/_pool.h), whose caller never
    waits for a thread that has not started its share, and whose workers stay awake between
    back-to-back products; so the rule that keeps a decoding step's other kernels serial (a
    sleeping thread costs more to wake than a short loop takes) does not apply to them."""
    if n_elements < PARALLEL_MIN:
        return 1
    return _ext.max_threads() if POOL_THREADS is None else min(POOL_THREADS, _ext.max_threads())


def _level() -> int:
    return _widest if LEVEL is None else min(LEVEL, _ext.FEW_LEVEL)


def _few_rows(kernel, x: np.ndarray, w: np.ndarray, bias, y: np.ndarray, C: int, O: int) -> np.ndarray:
    step = _ext.FEW_MAX_ROWS                                   # the kernels take at most `step` rows
    for lo in range(0, x.shape[0], step):
        hi = min(lo + step, x.shape[0])
        kernel(x[lo:hi], w, bias, y[lo:hi], hi - lo, C, O, _pool_threads(O * C), _level())
    return y


def matvec(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    x, w, bias = _check_llama.matvec_inputs(x, w, bias)
    O, C = w.shape
    return _few_rows(_ext.matvec, x, w, bias, np.empty((x.shape[0], O), np.float32), C, O)


def vecmat(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    x, w, bias = _check_llama.vecmat_inputs(x, w, bias)
    C, O = w.shape
    if x.shape[0] == 1:                                        # one row: w streamed in bands of rows
        y = np.empty((1, O), np.float32)
        _ext.vecmat_row(x, w, bias, y, C, O, _pool_threads(O * C), _level())
        return y
    return _few_rows(_ext.vecmat, x, w, bias, np.empty((x.shape[0], O), np.float32), C, O)
