"""The Llama family (Llama, SmolLM2, TinyLlama, Qwen2): a decoder-only Transformer in NumPy, with
its backward pass written by hand and composed from `pythia.layers` and `pythia.kernels`.

Architecture (Hugging Face `LlamaForCausalLM` / `Qwen2ForCausalLM`): token embedding, pre-norm
blocks of RMSNorm -> grouped-query causal attention with rotary positions on q and k (HF's
rotate-half layout, angle p * theta^(-2i/hs)) -> residual, RMSNorm -> gated MLP
down(silu(gate(x)) * up(x)) -> residual; a final RMSNorm and a head, tied to the embedding or
not. No biases except optional ones on q, k, v (Qwen2). The KV cache holds the key/value heads
only, keys already rotated.

Weights keep Hugging Face's names and shapes: a projection is (out, in) and computes x W^T
(layers.linear_* get the transposed view). In the flat parameter buffer the q, k, v
projections of a layer are stacked rows of one (Dq + 2 Dkv, C) block, and gate and up rows of
one (2F, C) block, so decoding reads each with one matrix-vector product.

References: Touvron et al. 2023 (Llama); Su et al. 2021 (RoPE); Shazeer 2020 (GLU variants);
Ainslie et al. 2023 (GQA); llama2.c `run.c`; transformers `modeling_llama.py` (semantics).

Sizes: B batch, T time, C d_model, V vocabulary, H query heads, Hkv key/value heads, hs head
size, Dq = H hs, Dkv = Hkv hs, F the MLP width, N = B T rows, Tn new tokens of a cached step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import kernels, layers
from ..errors import ConfigError


@dataclass
class LlamaConfig:
    vocab_size: int              # V
    d_model: int = 64            # C: width of the residual stream (HF hidden_size)
    n_layer: int = 2             # blocks (num_hidden_layers)
    n_head: int = 4              # H: query heads (num_attention_heads)
    n_kv_head: int = 2           # Hkv: key/value heads, dividing H (num_key_value_heads; = H is plain MHA)
    head_dim: int = 16           # hs (HF head_dim; hidden_size // heads when the config omits it)
    d_ff: int = 128              # F: gated MLP width (intermediate_size)
    norm_eps: float = 1e-5       # RMSNorm's eps (rms_norm_eps)
    rope_theta: float = 10000.0  # rotary base (rope_theta)
    block_size: int = 128        # longest context (max_position_embeddings)
    qkv_bias: bool = False       # biases on q, k, v (Qwen2 always; Llama's attention_bias)
    tie_embeddings: bool = True  # the head is the embedding (tie_word_embeddings)

    def validate(self) -> None:
        """Raise ConfigError with a one-line fix for a size, eps or theta that cannot work."""
        for f in fields(self):
            v = getattr(self, f.name)
            if f.type == "bool":
                if not isinstance(v, (bool, np.bool_)):
                    raise ConfigError(f"{f.name} must be true or false, got {v!r}")
            elif f.type == "float":
                if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) or not math.isfinite(v) or v <= 0:
                    raise ConfigError(f"{f.name} must be a positive finite number, got {v!r}")
            elif isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                raise ConfigError(f"{f.name} must be a positive whole number, got {v!r}")
        if self.n_head % self.n_kv_head:
            raise ConfigError(f"n_head ({self.n_head}) must be a multiple of n_kv_head ({self.n_kv_head}); "
                              f"each key/value head serves the same number of query heads")
        if self.head_dim % 2:
            raise ConfigError(f"head_dim must be even for rotary positions, got {self.head_dim}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
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

    @classmethod
    def from_hf(cls, hf: dict) -> "LlamaConfig":
        """The config of a Hugging Face `config.json` (model_type llama or qwen2), validated; options
        this family does not implement are refused by name."""
        mt = hf.get("model_type")
        if mt not in ("llama", "qwen2"):
            raise ConfigError(f"model_type {mt!r} is not supported; this family reads 'llama' and 'qwen2'")
        # rotary settings: older files write rope_theta (+ rope_scaling), transformers 5 writes
        # rope_parameters {"rope_type", "rope_theta"}; only the plain ("default") rotation is read
        rope = hf.get("rope_parameters") or {}
        scaling = hf.get("rope_scaling")
        if scaling is not None or rope.get("rope_type", "default") != "default":
            raise ConfigError(f"rope scaling {scaling or rope!r} is not supported; only unscaled rotary positions are")
        if hf.get("use_sliding_window") or any(t != "full_attention" for t in hf.get("layer_types") or []):
            raise ConfigError("sliding-window attention (use_sliding_window / layer_types) is not supported")
        if hf.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"hidden_act {hf['hidden_act']!r} is not supported; only 'silu' is")
        if hf.get("mlp_bias"):
            raise ConfigError("mlp_bias is true; biases on the MLP projections are not supported")
        if mt == "llama" and hf.get("attention_bias"):
            raise ConfigError("attention_bias is true; a bias on o_proj is not supported (Qwen2's q/k/v biases are)")
        if hf.get("num_experts") or hf.get("num_local_experts"):
            raise ConfigError("mixture-of-experts layers are not supported")
        try:
            C, H = int(hf["hidden_size"]), int(hf["num_attention_heads"])
            cfg = cls(vocab_size=int(hf["vocab_size"]), d_model=C, n_layer=int(hf["num_hidden_layers"]),
                      n_head=H, n_kv_head=int(hf.get("num_key_value_heads") or H),
                      head_dim=int(hf.get("head_dim") or C // H), d_ff=int(hf["intermediate_size"]),
                      norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
                      rope_theta=float(rope.get("rope_theta", hf.get("rope_theta", 10000.0))),
                      block_size=int(hf.get("max_position_embeddings", 2048)),
                      qkv_bias=mt == "qwen2", tie_embeddings=bool(hf.get("tie_word_embeddings", False)))
        except KeyError as err:
            raise ConfigError(f"config.json lacks {err.args[0]!r}, which a {mt} model needs") from None
        except (TypeError, ValueError) as err:
            raise ConfigError(f"config.json has a malformed size: {err}") from None
        cfg.validate()
        return cfg

    def to_hf(self) -> dict:
        """config.json fields from which transformers builds this model (Qwen2 when q/k/v carry biases)."""
        qwen = self.qkv_bias
        d = {"architectures": ["Qwen2ForCausalLM" if qwen else "LlamaForCausalLM"],
             "model_type": "qwen2" if qwen else "llama", "vocab_size": self.vocab_size,
             "hidden_size": self.d_model, "intermediate_size": self.d_ff, "num_hidden_layers": self.n_layer,
             "num_attention_heads": self.n_head, "num_key_value_heads": self.n_kv_head, "head_dim": self.head_dim,
             "rms_norm_eps": self.norm_eps, "rope_theta": self.rope_theta, "rope_scaling": None,
             "max_position_embeddings": self.block_size, "tie_word_embeddings": self.tie_embeddings,
             "hidden_act": "silu", "torch_dtype": "float32"}
        if not qwen:
            d.update(attention_bias=False, mlp_bias=False)
        return d


def load_hf(config_fields: dict, tensors: dict) -> "Llama":
    """A model from a Hugging Face config.json (as a dict) and its tensors by name (float32 arrays).

    Tensors that are derived, not parameters, are dropped: rotary `inv_freq` buffers that older
    checkpoints carry, and an `lm_head.weight` stored beside a tied embedding (it must equal it)."""
    cfg = LlamaConfig.from_hf(config_fields)
    params = {k: v for k, v in tensors.items() if not k.endswith("rotary_emb.inv_freq")}
    if cfg.tie_embeddings and "lm_head.weight" in params:
        head = params.pop("lm_head.weight")
        if not np.array_equal(head, params.get("model.embed_tokens.weight", head)):
            raise ConfigError("tie_word_embeddings is true but lm_head.weight differs from the embedding; "
                              "set tie_word_embeddings to false in config.json")
    model = Llama(cfg, init=False)
    model.load_params(params)
    return model


# ============================================================================ parameters

def _blocks(cfg: LlamaConfig) -> list[tuple[str, list[tuple[str, tuple[int, ...]]]]]:
    """The parameter buffer's layout: (block, [(HF name, shape), ...]) in memory order, matrices
    first; a block's members are stacked along axis 0, so the block is one array too."""
    V, C, F = cfg.vocab_size, cfg.d_model, cfg.d_ff
    Dq, Dkv = cfg.n_head * cfg.head_dim, cfg.n_kv_head * cfg.head_dim
    mats = [("model.embed_tokens.weight", [("model.embed_tokens.weight", (V, C))])]
    vecs = []
    for i in range(cfg.n_layer):
        p = f"model.layers.{i}."
        a = p + "self_attn."
        mats += [(p + "qkv", [(a + "q_proj.weight", (Dq, C)), (a + "k_proj.weight", (Dkv, C)),
                              (a + "v_proj.weight", (Dkv, C))]),
                 (a + "o_proj.weight", [(a + "o_proj.weight", (C, Dq))]),
                 (p + "gate_up", [(p + "mlp.gate_proj.weight", (F, C)), (p + "mlp.up_proj.weight", (F, C))]),
                 (p + "mlp.down_proj.weight", [(p + "mlp.down_proj.weight", (C, F))])]
        if cfg.qkv_bias:
            vecs.append((p + "qkv_bias", [(a + "q_proj.bias", (Dq,)), (a + "k_proj.bias", (Dkv,)),
                                          (a + "v_proj.bias", (Dkv,))]))
        vecs += [(p + n, [(p + n, (C,))]) for n in ("input_layernorm.weight", "post_attention_layernorm.weight")]
    vecs.append(("model.norm.weight", [("model.norm.weight", (C,))]))
    if not cfg.tie_embeddings:
        mats.append(("lm_head.weight", [("lm_head.weight", (V, C))]))
    return mats + vecs


