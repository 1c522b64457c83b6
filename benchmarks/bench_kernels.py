"""Kernel benchmarks: Cython vs the NumPy reference vs PyTorch CPU, at the S, M and L shapes.

    python -m pytest benchmarks/bench_kernels.py --benchmark-only

One pytest-benchmark group per kernel and shape (e.g. `gelu_forward-M`); inside a group the
rows are `cython`, `numpy` (the reference twin), `torch` (the op a PyTorch CPU model runs,
2 threads; skipped when torch is not importable) and, for the memory-bound kernels, `copy`:
np.copyto moving the same number of bytes (half read, half written) as the kernel does.
`extra_info["bytes"]` is what the kernel reads plus writes, so GB/s = bytes / time.
benchmarks/conftest.py prints the ratio table at the end of the run.

Shapes (DESIGN.md configs; rows = batch * block, C = d_model, H = heads, T = block):
S: batch 8, block 32, d_model 48, 4 heads   M: rows 768, C 128, GELU 768 x 512, attention 12x4x64x64
L: batch 16, block 256, d_model 384, 6 heads.  Cross-entropy uses V = 65 (Tiny Shakespeare chars).
"""
from __future__ import annotations

import importlib.util
import math
import multiprocessing

import numpy as np
import pytest

from pythia.kernels import _loader, reference

compiled, _why = _loader.load_compiled()

HAVE_TORCH = importlib.util.find_spec("torch") is not None  # the torch column is optional


class TorchInChild:
    """PyTorch's ops, timed in a child process started with "spawn" that imports torch before
    anything of Pythia's and without the OpenMP wait setting Pythia made for itself: in one process
    the two libraries share one libgomp and one wait policy (see bench_train_step.py), and torch
    would run under Pythia's. One call runs the op k times (`ops_per_call`, ~3 ms in all, so
    the pipe's round trip is a few percent of it); conftest.py divides by k."""

    def __init__(self):
        from torch_gpt import serve_kernels                   # benchmarks/ is on sys.path under pytest
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_kernels, args=(child,), daemon=True)
        with _loader.without_our_wait_setting():
            self.proc.start()
        self.conn.recv()

    def setup(self, kernel: str, size: str) -> int:
        self.conn.send(("setup", kernel, size))
        return self.conn.recv()

    def run(self) -> None:
        self.conn.send("run")
        self.conn.recv()

    def close(self) -> None:
        self.conn.send("stop")
        self.proc.join(timeout=30)


@pytest.fixture(scope="module")
def torch_child():
    if not HAVE_TORCH:
        pytest.skip("torch is not installed")
    child = TorchInChild()
    yield child
    child.close()

V = 65
# (rows, C) for softmax/layernorm/cross-entropy, (rows, 4C) for GELU, (B, H, T, T) for attention
SHAPES = {
    "S": dict(rows=8 * 32, C=48, gelu=(8 * 32, 4 * 48), attn=(8, 4, 32, 32)),
    "M": dict(rows=768, C=128, gelu=(768, 512), attn=(12, 4, 64, 64)),
    "L": dict(rows=16 * 256, C=384, gelu=(16 * 256, 4 * 384), attn=(16, 6, 256, 256)),
}
MEMORY_BOUND = {"softmax_backward", "layernorm_forward", "layernorm_backward"}
IMPLS = ("cython", "numpy", "torch", "copy")


def _rng():
    return np.random.default_rng(0)


def _case(kernel: str, size: str):
    """Return (args for our kernels, bytes moved, torch thunk factory) for one kernel and shape."""
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


def _torch_thunk(kernel: str, args):
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


def _copy_thunk(nbytes: int):
    # a copy moving `nbytes` in total: read nbytes/2, write nbytes/2
    src = np.ones(nbytes // 8, np.float32)
    dst = np.empty_like(src)
    return lambda: np.copyto(dst, src)


KERNELS = (
    "softmax_forward", "softmax_backward", "layernorm_forward", "layernorm_backward",
    "gelu_forward", "gelu_backward", "attention_softmax_forward", "attention_softmax_backward",
    "crossentropy_forward", "crossentropy_backward",
)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", tuple(SHAPES))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel(benchmark, request, kernel: str, size: str, impl: str) -> None:
    args, nbytes = _case(kernel, size)
    if impl == "cython":
        if compiled is None:
            pytest.skip(_why)
        fn = getattr(compiled, kernel)
        thunk = lambda: fn(*args)  # noqa: E731
    elif impl == "numpy":
        fn = getattr(reference, kernel)
        thunk = lambda: fn(*args)  # noqa: E731
    elif impl == "torch":
        child = request.getfixturevalue("torch_child")       # skips when torch is not installed
        benchmark.extra_info["ops_per_call"] = child.setup(kernel, size)
        benchmark.group = f"{kernel}-{size}"
        benchmark.extra_info["bytes"] = nbytes
        benchmark.extra_info["impl"] = impl
        benchmark.pedantic(child.run, rounds=15, warmup_rounds=2)
        return
    else:
        if kernel not in MEMORY_BOUND:
            pytest.skip("copy baseline only for the memory-bound kernels")
        thunk = _copy_thunk(nbytes)
    benchmark.group = f"{kernel}-{size}"
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["impl"] = impl
    benchmark(thunk)
