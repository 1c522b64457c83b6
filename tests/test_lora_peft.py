"""LoRA against PEFT + torch: committed fixtures (tests/fixtures/make_lora_fixtures.py) hold what
peft.get_peft_model computes on tiny random Llama and GPT-2 models with non-zero adapters and a
partly ignored batch (targets -100 = layers.IGNORE).

Tolerances: logits 1e-4 absolute; loss 1e-5 absolute; each adapter gradient within 1e-4 of its
tensor's largest entry.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

from pythia import layers
from pythia.lora import LoRAConfig, LoRAModel
from pythia.models.gpt2 import Pythia, PythiaConfig
from pythia.models.llama import load_hf

HERE = os.path.dirname(os.path.abspath(__file__))


def gpt2_from_hf(cfg: dict, tensors: dict) -> Pythia:
    model = Pythia(PythiaConfig(vocab_size=cfg["vocab_size"], block_size=cfg["n_positions"], d_model=cfg["n_embd"],
                                n_layer=cfg["n_layer"], n_head=cfg["n_head"]), init=False)
    names = {k.removeprefix("transformer.").removesuffix(".weight") if k.endswith(("wte.weight", "wpe.weight"))
             else k.removeprefix("transformer."): v for k, v in tensors.items() if k != "lm_head.weight"}
    model.load_params(names)
    return model


def load_case(name: str):
    f = dict(np.load(os.path.join(HERE, "fixtures", f"{name}.npz")))
    cfg = json.loads(str(f["config_json"]))
    tensors = {k[len("param/"):]: v for k, v in f.items() if k.startswith("param/")}
    base = load_hf(cfg, tensors) if cfg["model_type"] == "llama" else gpt2_from_hf(cfg, tensors)
    lora = json.loads(str(f["lora"]))
    model = LoRAModel(base, LoRAConfig(lora["r"], float(lora["alpha"]), tuple(lora["targets"])), init=False)
    pre = base.HF_PREFIX
    model.load_params({k[len("adapter/") + len(pre):]: v for k, v in f.items() if k.startswith("adapter/")})
    return model, f


@pytest.mark.parametrize("name", ["lora_llama", "lora_gpt2"])
def test_logits_loss_and_adapter_gradients_match_peft(name):
    model, f = load_case(name)
    np.testing.assert_allclose(model.forward(f["idx"]), f["logits"], rtol=0, atol=1e-4)
    targets = np.where(f["targets"] == -100, layers.IGNORE, f["targets"])
    assert abs(model.loss(f["idx"], targets) - float(f["loss"])) < 1e-5
    model.backward()
    pre = model.base.HF_PREFIX
    expected = {k[len("grad/") + len(pre):]: v for k, v in f.items() if k.startswith("grad/")}
    assert set(expected) == set(model.grads)
    for k, e in expected.items():
        np.testing.assert_allclose(model.grads[k], e, rtol=0, atol=1e-4 * float(np.abs(e).max()), err_msg=k)
