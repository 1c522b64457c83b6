"""The layers every model family is built from: forward/backward pairs as plain functions.

llm.c's convention: a forward returns its output (and what its backward needs); a backward
takes the arrays it writes first (parameter gradients, preallocated, overwritten), then the
upstream gradient and the forward's inputs, and returns the gradient of its input. The row- and
element-wise maths runs in `pythia.kernels`, looked up at call time so `kernels.use("numpy")`
takes effect; matrix products go to BLAS through `@`.

Sizes: N rows (B * T tokens), Cin/Cout a linear layer's widths, V vocabulary, B batch, T time,
H query heads, Hkv key/value heads (H % Hkv == 0; each kv head serves G = H // Hkv query heads;
GPT-2 is Hkv == H), hs head size, Tn new tokens of a cached step, Tk keys seen.

    linear_forward(x (N, Cin), w (Cin, Cout), b (Cout,) | None) -> (N, Cout)
    linear_out_in(x (N, Cin), w (Cout, Cin), b (Cout,) | None) -> (N, Cout)   x w^T + b
    linear_backward(dw, db | None, dout (N, Cout), x, w) -> dx (N, Cin)
    embedding_forward(wte (V, C), idx (...)) -> (..., C)
    embedding_backward(dwte, dx (N, C), idx (N,)) -> None            adds into dwte
    layernorm_forward(x, w, b, eps=1e-5) -> (y, mean, rstd)
    layernorm_backward(dy, x, w, mean, rstd) -> (dx, dw, db)
    rmsnorm_forward(x (..., C), w (C,), eps=1e-6) -> (y, rstd (...,))
    rmsnorm_backward(dy, x, w, rstd) -> (dx, dw)
    gelu_forward(x) -> y;  gelu_backward(dy, x) -> dx
    swiglu_forward(gate, up) -> silu(gate) * up;  swiglu_backward(dy, gate, up) -> (dgate, dup)
    attention_forward(y, q, k, v, scale=None) -> probs
        y (B, H, T, hs) written (a strided view into an (N, H * hs) array is fine);
        q (B, H, T, hs), k, v (B, Hkv, T, hs), views allowed; probs: one (B, H, n, hi) array per
        query block [lo, hi) of query_blocks(T)
    attention_backward(dq, dk, dv, dy, q, k, v, probs, scale=None) -> None
        dq like q, dk and dv like k and v (overwritten; views allowed), dy like y
    attention_step(q (H, Tn, hs), k, v (Hkv, Tn, hs), k_cache, v_cache (Hkv, Tmax, hs), pos, scale=None)
        -> y (H, Tn, hs); stores k, v at positions pos..pos+Tn-1 of the caches
    full_attention(probs, T) -> (B, H, T, T)
    crossentropy_forward(logits (N, V), targets (N,)) -> (losses (N,), probs (N, V))
    crossentropy_backward(probs, targets, n_total) -> dlogits (N, V), the gradient of
        sum(losses) / n_total
        a target IGNORE (-1) is not scored: its loss is 0 and its row gets no gradient (a
        conversation's user turns and padding); counted(targets) is how many rows are scored
    vocab_chunk(N, V) -> columns per chunk of the two below (about 16 MB of logits)
    head_loss_forward(h (N, C), w (V, C), targets (N,), chunk) -> (losses (N,), saved)
    head_loss_backward(dw (V, C) | None, h, w, targets, saved, n_total, chunk) -> dh (N, C)
        the head logits = h w^T and the cross-entropy together; chunk=None materialises the
        (N, V) logits (the reference), an int computes them `chunk` vocabulary columns at a time
    adapter_forward(adapter, x, out, names), adapter_backward(adapter, dx, dout, x, names, grads)
        the hook of a low-rank adapter (pythia.lora) on a linear layer; nothing when adapter is None
    drop_frozen_inputs(adapter, acts, {key: weight names}): frees kept inputs a frozen base never reads

`scale` defaults to 1 / sqrt(hs). A family that rotates q and k (rotary positions) does so on
its own arrays before attention_forward and rotates dq, dk back after attention_backward.
"""
from __future__ import annotations

import math

import numpy as np

from . import kernels

# ============================================================================ linear, embedding


VECMAT_ROWS = (1, 8)  # float32 rows for which a product with an (in, out) weight streams it once (kernels.vecmat)


