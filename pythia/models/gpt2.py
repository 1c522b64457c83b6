"""GPT-2, composed from pythia.layers, with its backward pass written by hand.

Architecture: token + learned position embeddings, pre-LN blocks (causal multi-head
self-attention, then a 4x MLP with GELU-tanh), a final LayerNorm, and a head tied to the token
embedding. The forward keeps exactly what the backward needs. Parameters and gradients are views
into two flat float32 buffers (params_memory, grads_memory, llm.c's names), matrices first, so
the optimizer updates the whole model with a few whole-buffer calls.

References: GPT-2 (Radford et al. 2019); llm.c `train_gpt2.c`; picoGPT `gpt2.py`; nanoGPT `model.py`.

Sizes: B batch, T time, C channels (d_model), V vocabulary, H heads, hs = C // H head size,
L layers, N = B * T rows of the flattened residual stream.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import layers as nn
from ..errors import ConfigError


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


class KVCache:
    """Keys and values of every layer for one sequence: k[l], v[l] are (H, block_size, hs)."""

    def __init__(self, config: PythiaConfig, dtype=np.float32, zeros=np.zeros):
        H, hs = config.n_head, config.d_model // config.n_head
        shape = (config.n_layer, H, config.block_size, hs)
        self.k = zeros(shape, dtype)                             # (L, H, block_size, hs)
        self.v = zeros(shape, dtype)
        self.length = 0                                          # positions filled so far


def param_shapes(cfg: PythiaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's name and shape, without allocating the model."""
    return _param_shapes(cfg)


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


def _layout(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, tuple[int, ...]]]:
    """name -> (offset, shape) in the flat buffer: matrices first, then vectors; the dict keeps
    the shapes' (Hugging Face) order."""
    order = sorted(shapes, key=lambda k: len(shapes[k]) != 2)   # stable: matrices, then vectors
    offsets, pos = {}, 0
    for k in order:
        offsets[k] = pos
        pos += math.prod(shapes[k])
    return {k: (offsets[k], shapes[k]) for k in shapes}


def _views(flat: np.ndarray, layout: dict) -> dict[str, np.ndarray]:
    return {k: flat[lo:lo + math.prod(s)].reshape(s) for k, (lo, s) in layout.items()}


