"""Perplexity and model agreement over a long token sequence, by sliding windows.

The windows are those of Hugging Face's "Perplexity of fixed-length models" guide: for
begin in 0, stride, 2 stride, ...: end = min(begin + context, n); the window ids[begin:end] is
run through the model and only its last trg_len = end - prev_end tokens are scored (the ones
no earlier window scored), each with the window's tokens before it as context; stop at the
window that reaches the end. A window's first token has no prediction, so it is never scored.

    perplexity(logits_fn, ids, context, stride) -> {"tokens", "nll", "ppl", "windows"}
    compare(logits_fn_a, logits_fn_b, ids, context, stride) -> {"tokens", "kl", "top1", "nll", "ppl"}

logits_fn(idx (1, T) int64) -> logits (1, T, V) float32. nll is the mean negative log-likelihood
in nats over the scored tokens (each token weighted once: the exact mean, the default). The
guide's own loops weight each window's mean loss instead: by trg_len over the text length
(weighting="trg_len", the guide's original loop: ppl = exp(sum(loss * trg_len) / end_loc)) or by
trg_len - 1 (weighting="loss_tokens", the current guide's num_loss_tokens); these differ from
the exact mean only in the windows that score their first token's successor (the first, and
every window when stride == context). Pure NumPy.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator

import numpy as np

LogitsFn = Callable[[np.ndarray], np.ndarray]
WEIGHTINGS = ("tokens", "trg_len", "loss_tokens")


def windows(n: int, context: int, stride: int) -> Iterator[tuple[int, int, int]]:
    """(begin, end, trg_len) of each window over n tokens, in the guide's order."""
    prev_end = 0
    for begin in range(0, n, stride):
        end = min(begin + context, n)
        yield begin, end, end - prev_end
        prev_end = end
        if end == n:
            break


def _check(ids, context: int, stride: int, max_context: int | None) -> np.ndarray:
    ids = np.asarray(ids)
    if ids.ndim != 1 or (ids.size and ids.dtype.kind not in "iu"):
        raise ValueError(f"ids must be a 1-d sequence of integer token ids, got shape {ids.shape} of {ids.dtype}")
    if ids.size < 2:
        raise ValueError(f"the text has {ids.size} token(s); perplexity needs at least 2 (give a longer text)")
    for name, v in (("context", context), ("stride", stride)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
            raise ValueError(f"{name} must be an integer, got {v!r}")
    if context < 2:
        raise ValueError(f"context must be at least 2 tokens, got {context}")
    if max_context is not None and context > max_context:
        raise ValueError(f"context {context} exceeds the model's {max_context} positions; use --context {max_context} or less")
    if not 1 <= stride <= context:
        raise ValueError(f"stride must be between 1 and the context ({context}), got {stride}")
    return ids.astype(np.int64)


CHUNK = 64  # scored positions per float64 log-softmax (64 x V = 50257: 26 MB)


def _scored_logits(logits_fn: LogitsFn, window: np.ndarray, first: int) -> np.ndarray:
    """Logits that predict the scored positions j in [first, T): (T - first, V), row j-1 for j."""
    T = window.size
    logits = np.asarray(logits_fn(window[None, :]))                    # (1, T, V)
    if logits.ndim != 3 or logits.shape[:2] != (1, T):
        raise ValueError(f"logits_fn must return logits of shape (1, {T}, V), got {logits.shape}")
    return logits[0, first - 1:T - 1]                                  # (S, V)


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z.astype(np.float64)                                           # (s, V)
    z -= z.max(axis=-1, keepdims=True)                                 # shifted for exp
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))           # (s, V) log p


def _total(ids, context, stride) -> int:
    # scored tokens: min(trg_len, T - 1) per window of T tokens
    return sum(min(t, end - begin - 1) for begin, end, t in windows(ids.size, context, stride))


def _scored(ids, context, stride):
    # each window with the first position it scores: the last trg_len, never position 0
    for begin, end, trg_len in windows(ids.size, context, stride):
        yield ids[begin:end], max(end - begin - trg_len, 1), trg_len


def perplexity(logits_fn: LogitsFn, ids, context: int, stride: int, progress=None, *,
               max_context: int | None = None, weighting: str = "tokens") -> dict:
    """Sliding-window perplexity of ids (n,): {"tokens": scored tokens, "nll": mean NLL (nats),
    "ppl": exp(nll), "windows": count}. progress(done, total) is called after each window with
    token counts. max_context: the model's positions (a larger context is refused)."""
    ids = _check(ids, context, stride, max_context)
    if weighting not in WEIGHTINGS:
        raise ValueError(f"weighting must be one of {', '.join(WEIGHTINGS)}, got {weighting!r}")
    total = _total(ids, context, stride)
    nll_sum, weight_sum, tokens, count = 0.0, 0.0, 0, 0
    for window, first, trg_len in _scored(ids, context, stride):
        z, target = _scored_logits(logits_fn, window, first), window[first:]   # (S, V), (S,)
        nll = np.concatenate([-_log_softmax(z[i:i + CHUNK])[np.arange(len(target[i:i + CHUNK])),
                                                              target[i:i + CHUNK]]
                              for i in range(0, len(target), CHUNK)])  # (S,) per scored token
        w = {"tokens": nll.size, "trg_len": trg_len, "loss_tokens": trg_len - 1}[weighting]
        nll_sum += w * float(nll.mean())
        weight_sum += w
        tokens += nll.size
        count += 1
        if progress is not None:
            progress(tokens, total)
    if weighting == "trg_len":
        weight_sum = float(ids.size)                                   # the guide divides by end_loc
    mean = nll_sum / weight_sum
    return {"tokens": tokens, "nll": mean, "ppl": math.exp(mean), "windows": count}


def compare(logits_fn_a: LogitsFn, logits_fn_b: LogitsFn, ids, context: int, stride: int,
            progress=None, *, max_context: int | None = None) -> dict:
    """Agreement of model b with reference a on the scored positions of the same windows:
    {"tokens", "kl": mean KL(P_a || P_b) = sum_v P_a(v) (log P_a(v) - log P_b(v)) in nats,
    "top1": fraction of positions where both give the same most likely token, "nll", "ppl":
    model b's perplexity as perplexity() gives it (the exact token mean), from the same pass}."""
    ids = _check(ids, context, stride, max_context)
    kl_sum, nll_sum, same, tokens, total = 0.0, 0.0, 0, 0, _total(ids, context, stride)
    for window, first, _ in _scored(ids, context, stride):
        target = window[first:]                                        # (S,) the scored tokens
        za = _scored_logits(logits_fn_a, window, first)                # (S, V)
        zb = _scored_logits(logits_fn_b, window, first)                # (S, V)
        if za.shape != zb.shape:
            raise ValueError(f"the two models' logits differ in shape ({za.shape} vs {zb.shape}); "
                             f"they must share a vocabulary")
        for i in range(0, za.shape[0], CHUNK):
            la, lb = _log_softmax(za[i:i + CHUNK]), _log_softmax(zb[i:i + CHUNK])   # (s, V) each
            kl_sum += float((np.exp(la) * (la - lb)).sum())            # sum over s positions and V
            nll_sum -= float(lb[np.arange(lb.shape[0]), target[i:i + CHUNK]].sum())  # -log P_b(target)
            same += int((la.argmax(-1) == lb.argmax(-1)).sum())
        tokens += za.shape[0]
        if progress is not None:
            progress(tokens, total)
    return {"tokens": tokens, "kl": kl_sum / tokens, "top1": same / tokens, "nll": nll_sum / tokens,
            "ppl": math.exp(nll_sum / tokens)}
