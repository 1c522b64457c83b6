"""A Hugging Face Llama-family folder's config.json and weights: sizes read as transformers reads
them, unsupported options refused by name, BF16/F16/F32 and sharded weights equal to what the
safetensors library reads (fixture made by tests/fixtures/make_hf_safetensors_fixtures.py; live
when torch and safetensors are importable), and the peak memory of reading BF16 weights."""
from __future__ import annotations

import json
import shutil
import tracemalloc
from pathlib import Path

import numpy as np
import pytest

from pythia.errors import ConfigError, GPT2Error
from pythia.formats.hf_config import parse_hf_config, read_hf_config
from pythia.formats.hf_weights import open_weights
from pythia.formats.safetensors import SafetensorsFile
from test_safetensors import write_safetensors

FIXTURES = Path(__file__).parent / "fixtures" / "hf_safetensors"

SMOLLM2_135M = {  # HuggingFaceTB/SmolLM2-135M-Instruct's config.json (transformers 4 layout)
    "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0, "bos_token_id": 1,
    "eos_token_id": 2, "hidden_act": "silu", "hidden_size": 576, "initializer_range": 0.041666666666666664,
    "intermediate_size": 1536, "is_llama_config": True, "max_position_embeddings": 8192, "model_type": "llama",
    "num_attention_heads": 9, "num_hidden_layers": 30, "num_key_value_heads": 3, "pretraining_tp": 1,
    "rms_norm_eps": 1e-05, "rope_interleaved": False, "rope_scaling": None, "rope_theta": 100000,
    "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True, "vocab_size": 49152}
QWEN25_05B = {  # Qwen/Qwen2.5-0.5B-Instruct's config.json
    "architectures": ["Qwen2ForCausalLM"], "attention_dropout": 0.0, "bos_token_id": 151643, "eos_token_id": 151645,
    "hidden_act": "silu", "hidden_size": 896, "initializer_range": 0.02, "intermediate_size": 4864,
    "max_position_embeddings": 32768, "max_window_layers": 21, "model_type": "qwen2", "num_attention_heads": 14,
    "num_hidden_layers": 24, "num_key_value_heads": 2, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
    "sliding_window": 32768, "tie_word_embeddings": True, "torch_dtype": "bfloat16", "use_cache": True,
    "use_sliding_window": False, "vocab_size": 151936}


def test_smollm2_config_reads_into_llama_sizes():
    c = parse_hf_config(SMOLLM2_135M)
    assert c.model == {"vocab_size": 49152, "d_model": 576, "n_layer": 30, "n_head": 9, "n_kv_head": 3,
                       "head_dim": 64, "d_ff": 1536, "norm_eps": 1e-5, "rope_theta": 100000.0, "block_size": 8192,
                       "qkv_bias": False, "tie_embeddings": True}
    assert (c.model_type, c.bos_token_id, c.eos_token_ids) == ("llama", 1, [2])


def test_qwen2_config_has_qkv_bias_and_its_unused_window_is_accepted():
    c = parse_hf_config(QWEN25_05B)
    assert c.model["qkv_bias"] and c.model["head_dim"] == 64 and c.model["n_kv_head"] == 2
    assert c.model["rope_theta"] == 1e6 and c.eos_token_ids == [151645]


def test_transformers5_rope_parameters_and_llama_defaults():
    cfg = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
           "num_attention_heads": 4, "vocab_size": 300, "rope_parameters": {"rope_theta": 500.0, "rope_type": "default"},
           "head_dim": 32, "eos_token_id": [2, 7]}
    m = parse_hf_config(cfg)
    assert m.model["rope_theta"] == 500.0 and m.model["n_kv_head"] == 4 and m.model["head_dim"] == 32
    assert m.model["norm_eps"] == 1e-6 and m.model["block_size"] == 2048 and not m.model["tie_embeddings"]
    assert m.eos_token_ids == [2, 7]


