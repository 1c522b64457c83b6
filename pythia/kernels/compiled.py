"""The Cython backend: validate and allocate in Python, compute in `pythia._kernels`.

Every function has the name, signature and semantics of its twin in `reference.py`. The
compiled routines see only C-contiguous 1-d/2-d/3-d float32 views whose shapes were checked
here, so a bad argument is a Python exception, never an out-of-bounds read.
"""
from __future__ import annotations

import numpy as np

from . import _check

API_VERSION = 1  # bump together with API_VERSION in kernels/_kernels.pyx
_ext = None


def bind(ext) -> None:
    global _ext
    _ext = ext


def _rows(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-1])  # (..., C) -> (N, C), a view of a contiguous array


def softmax_forward(x: np.ndarray) -> np.ndarray:
    x = _check.float32_array("x", x)
    y = np.empty_like(x)
    _ext.softmax_forward(_rows(x), _rows(y))
    return y


def softmax_backward(dy: np.ndarray, y: np.ndarray) -> np.ndarray:
    dy = _check.float32_array("dy", dy)
    y = _check.float32_array("y", y)
    _check.same_shape("dy", dy, "y", y)
    dx = np.empty_like(y)
    _ext.softmax_backward(_rows(dy), _rows(y), _rows(dx))
    return dx


def layernorm_forward(x: np.ndarray, weight: np.ndarray, bias: np.ndarray, eps: float = 1e-5):
    x = _check.float32_array("x", x)
    weight = _check.float32_array("weight", weight)
    bias = _check.float32_array("bias", bias)
    _check.vector_of("weight", weight, x.shape[-1], "x")
    _check.vector_of("bias", bias, x.shape[-1], "x")
    eps = _check.positive_scalar("eps", eps)
    y = np.empty_like(x)
    mean = np.empty(x.shape[:-1], np.float32)
    rstd = np.empty(x.shape[:-1], np.float32)
    _ext.layernorm_forward(_rows(x), weight, bias, _rows(y), mean.reshape(-1), rstd.reshape(-1), eps)
    return y, mean, rstd


def layernorm_backward(dy: np.ndarray, x: np.ndarray, weight: np.ndarray, mean: np.ndarray, rstd: np.ndarray):
    x = _check.float32_array("x", x)
    weight = _check.float32_array("weight", weight)
    _check.vector_of("weight", weight, x.shape[-1], "x")
    dy = _check.float32_array("dy", dy)
    _check.same_shape("dy", dy, "x", x)
    mean = _check.float32_array("mean", mean, min_ndim=0)
    rstd = _check.float32_array("rstd", rstd, min_ndim=0)
    _check.leading_of("mean", mean, x, "x")
    _check.leading_of("rstd", rstd, x, "x")
    dx = np.empty_like(x)
    dweight = np.empty(x.shape[-1], np.float32)
    dbias = np.empty(x.shape[-1], np.float32)
    _ext.layernorm_backward(_rows(dy), _rows(x), weight, mean.reshape(-1), rstd.reshape(-1), _rows(dx), dweight, dbias)
    return dx, dweight, dbias


def gelu_forward(x: np.ndarray) -> np.ndarray:
    x = _check.float32_array("x", x)
    y = np.empty_like(x)
    _ext.gelu_forward(x.reshape(-1), y.reshape(-1))
    return y


def gelu_backward(dy: np.ndarray, x: np.ndarray) -> np.ndarray:
    dy = _check.float32_array("dy", dy)
    x = _check.float32_array("x", x)
    _check.same_shape("dy", dy, "x", x)
    dx = np.empty_like(x)
    _ext.gelu_backward(dy.reshape(-1), x.reshape(-1), dx.reshape(-1))
    return dx


def _attention_args(scores, name):
    s = _check.float32_array(name, scores, min_ndim=2)
    Tq, Tk = s.shape[-2:]
    if Tq > Tk:
        raise ValueError(f"{name} has {Tq} query rows but only {Tk} keys; causal attention needs Tq <= Tk")
    return s


def _mats(a: np.ndarray) -> np.ndarray:
    return a.reshape(-1, a.shape[-2], a.shape[-1])  # (..., Tq, Tk) -> (N, Tq, Tk)


def attention_softmax_forward(scores: np.ndarray, scale: float) -> np.ndarray:
    scores = _attention_args(scores, "scores")
    scale = _check.positive_scalar("scale", scale)
    y = np.empty_like(scores)
    _ext.attention_softmax_forward(_mats(scores), _mats(y), scale)
    return y


def attention_softmax_backward(dy: np.ndarray, y: np.ndarray, scale: float) -> np.ndarray:
    dy = _attention_args(dy, "dy")
    y = _attention_args(y, "y")
    _check.same_shape("dy", dy, "y", y)
    scale = _check.positive_scalar("scale", scale)
    dx = np.empty_like(y)
    _ext.attention_softmax_backward(_mats(dy), _mats(y), _mats(dx), scale)
    return dx


def crossentropy_forward(logits: np.ndarray, targets: np.ndarray):
    logits = _check.float32_array("logits", logits)
    targets = _check.targets_for("targets", targets, logits, "logits")
    probs = np.empty_like(logits)
    losses = np.empty(logits.shape[:-1], np.float32)
    _ext.crossentropy_forward(_rows(logits), targets.reshape(-1), losses.reshape(-1), _rows(probs))
    return losses, probs


def crossentropy_backward(dlosses: np.ndarray, probs: np.ndarray, targets: np.ndarray) -> np.ndarray:
    probs = _check.float32_array("probs", probs)
    targets = _check.targets_for("targets", targets, probs, "probs")
    dlosses = _check.float32_array("dlosses", dlosses, min_ndim=0)
    _check.leading_of("dlosses", dlosses, probs, "probs")
    dlogits = np.empty_like(probs)
    _ext.crossentropy_backward(dlosses.reshape(-1), _rows(probs), targets.reshape(-1), _rows(dlogits))
    return dlogits
