"""DeltaOptimizer: AdamW with a warmup + cosine learning-rate schedule and global-norm clipping.

One step, with g the gradient, t the 1-based step count and lr the scheduled rate:
    g  <- g * min(1, grad_clip / (||g||_2 + 1e-6))        clip by the norm over ALL parameters
    p  <- p * (1 - lr * weight_decay)                     decoupled decay, 2-d params only
    m  <- beta1 m + (1 - beta1) g
    v  <- beta2 v + (1 - beta2) g^2
    p  <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
which is `torch.optim.AdamW` (Loshchilov & Hutter 2019) after `clip_grad_norm_`. Weight decay
applies to matrices and embeddings (ndim == 2), never to biases or LayerNorm gains and shifts.

Speed: the moments live in two flat float32 buffers, and the Adam arithmetic is one pass of
the fused kernel `kernels.adamw_update` (NumPy twin in `kernels/reference.py`, which spells out
the same formula) over each run of decaying or non-decaying tensors. When the parameters are
views that tile one flat float32 buffer (as `Pythia` allocates them, matrices first) and the
gradients tile another the same way, the kernel reads the gradients and updates the parameters
in place; otherwise the optimizer gathers both with one concatenate each and writes the
parameters back. Both paths compute the same float32 values. Parameters are updated in place,
so the model's dict keeps pointing at the same arrays.
"""
from __future__ import annotations

import math

import numpy as np

from . import kernels
from .errors import ConfigError, PythiaError