def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x w + b for a weight stored (in, out), as GPT-2's Conv1D stores it. Up to 8 float32 rows
    (decoding one sequence or a batch) go to kernels.vecmat, which reads w once on every core;
    from two rows BLAS packs w into a copy first and ran at a quarter of the bandwidth, and one
    row on BLAS's single decode thread decoded GPT-2-small 0.8x as fast."""
    lo, hi = VECMAT_ROWS
    if x.ndim == 2 and lo <= len(x) <= hi and x.dtype == w.dtype == np.float32:
        return kernels.vecmat(x, w, b)                           # (N, Cin) @ (Cin, Cout) -> (N, Cout)
    out = x @ w                                                  # (N, Cin) @ (Cin, Cout) -> (N, Cout)
    if b is not None:
        out += b                                                 # (N, Cout) + (Cout,)
    return out


MATVEC_MAX_ROWS = 8  # up to this many rows a product with an (out, in) weight streams it once (kernels.matvec)


def linear_out_in(x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """x w^T + b for a weight stored (out, in), as Hugging Face stores projections (and as the
    token table is the tied head). A few float32 rows (decoding) go to kernels.matvec, which
    reads w once in memory order; BLAS's sgemv on this layout ran at half that speed. More rows
    are a matrix product, BLAS's."""
    if x.ndim == 2 and len(x) <= MATVEC_MAX_ROWS and x.dtype == w.dtype == np.float32:
        return kernels.matvec(x, w, b)                           # (N, Cin) @ (Cin, Cout) -> (N, Cout)
    out = x @ w.T                                                # (N, Cin) @ (Cin, Cout) -> (N, Cout)
    if b is not None:
        out += b
    return out


def linear_backward(dw: np.ndarray | None, db: np.ndarray | None, dout: np.ndarray, x: np.ndarray,
                    w: np.ndarray) -> np.ndarray:
    # y = x W + b  =>  dW = x^T dy, db = sum_rows dy, dx = dy W^T; dw None: W is frozen, dW is skipped
    if dw is not None:
        np.matmul(x.T, dout, out=dw)                             # (Cin, N) @ (N, Cout) -> (Cin, Cout)
    if db is not None:
        ones = np.ones(dout.shape[0], dout.dtype)                # (N,)
        np.matmul(ones, dout, out=db)                            # (N,) @ (N, Cout) -> (Cout,): the row sum as a gemv
    return dout @ w.T                                            # (N, Cout) @ (Cout, Cin) -> (N, Cin)


def adapter_forward(adapter, x: np.ndarray, out: np.ndarray, names: tuple[str, ...]) -> None:
    """Add an adapter's term to out (N, sum of the widths), the outputs of the weights `names` side
    by side (a fused block's members in order) computed from x (N, Cin); nothing without one."""
    if adapter is not None:
        adapter.adapt_forward(x, out, names)


def adapter_backward(adapter, dx: np.ndarray, dout: np.ndarray, x: np.ndarray, names: tuple[str, ...],
                     grads: dict) -> None:
    """The adapter's share of a linear layer's backward: adds its path's input gradient into dx
    (N, Cin) and writes its own parameters' gradients into grads; nothing without one."""
    if adapter is not None:
        adapter.adapt_backward(dx, dout, x, names, grads)


def drop_frozen_inputs(adapter, acts: dict, inputs: dict[str, tuple[str, ...]]) -> None:
    """With an adapter attached the base is frozen, and a linear layer's input (kept for dW = x^T dy)
    is needed only where the adapter trains one of its weights: set acts[key] to None for each
    input key none of whose weights `inputs[key]` is adapted (the memory of a LoRA run)."""
    if adapter is not None:
        for key, names in inputs.items():
            if not any(adapter.adapts(n) for n in names):
                acts[key] = None


def embedding_forward(wte: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return wte[idx]                                              # (..., C), a copy


def embedding_backward(dwte: np.ndarray, dx: np.ndarray, idx: np.ndarray) -> None:
    """dwte[v] += the sum of the rows of dx (N, C) whose token idx (N,) is v: a scatter-add by
    sorting rows by token and summing runs (np.add.at is several times slower; a one-hot
    matmul would not scale to V = 50257)."""
    order = np.argsort(idx, kind="stable")                       # (N,) rows grouped by token
    tok = idx[order]                                             # (N,) sorted token ids
    starts = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])    # (U,) first row of each distinct token
    dwte[tok[starts]] += np.add.reduceat(dx[order], starts, axis=0)  # (U, C) per-token sums