def param_shapes(cfg: LlamaConfig) -> dict[str, tuple[int, ...]]:
    """Every parameter's Hugging Face name and shape, without allocating the model."""
    return {name: shape for _, members in _blocks(cfg) for name, shape in members}


def _hf_order(cfg: LlamaConfig) -> list[str]:
    """Parameter names in Hugging Face's state_dict order."""
    names = ["model.embed_tokens.weight"]
    for i in range(cfg.n_layer):
        p, a = f"model.layers.{i}.", f"model.layers.{i}.self_attn."
        for proj in ("q_proj", "k_proj", "v_proj"):
            names.append(a + proj + ".weight")
            if cfg.qkv_bias:
                names.append(a + proj + ".bias")
        names += [a + "o_proj.weight", p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight",
                  p + "mlp.down_proj.weight", p + "input_layernorm.weight", p + "post_attention_layernorm.weight"]
    names.append("model.norm.weight")
    if not cfg.tie_embeddings:
        names.append("lm_head.weight")
    return names


def _carve(flat: np.ndarray, layout) -> tuple[dict, dict, list, dict]:
    """(params by name, blocks by name, decay ranges, name -> (offset, shape)) as views into
    flat, following _blocks."""
    named, blocks, ranges, offsets, pos = {}, {}, [], {}, 0
    for block, members in layout:
        rows = sum(s[0] for _, s in members)
        shape = (rows,) + members[0][1][1:]
        n = math.prod(shape)
        blocks[block] = flat[pos:pos + n].reshape(shape)
        r = 0
        for name, s in members:
            named[name] = blocks[block][r:r + s[0]]
            offsets[name] = (pos + r * math.prod(s[1:]), s)
            r += s[0]
        decays = len(shape) == 2                                 # matrices and embeddings decay
        if ranges and ranges[-1][2] == decays:
            ranges[-1] = (ranges[-1][0], pos + n, decays)
        else:
            ranges.append((pos, pos + n, decays))
        pos += n
    return named, blocks, ranges, offsets


