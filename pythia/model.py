"""Pythia: a GPT-2 decoder-only Transformer in NumPy, with its backward pass written by hand.

Architecture (GPT-2): token + learned position embeddings, pre-LN blocks (causal multi-head
self-attention, then a 4x MLP with GELU-tanh), a final LayerNorm, and a head tied to the token
embedding. Every layer's forward sits next to its backward, llm.c style; the forward keeps
exactly what the backward needs. The element- and row-wise maths (LayerNorm, GELU, causal
softmax, cross-entropy) runs in `pythia.kernels`, called through the module at call time so
`kernels.use("numpy")` takes effect; the matrix products go to BLAS through `@` on large
contiguous 2-d operands, and attention is a batched matmul over (B, H, T, hs).

References: GPT-2 (Radford et al. 2019); llm.c `train_gpt2.c` (layer forward/backward pairs);
picoGPT `gpt2.py` (shape contracts); nanoGPT `model.py` (config, initialisation).

Sizes: B batch, T time, C channels (d_model), V vocabulary, H heads, hs = C // H head size,
L layers, N = B * T rows of the flattened residual stream, Tk keys seen by a query.
"""
from __future__ import annotations

import math
import mmap
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields

import numpy as np

from . import kernels
from .system import memory, threads
from .errors import ConfigError


