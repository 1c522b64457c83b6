"""A Llama-family model as a Hugging Face folder that transformers loads with
AutoModelForCausalLM.from_pretrained(DIR) (LlamaForCausalLM, or Qwen2ForCausalLM when q/k/v carry
biases) and Pythia reads back with --model DIR:

    config.json            LlamaConfig.to_hf() plus the bos/eos ids of the chat template's tokens
    model.safetensors      every parameter as F32 under its Hugging Face name, (out, in) as stored
                           (a tied head is not written, as transformers saves it)
    tokenizer.json         the tokenizer.json the model was converted from, unchanged
    tokenizer_config.json  bos/eos tokens and the chat template text the folder came with
"""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import ConfigError


def write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def write_llama_folder(folder: Path, model, tokenizer, chat: dict | None = None) -> None:
    from .safetensors import save_safetensors
    if tokenizer.kind != "hf-bpe":
        raise ConfigError(f"cannot export a Llama-family model with a {tokenizer.kind!r} tokenizer; "
                          f"export handles the tokenizer.json it was converted with")
    template = (chat or {}).get("template", {})
    config = model.config.to_hf()
    ids = {k: tokenizer.token_id(template[k]) for k in ("bos_token", "eos_token") if template.get(k)}
    config.update({f"{k}_id": v for k, v in ids.items() if v is not None})
    write_json(folder / "config.json", config)
    save_safetensors(folder / "model.safetensors", dict(model.params), metadata={"format": "pt"})
    write_json(folder / "tokenizer.json", tokenizer.source)
    tok_config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": model.config.block_size}
    tok_config.update({k: template[k] for k in ("bos_token", "eos_token") if template.get(k)})
    if (chat or {}).get("jinja"):
        tok_config["chat_template"] = chat["jinja"]
    write_json(folder / "tokenizer_config.json", tok_config)
