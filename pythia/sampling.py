"""Choosing the next token from logits, and the generation loop that streams tokens one at a time.

Sampling follows the usual order (as Hugging Face and nanoGPT do): divide the logits by the
temperature, keep the top_k largest (ties with the k-th kept), keep the smallest set of most
likely tokens whose probability reaches top_p, renormalise, draw one token by inverse CDF with
the caller's seeded `np.random.Generator`. Temperature 0 means greedy (argmax), no randomness.

The loop runs the model with its KV cache: prefill the prompt once, then feed one token per
step. Positions past block_size have no embedding, so once the sequence would not fit the
context is re-run on the last block_size tokens, exactly what the uncached loop does, which
keeps cached and uncached generation token-for-token identical.

Sizes: V vocabulary.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

from .errors import ConfigError
from .system import memory, threads


def check_sampling(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ConfigError with a one-line fix for a bad temperature, top_k or top_p."""
    if not isinstance(temperature, (int, float, np.number)) or not np.isfinite(temperature) or temperature < 0:
        raise ConfigError(f"temperature must be a finite number >= 0, got {temperature!r}; use 0 for greedy, ~0.8 for sampling")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 1):
        raise ConfigError(f"top_k must be a whole number >= 1, got {top_k!r}; leave it unset to keep every token")
    if top_p is not None and (not isinstance(top_p, (int, float, np.number)) or not 0 < top_p <= 1):
        raise ConfigError(f"top_p must lie in (0, 1], got {top_p!r}; e.g. 0.9, or leave it unset")


def next_token_probs(logits: np.ndarray, temperature: float, top_k: int | None = None,
                     top_p: float | None = None) -> np.ndarray:
    """The distribution (V,) float64 that sample_token draws from; for temperature 0, one-hot on the argmax."""
    z = np.asarray(logits, dtype=np.float64)                     # (V,)
    probs = np.zeros_like(z)                                     # (V,)
    if temperature == 0:
        probs[int(np.argmax(z))] = 1.0
        return probs
    z = z / temperature                                          # (V,)
    if top_k is not None and top_k < z.size:
        kth = np.partition(z, -top_k)[-top_k]                    # k-th largest logit
        z = np.where(z >= kth, z, -np.inf)                       # (V,)
    e = np.exp(z - z.max())                                      # (V,) softmax numerator, masked -> 0
    probs = e / e.sum()                                          # (V,)
    if top_p is not None and top_p < 1:
        order = np.argsort(-probs, kind="stable")                # most likely first
        cum = np.cumsum(probs[order])                            # (V,)
        # keep token j of the sorted list while the mass before it is still below top_p
        keep = order[(cum - probs[order]) < top_p]
        mask = np.zeros(probs.size, dtype=bool)
        mask[keep] = True
        probs = np.where(mask, probs, 0.0)
        probs /= probs.sum()
    return probs


def sample_token(logits: np.ndarray, temperature: float, top_k: int | None, top_p: float | None,
                 rng: np.random.Generator) -> int:
    """One token id drawn from logits (V,) under temperature / top_k / top_p; argmax when temperature is 0."""
    if temperature == 0:
        return int(np.argmax(logits))
    probs = next_token_probs(logits, temperature, top_k, top_p)  # (V,)
    cdf = np.cumsum(probs)                                       # (V,)
    u = rng.random() * cdf[-1]
    return int(min(np.searchsorted(cdf, u, side="right"), probs.size - 1))


def generate(model, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None,
             rng: np.random.Generator | None = None, use_cache: bool = True,
             observe: Callable[[np.ndarray, int], None] | None = None) -> Iterator[int]:
    """Stream max_new_tokens token ids continuing prompt; arguments are checked before the first token.

    observe(logits (V,), token), when given, sees the model's logits for each position and the
    token chosen there, before the token is yielded (chat's /probs uses it)."""
    check_sampling(temperature, top_k, top_p)
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, (int, np.integer)) or max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be a whole number >= 0, got {max_new_tokens!r}")
    tokens = [int(t) for t in prompt]
    if not tokens:
        raise ValueError("prompt is empty; generation needs at least one token to condition on")
    V = model.config.vocab_size
    bad = [t for t in tokens if not 0 <= t < V]
    if bad:
        raise ValueError(f"prompt token {bad[0]} is outside the vocabulary [0, {V})")
    rng = np.random.default_rng() if rng is None else rng
    return _loop(model, tokens, int(max_new_tokens), temperature, top_k, top_p, rng, use_cache, observe)


def _loop(model, tokens, max_new_tokens, temperature, top_k, top_p, rng, use_cache, observe=None) -> Iterator[int]:
    bs = model.config.block_size
    # the cache's pages become resident only as positions fill (system.memory.lazy_zeros)
    cache = model.new_kv_cache(zeros=memory.lazy_zeros) if use_cache else None
    per_token = threads.widest_per_token(model)

    def logits_for_next() -> np.ndarray:
        ctx = tokens[-bs:]                                       # the model sees at most block_size tokens
        with threads.for_pass(per_token * (len(ctx) if cache is None or cache.length != len(ctx) - 1 else 1)):
            return step(ctx)

    def step(ctx: list[int]) -> np.ndarray:
        if cache is None:
            return model.forward(np.array([ctx]))[0, -1]         # (V,) recompute everything
        if cache.length != len(ctx) - 1:                         # first step, or the window slid past block_size:
            cache.length = 0                                     # (re)prefill the whole context
            return model.forward_cached(np.array(ctx), cache)    # (V,)
        return model.forward_cached(np.array(ctx[-1:]), cache)   # (V,) one new token

    for _ in range(max_new_tokens):
        logits = logits_for_next()                               # (V,)
        tok = sample_token(logits, temperature, top_k, top_p, rng)
        if observe is not None:
            observe(logits, tok)
        tokens.append(tok)
        yield tok
