"""A LoRA adapter (pythia.lora) in PEFT's layout: what `export mybot.npz --out DIR --adapter-only`
writes (pythia.formats.export; without --adapter-only it writes the merged model, W + (alpha/r) B A,
as any model of the family). `PeftModel.from_pretrained(base, DIR)` loads it on the base model:

    adapter_config.json         peft_type LORA, r, lora_alpha, target_modules (module name
                                suffixes), fan_in_fan_out (true for GPT-2's (in, out) Conv1D
                                weights), lora_dropout 0, bias "none", base_model_name_or_path
    adapter_model.safetensors   "base_model.model.<HF key of the projection>.lora_A.weight" (r, in)
                                and ".lora_B.weight" (out, r), float32
"""
from __future__ import annotations

import json
from pathlib import Path


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
    """adapter_config.json and adapter_model.safetensors of model (a pythia.lora.LoRAModel) into folder."""
    from .safetensors import save_safetensors
    (folder / "adapter_config.json").write_text(json.dumps(adapter_config(model), indent=1) + "\n", encoding="utf-8")
    pre = "base_model.model." + model.base.HF_PREFIX
    save_safetensors(folder / "adapter_model.safetensors", {pre + k: p for k, p in model.params.items()},
                     metadata={"format": "pt"})
