"""`config.json` of a Hugging Face Llama-family folder (model_type llama, qwen2, mistral), read into
the sizes Pythia's Llama model takes.

    read_hf_config(folder) -> HFConfig
    HFConfig.model: dict with exactly the LlamaConfig field names below
    HFConfig.model_type, .bos_token_id, .eos_token_ids

Semantics follow transformers' LlamaConfig / Qwen2Config / MistralConfig, including their
defaults for absent keys. Qwen2 always has q/k/v biases (and no o_proj bias); Llama and Mistral
have none (Llama's `attention_bias` would also put a bias on o_proj, which Pythia does not run).
Rotary settings are read from `rope_theta` / `rope_scaling` (transformers 4 files) or
`rope_parameters` (transformers 5 files). Anything that changes the computation and that Pythia
does not run (a rope scaling type, a sliding window, experts, another activation, MLP biases) is
refused by name in one line, as a ConfigError.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import ConfigError

MODEL_TYPES = ("llama", "qwen2", "mistral")

# transformers' defaults for keys a config.json may leave out, per model_type
_DEFAULTS = {
    "llama": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 2048,
              "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2},
    "qwen2": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 32768,
              "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": None, "eos_token_id": None},
    "mistral": {"rms_norm_eps": 1e-6, "rope_theta": 10000.0, "max_position_embeddings": 4096 * 32,
                "tie_word_embeddings": False, "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2},
}
_EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_intermediate_size")


@dataclass
class HFConfig:
    model_type: str
    model: dict = field(default_factory=dict)   # the LlamaConfig fields (see module docstring)
    bos_token_id: int | None = None
    eos_token_ids: list[int] = field(default_factory=list)


def _int(cfg: dict, key: str, where: str, *, positive: bool = True) -> int:
    v = cfg.get(key)
    if type(v) is not int or (positive and v <= 0):
        raise ConfigError(f"{where}: {key} must be a positive integer, got {v!r}")
    return v


def parse_hf_config(cfg: object, where: str = "config.json") -> HFConfig:
    """The HFConfig of a parsed config.json object; ConfigError naming what is unsupported."""
    if not isinstance(cfg, dict):
        raise ConfigError(f"{where} must be a JSON object")
    mt = cfg.get("model_type")
    if mt not in MODEL_TYPES:
        raise ConfigError(f"{where}: model_type {mt!r} is not supported; Pythia reads {', '.join(MODEL_TYPES)} "
                          "(and gpt2) folders")
    d = {**_DEFAULTS[mt], **{k: v for k, v in cfg.items() if v is not None or k not in _DEFAULTS[mt]}}

    # ---- options that change the computation and that Pythia does not run -----------------
    rope = d.get("rope_parameters") if isinstance(d.get("rope_parameters"), dict) else {}
    scaling = d.get("rope_scaling") or None
    if scaling is None:
        rope_type = rope.get("rope_type", "default")
    else:
        rope_type = scaling.get("rope_type", scaling.get("type")) if isinstance(scaling, dict) else scaling
    if rope_type not in (None, "default"):
        raise ConfigError(f"{where}: rope_scaling type {rope_type!r} is not supported; Pythia runs plain rotary "
                          "embeddings (rope_scaling null)")
    if d.get("hidden_act") != "silu":
        raise ConfigError(f"{where}: hidden_act {d.get('hidden_act')!r} is not supported; Pythia runs silu")
    for key in _EXPERT_KEYS:
        if d.get(key):
            raise ConfigError(f"{where}: {key} = {d[key]!r} (mixture of experts) is not supported")
    if d.get("mlp_bias"):
        raise ConfigError(f"{where}: mlp_bias true is not supported; Pythia's gated MLP has no biases")
    if mt != "qwen2" and d.get("attention_bias"):
        raise ConfigError(f"{where}: attention_bias true (biases on q, k, v and o_proj) is not supported for "
                          f"model_type {mt}")
    block = _int(d, "max_position_embeddings", where)
    window = d.get("sliding_window")
    sliding = (d.get("use_sliding_window") if mt == "qwen2" else window is not None and window < block)
    if sliding or "sliding_attention" in (d.get("layer_types") or []):
        raise ConfigError(f"{where}: a sliding attention window (sliding_window {window!r}) is not supported; "
                          "Pythia runs full causal attention")

    # ---- sizes ---------------------------------------------------------------------------
    n_head = _int(d, "num_attention_heads", where)
    n_kv = d.get("num_key_value_heads") or n_head
    if type(n_kv) is not int or n_kv <= 0 or n_head % n_kv:
        raise ConfigError(f"{where}: num_key_value_heads {n_kv!r} must divide num_attention_heads {n_head}")
    d_model = _int(d, "hidden_size", where)
    head_dim = d.get("head_dim") or d_model // n_head
    if type(head_dim) is not int or head_dim <= 0 or head_dim % 2:
        raise ConfigError(f"{where}: head_dim {head_dim!r} must be a positive even integer (rotary pairs)")
    theta = rope.get("rope_theta", d.get("rope_theta"))
    eps = d.get("rms_norm_eps")
    for key, v in (("rope_theta", theta), ("rms_norm_eps", eps)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 0:
            raise ConfigError(f"{where}: {key} must be a positive number, got {v!r}")
    model = {
        "vocab_size": _int(d, "vocab_size", where),
        "d_model": d_model,
        "n_layer": _int(d, "num_hidden_layers", where),
        "n_head": n_head,
        "n_kv_head": n_kv,
        "head_dim": head_dim,
        "d_ff": _int(d, "intermediate_size", where),
        "norm_eps": float(eps),
        "rope_theta": float(theta),
        "block_size": block,
        "qkv_bias": mt == "qwen2",
        "tie_embeddings": bool(d.get("tie_word_embeddings")),
    }
    bos, eos = d.get("bos_token_id"), d.get("eos_token_id")
    eos_ids = eos if isinstance(eos, list) else ([] if eos is None else [eos])
    if not all(type(i) is int for i in eos_ids) or (bos is not None and type(bos) is not int):
        raise ConfigError(f"{where}: bos_token_id / eos_token_id must be integers (or a list for eos)")
    return HFConfig(mt, model, bos, list(eos_ids))


def read_hf_config(folder: str | os.PathLike) -> HFConfig:
    """parse_hf_config of folder/config.json; ConfigError when it is missing or not JSON."""
    path = Path(folder) / "config.json"
    if not os.path.isfile(path):
        raise ConfigError(f"{path} not found; a Hugging Face model folder needs config.json")
    try:
        cfg = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON ({e}); download it again") from None
    return parse_hf_config(cfg, str(path))
