"""Pure-NumPy reference kernels: the specification of every Pythia kernel.

Each public function validates its arguments (`_check`) and calls a private twin that holds
only the math. The private twins keep the input dtype, so tests can run them in float64
against finite differences; the public functions take and return float32.

Shapes: any leading shape `...`; C is the size of the last axis (the one reduced over).
For attention, scores are (..., Tq, Tk): query row i sits at absolute position Tk - Tq + i and
may attend keys 0..Tk-Tq+i (causal). For cross-entropy, V is the vocabulary (last axis).
"""
from __future__ import annotations

import math

import numpy as np

from . import _check

GELU_SCALE = math.sqrt(2.0 / math.pi)  # sqrt(2/pi), GPT-2's tanh approximation
GELU_CUBIC = 0.044715


def _f32(a) -> np.ndarray:
    # a float32 ndarray, also when a reduction over the only axis produced a NumPy scalar
    return np.asarray(a, dtype=np.float32)


# ----------------------------------------------------------------------------- softmax

def _softmax_forward(x):
    # y = exp(x - max) / sum(exp(x - max)); a row that is all -inf gives y = 0 (defined, not NaN)
    m = np.max(x, axis=-1, keepdims=True)                      # (..., 1)
    m = np.where(np.isneginf(m), 0, m)                         # fully masked row: shift by 0
    e = np.exp(x - m)                                          # (..., C)
    s = np.sum(e, axis=-1, keepdims=True)                      # (..., 1)
    return e / np.where(s == 0, 1, s)                          # (..., C)


def _softmax_backward(dy, y):
    # dx = y * (dy - sum(dy * y))
    return y * (dy - np.sum(dy * y, axis=-1, keepdims=True))  # (..., C)


def softmax_forward(x: np.ndarray) -> np.ndarray:
    """Softmax over the last axis: (..., C) -> (..., C)."""
    x = _check.float32_array("x", x)
    return _softmax_forward(x).astype(np.float32, copy=False)


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Gradient of softmax given the upstream gradient dy and the forward output y."""
    dy = _check.float32_array("dy", dy)
    y = _check.float32_array("y", y)
    _check.same_shape("dy", dy, "y", y)
    return _softmax_backward(dy, y).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- layernorm

def _layernorm_forward(x, weight, bias, eps):
    mean = np.mean(x, axis=-1)                                 # (...,)
    xc = x - mean[..., None]                                   # (..., C)
    var = np.mean(xc * xc, axis=-1)                            # (...,) biased variance
    rstd = 1.0 / np.sqrt(var + eps)                            # (...,)
    xhat = xc * rstd[..., None]                                # (..., C)
    y = xhat * weight + bias                                   # (..., C)
    return y, mean, rstd


def _layernorm_backward(dy, x, weight, mean, rstd):
    C = x.shape[-1]
    xhat = (x - mean[..., None]) * rstd[..., None]             # (..., C)
    lead = tuple(range(x.ndim - 1))
    dbias = np.sum(dy, axis=lead)                              # (C,)
    dweight = np.sum(dy * xhat, axis=lead)                     # (C,)
    g = dy * weight                                            # (..., C) gradient wrt xhat
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    dx = rstd[..., None] * (g - np.sum(g, axis=-1, keepdims=True) / C
                            - xhat * np.sum(g * xhat, axis=-1, keepdims=True) / C)
    return dx, dweight, dbias


def layernorm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5):
    """LayerNorm over the last axis. Returns (y (..., C), mean (...,), rstd (...,))."""
    x, weight, bias = _check.layernorm_inputs(x, weight, bias)
    eps = _check.positive_scalar("eps", eps)
    y, mean, rstd = _layernorm_forward(x, weight, bias, np.float32(eps))
    # np.asarray: for a 1-d x, mean/rstd are 0-d arrays (NumPy reductions would give scalars)
    return _f32(y), _f32(mean), _f32(rstd)


def layernorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
    """Gradients of LayerNorm. Returns (dx (..., C), dweight (C,), dbias (C,)), summed over rows."""
    dy, x, weight, mean, rstd = _check.layernorm_grad_inputs(dy, x, weight, mean, rstd)
    dx, dw, db = _layernorm_backward(dy, x, weight, mean, rstd)
    return dx.astype(np.float32, copy=False), dw.astype(np.float32, copy=False), db.astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- GELU (tanh)

def _gelu_forward(x):
    # y = 0.5 x (1 + tanh(s (x + 0.044715 x^3))),  s = sqrt(2/pi)
    return 0.5 * x * (1.0 + np.tanh(GELU_SCALE * (x + GELU_CUBIC * x ** 3)))


def _gelu_backward(dy, x):
    # dy/dx = 0.5 (1 + t) + 0.5 x (1 - t^2) s (1 + 3 * 0.044715 x^2),  t = tanh(s (x + 0.044715 x^3))
    t = np.tanh(GELU_SCALE * (x + GELU_CUBIC * x ** 3))
    dgelu = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * GELU_SCALE * (1.0 + 3.0 * GELU_CUBIC * x * x)
    return dy * dgelu


def gelu_forward(x: np.ndarray) -> np.ndarray:
    """GELU, tanh approximation (GPT-2), element-wise."""
    x = _check.float32_array("x", x)
    return _gelu_forward(x).astype(np.float32, copy=False)


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    """dx = dy * gelu'(x)."""
    dy = _check.float32_array("dy", dy)
    x = _check.float32_array("x", x)
    _check.same_shape("dy", dy, "x", x)
    return _gelu_backward(dy, x).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- causal attention softmax

