"""DeltaOptimizer against AdamW written out in float64, against torch.optim.AdamW, and its schedule.

Tolerances: float32 parameters vs the float64 closed form, rtol 1e-5 / atol 1e-7; vs torch
(float32 on both sides, same operation order) atol 1e-6 after ten steps.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from pythia.engine import DeltaOptimizer
from pythia.errors import ConfigError, PythiaError


def make_params(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "w": rng.standard_normal((4, 3)).astype(np.float32),     # a matrix: decays
        "emb": rng.standard_normal((5, 2)).astype(np.float32),   # an embedding: decays
        "b": rng.standard_normal(3).astype(np.float32),          # a bias: never decays
        "ln.weight": rng.standard_normal(2).astype(np.float32),  # a LayerNorm gain: never decays
    }


def make_grads(params, seed: int, scale: float = 1.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {k: (scale * rng.standard_normal(p.shape)).astype(np.float32) for k, p in params.items()}


def closed_form_adamw(params, grads_seq, lrs, b1, b2, eps, wd, clip):
    """AdamW + global-norm clipping, step by step, in float64."""
    p = {k: v.astype(np.float64) for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in p.items()}
    v = {k: np.zeros_like(x) for k, x in p.items()}
    for t, (grads, lr) in enumerate(zip(grads_seq, lrs), start=1):
        g = {k: x.astype(np.float64) for k, x in grads.items()}
        norm = math.sqrt(sum(float((x * x).sum()) for x in g.values()))
        if clip > 0 and norm > clip:
            g = {k: x * clip / (norm + 1e-6) for k, x in g.items()}
        for k in p:
            if p[k].ndim == 2:
                p[k] = p[k] * (1 - lr * wd)
            m[k] = b1 * m[k] + (1 - b1) * g[k]
            v[k] = b2 * v[k] + (1 - b2) * g[k] ** 2
            m_hat = m[k] / (1 - b1 ** t)
            v_hat = v[k] / (1 - b2 ** t)
            p[k] = p[k] - lr * m_hat / (np.sqrt(v_hat) + eps)
    return p


@pytest.mark.parametrize("grad_scale", [0.1, 3.0], ids=["no-clip", "clipped"])
def test_steps_match_closed_form_adamw(grad_scale):
    params = make_params()
    start = {k: v.copy() for k, v in params.items()}
    opt = DeltaOptimizer(params, lr=1e-2, min_lr=1e-3, warmup_steps=2, total_steps=5, beta1=0.9,
                         beta2=0.99, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    grads_seq = [make_grads(params, s, grad_scale) for s in range(5)]
    lrs = []
    for i, g in enumerate(grads_seq):
        info = opt.step(g)
        lrs.append(info["lr"])
        norm = math.sqrt(sum(float((x.astype(np.float64) ** 2).sum()) for x in g.values()))
        assert info["grad_norm"] == pytest.approx(norm, rel=1e-5)   # reported before clipping
    assert opt.t == 5
    assert lrs == [opt.lr_at(s) for s in range(5)]
    expected = closed_form_adamw(start, grads_seq, lrs, 0.9, 0.99, 1e-8, 0.1, 1.0)
    for k in params:
        assert params[k].dtype == np.float32
        np.testing.assert_allclose(params[k], expected[k], rtol=1e-5, atol=1e-7, err_msg=k)


def test_weight_decay_touches_only_matrices_and_embeddings():
    params = make_params()
    start = {k: v.copy() for k, v in params.items()}
    opt = DeltaOptimizer(params, lr=0.5, warmup_steps=0, total_steps=10, weight_decay=0.2)
    opt.step({k: np.zeros_like(v) for k, v in params.items()})  # zero gradient: only decay moves p
    lr = opt.lr_at(0)
    np.testing.assert_allclose(params["w"], start["w"] * (1 - lr * 0.2), rtol=1e-6)
    np.testing.assert_allclose(params["emb"], start["emb"] * (1 - lr * 0.2), rtol=1e-6)
    np.testing.assert_array_equal(params["b"], start["b"])
    np.testing.assert_array_equal(params["ln.weight"], start["ln.weight"])


def test_params_are_updated_in_place():
    params = make_params()
    arrays = dict(params)
    DeltaOptimizer(params).step(make_grads(params, 1))
    assert all(params[k] is arrays[k] for k in params)


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_min_lr():
    opt = DeltaOptimizer(make_params(), lr=1e-3, min_lr=1e-4, warmup_steps=100, total_steps=2000)
    assert opt.lr_at(0) == pytest.approx(1e-5)                    # lr * (step + 1) / warmup
    assert opt.lr_at(49) == pytest.approx(5e-4)
    assert opt.lr_at(99) == pytest.approx(1e-3)
    assert opt.lr_at(100) == pytest.approx(1e-3)                  # cosine starts at lr
    assert opt.lr_at(1050) == pytest.approx(5.5e-4)               # halfway: (lr + min_lr) / 2
    assert opt.lr_at(575) == pytest.approx(1e-4 + 0.5 * (1 + math.cos(math.pi / 4)) * 9e-4)
    assert opt.lr_at(2000) == pytest.approx(1e-4)
    assert opt.lr_at(5000) == pytest.approx(1e-4)
    decay = [opt.lr_at(s) for s in range(100, 2001)]
    assert all(a >= b for a, b in zip(decay, decay[1:]))
    assert DeltaOptimizer(make_params(), warmup_steps=0).lr_at(0) == pytest.approx(1e-3)


def test_state_round_trip_continues_identically():
    a_params, b_params = make_params(), make_params()
    a = DeltaOptimizer(a_params, lr=1e-2, warmup_steps=1, total_steps=8)
    for s in range(3):
        a.step(make_grads(a_params, s))
    state = a.state_arrays()
    assert state["t"] == 3 and state["m/w"].shape == (4, 3)
    for k in b_params:
        b_params[k][...] = a_params[k]
    b = DeltaOptimizer(b_params, lr=1e-2, warmup_steps=1, total_steps=8)
    b.load_state_arrays(state)
    assert b.t == 3
    for s in range(3, 6):
        a.step(make_grads(a_params, s))
        b.step(make_grads(b_params, s))
    for k in a_params:
        np.testing.assert_array_equal(a_params[k], b_params[k])


def test_bad_state_names_the_entry():
    opt = DeltaOptimizer(make_params())
    state = opt.state_arrays()
    with pytest.raises(ValueError, match="v/b.*missing"):
        opt.load_state_arrays({k: v for k, v in state.items() if k != "v/b"})
    with pytest.raises(ValueError, match=r"m/w.*\(3, 4\)"):
        opt.load_state_arrays({**state, "m/w": np.zeros((3, 4), np.float32)})
    with pytest.raises(ValueError, match="m/extra"):
        opt.load_state_arrays({**state, "m/extra": np.zeros(1, np.float32)})


@pytest.mark.parametrize("kwargs, message", [
    (dict(lr=0), "lr must be > 0"),
    (dict(lr=1e-3, min_lr=1e-2), "min_lr must lie in"),
    (dict(beta2=1.0), "beta1 and beta2"),
    (dict(warmup_steps=-1), "warmup_steps"),
    (dict(total_steps=0), "total_steps"),
    (dict(grad_clip=-1), "grad_clip"),
    (dict(weight_decay=-0.1), "weight_decay"),
])
def test_bad_hyperparameters_raise_config_error(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        DeltaOptimizer(make_params(), **kwargs)


def tiled(arrays: dict[str, np.ndarray], order: list[str]) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Copies of the arrays as views laid end to end in one flat buffer, in `order`."""
    flat = np.concatenate([arrays[k].reshape(-1) for k in order])
    views, pos = {}, 0
    for k in order:
        views[k] = flat[pos:pos + arrays[k].size].reshape(arrays[k].shape)
        pos += arrays[k].size
    return {k: views[k] for k in arrays}, flat


