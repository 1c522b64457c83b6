"""The Pythia model: gradients against finite differences, backends against each other, API and errors.

The gradient check runs the whole model in float64 with the kernels swapped for the reference's
dtype-preserving private twins, so central differences (h = 1e-5, error ~1e-10) can be held to
a tight tolerance (rtol 1e-6 on a scale of the largest gradient in the tensor). A second test
holds the real float32 model on the active backend to that float64 reference within 1e-5 abs.
PyTorch parity lives in test_model_torch.py.

Sizes: B batch, T time, C channels, V vocabulary.
"""
from __future__ import annotations

import numpy as np
import pytest

from pythia import kernels
from pythia.engine import DeltaOptimizer
from pythia.errors import ConfigError
from pythia.kernels import reference as ref
from pythia.model import Pythia, PythiaConfig

TINY = PythiaConfig(vocab_size=11, block_size=8, d_model=8, n_layer=2, n_head=2)


def batch(cfg: PythiaConfig, B: int, T: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, cfg.vocab_size, (B, T)), rng.integers(0, cfg.vocab_size, (B, T))


def randomized(cfg: PythiaConfig, seed: int = 0) -> Pythia:
    """A model whose LayerNorm gains and biases are random too, so their gradients are exercised."""
    model = Pythia(cfg, seed=seed)
    rng = np.random.default_rng(seed + 100)
    for k, p in model.params.items():
        if p.ndim == 1:
            p[...] = (1.0 if k.endswith("ln_1.weight") or k.endswith("ln_2.weight") or k == "ln_f.weight" else 0.0) \
                + 0.1 * rng.standard_normal(p.shape)
        else:
            p *= 5.0                                              # livelier activations than N(0, 0.02)
    return model


def use_float64_kernels(monkeypatch) -> None:
    """Route every kernel to the reference's dtype-preserving twins (float64 in, float64 out)."""
    monkeypatch.setattr(kernels, "layernorm_forward", lambda x, w, b, eps=1e-5: ref._layernorm_forward(x, w, b, eps))
    monkeypatch.setattr(kernels, "layernorm_backward", ref._layernorm_backward)
    monkeypatch.setattr(kernels, "gelu_forward", ref._gelu_forward)
    monkeypatch.setattr(kernels, "gelu_backward", ref._gelu_backward)
    monkeypatch.setattr(kernels, "attention_softmax_forward", ref._attention_softmax_forward)
    monkeypatch.setattr(kernels, "attention_softmax_backward", ref._attention_softmax_backward)
    monkeypatch.setattr(kernels, "crossentropy_forward", ref._crossentropy_forward)
    monkeypatch.setattr(kernels, "crossentropy_backward", ref._crossentropy_backward)


@pytest.fixture
def float64_kernels(monkeypatch):
    use_float64_kernels(monkeypatch)


def to_float64(model: Pythia) -> Pythia:
    for k in model.params:
        model.params[k] = model.params[k].astype(np.float64)
        model.grads[k] = np.zeros_like(model.params[k])
    return model


# ----------------------------------------------------------------------------- gradients

def test_every_gradient_matches_central_differences_in_float64(float64_kernels):
    model = to_float64(randomized(TINY))
    model.loss(*batch(TINY, B=3, T=8, seed=9))                    # a longer batch first fills all of wpe's grad
    model.backward()
    idx, targets = batch(TINY, B=3, T=6)                          # T < block_size: wpe[6:] must now get 0
    model.loss(idx, targets)
    model.backward()
    h = 1e-5
    for name, p in model.params.items():
        numeric = np.zeros_like(p)
        flat, nflat = p.reshape(-1), numeric.reshape(-1)
        for j in range(flat.size):
            old = flat[j]
            flat[j] = old + h
            up = model.loss(idx, targets)
            flat[j] = old - h
            down = model.loss(idx, targets)
            flat[j] = old
            nflat[j] = (up - down) / (2 * h)                      # dL/dp ~ (L(p+h) - L(p-h)) / 2h
        analytic = model.grads[name]
        scale = max(np.abs(numeric).max(), 1e-3)
        np.testing.assert_allclose(analytic, numeric, rtol=0, atol=1e-6 * scale, err_msg=name)
    assert np.all(model.grads["wpe"][6:] == 0)