# ============================================================================ norms, activations


def layernorm_forward(x, w, b, eps: float = 1e-5):
    return kernels.layernorm_forward(x, w, b, eps)               # (y (..., C), mean (...,), rstd (...,))


def layernorm_backward(dy, x, w, mean, rstd):
    return kernels.layernorm_backward(dy, x, w, mean, rstd)      # (dx (..., C), dw (C,), db (C,))


def rmsnorm_forward(x: np.ndarray, w: np.ndarray, eps: float = 1e-6):
    """y = x / sqrt(mean(x^2) + eps) * w over the last axis. Returns (y, rstd (...,))."""
    ms = np.mean(x * x, axis=-1)                                 # (...,)
    rstd = (1.0 / np.sqrt(ms + np.asarray(eps, x.dtype))).astype(x.dtype, copy=False)
    return x * rstd[..., None] * w, rstd                         # (..., C)


def rmsnorm_backward(dy: np.ndarray, x: np.ndarray, w: np.ndarray, rstd: np.ndarray):
    """Returns (dx, dw): with xhat = x rstd and g = dy w, dx = rstd (g - xhat mean(g xhat))."""
    xhat = x * rstd[..., None]                                   # (..., C)
    dw = np.sum((dy * xhat).reshape(-1, x.shape[-1]), axis=0)    # (C,)
    g = dy * w                                                   # (..., C)
    dx = rstd[..., None] * (g - xhat * np.mean(g * xhat, axis=-1, keepdims=True))
    return dx, dw


def gelu_forward(x):
    return kernels.gelu_forward(x)


def gelu_backward(dy, x):
    return kernels.gelu_backward(dy, x)


def swiglu_forward(gate: np.ndarray, up: np.ndarray) -> np.ndarray:
    """silu(gate) * up with silu(a) = a sigmoid(a): the gated MLP's hidden activation."""
    return gate / (1.0 + np.exp(-gate)) * up                     # (N, F)


def swiglu_backward(dy: np.ndarray, gate: np.ndarray, up: np.ndarray):
    """Returns (dgate, dup): silu'(a) = s (1 + a (1 - s)) with s = sigmoid(a)."""
    s = 1.0 / (1.0 + np.exp(-gate))                              # (N, F)
    dup = dy * gate * s
    dgate = dy * up * s * (1.0 + gate * (1.0 - s))
    return dgate, dup


# ============================================================================ causal attention

SPLIT_MIN_T = 128  # from this block length on, attention skips the upper-right quarter of keys


