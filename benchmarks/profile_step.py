"""Where a training step's time goes: Pythia's layers, kernels and optimizer, timed one call at a time.

    python benchmarks/profile_step.py            # configs S and M, 50 steps each
    python benchmarks/profile_step.py L --steps 3

Every function of `pythia.layers` that does a layer's work (linear_forward, attention_backward,
...), every kernel in `pythia.kernels` and the optimizer's step are wrapped in a timer; a
wrapper's time excludes the wrapped calls inside it, so the rows add up to the step's thread
time. "glue" is the passes' own NumPy (residual adds, embedding lookup, reshapes) and Python;
"pass outside the shards" is loss()/backward() around them (splitting the batch, handing a
shard to the other thread, waiting for it, adding the gradients). When a config splits its
batch across two threads (M, L), their times add up: thread time exceeds wall time.
A profiler, not a benchmark: the timers add ~1 us per call. Config sizes as in
bench_train_step.py (vocabulary 65, random tokens).
"""
from __future__ import annotations

import argparse
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_train_step import CONFIGS, batch, pythia_model  # noqa: E402
from pythia import DeltaOptimizer, kernels, layers as model_mod  # noqa: E402
from pythia.system import threads  # noqa: E402

GLUE = "glue (model NumPy, Python)"
PASS = "pass outside the shards"
MODEL_FUNCS = ("linear_forward", "linear_backward", "attention_forward", "attention_backward",
               "embedding_backward")

_total: dict[str, float] = defaultdict(float)
_calls: dict[str, int] = defaultdict(int)
_local = threading.local()  # .stack: time spent in nested timed calls, per open timer, per thread
_lock = threading.Lock()    # config M and L run a pass's shards on two threads at once


def _timed(name: str, fn):
    def wrapper(*args, **kwargs):
        stack = _local.__dict__.setdefault("stack", [])
        stack.append(0.0)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            dt = time.perf_counter() - t0
            inner = stack.pop()
            with _lock:
                _total[name] += dt - inner
                _calls[name] += 1
            if stack:
                stack[-1] += dt
    return wrapper


def instrument(model, opt: DeltaOptimizer) -> None:
    # a pass's own Python and NumPy (per shard), and the pass around the shards (hand-off, waiting)
    inner = model.model                                  # the GPT-2 model inside the ShardedModel
    inner.loss_rows = _timed(GLUE, inner.loss_rows)
    inner.backward_rows = _timed(GLUE, inner.backward_rows)
    model.loss = _timed(PASS, model.loss)
    model.backward = _timed(PASS, model.backward)
    for n in MODEL_FUNCS:
        if hasattr(model_mod, n):
            setattr(model_mod, n, _timed(n, getattr(model_mod, n)))
    for n in kernels.NAMES:
        setattr(kernels, n, _timed(n, getattr(kernels, n)))
    opt.step = _timed("optimizer step", opt.step)


def profile(name: str, steps: int) -> None:
    cfg = CONFIGS[name]
    model = pythia_model(cfg)
    opt = DeltaOptimizer.for_model(model, lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=1000)
    x, y = batch(cfg)
    for _ in range(2):                                   # warm up buffers and threads
        model.loss(x, y); model.backward(); opt.step()
    # the untimed step time first, so the timers' cost is visible
    t = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.loss(x, y); model.backward(); opt.step()
        t.append(time.perf_counter() - t0)
    plain = float(np.median(t))
    saved = {n: getattr(model_mod, n) for n in MODEL_FUNCS if hasattr(model_mod, n)}
    saved_k = {n: getattr(kernels, n) for n in kernels.NAMES}
    _total.clear(); _calls.clear()
    instrument(model, opt)
    t0 = time.perf_counter()
    for _ in range(steps):
        model.loss(x, y); model.backward(); opt.step()
    wall = (time.perf_counter() - t0) / steps
    for n, f in saved.items():
        setattr(model_mod, n, f)
    for n, f in saved_k.items():
        setattr(kernels, n, f)
    for attr in ("loss_rows", "backward_rows"):
        delattr(model.model, attr)
    for attr in ("loss", "backward"):
        delattr(model, attr)
    del opt.step
    busy = sum(_total.values()) / steps               # thread time: more than wall when shards overlap
    rows = sorted(_total.items(), key=lambda kv: -kv[1])
    B, T = cfg[0], cfg[1]
    print(f"\nconfig {name} (B={B}, T={T}, C={cfg[2]}, layers={cfg[3]}, heads={cfg[4]}): "
          f"{plain * 1e3:.2f} ms/step median untimed, {wall * 1e3:.2f} ms/step timed, "
          f"{B * T / plain:,.0f} tokens/s; shards {len(model._acts)}; {threads.describe()}")
    print(f"thread time {busy * 1e3:.2f} ms/step (wall {wall * 1e3:.2f}); shares are of thread time")
    print(f"{'part':32s} {'ms/step':>8s} {'share':>6s} {'calls/step':>10s}")
    for n, tot in rows:
        print(f"{n:32s} {tot / steps * 1e3:8.3f} {tot / steps / busy:6.1%} {_calls[n] / steps:10.0f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("configs", nargs="*", default=["S", "M"], choices=list(CONFIGS))
    ap.add_argument("--steps", type=int, default=50)
    args = ap.parse_args(argv)
    print(f"kernels: {kernels.BACKEND}")
    for name in args.configs:
        profile(name, args.steps)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
