"""Kernel benchmarks: Cython vs the NumPy reference vs PyTorch CPU, at the S, M and L shapes.

    python -m pytest benchmarks/bench_kernels.py --benchmark-only

One pytest-benchmark group per kernel and shape (e.g. `gelu_forward-M`); inside a group the
rows are `cython`, `numpy` (the reference twin), `torch` (the op a PyTorch CPU model runs,
2 threads; skipped when torch is not importable) and, for the memory-bound kernels, `copy`:
np.copyto moving the same number of bytes (half read, half written) as the kernel does.
`extra_info["bytes"]` is what the kernel reads plus writes, so GB/s = bytes / time.
benchmarks/conftest.py prints the ratio table at the end of the run.

The cases (inputs, bytes moved, PyTorch's op) are kernel_cases.py's, at bench_train_step.py's
S, M and L configs.
"""
from __future__ import annotations

import importlib.util
import multiprocessing

import pytest
from kernel_cases import KERNELS, MEMORY_BOUND, SHAPES, case, copy_thunk  # benchmarks/ is on sys.path

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

IMPLS = ("cython", "numpy", "torch", "copy")


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("size", tuple(SHAPES))
@pytest.mark.parametrize("kernel", KERNELS)
def test_kernel(benchmark, request, kernel: str, size: str, impl: str) -> None:
    args, nbytes = case(kernel, size)
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
        thunk = copy_thunk(nbytes)
    benchmark.group = f"{kernel}-{size}"
    benchmark.extra_info["bytes"] = nbytes
    benchmark.extra_info["impl"] = impl
    benchmark(thunk)
