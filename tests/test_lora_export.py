"""Exporting LoRA checkpoints: the adapter in PEFT's layout and the merged Hugging Face folder.

Without peers: the adapter files hold exactly the keys and values PEFT saved for the same adapters
(the committed fixtures of tests/fixtures/make_lora_fixtures.py), and the merged folder read back
by Pythia gives the adapted model's logits (1e-5). With transformers and peft importable: the
merged folder in transformers and PeftModel.from_pretrained(base, adapter folder) give Pythia's
logits within 1e-4.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from helpers import GPT2, REPO, assert_ok, assert_one_line_error, run_cli as run
from test_lora_peft import load_case

from pythia.formats.lora_export import adapter_config, write_adapter
from pythia.formats.safetensors import load_safetensors
from pythia.formats.source import open_model
from pythia.lora import LoRAConfig, attach

SMOL = REPO / "tests" / "fixtures" / "hf_models" / "smollm2"
IDX = np.array([[5, 17, 3, 40, 11, 2, 9, 30]])


@pytest.mark.parametrize("name", ["lora_llama", "lora_gpt2"])
def test_adapter_files_are_what_peft_saves(tmp_path, name):
    model, f = load_case(name)
    write_adapter(tmp_path, model)
    got = load_safetensors(tmp_path / "adapter_model.safetensors")
    want = {"base_model.model." + k[len("adapter/"):]: v for k, v in f.items() if k.startswith("adapter/")}
    assert set(got) == set(want)
    for k in want:
        assert np.array_equal(got[k], want[k]), k
    cfg = json.loads((tmp_path / "adapter_config.json").read_text())
    lora = json.loads(str(f["lora"]))
    assert (cfg["r"], cfg["lora_alpha"], cfg["peft_type"]) == (lora["r"], lora["alpha"], "LORA")
    assert cfg["fan_in_fan_out"] == (name == "lora_gpt2")
    assert sorted(cfg["target_modules"]) == sorted(lora["targets"])


def adapted(src, tmp_path, targets=("attn", "mlp")):
    """A copy of the folder src as base, LoRA on it with non-zero B, saved as a checkpoint."""
    from pythia.formats.checkpoint import save_checkpoint
    base_dir = tmp_path / "base"
    shutil.copytree(src, base_dir)
    m = open_model(base_dir)
    lm = attach(m.model, LoRAConfig(4, 8.0, targets), base_dir, seed=1)
    rng = np.random.default_rng(2)
    for k, p in lm.params.items():
        if ".lora_B." in k:
            p[...] = rng.standard_normal(p.shape).astype(np.float32) * 0.1
    save_checkpoint(tmp_path / "bot.npz", lm, m.tokenizer, step=1)
    return lm


@pytest.mark.parametrize("src", [SMOL, GPT2], ids=["smollm2", "gpt2"])
def test_merged_export_reads_back_as_the_adapted_model(tmp_path, src):
    lm = adapted(src, tmp_path)
    want = lm.forward(IDX)
    r = run(["export", "bot.npz", "--out", "merged"], tmp_path)
    assert_ok(r)
    back = open_model(tmp_path / "merged")
    assert back.tokenizer.vocab_size == open_model(src).tokenizer.vocab_size
    np.testing.assert_allclose(back.model.forward(IDX), want, rtol=0, atol=1e-5)
    r = run(["export", "bot.npz", "--out", "adapter", "--adapter-only"], tmp_path)
    assert_ok(r)
    assert sorted(p.name for p in (tmp_path / "adapter").iterdir()) == ["adapter_config.json", "adapter_model.safetensors"]
    # live: transformers loads the merged folder, PEFT the adapter on the base
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("peft")
    import torch
    from peft import PeftModel
    ids = torch.from_numpy(IDX)
    with torch.no_grad():
        merged = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "merged", attn_implementation="eager")
        np.testing.assert_allclose(merged.eval()(ids).logits.numpy(), want, rtol=0, atol=1e-4)
        base = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", attn_implementation="eager",
                                                                 torch_dtype=torch.float32)
        peft = PeftModel.from_pretrained(base, tmp_path / "adapter").eval()
        np.testing.assert_allclose(peft(ids).logits.numpy(), want, rtol=0, atol=1e-4)


def test_adapter_only_on_a_full_model_is_one_line(tmp_path):
    from pythia.formats.checkpoint import save_checkpoint
    m = open_model(GPT2)
    save_checkpoint(tmp_path / "full.npz", m.model, m.tokenizer)
    r = run(["export", "full.npz", "--out", "x", "--adapter-only"], tmp_path)
    assert_one_line_error(r, "trained without --lora")
    assert not (tmp_path / "x").exists()
