"""Pythia against PyTorch autograd on the same weights: logits, loss and every gradient.

Skipped when torch is not importable. The torch side is written here from the architecture
(not from Pythia's code): pre-LN GPT-2 blocks on float32 tensors, causal attention by an explicit
mask, GELU-tanh, tied head. Tolerances: logits atol 1e-5 + rtol 1e-5, loss atol 1e-5, gradients atol 1e-4
(float32 on both sides, sums in different orders).

Sizes: B batch, T time, C channels, V vocabulary, H heads, hs head size.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pythia.model import Pythia, PythiaConfig

torch = pytest.importorskip("torch")
F = torch.nn.functional

CFG = PythiaConfig(vocab_size=37, block_size=16, d_model=32, n_layer=2, n_head=4)


def torch_gpt2(P: dict, idx, cfg: PythiaConfig):
    """Logits (B, T, V) of GPT-2 written with torch ops on the weight dict P (Pythia's names and layout)."""
    B, T = idx.shape
    C, H = cfg.d_model, cfg.n_head
    hs = C // H
    x = P["wte"][idx] + P["wpe"][:T]                              # (B, T, C)
    mask = torch.tril(torch.ones(T, T, dtype=torch.bool))
    for i in range(cfg.n_layer):
        p = lambda n: P[f"h.{i}.{n}"]
        h = F.layer_norm(x, (C,), p("ln_1.weight"), p("ln_1.bias"), eps=1e-5)
        q, k, v = (h @ p("attn.c_attn.weight") + p("attn.c_attn.bias")).split(C, dim=-1)  # 3 x (B, T, C)
        q, k, v = (t.reshape(B, T, H, hs).transpose(1, 2) for t in (q, k, v))              # (B, H, T, hs)
        att = (q @ k.transpose(-1, -2)) / math.sqrt(hs)                                     # (B, H, T, T)
        att = att.masked_fill(~mask, float("-inf")).softmax(-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)                                      # (B, T, C)
        x = x + y @ p("attn.c_proj.weight") + p("attn.c_proj.bias")
        h = F.layer_norm(x, (C,), p("ln_2.weight"), p("ln_2.bias"), eps=1e-5)
        h = F.gelu(h @ p("mlp.c_fc.weight") + p("mlp.c_fc.bias"), approximate="tanh")      # (B, T, 4C)
        x = x + h @ p("mlp.c_proj.weight") + p("mlp.c_proj.bias")
    x = F.layer_norm(x, (C,), P["ln_f.weight"], P["ln_f.bias"], eps=1e-5)
    return x @ P["wte"].T                                         # (B, T, V) tied head


def test_logits_loss_and_every_gradient_match_torch_autograd():
    model = Pythia(CFG, seed=0)
    rng = np.random.default_rng(1)
    for k, p in model.params.items():                             # non-trivial LN params and biases too
        p += (0.1 * rng.standard_normal(p.shape)).astype(np.float32)
        if p.ndim == 2:
            p *= 2.0
    B, T = 3, 13
    idx = rng.integers(0, CFG.vocab_size, (B, T))
    targets = rng.integers(0, CFG.vocab_size, (B, T))

    P = {k: torch.tensor(v, requires_grad=True) for k, v in model.params.items()}
    logits_t = torch_gpt2(P, torch.from_numpy(idx), CFG)
    loss_t = F.cross_entropy(logits_t.reshape(-1, CFG.vocab_size), torch.from_numpy(targets).reshape(-1))
    loss_t.backward()

    np.testing.assert_allclose(model.forward(idx), logits_t.detach().numpy(), rtol=1e-5, atol=1e-5)
    assert model.loss(idx, targets) == pytest.approx(loss_t.item(), abs=1e-5)
    model.backward()
    for k in model.params:
        np.testing.assert_allclose(model.grads[k], P[k].grad.numpy(), rtol=0, atol=1e-4, err_msg=k)
    assert np.abs(model.grads["wte"]).max() > 1e-3                # the comparison is not between zeros
