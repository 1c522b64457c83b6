"""LoRA adapters (pythia.lora) on both families, against independent references.

- a merged-weight twin: the adapted model equals the plain model with W + (alpha/r) B A, in its
  logits (1e-5) and, by the chain rule through the plain model's own full backward
  (dW' = d loss / d(W + s B A)  =>  dA = s B^T dW', dB = s dW' A^T), in every adapter gradient
  (1e-4 of the largest entry);
- central finite differences of the loss on sampled adapter entries (float32: step 1e-2, 2e-2 relative);
- step 0 equals the base bitwise (B = 0); the base gets no gradient buffer and stays bitwise
  unchanged through AdamW steps; the ignore mask scores only the chosen targets.
"""
from __future__ import annotations

import numpy as np
import pytest

from pythia import layers
from pythia.engine import DeltaOptimizer
from pythia.errors import ConfigError
from pythia.lora import LoRAConfig, LoRAModel, adapter_names
from pythia.models.gpt2 import Pythia, PythiaConfig
from pythia.models.llama import Llama, LlamaConfig


def make_base(kind: str):
    if kind == "llama":
        return Llama(LlamaConfig(vocab_size=37, d_model=32, n_layer=2, n_head=4, n_kv_head=2, head_dim=8, d_ff=48,
                                 block_size=16, qkv_bias=True, tie_embeddings=False), seed=3)
    return Pythia(PythiaConfig(vocab_size=37, block_size=16, d_model=32, n_layer=2, n_head=4), seed=3)


def adapted(kind: str, targets=("attn", "mlp"), rank=4, alpha=6.0, seed=1):
    """A LoRA model with B drawn non-zero too (so every path carries gradient)."""
    m = LoRAModel(make_base(kind), LoRAConfig(rank, alpha, tuple(targets)), seed=seed)
    rng = np.random.default_rng(seed + 10)
    for name in m.targets:
        b = m.params[adapter_names(name)[1]]
        b[...] = rng.standard_normal(b.shape).astype(np.float32) * 0.05
    return m


def batch(seed=0, B=3, T=12, V=37):
    rng = np.random.default_rng(seed)
    return rng.integers(0, V, (B, T)), rng.integers(0, V, (B, T))


KINDS = ["llama", "gpt2"]


@pytest.mark.parametrize("kind", KINDS)
def test_step0_equals_base_and_base_has_no_gradient_buffer(kind):
    base = make_base(kind)
    x, y = batch()
    ref_logits, ref_loss = base.forward(x), base.loss(x, y)
    m = LoRAModel(make_base(kind), LoRAConfig(8, 16.0, ("attn", "mlp")))
    assert np.array_equal(m.forward(x), ref_logits)               # B = 0: the adapter adds exact zeros
    assert m.loss(x, y) == ref_loss
    m.backward()
    assert m.base._grads_memory is None                           # no gradient buffer for the frozen base
    a = m.params[adapter_names(m.targets[0])[0]]
    bound = 1 / np.sqrt(a.shape[1])                               # Kaiming-uniform, a = sqrt(5)
    assert np.abs(a).max() <= bound and np.abs(a).max() > 0.8 * bound