def test_config_matches_transformers_live():
    transformers = pytest.importorskip("transformers")
    for raw in (SMOLLM2_135M, QWEN25_05B):
        cls = transformers.LlamaConfig if raw["model_type"] == "llama" else transformers.Qwen2Config
        hf = cls(**{k: v for k, v in raw.items() if k != "model_type"})
        m = parse_hf_config(json.loads(hf.to_json_string())).model
        assert (m["d_model"], m["n_layer"], m["n_head"], m["n_kv_head"], m["d_ff"], m["vocab_size"]) == \
            (hf.hidden_size, hf.num_hidden_layers, hf.num_attention_heads, hf.num_key_value_heads,
             hf.intermediate_size, hf.vocab_size)
        assert m["tie_embeddings"] == hf.tie_word_embeddings and m["norm_eps"] == hf.rms_norm_eps


@pytest.mark.parametrize("change, message", [
    ({"model_type": "gemma"}, "model_type 'gemma' is not supported"),
    ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "rope_scaling type 'llama3'"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling type 'linear'"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e4}}, "rope_scaling type 'yarn'"),
    ({"hidden_act": "gelu"}, "hidden_act 'gelu'"),
    ({"num_local_experts": 8}, "num_local_experts = 8 \\(mixture of experts\\)"),
    ({"mlp_bias": True}, "mlp_bias true"),
    ({"attention_bias": True}, "attention_bias true"),
    ({"num_key_value_heads": 2}, "num_key_value_heads 2 must divide num_attention_heads 9"),
    ({"hidden_size": "576"}, "hidden_size must be a positive integer"),
])
def test_unsupported_llama_options_are_refused_by_name(change, message):
    with pytest.raises(ConfigError, match=message):
        parse_hf_config({**SMOLLM2_135M, **change})


def test_sliding_windows_are_refused():
    with pytest.raises(ConfigError, match="sliding attention window"):
        parse_hf_config({**QWEN25_05B, "use_sliding_window": True})
    with pytest.raises(ConfigError, match="sliding attention window"):
        parse_hf_config({**SMOLLM2_135M, "model_type": "mistral", "sliding_window": 4096})
    assert parse_hf_config({**SMOLLM2_135M, "model_type": "mistral", "sliding_window": None}).model["n_head"] == 9


def test_config_file_missing_or_malformed(tmp_path):
    with pytest.raises(ConfigError, match="config.json not found"):
        read_hf_config(tmp_path)
    (tmp_path / "config.json").write_text("{", "utf-8")
    with pytest.raises(ConfigError, match="not readable JSON"):
        read_hf_config(tmp_path)


# ---- weights ------------------------------------------------------------------------------------
def expected() -> SafetensorsFile:
    return SafetensorsFile(FIXTURES / "expected.safetensors")


def test_bf16_f16_f32_equal_the_safetensors_library(tmp_path):
    shutil.copy(FIXTURES / "mixed.safetensors", tmp_path / "model.safetensors")
    w, e = open_weights(tmp_path), expected()
    assert {w.dtype(k) for k in w.keys()} == {"BF16", "F16", "F32"}
    for k in w.keys():
        got = w.get(k)
        assert got.dtype == np.float32 and got.shape == e.shape(k)
        np.testing.assert_array_equal(got, e.get(k))


def test_sharded_weights_equal_the_safetensors_library():
    w, e = open_weights(FIXTURES / "sharded"), expected()
    assert w.keys() == [f"model.layers.{i}.mlp.up_proj.weight" for i in range(3)]
    assert len(w.files) == 2
    for k in w.keys():
        np.testing.assert_array_equal(w.get(k), e.get("sharded/" + k))


def test_weights_equal_safetensors_live():
    torch_loader = pytest.importorskip("safetensors.torch")
    for path in sorted((FIXTURES / "sharded").glob("*.safetensors")) + [FIXTURES / "mixed.safetensors"]:
        f = SafetensorsFile(path)
        for k, v in torch_loader.load_file(str(path)).items():
            np.testing.assert_array_equal(f.get(k), v.float().numpy())