@pytest.mark.parametrize("grad_scale", [0.1, 3.0], ids=["no-clip", "clipped"])
@pytest.mark.parametrize("order", [["w", "emb", "b", "ln.weight"], ["b", "w", "ln.weight", "emb"]],
                         ids=["matrices-first", "interleaved"])
def test_flat_buffer_path_equals_per_tensor_path(order, grad_scale):
    # params (and grads) that tile one buffer take the whole-buffer path: same float32 values,
    # bit for bit, as separate arrays; the model's gradients are read, never modified
    separate = make_params(3)
    flat_params, flat = tiled(separate, order)
    a, b = DeltaOptimizer(separate, lr=1e-2, warmup_steps=1), DeltaOptimizer(flat_params, lr=1e-2, warmup_steps=1)
    assert b._flat_p is flat and a._flat_p is None
    grad_store, _ = tiled(make_grads(separate, 0), order)
    for s in range(4):
        g = make_grads(separate, s, grad_scale)
        for k in g:
            grad_store[k][...] = g[k]                      # same arrays each step, as a model's grads
        before = {k: v.copy() for k, v in grad_store.items()}
        a.step(g)
        b.step(grad_store)
        assert b._flat_g is not None
        for k in separate:
            np.testing.assert_array_equal(flat_params[k], separate[k], err_msg=k)
            np.testing.assert_array_equal(grad_store[k], before[k], err_msg=k)
    for k, x in a.state_arrays().items():
        np.testing.assert_array_equal(b.state_arrays()[k], x, err_msg=k)


