"""Kernels on one thread each, timed in CPU time: a view that a busy machine disturbs little.

    python benchmarks/kernels_cpu_time.py [S,M,L] [--budget SECONDS]

Wall-clock benchmarks (bench_kernels.py) on 2 cores shared with other jobs measure the
scheduler as much as the code. Here Cython, NumPy and PyTorch all run on one thread
(OMP_NUM_THREADS=1, torch.set_num_threads(1)) and each call is timed with the calling
thread's CPU clock (time.thread_time), minimum over repeated calls (about --budget seconds of
them, default 0.3, per kernel and library). Same cases as bench_kernels.py (kernel_cases.py);
prints a markdown table of microseconds and ratios. With every library on one thread, PyTorch can
share this process (the OpenMP wait policy that bench_kernels.py keeps apart does not matter on
one thread).
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

os.environ["OMP_NUM_THREADS"] = "1"  # before any OpenMP runtime loads
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kernel_cases as K  # noqa: E402

from pythia.kernels import _loader, reference  # noqa: E402


def cpu_min(fn, budget: float = 0.3) -> float:
    """Minimum thread CPU time of fn() over about `budget` seconds of calls (at least 5)."""
    fn()
    best, spent, n = float("inf"), 0.0, 0
    while spent < budget or n < 5:
        t0 = time.thread_time()
        fn()
        dt = time.thread_time() - t0
        best, spent, n = min(best, dt), spent + dt, n + 1
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("sizes", nargs="?", default="S,M,L", help="comma-separated configs (default S,M,L)")
    ap.add_argument("--budget", type=float, default=0.3, help="seconds of calls per kernel and library")
    args_ = ap.parse_args()
    sizes = args_.sizes.split(",")
    unknown = [z for z in sizes if z not in K.SHAPES]
    if unknown:
        ap.error(f"unknown config {unknown[0]!r}; choose from {','.join(K.SHAPES)}")
    compiled, why = _loader.load_compiled()
    if compiled is None:
        sys.exit(f"compiled kernels unavailable: {why}")
    torch = None
    if importlib.util.find_spec("torch") is not None:
        import torch
        torch.set_num_threads(1)
    print("| kernel-shape | cython us | numpy us | torch us | copy us | numpy/cython | torch/cython | cython/copy |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for kernel in K.KERNELS:
        for size in sizes:
            args, nbytes = K.case(kernel, size)
            fc, fr = getattr(compiled, kernel), getattr(reference, kernel)
            c = cpu_min(lambda: fc(*args), args_.budget)
            r = cpu_min(lambda: fr(*args), args_.budget)
            t = cpu_min(K.torch_thunk(kernel, args), args_.budget) if torch is not None else None
            cp = cpu_min(K.copy_thunk(nbytes), args_.budget) if kernel in K.MEMORY_BOUND else None
            cells = [f"{v * 1e6:,.1f}" if v else "" for v in (c, r, t, cp)]
            ratios = [f"{r / c:.2f}", f"{t / c:.2f}" if t else "", f"{c / cp:.2f}" if cp else ""]
            print(f"| {kernel}-{size} | " + " | ".join(cells + ratios) + " |", flush=True)


if __name__ == "__main__":
    main()
