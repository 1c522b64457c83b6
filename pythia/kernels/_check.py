"""Argument validation shared by both kernel backends.

The compiled kernels index raw buffers, so every shape, dtype and length is checked here,
in Python, before any C runs. Both backends call the same checks and therefore raise the
same `TypeError`/`ValueError` messages, each naming the offending argument.
"""
from __future__ import annotations

import math

import numpy as np


F32 = np.dtype(np.float32)   # `dtype is F32` first: native float32 arrays share this object, and
I64 = np.dtype(np.int64)     # the identity test costs ~10 ns where `dtype != np.float32` costs ~120


def float32_array(name: str, a: object, min_ndim: int = 1) -> np.ndarray:
    """Return `a` as a C-contiguous float32 array, or raise naming `name`.

    Non-contiguous input is copied; read-only input is accepted (kernels never write to inputs).
    """
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
    if a.dtype is not F32 and a.dtype != np.float32:
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
    if a.dtype is I64 and a.flags.c_contiguous:
        return a
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


# ----------------------------------------------------------------------------- per-kernel argument sets
# Both backends validate through these, so they accept and refuse exactly the same inputs.

def _rows_and_weight(x, weight):
    x = float32_array("x", x)
    weight = float32_array("weight", weight)
    vector_of("weight", weight, x.shape[-1], "x")
    return x, weight


def layernorm_inputs(x, weight, bias):
    """x (..., C) with weight (C,) and bias (C,)."""
    x, weight = _rows_and_weight(x, weight)
    bias = float32_array("bias", bias)
    vector_of("bias", bias, x.shape[-1], "x")
    return x, weight, bias


def layernorm_grad_inputs(dy, x, weight, mean, rstd):
    """The forward's x and weight, dy shaped like x, and mean/rstd with one value per row of x."""
    x, weight = _rows_and_weight(x, weight)
    dy = float32_array("dy", dy)
    same_shape("dy", dy, "x", x)
    mean = float32_array("mean", mean, min_ndim=0)
    rstd = float32_array("rstd", rstd, min_ndim=0)
    leading_of("mean", mean, x, "x")
    leading_of("rstd", rstd, x, "x")
    return dy, x, weight, mean, rstd


def attention_scores(name: str, a) -> np.ndarray:
    """A stack of (Tq, Tk) score matrices; causal attention needs Tq <= Tk."""
    s = float32_array(name, a, min_ndim=2)
    Tq, Tk = s.shape[-2:]
    if Tq > Tk:
        raise ValueError(f"{name} has {Tq} query rows but only {Tk} keys; causal attention needs Tq <= Tk")
    return s


def adamw_arrays(p, g, m, v):
    """Four 1-d float32 C-contiguous arrays of one length, none overlapping another; p, m and v
    are updated in place, so they are never copied: a non-contiguous or read-only one is an error."""
    arrays = {"p": p, "g": g, "m": m, "v": v}
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray of float32, got {type(a).__name__}")
        if a.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {a.dtype}")
        if a.ndim != 1 or not a.flags.c_contiguous:
            raise ValueError(f"{name} must be a 1-d C-contiguous array (it is updated in place), got shape {a.shape}")
        if a.size != p.size or a.size == 0:
            raise ValueError(f"{name} has {a.size} elements but p has {p.size}; they must match and not be empty")
        if name != "g" and not a.flags.writeable:
            raise ValueError(f"{name} is read-only, but adamw_update writes it in place")
    names = list(arrays)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            if np.may_share_memory(arrays[a], arrays[b]):
                raise ValueError(f"{a} and {b} overlap in memory; adamw_update needs four separate arrays")
    return p, g, m, v


def adamw_scalars(lr, beta1, beta2, eps, t, weight_decay, grad_scale) -> tuple[float, ...]:
    """The per-step constants of adamw_update, in float64:
    (grad_scale, beta1, 1 - beta1, beta2, 1 - beta2, step, eps_hat, decay)."""
    vals = {}
    for name, x in (("lr", lr), ("beta1", beta1), ("beta2", beta2), ("eps", eps),
                    ("weight_decay", weight_decay), ("grad_scale", grad_scale)):
        try:
            vals[name] = float(x)
        except (TypeError, ValueError):
            raise TypeError(f"{name} must be a number, got {type(x).__name__}") from None
        if not math.isfinite(vals[name]):
            raise ValueError(f"{name} must be finite, got {x!r}")
    if vals["lr"] < 0 or vals["weight_decay"] < 0:
        raise ValueError(f"lr and weight_decay must be >= 0, got {lr!r} and {weight_decay!r}")
    if not (0 <= vals["beta1"] < 1 and 0 <= vals["beta2"] < 1):
        raise ValueError(f"beta1 and beta2 must lie in [0, 1), got {beta1!r} and {beta2!r}")
    if vals["eps"] <= 0 or vals["grad_scale"] <= 0:
        raise ValueError(f"eps and grad_scale must be > 0, got {eps!r} and {grad_scale!r}")
    if isinstance(t, bool) or not isinstance(t, (int, np.integer)) or t < 1:
        raise ValueError(f"t (the 1-based step count) must be an integer >= 1, got {t!r}")
    lr, b1, b2 = vals["lr"], vals["beta1"], vals["beta2"]
    bc1, bc2 = 1 - b1 ** int(t), 1 - b2 ** int(t)
    return (vals["grad_scale"], b1, 1 - b1, b2, 1 - b2, lr * math.sqrt(bc2) / bc1, vals["eps"] * math.sqrt(bc2),
            1 - lr * vals["weight_decay"])
