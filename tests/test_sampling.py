"""Generation and sampling: KV cache vs full recompute, greedy vs argmax, seeds, top-k / top-p support.

The independent reference for generation is a plain loop over `model.forward` on the last
block_size tokens; cached generation must give the very same tokens, also past block_size.
Distribution checks compare `next_token_probs` with the softmax written out in the test
(atol 1e-12, float64) and sampled sets with the support those probabilities allow.
"""
from __future__ import annotations

import numpy as np
import pytest

from pythia.errors import ConfigError
from pythia.model import Pythia, PythiaConfig
from pythia.sampling import next_token_probs, sample_token

CFG = PythiaConfig(vocab_size=13, block_size=8, d_model=16, n_layer=2, n_head=2)


@pytest.fixture(scope="module")
def model() -> Pythia:
    m = Pythia(CFG, seed=0)
    for p in m.params.values():
        if p.ndim == 2:
            p *= 10.0                                             # sharper, more varied predictions than N(0, 0.02)
    return m


def reference_greedy(model: Pythia, prompt: list[int], n: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(n):
        logits = model.forward(np.array([tokens[-CFG.block_size:]]))[0, -1]
        tokens.append(int(np.argmax(logits)))
    return tokens[len(prompt):]


@pytest.mark.parametrize("prompt", [[3], [1, 2, 3], list(range(12))], ids=["one", "short", "longer-than-block"])
def test_greedy_matches_argmax_of_forward_cached_and_uncached(model, prompt):
    expected = reference_greedy(model, prompt, 20)                # runs well past block_size=8
    assert list(model.generate(prompt, 20, temperature=0)) == expected
    assert list(model.generate(prompt, 20, temperature=0, use_cache=False)) == expected
    assert len(set(expected)) > 1                                 # a model that repeats one token proves little


@pytest.mark.parametrize("kw", [dict(), dict(top_k=4), dict(top_p=0.8, temperature=0.7)])
def test_cached_and_uncached_sampling_give_identical_tokens(model, kw):
    cached = list(model.generate([5, 6], 25, rng=np.random.default_rng(7), **kw))
    uncached = list(model.generate([5, 6], 25, rng=np.random.default_rng(7), use_cache=False, **kw))
    assert cached == uncached


def test_same_seed_same_tokens_different_seed_different_tokens(model):
    a = list(model.generate([1], 30, rng=np.random.default_rng(1)))
    b = list(model.generate([1], 30, rng=np.random.default_rng(1)))
    c = list(model.generate([1], 30, rng=np.random.default_rng(2)))
    assert a == b and a != c
    assert all(isinstance(t, int) and 0 <= t < CFG.vocab_size for t in a)


def test_cached_step_logits_match_full_forward(model):
    tokens = [4, 9, 1, 0, 12, 7]
    cache = model.new_kv_cache()
    model.forward_cached(np.array(tokens[:3]), cache)
    for n in range(4, len(tokens) + 1):
        step = model.forward_cached(np.array(tokens[n - 1:n]), cache)
        full = model.forward(np.array([tokens[:n]]))[0, -1]
        np.testing.assert_allclose(step, full, rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="block_size"):
        model.forward_cached(np.arange(3), cache)                 # 6 + 3 > 8


def test_generate_streams_lazily(model):
    it = model.generate([2], 3, temperature=0)
    assert isinstance(next(it), int)
    assert len(list(it)) == 2
    assert list(model.generate([2], 0)) == []


# ----------------------------------------------------------------------------- the distribution

LOGITS = np.log(np.array([0.05, 0.5, 0.02, 0.3, 0.1, 0.03]))     # probabilities 0.5 > 0.3 > 0.1 > 0.05 > 0.03 > 0.02


def test_temperature_divides_the_logits():
    for temperature in (0.5, 1.0, 2.0):
        z = LOGITS / temperature
        expected = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
        np.testing.assert_allclose(next_token_probs(LOGITS, temperature), expected, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(next_token_probs(LOGITS, 0), np.eye(6)[1])


@pytest.mark.parametrize("top_k, support", [(1, {1}), (2, {1, 3}), (3, {1, 3, 4}), (6, set(range(6)))])
def test_top_k_keeps_exactly_the_k_most_likely(top_k, support):
    probs = next_token_probs(LOGITS, 1.0, top_k=top_k)
    assert set(np.flatnonzero(probs)) == support
    kept = np.array(sorted(support))
    np.testing.assert_allclose(probs[kept], np.exp(LOGITS[kept]) / np.exp(LOGITS[kept]).sum(), atol=1e-12)
    rng = np.random.default_rng(0)
    assert {sample_token(LOGITS, 1.0, top_k, None, rng) for _ in range(400)} == support


@pytest.mark.parametrize("top_p, support", [(0.4, {1}), (0.75, {1, 3}), (0.85, {1, 3, 4}), (1.0, set(range(6)))])
def test_top_p_keeps_the_smallest_set_reaching_p(top_p, support):
    probs = next_token_probs(LOGITS, 1.0, top_p=top_p)
    assert set(np.flatnonzero(probs)) == support
    assert probs.sum() == pytest.approx(1.0)
    rng = np.random.default_rng(0)
    assert {sample_token(LOGITS, 1.0, None, top_p, rng) for _ in range(600)} == support


def test_top_k_and_top_p_combine():
    # top_k=3 leaves {0.5, 0.3, 0.1} / 0.9; top_p=0.85 then needs 0.5/0.9 + 0.3/0.9 = 0.89: keeps {1, 3}
    assert set(np.flatnonzero(next_token_probs(LOGITS, 1.0, top_k=3, top_p=0.85))) == {1, 3}


def test_sample_frequencies_follow_the_probabilities():
    rng = np.random.default_rng(123)
    counts = np.bincount([sample_token(LOGITS, 1.0, None, None, rng) for _ in range(20000)], minlength=6)
    np.testing.assert_allclose(counts / 20000, np.exp(LOGITS), atol=0.015)


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("kw, message", [
    (dict(temperature=-1.0), "temperature"),
    (dict(temperature=float("nan")), "temperature"),
    (dict(top_k=0), "top_k"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
])
def test_bad_sampling_settings_raise_config_error_before_any_token(model, kw, message):
    with pytest.raises(ConfigError, match=message):
        model.generate([1], 5, **kw)                              # raised at the call, not at the first next()


def test_bad_prompts_are_rejected(model):
    with pytest.raises(ValueError, match="empty"):
        model.generate([], 5)
    with pytest.raises(ValueError, match=r"13 is outside the vocabulary \[0, 13\)"):
        model.generate([1, 13], 5)
    with pytest.raises(ConfigError, match="max_new_tokens"):
        model.generate([1], -1)