def _causal_mask(Tq, Tk):
    # True where query i (absolute position Tk - Tq + i) may attend key j
    return np.arange(Tk)[None, :] <= (Tk - Tq + np.arange(Tq))[:, None]   # (Tq, Tk)


def _attention_softmax_forward(scores, scale):
    Tq, Tk = scores.shape[-2:]
    z = np.where(_causal_mask(Tq, Tk), scores * scale, -np.inf)         # (..., Tq, Tk)
    return _softmax_forward(z)                                         # (..., Tq, Tk) zero above the diagonal


def _attention_softmax_backward(dy, y, scale):
    # dscores = scale * y * (dy - sum(dy * y)); masked entries have y = 0 so get 0
    return scale * _softmax_backward(dy, y)


def attention_softmax_forward(scores: np.ndarray, scale: float) -> np.ndarray:
    """softmax(scale * scores) under a causal mask, over the last axis: (..., Tq, Tk) -> (..., Tq, Tk)."""
    scores = _check.attention_scores("scores", scores)
    scale = _check.positive_scalar("scale", scale)
    return _attention_softmax_forward(scores, np.float32(scale)).astype(np.float32, copy=False)


def attention_softmax_backward(dy: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    """Gradient wrt the raw scores of attention_softmax_forward, given its output y."""
    dy = _check.attention_scores("dy", dy)
    y = _check.attention_scores("y", y)
    _check.same_shape("dy", dy, "y", y)
    scale = _check.positive_scalar("scale", scale)
    return _attention_softmax_backward(dy, y, np.float32(scale)).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- softmax + cross-entropy

def _crossentropy_forward(logits, targets):
    probs = _softmax_forward(logits)                                           # (..., V)
    # loss = -log p[target] = logsumexp(z) - z[target], computed stably
    m = np.max(logits, axis=-1)
    lse = m + np.log(np.sum(np.exp(logits - m[..., None]), axis=-1))
    z_t = np.take_along_axis(logits, targets[..., None], axis=-1)[..., 0]     # (...,)
    return lse - z_t, probs


def _crossentropy_backward(dlosses, probs, targets):
    # dlogits = dloss * (probs - onehot(target))
    dlogits = probs * dlosses[..., None]
    np.put_along_axis(dlogits, targets[..., None],
                      np.take_along_axis(dlogits, targets[..., None], axis=-1) - dlosses[..., None], axis=-1)
    return dlogits


def crossentropy_forward(logits: np.ndarray, targets: np.ndarray):
    """Softmax cross-entropy per row. Returns (losses (...,), probs (..., V)); probs feed the backward."""
    logits = _check.float32_array("logits", logits)
    targets = _check.targets_for("targets", targets, logits, "logits")
    losses, probs = _crossentropy_forward(logits, targets)
    return _f32(losses), _f32(probs)


def crossentropy_backward(dlosses: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Gradient wrt logits: dloss * (probs - onehot(targets))."""
    probs = _check.float32_array("probs", probs)
    targets = _check.targets_for("targets", targets, probs, "probs")
    dlosses = _check.float32_array("dlosses", dlosses, min_ndim=0)
    _check.leading_of("dlosses", dlosses, probs, "probs")
    return _crossentropy_backward(dlosses, probs, targets).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- AdamW update

def adamw_update(p: np.ndarray, g: np.ndarray, m: np.ndarray, v: np.ndarray, *, lr: float, beta1: float,
                 beta2: float, eps: float, t: int, weight_decay: float, grad_scale: float = 1.0) -> None:
    """One AdamW step, in place on the flat float32 arrays p, m, v (g is only read):

        g' = grad_scale g                 (global-norm clipping passes its factor here)
        m  = beta1 m + (1 - beta1) g'
        v  = beta2 v + (1 - beta2) g'^2
        p  = (1 - lr weight_decay) p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

    t is the 1-based step count of the bias correction. The last line is evaluated as
    decay p - step m / (sqrt(v) + eps_hat), with step = lr sqrt(1 - beta2^t) / (1 - beta1^t) and
    eps_hat = eps sqrt(1 - beta2^t) (both backends get these from `_check.adamw_scalars`).
    Unlike the other kernels it returns nothing: the optimizer's state is updated where it lives.
    """
    p, g, m, v = _check.adamw_arrays(p, g, m, v)
    gs, b1, c1, b2, c2, step, eps_hat, decay = (np.float32(s) for s in
                                                _check.adamw_scalars(lr, beta1, beta2, eps, t, weight_decay, grad_scale))
    g = g * gs                                                   # g'
    m *= b1
    m += c1 * g                                                  # m = b1 m + (1 - b1) g'
    v *= b2
    v += c2 * (g * g)                                            # v = b2 v + (1 - b2) g'^2
    p *= decay                                                   # decoupled weight decay
    p -= step * (m / (np.sqrt(v) + eps_hat))
