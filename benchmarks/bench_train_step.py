"""Training step speed: Pythia vs PyTorch (eager, + SDPA, + SDPA + torch.compile), same model.

    python benchmarks/bench_train_step.py                  # S M L, 3 interleaved runs, table
    python benchmarks/bench_train_step.py S M --runs 5
    python -m pytest benchmarks/bench_train_step.py --benchmark-only

Both ways run Pythia and the three PyTorch variants of torch_gpt.py (explicit attention,
F.scaled_dot_product_attention, and that under torch.compile; each PyTorch variant in its own
spawned process, 2 threads) on identical weights and batches. Vocabulary 65 (Tiny Shakespeare's
characters); the data is random tokens, since the step's cost does not depend on which tokens
they are. The speed ratio of a config is the best (fastest) PyTorch column's time / Pythia's
time, held to a floor per config (S >= 1.3, M >= 1.3, L >= 1.1). The compile column is
skipped, with the reason printed, where inductor cannot build (it compiles C++ and needs a
compiler).

The script: per config, `--runs` rounds; in each round every side (in a rotating order) runs
`--warmup` steps, then `--steps` timed steps (each timed in its own process), and the round's
time of a side is the median step. The table gives the median over rounds with the range, and
the ratio as the median of the rounds' ratios with their range. It also measures the machine's
float32 matrix-product rate at the start of each round (the best of `--peak-reps` np.matmul of
two `--peak-n` square matrices on all cores' BLAS threads), takes the best of the run as the
peak (a disturbed measurement only lowers it) and prints the fraction of it a Pythia step
reaches, counting per step 6 x (weights of the matrix products) x tokens for the linear
layers and the tied head (2 flops per multiply-add, forward once and backward twice) plus
12 x layers x tokens x block x d_model for attention's two products over the full T x T
square (the count nanoGPT and PaLM use; the causal triangle is half of it).

Under pytest: one group per config; the table at the end gives ms/step min (median) per column
and the ratio from the min times (the least disturbed on a shared machine).
"""
from __future__ import annotations

import argparse
import importlib.util
import multiprocessing
import os
import platform
import sys
import time

import numpy as np
import pytest

# A spawned PyTorch child runs this file as __mp_main__ before torch_gpt: keep Pythia (and the
# OpenMP runtime its kernels load) out of it, so torch starts its own (see TorchInChild).
if __name__ != "__mp_main__":
    from pythia import DeltaOptimizer, Pythia, PythiaConfig
    from pythia import kernels
    from pythia.system import threads
    from pythia.kernels import _loader

CONFIGS = {  # name: (batch, block, d_model, n_layer, n_head, rounds)
    "S": (8, 32, 48, 3, 4, 100),
    "M": (12, 64, 128, 4, 4, 50),
    "L": (16, 256, 384, 6, 6, 3),
}
V = 65
TARGETS = {"S": 1.3, "M": 1.3, "L": 1.1}   # floors of best PyTorch time / Pythia time
TORCH = {"eager": "PyTorch eager", "sdpa": "PyTorch + SDPA", "compile": "PyTorch + SDPA + compile"}
RESULTS: dict[tuple[str, str], tuple[float, float]] = {}  # (config, impl) -> (min s, median s)
NOTES: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def summary_table(request):
    """After the module's benchmarks, write the side-by-side table to the terminal."""
    yield
    tr = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if tr is None or not RESULTS:
        return
    with capture.global_and_fixture_disabled():             # teardown output is captured otherwise
        _write_table(tr)


