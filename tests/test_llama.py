"""The Llama family (pythia.models.llama) against Hugging Face transformers and torch autograd.

Committed fixtures (tests/fixtures/make_llama_fixtures.py, random-weight LlamaForCausalLM and
Qwen2ForCausalLM: GQA, head_dim != hidden/heads, tied and untied, q/k/v biases, non-default
rope_theta) hold transformers' logits, loss, every gradient, a greedy continuation and the
losses of 5 AdamW steps, so these checks run without torch; when torch and transformers are
importable, a freshly drawn model is compared live as well.

Tolerances: logits 1e-4 absolute; loss 1e-5 absolute; each gradient within 1e-4 of its tensor's
largest entry; AdamW losses 1e-4 absolute over 5 steps; greedy tokens equal.
"""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

from pythia.engine import DeltaOptimizer
from pythia.errors import ConfigError
from pythia.models.llama import Llama, LlamaConfig, load_hf

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = ["llama_gqa_untied", "qwen2_tied_bias"]


def load_case(name: str):
    """(model with the fixture's weights, the fixture's arrays)."""
    f = dict(np.load(os.path.join(HERE, "fixtures", f"{name}.npz")))
    model = load_hf(json.loads(str(f["config_json"])), {k[len("param/"):]: v for k, v in f.items() if k.startswith("param/")})
    return model, f


@pytest.fixture(params=CASES)
def case(request):
    return load_case(request.param)


def grads_close(model, expected: dict[str, np.ndarray]) -> None:
    assert set(model.grads) == set(expected), "the model's gradients are not transformers' parameters"
    for k, e in expected.items():
        np.testing.assert_allclose(model.grads[k], e, rtol=0, atol=1e-4 * float(np.abs(e).max()), err_msg=k)


# ----------------------------------------------------------------------------- against transformers (fixtures)

def test_logits_match_transformers(case):
    model, f = case
    np.testing.assert_allclose(model.forward(f["idx"]), f["logits"], rtol=0, atol=1e-4)


def test_loss_and_every_gradient_match_torch_autograd(case):
    model, f = case
    loss = model.loss(f["idx"], f["targets"])
    assert abs(loss - float(f["loss"])) < 1e-5
    model.backward()
    grads_close(model, {k[len("grad/"):]: v for k, v in f.items() if k.startswith("grad/")})


def test_greedy_continuation_equals_transformers_cached_and_uncached(case):
    model, f = case
    n = len(f["continuation"])
    for use_cache in (True, False):
        toks = list(model.generate(f["prompt"].tolist(), n, temperature=0, use_cache=use_cache))
        assert toks == f["continuation"].tolist(), f"use_cache={use_cache}"


def test_adamw_steps_track_torch(case):
    model, f = case
    hp = json.loads(str(f["adamw"]))
    opt = DeltaOptimizer.for_model(model, lr=hp["lr"], min_lr=hp["lr"], warmup_steps=0, total_steps=len(f["adamw_losses"]),
                         beta1=hp["betas"][0], beta2=hp["betas"][1], eps=hp["eps"],
                         weight_decay=hp["weight_decay"], grad_clip=hp["grad_clip"])
    losses = []
    for _ in f["adamw_losses"]:
        losses.append(model.loss(f["idx"], f["targets"]))
        model.backward()
        opt.step()
    np.testing.assert_allclose(losses, f["adamw_losses"], rtol=0, atol=1e-4)
    assert losses[-1] < losses[0] - 0.1                          # the steps did train


def test_forward_can_return_each_layers_causal_attention(case):
    model, f = case
    logits, attn = model.forward(f["idx"], attention=True)
    np.testing.assert_array_equal(logits, model.forward(f["idx"]))
    B, T = f["idx"].shape
    assert len(attn) == model.config.n_layer
    for a in attn:
        assert a.shape == (B, model.config.n_head, T, T)
        np.testing.assert_allclose(a.sum(-1), 1.0, rtol=0, atol=1e-5)     # each query's keys
        assert np.all(np.triu(a, k=1) == 0)                                # no query sees a later key


# ----------------------------------------------------------------------------- the KV cache

def test_cached_decode_equals_uncached_forward(case):
    model, f = case
    seq = np.concatenate([f["prompt"], f["continuation"][:20]])  # 25 tokens
    full = model.forward(seq[None])[0]                           # (T, V)
    cache = model.new_kv_cache()
    # a 4-token prefill, a 3-token chunk, then one token at a time
    got = {3: model.forward_cached(seq[:4], cache), 6: model.forward_cached(seq[4:7], cache)}
    for t in range(7, len(seq)):
        got[t] = model.forward_cached(seq[t:t + 1], cache)
    assert cache.length == len(seq)
    for t, logits in got.items():
        np.testing.assert_allclose(logits, full[t], rtol=0, atol=1e-5, err_msg=f"position {t}")