@dataclass
class PythiaConfig:
    vocab_size: int         # V: distinct tokens (65 for Tiny Shakespeare's characters, 50257 for GPT-2)
    block_size: int = 32    # longest context; positions past it have no embedding (seed's BLOCK_SIZE)
    d_model: int = 48       # C: width of the residual stream (seed's D_MODEL)
    n_layer: int = 3        # L: Transformer blocks (seed's N_LAYER)
    n_head: int = 4         # H: attention heads; C must split evenly into H heads of C // H

    def validate(self) -> None:
        """Raise ConfigError with a one-line fix when a size is not a positive integer or C % H != 0."""
        for f in fields(self):
            v = getattr(self, f.name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
                raise ConfigError(f"{f.name} must be a whole number, got {v!r}; pass e.g. --{_flag(f.name)} 4")
            if v <= 0:
                raise ConfigError(f"{f.name} must be positive, got {v}; pass a value of at least 1")
        if self.d_model % self.n_head:
            lo = self.d_model - self.d_model % self.n_head
            hint = f"d_model {lo}" if lo > 0 else f"d_model {self.n_head}"
            raise ConfigError(f"d_model ({self.d_model}) must be divisible by n_head ({self.n_head}); "
                              f"use e.g. {hint} with n_head {self.n_head}")

    def to_dict(self) -> dict[str, int]:
        return {k: int(v) for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict) -> "PythiaConfig":
        """Build and validate a config from a plain dict (a checkpoint's JSON); ConfigError on bad keys."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ConfigError(f"unknown model setting(s) {', '.join(unknown)}; expected only {', '.join(sorted(names))}")
        if "vocab_size" not in d:
            raise ConfigError("model settings lack vocab_size; the checkpoint or config is incomplete")
        cfg = cls(**d)
        cfg.validate()
        return cfg


def _flag(name: str) -> str:
    return name.replace("_", "-")


# ============================================================================ layers
# Each layer: forward returns its output (and what the backward needs); backward writes the
# parameter gradients into preallocated buffers (out=) and returns the gradient of its input.

def linear_forward(x: np.ndarray, w: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = x @ w                                                  # (N, Cin) @ (Cin, Cout) -> (N, Cout)
    out += b                                                     # (N, Cout) + (Cout,)
    return out


def linear_backward(dout, x, w, dw, db) -> np.ndarray:
    # y = x W + b  =>  dW = x^T dy, db = sum_rows dy, dx = dy W^T
    np.matmul(x.T, dout, out=dw)                                 # (Cin, N) @ (N, Cout) -> (Cin, Cout)
    ones = np.ones(dout.shape[0], dout.dtype)                    # (N,)
    np.matmul(ones, dout, out=db)                                # (N,) @ (N, Cout) -> (Cout,): row sum as a gemv, 3x np.sum
    return dout @ w.T                                            # (N, Cout) @ (Cout, Cin) -> (N, Cin)


def embedding_backward(dwte: np.ndarray, idx: np.ndarray, dx: np.ndarray) -> None:
    """dwte[v] += sum of the rows of dx (N, C) whose token idx (N,) is v; a scatter-add.

    Done by sorting rows by token and summing runs with reduceat: np.add.at does the same but is
    ~5x slower at config M and ~3x at L, and a one-hot matmul would not scale to V = 50257.
    """
    order = np.argsort(idx, kind="stable")                       # (N,) rows grouped by token
    tok = idx[order]                                             # (N,) sorted token ids
    starts = np.flatnonzero(np.r_[True, tok[1:] != tok[:-1]])    # (U,) first row of each distinct token
    dwte[tok[starts]] += np.add.reduceat(dx[order], starts, axis=0)  # (U, C) per-token sums


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


def attention_forward(qkv: np.ndarray, B: int, T: int, H: int):
    """Causal multi-head self-attention on the c_attn output qkv (N, 3C). Returns (out (N, C), probs).

    probs is a list with one (B, H, hi - lo, hi) array per query block of query_blocks(T). q, k
    and v stay strided views into qkv (each head's (T, hs) block has row stride 3C, which BLAS
    takes as its leading dimension), and P v is written straight into the (N, C) output: no
    transposed copies. Measured at config M: 0.6 ms instead of 2.2 ms with the copies.
    """
    C = qkv.shape[1] // 3
    hs = C // H
    q, k, v = qkv.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)  # each (B, H, T, hs), views
    out = np.empty((B * T, C), qkv.dtype)                        # (N, C), heads side by side
    y = out.reshape(B, T, H, hs).transpose(0, 2, 1, 3)           # (B, H, T, hs) view of out
    probs = []
    for lo, hi in query_blocks(T):                               # n = hi - lo queries at positions lo..hi-1
        scores = q[:, :, lo:hi] @ k[:, :, :hi].swapaxes(-1, -2)  # (B, H, n, hs) @ (B, H, hs, hi) -> (B, H, n, hi)
        # softmax(s / sqrt(hs)), causal: the kernel puts query row i at position hi - n + i = lo + i
        p = kernels.attention_softmax_forward(scores, 1.0 / math.sqrt(hs))
        np.matmul(p, v[:, :, :hi], out=y[:, :, lo:hi])           # y = P v: (B, H, n, hi) @ (B, H, hi, hs)
        probs.append(p)
    return out, probs


def full_attention(probs: list, T: int) -> np.ndarray:
    """The (B, H, T, T) attention matrix from attention_forward's per-query-block probs: a block
    of queries [lo, hi) saw keys [0, hi); the keys it never saw get probability 0."""
    B, H = probs[0].shape[:2]
    full = np.zeros((B, H, T, T), probs[0].dtype)                # (B, H, T, T)
    for (lo, hi), p in zip(query_blocks(T), probs):
        full[:, :, lo:hi, :hi] = p                               # (B, H, hi - lo, hi)
    return full


def attention_backward(dout: np.ndarray, qkv: np.ndarray, probs: list, B: int, T: int, H: int) -> np.ndarray:
    """Gradient wrt the c_attn output (N, 3C), given the gradient of the attention output (N, C)."""
    C = qkv.shape[1] // 3
    hs = C // H
    q, k, v = qkv.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)  # each (B, H, T, hs), views
    dy = dout.reshape(B, T, H, hs).transpose(0, 2, 1, 3)         # (B, H, T, hs), a strided view
    dqkv = np.empty_like(qkv)                                    # (N, 3C), filled through the views below
    dq, dk, dv = dqkv.reshape(B, T, 3, H, hs).transpose(2, 0, 3, 1, 4)  # each (B, H, T, hs)
    # the last block sees every key: it writes dk, dv whole; earlier blocks add to their keys' rows
    for (lo, hi), p in reversed(list(zip(query_blocks(T), probs))):
        dyb, last = dy[:, :, lo:hi], hi == T                     # (B, H, n, hs)
        # y = P v  =>  dP = dy v^T, dv = P^T dy
        dprobs = dyb @ v[:, :, :hi].swapaxes(-1, -2)             # (B, H, n, hs) @ (B, H, hs, hi) -> (B, H, n, hi)
        if last:
            np.matmul(p.swapaxes(-1, -2), dyb, out=dv)           # (B, H, hi, n) @ (B, H, n, hs) -> (B, H, T, hs)
        else:
            dv[:, :, :hi] += p.swapaxes(-1, -2) @ dyb
        dscores = kernels.attention_softmax_backward(dprobs, p, 1.0 / math.sqrt(hs))  # (B, H, n, hi)
        # S = q k^T  =>  dq = dS k, dk = dS^T q
        np.matmul(dscores, k[:, :, :hi], out=dq[:, :, lo:hi])    # (B, H, n, hi) @ (B, H, hi, hs) -> (B, H, n, hs)
        if last:
            np.matmul(dscores.swapaxes(-1, -2), q[:, :, lo:hi], out=dk)  # (B, H, hi, n) @ (B, H, n, hs) -> (B, H, T, hs)
        else:
            dk[:, :, :hi] += dscores.swapaxes(-1, -2) @ q[:, :, lo:hi]
    return dqkv


def attention_step(qkv: np.ndarray, k_cache: np.ndarray, v_cache: np.ndarray, pos: int, H: int) -> np.ndarray:
    """Attention for Tn new tokens at positions pos.. of one sequence, appending their k, v to the cache.

    qkv (Tn, 3C); k_cache, v_cache (H, block_size, hs). Returns (Tn, C). Query i sits at pos + i
    and sees keys 0..pos+i, which is exactly the causal kernel's rule for Tq = Tn, Tk = pos + Tn.
    """
    Tn, C = qkv.shape[0], qkv.shape[1] // 3
    hs = C // H
    q, k, v = qkv.reshape(Tn, 3, H, hs).transpose(1, 2, 0, 3)   # each (H, Tn, hs), strided views
    Tk = pos + Tn
    k_cache[:, pos:Tk] = k                                       # (H, Tn, hs)
    v_cache[:, pos:Tk] = v
    scores = q @ k_cache[:, :Tk].swapaxes(-1, -2)                # (H, Tn, hs) @ (H, hs, Tk) -> (H, Tn, Tk)
    probs = kernels.attention_softmax_forward(scores, 1.0 / math.sqrt(hs))  # (H, Tn, Tk)
    y = probs @ v_cache[:, :Tk]                                  # (H, Tn, Tk) @ (H, Tk, hs) -> (H, Tn, hs)
    return y.transpose(1, 0, 2).reshape(Tn, C)                   # (Tn, C)


class KVCache:
    """Keys and values of every layer for one sequence: k[l], v[l] are (H, block_size, hs)."""

    def __init__(self, config: PythiaConfig, dtype=np.float32):
        H, hs = config.n_head, config.d_model // config.n_head
        shape = (config.n_layer, H, config.block_size, hs)
        self.k = _lazy_zeros(shape, dtype)
        self.v = _lazy_zeros(shape, dtype)
        self.length = 0                                          # positions filled so far


def _lazy_zeros(shape: tuple[int, ...], dtype) -> np.ndarray:
    """Zeros whose memory becomes resident only where written, in 4 KB pages.

    A cache slab (H, block_size, hs) of one layer is written a few positions at a time, one
    stretch per head (256 KB apart at GPT-2's sizes). With transparent huge pages the first write
    into each stretch would make a whole 2 MB page resident: GPT-2-small's cache (75 MB for 1024
    positions) was fully resident after a 3-token prompt. An anonymous mapping advised against
    huge pages keeps it to what the positions filled so far need."""
    nbytes = max(1, math.prod(shape) * np.dtype(dtype).itemsize)
    buf = mmap.mmap(-1, nbytes)                                  # anonymous: zero-filled on first touch
    if hasattr(mmap, "MADV_NOHUGEPAGE"):
        buf.madvise(mmap.MADV_NOHUGEPAGE)
    return np.frombuffer(buf, dtype, count=math.prod(shape)).reshape(shape)


# ============================================================================ model

def _param_shapes(cfg: PythiaConfig) -> dict[str, tuple[int, ...]]:
    V, C = cfg.vocab_size, cfg.d_model
    shapes = {"wte": (V, C), "wpe": (cfg.block_size, C)}
    for i in range(cfg.n_layer):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
            p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,),
        })
    shapes.update({"ln_f.weight": (C,), "ln_f.bias": (C,)})
    return shapes


def _flat_views(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Zeroed float32 arrays of these shapes, laid end to end in one buffer: 2-d ones first."""
    order = sorted(shapes, key=lambda k: len(shapes[k]) != 2)  # stable: matrices, then vectors
    flat = np.zeros(sum(math.prod(s) for s in shapes.values()), np.float32)
    views, pos = {}, 0
    for k in order:
        n = math.prod(shapes[k])
        views[k] = flat[pos:pos + n].reshape(shapes[k])
        pos += n
    return {k: views[k] for k in shapes}                         # the dict in the shapes' order


class Pythia:
    """GPT-2 with a hand-written backward. params/grads are dicts of float32 arrays by HF GPT-2 name."""

    def __init__(self, config: PythiaConfig, seed: int = 0, *, init: bool = True):
        """GPT-2 initialisation from `seed`; with init=False every parameter is 0, for a caller
        that loads all of them next (drawing GPT-2-small's 124M weights takes ~2 s)."""
        config.validate()
        self.config = config
        rng = np.random.default_rng(seed)
        resid_std = 0.02 / math.sqrt(2 * config.n_layer)        # GPT-2: residual projections scaled down
        shapes = _param_shapes(config)
        # params and grads are views into two flat buffers (matrices first), so the optimizer can
        # update the whole model with a few whole-buffer NumPy calls; the dicts keep HF order.
        # The gradient buffer is made on first use: a model that only infers (chat, generate,
        # export) never holds one.
        self.params = _flat_views(shapes)
        self._grads: dict[str, np.ndarray] | None = None
        if init:
            for name, p in self.params.items():
                if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                    p[...] = 1                                       # LayerNorm gain 1
                elif p.ndim == 1:
                    p[...] = 0                                       # biases 0
                else:
                    std = resid_std if name.endswith("c_proj.weight") else 0.02
                    p[...] = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(std)  # N(0, std)
        self._acts: list[dict] | None = None                     # activations of the last loss(), per shard
        self._workers: threads.Workers | None = None             # threads for the shards of a batch
        self._shard_grads: list[dict] = []                       # gradient buffers of shards 1, 2, ...
        self._blas = threads.BlasChooser()                       # BLAS threads per pass, by measurement
        memory.keep_freed_memory()                               # reuse freed activations' pages (memory.py)

    # ------------------------------------------------------------------ bookkeeping

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients by parameter name, views into one flat float32 buffer laid out like params."""
        if self._grads is None:
            self._grads = _flat_views(_param_shapes(self.config))
        return self._grads

    def num_params(self) -> int:
        """Number of scalars in the model (the tied head counts once)."""
        return sum(p.size for p in self.params.values())

    def load_params(self, params: dict[str, np.ndarray]) -> None:
        """Copy weights in place (so optimizers keep their references); exact keys and shapes."""
        missing = [k for k in self.params if k not in params]
        if missing:
            raise ValueError(f"parameter {missing[0]!r} is missing ({len(missing)} missing in all)")
        extra = [k for k in params if k not in self.params]
        if extra:
            raise ValueError(f"parameter {extra[0]!r} is not part of this model ({len(extra)} unexpected in all)")
        for k, p in self.params.items():
            a = np.asarray(params[k])
            if a.shape != p.shape:
                raise ValueError(f"parameter {k!r} has shape {a.shape}, this model needs {p.shape}")
        for k, p in self.params.items():
            p[...] = params[k]                                   # cast to float32 in place

    def _check_idx(self, idx, name: str = "idx") -> np.ndarray:
        a = np.asarray(idx)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer token ids, got dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{name} must have shape (B, T), got shape {a.shape}")
        T, bs, V = a.shape[1], self.config.block_size, self.config.vocab_size
        if not 1 <= T <= bs:
            raise ValueError(f"{name} has T={T} positions; T must be between 1 and block_size={bs}")
        if a.shape[0] < 1:
            raise ValueError(f"{name} has an empty batch (shape {a.shape})")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"{name} values must lie in [0, {V}) (vocab_size), got values from {lo} to {hi}")
        return a

    # ------------------------------------------------------------------ forward / backward

    def forward(self, idx: np.ndarray, *, attention: bool = False):
        """Logits (B, T, V) for token ids idx (B, T); keeps no activations.

        With attention=True, returns (logits, attn): attn[l] (B, H, T, T) holds layer l's attention
        probabilities exactly as this pass computed them (row = query, column = key, zero above
        the diagonal), for looking inside the model (pythia.inspection.explain).
        """
        idx = self._check_idx(idx)
        B, T = idx.shape
        attn: list | None = [] if attention else None
        with self._threads_for_pass("forward", idx.size):
            logits = self._forward(idx, keep=None, attn=attn).reshape(B, T, -1)
        return (logits, attn) if attention else logits

    def loss(self, idx: np.ndarray, targets: np.ndarray) -> float:
        """Mean cross-entropy of predicting targets (B, T) from idx (B, T); keeps activations for backward()."""
        idx = self._check_idx(idx)
        targets = self._check_idx(targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"targets has shape {targets.shape} but idx has shape {idx.shape}; they must match")
        self._acts = None                                        # free the last pass's activations first, else
        # a step's peak holds two sets (tracemalloc peak of three steps at config L: 1.72 GB, with this 1.15 GB)
        shards = self._shards(*idx.shape)                        # row ranges of the batch, one per core
        if len(shards) == 1:
            with self._threads_for_pass("loss", idx.size):
                parts = [self._loss_part(idx, targets)]
        else:
            parts = self._workers.map(lambda r: self._loss_part(idx[r[0]:r[1]], targets[r[0]:r[1]]), shards)
        self._acts = [acts for _, acts in parts]
        losses = np.concatenate([losses for losses, _ in parts])  # (N,)
        return float(losses.mean(dtype=np.float64))

    def _loss_part(self, idx: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, dict]:
        """Per-row losses (n,) of rows idx (b, T) and the activations their backward needs."""
        acts: dict = {}
        logits = self._forward(idx, keep=acts)                   # (n, V)
        losses, probs = kernels.crossentropy_forward(logits, targets.reshape(-1))  # (n,), (n, V)
        acts.update(probs=probs, targets=targets.reshape(-1))
        return losses, acts

    def _shards(self, B: int, T: int) -> list[tuple[int, int]]:
        """Training passes split the batch into consecutive row ranges, one per core, when the
        pass is large enough for that to pay (threads.shards_for); else one range."""
        C = self.config.d_model
        n = threads.shards_for(B, B * T * C * 4 * C)             # largest product: the MLP's (N, C) @ (C, 4C)
        if n > 1 and (self._workers is None or self._workers.n != n):
            if self._workers is not None:
                self._workers.close()
            self._workers = threads.Workers(n)
        return [(i * B // n, (i + 1) * B // n) for i in range(n)]

    def _forward(self, idx: np.ndarray, keep: dict | None, attn: list | None = None) -> np.ndarray:
        """Logits (N, V); when `keep` is a dict, store what backward() needs in it; when `attn` is a
        list, append each layer's attention probabilities (B, H, T, T) to it."""
        cfg, P = self.config, self.params
        B, T = idx.shape
        H = cfg.n_head
        x = P["wte"][idx]                                        # (B, T, C) token embeddings
        x += P["wpe"][:T]                                        # + (T, C) position embeddings
        x = x.reshape(B * T, -1)                                 # (N, C) residual stream
        layers = []
        for i in range(cfg.n_layer):
            p = f"h.{i}."
            a = {"x": x}
            h, a["ln1_mean"], a["ln1_rstd"] = kernels.layernorm_forward(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"])
            qkv = linear_forward(h, P[p + "attn.c_attn.weight"], P[p + "attn.c_attn.bias"])  # (N, 3C)
            att, a["probs"] = attention_forward(qkv, B, T, H)                                 # (N, C)
            if attn is not None:
                attn.append(full_attention(a["probs"], T))                                    # (B, H, T, T)
            x = x + linear_forward(att, P[p + "attn.c_proj.weight"], P[p + "attn.c_proj.bias"])  # (N, C)
            a.update(ln1=h, qkv=qkv, att=att, x_mid=x)
            h2, a["ln2_mean"], a["ln2_rstd"] = kernels.layernorm_forward(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"])
            fc = linear_forward(h2, P[p + "mlp.c_fc.weight"], P[p + "mlp.c_fc.bias"])        # (N, 4C)
            g = kernels.gelu_forward(fc)                                                      # (N, 4C)
            x = x + linear_forward(g, P[p + "mlp.c_proj.weight"], P[p + "mlp.c_proj.bias"])  # (N, C)
            a.update(ln2=h2, fc=fc, gelu=g)
            if keep is not None:                                 # inference drops each layer's activations
                layers.append(a)
        hf, mean_f, rstd_f = kernels.layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])  # (N, C)
        logits = hf @ P["wte"].T                                 # (N, C) @ (C, V) -> (N, V), tied head
        if keep is not None:
            keep.update(idx=idx, layers=layers, x_f=x, lnf=hf, lnf_mean=mean_f, lnf_rstd=rstd_f)
        return logits

    @contextmanager
    def _threads_for_pass(self, kind: str, n_rows: int) -> Iterator[None]:
        """An unsplit pass: BLAS threads as the chooser measures; and when that is one thread,
        the kernels on the calling thread too, as their loops are too short to repay waking a
        thread that slept through the products between them (config S on one BLAS thread:
        3-6% faster per step, measured in alternating blocks of one run)."""
        with self._blas.run((kind, n_rows), self._blas_threads(n_rows)) as n:
            limit = kernels.set_thread_limit(1) if n == 1 else None
            try:
                yield
            finally:
                if limit is not None:
                    kernels.set_thread_limit(limit)

    def _blas_threads(self, n_rows: int) -> int | None:
        """First guess of BLAS threads for a pass over n_rows tokens (None: all), by its largest product."""
        C = self.config.d_model
        return threads.threads_for(n_rows * C * 4 * C)         # the MLP's (N, C) @ (C, 4C)

    def backward(self) -> None:
        """Gradients of the last loss() wrt every parameter, written into self.grads."""
        if self._acts is None:
            raise RuntimeError("backward() needs activations: call loss(idx, targets) first")
        n = sum(a["idx"].size for a in self._acts)              # tokens over all shards
        if len(self._acts) == 1:
            with self._threads_for_pass("backward", n):
                self._backward(self._acts[0], self.grads, n)
            return
        # shard i > 0 writes its gradients into arrays of its own; they are added at the end
        while len(self._shard_grads) < len(self._acts) - 1:
            self._shard_grads.append({k: np.zeros_like(g) for k, g in self.grads.items()})
        grads = [self.grads] + self._shard_grads
        self._workers.map(lambda i: self._backward(self._acts[i], grads[i], n), range(len(self._acts)))
        for other in grads[1:len(self._acts)]:
            for k, g in self.grads.items():
                g += other[k]                                    # sum over shards, in shard order

    def _backward(self, a: dict, G: dict, n_total: int) -> None:
        """Gradients of the mean loss over n_total tokens, from the tokens of activations `a`, into G."""
        P = self.params
        idx = a["idx"]
        B, T = idx.shape
        N = B * T
        probs = a["probs"]
        # loss = mean of n_total cross-entropies  =>  dlogits = (probs - onehot) / n_total
        dlosses = np.full(N, 1.0 / n_total, dtype=probs.dtype)  # (N,)
        dlogits = kernels.crossentropy_backward(dlosses, probs, a["targets"])  # (N, V)
        # logits = hf wte^T  =>  dwte (head part) = dlogits^T hf, dhf = dlogits wte
        np.matmul(dlogits.T, a["lnf"], out=G["wte"])             # (V, N) @ (N, C) -> (V, C)
        dhf = dlogits @ P["wte"]                                 # (N, V) @ (V, C) -> (N, C)
        dx, G["ln_f.weight"][...], G["ln_f.bias"][...] = kernels.layernorm_backward(
            dhf, a["x_f"], P["ln_f.weight"], a["lnf_mean"], a["lnf_rstd"])                    # (N, C)
        for i in reversed(range(self.config.n_layer)):
            p, l = f"h.{i}.", a["layers"][i]
            # MLP branch: x = x_mid + c_proj(gelu(c_fc(ln_2(x_mid))))
            dg = linear_backward(dx, l["gelu"], P[p + "mlp.c_proj.weight"],
                                 G[p + "mlp.c_proj.weight"], G[p + "mlp.c_proj.bias"])       # (N, 4C)
            dfc = kernels.gelu_backward(dg, l["fc"])                                          # (N, 4C)
            dh2 = linear_backward(dfc, l["ln2"], P[p + "mlp.c_fc.weight"],
                                  G[p + "mlp.c_fc.weight"], G[p + "mlp.c_fc.bias"])          # (N, C)
            dxm, G[p + "ln_2.weight"][...], G[p + "ln_2.bias"][...] = kernels.layernorm_backward(
                dh2, l["x_mid"], P[p + "ln_2.weight"], l["ln2_mean"], l["ln2_rstd"])         # (N, C)
            dx += dxm                                            # residual: gradient flows both ways
            # attention branch: x_mid = x + c_proj(attn(c_attn(ln_1(x))))
            datt = linear_backward(dx, l["att"], P[p + "attn.c_proj.weight"],
                                   G[p + "attn.c_proj.weight"], G[p + "attn.c_proj.bias"])   # (N, C)
            dqkv = attention_backward(datt, l["qkv"], l["probs"], B, T, self.config.n_head)   # (N, 3C)
            dh1 = linear_backward(dqkv, l["ln1"], P[p + "attn.c_attn.weight"],
                                  G[p + "attn.c_attn.weight"], G[p + "attn.c_attn.bias"])    # (N, C)
            dxi, G[p + "ln_1.weight"][...], G[p + "ln_1.bias"][...] = kernels.layernorm_backward(
                dh1, l["x"], P[p + "ln_1.weight"], l["ln1_mean"], l["ln1_rstd"])             # (N, C)
            dx += dxi
        # x = wte[idx] + wpe[:T]
        dx = dx.reshape(B, T, -1)                                # (B, T, C)
        np.sum(dx, axis=0, out=G["wpe"][:T])                     # (T, C); positions >= T got no gradient
        G["wpe"][T:] = 0
        embedding_backward(G["wte"], idx.reshape(-1), dx.reshape(N, -1))  # the embedding part of dwte

    # ------------------------------------------------------------------ inference with a KV cache

    def new_kv_cache(self) -> KVCache:
        return KVCache(self.config, self.params["wte"].dtype)

    def forward_cached(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Logits (V,) after feeding tokens (Tn,) at positions cache.length..; appends them to the cache."""
        Tn, pos = len(tokens), cache.length
        if pos + Tn > self.config.block_size:
            raise ValueError(f"the KV cache holds {pos} positions; {Tn} more would exceed block_size={self.config.block_size}")
        # decode steps are matrix-vector products, small enough to start on one BLAS thread (two lost
        # 6x beside a busy process in bench_generate); the chooser then measures the other count
        with self._blas.run(("cached", Tn == 1), self._blas_threads(Tn)):
            return self._forward_cached(tokens, cache, pos)

    def _forward_cached(self, tokens: np.ndarray, cache: KVCache, pos: int) -> np.ndarray:
        cfg, P = self.config, self.params
        Tn = len(tokens)
        x = P["wte"][tokens] + P["wpe"][pos:pos + Tn]            # (Tn, C)
        for i in range(cfg.n_layer):
            p = f"h.{i}."
            h, _, _ = kernels.layernorm_forward(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"])  # (Tn, C)
            qkv = linear_forward(h, P[p + "attn.c_attn.weight"], P[p + "attn.c_attn.bias"])  # (Tn, 3C)
            att = attention_step(qkv, cache.k[i], cache.v[i], pos, cfg.n_head)               # (Tn, C)
            x = x + linear_forward(att, P[p + "attn.c_proj.weight"], P[p + "attn.c_proj.bias"])
            h, _, _ = kernels.layernorm_forward(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"])
            g = kernels.gelu_forward(linear_forward(h, P[p + "mlp.c_fc.weight"], P[p + "mlp.c_fc.bias"]))  # (Tn, 4C)
            x = x + linear_forward(g, P[p + "mlp.c_proj.weight"], P[p + "mlp.c_proj.bias"])
        cache.length = pos + Tn
        hf, _, _ = kernels.layernorm_forward(x[-1:], P["ln_f.weight"], P["ln_f.bias"])      # (1, C) last position only
        return (hf @ P["wte"].T)[0]                              # (1, C) @ (C, V) -> (V,)

    def generate(self, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 rng: np.random.Generator | None = None, use_cache: bool = True,
                 observe=None) -> Iterator[int]:
        """Yield max_new_tokens sampled token ids one at a time; see pythia.sampling.generate."""
        from .sampling import generate
        return generate(self, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, rng=rng, use_cache=use_cache, observe=observe)