def _write_table(tr) -> None:
    tr.write_line("")
    tr.write_line(f"training step, side by side ({threads.describe()}; kernels {kernels.BACKEND}; "
                  f"torch threads {NOTES.get('torch_threads', '-')})")
    tr.write_line("| config | Pythia ms/step min (median) | " + " | ".join(TORCH.values())
                  + " | best PyTorch / Pythia | floor | met |")
    tr.write_line("|---|" + "---:|" * (len(TORCH) + 3) + "---|")
    for name in CONFIGS:
        p = RESULTS.get((name, "pythia"))
        if p is None:
            continue
        cols = [RESULTS.get((name, v)) for v in TORCH]
        best = min((c[0] for c in cols if c), default=None)
        ratio = best / p[0] if best else None
        cells = [f"{c[0] * 1e3:,.2f} ({c[1] * 1e3:,.2f})" if c else "-" for c in cols]
        tr.write_line(f"| {name} | {p[0] * 1e3:,.2f} ({p[1] * 1e3:,.2f}) | " + " | ".join(cells)
                      + (f" | {ratio:.2f} | {TARGETS[name]} | {'yes' if ratio >= TARGETS[name] else 'no'} |"
                         if ratio else f" | - | {TARGETS[name]} | - |"))
    for key, why in NOTES.items():
        if key.startswith("skip"):
            tr.write_line(f"{key[5:]}: {why}")
    if "blas_choices" in NOTES:
        tr.write_line(f"Pythia's threads: {NOTES['blas_choices']}")


def _record(benchmark, name: str, impl: str) -> None:
    s = benchmark.stats.stats
    RESULTS[(name, impl)] = (s.min, s.median)


def batch(cfg, seed=0):
    B, T = cfg[0], cfg[1]
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def pythia_model(cfg):
    from pythia.system.sharding import ShardedModel
    B, T, C, L, H, _ = cfg
    # as the train command runs it: wrapped in the system layer's thread rule and batch shards
    return ShardedModel(Pythia(PythiaConfig(vocab_size=V, block_size=T, d_model=C, n_layer=L, n_head=H), seed=0))


def pythia_step(name: str):
    """One Pythia training step on config `name`, as a callable returning the loss."""
    cfg = CONFIGS[name]
    model = pythia_model(cfg)
    opt = DeltaOptimizer.for_model(model, lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=1000)
    x, y = batch(cfg)

    def step():
        loss = model.loss(x, y)
        model.backward()
        opt.step()
        return loss
    step.model = model
    return step


# PyTorch runs in a child process. Both libraries use an OpenMP runtime, and torch ships its own
# libgomp.so.1, so in one process they share whichever loaded first, with one wait policy:
# measured, a passive wait policy (OMP_WAIT_POLICY=passive) made torch 10-30% slower at S
# and M, while torch's default (long spins) made Pythia's M step 2-4x slower. A child started with "spawn"
# imports torch (torch_gpt.py) before anything else, so each library runs at its own defaults.
# The parent times each round trip (a step plus a pipe message, ~0.1 ms) with pytest-benchmark.

class TorchInChild:
    """A PyTorch variant's training step (torch_gpt.py, 2 threads) in a spawned child.

    `skip` is None when the child is ready, else why the variant cannot run (no torch, or
    torch.compile could not build); then the child has already ended."""

    def __init__(self, name: str, variant: str = "sdpa"):
        self.skip, self.proc = None, None
        if importlib.util.find_spec("torch") is None:
            self.skip = "torch is not installed"
            return
        from torch_gpt import serve_steps                      # benchmarks/ is on sys.path
        B, T, C, L, H = CONFIGS[name][:5]
        params = {k: np.array(p) for k, p in pythia_model(CONFIGS[name]).params.items()}  # same weights
        x, y = batch(CONFIGS[name])                              # same batch
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_steps, args=(child, V, T, C, L, H, params, x, y),
                                kwargs={"variant": variant}, daemon=True)
        # a spawned child inherits os.environ: drop the wait policy Pythia set for itself, so torch
        # starts at its own defaults (a policy the user set stays)
        with _loader.without_our_wait_setting():
            self.proc.start()
        status, detail = self.conn.recv()
        if status == "skip":
            self.skip = detail
            self.proc.join(timeout=30)
        else:
            NOTES["torch_threads"] = detail

    def __call__(self) -> float:
        self.conn.send("step")
        return self.conn.recv()

    def times(self, n: int) -> list[float]:
        """Seconds of each of n steps, timed inside the child."""
        self.conn.send(("time", n))
        return self.conn.recv()[0]

    def close(self) -> None:
        if self.skip is None and self.proc is not None:
            self.conn.send("stop")
            self.proc.join(timeout=30)


