"""A Hugging Face Llama-family folder, read as one thing: config.json (sizes), the weights
(model.safetensors or a sharded index), tokenizer.json, and tokenizer_config.json (chat template,
bos/eos). The model itself is built elsewhere from `config.model` and `weights`.

    f = read_hf_folder(path)              # ConfigError / GPT2Error, one line, on anything wrong
    f.config.model                        # LlamaConfig field names -> values (see hf_config)
    f.weights.get("model.embed_tokens.weight")
    f.tokenizer.encode(prompt, add_special_tokens=True)   # what HF's tokenizer(prompt) gives
    t = f.chat_template(chat_format=None) # ChatTemplate; refuses an unknown one naming --chat-format
    ids = f.tokenizer.encode(t.render(messages), add_special_tokens=False)  # as apply_chat_template
    f.stop_ids(t)                         # token ids a reply ends at
    check_weights(f.weights, f.config.model)  # every tensor present with its config.json shape
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import GPT2Error
from ..text.hf_tokenizer import HFTokenizer, load_hf_tokenizer
from .chat_template import ChatTemplate, chat_template_from_config, read_tokenizer_config
from .hf_config import MODEL_TYPES, HFConfig, read_hf_config
from .hf_weights import HFWeights, open_weights


def is_hf_llama_folder(path: str | os.PathLike) -> bool:
    """Whether path is a directory whose config.json names a Llama-family model_type (a cheap
    check for --model detection; reading it may still refuse an option)."""
    import json
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text(encoding="utf-8")).get("model_type") in MODEL_TYPES
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return False


@dataclass
class HFFolder:
    path: Path
    config: HFConfig
    weights: HFWeights
    tokenizer: HFTokenizer
    tokenizer_config: dict

    def chat_template(self, chat_format: str | None = None) -> ChatTemplate:
        """The folder's chat template (chat_format, one of chatml/llama2/zephyr/plain, overrides)."""
        return chat_template_from_config(self.tokenizer_config, chat_format,
                                         str(self.path / "tokenizer_config.json"))

    def stop_ids(self, template: ChatTemplate) -> list[int]:
        """Ids a reply stops at: the template's end-of-turn tokens that are single tokens, then
        config.json's eos ids (no duplicates, in that order)."""
        out: list[int] = []
        for s in template.stop_strings():
            i = self.tokenizer.token_id(s)
            if i is not None and i not in out:
                out.append(i)
        out += [i for i in self.config.eos_token_ids if i not in out]
        return out


def read_hf_folder(path: str | os.PathLike) -> HFFolder:
    """Every file of a Llama-family folder but the chat template, which is read when asked for."""
    path = Path(path)
    config = read_hf_config(path)
    tokenizer = load_hf_tokenizer(path / "tokenizer.json")
    tokenizer_config = read_tokenizer_config(path)
    weights = open_weights(path)
    return HFFolder(path, config, weights, tokenizer, tokenizer_config)


def expected_tensors(model: dict) -> dict[str, tuple[int, ...]]:
    """The tensor names and shapes of transformers' LlamaForCausalLM / Qwen2ForCausalLM for the
    sizes in model (hf_config's dict); Linear weights are (out, in)."""
    C, F, V = model["d_model"], model["d_ff"], model["vocab_size"]
    q, kv = model["n_head"] * model["head_dim"], model["n_kv_head"] * model["head_dim"]
    out = {"model.embed_tokens.weight": (V, C)}
    for i in range(model["n_layer"]):
        p = f"model.layers.{i}."
        out |= {p + "input_layernorm.weight": (C,), p + "self_attn.q_proj.weight": (q, C),
                p + "self_attn.k_proj.weight": (kv, C), p + "self_attn.v_proj.weight": (kv, C),
                p + "self_attn.o_proj.weight": (C, q), p + "post_attention_layernorm.weight": (C,),
                p + "mlp.gate_proj.weight": (F, C), p + "mlp.up_proj.weight": (F, C),
                p + "mlp.down_proj.weight": (C, F)}
        if model["qkv_bias"]:
            out |= {p + "self_attn.q_proj.bias": (q,), p + "self_attn.k_proj.bias": (kv,),
                    p + "self_attn.v_proj.bias": (kv,)}
    out["model.norm.weight"] = (C,)
    if not model["tie_embeddings"]:
        out["lm_head.weight"] = (V, C)
    return out


def check_weights(weights: HFWeights, model: dict) -> None:
    """GPT2Error naming the first tensor that is missing or whose shape disagrees with config.json
    (extra tensors, e.g. a tied model's lm_head.weight or old rotary_emb.inv_freq buffers, are ignored)."""
    for name, shape in expected_tensors(model).items():
        if name not in weights:
            raise GPT2Error(f"the weights lack tensor {name!r} that config.json implies; the folder's files "
                            "do not belong together")
        if weights.shape(name) != shape:
            raise GPT2Error(f"tensor {name!r} has shape {list(weights.shape(name))} but config.json implies "
                            f"{list(shape)}; the weights and config.json do not belong together")