def test_kv_cache_holds_only_the_key_value_heads(case):
    model, _ = case
    c = model.config
    cache = model.new_kv_cache()
    assert cache.k.shape == cache.v.shape == (c.n_layer, c.n_kv_head, c.block_size, c.head_dim)
    assert c.n_kv_head < c.n_head


def test_cache_overflow_is_refused(case):
    model, _ = case
    cache = model.new_kv_cache()
    with pytest.raises(ValueError, match="exceed block_size"):
        model.forward_cached(np.zeros(model.config.block_size + 1, np.int64), cache)


# ----------------------------------------------------------------------------- the family interface

def test_params_and_grads_are_views_of_two_flat_buffers_with_a_decay_mask():
    model = Llama(LlamaConfig(vocab_size=50, qkv_bias=True, tie_embeddings=False), seed=3)
    for k, p in model.params.items():
        assert np.shares_memory(p, model.params_memory) and p.flags.c_contiguous, k
        assert np.shares_memory(model.grads[k], model.grads_memory), k
    assert sum(p.size for p in model.params.values()) == model.params_memory.size == model.num_params()
    mask = model.decay_mask()
    assert mask[0][0] == 0 and mask[-1][1] == model.params_memory.size
    assert all(a[1] == b[0] for a, b in zip(mask, mask[1:]))
    # decay exactly where the parameter is a matrix (or the embedding)
    flags = np.zeros(model.params_memory.size, bool)
    for lo, hi, d in mask:
        flags[lo:hi] = d
    for k, p in model.params.items():
        off, shape = model.layout[k]
        assert shape == p.shape
        np.testing.assert_array_equal(model.params_memory[off:off + p.size].reshape(shape), p)
        assert np.shares_memory(model.params_memory[off:off + p.size], p)
        assert flags[off:off + p.size].all() == (p.ndim == 2) and flags[off:off + p.size].any() == (p.ndim == 2), k


def test_initialisation_draws_normal_002_and_unit_norm_gains():
    model = Llama(LlamaConfig(vocab_size=500, d_model=64, n_layer=2), seed=0)
    w = model.params["model.embed_tokens.weight"]
    assert abs(float(w.std()) - 0.02) < 1e-3 and abs(float(w.mean())) < 1e-3
    assert np.all(model.params["model.layers.1.post_attention_layernorm.weight"] == 1)
    assert "lm_head.weight" not in model.params                 # tied by default
    again = Llama(LlamaConfig(vocab_size=500, d_model=64, n_layer=2), seed=0)
    np.testing.assert_array_equal(model.params_memory, again.params_memory)


def test_backward_into_a_separate_gradient_dict_equals_the_model_grads(case):
    model, f = case
    losses, acts = model.loss_rows(f["idx"], f["targets"])
    other = {k: np.zeros_like(g) for k, g in model.grads.items()}
    model.backward_rows(acts, other, f["idx"].size)
    model.backward_rows(acts, model.grads, f["idx"].size)
    for k in other:
        np.testing.assert_array_equal(other[k], model.grads[k], err_msg=k)


def test_row_shards_summed_equal_the_whole_batch(case):
    # what the system layer's batch sharding does: per-row losses and gradients of two row ranges
    model, f = case
    idx, tgt = f["idx"], f["targets"]
    full = model.loss(idx, tgt)
    model.backward()
    expected = {k: g.copy() for k, g in model.grads.items()}
    parts = [model.loss_rows(idx[r], tgt[r]) for r in (slice(0, 1), slice(1, 2))]
    shard = [{k: np.zeros_like(g) for k, g in model.grads.items()} for _ in parts]
    for (_, acts), g in zip(parts, shard):
        model.backward_rows(acts, g, idx.size)
    assert abs(float(np.concatenate([l for l, _ in parts]).mean(dtype=np.float64)) - full) < 1e-6
    for k, e in expected.items():
        np.testing.assert_allclose(shard[0][k] + shard[1][k], e, rtol=0, atol=1e-6 * float(np.abs(e).max()), err_msg=k)


