"""Where one greedy decode step of a Llama-family model spends its time, at SmolLM2-135M's shape.

    python benchmarks/profile_llama_decode.py [--threads 1] [--steps 20] [--context 64]
    python benchmarks/profile_llama_decode.py --threads 2 --context 0 --new 256 --steps 5   # prefill

Feeds `--new` tokens (1) after a `--context`-token prompt through `forward_cached`, `--steps` times, with
every matrix product, kernel and attention call wrapped in a timer; prints each part's median
milliseconds per token (summed over the 30 layers), the bandwidth of each group of products
(weight bytes / time), and what is left: the Python of the step itself (the loop, slicing,
the residual adds). Random weights (speed does not depend on them); fp32; the KV cache holds
the prompt. The copy bandwidth (numpy copy of 512 MiB, read + write, best of 5) is the bound
a product can approach.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench_llama import SMOLLM2_135M  # noqa: E402
from pythia import kernels, layers  # noqa: E402
from pythia.models import llama  # noqa: E402
from pythia.system import threads  # noqa: E402


def group(name: str) -> str:
    """The product a matrix name belongs to: qkv, o, gate_up, down or head."""
    for key, g in (("qkv", "qkv"), ("o_proj", "o"), ("gate_up", "gate_up"), ("down_proj", "down")):
        if key in name:
            return "matvec " + g
    return "matvec head"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="BLAS and element-wise kernel threads (decode's rule picks 1); the few-row "
                    "products (matvec) use every core on their own pool whatever this says")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--context", type=int, default=64)
    ap.add_argument("--new", type=int, default=1, help="tokens fed in the step (a prompt's prefill when > 1)")
    args = ap.parse_args()
    model = llama.Llama(llama.LlamaConfig(**SMOLLM2_135M), seed=0)
    threads.blas_set(args.threads)
    kernels.set_thread_limit(args.threads)
    spent: dict[str, float] = defaultdict(float)

    def timer(label, fn):
        def wrapped(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                spent[label] += time.perf_counter() - t
        return wrapped

    mm = model._mm
    model._mm = lambda name, x: timer(group(name), mm)(name, x)
    for name in ("rmsnorm_forward", "rope_forward", "swiglu_forward"):
        setattr(kernels, name, timer(name, getattr(kernels, name)))
    layers.attention_step = timer("attention_step", layers.attention_step)
    layers.embedding_forward = timer("embedding", layers.embedding_forward)

    cache = model.new_kv_cache()
    if args.context:
        model.forward_cached(np.arange(args.context) % SMOLLM2_135M["vocab_size"], cache)
    new = np.arange(7, 7 + args.new)
    per_step: dict[str, list[float]] = defaultdict(list)
    for i in range(args.steps + 2):
        cache.length = args.context
        spent.clear()
        t = time.perf_counter()
        model.forward_cached(new, cache)
        total = time.perf_counter() - t
        if i >= 2:                                               # two warm-up steps
            for k, v in spent.items():
                per_step[k].append(v)
            per_step["python and numpy glue"].append(total - sum(spent.values()))
            per_step["step"].append(total)

    a = np.ones(1 << 27, np.float32)
    b = np.empty_like(a)
    best = min(_timed(lambda: np.copyto(b, a)) for _ in range(5))
    bw = 2 * a.nbytes / best
    sizes = defaultdict(int)
    for name, (w, _) in model.inference_matrices().items():
        sizes[group(name)] += w.nbytes
    print(f"SmolLM2-135M shape, {args.new} token(s) after {args.context}, {args.threads} BLAS/kernel thread(s), "
          f"matvec on {kernels.llama_compiled._pool_threads(1 << 20) if kernels.BACKEND == 'cython' else 1}, "
          f"median of {args.steps} steps; copy bandwidth {bw / 1e9:.1f} GB/s")
    step = statistics.median(per_step.pop("step"))
    for k, v in sorted(per_step.items(), key=lambda kv: -statistics.median(kv[1])):
        ms = statistics.median(v)
        gbs = f"  {sizes[k] / 1e6:6.1f} MB at {sizes[k] / ms / 1e9:5.1f} GB/s" if k in sizes else ""
        print(f"  {k:24s} {ms * 1e3:7.2f} ms {ms / step:6.1%}{gbs}")
    weights = sum(sizes.values())
    print(f"  {'step':24s} {step * 1e3:7.2f} ms   {args.new / step:.1f} tok/s; {weights / 1e6:.0f} MB at copy bandwidth: "
          f"{weights / bw * 1e3:.2f} ms ({bw / weights:.1f} tok/s)")


def _timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


if __name__ == "__main__":
    main()
