"""Argument validation shared by both kernel backends.

The compiled kernels index raw buffers, so every shape, dtype and length is checked here,
in Python, before any C runs. Both backends call the same checks and therefore raise the
same `TypeError`/`ValueError` messages, each naming the offending argument.
"""
from __future__ import annotations

import math

import numpy as np


def float32_array(name: str, a: object, min_ndim: int = 1) -> np.ndarray:
    """Return `a` as a C-contiguous float32 array, or raise naming `name`.

    Non-contiguous input is copied; read-only input is accepted (kernels never write to inputs).
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype != np.float32:
        raise TypeError(f"{name} must be float32, got {a.dtype} (convert with {name}.astype(np.float32))")
    if a.ndim < min_ndim:
        raise ValueError(f"{name} must have at least {min_ndim} dimension(s), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); kernels need at least one element")
    # not np.ascontiguousarray: it turns a 0-d array (one row's mean/rstd/loss) into shape (1,)
    return a if a.flags.c_contiguous else np.array(a, order="C")


def int_array(name: str, a: object) -> np.ndarray:
    """Return `a` as a C-contiguous int64 array of class indices, or raise naming `name`."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of integers, got {type(a).__name__}")
    if a.dtype.kind not in "iu":  # signed or unsigned integers (np.issubdtype costs ~1 us)
        raise TypeError(f"{name} must hold integers, got {a.dtype}")
    if a.dtype == np.int64 and a.flags.c_contiguous:
        return a
    return np.array(a, dtype=np.int64, order="C")  # keeps 0-d targets 0-d, unlike ascontiguousarray


def same_shape(name: str, a: np.ndarray, ref_name: str, ref: np.ndarray) -> None:
    if a.shape != ref.shape:
        raise ValueError(f"{name} has shape {a.shape} but {ref_name} has shape {ref.shape}; they must match")


def vector_of(name: str, a: np.ndarray, length: int, ref_name: str) -> None:
    """`a` must be 1-d with `length` entries (the last axis of `ref_name`)."""
    if a.shape != (length,):
        raise ValueError(f"{name} must have shape ({length},) to match the last axis of {ref_name}, got {a.shape}")


def leading_of(name: str, a: np.ndarray, x: np.ndarray, x_name: str) -> None:
    """`a` must have the leading shape x.shape[:-1] (one value per row of x)."""
    if a.shape != x.shape[:-1]:
        raise ValueError(f"{name} must have shape {x.shape[:-1]} (one value per row of {x_name}), got {a.shape}")


def positive_scalar(name: str, v: object) -> float:
    try:
        f = float(v)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}") from None
    if not math.isfinite(f) or f <= 0.0:
        raise ValueError(f"{name} must be a positive finite number, got {v!r}")
    return f


def targets_for(name: str, targets: np.ndarray, logits: np.ndarray, logits_name: str,
                check_values: bool = True) -> np.ndarray:
    """Targets index the last axis of logits: shape logits.shape[:-1], values in [0, V).

    check_values=False skips the value range (the compiled backend checks it in C, then calls
    `target_range_error` for the message).
    """
    t = int_array(name, targets)
    if t.shape != logits.shape[:-1]:
        raise ValueError(f"{name} must have shape {logits.shape[:-1]} (one class per row of {logits_name}), got {t.shape}")
    V = logits.shape[-1]
    if check_values and t.size and (t.min() < 0 or t.max() >= V):
        target_range_error(name, t, V)
    return t


def target_range_error(name: str, t: np.ndarray, V: int):
    raise ValueError(f"{name} must lie in [0, {V}); got values from {t.min()} to {t.max()}")
