"""Export a LoRA checkpoint (pythia.lora): merged into a plain Hugging Face folder, or the adapter
alone in PEFT's layout.

Merged (`export mybot.npz --out DIR`): every adapted weight becomes W + (alpha / r) B A and the
merged model is written as any model of its family is (pythia.formats.export: GPT-2's layout, or
Llama's / Qwen2's with the base's tokenizer and chat template). transformers loads it with no PEFT.

Adapter only (`--adapter-only`): PEFT's files, which `PeftModel.from_pretrained(base, DIR)` loads
on the base model:

    adapter_config.json         peft_type LORA, r, lora_alpha, target_modules (module name
                                suffixes), fan_in_fan_out (true for GPT-2's (in, out) Conv1D
                                weights), lora_dropout 0, bias "none", base_model_name_or_path
    adapter_model.safetensors   "base_model.model.<HF key of the projection>.lora_A.weight" (r, in)
                                and ".lora_B.weight" (out, r), float32

Both are written whole or not at all (a temporary sibling folder renamed into place).
"""
from __future__ import annotations

import shutil
from pathlib import Path

from ..errors import ConfigError

def target_modules(model) -> list[str]:
    """PEFT target_modules: each adapted projection's last name part, or its last two where the
    last alone would also select an unadapted one (GPT-2's attn.c_proj and mlp.c_proj)."""
    from ..lora import short_name
    stems = {n[:-len(".weight")] for n in model.base.lora_targets()}
    chosen = {n[:-len(".weight")] for n in model.targets}
    out = set()
    for stem in chosen:
        last = short_name(stem + ".weight")
        if all(s in chosen for s in stems if s.endswith("." + last)):
            out.add(last)
        else:
            out.add(".".join(stem.split(".")[-2:]))
    return sorted(out)


def adapter_config(model) -> dict:
    lora = model.lora
    return {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(lora.rank), "lora_alpha": float(lora.alpha),
            "lora_dropout": 0.0, "target_modules": target_modules(model), "bias": "none",
            "fan_in_fan_out": any(model._orient[n] == "in_out" for n in model.targets),
            "base_model_name_or_path": (model.base_ref or {}).get("path"), "inference_mode": True,
            "init_lora_weights": True, "modules_to_save": None, "use_rslora": False, "use_dora": False}


def write_adapter(folder: Path, model) -> None:
    from .export import write_json
    from .safetensors import save_safetensors
    write_json(folder / "adapter_config.json", adapter_config(model))
    pre = "base_model.model." + model.base.HF_PREFIX
    save_safetensors(folder / "adapter_model.safetensors", {pre + k: p for k, p in model.params.items()},
                     metadata={"format": "pt"})


def write_merged(folder: Path, model, tokenizer, chat: dict | None = None) -> None:
    """The merged model as the Hugging Face folder of its family (pythia.formats.export)."""
    from .export import write_hf_folder
    write_hf_folder(folder, model.merged(), tokenizer, chat)


def export_lora(ckpt, out: str | Path, *, adapter_only: bool, force: bool = False) -> Path:
    """Write the LoRA checkpoint ckpt (pythia.formats.checkpoint.Checkpoint) at out, atomically."""
    from ..system.atomic import install_directory, new_directory
    from .export import check_export_target
    out = check_export_target(out, force)
    tmp = new_directory(out)
    try:
        if adapter_only:
            write_adapter(tmp, ckpt.model)
        else:
            write_merged(tmp, ckpt.model, ckpt.tokenizer, ckpt.chat)
        install_directory(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ConfigError(f"cannot write {str(out)!r}: {e.strerror or e}; check free disk space and "
                              f"permissions") from None
        raise
    return out
