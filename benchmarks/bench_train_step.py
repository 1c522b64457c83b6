"""Training step speed: Pythia vs plain eager PyTorch, same architecture, optimizer and batch.

    python -m pytest benchmarks/bench_train_step.py --benchmark-only

One group per config (S, M, L from DESIGN.md); inside each, Pythia and PyTorch on identical
weights and batches. tokens/s = batch * block / mean step time; `extra_info["tokens"]` holds
the tokens per step. Vocabulary 65 (Tiny Shakespeare's characters); the data is random tokens,
since the step's cost does not depend on which tokens they are.
"""
from __future__ import annotations

import numpy as np
import pytest

from pythia import DeltaOptimizer, Pythia, PythiaConfig
from pythia import kernels

CONFIGS = {  # name: (batch, block, d_model, n_layer, n_head, rounds)
    "S": (8, 32, 48, 3, 4, 60),
    "M": (12, 64, 128, 4, 4, 20),
    "L": (16, 256, 384, 6, 6, 3),
}
V = 65


def batch(cfg, seed=0):
    B, T = cfg[0], cfg[1]
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


def pythia_model(cfg):
    B, T, C, L, H, _ = cfg
    return Pythia(PythiaConfig(vocab_size=V, block_size=T, d_model=C, n_layer=L, n_head=H), seed=0)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_pythia(benchmark, name):
    cfg = CONFIGS[name]
    model = pythia_model(cfg)
    opt = DeltaOptimizer(model.params, lr=1e-3, min_lr=1e-4, warmup_steps=10, total_steps=1000)
    x, y = batch(cfg)

    def step():
        loss = model.loss(x, y)
        model.backward()
        opt.step(model.grads)
        return loss

    benchmark.group = f"train-step-{name}"
    benchmark.extra_info.update(tokens=cfg[0] * cfg[1], backend=kernels.BACKEND)
    loss = benchmark.pedantic(step, rounds=cfg[5], warmup_rounds=2)
    assert np.isfinite(loss)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_step_torch(benchmark, name):
    torch = pytest.importorskip("torch")
    from torch_gpt import TorchGPT, make_optimizer, train_step

    torch.set_num_threads(2)
    cfg = CONFIGS[name]
    B, T, C, L, H, rounds = cfg
    model = TorchGPT(V, T, C, L, H).from_pythia(pythia_model(cfg).params)
    opt = make_optimizer(model, lr=1e-3, weight_decay=0.1, beta2=0.99)
    x, y = (torch.from_numpy(a) for a in batch(cfg))

    benchmark.group = f"train-step-{name}"
    benchmark.extra_info.update(tokens=B * T, backend="torch")
    loss = benchmark.pedantic(lambda: train_step(model, opt, x, y, 1e-3), rounds=rounds, warmup_rounds=2)
    assert np.isfinite(loss)