def _put(G: dict, name: str, value: np.ndarray) -> None:
    """G[name] = value in place, unless name is frozen (absent from G)."""
    if name in G:
        G[name][...] = value


class KVCache:
    """Keys (rotated) and values of every layer for one sequence: k[l], v[l] are (Hkv, block_size, hs)."""

    def __init__(self, config: LlamaConfig, zeros=np.zeros):
        shape = (config.n_layer, config.n_kv_head, config.block_size, config.head_dim)
        self.k = zeros(shape, np.float32)
        self.v = zeros(shape, np.float32)
        self.length = 0                                          # positions filled so far


class Llama:
    """A Llama-family model; params/grads are dicts of float32 views by Hugging Face name."""

    FAMILY = "llama"                     # the name checkpoints record (pythia.models.FAMILIES)
    HF_PREFIX = ""                       # the names are Hugging Face state-dict keys already
    adapter = None                       # a low-rank adapter's hook on the projections (pythia.lora)
    # training's head + loss, computed this many vocabulary columns at a time so the (N, V) logits
    # and their gradient never exist whole: "auto" (layers.vocab_chunk), a number, or None for the
    # plain computation on whole logits (the reference; layers.head_loss_forward)
    head_chunk: int | str | None = "auto"

    def lora_targets(self) -> dict[str, tuple[str, str]]:
        """The projections an adapter may train: name -> (group "attn" | "mlp", orientation); HF's
        (out, in) weights computing x W^T are "out_in"."""
        groups = {"self_attn.q_proj": "attn", "self_attn.k_proj": "attn", "self_attn.v_proj": "attn",
                  "self_attn.o_proj": "attn", "mlp.gate_proj": "mlp", "mlp.up_proj": "mlp", "mlp.down_proj": "mlp"}
        return {f"model.layers.{i}.{k}.weight": (g, "out_in") for i in range(self.config.n_layer)
                for k, g in groups.items()}

    def __init__(self, config: LlamaConfig, seed: int = 0, *, init: bool = True):
        """N(0, 0.02) matrices and RMSNorm gains 1 from `seed`; with init=False every parameter is
        0, for a caller that loads them all next."""
        config.validate()
        self.config = config
        self._blocks = _blocks(config)                           # [(block, [(name, shape), ...])]
        self._names = _hf_order(config)
        self._qkv_names = [tuple(f"model.layers.{i}.self_attn.{k}_proj.weight" for k in "qkv")
                           for i in range(config.n_layer)]       # the fused q, k, v block's members, in order
        P = sum(math.prod(shape) for _, members in self._blocks for _, shape in members)
        self.params_memory = np.zeros(P, np.float32)             # (P,) every parameter end to end
        named, self._pblocks, self._ranges, offsets = _carve(self.params_memory, self._blocks)
        self.params = {k: named[k] for k in self._names}
        self.layout = {k: offsets[k] for k in self._names}        # name -> (offset, shape) in params_memory
        self._grads_memory: np.ndarray | None = None             # made on first use: inference never needs it
        self._tables = kernels.rope_tables(np.arange(0), config.head_dim, config.rope_theta)  # (cos, sin) (0, hs)
        self._acts: dict | None = None
        self.quantized: dict | None = None                       # name -> pythia.quant.QuantLinear once int8
        if init:
            rng = np.random.default_rng(seed)
            for block, a in self._pblocks.items():
                if a.ndim == 2:
                    a[...] = rng.standard_normal(a.shape, dtype=np.float32) * np.float32(0.02)  # N(0, 0.02)
                elif block.endswith("norm.weight"):
                    a[...] = 1.0                                 # RMSNorm gain 1; biases stay 0

    # ------------------------------------------------------------------ the family interface

    @property
    def grads_memory(self) -> np.ndarray:
        if self._grads_memory is None:
            self._grads_memory = np.zeros_like(self.params_memory)
            named, self._gblocks, _, _ = _carve(self._grads_memory, self._blocks)
            self._grads = {k: named[k] for k in self._names}
        return self._grads_memory

    @property
    def grads(self) -> dict[str, np.ndarray]:
        self.grads_memory
        return self._grads

    def decay_mask(self) -> list[tuple[int, int, bool]]:
        """(lo, hi, decays) ranges of params_memory: weight decay on matrices and embeddings only."""
        return list(self._ranges)

    def num_params(self) -> int:
        return int(self.params_memory.size)

    def load_params(self, params: dict) -> None:
        """Copy every parameter in place (cast to float32); exact names and shapes, else ValueError."""
        missing = [k for k in self.params if k not in params]
        if missing:
            raise ValueError(f"parameter {missing[0]!r} is missing ({len(missing)} missing in all)")
        extra = [k for k in params if k not in self.params]
        if extra:
            raise ValueError(f"parameter {extra[0]!r} is not part of this model ({len(extra)} unexpected in all)")
        for k, p in self.params.items():
            if np.shape(params[k]) != p.shape:
                raise ValueError(f"parameter {k!r} has shape {np.shape(params[k])}, this model needs {p.shape}")
        for k, p in self.params.items():
            p[...] = params[k]

    def check_idx(self, idx, name: str = "idx") -> np.ndarray:
        a = np.asarray(idx)
        if not np.issubdtype(a.dtype, np.integer):
            raise ValueError(f"{name} must hold integer token ids, got dtype {a.dtype}")
        if a.ndim != 2 or a.shape[0] < 1:
            raise ValueError(f"{name} must have shape (B, T) with B >= 1, got shape {a.shape}")
        T, bs, V = a.shape[1], self.config.block_size, self.config.vocab_size
        if not 1 <= T <= bs:
            raise ValueError(f"{name} has T={T} positions; T must be between 1 and block_size={bs}")
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= V:
            raise ValueError(f"{name} values must lie in [0, {V}) (vocab_size), got values from {lo} to {hi}")
        return a

    def _rope(self, hi: int) -> tuple[np.ndarray, np.ndarray]:
        """cos, sin (>= hi, hs) tables for positions 0.., grown by doubling up to block_size. One
        attribute holds both, so a pass on another thread never sees a new cos with an old sin."""
        tables = self._tables
        if tables[0].shape[0] < hi:
            n = min(self.config.block_size, max(hi, 2 * tables[0].shape[0], 64))
            tables = self._tables = kernels.rope_tables(np.arange(n), self.config.head_dim, self.config.rope_theta)
        return tables

    def _head(self) -> np.ndarray:
        return self.params["model.embed_tokens.weight" if self.config.tie_embeddings else "lm_head.weight"]

    # ------------------------------------------------------------------ forward / backward

    def forward(self, idx: np.ndarray, *, attention: bool = False):
        """Logits (B, T, V) for token ids idx (B, T); keeps no activations. With attention=True,
        returns (logits, attn), attn[l] (B, H, T, T) layer l's attention probabilities."""
        idx = self.check_idx(idx)
        B, T = idx.shape
        attn: list | None = [] if attention else None
        hf = self._trunk(idx, keep=None, attn=attn)              # (N, C)
        logits = self._mm(self._head_name(), hf).reshape(B, T, -1)  # (N, C) @ (C, V) -> (B, T, V)
        return (logits, attn) if attention else logits

    def loss(self, idx: np.ndarray, targets: np.ndarray) -> float:
        """Mean cross-entropy of predicting targets (B, T) from idx (B, T); keeps activations for backward()."""
        idx, targets = self.check_pair(idx, targets)
        self._acts = None                                        # free the last pass's activations first
        losses, self._acts = self.loss_rows(idx, targets)        # (N,), 0 where not scored
        return float(losses.sum(dtype=np.float64) / max(layers.counted(targets), 1))

    def check_pair(self, idx, targets) -> tuple[np.ndarray, np.ndarray]:
        """Checked (idx, targets); a target may be layers.IGNORE (not scored)."""
        idx = self.check_idx(idx)
        targets = np.asarray(targets)
        self.check_idx(np.where(targets == layers.IGNORE, 0, targets) if targets.size else targets, "targets")
        if targets.shape != idx.shape:
            raise ValueError(f"targets has shape {targets.shape} but idx has shape {idx.shape}; they must match")
        return idx, targets

    def backward(self) -> None:
        """Gradients of the last loss() wrt every parameter, written into self.grads."""
        if self._acts is None:
            raise RuntimeError("backward() needs activations: call loss(idx, targets) first")
        self.backward_rows(self._acts, self.grads, layers.counted(self._acts["targets"]))

    def loss_rows(self, idx: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, dict]:
        """Per-token losses (B T,) of rows idx (B, T) (checked) and the activations their backward needs."""
        if self.quantized is not None:
            raise ValueError("this model holds int8 (Q8_0) weights, which are for inference only; "
                             "train the float32 model and quantize it afterwards")
        acts: dict = {}
        hf = self._trunk(idx, keep=acts)                         # (N, C)
        acts["targets"] = targets.reshape(-1)
        acts["chunk"] = self._chunk(len(hf))
        # (N,) losses and the (N,) logsumexps of the logits (or their (N, V) softmax, unchunked)
        losses, acts["head_saved"] = layers.head_loss_forward(hf, self._head(), acts["targets"], acts["chunk"])
        return losses, acts

    def _chunk(self, N: int) -> int | None:
        """Vocabulary columns per chunk of the head + loss for N rows (None: whole logits)."""
        return layers.vocab_chunk(N, self.config.vocab_size) if self.head_chunk == "auto" else self.head_chunk

    def _trunk(self, idx: np.ndarray, keep: dict | None, attn: list | None = None) -> np.ndarray:
        """The final-normed hidden states hf (N, C), which the head turns into logits; with `keep` a
        dict, store what the backward needs in it."""
        cfg, P, PB = self.config, self.params, self._pblocks
        B, T = idx.shape
        N, H, Hkv, hs = B * T, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        Dq, Dkv = H * hs, Hkv * hs
        cos, sin = (t[:T] for t in self._rope(T))                # (T, hs) each
        x = self._embed(idx).reshape(N, -1)                      # (N, C)
        acts = []
        for i in range(cfg.n_layer):
            p = f"model.layers.{i}."
            a = {"x": x}
            h, a["rstd1"] = kernels.rmsnorm_forward(x, P[p + "input_layernorm.weight"], cfg.norm_eps)  # (N, C)
            qkv = self._mm(p + "qkv", h)                         # (N, Dq + 2 Dkv)
            layers.adapter_forward(self.adapter, h, qkv, self._qkv_names[i])
            # rotate q and k, and write them back over their unrotated columns of qkv: the backward
            # reads only rotated q, k and v, so one (N, Dq + 2 Dkv) array holds all it needs
            q = qkv[:, :Dq].reshape(B, T, H, hs).transpose(0, 2, 1, 3)              # (B, H, T, hs) view
            k = qkv[:, Dq:Dq + Dkv].reshape(B, T, Hkv, hs).transpose(0, 2, 1, 3)    # (B, Hkv, T, hs) view
            q[...] = kernels.rope_forward(q, cos, sin)
            k[...] = kernels.rope_forward(k, cos, sin)
            v = qkv[:, Dq + Dkv:].reshape(B, T, Hkv, hs).transpose(0, 2, 1, 3)  # (B, Hkv, T, hs) view
            y = np.empty((N, Dq), np.float32)                    # heads side by side
            probs = layers.attention_forward(y.reshape(B, T, H, hs).transpose(0, 2, 1, 3), q, k, v)
            if attn is not None:
                attn.append(layers.full_attention(probs, T))     # (B, H, T, T)
            x = x + self._linear(y, p + "self_attn.o_proj.weight")  # (N, C)
            h2, a["rstd2"] = kernels.rmsnorm_forward(x, P[p + "post_attention_layernorm.weight"], cfg.norm_eps)
            gu = self._mm(p + "gate_up", h2)                     # (N, 2F): gate, then up
            layers.adapter_forward(self.adapter, h2, gu, (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"))
            gate, up = gu[:, :cfg.d_ff], gu[:, cfg.d_ff:]        # (N, F) views each
            m = kernels.swiglu_forward(gate, up)                 # (N, F)
            a.update(h=h, qkv=qkv, q=q, k=k, probs=probs, y=y, x_mid=x, h2=h2, gate=gate, up=up, m=m)
            layers.drop_frozen_inputs(self.adapter, a, {"h": self._qkv_names[i], "y": (p + "self_attn.o_proj.weight",),
                                                        "h2": (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"),
                                                        "m": (p + "mlp.down_proj.weight",)})
            # m (N, F) is not kept: the backward recomputes it from gate and up (an elementwise
            # pass, the same bits) where down_proj's gradient needs it, saving N F floats a layer
            a["recompute_m"] = a.pop("m") is not None
            x = x + self._linear(m, p + "mlp.down_proj.weight")  # (N, C)
            if keep is not None:
                acts.append(a)
        hf, rstd_f = kernels.rmsnorm_forward(x, P["model.norm.weight"], cfg.norm_eps)  # (N, C)
        if keep is not None:
            keep.update(idx=idx, layers=acts, x_f=x, hf=hf, rstd_f=rstd_f)
        return hf

    def backward_rows(self, a: dict, G: dict, n_total: int) -> None:
        """Gradient of sum(losses) / n_total of loss_rows' rows wrt every parameter, into the dict G."""
        cfg, P = self.config, self.params
        idx = a["idx"]
        B, T = idx.shape
        N, H, Hkv, hs = B * T, cfg.n_head, cfg.n_kv_head, cfg.head_dim
        Dq, Dkv = H * hs, Hkv * hs
        cos, sin = (t[:T] for t in self._rope(T))
        own = G is getattr(self, "_grads", None)                 # then the fused q/k/v gradient blocks are G's views
        # logits = hf W^T  =>  dW = dlogits^T hf, dhf = dlogits W (a chunk of vocabulary at a time);
        # a name absent from G is frozen (an adapter trains instead): its gradient is not computed
        head = self._head_name()
        dhf = layers.head_loss_backward(G.get(head), a["hf"], self._head(), a["targets"], a["head_saved"],
                                        n_total, a["chunk"])    # (N, C)
        if not cfg.tie_embeddings and "model.embed_tokens.weight" in G:
            G["model.embed_tokens.weight"][...] = 0              # only the embedding's scatter-add follows
        dx, gw = kernels.rmsnorm_backward(dhf, a["x_f"], P["model.norm.weight"], a["rstd_f"])
        _put(G, "model.norm.weight", gw)
        for i in reversed(range(cfg.n_layer)):
            p, l = f"model.layers.{i}.", a["layers"][i]
            # MLP branch: x = x_mid + down(silu(gate(h2)) * up(h2)),  h2 = rmsnorm(x_mid)
            m = kernels.swiglu_forward(l["gate"], l["up"]) if l["recompute_m"] else None  # (N, F) as the forward's
            dm = self._linear_back(G, dx, m, p + "mlp.down_proj.weight")            # (N, F)
            del m
            dgate, dup = kernels.swiglu_backward(dm, l["gate"], l["up"])          # (N, F) each
            dh2 = self._linear_back(G, dgate, l["h2"], p + "mlp.gate_proj.weight")  # (N, C)
            dh2 += self._linear_back(G, dup, l["h2"], p + "mlp.up_proj.weight")
            dxm, gw = kernels.rmsnorm_backward(dh2, l["x_mid"], P[p + "post_attention_layernorm.weight"], l["rstd2"])
            _put(G, p + "post_attention_layernorm.weight", gw)
            dx += dxm                                            # the residual passes dx through too
            # attention branch: x_mid = x + o(attn(rope(q(h)), rope(k(h)), v(h))),  h = rmsnorm(x)
            dy = self._linear_back(G, dx, l["y"], p + "self_attn.o_proj.weight")   # (N, Dq)
            dqkv = np.empty((N, Dq + 2 * Dkv), np.float32)
            dq = np.empty((B, H, T, hs), np.float32)             # wrt the rotated q, k
            dk = np.empty((B, Hkv, T, hs), np.float32)
            dv = dqkv[:, Dq + Dkv:].reshape(B, T, Hkv, hs).transpose(0, 2, 1, 3)  # (B, Hkv, T, hs) view
            v = l["qkv"][:, Dq + Dkv:].reshape(B, T, Hkv, hs).transpose(0, 2, 1, 3)
            layers.attention_backward(dq, dk, dv, dy.reshape(B, T, H, hs).transpose(0, 2, 1, 3),
                                      l["q"], l["k"], v, l["probs"])
            # rotate the gradients back (the transpose of each rotation) into dqkv's q and k columns
            dqkv[:, :Dq].reshape(B, T, H, hs)[...] = kernels.rope_backward(dq, cos, sin).transpose(0, 2, 1, 3)
            dqkv[:, Dq:Dq + Dkv].reshape(B, T, Hkv, hs)[...] = kernels.rope_backward(dk, cos, sin).transpose(0, 2, 1, 3)
            frozen = self._qkv_names[i][0] not in G
            dw = None if frozen else self._gblocks[p + "qkv"] if own else np.empty((Dq + 2 * Dkv, cfg.d_model), np.float32)
            db = None if frozen or not cfg.qkv_bias else \
                self._gblocks[p + "qkv_bias"] if own else np.empty(Dq + 2 * Dkv, np.float32)
            dh = layers.linear_backward(None if dw is None else dw.T, db, dqkv, l["h"], self._pblocks[p + "qkv"].T)  # (N, C)
            layers.adapter_backward(self.adapter, dh, dqkv, l["h"], self._qkv_names[i], G)
            if not own and dw is not None:                       # a separate gradient dict: copy the rows out
                self._split(G, p + "qkv", dw)
                if db is not None:
                    self._split(G, p + "qkv_bias", db)
            dxi, gw = kernels.rmsnorm_backward(dh, l["x"], P[p + "input_layernorm.weight"], l["rstd1"])
            _put(G, p + "input_layernorm.weight", gw)
            dx += dxi
        if "model.embed_tokens.weight" in G:
            layers.embedding_backward(G["model.embed_tokens.weight"], dx, idx.reshape(-1))  # x = E[idx]

    def _linear(self, x: np.ndarray, name: str) -> np.ndarray:
        """x W^T for the (out, in) weight `name`, plus its adapter's term when one is attached."""
        out = self._mm(name, x)                                  # (N, out): int8 when quantized
        layers.adapter_forward(self.adapter, x, out, (name,))
        return out

    def _linear_back(self, G: dict, dout: np.ndarray, x: np.ndarray, name: str) -> np.ndarray:
        """dx of _linear; dW into G[name] unless the weight is frozen (absent from G)."""
        dw = G.get(name)
        dx = layers.linear_backward(None if dw is None else dw.T, None, dout, x, self.params[name].T)  # (N, in)
        layers.adapter_backward(self.adapter, dx, dout, x, (name,), G)
        return dx

    def _split(self, G: dict, block: str, fused: np.ndarray) -> None:
        """Copy a fused block's rows into the gradient arrays of its members."""
        r = 0
        for name, shape in dict(self._blocks)[block]:
            G[name][...] = fused[r:r + shape[0]]
            r += shape[0]

    # ------------------------------------------------------------------ inference with a KV cache

    def new_kv_cache(self, zeros=np.zeros) -> KVCache:
        return KVCache(self.config, zeros)

    def forward_cached(self, tokens: np.ndarray, cache: KVCache) -> np.ndarray:
        """Logits (V,) after feeding tokens (Tn,) at positions cache.length..; appends them to the cache."""
        return self.forward_cached_batch([tokens], [cache])[0]

    def forward_cached_batch(self, tokens: list, caches: list) -> np.ndarray:
        """Logits (B, V) after feeding sequence b its tokens[b] (Tn_b,) at positions caches[b].length..;
        appends them to each cache. The rows of every sequence share each matrix product (one read of
        each weight per step, whatever B); rotation and attention run per sequence at its positions.

        Per layer: one RMSNorm, one product for q, k, v together, one rotation of q and k together
        per sequence, the cached attention, and one product for gate and up together."""
        cfg, P, PB = self.config, self.params, self._pblocks
        spans = layers.cached_spans(tokens, caches, cfg.block_size)  # (lo, hi, pos) rows of each sequence
        H, Hkv, hs, F = cfg.n_head, cfg.n_kv_head, cfg.head_dim, cfg.d_ff
        Dq, Dkv = H * hs, Hkv * hs
        cos, sin = self._rope(max(pos + hi - lo for lo, hi, pos in spans))  # (>= longest, hs)
        x = self._embed(np.concatenate([np.asarray(t).reshape(-1) for t in tokens]))  # (N, C)
        for i in range(cfg.n_layer):
            p = f"model.layers.{i}."
            h, _ = kernels.rmsnorm_forward(x, P[p + "input_layernorm.weight"], cfg.norm_eps)  # (N, C)
            qkv = self._mm(p + "qkv", h)                         # (N, C) @ (C, Dq + 2 Dkv)
            layers.adapter_forward(self.adapter, h, qkv, self._qkv_names[i])
            y = np.empty((len(x), Dq), np.float32)               # (N, Dq) heads side by side
            for (lo, hi, pos), cache in zip(spans, caches):
                Tn = hi - lo
                # q and k heads side by side: (Tn, H + Hkv, hs) -> (H + Hkv, Tn, hs), rotated at once
                qk = kernels.rope_forward(qkv[lo:hi, :Dq + Dkv].reshape(Tn, H + Hkv, hs).transpose(1, 0, 2),
                                          cos[pos:pos + Tn], sin[pos:pos + Tn])
                v = qkv[lo:hi, Dq + Dkv:].reshape(Tn, Hkv, hs).transpose(1, 0, 2)  # (Hkv, Tn, hs)
                att = layers.attention_step(qk[:H], qk[H:], v, cache.k[i], cache.v[i], pos)  # (H, Tn, hs)
                y[lo:hi] = att.transpose(1, 0, 2).reshape(Tn, Dq)
            x = x + self._linear(y, p + "self_attn.o_proj.weight")  # (N, Dq) @ (Dq, C)
            h, _ = kernels.rmsnorm_forward(x, P[p + "post_attention_layernorm.weight"], cfg.norm_eps)
            gu = self._mm(p + "gate_up", h)                      # (N, 2F): gate, then up
            layers.adapter_forward(self.adapter, h, gu, (p + "mlp.gate_proj.weight", p + "mlp.up_proj.weight"))
            x = x + self._linear(kernels.swiglu_forward(gu[:, :F], gu[:, F:]), p + "mlp.down_proj.weight")
        for (lo, hi, pos), cache in zip(spans, caches):
            cache.length = pos + hi - lo
        last = [hi - 1 for _, hi, _ in spans]                    # each sequence's last row
        hf, _ = kernels.rmsnorm_forward(x[last], P["model.norm.weight"], cfg.norm_eps)  # (B, C)
        return self._mm(self._head_name(), hf)                   # (B, C) @ (C, V) -> (B, V)

    # ------------------------------------------------------------------ the matrices inference multiplies by

    EMBEDDING = "model.embed_tokens.weight"   # the token table among inference_matrices()

    def inference_matrices(self) -> dict[str, tuple[np.ndarray, np.ndarray | None]]:
        """Every matrix forward and forward_cached multiply by, as (W (O, C), bias (O,) or None)
        views by the name _mm() takes: per layer the fused q/k/v block, o_proj, the fused
        gate/up block and down_proj; the embedding (also the head when tied) and lm_head when
        not. pythia.quant.model quantizes exactly these."""
        PB = self._pblocks
        out = {}
        for block, members in self._blocks:
            if len(members[0][1]) == 2:                          # the matrices, in memory order
                out[block] = (PB[block], PB.get(block + "_bias"))  # (O, C), q/k/v's biases when present
        return out

    def _head_name(self) -> str:
        return "model.embed_tokens.weight" if self.config.tie_embeddings else "lm_head.weight"

    def _mm(self, name: str, x: np.ndarray) -> np.ndarray:
        """x W^T + b for the matrix `name` of inference_matrices(): int8 once quantized, else float32."""
        if self.quantized is not None:
            return self.quantized[name].apply(x)                 # Q8_0: pythia.quant.q8_matmul
        return layers.linear_out_in(x, self._pblocks[name], self._pblocks.get(name + "_bias"))  # (N, O)

    def _embed(self, idx: np.ndarray) -> np.ndarray:
        """Rows of the token table for idx (...): (..., C) float32 (dequantized when int8)."""
        if self.quantized is not None:
            return self.quantized[self.EMBEDDING].take(idx)
        return layers.embedding_forward(self.params[self.EMBEDDING], idx)

    def generate(self, prompt: list[int], max_new_tokens: int, **kw):
        """Yield max_new_tokens sampled token ids one at a time; see pythia.sampling.generate."""
        from ..sampling import generate
        return generate(self, prompt, max_new_tokens, **kw)

