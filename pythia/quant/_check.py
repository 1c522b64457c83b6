"""Argument checks shared by both Q8_0 backends: every shape and dtype is checked here, in
Python, before any C runs, so both backends accept and refuse exactly the same inputs."""
from __future__ import annotations

import numpy as np

QK = 32  # values per Q8_0 block (along the input dimension, the last axis)


def float_matrix(name: str, a: object, *, finite: bool = False, any_float: bool = False) -> np.ndarray:
    """`a` as a C-contiguous float32 array with a last axis that is a positive multiple of QK.
    Weights (any_float) may come in any float dtype and are cast; activations must be float32."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype.kind != "f" or not (any_float or a.dtype == np.float32):
        raise TypeError(f"{name} must be float32, got {a.dtype} (convert with {name}.astype(np.float32))")
    if a.ndim < 1 or a.size == 0:
        raise ValueError(f"{name} must be a non-empty array with at least one axis, got shape {a.shape}")
    blocks(name, a.shape[-1])
    if finite and not np.isfinite(a).all():
        bad = np.argwhere(~np.isfinite(a))[0]
        raise ValueError(f"{name} holds NaN or inf (first at index {tuple(int(i) for i in bad)}); "
                         f"only finite weights can be quantized")
    return np.ascontiguousarray(a, dtype=np.float32)


def blocks(name: str, cols: int) -> int:
    """Number of QK-blocks in a row of `cols` values; refuses a size that is not a multiple of QK."""
    if cols % QK or cols == 0:
        raise ValueError(f"{name} has {cols} values along its input dimension (last axis); Q8_0 "
                         f"needs a positive multiple of {QK} (this size is refused, not padded)")
    return cols // QK


def quantized(q: object, scales: object, name: str = "q", *, values: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """A Q8_0 matrix: q int8 (O, C) and scales float32 (O, C // QK), both C-contiguous. With
    values=True the scales must also be finite and >= 0 (a pass over them: done when a weight
    is built or loaded, not on every product)."""
    if not isinstance(q, np.ndarray) or q.dtype != np.int8:
        raise TypeError(f"{name} must be a numpy.ndarray of int8, got "
                        f"{getattr(q, 'dtype', type(q).__name__)}")
    if not isinstance(scales, np.ndarray) or scales.dtype != np.float32:
        raise TypeError(f"scales must be a numpy.ndarray of float32, got "
                        f"{getattr(scales, 'dtype', type(scales).__name__)}")
    if q.ndim != 2 or q.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty 2-d (rows, cols) int8 matrix, got shape {q.shape}")
    nb = blocks(name, q.shape[1])
    if scales.shape != (q.shape[0], nb):
        raise ValueError(f"scales must have shape {(q.shape[0], nb)} (one per block of {QK} in each "
                         f"row of {name}), got {scales.shape}")
    if values and not (np.isfinite(scales).all() and (scales >= 0).all()):
        raise ValueError("scales must be finite and >= 0; the quantized weights are corrupt")
    return np.ascontiguousarray(q), np.ascontiguousarray(scales)


def matmul_inputs(x, q, scales, bias):
    """x (..., C) float32 against q (O, C), scales (O, C // QK), bias (O,) or None."""
    q, scales = quantized(q, scales)
    x = float_matrix("x", x)
    if x.shape[-1] != q.shape[1]:
        raise ValueError(f"x has {x.shape[-1]} values in its last axis but q has {q.shape[1]} "
                         f"columns (the input dimension); they must match")
    if bias is not None:
        if not isinstance(bias, np.ndarray) or bias.dtype.kind != "f":
            raise TypeError(f"bias must be a float32 numpy.ndarray or None, got "
                            f"{getattr(bias, 'dtype', type(bias).__name__)}")
        if bias.shape != (q.shape[0],):
            raise ValueError(f"bias must have shape ({q.shape[0]},) (one per row of q), got {bias.shape}")
        bias = np.ascontiguousarray(bias, dtype=np.float32)
    return x, q, scales, bias


def thread_count(threads: object) -> int:
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
        raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
    return int(threads)