# Pythia and PyTorch of one config run back to back, so all see the same load on a shared machine
@pytest.mark.parametrize("name, impl", [(n, i) for n in CONFIGS for i in ("pythia", *TORCH)])
def test_step(benchmark, name, impl):
    cfg = CONFIGS[name]
    step = pythia_step(name) if impl == "pythia" else TorchInChild(name, impl)
    if impl != "pythia" and step.skip:
        NOTES[f"skip {TORCH[impl]} at {name}"] = step.skip
        pytest.skip(step.skip)
    benchmark.group = f"train-step-{name}"
    benchmark.extra_info.update(tokens=cfg[0] * cfg[1], backend=kernels.BACKEND if impl == "pythia" else impl)
    try:
        loss = benchmark.pedantic(step, rounds=cfg[5], warmup_rounds=2)
    finally:
        if impl != "pythia":
            step.close()
    assert np.isfinite(loss)
    if impl == "pythia":
        shards = len(step.model._acts)
        B, T = batch(cfg)[0].shape
        choices = threads.blas_threads_for(B * T * threads.widest_per_token(step.model)) or threads.blas_get()
        benchmark.extra_info.update(blas_threads=choices, shards=shards)
        how = f"batch split in {shards} shards, 1 BLAS thread each" if shards > 1 else f"BLAS threads {choices}"
        NOTES["blas_choices"] = NOTES.get("blas_choices", "") + f"{name}: {how}; "
    _record(benchmark, name, impl)


# ----------------------------------------------------------------------------- the script

def step_flops(name: str) -> tuple[float, float]:
    """(flops of the matrix products of the linear layers and head, of attention) per training step.

    Linear layers: 12 C^2 weights per layer (qkv 3C^2, projection C^2, MLP 4C^2 + 4C^2) and the
    tied head's C V; 2 flops per multiply-add per token forward, 4 backward (input and weight
    gradients): 6 x weights x tokens. Attention: q k^T and p v are 2 T hs multiply-adds per query
    and head each, so 4 T C flops per token forward and twice that backward: 12 x layers x tokens
    x T x C over the full square (the causal triangle needs half)."""
    B, T, C, L = CONFIGS[name][:4]
    tokens = B * T
    return 6.0 * (12 * C * C * L + C * V) * tokens, 12.0 * L * tokens * T * C


def sgemm_peak(n: int, reps: int) -> float:
    """Best float32 np.matmul rate of two n x n matrices on all cores' BLAS threads, in flop/s."""
    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((n, n), dtype=np.float32), rng.standard_normal((n, n), dtype=np.float32)
    out = np.empty((n, n), np.float32)
    best = float("inf")
    with threads.blas_threads(threads.cores()):
        np.matmul(a, b, out=out)                                   # wake the threads, touch the pages
        for _ in range(reps):
            t0 = time.perf_counter()
            np.matmul(a, b, out=out)
            best = min(best, time.perf_counter() - t0)
    return 2.0 * n ** 3 / best


def pythia_times(step, warmup: int, n: int) -> list[float]:
    for _ in range(warmup):
        step()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        out.append(time.perf_counter() - t0)
    return out