@pytest.mark.parametrize("kind", KINDS)
def test_merged_weights_give_the_same_logits(kind):
    m = adapted(kind)
    x, _ = batch(1)
    merged = m.merged()
    np.testing.assert_allclose(m.forward(x), merged.forward(x), rtol=0, atol=1e-5)
    # the cached decoding path adapts too
    cache = m.new_kv_cache()
    last = m.forward_cached(x[0], cache)
    np.testing.assert_allclose(last, merged.forward(x[:1])[0, -1], rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("targets", [("attn",), ("mlp",), ("attn", "mlp")])
def test_adapter_gradients_match_the_merged_twin_chain_rule(kind, targets):
    m = adapted(kind, targets)
    x, y = batch(2)
    y[0, :5] = layers.IGNORE                                      # and the ignore mask on the way
    loss = m.loss(x, y)
    m.backward()
    twin = m.merged()
    assert abs(twin.loss(x, y) - loss) < 1e-5
    twin.backward()
    s = m.lora.scale
    for name in m.targets:
        dw = twin.grads[name]
        if m._orient[name] == "in_out":
            dw = dw.T                                             # to (out, in)
        an, bn = adapter_names(name)
        a, b = m.params[an].astype(np.float64), m.params[bn].astype(np.float64)
        da, db = s * b.T @ dw, s * dw @ a.T                       # (r, in), (out, r)
        for got, want, k in ((m.grads[an], da, an), (m.grads[bn], db, bn)):
            np.testing.assert_allclose(got, want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=k)


@pytest.mark.parametrize("kind", KINDS)
def test_adapter_gradients_match_finite_differences(kind):
    m = adapted(kind, ("attn", "mlp"))
    x, y = batch(3)
    m.loss(x, y)
    m.backward()
    rng = np.random.default_rng(5)
    names = list(m.params)
    h = 1e-2
    for k in rng.choice(len(names), 6, replace=False):
        name = names[k]
        p = m.params[name]
        i = tuple(rng.integers(0, n) for n in p.shape)
        old = p[i]
        p[i] = old + h
        up = m.loss(x, y)
        p[i] = old - h
        down = m.loss(x, y)
        p[i] = old
        fd = (up - down) / (2 * h)
        g = float(m.grads[name][i])
        assert abs(fd - g) <= 2e-2 * max(abs(fd), 1e-2), (name, i, fd, g)


@pytest.mark.parametrize("kind", KINDS)
def test_training_moves_only_the_adapters(kind):
    m = adapted(kind, ("attn",))
    before = m.base.params_memory.copy()
    opt = DeltaOptimizer.for_model(m, lr=1e-2, warmup_steps=0, total_steps=5, weight_decay=0.1)
    x, y = batch(4)
    losses = []
    for _ in range(5):
        losses.append(m.loss(x, y))
        m.backward()
        opt.step()
    assert np.array_equal(m.base.params_memory, before)           # bitwise: the base is frozen
    assert losses[-1] < losses[0]
    assert opt._m.size == m.num_params() < m.base.num_params() // 4  # optimizer state for the adapters only


@pytest.mark.parametrize("kind", KINDS)
def test_sharded_passes_give_the_unsplit_gradients(kind):
    from pythia.system.sharding import ShardedModel
    m = adapted(kind)
    x, y = batch(6, B=4)
    y[1, 3:] = layers.IGNORE
    loss = m.loss(x, y)
    m.backward()
    want = m.grads_memory.copy()
    sh = ShardedModel(m)
    sh._shards = lambda B, T: [(0, 1), (1, 4)]                    # force two shards, run in order
    sh._workers = type("Serial", (), {"map": staticmethod(lambda f, xs: [f(v) for v in xs])})()
    assert abs(sh.loss(x, y) - loss) < 1e-6
    sh.backward()
    np.testing.assert_allclose(m.grads_memory, want, rtol=0, atol=1e-6 * np.abs(want).max())


def test_targets_by_name_and_bad_settings():
    base = make_base("llama")
    m = LoRAModel(base, LoRAConfig(2, 4.0, ("q_proj", "v_proj")))
    assert [n.split(".")[-2] for n in m.targets] == ["q_proj", "v_proj"] * 2
    with pytest.raises(ConfigError, match="valid names: attn, mlp, down_proj"):
        LoRAModel(make_base("llama"), LoRAConfig(2, 4.0, ("c_attn",)))
    with pytest.raises(ConfigError, match="at most"):
        LoRAModel(make_base("llama"), LoRAConfig(33, 66.0, ("attn",)))
    with pytest.raises(ConfigError, match="positive whole number"):
        LoRAModel(make_base("gpt2"), LoRAConfig(0, 1.0))
    g = LoRAModel(make_base("gpt2"), LoRAConfig(2, 4.0, ("c_attn", "mlp.c_proj")))
    assert [n for n in g.targets] == ["h.0.attn.c_attn.weight", "h.0.mlp.c_proj.weight",
                                      "h.1.attn.c_attn.weight", "h.1.mlp.c_proj.weight"]


# ----------------------------------------------------------------------------- the ignore mask

def test_crossentropy_ignore_scores_only_the_kept_rows():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 11)).astype(np.float32)
    t = np.array([3, layers.IGNORE, 0, 10, layers.IGNORE, 5])
    keep = t != layers.IGNORE
    losses, probs = layers.crossentropy_forward(logits, t)
    z = logits.astype(np.float64)
    ref = np.log(np.exp(z).sum(1)) - z[np.arange(6), np.where(keep, t, 0)]   # log-sum-exp minus the target logit
    np.testing.assert_allclose(losses[keep], ref[keep], rtol=1e-5)
    assert np.all(losses[~keep] == 0) and layers.counted(t) == 4
    d = layers.crossentropy_backward(probs, t, 4)
    p = np.exp(z) / np.exp(z).sum(1, keepdims=True)
    onehot = np.eye(11)[np.where(keep, t, 0)]
    np.testing.assert_allclose(d, (p - onehot) * keep[:, None] / 4, rtol=0, atol=1e-6)


@pytest.mark.parametrize("kind", KINDS)
def test_model_loss_with_ignored_targets_is_the_mean_over_the_scored(kind):
    base = make_base(kind)
    x, y = batch(7)
    y2 = y.copy()
    y2[:, :4] = layers.IGNORE
    base.loss(x, y2)
    losses, _ = base.loss_rows(x, y)                              # per-token, nothing ignored
    want = losses.reshape(y.shape)[:, 4:].mean(dtype=np.float64)
    assert abs(base.loss(x, y2) - want) < 1e-6
    with pytest.raises(ValueError, match="targets"):
        base.loss(x, np.full_like(y, -2))


@pytest.mark.parametrize("kind, kept, dropped", [("llama", ["h", "y"], ["h2"]), ("gpt2", ["ln1", "att"], ["ln2", "gelu"])])
def test_a_frozen_base_keeps_only_the_inputs_its_adapters_need(kind, kept, dropped):
    # (Llama never keeps down_proj's input silu(gate) * up: its backward recomputes it when needed)
    m = adapted(kind, ("attn",))
    x, y = batch(8)
    m.loss(x, y)
    for layer in m._acts["layers"]:
        assert all(layer[k] is not None for k in kept) and all(layer[k] is None for k in dropped)
        assert not layer.get("recompute_m", False)
    plain = make_base(kind)
    plain.loss(x, y)                                              # without an adapter everything is kept
    assert all(plain._acts["layers"][0][k] is not None for k in kept + dropped)
    assert plain._acts["layers"][0].get("recompute_m", kind == "llama") == (kind == "llama")
