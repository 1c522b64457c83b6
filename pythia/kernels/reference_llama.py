"""Pure-NumPy reference kernels of the Llama-family layers: the specification of each.

    rmsnorm_forward(x, weight, eps)        -> (y, rstd)      # over the last axis
    rmsnorm_backward(dy, x, weight, rstd)  -> (dx, dweight)
    rope_forward(x, cos, sin)              -> y              # x (..., T, hs), cos/sin (T, hs)
    rope_backward(dy, cos, sin)            -> dx
    swiglu_forward(gate, up)               -> y = silu(gate) * up
    swiglu_backward(dy, gate, up)          -> (dgate, dup)
    rope_tables(positions, head_dim, theta) -> (cos, sin)    # the (T, hs) tables rope_* take
    matvec(x, w, bias=None)                -> x w^T + bias   # x (N, C), w (O, C) as HF stores it
    vecmat(x, w, bias=None)                -> x w + bias     # x (N, C), w (C, O) as GPT-2 stores it

As in `reference.py`, each public function validates (`_check`) and calls a private twin that
keeps the input dtype (float64 in the finite-difference tests). RMSNorm follows Zhang &
Sennrich 2019 as Hugging Face's LlamaRMSNorm computes it; rotary embeddings (Su et al. 2021)
use Hugging Face's rotate-half layout: the first half of a head's channels pairs with the
second half, not even with odd. C is the size of the last axis, hs a head's size.
"""
from __future__ import annotations

import numpy as np

from . import _check, _check_llama


# ----------------------------------------------------------------------------- RMSNorm

def _rmsnorm_forward(x, weight, eps):
    rstd = 1.0 / np.sqrt(np.mean(x * x, axis=-1) + eps)        # (...,) 1 / rms(x)
    y = x * rstd[..., None] * weight                           # (..., C)
    return y, rstd


def _rmsnorm_backward(dy, x, weight, rstd):
    C = x.shape[-1]
    xhat = x * rstd[..., None]                                 # (..., C)
    dweight = np.sum(dy * xhat, axis=tuple(range(x.ndim - 1)))  # (C,)
    g = dy * weight                                            # (..., C) gradient wrt xhat
    # xhat = x / sqrt(mean(x^2) + eps)  =>  dx = rstd * (g - xhat * mean(g * xhat))
    dx = rstd[..., None] * (g - xhat * np.sum(g * xhat, axis=-1, keepdims=True) / C)
    return dx, dweight


def rmsnorm_forward(x: np.ndarray, weight: np.ndarray, eps: float = 1e-6):
    """y = x / sqrt(mean(x^2) + eps) * weight over the last axis; rstd (x.shape[:-1]) for the backward."""
    x, weight = _check_llama.rmsnorm_inputs(x, weight)
    eps = _check.positive_scalar("eps", eps)
    y, rstd = _rmsnorm_forward(x, weight, np.float32(eps))
    return _f32(y), _f32(rstd)


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, rstd: np.ndarray):
    """(dx, dweight) given the upstream gradient dy and the forward's x, weight and rstd."""
    dy, x, weight, rstd = _check_llama.rmsnorm_grad_inputs(dy, x, weight, rstd)
    dx, dweight = _rmsnorm_backward(dy, x, weight, rstd)
    return _f32(dx), _f32(dweight)


# ----------------------------------------------------------------------------- rotary position embedding

def rope_tables(positions, head_dim: int, theta: float):
    """cos, sin (T, head_dim) float32 for integer positions (T,): angle p * theta^(-2i/hs) for
    the pair i < hs/2, written twice (both halves of a head use the same angle)."""
    pos = np.asarray(positions, dtype=np.float64)              # (T,)
    inv_freq = 1.0 / theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim)  # (hs/2,)
    ang = pos[:, None] * inv_freq[None, :]                     # (T, hs/2)
    ang = np.concatenate([ang, ang], axis=-1)                  # (T, hs)
    return np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)


def _rotate_half(x):
    # (x1, x2) -> (-x2, x1), halves of the last axis
    h = x.shape[-1] // 2
    return np.concatenate([-x[..., h:], x[..., :h]], axis=-1)


def _rope_forward(x, cos, sin):
    # y = x cos + rotate_half(x) sin: each pair (x1_i, x2_i) turned by its angle
    return x * cos + _rotate_half(x) * sin                     # (..., T, hs)


def _rope_backward(dy, cos, sin):
    # the transpose of a rotation: dx = dy cos + rotate_half^T(dy sin), rotate_half^T(z1, z2) = (z2, -z1)
    z = dy * sin                                               # (..., T, hs)
    h = z.shape[-1] // 2
    return dy * cos + np.concatenate([z[..., h:], -z[..., :h]], axis=-1)


def rope_forward(x: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Rotary embedding of x (..., T, hs) with tables cos, sin (T, hs) (see rope_tables)."""
    x, cos, sin = _check_llama.rope_inputs("x", x, cos, sin)
    return _f32(_rope_forward(x, cos, sin))


def rope_backward(dy: np.ndarray, cos: np.ndarray, sin: np.ndarray) -> np.ndarray:
    """Gradient wrt x of rope_forward(x, cos, sin), given dy (..., T, hs)."""
    dy, cos, sin = _check_llama.rope_inputs("dy", dy, cos, sin)
    return _f32(_rope_backward(dy, cos, sin))


# ----------------------------------------------------------------------------- SwiGLU

def _sigmoid(z):
    # 1 / (1 + exp(-z)) without overflow warnings: exp of a non-positive number only
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _swiglu_forward(gate, up):
    return gate * _sigmoid(gate) * up                          # silu(gate) * up


def _swiglu_backward(dy, gate, up):
    s = _sigmoid(gate)
    silu = gate * s
    # d silu(g) / dg = s + g s (1 - s)
    return dy * up * (s + silu * (1.0 - s)), dy * silu


def swiglu_forward(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up, element-wise; silu(g) = g sigmoid(g)."""
    gate, up = _check_llama.pair_inputs("gate", gate, "up", up)
    return _f32(_swiglu_forward(gate, up))


def swiglu_backward(dy: np.ndarray, gate: np.ndarray, up: np.ndarray):
    """(dgate, dup) of swiglu_forward given dy."""
    gate, up = _check_llama.pair_inputs("gate", gate, "up", up)
    dy = _check.float32_array("dy", dy)
    _check.same_shape("dy", dy, "gate", gate)
    dgate, dup = _swiglu_backward(dy, gate, up)
    return _f32(dgate), _f32(dup)


# ----------------------------------------------------------------------------- x W^T for a few rows

def matvec(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y (N, O) = x (N, C) w^T + bias for a weight w (O, C) stored (out, in), as Hugging Face
    stores projections: the product decoding does, with N a few rows."""
    x, w, bias = _check_llama.matvec_inputs(x, w, bias)
    y = x @ w.T                                                # (N, C) @ (C, O) -> (N, O)
    if bias is not None:
        y += bias
    return _f32(y)


# ----------------------------------------------------------------------------- x W for a few rows

def vecmat(x: np.ndarray, w: np.ndarray, bias: np.ndarray | None = None) -> np.ndarray:
    """y (N, O) = x (N, C) w + bias for a weight w (C, O) stored (in, out), as GPT-2's Conv1D
    stores it: the product decoding a few sequences at once does."""
    x, w, bias = _check_llama.vecmat_inputs(x, w, bias)
    y = x @ w                                                  # (N, C) @ (C, O) -> (N, O)
    if bias is not None:
        y += bias
    return _f32(y)


def _f32(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float32)
