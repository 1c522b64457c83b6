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


class Opt(DeltaOptimizer):
    """DeltaOptimizer over dict params: moves them into one flat buffer in `order` (the dict then
    holds views into it; ranges decay where the tensor is 2-d) and takes gradients by name."""

    def __init__(self, params: dict[str, np.ndarray], order: list[str] | None = None, **settings):
        layout, pos = {}, 0
        for k in order or list(params):
            layout[k] = (pos, params[k].shape)
            pos += params[k].size
        flat = np.empty(pos, np.float32)
        for k, (lo, shape) in layout.items():
            view = flat[lo:lo + params[k].size].reshape(shape)
            view[...] = params[k]
            params[k] = view
        mask = [(lo, lo + math.prod(shape), len(shape) == 2) for lo, shape in layout.values()]
        super().__init__(flat, np.zeros_like(flat), mask, layout, **settings)

    def step(self, grads=None) -> dict:
        if isinstance(grads, dict):                               # gradients by name -> (P,)
            flat = np.empty_like(self.params_memory)
            for k, (lo, shape) in self.layout.items():
                flat[lo:lo + math.prod(shape)] = grads[k].reshape(-1)
            grads = flat
        return super().step(grads)


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
    opt = Opt(params, lr=1e-2, min_lr=1e-3, warmup_steps=2, total_steps=5, beta1=0.9,
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
    opt = Opt(params, lr=0.5, warmup_steps=0, total_steps=10, weight_decay=0.2)
    opt.step({k: np.zeros_like(v) for k, v in params.items()})  # zero gradient: only decay moves p
    lr = opt.lr_at(0)
    np.testing.assert_allclose(params["w"], start["w"] * (1 - lr * 0.2), rtol=1e-6)
    np.testing.assert_allclose(params["emb"], start["emb"] * (1 - lr * 0.2), rtol=1e-6)
    np.testing.assert_array_equal(params["b"], start["b"])
    np.testing.assert_array_equal(params["ln.weight"], start["ln.weight"])


def test_params_are_updated_in_place():
    params = make_params()
    opt = Opt(params)
    arrays = dict(params)
    opt.step(make_grads(params, 1))
    assert all(params[k] is arrays[k] for k in params)


def test_schedule_warms_up_linearly_then_follows_the_cosine_to_min_lr():
    opt = Opt(make_params(), lr=1e-3, min_lr=1e-4, warmup_steps=100, total_steps=2000)
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
    assert Opt(make_params(), warmup_steps=0).lr_at(0) == pytest.approx(1e-3)


def test_state_round_trip_continues_identically():
    a_params, b_params = make_params(), make_params()
    a = Opt(a_params, lr=1e-2, warmup_steps=1, total_steps=8)
    for s in range(3):
        a.step(make_grads(a_params, s))
    state = a.state_arrays()
    assert state["t"] == 3 and state["m/w"].shape == (4, 3)
    for k in b_params:
        b_params[k][...] = a_params[k]
    b = Opt(b_params, lr=1e-2, warmup_steps=1, total_steps=8)
    b.load_state_arrays(state)
    assert b.t == 3
    for s in range(3, 6):
        a.step(make_grads(a_params, s))
        b.step(make_grads(b_params, s))
    for k in a_params:
        np.testing.assert_array_equal(a_params[k], b_params[k])


def test_bad_state_names_the_entry():
    opt = Opt(make_params())
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
        Opt(make_params(), **kwargs)


@pytest.mark.parametrize("grad_scale", [0.1, 3.0], ids=["no-clip", "clipped"])
def test_merged_and_per_tensor_decay_ranges_and_any_layout_give_the_same_bits(grad_scale):
    # the update is element-wise: cutting the buffer into one range per tensor, or laying the
    # tensors out in another order, changes no float32 value; the gradient is read, never modified
    a_params, b_params = make_params(3), make_params(3)
    a = Opt(a_params, ["w", "emb", "b", "ln.weight"], lr=1e-2, warmup_steps=1)
    b = Opt(b_params, ["b", "w", "ln.weight", "emb"], lr=1e-2, warmup_steps=1)
    n2 = a_params["w"].size + a_params["emb"].size
    merged = DeltaOptimizer(a.params_memory.copy(), a.grads_memory, [(0, n2, True), (n2, a.params_memory.size, False)],
                            a.layout, lr=1e-2, warmup_steps=1)
    for s in range(4):
        g = make_grads(a_params, s, grad_scale)
        flat = np.concatenate([g[k].reshape(-1) for k in a.layout])
        before = flat.copy()
        a.step(g)
        b.step(g)
        merged.step(flat)
        np.testing.assert_array_equal(flat, before)
        np.testing.assert_array_equal(merged.params_memory, a.params_memory)
        for k in a_params:
            np.testing.assert_array_equal(a_params[k], b_params[k], err_msg=k)
    for k, x in a.state_arrays().items():
        np.testing.assert_array_equal(b.state_arrays()[k], x, err_msg=k)


def test_for_model_updates_the_models_buffers_with_its_decay_mask():
    from pythia.model import Pythia, PythiaConfig
    model = Pythia(PythiaConfig(vocab_size=11, block_size=8, d_model=8, n_layer=2, n_head=2))
    opt = DeltaOptimizer.for_model(model)
    n2 = sum(p.size for p in model.params.values() if p.ndim == 2)
    assert opt.params_memory is model.params_memory and opt.grads_memory is model.grads_memory
    assert opt.decay_mask == [(0, n2, True), (n2, model.num_params(), False)]
    assert set(opt.state_arrays()) == {"t"} | {f"{w}/{k}" for k in model.params for w in "mv"}
    model.loss(np.zeros((2, 8), int), np.ones((2, 8), int))
    model.backward()
    before = {k: p.copy() for k, p in model.params.items()}
    opt.step()
    assert all(not np.array_equal(model.params[k], before[k]) for k in ("wte", "h.0.ln_1.bias"))


def test_a_decay_mask_that_does_not_cover_the_buffer_is_refused():
    flat = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="cover"):
        DeltaOptimizer(flat, flat.copy(), [(0, 4, True), (5, 10, False)], {})
    with pytest.raises(ValueError, match="covers 8 of the 10"):
        DeltaOptimizer(flat, flat.copy(), [(0, 8, True)], {})
    with pytest.raises(TypeError, match="grads_memory"):
        DeltaOptimizer(flat, np.zeros(10), [(0, 10, True)], {})


def test_non_finite_gradient_stops_without_touching_params():
    params = make_params()
    start = {k: v.copy() for k, v in params.items()}
    grads = make_grads(params, 0)
    grads["b"][1] = np.nan
    with pytest.raises(PythiaError, match="diverged"):
        Opt(params).step(grads)
    for k in params:
        np.testing.assert_array_equal(params[k], start[k])


def test_matches_torch_adamw_with_clipping_and_schedule():
    torch = pytest.importorskip("torch")
    params = make_params(4)
    tparams = {k: torch.nn.Parameter(torch.from_numpy(v.copy())) for k, v in params.items()}
    groups = [{"params": [p for p in tparams.values() if p.dim() == 2], "weight_decay": 0.1},
              {"params": [p for p in tparams.values() if p.dim() < 2], "weight_decay": 0.0}]
    topt = torch.optim.AdamW(groups, lr=1e-2, betas=(0.9, 0.99), eps=1e-8)
    opt = Opt(params, lr=1e-2, min_lr=1e-3, warmup_steps=3, total_steps=10,
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