def test_index_naming_a_missing_shard_is_one_clear_error(tmp_path):
    shutil.copytree(FIXTURES / "sharded", tmp_path / "m")
    (tmp_path / "m" / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(GPT2Error, match="names shard model-00002-of-00002.safetensors, which is missing"):
        open_weights(tmp_path / "m")


def test_index_malformed_or_inconsistent(tmp_path):
    with pytest.raises(GPT2Error, match="neither model.safetensors nor model.safetensors.index.json"):
        open_weights(tmp_path)
    shutil.copytree(FIXTURES / "sharded", tmp_path / "m")
    index = tmp_path / "m" / "model.safetensors.index.json"
    obj = json.loads(index.read_text())
    index.write_text(json.dumps({"metadata": {}}))
    with pytest.raises(GPT2Error, match="weight_map"):
        open_weights(tmp_path / "m")
    obj["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "model-00002-of-00002.safetensors"
    index.write_text(json.dumps(obj))
    with pytest.raises(GPT2Error, match="has no such tensor"):
        open_weights(tmp_path / "m")
    obj["weight_map"]["model.layers.0.mlp.up_proj.weight"] = "../escape.safetensors"
    index.write_text(json.dumps(obj))
    with pytest.raises(GPT2Error, match="not a file name in the folder"):
        open_weights(tmp_path / "m")


def test_reading_bf16_weights_peaks_near_their_float32_size(tmp_path):
    """Every tensor converted from the file as it is asked for: reading all of a BF16 file
    allocates at most 1.2x its float32 size (reading the file into memory first would add 0.5x,
    a float32 temporary per tensor 0.4x here, the largest tensor being 40% of the model)."""
    rng = np.random.default_rng(0)
    sizes = {"embed": (400, 1000), "a": (300, 1000), "b": (200, 1000), "c": (100, 1000)}
    bits = {k: rng.integers(0, 1 << 15, size=s, dtype=np.uint16).astype("<u2") for k, s in sizes.items()}
    write_safetensors(tmp_path / "model.safetensors", {k: ("BF16", v) for k, v in bits.items()})
    fp32_bytes = 4 * sum(v.size for v in bits.values())
    tracemalloc.start()
    try:
        w = open_weights(tmp_path)
        loaded = {k: w.get(k) for k in w.keys()}
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak <= 1.2 * fp32_bytes, f"peak {peak / fp32_bytes:.2f}x the float32 size"
    np.testing.assert_array_equal(loaded["a"].view(np.uint32), bits["a"].astype(np.uint32) << 16)


# ---- a whole folder ------------------------------------------------------------------------------
STATE_DICTS = json.loads((Path(__file__).parent / "fixtures" / "hf_folder" / "state_dicts.json").read_text())


@pytest.mark.parametrize("name", ["llama", "qwen2"])
def test_expected_tensors_equal_what_transformers_saves(name):
    """Names and shapes from config.json alone equal save_pretrained's model.safetensors
    (fixture made by tests/fixtures/make_hf_folder_fixtures.py from transformers' models)."""
    from pythia.formats.hf_folder import expected_tensors
    entry = STATE_DICTS[name]
    got = expected_tensors(parse_hf_config(entry["config"]).model)
    assert {k: list(v) for k, v in got.items()} == entry["shapes"]


def make_folder(tmp_path, name="llama", *, template=None, drop=None, reshape=None) -> Path:
    from pythia.formats.hf_folder import expected_tensors
    from pythia.formats.safetensors import save_safetensors
    entry = STATE_DICTS[name]
    d = tmp_path / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps(entry["config"]))
    shapes = {k: tuple(v) for k, v in expected_tensors(parse_hf_config(entry["config"]).model).items()}
    if reshape:
        shapes[reshape] = tuple(s + 1 for s in shapes[reshape])
    save_safetensors(d / "model.safetensors", {k: np.zeros(s, np.float32) for k, s in shapes.items() if k != drop})
    tok_dir = Path(__file__).parent / "fixtures" / "hf_tokenizers" / ("tinyllama" if name == "llama" else "qwen2")
    shutil.copy(tok_dir / "tokenizer.json", d / "tokenizer.json")
    if template is not None:
        (d / "tokenizer_config.json").write_text(json.dumps(template))
    return d


def test_folder_reads_config_weights_tokenizer_and_stop_ids(tmp_path):
    import sys
    from pythia.formats.hf_folder import check_weights, is_hf_llama_folder, read_hf_folder
    sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
    from hf_templates import QWEN25
    d = make_folder(tmp_path, "qwen2", template={"chat_template": QWEN25, "eos_token": "<|im_end|>",
                                                 "bos_token": None})
    assert is_hf_llama_folder(d) and not is_hf_llama_folder(tmp_path)
    f = read_hf_folder(d)
    check_weights(f.weights, f.config.model)
    t = f.chat_template()
    assert t.format == "chatml" and t.default_system.startswith("You are Qwen")
    assert f.stop_ids(t) == [f.tokenizer.token_id("<|im_end|>")]
    ids = f.tokenizer.encode(t.render([{"role": "user", "content": "Hi"}]))
    assert ids[0] == f.tokenizer.token_id("<|im_start|>")
    with pytest.raises(ConfigError, match="--chat-format"):
        read_hf_folder(make_folder(tmp_path, "llama")).chat_template()


@pytest.mark.parametrize("drop, reshape, message", [
    ("model.layers.1.mlp.up_proj.weight", None, "lack tensor 'model.layers.1.mlp.up_proj.weight'"),
    (None, "model.layers.0.self_attn.k_proj.weight", r"has shape \[17, 49\] but config.json implies \[16, 48\]"),
])
def test_weights_disagreeing_with_config_are_named(tmp_path, drop, reshape, message):
    from pythia.formats.hf_folder import check_weights, read_hf_folder
    f = read_hf_folder(make_folder(tmp_path, "llama", drop=drop, reshape=reshape))
    with pytest.raises(GPT2Error, match=message):
        check_weights(f.weights, f.config.model)


OPEN_PEAK = """
import json, sys
from pythia.formats.source import open_model
def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))
del open_model(sys.argv[1]).model                      # modules imported and tables built: not the load's
before = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")                                       # VmHWM := VmRSS: the peak is the load's own
m = open_model(sys.argv[1])
print(json.dumps({"growth": status("VmHWM") - before, "fp32": m.model.params_memory.nbytes}))
"""


def test_opening_a_bf16_folder_peaks_near_the_float32_model(tmp_path):
    """Opening a BF16 folder grows the process's peak resident memory by the float32 model and
    little more (measured: 1.06x, the second time in a process, so that imports do not count).
    Mapping the file would add its pages (0.5x) and
    converting a whole tensor at a time a float32 temporary of it (0.58x of the model here, the
    embedding being most of it), so the bound 1.15x + 4 MB fails for either."""
    import subprocess
    import sys
    cfg = json.loads((Path(__file__).parent / "fixtures" / "hf_models" / "smollm2" / "config.json").read_text())
    cfg.update(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2, head_dim=64,
               intermediate_size=768, vocab_size=16384)
    from pythia.formats.hf_config import parse_hf_config
    from pythia.formats.hf_folder import expected_tensors
    d = tmp_path / "bf16"
    d.mkdir()
    (d / "config.json").write_text(json.dumps(cfg))
    rng = np.random.default_rng(0)
    shapes = expected_tensors(parse_hf_config(cfg).model)
    write_safetensors(d / "model.safetensors",
                      {k: ("BF16", rng.integers(0x3c00, 0x3d00, size=s, dtype=np.uint16)) for k, s in shapes.items()})
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(Path(__file__).parent / "fixtures" / "hf_models" / "smollm2" / name, d / name)
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux's /proc/self/clear_refs to reset the peak")
    repo = str(Path(__file__).resolve().parent.parent)
    r = subprocess.run([sys.executable, "-c", OPEN_PEAK, str(d)], capture_output=True, text=True, check=True,
                       env={**__import__("os").environ, "PYTHONPATH": repo})
    got = json.loads(r.stdout)
    assert got["growth"] <= 1.15 * got["fp32"] + 4e6, \
        f"peak grew {got['growth'] / 1e6:.1f} MB for a {got['fp32'] / 1e6:.1f} MB float32 model"