@pytest.mark.parametrize("chunk", [1, 7, 64, None])
def test_head_and_loss_by_vocabulary_chunks_equal_the_whole_logits_and_torch(case, chunk):
    """The head + cross-entropy computed a few vocabulary columns at a time (1 column, a ragged 7,
    one chunk wider than the vocabulary) gives the whole-logits loss within 1e-6 and every gradient
    within 1e-6 of its tensor's largest entry, with some targets IGNOREd; and torch's within the
    file's tolerances (1e-5 loss, 1e-4 gradients)."""
    from pythia.layers import IGNORE
    model, f = case
    idx, tgt = f["idx"], f["targets"].copy()
    model.head_chunk = None                                      # the reference: whole (N, V) logits
    tgt[0, :3] = IGNORE
    ref_loss = model.loss(idx, tgt)
    model.backward()
    ref = {k: g.copy() for k, g in model.grads.items()}
    model.head_chunk = chunk if chunk is not None else "auto"
    assert abs(model.loss(idx, tgt) - ref_loss) < 1e-6
    model.backward()
    for k, e in ref.items():
        np.testing.assert_allclose(model.grads[k], e, rtol=0, atol=1e-6 * float(np.abs(e).max()), err_msg=k)
    loss = model.loss(f["idx"], f["targets"])                    # nothing ignored: transformers' batch
    assert abs(loss - float(f["loss"])) < 1e-5
    model.backward()
    grads_close(model, {k[len("grad/"):]: v for k, v in f.items() if k.startswith("grad/")})


def test_the_training_pass_never_holds_whole_logits_or_the_mlp_product():
    """What a training pass keeps: per row the logsumexp of its logits, not the (N, V) logits or
    softmax; per layer gate and up, not silu(gate) * up (recomputed in the backward)."""
    model = Llama(LlamaConfig(vocab_size=3000, d_model=32, n_layer=2, n_head=4, n_kv_head=2, head_dim=8, d_ff=48), seed=0)
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 3000, (2, 16))
    _, acts = model.loss_rows(idx, idx)
    def arrays(a):
        for v in a.values() if isinstance(a, dict) else a:
            if isinstance(v, np.ndarray):
                yield v
            elif isinstance(v, (dict, list)):
                yield from arrays(v)
    assert max(a.size for a in arrays(acts)) < 32 * 3000         # nothing of (N, V) = (32, 3000)
    assert acts["head_saved"].shape == (32,)
    assert all("m" not in layer for layer in acts["layers"])


def test_gradient_matches_a_finite_difference_along_a_random_direction():
    # independent of torch: d loss / d eps of loss(p + eps u) at 0 equals grad . u
    model = Llama(LlamaConfig(vocab_size=31, d_model=16, n_layer=1, n_head=2, n_kv_head=1, head_dim=8, d_ff=24,
                              qkv_bias=True, tie_embeddings=False), seed=5)
    model.params_memory *= 5                                     # larger weights: a loss that moves
    rng = np.random.default_rng(0)
    idx, tgt = rng.integers(0, 31, (2, 9)), rng.integers(0, 31, (2, 9))
    model.loss(idx, tgt)
    model.backward()
    u = rng.normal(size=model.params_memory.size).astype(np.float32)
    analytic = float(np.dot(model.grads_memory.astype(np.float64), u))
    p0, h = model.params_memory.copy(), 1e-4
    model.params_memory[...] = p0 + h * u
    up = model.loss(idx, tgt)
    model.params_memory[...] = p0 - h * u
    down = model.loss(idx, tgt)
    model.params_memory[...] = p0
    assert abs((up - down) / (2 * h) - analytic) <= 2e-3 * abs(analytic)


# ----------------------------------------------------------------------------- configuration and bad input

@pytest.mark.parametrize("change, message", [
    (dict(n_kv_head=3), "multiple of n_kv_head"),
    (dict(head_dim=7), "head_dim must be even"),
    (dict(norm_eps=0.0), "norm_eps must be a positive"),
    (dict(d_model=0), "d_model must be a positive whole number"),
    (dict(qkv_bias=1), "qkv_bias must be true or false"),
])
def test_config_refuses_what_cannot_work(change, message):
    with pytest.raises(ConfigError, match=message):
        LlamaConfig(vocab_size=10, **change).validate()


HF_LLAMA = dict(model_type="llama", vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                num_attention_heads=9, num_key_value_heads=3, rms_norm_eps=1e-5, rope_theta=100000.0,
                max_position_embeddings=8192, tie_word_embeddings=True, rope_scaling=None, hidden_act="silu")


