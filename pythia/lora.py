"""LoRA: train a low-rank update of chosen projections of a frozen model (Hu et al. 2021).

A target projection W (out x in, applied as y = x W^T + b; GPT-2 stores W^T) becomes

    y = x W^T + b + s (x A^T) B^T,     A (r, in), B (out, r), s = alpha / r

with A drawn Kaiming-uniform (PEFT's kaiming_uniform_(a=sqrt(5)): U(-1/sqrt(in), 1/sqrt(in)))
and B = 0, so before the first step the adapted model is the base model exactly. The base stays
frozen: it has no gradient buffer and no optimizer state, and its backward computes only the
input gradients the adapters need (through the frozen weights) and dA, dB:

    g = dy (N, out),  u = x A^T (N, r),  v = g B (N, r)
    dB = s g^T u,     dA = s v^T x,      dx += s v A

LoRAModel wraps a model of any family and offers the family interface (pythia.models) with the
adapters as its parameters, so DeltaOptimizer and the Trainer work unchanged. A family says which
of its weights are projections through model.lora_targets() -> {name: (group, orientation)};
the model calls this module's hook (layers.adapter_forward / adapter_backward) from its linear
layers through its `adapter` attribute.

Adapter names follow PEFT's: "<projection>.lora_A.weight" and "<projection>.lora_B.weight" next to
the base's "<projection>.weight". Merging: W += s B A ("out_in"), or W += s (B A)^T ("in_out").

No dropout on the adapter input: LoRA's dropout regularises runs of many epochs over large
adapters; on a few hundred steps of a small chat set it only slows learning, and without it the
adapted model's training loss is exactly what evaluation and the merged export compute.
"""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass

import numpy as np

from .errors import ConfigError

GROUPS = ("attn", "mlp")                  # target names that stand for a family's projection groups

# The learning rate of a LoRA run when --lr is not given (held constant, as fine-tuning's 1e-4 is).
# B starts at 0 and the update stays in a rank-r subspace, so adapters need larger steps than full
# fine-tuning. Measured on the tiny GPT-2 fixture (tests/fixtures/gpt2) with a 60-conversation chat
# set, `train --init-from base --lora 8 --data chats.jsonl --steps 100 --lr LR --batch-size 8
# --block-size 64`: val loss 9.70 before; after 100 steps 1e-4 8.04, 3e-4 5.19, 1e-3 1.19,
# 3e-3 0.57, 1e-2 0.57 (full fine-tuning at its default 1e-4: 2.41). 1e-3 is the lowest rate that
# clearly learns there, within the 2e-4..2e-3 the LoRA paper used for GPT-2; a pretrained model
# sits nearer a good minimum, where a large rate costs more than on random weights.
DEFAULT_LR = 1e-3


@dataclass(frozen=True)
class LoRAConfig:
    rank: int                             # r
    alpha: float                          # the update is scaled by alpha / r
    targets: tuple[str, ...] = ("attn",)  # group names ("attn", "mlp") or projection names ("q_proj", "c_fc")

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": int(self.rank), "alpha": float(self.alpha), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, d: dict) -> "LoRAConfig":
        try:
            return cls(rank=int(d["rank"]), alpha=float(d["alpha"]), targets=tuple(d["targets"]))
        except (KeyError, TypeError, ValueError) as e:
            raise ConfigError(f"the LoRA settings {d!r} are incomplete or malformed ({e})") from None


def short_name(name: str) -> str:
    """A projection's short name, PEFT's target_modules spelling: "model.layers.0.self_attn.q_proj.weight"
    -> "q_proj", "h.0.mlp.c_proj.weight" -> "c_proj" (GPT-2's c_proj in both groups; "mlp.c_proj"
    picks one)."""
    return name.split(".")[-2]