def query_blocks(T: int) -> list[tuple[int, int]]:
    """Query rows [lo, hi) handled together; each block needs only keys [0, hi) (causality).

    Two halves when T >= SPLIT_MIN_T: the first half never sees the second half's keys, so its
    products skip that quarter of the (T, T) scores (25% fewer attention flops). Shorter blocks
    stay whole: there the extra calls cost more than the skipped work.
    """
    if T < SPLIT_MIN_T:
        return [(0, T)]
    return [(0, T // 2), (T // 2, T)]


def _grouped(a: np.ndarray, Hkv: int) -> np.ndarray:
    """(B, H, n, x) -> (B, Hkv, G n, x): the G query heads of one kv head stacked as rows, so one
    matmul serves them all; a no-op (the same view) when H == Hkv."""
    B, H, n, x = a.shape
    return a if H == Hkv else a.reshape(B, Hkv, (H // Hkv) * n, x)


def _check_heads(q: np.ndarray, k: np.ndarray, v: np.ndarray) -> None:
    if k.shape != v.shape or q.shape[0] != k.shape[0] or q.shape[2:] != k.shape[2:] or q.shape[1] % k.shape[1]:
        raise ValueError(f"attention needs q (B, H, T, hs) and k, v (B, Hkv, T, hs) with H a multiple of "
                         f"Hkv; got q {q.shape}, k {k.shape}, v {v.shape}")


def attention_forward(y: np.ndarray, q: np.ndarray, k: np.ndarray, v: np.ndarray,
                      scale: float | None = None) -> list[np.ndarray]:
    """Causal softmax(q k^T scale) v into y (B, H, T, hs); returns the probabilities per query block.

    q, k, v and y may be strided views (each head's (T, hs) block of an (N, 3C) projection has
    row stride 3C, which BLAS takes as its leading dimension): no transposed copies.
    """
    _check_heads(q, k, v)
    B, H, T, hs = q.shape
    Hkv = k.shape[1]
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    probs = []
    for lo, hi in query_blocks(T):                               # n = hi - lo queries at positions lo..hi-1
        n = hi - lo
        qb = _grouped(q[:, :, lo:hi], Hkv)                       # (B, Hkv, G n, hs)
        scores = qb @ k[:, :, :hi].swapaxes(-1, -2)              # (B, Hkv, G n, hs) @ (B, Hkv, hs, hi) -> (B, Hkv, G n, hi)
        # causal softmax: the kernel puts query row i at position hi - n + i = lo + i
        p = kernels.attention_softmax_forward(scores.reshape(B, H, n, hi), scale)  # (B, H, n, hi)
        if H == Hkv:
            np.matmul(p, v[:, :, :hi], out=y[:, :, lo:hi])       # y = P v: (B, H, n, hi) @ (B, H, hi, hs)
        else:
            y[:, :, lo:hi] = (_grouped(p, Hkv) @ v[:, :, :hi]).reshape(B, H, n, hs)
        probs.append(p)
    return probs


def attention_backward(dq: np.ndarray, dk: np.ndarray, dv: np.ndarray, dy: np.ndarray, q: np.ndarray,
                       k: np.ndarray, v: np.ndarray, probs: list[np.ndarray], scale: float | None = None) -> None:
    """Gradients wrt q, k, v of attention_forward, written into dq (B, H, T, hs), dk, dv (B, Hkv, T, hs)."""
    _check_heads(q, k, v)
    B, H, T, hs = q.shape
    Hkv = k.shape[1]
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    # the last block sees every key: it writes dk, dv whole; earlier blocks add to their keys' rows
    for (lo, hi), p in reversed(list(zip(query_blocks(T), probs))):
        n, last = hi - lo, hi == T
        dyb = _grouped(dy[:, :, lo:hi], Hkv)                     # (B, Hkv, G n, hs)
        pg = _grouped(p, Hkv)                                    # (B, Hkv, G n, hi)
        # y = P v  =>  dP = dy v^T, dv = P^T dy (summed over the G query heads of a kv head)
        dprobs = dyb @ v[:, :, :hi].swapaxes(-1, -2)             # (B, Hkv, G n, hs) @ (B, Hkv, hs, hi) -> (B, Hkv, G n, hi)
        if last:
            np.matmul(pg.swapaxes(-1, -2), dyb, out=dv)          # (B, Hkv, hi, G n) @ (B, Hkv, G n, hs) -> (B, Hkv, T, hs)
        else:
            dv[:, :, :hi] += pg.swapaxes(-1, -2) @ dyb
        dscores = kernels.attention_softmax_backward(dprobs.reshape(B, H, n, hi), p, scale)  # (B, H, n, hi)
        dsg = _grouped(dscores, Hkv)                             # (B, Hkv, G n, hi)
        # S = q k^T  =>  dq = dS k, dk = dS^T q
        if H == Hkv:
            np.matmul(dscores, k[:, :, :hi], out=dq[:, :, lo:hi])  # (B, H, n, hi) @ (B, H, hi, hs) -> (B, H, n, hs)
        else:
            dq[:, :, lo:hi] = (dsg @ k[:, :, :hi]).reshape(B, H, n, hs)
        qb = _grouped(q[:, :, lo:hi], Hkv)                       # (B, Hkv, G n, hs)
        if last:
            np.matmul(dsg.swapaxes(-1, -2), qb, out=dk)          # (B, Hkv, hi, G n) @ (B, Hkv, G n, hs) -> (B, Hkv, T, hs)
        else:
            dk[:, :, :hi] += dsg.swapaxes(-1, -2) @ qb


def attention_step(q: np.ndarray, k: np.ndarray, v: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray,
                   pos: int, scale: float | None = None) -> np.ndarray:
    """Attention for Tn new tokens at positions pos.. of one sequence; appends their k, v to the caches.

    q (H, Tn, hs); k, v (Hkv, Tn, hs); caches (Hkv, Tmax, hs). Returns y (H, Tn, hs). Query i sits
    at pos + i and sees keys 0..pos+i: the causal kernel's rule for Tq = Tn, Tk = pos + Tn. A
    prompt fed at pos 0 is attention_forward's case (its query blocks skip a quarter of the
    products from SPLIT_MIN_T positions on).
    """
    H, Tn, hs = q.shape
    Hkv = k.shape[0]
    scale = 1.0 / math.sqrt(hs) if scale is None else scale
    Tk = pos + Tn
    k_cache[:, pos:Tk] = k                                       # (Hkv, Tn, hs)
    v_cache[:, pos:Tk] = v
    if pos == 0 and Tn > 1:                                      # a whole prompt: its own causal attention,
        y = np.empty((1, H, Tn, hs), q.dtype)                    # which skips the keys a query block never sees
        attention_forward(y, q[None], k[None], v[None], scale)
        return y[0]                                              # (H, Tn, hs)
    qg = q.reshape(Hkv, (H // Hkv) * Tn, hs)                     # (Hkv, G Tn, hs)
    scores = qg @ k_cache[:, :Tk].swapaxes(-1, -2)               # (Hkv, G Tn, hs) @ (Hkv, hs, Tk) -> (Hkv, G Tn, Tk)
    p = kernels.attention_softmax_forward(scores.reshape(H, Tn, Tk), scale)  # (H, Tn, Tk)
    y = p.reshape(Hkv, -1, Tk) @ v_cache[:, :Tk]                 # (Hkv, G Tn, Tk) @ (Hkv, Tk, hs) -> (Hkv, G Tn, hs)
    return y.reshape(H, Tn, hs)


def cached_spans(tokens: list, caches: list, block_size: int) -> list[tuple[int, int, int]]:
    """(lo, hi, pos) per sequence: its rows [lo, hi) of the stacked new tokens and its cache's first
    free position; ValueError when a sequence would overflow its cache or brings no token."""
    if len(tokens) != len(caches) or not tokens:
        raise ValueError(f"need one cache per sequence and at least one sequence, got {len(tokens)} token "
                         f"lists and {len(caches)} caches")
    spans, lo = [], 0
    for t, cache in zip(tokens, caches):
        Tn, pos = len(t), cache.length
        if Tn < 1:
            raise ValueError("every sequence needs at least one new token")
        if pos + Tn > block_size:
            raise ValueError(f"the KV cache holds {pos} positions; {Tn} more would exceed block_size={block_size}")
        spans.append((lo, lo + Tn, pos))
        lo += Tn
    return spans


def full_attention(probs: list[np.ndarray], T: int) -> np.ndarray:
    """The (B, H, T, T) attention matrix from attention_forward's per-query-block probs: a block
    of queries [lo, hi) saw keys [0, hi); the keys it never saw get probability 0."""
    B, H = probs[0].shape[:2]
    full = np.zeros((B, H, T, T), probs[0].dtype)                # (B, H, T, T)
    for (lo, hi), p in zip(query_blocks(T), probs):
        full[:, :, lo:hi, :hi] = p                               # (B, H, hi - lo, hi)
    return full


# ============================================================================ loss


IGNORE = -1  # a target that is not scored (padding, or what the model is not asked to say)


def counted(targets: np.ndarray) -> int:
    """How many targets are scored (not IGNORE): the denominator of the mean loss."""
    return int(np.count_nonzero(np.asarray(targets) != IGNORE))


def crossentropy_forward(logits: np.ndarray, targets: np.ndarray):
    """(losses (N,), probs (N, V)); a row whose target is IGNORE has loss 0 (its probs are kept)."""
    skip = targets == IGNORE                                     # (N,)
    if not skip.any():
        return kernels.crossentropy_forward(logits, targets)     # (losses (N,), probs (N, V))
    losses, probs = kernels.crossentropy_forward(logits, np.where(skip, 0, targets))  # any valid id stands in
    losses[skip] = 0.0
    return losses, probs


def crossentropy_backward(probs: np.ndarray, targets: np.ndarray, n_total: int) -> np.ndarray:
    """Gradient of sum(losses) / n_total wrt the logits: (probs - onehot(targets)) / n_total on
    scored rows, 0 on IGNORE rows."""
    skip = targets == IGNORE                                     # (N,)
    dlosses = np.full(probs.shape[0], 1.0 / max(n_total, 1), dtype=probs.dtype)  # (N,)
    dlosses[skip] = 0.0                                          # (probs - onehot) * 0 = 0
    return kernels.crossentropy_backward(dlosses, probs, np.where(skip, 0, targets))  # (N, V)


# ============================================================================ head + loss, by vocabulary chunks
#
# The logits of a batch are its largest activation (N V floats: 201 MB at N = 1024, V = 49152) and
# their gradient another. Computed `chunk` vocabulary columns at a time, neither exists whole:
# the forward keeps only lse = logsumexp of each row (N,), and the backward recomputes each chunk
# of logits, turns it into that chunk of dlogits = dloss (exp(logits - lse) - onehot(target)) and
# consumes it at once: dW[chunk] = dlogits^T h (rows of dW, written whole) and dh += dlogits W[chunk].
# The price is one more h W^T product in the backward. chunk=None is the plain computation, the
# reference the chunked one is tested against.


def vocab_chunk(N: int, V: int, values: int = 1 << 22) -> int:
    """Vocabulary columns per chunk so that a chunk of logits (N, chunk) holds about `values` floats
    (16 MB), but at least 1024 columns (narrower products waste the BLAS)."""
    return min(V, max(1024, values // max(N, 1)))


def head_loss_forward(h: np.ndarray, w: np.ndarray, targets: np.ndarray, chunk: int | None):
    """Per-row losses (N,) of logits = h w^T (h (N, C), w (V, C)) and what the backward needs:
    probs (N, V) when chunk is None, else lse (N,). IGNORE rows have loss 0."""
    if chunk is None:
        return crossentropy_forward(h @ w.T, targets)            # (N, C) @ (C, V) -> (N, V) logits
    N, V = h.shape[0], w.shape[0]
    rows = np.arange(N)
    tgt = np.where(targets == IGNORE, 0, targets)                # (N,) any valid id stands in
    m = np.full(N, -np.inf, np.float32)                          # running max of each row
    s = np.zeros(N, np.float32)                                  # running sum of exp(logits - m)
    z_t = np.zeros(N, np.float32)                                # each row's target logit
    for lo in range(0, V, chunk):
        hi = min(V, lo + chunk)
        z = h @ w[lo:hi].T                                       # (N, C) @ (C, c) -> (N, c) logits
        mine = (tgt >= lo) & (tgt < hi)                          # (N,) rows whose target is here
        z_t[mine] = z[rows[mine], tgt[mine] - lo]
        m_new = np.maximum(m, z.max(axis=1))                     # (N,)
        z -= m_new[:, None]
        np.exp(z, out=z)
        s = s * np.exp(m - m_new) + z.sum(axis=1)                # logsumexp, merged chunk by chunk
        m = m_new
    lse = m + np.log(s)                                          # (N,)
    losses = lse - z_t                                           # -log softmax(logits)[target]
    losses[targets == IGNORE] = 0.0
    return losses, lse


def head_loss_backward(dw: np.ndarray | None, h: np.ndarray, w: np.ndarray, targets: np.ndarray,
                       saved: np.ndarray, n_total: int, chunk: int | None) -> np.ndarray:
    """Gradient of sum(losses) / n_total: dW (V, C) into dw unless None (a frozen head), and dh
    (N, C) returned. saved is head_loss_forward's (probs or lse) for the same chunk."""
    if chunk is None:
        dlogits = crossentropy_backward(saved, targets, n_total)  # (N, V)
        if dw is not None:
            np.matmul(dlogits.T, h, out=dw)                      # (V, N) @ (N, C) -> (V, C)
        return dlogits @ w                                       # (N, V) @ (V, C) -> (N, C)
    N, V = h.shape[0], w.shape[0]
    dloss = np.where(targets == IGNORE, 0.0, 1.0 / max(n_total, 1)).astype(np.float32)  # (N,)
    rows = np.arange(N)
    dh = np.zeros_like(h)                                        # (N, C)
    for lo in range(0, V, chunk):
        hi = min(V, lo + chunk)
        d = h @ w[lo:hi].T                                       # (N, c) logits again
        d -= saved[:, None]
        np.exp(d, out=d)                                         # softmax(logits)[:, lo:hi]
        mine = (targets >= lo) & (targets < hi)                  # (N,) rows whose target is here (not IGNORE)
        d[rows[mine], targets[mine] - lo] -= 1.0                 # probs - onehot
        d *= dloss[:, None]                                      # (N, c) dlogits
        if dw is not None:
            np.matmul(d.T, h, out=dw[lo:hi])                     # (c, N) @ (N, C) -> (c, C)
        dh += d @ w[lo:hi]                                       # (N, c) @ (c, C) -> (N, C)
    return dh