def test_from_hf_reads_smollm2s_shape_and_refuses_unsupported_options():
    cfg = LlamaConfig.from_hf(HF_LLAMA)
    assert (cfg.d_model, cfg.n_layer, cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_ff) == (576, 30, 9, 3, 64, 1536)
    assert cfg.tie_embeddings and not cfg.qkv_bias and cfg.block_size == 8192
    assert LlamaConfig.from_dict(cfg.to_dict()) == cfg
    assert LlamaConfig.from_hf({**HF_LLAMA, "model_type": "qwen2"}).qkv_bias
    # transformers 5 writes rope_parameters instead of rope_theta
    new_style = {k: v for k, v in HF_LLAMA.items() if k not in ("rope_theta", "rope_scaling")}
    assert LlamaConfig.from_hf({**new_style, "rope_parameters": {"rope_type": "default", "rope_theta": 5e5}}).rope_theta == 5e5
    for bad, message in [({"model_type": "gpt2"}, "model_type 'gpt2'"),
                         ({"rope_scaling": {"type": "linear"}}, "rope scaling"),
                         ({"rope_parameters": {"rope_type": "llama3", "rope_theta": 5e5}}, "rope scaling"),
                         ({"model_type": "qwen2", "use_sliding_window": True}, "sliding-window"),
                         ({"layer_types": ["full_attention", "sliding_attention"]}, "sliding-window"),
                         ({"attention_bias": True}, "o_proj"),
                         ({"num_local_experts": 8}, "mixture-of-experts"),
                         ({"hidden_act": "gelu"}, "hidden_act"),
                         ({"hidden_size": None}, "malformed")]:
        with pytest.raises(ConfigError, match=message):
            LlamaConfig.from_hf({**HF_LLAMA, **bad})
    with pytest.raises(ConfigError, match="lacks 'intermediate_size'"):
        LlamaConfig.from_hf({k: v for k, v in HF_LLAMA.items() if k != "intermediate_size"})


def test_load_hf_drops_derived_tensors_and_refuses_an_untied_head_under_tie():
    cfg = LlamaConfig(vocab_size=20, d_model=16, n_layer=1, n_head=2, n_kv_head=1, head_dim=8, d_ff=24)
    src = Llama(cfg, seed=1)
    tensors = {**src.params, "lm_head.weight": src.params["model.embed_tokens.weight"].copy(),
               "model.layers.0.self_attn.rotary_emb.inv_freq": np.ones(4, np.float32)}
    model = load_hf(cfg.to_hf(), tensors)
    np.testing.assert_array_equal(model.params_memory, src.params_memory)
    assert LlamaConfig.from_hf(cfg.to_hf()) == cfg
    tensors["lm_head.weight"] = tensors["lm_head.weight"] + 1
    with pytest.raises(ConfigError, match="lm_head.weight differs"):
        load_hf(cfg.to_hf(), tensors)


def test_bad_token_ids_and_parameters_are_refused():
    model = Llama(LlamaConfig(vocab_size=10, block_size=8))
    with pytest.raises(ValueError, match="values must lie in \\[0, 10\\)"):
        model.forward(np.array([[1, 10]]))
    with pytest.raises(ValueError, match="T must be between 1 and block_size=8"):
        model.forward(np.zeros((1, 9), np.int64))
    with pytest.raises(ValueError, match="integer token ids"):
        model.forward(np.zeros((1, 2)))
    params = {k: v.copy() for k, v in model.params.items()}
    params["model.norm.weight"] = np.ones(3, np.float32)
    with pytest.raises(ValueError, match="'model.norm.weight' has shape \\(3,\\)"):
        model.load_params(params)
    with pytest.raises(ValueError, match="'lm_head.weight' is not part of this model"):
        model.load_params({**model.params, "lm_head.weight": np.zeros((10, 64), np.float32)})


# ----------------------------------------------------------------------------- live, when transformers is importable

def test_live_against_transformers_with_fresh_weights():
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    spec = importlib.util.spec_from_file_location("make_llama_fixtures",
                                                  os.path.join(HERE, "fixtures", "make_llama_fixtures.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    for i, (name, (cfg_cls, model_cls, fields)) in enumerate(gen.CASES.items()):
        ref = gen.build(cfg_cls, model_cls, fields, seed=99 + i)
        model = load_hf(ref.config.to_dict(), {k: p.detach().numpy() for k, p in ref.named_parameters()})
        # the config Pythia writes builds the same model in transformers
        again = model_cls(cfg_cls(**model.config.to_hf()))
        assert {k: tuple(p.shape) for k, p in again.named_parameters()} == {k: p.shape for k, p in model.params.items()}
        again.load_state_dict(ref.state_dict())
        probe = np.arange(8)[None] % fields["vocab_size"]
        logits_again, _ = gen.loss_of(again.eval(), probe, probe)
        np.testing.assert_allclose(model.forward(probe), logits_again.detach().numpy(), rtol=0, atol=1e-4)
        rng = np.random.default_rng(i)
        idx, tgt = rng.integers(0, fields["vocab_size"], (3, 10)), rng.integers(0, fields["vocab_size"], (3, 10))
        logits, loss = gen.loss_of(ref, idx, tgt)
        loss.backward()
        np.testing.assert_allclose(model.forward(idx), logits.detach().numpy(), rtol=0, atol=1e-4, err_msg=name)
        assert abs(model.loss(idx, tgt) - loss.item()) < 1e-5, name
        model.backward()
        grads_close(model, {k: p.grad.numpy() for k, p in ref.named_parameters()})