def resolve_targets(model, targets) -> list[str]:
    """The weight names of `model` that targets (groups or short names, in any mix) select, in
    the model's order; ConfigError listing the valid names for an unknown one."""
    table = model.lora_targets()                                  # name -> (group, orientation)
    valid = sorted({short_name(n) for n in table})
    chosen = set()
    for t in targets:
        t = t.strip()
        hit = [n for n in table if t == table[n][0] or n[:-len(".weight")].endswith("." + t)]
        if not hit:
            raise ConfigError(f"--lora-targets {t!r} names no projection of this model; valid names: "
                              f"{', '.join(GROUPS)}, {', '.join(valid)}")
        chosen.update(hit)
    if not chosen:
        raise ConfigError(f"--lora-targets is empty; valid names: {', '.join(GROUPS)}, {', '.join(valid)}")
    return [n for n in table if n in chosen]


def adapter_names(name: str) -> tuple[str, str]:
    """(A name, B name) of the adapter on the weight `name`."""
    stem = name[:-len(".weight")]
    return stem + ".lora_A.weight", stem + ".lora_B.weight"


def weights_hash(model) -> str:
    """SHA-256 over every parameter's name, shape and float32 bytes, in name order: the identity
    of a base model's weights, wherever they are read from (a folder or a checkpoint)."""
    h = hashlib.sha256()
    for name in sorted(model.params):
        p = np.ascontiguousarray(model.params[name], np.float32)
        h.update(f"{name}{p.shape}".encode())
        h.update(p.data)
    return h.hexdigest()


def attach(base, config: LoRAConfig, source, seed: int = 0) -> "LoRAModel":
    """Adapters on base, recording source (a path) and the hash of base's weights."""
    if getattr(base, "adapter_meta", None) is not None:
        raise ConfigError(f"{str(source)!r} is a LoRA checkpoint already; export it merged first "
                          f"(python -m pythia export {source} --out DIR) and train adapters on that")
    model = LoRAModel(base, config, seed=seed)
    model.base_ref = {"path": os.path.abspath(str(source)), "sha256": weights_hash(base)}
    return model


def open_adapted(meta: dict, adapters: dict, what: str, open_base) -> "LoRAModel":
    """The LoRA model a checkpoint describes: its base opened from meta["base"]["path"] by
    open_base(path) -> pythia.formats.source.LoadedModel, checked against the recorded hash
    (CheckpointError in one line when it differs), and its adapters."""
    from .errors import CheckpointError
    base_ref = meta.get("base") or {}
    path = base_ref.get("path")
    if not isinstance(path, str) or not isinstance(base_ref.get("sha256"), str):
        raise CheckpointError(f"{what} is a LoRA adapter without a reference to its base model; it is corrupt")
    if not os.path.exists(path):
        raise CheckpointError(f"{what} is a LoRA adapter on {path!r}, which is not there any more; put the base "
                              f"model back at that path")
    loaded = open_base(path)
    base = loaded.model
    if weights_hash(base) != base_ref["sha256"]:
        raise CheckpointError(f"{what} was trained on other weights than those now at {path!r} (their content "
                              f"hash differs); put the original base model back at that path")
    try:
        model = LoRAModel(base, LoRAConfig.from_dict(meta), init=False)
        model.load_params(adapters)
    except (ConfigError, ValueError) as e:
        raise CheckpointError(f"{what}: its adapters do not fit the base model ({e}); it is corrupt") from None
    model.base_ref = dict(base_ref)
    model.base_chat = loaded.chat_meta()                          # the base's chat template, if it has one
    return model


