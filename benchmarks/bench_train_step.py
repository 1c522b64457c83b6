"""Training step speed: Pythia vs plain eager PyTorch, same architecture, optimizer and batch.

    python -m pytest benchmarks/bench_train_step.py --benchmark-only

One group per config (S, M, L from DESIGN.md); inside each, Pythia and PyTorch on identical
weights and batches. tokens/s = batch * block / step time; `extra_info["tokens"]` holds
the tokens per step. Vocabulary 65 (Tiny Shakespeare's characters); the data is random tokens,
since the step's cost does not depend on which tokens they are. At the end of the run a table
gives ms/step (min and median), tokens/s and the speed ratio PyTorch time / Pythia time per
config against the floor each config is held to (S >= 2, M >= 1.2, L >= 0.9), with the thread settings.
Ratios use the minimum time of each side (the least disturbed on a shared machine).
"""
from __future__ import annotations

import importlib.util
import multiprocessing

import numpy as np
import pytest

from pythia import DeltaOptimizer, Pythia, PythiaConfig
from pythia import kernels, threads
from pythia.kernels import _loader

CONFIGS = {  # name: (batch, block, d_model, n_layer, n_head, rounds)
    "S": (8, 32, 48, 3, 4, 100),
    "M": (12, 64, 128, 4, 4, 50),
    "L": (16, 256, 384, 6, 6, 3),
}
V = 65
TARGETS = {"S": 2.0, "M": 1.2, "L": 0.9}   # floors of PyTorch time / Pythia time
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
    tr.write_line("| config | Pythia ms/step min (median) | PyTorch ms/step min (median) | Pythia tok/s "
                  "| PyTorch tok/s | PyTorch time / Pythia time | floor | met |")
    tr.write_line("|---|---:|---:|---:|---:|---:|---:|---|")
    for name in CONFIGS:
        p, t = RESULTS.get((name, "pythia")), RESULTS.get((name, "torch"))
        if p is None:
            continue
        tokens = CONFIGS[name][0] * CONFIGS[name][1]
        ratio = t[0] / p[0] if t else None
        tr.write_line(
            f"| {name} | {p[0] * 1e3:,.2f} ({p[1] * 1e3:,.2f}) | "
            + (f"{t[0] * 1e3:,.2f} ({t[1] * 1e3:,.2f})" if t else "-")
            + f" | {tokens / p[0]:,.0f} | " + (f"{tokens / t[0]:,.0f}" if t else "-")
            + f" | {ratio:.2f} | {TARGETS[name]} | {'yes' if ratio >= TARGETS[name] else 'no'} |" if ratio
            else f" | {tokens / p[0]:,.0f} | - | - | {TARGETS[name]} | - |")
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
    B, T, C, L, H, _ = cfg
    return Pythia(PythiaConfig(vocab_size=V, block_size=T, d_model=C, n_layer=L, n_head=H), seed=0)


def pythia_step(name: str):
    """One Pythia training step on config `name`, as a callable returning the loss."""
    cfg = CONFIGS[name]
    model = pythia_model(cfg)
    opt = DeltaOptimizer(model.params, lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=1000)
    x, y = batch(cfg)

    def step():
        loss = model.loss(x, y)
        model.backward()
        opt.step(model.grads)
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
    """PyTorch's training step (torch_gpt.py, 2 threads) in a spawned child, one step per call."""

    def __init__(self, name: str):
        from torch_gpt import serve_steps                      # benchmarks/ is on sys.path under pytest
        B, T, C, L, H, _ = CONFIGS[name]
        params = {k: np.array(p) for k, p in pythia_model(CONFIGS[name]).params.items()}  # same weights
        x, y = batch(CONFIGS[name])                              # same batch
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=serve_steps, args=(child, V, T, C, L, H, params, x, y), daemon=True)
        # a spawned child inherits os.environ: drop the wait policy Pythia set for itself, so torch
        # starts at its own defaults (a policy the user set stays)
        with _loader.without_our_wait_setting():
            self.proc.start()
        _, NOTES["torch_threads"] = self.conn.recv()

    def __call__(self) -> float:
        self.conn.send("step")
        return self.conn.recv()

    def close(self) -> None:
        self.conn.send("stop")
        self.proc.join(timeout=30)


# Pythia and PyTorch of one config run back to back, so both see the same load on a shared machine
@pytest.mark.parametrize("name, impl", [(n, i) for n in CONFIGS for i in ("pythia", "torch")])
def test_step(benchmark, name, impl):
    cfg = CONFIGS[name]
    if impl == "torch" and importlib.util.find_spec("torch") is None:
        pytest.skip("torch is not installed")
    step = pythia_step(name) if impl == "pythia" else TorchInChild(name)
    benchmark.group = f"train-step-{name}"
    benchmark.extra_info.update(tokens=cfg[0] * cfg[1], backend=kernels.BACKEND if impl == "pythia" else "torch")
    try:
        loss = benchmark.pedantic(step, rounds=cfg[5], warmup_rounds=2)
    finally:
        if impl == "torch":
            step.close()
    assert np.isfinite(loss)
    if impl == "pythia":
        choices = {f"{k[0]}": v for k, v in step.model._blas.choices().items()}
        shards = len(step.model._acts)
        benchmark.extra_info.update(blas_threads=choices, shards=shards)
        how = f"batch split in {shards} shards, 1 BLAS thread each" if shards > 1 else f"BLAS threads {choices}"
        NOTES["blas_choices"] = NOTES.get("blas_choices", "") + f"{name}: {how}; "
    _record(benchmark, name, impl)