class DeltaOptimizer:
    def __init__(self, params: dict[str, np.ndarray], *, lr: float = 1e-3, min_lr: float = 1e-4,
                 warmup_steps: int = 100, total_steps: int = 2000, beta1: float = 0.9, beta2: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.1, grad_clip: float = 1.0):
        _check(lr > 0, f"lr must be > 0, got {lr}; e.g. 1e-3")
        _check(0 <= min_lr <= lr, f"min_lr must lie in [0, lr={lr}], got {min_lr}; e.g. lr / 10")
        _check(warmup_steps >= 0, f"warmup_steps must be >= 0, got {warmup_steps}")
        _check(total_steps >= 1, f"total_steps (the training steps) must be >= 1, got {total_steps}")
        _check(0 <= beta1 < 1 and 0 <= beta2 < 1, f"beta1 and beta2 must lie in [0, 1), got {beta1}, {beta2}; e.g. 0.9, 0.99")
        _check(eps > 0, f"eps must be > 0, got {eps}")
        _check(weight_decay >= 0, f"weight_decay must be >= 0, got {weight_decay}; 0 turns it off")
        _check(grad_clip >= 0, f"grad_clip must be >= 0, got {grad_clip}; 0 turns clipping off")
        self.params = params
        self.lr, self.min_lr = float(lr), float(min_lr)
        self.warmup_steps, self.total_steps = int(warmup_steps), int(total_steps)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self.weight_decay, self.grad_clip = float(weight_decay), float(grad_clip)
        self.t = 0
        # the flat order: memory order when the params tile one buffer, else the dict's order
        self._flat_p = _tiled_buffer(params)                     # (n,) the params end to end, or None
        self.names = sorted(params, key=lambda k: _address(params[k])) if self._flat_p is not None else list(params)
        sizes = [params[k].size for k in self.names]
        self._offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
        n = int(self._offsets[-1])
        self._m = np.zeros(n, np.float32)                        # first moment, all params end to end
        self._v = np.zeros(n, np.float32)                        # second moment
        self._g = np.empty(n, np.float32)                        # gathered gradient (separate arrays)
        self._p = np.empty(0 if self._flat_p is not None else n, np.float32)  # gathered params (separate arrays)
        self.decays = {k: params[k].ndim == 2 for k in self.names}  # matrices and embeddings decay
        # (param, its slice of the gathered copy) once, so step() does no slicing
        self._targets = [] if self._flat_p is not None else [(params[k], self._view(self._p, i))
                                                              for i, k in enumerate(self.names)]
        # [lo, hi, decays?): consecutive tensors that do or do not decay, merged (two runs when
        # matrices come first, as in Pythia's buffers)
        self._runs = _runs([self.decays[k] for k in self.names], self._offsets)
        self._flat_g_key: tuple = ()                             # ids of the last grads found tiled
        self._flat_g: np.ndarray | None = None

    def _view(self, flat: np.ndarray, i: int) -> np.ndarray:
        k = self.names[i]
        return flat[self._offsets[i]:self._offsets[i + 1]].reshape(self.params[k].shape)

    def lr_at(self, step: int) -> float:
        """Rate for 0-based step: linear warmup to lr over warmup_steps, cosine down to min_lr at total_steps."""
        if step < self.warmup_steps:
            return self.lr * (step + 1) / self.warmup_steps
        if step >= self.total_steps:
            return self.min_lr
        frac = (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps)
        return self.min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (self.lr - self.min_lr)

    def step(self, grads: dict[str, np.ndarray]) -> dict:
        """One AdamW update of every parameter in place; returns {"lr", "grad_norm" (before clipping)}."""
        g = self._flat_grads(grads)                              # (n,) the model's own flat gradient buffer
        if g is None:
            g = self._g
            np.concatenate([grads[k].reshape(-1) for k in self.names], out=g)  # g = all gradients end to end
        norm = math.sqrt(float(np.dot(g, g)))                    # ||g||_2 over the whole model
        if not math.isfinite(norm):
            raise PythiaError(f"gradient norm is {norm}: training diverged; lower the learning rate (--lr)")
        clip = self.grad_clip / (norm + 1e-6) if self.grad_clip > 0 and norm > self.grad_clip else 1.0
        lr = self.lr_at(self.t)
        self.t += 1
        p = self._flat_p
        if p is None:                                            # separate arrays: update a gathered copy
            p = self._p
            np.concatenate([self.params[k].reshape(-1) for k in self.names], out=p)
        for lo, hi, decays in self._runs:                        # the Adam arithmetic: one fused kernel per run
            kernels.adamw_update(p[lo:hi], g[lo:hi], self._m[lo:hi], self._v[lo:hi], lr=lr, beta1=self.beta1,
                                 beta2=self.beta2, eps=self.eps, t=self.t,
                                 weight_decay=self.weight_decay if decays else 0.0, grad_scale=clip)
        if self._flat_p is None:
            for param, updated in self._targets:
                param[...] = updated                             # write the copy back
        return {"lr": lr, "grad_norm": norm}

    def _flat_grads(self, grads: dict[str, np.ndarray]) -> np.ndarray | None:
        """The flat buffer the gradients tile in the params' order, or None (then they are gathered)."""
        if self._flat_p is None:
            return None
        key = tuple(id(grads[k]) for k in self.names)
        if key != self._flat_g_key:                              # new arrays: check their layout once
            flat = _tiled_buffer(grads)
            ok = flat is not None and flat.size == self._offsets[-1] and all(
                _address(grads[k]) - _address(flat) == 4 * int(self._offsets[i]) for i, k in enumerate(self.names))
            self._flat_g_key, self._flat_g = key, (flat if ok else None)
        return self._flat_g

    # ------------------------------------------------------------------ checkpoints

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Moments by parameter name ("m/<name>", "v/<name>") and the step count "t", as copies."""
        out: dict[str, np.ndarray] = {}
        for i, k in enumerate(self.names):
            out[f"m/{k}"] = self._view(self._m, i).copy()
            out[f"v/{k}"] = self._view(self._v, i).copy()
        out["t"] = np.array(self.t, dtype=np.int64)
        return out

    def load_state_arrays(self, arrays: dict[str, np.ndarray]) -> None:
        """Restore state_arrays() output; ValueError naming the first missing or misshapen entry."""
        expected = {"t"} | {f"{w}/{k}" for k in self.names for w in ("m", "v")}
        missing = sorted(expected - set(arrays))
        if missing:
            raise ValueError(f"optimizer state {missing[0]!r} is missing ({len(missing)} missing in all)")
        extra = sorted(set(arrays) - expected)
        if extra:
            raise ValueError(f"optimizer state {extra[0]!r} does not belong to this model's parameters")
        for k in self.names:
            for w in ("m", "v"):
                a = np.asarray(arrays[f"{w}/{k}"])
                if a.shape != self.params[k].shape:
                    raise ValueError(f"optimizer state '{w}/{k}' has shape {a.shape}, expected {self.params[k].shape}")
        t = np.asarray(arrays["t"])
        if t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
            raise ValueError(f"optimizer state 't' must be a non-negative integer scalar, got {t!r}")
        for i, k in enumerate(self.names):
            self._view(self._m, i)[...] = arrays[f"m/{k}"]
            self._view(self._v, i)[...] = arrays[f"v/{k}"]
        self.t = int(t)


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def _tiled_buffer(arrays: dict[str, np.ndarray]) -> np.ndarray | None:
    """The 1-d float32 buffer that the arrays exactly tile as C-contiguous views, else None."""
    bases = {id(a.base) for a in arrays.values()}
    if len(bases) != 1:
        return None
    flat = next(iter(arrays.values())).base
    if (flat is None or not isinstance(flat, np.ndarray) or flat.ndim != 1 or flat.dtype != np.float32
            or not flat.flags.c_contiguous):
        return None
    if any(a.dtype != np.float32 or not a.flags.c_contiguous for a in arrays.values()):
        return None
    spans = sorted((_address(a), a.size) for a in arrays.values())
    pos = _address(flat)
    for addr, size in spans:                                     # consecutive, no gaps, no overlaps
        if addr != pos:
            return None
        pos += 4 * size
    return flat if pos == _address(flat) + 4 * flat.size else None


def _runs(flags: list[bool], offsets: np.ndarray) -> list[tuple[int, int, bool]]:
    """(lo, hi, flag): the flat buffer cut where the tensors' flag changes."""
    runs: list[tuple[int, int, bool]] = []
    for i, f in enumerate(flags):
        lo, hi = int(offsets[i]), int(offsets[i + 1])
        if runs and runs[-1][2] == f and runs[-1][1] == lo:
            runs[-1] = (runs[-1][0], hi, f)
        elif hi > lo:
            runs.append((lo, hi, f))
    return runs


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)