class LoRAModel:
    """Low-rank adapters on a frozen base model, with the family interface of the adapters alone."""

    base_ref: dict | None = None          # {"path", "sha256"} of the base this adapter was trained on
    base_chat: dict | None = None         # the base's chat template and stop ids (a checkpoint's meta "chat")

    def __init__(self, base, config: LoRAConfig, seed: int = 0, *, init: bool = True):
        """Adapters on base's projections chosen by config.targets; A Kaiming-uniform from seed and
        B = 0 (init=False: all 0, for a caller that loads them next). The base is frozen and its
        linear layers call this object from now on (base.adapter)."""
        if isinstance(config.rank, bool) or not isinstance(config.rank, (int, np.integer)) or config.rank < 1:
            raise ConfigError(f"--lora (the rank) must be a positive whole number, got {config.rank!r}; e.g. --lora 8")
        if not (math.isfinite(config.alpha) and config.alpha > 0):
            raise ConfigError(f"--lora-alpha must be a positive number, got {config.alpha!r}; the default is 2 x the rank")
        self.base, self.lora = base, config
        self.config = base.config
        self.FAMILY = getattr(base, "FAMILY", "gpt2")
        table = base.lora_targets()
        # the (out, in) sizes of every projection, adapted or not: a fused block's columns follow them
        self._io: dict[str, tuple[int, int]] = {}
        for name, (_, orient) in table.items():
            shape = base.params[name].shape
            self._io[name] = (shape[0], shape[1]) if orient == "out_in" else (shape[1], shape[0])
        self._orient = {n: o for n, (_, o) in table.items()}
        self.targets = resolve_targets(base, config.targets)
        r = config.rank
        for name in self.targets:
            if r > min(self._io[name]):
                raise ConfigError(f"--lora {r} exceeds the smaller side of {name} {self._io[name]}; the rank must be "
                                  f"at most {min(self._io[name])}")
        self.layout: dict[str, tuple[int, tuple[int, int]]] = {}
        pos = 0
        for name in self.targets:                                 # A then B of each target, in the model's order
            out, inp = self._io[name]
            a, b = adapter_names(name)
            self.layout[a] = (pos, (r, inp))
            pos += r * inp
            self.layout[b] = (pos, (out, r))
            pos += out * r
        self.params_memory = np.zeros(pos, np.float32)            # (P_adapters,)
        self.params = self._views(self.params_memory)
        self._grads_memory: np.ndarray | None = None
        self._grads: dict | None = None
        self._acts: dict | None = None
        self._by_weight = {name: adapter_names(name) for name in self.targets}
        if init:
            rng = np.random.default_rng(seed)
            for name in self.targets:
                a = self.params[self._by_weight[name][0]]         # (r, in)
                bound = 1.0 / math.sqrt(a.shape[1])               # kaiming_uniform_(a=sqrt(5)): gain sqrt(1/3) x sqrt(3/fan_in)
                a[...] = rng.uniform(-bound, bound, a.shape).astype(np.float32)
        base.adapter = self

    def _views(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        return {k: flat[lo:lo + math.prod(s)].reshape(s) for k, (lo, s) in self.layout.items()}

    # ------------------------------------------------------------------ the family interface

    @property
    def grads_memory(self) -> np.ndarray:
        if self._grads_memory is None:
            self._grads_memory = np.zeros_like(self.params_memory)
            self._grads = self._views(self._grads_memory)
        return self._grads_memory

    @property
    def grads(self) -> dict[str, np.ndarray]:
        self.grads_memory
        return self._grads

    def decay_mask(self) -> list[tuple[int, int, bool]]:
        """Every adapter is a matrix: decay (when the run sets any) applies to all of them."""
        return [(0, self.params_memory.size, True)] if self.params_memory.size else []

    def num_params(self) -> int:
        """The trained parameters (the adapters); the frozen base is base.num_params()."""
        return int(self.params_memory.size)

    def load_params(self, params: dict) -> None:
        """Copy the adapters in place; exact names and shapes, else ValueError."""
        missing = [k for k in self.params if k not in params]
        if missing:
            raise ValueError(f"adapter {missing[0]!r} is missing ({len(missing)} missing in all)")
        extra = [k for k in params if k not in self.params]
        if extra:
            raise ValueError(f"adapter {extra[0]!r} is not part of this model ({len(extra)} unexpected in all)")
        for k, p in self.params.items():
            if np.shape(params[k]) != p.shape:
                raise ValueError(f"adapter {k!r} has shape {np.shape(params[k])}, this model needs {p.shape}")
        for k, p in self.params.items():
            p[...] = params[k]

    def check_idx(self, idx, name: str = "idx"):
        return self.base.check_idx(idx, name)

    def check_pair(self, idx, targets):
        return self.base.check_pair(idx, targets)

    def forward(self, idx, **kwargs):
        return self.base.forward(idx, **kwargs)

    def loss(self, idx, targets) -> float:
        from .layers import counted
        idx, targets = self.check_pair(idx, targets)
        self._acts = None
        losses, self._acts = self.base.loss_rows(idx, targets)    # (N,), 0 where not scored
        return float(losses.sum(dtype=np.float64) / max(counted(targets), 1))

    def backward(self) -> None:
        from .layers import counted
        if self._acts is None:
            raise RuntimeError("backward() needs activations: call loss(idx, targets) first")
        self.backward_rows(self._acts, self.grads, counted(self._acts["targets"]))

    def loss_rows(self, idx, targets):
        return self.base.loss_rows(idx, targets)

    def backward_rows(self, acts: dict, grads: dict, n_total: int) -> None:
        """The adapters' gradients into grads (adapter names only: every base weight is frozen)."""
        self.base.backward_rows(acts, grads, n_total)

    def new_kv_cache(self, zeros=np.zeros):
        return self.base.new_kv_cache(zeros)

    def forward_cached(self, tokens, cache):
        return self.base.forward_cached(tokens, cache)

    def forward_cached_batch(self, tokens, caches):
        return self.base.forward_cached_batch(tokens, caches)

    def generate(self, prompt, max_new_tokens, **kw):
        from .sampling import generate
        return generate(self, prompt, max_new_tokens, **kw)

    # ------------------------------------------------------------------ the hook the base calls

    def adapts(self, name: str) -> bool:
        """Whether the weight `name` carries an adapter."""
        return name in self._by_weight

    def adapt_forward(self, x: np.ndarray, out: np.ndarray, names) -> None:
        """out (N, sum of widths) += s (x A^T) B^T in the columns of each adapted weight of names."""
        s, col = np.float32(self.lora.scale), 0
        for name in names:
            width = self._io[name][0]
            ab = self._by_weight.get(name)
            if ab is not None:
                a, b = self.params[ab[0]], self.params[ab[1]]    # (r, in), (out, r)
                out[:, col:col + width] += ((x @ a.T) * s) @ b.T  # (N, in) @ (in, r) @ (r, out)
            col += width

    def adapt_backward(self, dx: np.ndarray, dout: np.ndarray, x: np.ndarray, names, grads: dict) -> None:
        """dA, dB of each adapted weight of names into grads; its path's s v A added into dx (N, in)."""
        s, col = np.float32(self.lora.scale), 0
        for name in names:
            width = self._io[name][0]
            ab = self._by_weight.get(name)
            if ab is not None:
                a, b = self.params[ab[0]], self.params[ab[1]]    # (r, in), (out, r)
                g = dout[:, col:col + width]                     # (N, out)
                u = x @ a.T                                      # (N, in) @ (in, r) -> (N, r)
                v = (g @ b) * s                                  # (N, out) @ (out, r) -> (N, r), scaled
                np.matmul(g.T, u * s, out=grads[ab[1]])          # dB = s g^T u: (out, N) @ (N, r)
                np.matmul(v.T, x, out=grads[ab[0]])              # dA = s v^T x: (r, N) @ (N, in)
                dx += v @ a                                      # (N, r) @ (r, in) -> (N, in)
            col += width

    # ------------------------------------------------------------------ checkpoints

    def adapter_meta(self) -> dict:
        """What a checkpoint records (meta "lora"): the settings and the base's reference."""
        return {**self.lora.to_dict(), "base": dict(self.base_ref or {})}


    # ------------------------------------------------------------------ merging

    def delta(self, name: str) -> np.ndarray:
        """s B A in the base weight's own orientation (added to it, it merges the adapter)."""
        a, b = (self.params[k] for k in self._by_weight[name])
        d = (b @ a) * np.float32(self.lora.scale)                 # (out, r) @ (r, in) -> (out, in)
        return d if self._orient[name] == "out_in" else d.T

    def merged_params(self) -> dict[str, np.ndarray]:
        """The base's parameters by name with every adapter merged in (new arrays where merged)."""
        out = dict(self.base.params)
        for name in self.targets:
            out[name] = self.base.params[name] + self.delta(name)
        return out

    def merged(self):
        """A plain model of the base's family whose weights are W + s B A: the adapted model,
        without adapters (what export writes and what decoding may run at full speed)."""
        model = type(self.base)(self.base.config, init=False)
        model.load_params(self.merged_params())
        return model
