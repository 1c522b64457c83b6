"""The Cython backend of Q8_0: validate and allocate in Python, compute in `pythia._quant`.

Same names, signatures and results as `reference.py` (bit for bit: the extension is built
without fused multiply-add and sums in the reference's order).
"""
from __future__ import annotations

import numpy as np

from . import _check
from ._check import QK

API_VERSION = 2  # bump together with API_VERSION in kernels/_quant.pyx
_ext = None
ISA = "none"     # which build is bound: "avx512vnni", "avx2" or "baseline"


def bind(ext) -> None:
    global _ext, ISA
    _ext, ISA = ext, ext.ISA


def _quantize_activations(x: np.ndarray):
    # x (N, C) float32 C-contiguous -> xq (N, C) int16, xd (N, nb) float32, bad (N,) uint8
    N, C = x.shape
    xq = np.empty((N, C), np.int16)
    xd = np.empty((N, C // QK), np.float32)
    bad = np.empty(N, np.uint8)
    _ext.quantize_rows(x, xq, xd, bad, N, C)
    return xq, xd, bad


def q8_matmul(x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray | None = None,
              *, threads: int = 1) -> np.ndarray:
    """y = x W^T + bias with W in Q8_0 (q (O, C), scales (O, C // 32)): x (..., C) -> y (..., O),
    output rows shared among `threads` threads."""
    x, q, scales, bias = _check.matmul_inputs(x, q, scales, bias)
    threads = _check.thread_count(threads)
    lead, (O, C) = x.shape[:-1], q.shape
    x = x.reshape(-1, C)                                                # (N, C)
    y = np.empty((x.shape[0], O), np.float32)                           # (N, O)
    if x.shape[0]:
        _ext.q8_linear(x, q, scales, bias, y, x.shape[0], O, C, threads)
    return y.reshape(*lead, O)


def q8_apply(x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray | None, threads: int) -> np.ndarray:
    """q8_matmul for weights already validated (QuantLinear's): an x that is a C-contiguous
    float32 (N, C) goes straight to the kernel, which still checks every size and type before
    it reads; anything else takes q8_matmul's checks. What a decode step calls per matrix."""
    if (type(x) is np.ndarray and x.dtype == np.float32 and x.ndim == 2 and x.flags.c_contiguous
            and x.shape[0] and x.shape[1] == q.shape[1] and type(threads) is int and threads >= 1):
        y = np.empty((x.shape[0], q.shape[0]), np.float32)              # (N, O)
        _ext.q8_linear(x, q, scales, bias, y, x.shape[0], q.shape[0], q.shape[1], threads)
        return y
    return q8_matmul(x, q, scales, bias, threads=threads)


def q8_block_sums(x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The kernel's int32 block dot products s (N, O, C // 32) for x (N, C), as in reference.py."""
    x, q, scales, _ = _check.matmul_inputs(x, q, scales, None)
    x = x.reshape(-1, x.shape[-1])
    xq, _, _ = _quantize_activations(x)
    N, (O, C) = x.shape[0], q.shape
    s = np.empty((N, O, C // QK), np.int32)
    _ext.q8_block_sums(xq, q, s, N, O, C)
    return s


def quantize_activations(x: np.ndarray):
    """The kernel's run-time quantization of x (N, C): (xq int16 (N, C), xd (N, C // 32), bad (N,))."""
    x = _check.float_matrix("x", x)
    return _quantize_activations(x.reshape(-1, x.shape[-1]))
