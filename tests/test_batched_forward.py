"""forward_cached_batch: several sequences, each with its own KV cache, decoded in one pass.

The reference is the same model's one-sequence forward_cached run on each sequence alone; the
batched pass stacks every sequence's new rows into each matrix product, so its logits agree with
the lone pass's within float32 rounding of a differently blocked product (1e-5 of their largest
magnitude), and every cache holds the same keys and values.
"""
from __future__ import annotations

import numpy as np
import pytest

from pythia.models.gpt2 import Pythia, PythiaConfig
from pythia.models.llama import Llama, LlamaConfig

MODELS = {
    "gpt2": lambda: Pythia(PythiaConfig(vocab_size=50, block_size=24, d_model=32, n_layer=2, n_head=4), seed=1),
    "llama": lambda: Llama(LlamaConfig(vocab_size=60, block_size=24, d_model=32, n_layer=2, n_head=4, n_kv_head=2,
                                       d_ff=48, qkv_bias=True), seed=2),
}


@pytest.mark.parametrize("family", sorted(MODELS))
def test_batched_steps_equal_each_sequence_decoded_alone(family):
    model = MODELS[family]()
    rng = np.random.default_rng(0)
    V = model.config.vocab_size
    prompts = [rng.integers(0, V, n) for n in (5, 1, 9)]
    alone = [model.new_kv_cache() for _ in prompts]
    together = [model.new_kv_cache() for _ in prompts]
    # step 1: all prefill together; steps 2..: one token each, and a sequence prefilling late
    want = np.stack([model.forward_cached(p, c) for p, c in zip(prompts, alone)])       # (B, V)
    got = model.forward_cached_batch(prompts, together)                                   # (B, V)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    for step in range(4):
        new = [rng.integers(0, V, 1) for _ in prompts]
        want = np.stack([model.forward_cached(t, c) for t, c in zip(new, alone)])
        got = model.forward_cached_batch(new, together)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())
    for a, b in zip(alone, together):
        assert a.length == b.length
        np.testing.assert_allclose(b.k[:, :, :b.length], a.k[:, :, :a.length], rtol=0, atol=1e-5)
        np.testing.assert_allclose(b.v[:, :, :b.length], a.v[:, :, :a.length], rtol=0, atol=1e-5)
    late = model.new_kv_cache()
    mixed = model.forward_cached_batch([rng.integers(0, V, 6), np.array([3])], [late, together[0]])
    assert mixed.shape == (2, V) and late.length == 6 and together[0].length == 5 + 4 + 1


@pytest.mark.parametrize("family", sorted(MODELS))
def test_batched_forward_refuses_an_overflowing_cache_or_an_empty_sequence(family):
    model = MODELS[family]()
    cache = model.new_kv_cache()
    with pytest.raises(ValueError, match="block_size"):
        model.forward_cached_batch([np.zeros(25, int)], [cache])
    with pytest.raises(ValueError, match="at least one new token"):
        model.forward_cached_batch([np.zeros(0, int)], [cache])
    with pytest.raises(ValueError, match="one cache per sequence"):
        model.forward_cached_batch([np.zeros(2, int)], [cache, model.new_kv_cache()])
    assert cache.length == 0