def _median(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[len(xs) // 2] if len(xs) % 2 else (xs[len(xs) // 2 - 1] + xs[len(xs) // 2]) / 2


def _span(xs: list[float], scale: float = 1.0, fmt: str = "{:,.2f}") -> str:
    """median (min-max) of xs, times scale."""
    xs = sorted(x * scale for x in xs)
    return fmt.format(_median(xs)) + (f" ({fmt.format(xs[0])}-{fmt.format(xs[-1])})" if len(xs) > 1 else "")


def run_config(name: str, args, variants: list[str]) -> dict:
    """Rounds of interleaved sides for one config: {side: [median step s per round], "peak": [...]}."""
    step = pythia_step(name)
    children = {v: TorchInChild(name, v) for v in variants}
    skips = {v: c.skip for v, c in children.items() if c.skip}
    sides = ["pythia"] + [v for v in variants if v not in skips]
    steps = args.steps or max(3, CONFIGS[name][5] // 2)
    got: dict = {s: [] for s in sides} | {"peak": [], "skips": skips}
    try:
        for r in range(args.runs):
            got["peak"].append(sgemm_peak(args.peak_n, args.peak_reps))
            for side in sides[r % len(sides):] + sides[:r % len(sides)]:      # rotate who goes first
                if side == "pythia":
                    t = pythia_times(step, args.warmup, steps)
                else:
                    children[side].times(args.warmup)
                    t = children[side].times(steps)
                got[side].append(float(np.median(t)))
    finally:
        for c in children.values():
            c.close()
    got["shards"] = len(step.model._acts)
    return got


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Training step: Pythia vs PyTorch eager, + SDPA and + SDPA + torch.compile, "
                    "interleaved rounds, each side in its own process.",
        epilog="example: python benchmarks/bench_train_step.py S M L --runs 3\n"
               "         python benchmarks/bench_train_step.py S --runs 1 --steps 2 --variants eager",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--runs", type=int, default=3, help="interleaved rounds per config (default 3)")
    ap.add_argument("--steps", type=int, default=0, help="timed steps per side and round (default: by config)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps before each side's timed steps")
    ap.add_argument("--variants", nargs="*", default=list(TORCH), choices=list(TORCH),
                    help="PyTorch columns to run (default: all)")
    ap.add_argument("--peak-n", type=int, default=4096, help="matrix size of the sgemm peak (default 4096)")
    ap.add_argument("--peak-reps", type=int, default=3)
    args = ap.parse_args(argv)
    if args.runs < 1 or args.steps < 0 or args.warmup < 0 or args.peak_n < 1 or args.peak_reps < 1:
        print("error: --runs, --peak-n and --peak-reps must be at least 1, --steps and --warmup not negative",
              file=sys.stderr)
        return 2
    load0 = os.getloadavg()
    results = {name: run_config(name, args, args.variants) for name in args.configs}
    load1 = os.getloadavg()
    torch_v = "not installed"
    if importlib.util.find_spec("torch") is not None:
        from importlib.metadata import version
        torch_v = version("torch")
    print(f"Python {platform.python_version()}, NumPy {np.__version__}, PyTorch {torch_v}; kernels "
          f"{kernels.BACKEND}; {threads.describe()}; torch threads {NOTES.get('torch_threads', '-')}")
    print(f"load average 1 min: {load0[0]:.2f} before, {load1[0]:.2f} after; {args.runs} rounds; "
          "cells: median of the rounds (range), ms/step")
    print("")
    print("| config | Pythia | " + " | ".join(TORCH[v] for v in args.variants)
          + " | best PyTorch / Pythia | floor | met |")
    print("|---|" + "---:|" * (len(args.variants) + 3) + "---|")
    for name, g in results.items():
        cells = [_span(g[v], 1e3) if v in g else "skipped" for v in args.variants]
        ran = [v for v in args.variants if v in g]
        ratios = [min(g[v][r] for v in ran) / g["pythia"][r] for r in range(args.runs)] if ran else []
        mid = _median(ratios) if ratios else None
        print(f"| {name} | {_span(g['pythia'], 1e3)} | " + " | ".join(cells)
              + (f" | {_span(ratios)} | {TARGETS[name]} | {'yes' if mid >= TARGETS[name] else 'no'} |"
                 if ratios else f" | - | {TARGETS[name]} | - |"))
    print("")
    for name, g in results.items():
        for v, why in g["skips"].items():
            print(f"{TORCH[v]} at {name} skipped: {why}")
    # the machine's peak is the best product rate seen in the run: a disturbed measurement only lowers it
    peaks = [p for g in results.values() for p in g["peak"]]
    peak = max(peaks)
    print(f"sgemm peak {peak / 1e9:,.1f} GFLOP/s: the best of {len(peaks)} measurements in this run "
          f"(range {min(peaks) / 1e9:,.1f}-{peak / 1e9:,.1f}; np.matmul of {args.peak_n}^2 float32 matrices, "
          f"{threads.cores()} BLAS threads)")
    for name, g in results.items():
        lin, att = step_flops(name)
        frac = [(lin + att) / t / peak for t in g["pythia"]]
        print(f"{name}: {(lin + att) / 1e9:,.2f} GFLOP/step counted ({lin / 1e9:,.2f} linear layers and head, "
              f"{att / 1e9:,.2f} attention); Pythia at {_span(frac, 100, '{:.1f}')}% of the peak "
              f"(median of the rounds (range)); Pythia's batch in {g['shards']} shard(s)")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())