def test_float32_gradients_on_active_backend_match_float64_reference(monkeypatch):
    model32 = randomized(TINY, seed=3)
    idx, targets = batch(TINY, B=4, T=8, seed=3)
    loss32 = model32.loss(idx, targets)
    model32.backward()
    with monkeypatch.context() as m:
        use_float64_kernels(m)
        model64 = to_float64(randomized(TINY, seed=3))
        loss64 = model64.loss(idx, targets)
        model64.backward()
    assert loss32 == pytest.approx(loss64, abs=1e-5)
    for name in model32.params:
        assert model32.grads[name].dtype == np.float32
        np.testing.assert_allclose(model32.grads[name], model64.grads[name], rtol=1e-4, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("T", [8, 7, 2])
def test_split_query_blocks_give_the_whole_blocks_loss_and_gradients(float64_kernels, monkeypatch, T):
    # long blocks (T >= SPLIT_MIN_T) run attention as two query halves that skip the masked
    # quarter of keys; with the threshold lowered, this tiny model takes that path, and its loss
    # and every gradient must equal the single-block computation (proven by finite differences
    # above) to float64 rounding. T=7 splits unevenly (3 + 4 queries), T=2 into single rows.
    from pythia import layers
    idx, targets = batch(TINY, B=3, T=T, seed=5)
    results = []
    for split_min in (10**9, 2):
        monkeypatch.setattr(layers, "SPLIT_MIN_T", split_min)
        assert len(layers.query_blocks(T)) == (1 if split_min > T else 2)
        model = to_float64(randomized(TINY, seed=5))
        loss = model.loss(idx, targets)
        model.backward()
        results.append((loss, {k: g.copy() for k, g in model.grads.items()}))
    (loss_whole, g_whole), (loss_split, g_split) = results
    assert loss_split == pytest.approx(loss_whole, rel=1e-12)
    for name in g_whole:
        np.testing.assert_allclose(g_split[name], g_whole[name], rtol=1e-10, atol=1e-12, err_msg=name)


@pytest.mark.parametrize("shards", [2, 3])
def test_batch_split_across_threads_gives_the_whole_batch_loss_and_gradients(float64_kernels, monkeypatch, shards):
    # the system layer's ShardedModel runs a large model's training pass as one shard of the batch
    # per core, each on its own thread, and adds the shards' gradients; forced here on a tiny model
    # in float64, the loss and every gradient must equal the unsplit pass to float64 rounding
    # (3 shards of B=4: 1 + 1 + 2 rows)
    from pythia.system import threads
    from pythia.system.sharding import ShardedModel
    idx, targets = batch(TINY, B=4, T=8, seed=9)
    results = []
    for n in (1, shards):
        monkeypatch.setattr(threads, "shards_for", lambda batch, mnk, n=n: n)
        model = ShardedModel(to_float64(randomized(TINY, seed=9)))
        for _ in range(2):                                        # twice: shard buffers are reused, not summed into
            loss = model.loss(idx, targets)
            model.backward()
        assert len(model._acts) == n
        results.append((loss, {k: g.copy() for k, g in model.grads.items()}))
    (loss_one, g_one), (loss_split, g_split) = results
    assert loss_split == pytest.approx(loss_one, rel=1e-12)
    for name in g_one:
        np.testing.assert_allclose(g_split[name], g_one[name], rtol=1e-10, atol=1e-12, err_msg=name)


def test_wte_gradient_holds_both_embedding_and_head_parts(float64_kernels):
    # token 10 never appears in idx: its wte row gets only the head's gradient dlogits^T hf
    model = to_float64(randomized(TINY))
    idx, targets = batch(TINY, B=2, T=5, seed=7)
    idx[idx == 10] = 0
    model.loss(idx, targets)
    model.backward()
    a = model._acts                                               # the activations of the last loss()
    dlogits = a["probs"].copy()
    dlogits[np.arange(10), a["targets"]] -= 1
    dlogits /= 10                                                 # (N, V) d(mean CE)/dlogits
    head_part = dlogits.T @ a["lnf"]                              # (V, C)
    np.testing.assert_allclose(model.grads["wte"][10], head_part[10], atol=1e-12)
    used = idx[0, 0]
    assert not np.allclose(model.grads["wte"][used], head_part[used])  # embedding part added on top


def test_both_backends_give_the_same_losses_over_training_steps():
    before = kernels.BACKEND
    try:
        kernels.use("cython")
    except RuntimeError as err:
        pytest.skip(f"compiled kernels not built: {err}")
    cfg = PythiaConfig(vocab_size=13, block_size=12, d_model=16, n_layer=2, n_head=4)
    idx, targets = batch(cfg, B=4, T=12, seed=5)
    curves = {}
    try:
        for backend in ("cython", "numpy"):
            kernels.use(backend)
            model = Pythia(cfg, seed=1)
            opt = DeltaOptimizer.for_model(model, lr=1e-2, warmup_steps=2, total_steps=6)
            losses = []
            for _ in range(6):
                losses.append(model.loss(idx, targets))
                model.backward()
                opt.step()
            curves[backend] = losses
    finally:
        kernels.use(before)
    assert curves["cython"][-1] < curves["cython"][0]            # it trains
    np.testing.assert_allclose(curves["cython"], curves["numpy"], rtol=1e-5)


# ----------------------------------------------------------------------------- forward and init

def test_init_is_gpt2_shaped_float32_and_scaled():
    cfg = PythiaConfig(vocab_size=50, block_size=16, d_model=64, n_layer=4, n_head=4)
    model = Pythia(cfg, seed=0)
    C, V = 64, 50
    assert model.params["wte"].shape == (V, C) and model.params["wpe"].shape == (16, C)
    assert model.params["h.3.attn.c_attn.weight"].shape == (C, 3 * C)
    assert model.params["h.3.mlp.c_proj.weight"].shape == (4 * C, C)
    assert len(model.params) == 2 + 12 * 4 + 2
    for k, p in model.params.items():
        assert p.dtype == np.float32 and p.flags.c_contiguous, k
        assert model.grads[k].shape == p.shape and model.grads[k].dtype == np.float32, k
    assert np.all(model.params["h.0.ln_1.weight"] == 1) and np.all(model.params["ln_f.bias"] == 0)
    assert np.all(model.params["h.2.attn.c_attn.bias"] == 0)
    assert model.params["h.1.mlp.c_fc.weight"].std() == pytest.approx(0.02, rel=0.05)
    assert model.params["h.1.attn.c_proj.weight"].std() == pytest.approx(0.02 / np.sqrt(8), rel=0.05)
    assert model.num_params() == V * C + 16 * C + 4 * (12 * C * C + 13 * C) + 2 * C
    same = Pythia(cfg, seed=0)
    assert all(np.array_equal(same.params[k], p) for k, p in model.params.items())


def test_a_model_built_to_be_loaded_skips_the_draw_and_loads_the_same():
    # init=False: every parameter 0 (no random draw); loading weights then gives exactly the
    # model the weights came from, as with a randomly initialised one
    src = Pythia(TINY, seed=3)
    empty = Pythia(TINY, init=False)
    assert all(not p.any() for p in empty.params.values())
    drawn = Pythia(TINY, seed=4)
    arrays = {k: p.copy() for k, p in src.params.items()}
    empty.load_params(arrays)
    drawn.load_params(arrays)
    idx, _ = batch(TINY, 2, 5)
    np.testing.assert_array_equal(empty.forward(idx), src.forward(idx))
    np.testing.assert_array_equal(drawn.forward(idx), src.forward(idx))


def test_forward_logits_give_the_loss_and_are_causal():
    model = randomized(TINY, seed=2)
    idx, targets = batch(TINY, B=2, T=7, seed=2)
    logits = model.forward(idx)
    assert logits.shape == (2, 7, TINY.vocab_size) and logits.dtype == np.float32
    z = logits.astype(np.float64)
    logp = z - z.max(-1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(-1, keepdims=True))
    expected = -np.take_along_axis(logp, targets[..., None], -1).mean()
    assert model.loss(idx, targets) == pytest.approx(expected, abs=1e-5)
    changed = idx.copy()
    changed[:, 4] = (changed[:, 4] + 1) % TINY.vocab_size        # a later token must not move earlier logits
    after = model.forward(changed)
    np.testing.assert_array_equal(after[:, :4], logits[:, :4])
    assert not np.allclose(after[:, 4:], logits[:, 4:])


def test_load_params_copies_in_place_and_names_the_bad_key():
    a, b = Pythia(TINY, seed=0), Pythia(TINY, seed=1)
    arrays = {k: p.copy() for k, p in b.params.items()}
    wte = a.params["wte"]
    a.load_params(arrays)
    assert a.params["wte"] is wte                                 # optimizers keep their references
    idx, _ = batch(TINY, 2, 5)
    np.testing.assert_array_equal(a.forward(idx), b.forward(idx))
    with pytest.raises(ValueError, match=r"h\.1\.ln_2\.bias.*missing"):
        a.load_params({k: v for k, v in arrays.items() if k != "h.1.ln_2.bias"})
    with pytest.raises(ValueError, match="lm_head.weight"):
        a.load_params({**arrays, "lm_head.weight": arrays["wte"]})
    with pytest.raises(ValueError, match=r"wpe.*\(9, 8\)"):
        a.load_params({**arrays, "wpe": np.zeros((9, 8), np.float32)})


def test_backward_before_loss_says_what_to_call():
    with pytest.raises(RuntimeError, match="loss"):
        Pythia(TINY).backward()


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("change, message", [
    (dict(d_model=50, n_head=4), r"d_model \(50\) must be divisible by n_head \(4\); use e\.g\. d_model 48"),
    (dict(n_layer=0), "n_layer must be positive"),
    (dict(vocab_size=-3), "vocab_size must be positive"),
    (dict(block_size=8.5), "block_size must be a whole number"),
    (dict(n_head=True), "n_head must be a whole number"),
])
def test_bad_config_raises_config_error_with_a_fix(change, message):
    cfg = PythiaConfig(**{**TINY.to_dict(), **change})
    with pytest.raises(ConfigError, match=message):
        cfg.validate()
    with pytest.raises(ConfigError):
        Pythia(cfg)


def test_config_from_dict_round_trips_and_rejects_unknown_keys():
    assert PythiaConfig.from_dict(TINY.to_dict()) == TINY
    with pytest.raises(ConfigError, match="dropout"):
        PythiaConfig.from_dict({**TINY.to_dict(), "dropout": 0})


@pytest.mark.parametrize("idx, message", [
    (np.zeros((2, 3), np.float32), "integer token ids"),
    (np.zeros(5, np.int64), r"shape \(B, T\)"),
    (np.zeros((2, 9), np.int64), "T=9 .*block_size=8"),
    (np.zeros((2, 0), np.int64), "T=0"),
    (np.full((1, 3), 11), r"\[0, 11\).*11 to 11"),
    (np.full((1, 3), -1), r"\[0, 11\)"),
])
def test_bad_idx_raises_value_error_naming_the_problem(idx, message):
    model = Pythia(TINY)
    with pytest.raises(ValueError, match=message):
        model.forward(idx)


def test_bad_targets_are_rejected():
    model = Pythia(TINY)
    idx, targets = batch(TINY, 2, 4)
    with pytest.raises(ValueError, match="targets has shape"):
        model.loss(idx, targets[:, :3])
    with pytest.raises(ValueError, match="targets values"):
        model.loss(idx, targets + TINY.vocab_size)
