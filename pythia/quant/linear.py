"""QuantLinear: one linear map y = x W^T + b with W (O, C) held in Q8_0.

A model swaps a float weight for one of these and calls `apply(x)` where it computed
`x @ w + b`. The same object serves as a quantized embedding table (rows are tokens):
`take(idx)` dequantizes the rows it needs, and `apply(h)` is then the tied output head.
`arrays(prefix)` / `from_arrays(...)` store it in a checkpoint as plain int8 and float32
arrays (no pickle), so it loads without requantizing.
"""
from __future__ import annotations

import importlib

import numpy as np

from . import _check
from ._check import QK
from .reference import dequantize_q8_0, quantize_q8_0

_backend = importlib.import_module(__package__)   # pythia.quant: q8_matmul of the active backend


class QuantLinear:
    """Q8_0 weight q (O, C) int8 with scales (O, C // 32) float32, and an optional bias (O,)."""

    __slots__ = ("q", "scales", "bias")

    def __init__(self, q: np.ndarray, scales: np.ndarray, bias: np.ndarray | None = None):
        self.q, self.scales = _check.quantized(q, scales, values=True)
        if bias is not None:
            bias = np.ascontiguousarray(bias, dtype=np.float32)
            if bias.shape != (self.q.shape[0],):
                raise ValueError(f"bias must have shape ({self.q.shape[0]},), got {bias.shape}")
        self.bias = bias

    @classmethod
    def from_out_in(cls, w: np.ndarray, bias: np.ndarray | None = None) -> "QuantLinear":
        """From W (O, C), the layout of torch.nn.Linear and of an embedding table (V, C)."""
        return cls(*quantize_q8_0(w), bias)

    @classmethod
    def from_in_out(cls, w: np.ndarray, bias: np.ndarray | None = None) -> "QuantLinear":
        """From W^T (C, O), the layout of GPT-2's Conv1D weights (y = x @ w + b)."""
        if not isinstance(w, np.ndarray) or w.ndim != 2:
            raise ValueError(f"w must be a 2-d (in, out) weight, got {getattr(w, 'shape', type(w).__name__)}")
        return cls.from_out_in(w.T, bias)

    @property
    def shape(self) -> tuple[int, int]:
        """(O, C): outputs, inputs."""
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.scales.nbytes + (0 if self.bias is None else self.bias.nbytes)

    def apply(self, x: np.ndarray, threads: int | None = None) -> np.ndarray:
        """x (..., C) float32 -> x W^T + b (..., O); threads=None: the backend's default."""
        t = _backend.default_threads() if threads is None else threads
        return _backend.q8_apply(x, self.q, self.scales, self.bias, t)   # q, scales checked in __init__

    def take(self, idx: np.ndarray) -> np.ndarray:
        """Rows idx (...) of W, dequantized: (..., C) float32 (an embedding lookup)."""
        q, d = self.q[idx], self.scales[idx]                          # (..., C), (..., nb)
        w = q.reshape(*q.shape[:-1], -1, QK).astype(np.float32) * d[..., None]   # (..., nb, QK)
        return w.reshape(q.shape)

    def dequantize(self) -> np.ndarray:
        """W (O, C) float32."""
        return dequantize_q8_0(self.q, self.scales)

    def arrays(self, prefix: str) -> dict[str, np.ndarray]:
        """{prefix.q, prefix.scales[, prefix.bias]} for np.savez."""
        out = {f"{prefix}.q": self.q, f"{prefix}.scales": self.scales}
        if self.bias is not None:
            out[f"{prefix}.bias"] = self.bias
        return out

    @classmethod
    def from_arrays(cls, arrays, prefix: str) -> "QuantLinear":
        """Inverse of arrays(); a missing or malformed entry raises ValueError naming it."""
        try:
            q, scales = arrays[f"{prefix}.q"], arrays[f"{prefix}.scales"]
        except KeyError as err:
            raise ValueError(f"quantized weight {prefix!r} lacks {err.args[0]!r}") from None
        bias = arrays[f"{prefix}.bias"] if f"{prefix}.bias" in arrays else None
        try:
            return cls(np.asarray(q), np.asarray(scales), None if bias is None else np.asarray(bias))
        except (TypeError, ValueError) as err:
            raise ValueError(f"quantized weight {prefix!r} is malformed: {err}") from None


def pack(layers: dict[str, QuantLinear]) -> dict[str, np.ndarray]:
    """Every layer's arrays under its name, for one np.savez: {name.q, name.scales[, name.bias]}."""
    out: dict[str, np.ndarray] = {}
    for name, layer in layers.items():
        out.update(layer.arrays(name))
    return out


def unpack(arrays) -> dict[str, QuantLinear]:
    """Inverse of pack(): a QuantLinear for each `name.q` key (np.load(..., allow_pickle=False)
    result or dict); the other keys are left to the caller."""
    return {k[:-2]: QuantLinear.from_arrays(arrays, k[:-2]) for k in arrays if k.endswith(".q")}
