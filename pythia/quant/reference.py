"""Q8_0 in NumPy: the specification of the int8 format and of the compiled kernel.

A matrix W (O, C) whose input dimension C is the last axis is cut into blocks of QK = 32
values along C; each block keeps one float32 scale d and 32 int8 values q, W ~ q * d:

    amax = max |w| over the block
    d    = amax / 127                         (float32 division)
    q    = clip(rint(w / d), -127, 127)       (float32 division, round half to even)

as llama.cpp's quantize_row_q8_0, except: d stays float32 (llama.cpp stores float16), ties
round to even (llama.cpp's roundf rounds them away from zero), and w / d instead of w * (1/d).
A block with d below the smallest normal float32 (amax < 127 * 2**-126, all-zero blocks
included) is stored as d = 0, q = 0: 1/d would overflow. Otherwise |w - q d| <= d/2 (up to
one float32 rounding of w / d).

The product y = x W^T + b is computed as the kernel does: each row of x is quantized the same
way at run time, then per block b an exact integer dot product s_b = sum_k xq_k q_k, its term
t_b = s_b (xd_b wd_b), and the terms summed in LANES = 8 running sums, block b into lane b mod 8
in block order (the kernel adds eight blocks' terms as one vector), then the lanes folded in
halves:

    a_k = (...((t_k + t_{k+8}) + t_{k+16}) + ...)          k = 0..7 (a lane without blocks is 0)
    y   = (((a_0 + a_4) + (a_2 + a_6)) + ((a_1 + a_5) + (a_3 + a_7))) + bias

in float32, in that order. A row of x holding NaN or inf gives a row of NaN.
N rows of x, O output units, C inputs, nb = C / QK blocks.
"""
from __future__ import annotations

import numpy as np

from . import _check
from ._check import QK

TINY = np.float32(np.finfo(np.float32).tiny)  # smallest normal float32: scales below it flush to 0
ROW_CHUNK = 256                               # rows of x per batched block product (bounds memory)
LANES = 8                                     # running sums of the block terms


def _quantize_blocks(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # w (..., nb, QK) float32 -> q (..., nb, QK) int8, d (..., nb) float32
    amax = np.max(np.abs(w), axis=-1)                                   # (..., nb)
    d = amax / np.float32(127)                                          # (..., nb) float32
    d = np.where(d >= TINY, d, np.float32(0)).astype(np.float32)        # flush tiny blocks
    safe = np.where(d > 0, d, np.float32(1))[..., None]                 # (..., nb, 1)
    q = np.clip(np.rint(w / safe), -127, 127)                           # (..., nb, QK)
    q = np.where(d[..., None] > 0, q, 0).astype(np.int8)
    return q, d


def quantize_q8_0(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """w (..., C) finite floats -> (q int8 (..., C), scales float32 (..., C // 32))."""
    w = _check.float_matrix("w", w, finite=True, any_float=True)
    lead, C = w.shape[:-1], w.shape[-1]
    q, d = _quantize_blocks(w.reshape(*lead, C // QK, QK))
    return q.reshape(*lead, C), d


def dequantize_q8_0(q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """q int8 (O, C), scales (O, C // 32) -> W float32 (O, C), W = q * d per block."""
    q, scales = _check.quantized(q, scales, values=True)
    O, C = q.shape
    w = q.reshape(O, C // QK, QK).astype(np.float32) * scales[..., None]  # (O, nb, QK)
    return w.reshape(O, C)


def _quantize_activations(x: np.ndarray):
    # x (N, C) float32 -> xq (N, nb, QK) int8, xd (N, nb), bad (N,) rows holding NaN or inf
    N, C = x.shape
    bad = ~np.isfinite(x).all(axis=1)                                   # (N,)
    xq, xd = _quantize_blocks(np.where(bad[:, None], 0, x).reshape(N, C // QK, QK))
    return xq, xd, bad


def _block_sums(xq: np.ndarray, q: np.ndarray) -> np.ndarray:
    # xq (n, nb, QK) int8, q (O, nb, QK) int8 -> s (nb, n, O): exact, since every partial sum
    # is an integer of magnitude <= 32 * 127 * 127 < 2**24, which float32 holds exactly
    a = xq.astype(np.float32).transpose(1, 0, 2)                        # (nb, n, QK)
    b = q.astype(np.float32).transpose(1, 2, 0)                         # (nb, QK, O)
    return np.matmul(a, b)                                              # (nb, n, O)


def q8_block_sums(x: np.ndarray, q: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """The kernel's integer dot products: s (N, O, nb) int32, s[n, o, b] = sum_k xq[n,b,k] q[o,b,k],
    with x (N, C) quantized at run time as above; computed here in int64."""
    x, q, scales, _ = _check.matmul_inputs(x, q, scales, None)
    x = x.reshape(-1, x.shape[-1])
    xq, _, _ = _quantize_activations(x)
    qb = q.reshape(q.shape[0], -1, QK).astype(np.int64)                 # (O, nb, QK)
    return np.einsum("nbk,obk->nob", xq.astype(np.int64), qb).astype(np.int32)


def q8_matmul(x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray | None = None,
              *, threads: int = 1) -> np.ndarray:
    """y = x W^T + bias with W in Q8_0 (q (O, C), scales (O, C // 32)): x (..., C) -> y (..., O).
    `threads` is accepted for the compiled backend's signature; NumPy uses its own."""
    x, q, scales, bias = _check.matmul_inputs(x, q, scales, bias)
    _check.thread_count(threads)
    lead, C = x.shape[:-1], x.shape[-1]
    x = x.reshape(-1, C)                                                # (N, C)
    O, nb = scales.shape
    qb = q.reshape(O, nb, QK)                                           # (O, nb, QK)
    y = np.empty((x.shape[0], O), np.float32)                           # (N, O)
    for r in range(0, x.shape[0], ROW_CHUNK):
        xq, xd, bad = _quantize_activations(x[r:r + ROW_CHUNK])         # (n, nb, QK), (n, nb), (n,)
        s = _block_sums(xq, qb)                                         # (nb, n, O) exact integers
        lanes = np.zeros((LANES, xq.shape[0], O), np.float32)           # (8, n, O)
        for b in range(nb):                                             # the kernel's order
            lanes[b % LANES] += s[b] * (xd[:, b, None] * scales[None, :, b])   # (n, O) * (n, O)
        h = lanes[:4] + lanes[4:]                                       # a_k + a_{k+4}
        h = h[:2] + h[2:]                                               # (a_0 + a_4) + (a_2 + a_6), ...
        acc = h[0] + h[1]                                               # (n, O)
        if bias is not None:
            acc += bias
        acc[bad] = np.nan
        y[r:r + ROW_CHUNK] = acc
    return y.reshape(*lead, O)


def q8_apply(x: np.ndarray, q: np.ndarray, scales: np.ndarray, bias: np.ndarray | None, threads: int) -> np.ndarray:
    """q8_matmul with threads positional: the compiled backend's fast path for validated weights."""
    return q8_matmul(x, q, scales, bias, threads=threads)