def test_pythia_params_and_grads_tile_flat_buffers():
    from pythia.model import Pythia, PythiaConfig
    model = Pythia(PythiaConfig(vocab_size=11, block_size=8, d_model=8, n_layer=2, n_head=2))
    opt = DeltaOptimizer(model.params)
    n2 = sum(p.size for p in model.params.values() if p.ndim == 2)
    assert opt._flat_p is not None and opt._runs == [(0, n2, True), (n2, model.num_params(), False)]
    model.loss(np.zeros((2, 8), int), np.ones((2, 8), int))
    model.backward()
    opt.step(model.grads)
    assert opt._flat_g is not None


def test_non_finite_gradient_stops_without_touching_params():
    params = make_params()
    start = {k: v.copy() for k, v in params.items()}
    grads = make_grads(params, 0)
    grads["b"][1] = np.nan
    with pytest.raises(PythiaError, match="diverged"):
        DeltaOptimizer(params).step(grads)
    for k in params:
        np.testing.assert_array_equal(params[k], start[k])


def test_matches_torch_adamw_with_clipping_and_schedule():
    torch = pytest.importorskip("torch")
    params = make_params(4)
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    groups = [{"params": [p for p in tparams.values() if p.dim() == 2], "weight_decay": 0.1},
              {"params": [p for p in tparams.values() if p.dim() < 2], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    opt = DeltaOptimizer(params, lr=1e-2, min_lr=1e-3, warmup_steps=3, total_steps=10,
                         beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.1, grad_clip=1.0)
    for s in range(10):
        grads = make_grads(params, 10 + s, scale=0.2 if s % 2 else 2.0)   # clipped on even steps only
        for k, p in tparams.items():
            p.grad = torch.from_numpy(grads[k].copy())
        norm = torch.nn.utils.clip_grad_norm_(list(tparams.values()), 1.0)
        for g in topt.param_groups:
            g["lr"] = opt.lr_at(s)
        topt.step()
        info = opt.step(grads)
        assert info["grad_norm"] == pytest.approx(float(norm), rel=1e-5)
    for k in params:
        np.testing.assert_allclose(params[k], tparams[k].detach().numpy(), rtol=0, atol=1e-6, err_msg=k)
