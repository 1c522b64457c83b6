"""DeltaOptimizer: AdamW with a warmup + cosine learning-rate schedule and global-norm clipping.

One step, with g the gradient, t the 1-based step count and lr the scheduled rate:
    g  <- g * min(1, grad_clip / (||g||_2 + 1e-6))        clip by the norm over ALL parameters
    p  <- p * (1 - lr * weight_decay)                     decoupled decay, where the mask says so
    m  <- beta1 m + (1 - beta1) g
    v  <- beta2 v + (1 - beta2) g^2
    p  <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
which is `torch.optim.AdamW` (Loshchilov & Hutter 2019) after `clip_grad_norm_`.

The optimizer works on the model's two flat float32 buffers (params_memory, grads_memory) and
a decay mask, a list of (lo, hi, decays) ranges covering the buffer: the Adam arithmetic is one
call of the fused kernel `kernels.adamw_update` (NumPy twin in `kernels/reference.py`) per range,
in place. The moments m, v are two more flat buffers laid out like the parameters; `layout`
(name -> (offset, shape)) names their pieces in checkpoints ("m/<name>", "v/<name>", "t").

    opt = DeltaOptimizer.for_model(model, lr=3e-3, ...)
    opt.step()                    # reads model.grads_memory; or opt.step(flat_gradient)
"""
from __future__ import annotations

import math

import numpy as np

from . import kernels
from .errors import ConfigError, PythiaError


class DeltaOptimizer:
    def __init__(self, params_memory: np.ndarray, grads_memory: np.ndarray,
                 decay_mask: list[tuple[int, int, bool]], layout: dict[str, tuple[int, tuple[int, ...]]], *,
                 lr: float = 1e-3, min_lr: float = 1e-4, warmup_steps: int = 100, total_steps: int = 2000,
                 beta1: float = 0.9, beta2: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.1,
                 grad_clip: float = 1.0):
        _check(lr > 0, f"lr must be > 0, got {lr}; e.g. 1e-3")
        _check(0 <= min_lr <= lr, f"min_lr must lie in [0, lr={lr}], got {min_lr}; e.g. lr / 10")
        _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        _check(total_steps >= 1, f"total_steps (the training steps) must be >= 1, got {total_steps}")
        _check(0 <= beta1 < 1 and 0 <= beta2 < 1, f"beta1 and beta2 must lie in [0, 1), got {beta1}, {beta2}; e.g. 0.9, 0.99")
        _check(eps > 0, f"eps must be > 0, got {eps}")
        _check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}; 0 turns it off")
        _check(grad_clip >= 0, f"grad_clip must be >= 0, got {grad_clip}; 0 turns clipping off")
        n = params_memory.size
        for name, a in (("params_memory", params_memory), ("grads_memory", grads_memory)):
            if not (isinstance(a, np.ndarray) and a.ndim == 1 and a.dtype == np.float32 and a.flags.c_contiguous
                    and a.size == n):
                raise TypeError(f"{name} must be one C-contiguous 1-d float32 array of {n} elements")
        covered = 0
        for lo, hi, _ in decay_mask:
            if lo != covered or hi < lo:
                raise ValueError(f"decay_mask must cover the buffer in order with (lo, hi, decays) ranges; "
                                 f"got a range ({lo}, {hi}) where {covered} was next")
            covered = hi
        if covered != n:
            raise ValueError(f"decay_mask covers {covered} of the {n} parameters")
        self.params_memory, self.grads_memory = params_memory, grads_memory
        self.decay_mask = [(int(lo), int(hi), bool(d)) for lo, hi, d in decay_mask]
        self.layout = dict(layout)
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay, self.grad_clip = float(weight_decay), float(grad_clip)
        self.t = 0
        self._m = np.zeros(n, np.float32)                        # (P,) first moment, laid out like the params
        self._v = np.zeros(n, np.float32)                        # (P,) second moment

    @classmethod
    def for_model(cls, model, **settings) -> "DeltaOptimizer":
        """The optimizer of a model family's buffers, decay mask and parameter layout."""
        return cls(model.params_memory, model.grads_memory, model.decay_mask(), model.layout, **settings)

    def lr_at(self, step: int) -> float:
        """Rate for 0-based step: linear warmup to lr over warmup_steps, cosine down to min_lr at total_steps."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        frac = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (self.lr - self.min_lr)

    def step(self, grads: np.ndarray | None = None) -> dict:
        """One AdamW update of params_memory in place from the flat gradient `grads` (default
        grads_memory); returns {"lr", "grad_norm" (before clipping)}."""
        g = self.grads_memory if grads is None else grads        # (P,)
        if g.shape != self.params_memory.shape or g.dtype != np.float32:
            raise TypeError(f"grads must be a float32 array of shape {self.params_memory.shape}")
        norm = math.sqrt(float(np.dot(g, g)))                    # ||g||_2 over the whole model
        if not math.isfinite(norm):
            raise PythiaError(f"gradient norm is {norm}: training diverged; lower the learning rate (--lr)")
        clip = self.grad_clip / (norm + 1e-6) if self.grad_clip > 0 and norm > self.grad_clip else 1.0
        lr = self.lr_at(self.t)
        self.t += 1
        p = self.params_memory
        for lo, hi, decays in self.decay_mask:                   # the Adam arithmetic: one fused kernel per range
            kernels.adamw_update(p[lo:hi], g[lo:hi], self._m[lo:hi], self._v[lo:hi], lr=lr, beta1=self.beta1,
                                 beta2=self.beta2, eps=self.eps, t=self.t,
                                 weight_decay=self.weight_decay if decays else 0.0, grad_scale=clip)
        return {"lr": lr, "grad_norm": norm}

    # ------------------------------------------------------------------ checkpoints

    def _piece(self, flat: np.ndarray, name: str) -> np.ndarray:
        lo, shape = self.layout[name]
        return flat[lo:lo + math.prod(shape)].reshape(shape)

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Moments by parameter name ("m/<name>", "v/<name>") and the step count "t", as copies."""
        out: dict[str, np.ndarray] = {}
        for k in self.layout:
            out[f"m/{k}"] = self._piece(self._m, k).copy()
            out[f"v/{k}"] = self._piece(self._v, k).copy()
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore state_arrays() output; ValueError naming the first missing or misshapen entry."""
        expected = {"t"} | {f"{w}/{k}" for k in self.layout for w in ("m", "v")}
        missing = sorted(expected - set(arrays))
        if missing:
            raise ValueError(f"optimizer state {missing[0]!r} is missing ({len(missing)} missing in all)")
        extra = sorted(set(arrays) - expected)
        if extra:
            raise ValueError(f"optimizer state {extra[0]!r} does not belong to this model's parameters")
        for k, (_, shape) in self.layout.items():
            for w in ("m", "v"):
                a = np.asarray(arrays[f"{w}/{k}"])
                if a.shape != tuple(shape):
                    raise ValueError(f"optimizer state '{w}/{k}' has shape {a.shape}, expected {tuple(shape)}")
        t = np.asarray(arrays["t"])
        if t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
            raise ValueError(f"optimizer state 't' must be a non-negative integer scalar, got {t!r}")
        for k in self.layout:
            self._piece(self._m, k)[...] = arrays[f"m/{k}"]
            self._piece(self._v, k)[...] = arrays[f"v/{k}"]
        self.t = int(t)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
