"""The kernel benchmark cases: each kernel's inputs at the S, M and L shapes, the bytes it moves,
and the op PyTorch's CPU eager mode runs for the same computation.

Shared by bench_kernels.py (wall clock, PyTorch in a child process: torch_gpt.serve_kernels) and
kernels_cpu_time.py (one thread, CPU time). Shapes (rows = batch * block, C = d_model, H = heads,
T = block) follow bench_train_step.py's CONFIGS:
S: batch 8, block 32, d_model 48, 4 heads   M: rows 768, C 128, GELU 768 x 512, attention 12x4x64x64
L: batch 16, block 256, d_model 384, 6 heads.  Cross-entropy uses V = 65 (Tiny Shakespeare chars).
"""
from __future__ import annotations

import math

import numpy as np

from pythia.kernels import reference

V = 65
# (rows, C) for softmax/layernorm/cross-entropy, (rows, 4C) for GELU, (B, H, T, T) for attention
SHAPES = {
    "S": dict(rows=8 * 32, C=48, gelu=(8 * 32, 4 * 48), attn=(8, 4, 32, 32)),
    "M": dict(rows=768, C=128, gelu=(768, 512), attn=(12, 4, 64, 64)),
    "L": dict(rows=16 * 256, C=384, gelu=(16 * 256, 4 * 384), attn=(16, 6, 256, 256)),
}
MEMORY_BOUND = {"softmax_backward", "layernorm_forward", "layernorm_backward"}


def _rng():
    return np.random.default_rng(0)


def case(kernel: str, size: str):
    """(the kernel's arguments, the bytes it reads plus writes) for one kernel and shape; seeded."""
    s = SHAPES[size]
    r = _rng()
    f32 = np.float32
    if kernel.startswith("softmax"):
        x = r.standard_normal((s["rows"], s["C"])).astype(f32)
        if kernel == "softmax_forward":
            return (x,), 2 * x.nbytes
        y = reference.softmax_forward(x)
        dy = r.standard_normal(x.shape).astype(f32)
        return (dy, y), 3 * x.nbytes
    if kernel.startswith("layernorm"):
        C = s["C"]
        x = r.standard_normal((s["rows"], C)).astype(f32)
        w = (1 + 0.1 * r.standard_normal(C)).astype(f32)
        b = (0.1 * r.standard_normal(C)).astype(f32)
        if kernel == "layernorm_forward":
            return (x, w, b), 2 * x.nbytes
        _, mean, rstd = reference.layernorm_forward(x, w, b)
        dy = r.standard_normal(x.shape).astype(f32)
        return (dy, x, w, mean, rstd), 3 * x.nbytes
    if kernel.startswith("gelu"):
        x = r.standard_normal(s["gelu"]).astype(f32)
        if kernel == "gelu_forward":
            return (x,), 2 * x.nbytes
        dy = r.standard_normal(x.shape).astype(f32)
        return (dy, x), 3 * x.nbytes
    if kernel.startswith("attention"):
        scale = 1.0 / math.sqrt(s["C"] // s["attn"][1])
        scores = r.standard_normal(s["attn"]).astype(f32)
        # only the lower triangle carries information; the upper one is written as zeros
        if kernel == "attention_softmax_forward":
            return (scores, scale), 2 * scores.nbytes
        y = reference.attention_softmax_forward(scores, scale)
        dy = r.standard_normal(y.shape).astype(f32)
        return (dy, y, scale), 3 * y.nbytes
    if kernel.startswith("crossentropy"):
        z = (2 * r.standard_normal((s["rows"], V))).astype(f32)
        t = r.integers(0, V, s["rows"])
        if kernel == "crossentropy_forward":
            return (z, t), 2 * z.nbytes
        _, p = reference.crossentropy_forward(z, t)
        dl = np.full(s["rows"], 1.0 / s["rows"], f32)
        return (dl, p, t), 2 * p.nbytes
    raise KeyError(kernel)


def torch_thunk(kernel: str, args):
    """The op PyTorch's CPU eager mode runs for the same computation, as a zero-arg callable
    (called in the torch child process)."""
    import torch
    T = [torch.from_numpy(a) if isinstance(a, np.ndarray) else a for a in args]
    aten = torch.ops.aten
    if kernel == "softmax_forward":
        return lambda: torch.softmax(T[0], -1)
    if kernel == "softmax_backward":
        return lambda: torch._softmax_backward_data(T[0], T[1], -1, torch.float32)
    if kernel == "layernorm_forward":
        x, w, b = T
        return lambda: torch.native_layer_norm(x, [x.shape[-1]], w, b, 1e-5)
    if kernel == "layernorm_backward":
        dy, x, w, mean, rstd = T
        mean, rstd = mean[:, None], rstd[:, None]  # aten keeps a trailing 1 on mean/rstd
        b = torch.zeros_like(w)
        return lambda: aten.native_layer_norm_backward(dy, x, [x.shape[-1]], mean, rstd, w, b, [True, True, True])
    if kernel == "gelu_forward":
        return lambda: torch.nn.functional.gelu(T[0], approximate="tanh")
    if kernel == "gelu_backward":
        return lambda: aten.gelu_backward(T[0], T[1], approximate="tanh")
    if kernel == "attention_softmax_forward":
        scores, scale = T
        Tq, Tk = scores.shape[-2:]
        mask = torch.ones(Tq, Tk, dtype=torch.bool).triu(1 + Tk - Tq)  # True above the causal diagonal
        return lambda: torch.softmax((scores * scale).masked_fill_(mask, -math.inf), -1)
    if kernel == "attention_softmax_backward":
        dy, y, scale = T
        return lambda: torch._softmax_backward_data(dy, y, -1, torch.float32).mul_(scale)
    if kernel == "crossentropy_forward":
        z, t = T
        # what F.cross_entropy runs, keeping the log-probabilities the backward needs
        return lambda: aten.nll_loss_forward(torch.log_softmax(z, -1), t, None, 0, -100)
    if kernel == "crossentropy_backward":
        dl, p, t = T
        lsm = torch.log(p)
        total = torch.tensor(float(len(t)))
        return lambda: torch._log_softmax_backward_data(
            aten.nll_loss_backward(dl, lsm, t, None, 0, -100, total), lsm, -1, torch.float32)
    raise KeyError(kernel)


def copy_thunk(nbytes: int):
    # a copy moving `nbytes` in total: read nbytes/2, write nbytes/2
    src = np.ones(nbytes // 8, np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


KERNELS = (
    "softmax_forward", "softmax_backward", "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward", "attention_softmax_forward", "attention_softmax_backward",
    "crossentropy_forward", "crossentropy_backward",
)
