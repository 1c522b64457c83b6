"""The Cython backend: validate and allocate in Python, compute in `pythia._kernels`.

Every function has the name, signature and semantics of its twin in `reference.py`. The
compiled routines get C-contiguous float32 (int64 for targets) arrays whose shapes were
checked here, plus the sizes (rows N, row length C, ...) to iterate over and the number of
threads they may use (`set_thread_limit`); they re-check dtype, contiguity and element count
before touching memory, so a bad argument is a Python exception, never an out-of-bounds read.
"""
from __future__ import annotations

import numpy as np

import operator

from . import _check

API_VERSION = 5  # bump together with API_VERSION in kernels/_kernels.pyx
_ext = None
ISA = "none"  # which build of the extension is bound: "avx2" or "baseline"
_threads: int | None = None  # threads every kernel call may use; OpenMP's default until set


def bind(ext) -> None:
    """Route every kernel to the extension module `ext` (pythia._kernels or pythia._kernels_avx2)."""
    global _ext, ISA, _threads
    _ext = ext
    ISA = ext.ISA
    if _threads is None:
        _threads = max(1, ext.default_threads())


def set_thread_limit(n: int) -> int:
    """Threads each kernel called from now on may use (in this process, from any thread; a
    kernel smaller than about 32k elements runs on one); n < 1 counts as 1. Returns the
    previous limit. Results do not depend on it, bit for bit."""
    global _threads
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"n (a thread count) must be an integer, got {type(n).__name__}") from None
    before = _threads if _threads is not None else 1
    _threads = max(1, n)
    return before


def softmax_forward(x: np.ndarray) -> np.ndarray:
    x = _check.float32_array("x", x)
    y = np.empty_like(x)
    _ext.softmax_forward(x, y, x.size // x.shape[-1], x.shape[-1], _threads)
    return y


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    dy = _check.float32_array("dy", dy)
    y = _check.float32_array("y", y)
    _check.same_shape("dy", dy, "y", y)
    dx = np.empty_like(y)
    _ext.softmax_backward(dy, y, dx, y.size // y.shape[-1], y.shape[-1], _threads)
    return dx


def layernorm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5):
    x, weight, bias = _check.layernorm_inputs(x, weight, bias)
    eps = _check.positive_scalar("eps", eps)
    y = np.empty_like(x)
    mean = np.empty(x.shape[:-1], np.float32)
    rstd = np.empty(x.shape[:-1], np.float32)
    _ext.layernorm_forward(x, weight, bias, y, mean, rstd, x.size // x.shape[-1], x.shape[-1], eps, _threads)
    return y, mean, rstd


def layernorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
    dy, x, weight, mean, rstd = _check.layernorm_grad_inputs(dy, x, weight, mean, rstd)
    dx = np.empty_like(x)
    dweight = np.empty(x.shape[-1], np.float32)
    dbias = np.empty(x.shape[-1], np.float32)
    _ext.layernorm_backward(dy, x, weight, mean, rstd, dx, dweight, dbias, x.size // x.shape[-1], x.shape[-1], _threads)
    return dx, dweight, dbias


def gelu_forward(x: np.ndarray) -> np.ndarray:
    x = _check.float32_array("x", x)
    y = np.empty_like(x)
    _ext.gelu_forward(x, y, x.size, _threads)
    return y


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    dy = _check.float32_array("dy", dy)
    x = _check.float32_array("x", x)
    _check.same_shape("dy", dy, "x", x)
    dx = np.empty_like(x)
    _ext.gelu_backward(dy, x, dx, x.size, _threads)
    return dx


def attention_softmax_forward(scores: np.ndarray, scale: float) -> np.ndarray:
    scores = _check.attention_scores("scores", scores)
    scale = _check.positive_scalar("scale", scale)
    y = np.empty_like(scores)
    Tq, Tk = scores.shape[-2:]
    _ext.attention_softmax_forward(scores, y, scores.size // (Tq * Tk), Tq, Tk, scale, _threads)
    return y


def attention_softmax_backward(dy: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    dy = _check.attention_scores("dy", dy)
    y = _check.attention_scores("y", y)
    _check.same_shape("dy", dy, "y", y)
    scale = _check.positive_scalar("scale", scale)
    dx = np.empty_like(y)
    Tq, Tk = y.shape[-2:]
    _ext.attention_softmax_backward(dy, y, dx, y.size // (Tq * Tk), Tq, Tk, scale, _threads)
    return dx


def _targets(targets, logits, logits_name):
    # shape and dtype in Python; the value range in one C pass (min() and max() cost ~10 us)
    t = _check.targets_for("targets", targets, logits, logits_name, check_values=False)
    if not _ext.targets_in_range(t, t.size, logits.shape[-1]):
        _check.target_range_error("targets", t, logits.shape[-1])
    return t


def crossentropy_forward(logits: np.ndarray, targets: np.ndarray):
    logits = _check.float32_array("logits", logits)
    targets = _targets(targets, logits, "logits")
    probs = np.empty_like(logits)
    losses = np.empty(logits.shape[:-1], np.float32)
    V = logits.shape[-1]
    _ext.crossentropy_forward(logits, targets, losses, probs, logits.size // V, V, _threads)
    return losses, probs


def crossentropy_backward(dlosses: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    probs = _check.float32_array("probs", probs)
    targets = _targets(targets, probs, "probs")
    dlosses = _check.float32_array("dlosses", dlosses, min_ndim=0)
    _check.leading_of("dlosses", dlosses, probs, "probs")
    dlogits = np.empty_like(probs)
    V = probs.shape[-1]
    _ext.crossentropy_backward(dlosses, probs, targets, dlogits, probs.size // V, V, _threads)
    return dlogits


def adamw_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, lr: float, beta1: float,
                 beta2: float, eps: float, t: int, weight_decay: float, grad_scale: float = 1.0) -> None:
    p, g, m, v = _check.adamw_arrays(p, g, m, v)
    scalars = _check.adamw_scalars(lr, beta1, beta2, eps, t, weight_decay, grad_scale)
    _ext.adamw_update(p, g, m, v, p.size, *scalars, _threads)