class Pythia:
    """GPT-2 with a hand-written backward. params/grads are dicts of float32 arrays by HF GPT-2 name."""

    FAMILY = "gpt2"                     # the name checkpoints record (pythia.models.FAMILIES)
    HF_PREFIX = "transformer."          # Hugging Face state-dict keys are this + the name (projections)
    adapter = None                      # a low-rank adapter's hook on the projections (pythia.lora)

    def lora_targets(self) -> dict[str, tuple[str, str]]:
        """The projections an adapter may train: name -> (group "attn" | "mlp", orientation); GPT-2's
        Conv1D weights are (in, out), computing x W: "in_out"."""
        groups = {"attn.c_attn": "attn", "attn.c_proj": "attn", "mlp.c_fc": "mlp", "mlp.c_proj": "mlp"}
        return {f"h.{i}.{k}.weight": (g, "in_out") for i in range(self.config.n_layer) for k, g in groups.items()}

    def __init__(self, config: PythiaConfig, seed: int = 0, *, init: bool = True):
        """GPT-2 initialisation from `seed`; with init=False every parameter is 0, for a caller
        that loads all of them next (drawing GPT-2-small's 124M weights takes ~2 s)."""
        config.validate()
        self.config = config
        self.layout = _layout(_param_shapes(config))            # name -> (offset, shape)
        n = sum(math.prod(s) for _, s in self.layout.values())
        self.params_memory = np.zeros(n, np.float32)             # (P,) every parameter end to end
        self.params = _views(self.params_memory, self.layout)
        # the gradient buffer is made on first use: a model that only infers never holds one
        self._grads_memory: np.ndarray | None = None
        self._grads: dict[str, np.ndarray] | None = None
        self._acts: dict | None = None                           # activations of the last loss()
        self.quantized: dict | None = None                       # name -> pythia.quant.QuantLinear once int8
        if init:
            rng = np.random.default_rng(seed)
            resid_std = 0.02 / math.sqrt(2 * config.n_layer)    # GPT-2: residual projections scaled down
            for name, p in self.params.items():
                if name.endswith("ln_1.weight") or name.endswith("ln_2.weight") or name == "ln_f.weight":
                    p[...] = 1                                   # LayerNorm gain 1
                elif p.ndim == 1:
                    p[...] = 0                                   # biases 0
                else:
                    std = resid_std if name.endswith("c_proj.weight") else 0.02
                    p[...] = rng.standard_normal(p.shape, dtype=np.float32) * np.float32(std)  # N(0, std)

    # ------------------------------------------------------------------ bookkeeping

    @property
    def grads_memory(self) -> np.ndarray:
        """(P,) the gradients, laid out like params_memory."""
        if self._grads_memory is None:
            self._grads_memory = np.zeros_like(self.params_memory)
            self._grads = _views(self._grads_memory, self.layout)
        return self._grads_memory

    @property
    def grads(self) -> dict[str, np.ndarray]:
        """Gradients by parameter name, views into grads_memory."""
        if self._grads is None:
            self.grads_memory
        return self._grads

    def decay_mask(self) -> list[tuple[int, int, bool]]:
        """(lo, hi, decays) ranges of params_memory: matrices and embeddings decay, biases and
        LayerNorm gains and shifts do not."""
        runs: list[tuple[int, int, bool]] = []
        for lo, shape in sorted(self.layout.values()):
            hi, decays = lo + math.prod(shape), len(shape) == 2
            if runs and runs[-1][2] == decays and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], hi, decays)
            elif hi > lo:
                runs.append((lo, hi, decays))
        return runs

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

    def check_idx(self, idx, name: str = "idx") -> np.ndarray:
        """idx as an integer (B, T) array of valid token ids; ValueError naming what is wrong."""
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

    def check_pair(self, idx, targets) -> tuple[np.ndarray, np.ndarray]:
        """Checked (idx, targets); a target may be layers.IGNORE (not scored)."""
        idx = self.check_idx(idx)
        targets = np.asarray(targets)
        self.check_idx(np.where(targets == nn.IGNORE, 0, targets) if targets.size else targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"targets has shape {targets.shape} but idx has shape {idx.shape}; they must match")
        return idx, targets

    # ------------------------------------------------------------------ forward / backward

    def forward(self, idx: np.ndarray, *, attention: bool = False):
        """Logits (B, T, V) for token ids idx (B, T); keeps no activations.

        With attention=True, returns (logits, attn): attn[l] (B, H, T, T) holds layer l's attention
        probabilities exactly as this pass computed them (row = query, column = key, zero above
        the diagonal), for looking inside the model (pythia.inspection.explain).
        """
        idx = self.check_idx(idx)
        B, T = idx.shape
        attn: list | None = [] if attention else None
        logits = self._forward(idx, keep=None, attn=attn).reshape(B, T, -1)
        return (logits, attn) if attention else logits

    def loss(self, idx: np.ndarray, targets: np.ndarray) -> float:
        """Mean cross-entropy of predicting targets (B, T) from idx (B, T); keeps activations for backward()."""
        idx, targets = self.check_pair(idx, targets)
        self._acts = None                                        # free the last pass's activations first
        losses, self._acts = self.loss_rows(idx, targets)        # (N,), 0 where not scored
        return float(losses.sum(dtype=np.float64) / max(nn.counted(targets), 1))

    def backward(self) -> None:
        """Gradients of the last loss() wrt every parameter, written into self.grads."""
        if self._acts is None:
            raise RuntimeError("backward() needs activations: call loss(idx, targets) first")
        self.backward_rows(self._acts, self.grads, nn.counted(self._acts["targets"]))

    def loss_rows(self, idx: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, dict]:
        """Per-token losses (b * T,) of rows idx (b, T) (checked) and the activations their backward needs."""
        _refuse_training(self)
        acts: dict = {}
        logits = self._forward(idx, keep=acts)                   # (n, V)
        losses, probs = nn.crossentropy_forward(logits, targets.reshape(-1))  # (n,), (n, V)
        acts.update(probs=probs, targets=targets.reshape(-1))
        return losses, acts

    def _forward(self, idx: np.ndarray, keep: dict | None, attn: list | None = None) -> np.ndarray:
        """Logits (N, V); when `keep` is a dict, store what the backward needs in it; when `attn` is a
        list, append each layer's attention probabilities (B, H, T, T) to it."""
        cfg, P = self.config, self.params
        B, T = idx.shape
        H, C = cfg.n_head, cfg.d_model
        x = self._embed(idx)                                     # (B, T, C) token embeddings
        x += P["wpe"][:T]                                        # + (T, C) position embeddings
        x = x.reshape(B * T, C)                                  # (N, C) residual stream
        blocks = []
        for i in range(cfg.n_layer):
            p = f"h.{i}."
            a = {"x": x}
            h, a["ln1_mean"], a["ln1_rstd"] = nn.layernorm_forward(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"])
            qkv = self._linear(h, p + "attn.c_attn")                                           # (N, 3C)
            att = np.empty((B * T, C), qkv.dtype)                                               # (N, C) heads side by side
            a["probs"] = nn.attention_forward(_heads(att, B, T, H), *_qkv_heads(qkv, B, T, H))
            if attn is not None:
                attn.append(nn.full_attention(a["probs"], T))                                   # (B, H, T, T)
            x = x + self._linear(att, p + "attn.c_proj")                                       # (N, C)
            a.update(ln1=h, qkv=qkv, att=att, x_mid=x)
            h2, a["ln2_mean"], a["ln2_rstd"] = nn.layernorm_forward(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"])
            fc = self._linear(h2, p + "mlp.c_fc")                                              # (N, 4C)
            g = nn.gelu_forward(fc)                                                              # (N, 4C)
            x = x + self._linear(g, p + "mlp.c_proj")                                          # (N, C)
            a.update(ln2=h2, fc=fc, gelu=g)
            nn.drop_frozen_inputs(self.adapter, a, {k: (p + w + ".weight",) for k, w in (
                ("ln1", "attn.c_attn"), ("att", "attn.c_proj"), ("ln2", "mlp.c_fc"), ("gelu", "mlp.c_proj"))})
            if keep is not None:                                 # inference drops each layer's activations
                blocks.append(a)
        hf, mean_f, rstd_f = nn.layernorm_forward(x, P["ln_f.weight"], P["ln_f.bias"])          # (N, C)
        logits = self._mm("wte", hf)                             # (N, C) @ (C, V) -> (N, V), tied head
        if keep is not None:
            keep.update(idx=idx, layers=blocks, x_f=x, lnf=hf, lnf_mean=mean_f, lnf_rstd=rstd_f)
        return logits

    def backward_rows(self, a: dict, G: dict[str, np.ndarray], n_total: int) -> None:
        """Gradients of sum(losses) / n_total over the rows of activations `a`, written into G."""
        cfg, P = self.config, self.params
        idx = a["idx"]
        B, T = idx.shape
        N, H = B * T, cfg.n_head
        dlogits = nn.crossentropy_backward(a["probs"], a["targets"], n_total)  # (N, V)
        # logits = hf wte^T  =>  dwte (head part) = dlogits^T hf, dhf = dlogits wte
        # a name absent from G is frozen (an adapter trains instead): its gradient is not computed
        if "wte" in G:
            np.matmul(dlogits.T, a["lnf"], out=G["wte"])         # (V, N) @ (N, C) -> (V, C)
        dhf = dlogits @ P["wte"]                                 # (N, V) @ (V, C) -> (N, C)
        dx, *gs = nn.layernorm_backward(dhf, a["x_f"], P["ln_f.weight"], a["lnf_mean"], a["lnf_rstd"])  # (N, C)
        _put(G, "ln_f", gs)
        for i in reversed(range(cfg.n_layer)):
            p, l = f"h.{i}.", a["layers"][i]
            # MLP branch: x = x_mid + c_proj(gelu(c_fc(ln_2(x_mid))))
            dg = self._linear_back(G, dx, l["gelu"], p + "mlp.c_proj")                         # (N, 4C)
            dfc = nn.gelu_backward(dg, l["fc"])                                                 # (N, 4C)
            dh2 = self._linear_back(G, dfc, l["ln2"], p + "mlp.c_fc")                           # (N, C)
            dxm, *gs = nn.layernorm_backward(dh2, l["x_mid"], P[p + "ln_2.weight"], l["ln2_mean"], l["ln2_rstd"])
            _put(G, p + "ln_2", gs)
            dx += dxm                                            # residual: gradient flows both ways
            # attention branch: x_mid = x + c_proj(attn(c_attn(ln_1(x))))
            datt = self._linear_back(G, dx, l["att"], p + "attn.c_proj")                         # (N, C)
            dqkv = np.empty_like(l["qkv"])                                                      # (N, 3C), filled through views
            nn.attention_backward(*_qkv_heads(dqkv, B, T, H), _heads(datt, B, T, H),
                                  *_qkv_heads(l["qkv"], B, T, H), l["probs"])
            dh1 = self._linear_back(G, dqkv, l["ln1"], p + "attn.c_attn")                       # (N, C)
            dxi, *gs = nn.layernorm_backward(dh1, l["x"], P[p + "ln_1.weight"], l["ln1_mean"], l["ln1_rstd"])
            _put(G, p + "ln_1", gs)
            dx += dxi
        # x = wte[idx] + wpe[:T]
        dx = dx.reshape(B, T, -1)                                # (B, T, C)
        if "wpe" in G:
            np.sum(dx, axis=0, out=G["wpe"][:T])                 # (T, C); positions >= T got no gradient
            G["wpe"][T:] = 0
        if "wte" in G:
            nn.embedding_backward(G["wte"], dx.reshape(N, -1), idx.reshape(-1))  # the embedding part of dwte

    def _linear(self, x: np.ndarray, layer: str) -> np.ndarray:
        """x W + b of the Conv1D `layer` (weight (in, out)), plus its adapter's term when one is attached."""
        w = layer + ".weight"
        if self.quantized is not None:
            out = self.quantized[layer].apply(x)                 # Q8_0 int8 weights: pythia.quant.q8_matmul
        else:
            out = nn.linear_forward(x, self.params[w], self.params[layer + ".bias"])  # (N, out)
        nn.adapter_forward(self.adapter, x, out, (w,))
        return out

    def _linear_back(self, G: dict, dout: np.ndarray, x: np.ndarray, layer: str) -> np.ndarray:
        """dx of _linear; dW, db into G unless frozen (absent from G)."""
        w = layer + ".weight"
        dx = nn.linear_backward(G.get(w), G.get(layer + ".bias"), dout, x, self.params[w])  # (N, in)
        nn.adapter_backward(self.adapter, dx, dout, x, (w,), G)
        return dx

    # ------------------------------------------------------------------ inference with a KV cache

    def new_kv_cache(self, zeros=np.zeros) -> KVCache:
        """An empty cache; zeros(shape, dtype) allocates its two arrays (a caller may pass a
        memory policy of its own)."""
        return KVCache(self.config, self.params["wte"].dtype, zeros)

    def forward_cached(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Logits (V,) after feeding tokens (Tn,) at positions cache.length..; appends them to the cache."""
        return self.forward_cached_batch([tokens], [cache])[0]

    def forward_cached_batch(self, tokens: list, caches: list) -> np.ndarray:
        """Logits (B, V) after feeding sequence b its tokens[b] (Tn_b,) at positions caches[b].length..;
        appends them to each cache. The rows of every sequence go through each matrix product
        together (one read of each weight per step, whatever B); attention alone runs per sequence,
        against that sequence's cache."""
        cfg, P = self.config, self.params
        spans = nn.cached_spans(tokens, caches, cfg.block_size)     # (lo, hi, pos) rows of each sequence
        H, C = cfg.n_head, cfg.d_model
        x = np.concatenate([self._embed(np.asarray(t)) + P["wpe"][pos:pos + hi - lo]
                            for t, (lo, hi, pos) in zip(tokens, spans)])               # (N, C)
        for i in range(cfg.n_layer):
            p = f"h.{i}."
            h, _, _ = nn.layernorm_forward(x, P[p + "ln_1.weight"], P[p + "ln_1.bias"])          # (N, C)
            qkv = self._linear(h, p + "attn.c_attn")                                             # (N, 3C)
            att = np.empty_like(h)                                                               # (N, C)
            for (lo, hi, pos), cache in zip(spans, caches):
                q, k, v = qkv[lo:hi].reshape(hi - lo, 3, H, C // H).transpose(1, 2, 0, 3)        # each (H, Tn, hs)
                y = nn.attention_step(q, k, v, cache.k[i], cache.v[i], pos)                      # (H, Tn, hs)
                att[lo:hi] = y.transpose(1, 0, 2).reshape(hi - lo, C)                            # (Tn, C)
            x = x + self._linear(att, p + "attn.c_proj")
            h, _, _ = nn.layernorm_forward(x, P[p + "ln_2.weight"], P[p + "ln_2.bias"])
            g = nn.gelu_forward(self._linear(h, p + "mlp.c_fc"))                                  # (N, 4C)
            x = x + self._linear(g, p + "mlp.c_proj")
        for (lo, hi, pos), cache in zip(spans, caches):
            cache.length = pos + hi - lo
        last = [hi - 1 for _, hi, _ in spans]                                                    # each sequence's last row
        hf, _, _ = nn.layernorm_forward(x[last], P["ln_f.weight"], P["ln_f.bias"])             # (B, C)
        return self._mm("wte", hf)                               # (B, C) @ (C, V) -> (B, V)

    # ------------------------------------------------------------------ the matrices inference multiplies by

    EMBEDDING = "wte"                   # the token table among inference_matrices(); also the tied head

    def inference_matrices(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Every matrix forward and forward_cached multiply by, as (W (O, C), bias (O,) or None)
        views by the name _mm() takes: the Conv1D weights transposed to (out, in), and the token
        table wte (V, C), both embedding and head. pythia.quant.model quantizes exactly these."""
        P = self.params
        out = {"wte": (P["wte"], None)}
        for i in range(self.config.n_layer):
            for name in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
                n = f"h.{i}.{name}"
                out[n] = (P[n + ".weight"].T, P[n + ".bias"])    # (C_in, C_out) -> (O, C) view
        return out

    def _mm(self, name: str, x: np.ndarray) -> np.ndarray:
        """x W^T + b for the matrix `name` of inference_matrices(): int8 once quantized, else float32."""
        if name != "wte":
            return self._linear(x, name)
        if self.quantized is not None:
            return self.quantized[name].apply(x)                 # Q8_0: pythia.quant.q8_matmul
        return nn.linear_out_in(x, self.params["wte"])           # (N, C) @ (C, V) -> (N, V), tied head

    def _embed(self, idx: np.ndarray) -> np.ndarray:
        """Rows of the token table for idx (...): (..., C) float32 (dequantized when int8)."""
        if self.quantized is not None:
            return self.quantized["wte"].take(idx)
        return nn.embedding_forward(self.params["wte"], idx)

    def generate(self, prompt: list[int], max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, top_p: float | None = None,
                 rng: np.random.Generator | None = None, use_cache: bool = True,
                 observe=None) -> Iterator[int]:
        """Yield max_new_tokens sampled token ids one at a time; see pythia.sampling.generate."""
        from ..sampling import generate
        return generate(self, prompt, max_new_tokens, temperature=temperature, top_k=top_k,
                        top_p=top_p, rng=rng, use_cache=use_cache, observe=observe)


def _put(G: dict, layer: str, grads) -> None:
    """A LayerNorm's (dw, db) into G in place, unless it is frozen (absent from G)."""
    for suffix, g in zip((".weight", ".bias"), grads):
        if layer + suffix in G:
            G[layer + suffix][...] = g


def _refuse_training(model) -> None:
    if model.quantized is not None:
        raise ValueError("this model holds int8 (Q8_0) weights, which are for inference only; "
                         "train the float32 model and quantize it afterwards")


def _qkv_heads(qkv: np.ndarray, B: int, T: int, H: int):
    """q, k, v (B, H, T, hs) as strided views into the c_attn output (N, 3C)."""
    return qkv.reshape(B, T, 3, H, -1).transpose(2, 0, 3, 1, 4)


def _heads(a: np.ndarray, B: int, T: int, H: int) -> np.ndarray:
    """(N, C) -> (B, H, T, hs), a strided view."""
    return a.reshape(B, T, H, -1).transpose(0, 2, 1, 3)
