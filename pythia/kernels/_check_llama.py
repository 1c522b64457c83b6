"""Argument validation of the Llama-family kernels, shared by both backends (see `_check`).

Both backends call these before computing, so they accept and refuse the same inputs with the
same messages, each naming the argument; the compiled one relies on them before C touches memory.
"""
from __future__ import annotations

import numpy as np

from ._check import float32_array, leading_of, same_shape, vector_of


def rmsnorm_inputs(x, weight):
    """x (..., C) with weight (C,)."""
    x = float32_array("x", x)
    weight = float32_array("weight", weight)
    vector_of("weight", weight, x.shape[-1], "x")
    return x, weight


def rmsnorm_grad_inputs(dy, x, weight, rstd):
    """The forward's x and weight, dy shaped like x, rstd with one value per row of x."""
    x, weight = rmsnorm_inputs(x, weight)
    dy = float32_array("dy", dy)
    same_shape("dy", dy, "x", x)
    rstd = float32_array("rstd", rstd, min_ndim=0)
    leading_of("rstd", rstd, x, "x")
    return dy, x, weight, rstd


def rope_inputs(name: str, x, cos, sin):
    """x (..., T, hs) with hs even, and tables cos, sin (T, hs)."""
    x = float32_array(name, x, min_ndim=2)
    T, hs = x.shape[-2:]
    if hs % 2:
        raise ValueError(f"{name} has an odd head size {hs}; rotary embeddings pair the two halves of a head")
    cos = float32_array("cos", cos, min_ndim=2)
    sin = float32_array("sin", sin, min_ndim=2)
    for tname, t in (("cos", cos), ("sin", sin)):
        if t.shape != (T, hs):
            raise ValueError(f"{tname} must have shape ({T}, {hs}) (the last two axes of {name}), got {t.shape}")
    return x, cos, sin


def pair_inputs(a_name: str, a, b_name: str, b) -> tuple[np.ndarray, np.ndarray]:
    """Two float32 arrays of one shape (an element-wise op's operands)."""
    a = float32_array(a_name, a)
    b = float32_array(b_name, b)
    same_shape(b_name, b, a_name, a)
    return a, b


def matvec_inputs(x, w, bias):
    """x (N, C), a weight w (O, C) (out, in) and an optional bias (O,)."""
    x = float32_array("x", x, min_ndim=2)
    w = float32_array("w", w, min_ndim=2)
    if x.ndim != 2 or w.ndim != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"matvec needs x (N, C) and w (O, C) with the same C, got x {x.shape} and w {w.shape}")
    if bias is not None:
        bias = float32_array("bias", bias)
        if bias.shape != (w.shape[0],):
            raise ValueError(f"bias must have shape ({w.shape[0]},) (the rows of w), got {bias.shape}")
    return x, w, bias


def vecmat_inputs(x, w, bias):
    """x (N, C) with N >= 1, a weight w (C, O) (in, out) and an optional bias (O,)."""
    x = float32_array("x", x, min_ndim=2)
    w = float32_array("w", w, min_ndim=2)
    if x.ndim != 2 or w.ndim != 2 or w.shape[0] != x.shape[1]:
        raise ValueError(f"vecmat needs x (N, C) and w (C, O) with the same C, got x {x.shape} and w {w.shape}")
    if x.shape[0] < 1 or 0 in w.shape:
        raise ValueError(f"vecmat needs at least one row and a non-empty w, got x {x.shape} and w {w.shape}")
    if bias is not None:
        bias = float32_array("bias", bias)
        if bias.shape != (w.shape[1],):
            raise ValueError(f"bias must have shape ({w.shape[1]},) (the columns of w), got {bias.shape}")
    return x, w, bias
