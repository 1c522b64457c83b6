"""Loading Hugging Face GPT-2 weights: Pythia's logits and greedy tokens equal transformers' on the
fixture model (no torch needed), a converted checkpoint behaves identically, the tensor-name and
dtype variants found in the wild load, and every bad directory is a one-line GPT2Error."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from test_safetensors import write_safetensors

from pythia.formats.checkpoint import load_checkpoint
from pythia.errors import GPT2Error
from pythia.formats.gpt2 import convert_gpt2, load_gpt2, read_gpt2_config
from pythia.formats.safetensors import SafetensorsFile

FIXTURE = Path(__file__).parent / "fixtures" / "gpt2"
ATOL = 1e-4  # float32 NumPy vs float32 torch on logits of size ~10


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(FIXTURE / "reference.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


@pytest.fixture(scope="module")
def loaded():
    return load_gpt2(FIXTURE)


def prompts(ref) -> list[int]:
    return sorted(int(k.split("_")[1]) for k in ref if k.startswith("prompt_"))


def test_config_maps_to_pythia_sizes():
    cfg = read_gpt2_config(FIXTURE / "config.json")
    assert (cfg.vocab_size, cfg.block_size, cfg.d_model, cfg.n_layer, cfg.n_head) == (513, 64, 32, 2, 2)


def test_logits_match_transformers_within_atol(loaded, ref):
    model, _ = loaded
    assert len(prompts(ref)) >= 5
    for k in prompts(ref):
        p, want = ref[f"prompt_{k}"], ref[f"logits_{k}"]     # (T,), (T, V)
        got = model.forward(p[None])[0]                       # (T, V)
        np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"prompt {k}")


def test_full_block_prompt_is_covered(ref, loaded):
    model, _ = loaded
    assert max(len(ref[f"prompt_{k}"]) for k in prompts(ref)) == model.config.block_size


@pytest.mark.parametrize("use_cache", [True, False])
def test_greedy_continuations_equal_transformers(loaded, ref, use_cache):
    model, _ = loaded
    checked = 0
    for k in prompts(ref):
        if f"greedy_{k}" not in ref:
            continue
        want = ref[f"greedy_{k}"].tolist()
        got = list(model.generate(ref[f"prompt_{k}"].tolist(), len(want), temperature=0, use_cache=use_cache))
        assert got == want, f"prompt {k}"
        checked += 1
    assert checked >= 5


def test_tokenizer_comes_with_the_model(loaded):
    model, tok = loaded
    assert tok.kind == "gpt2-bpe" and tok.vocab_size == model.config.vocab_size
    ids = tok.encode("The sea is")
    assert tok.decode(ids) == "The sea is"


def test_convert_writes_a_checkpoint_with_identical_logits_and_tokenizer(tmp_path, loaded, ref):
    model, tok = loaded
    out = convert_gpt2(FIXTURE, tmp_path / "gpt2.npz")
    ck = load_checkpoint(out)
    assert ck.tokenizer.kind == "gpt2-bpe" and ck.model.config == model.config
    for name, p in model.params.items():
        np.testing.assert_array_equal(ck.model.params[name], p, err_msg=name)
    p = ref["prompt_0"]
    np.testing.assert_allclose(ck.model.forward(p[None])[0], ref["logits_0"], rtol=0, atol=ATOL)
    text = "I'm 42 — café 😀<|endoftext|>"
    assert ck.tokenizer.encode(text) == tok.encode(text)


def test_convert_refuses_to_replace_an_existing_file(tmp_path):
    out = tmp_path / "gpt2.npz"
    out.write_bytes(b"precious")
    with pytest.raises(GPT2Error, match="already exists"):
        convert_gpt2(FIXTURE, out)
    assert out.read_bytes() == b"precious"
    convert_gpt2(FIXTURE, out, overwrite=True)
    assert load_checkpoint(out).tokenizer.kind == "gpt2-bpe"


# ---------------------------------------------------------------- variants of the weights file

def copy_fixture(dst: Path) -> Path:
    d = dst / "gpt2"
    shutil.copytree(FIXTURE, d)
    return d


def fixture_tensors() -> dict[str, np.ndarray]:
    f = SafetensorsFile(FIXTURE / "model.safetensors")
    return {k: f.get(k) for k in f.keys()}


def rewrite(d: Path, tensors: dict[str, np.ndarray], code: str = "F32") -> None:
    """Replace d/model.safetensors with these tensors, stored as F32, F16 or BF16 (by truncation)."""
    def enc(a):
        if code == "F16":
            return a.astype("<f2")
        if code == "BF16":
            return (a.astype("<f4").view("<u4") >> 16).astype("<u2")
        return a.astype("<f4")
    write_safetensors(d / "model.safetensors", {k: (code, enc(a)) for k, a in tensors.items()})


def test_names_without_prefix_and_a_tied_lm_head_and_mask_buffers_load(tmp_path, ref):
    d = copy_fixture(tmp_path)
    t = {k.removeprefix("transformer."): a for k, a in fixture_tensors().items()}
    t["lm_head.weight"] = t["wte.weight"]
    t["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))   # HF's causal-mask buffer
    t["h.1.attn.masked_bias"] = np.array(-1e4, np.float32)
    rewrite(d, t)
    model, _ = load_gpt2(d)
    np.testing.assert_allclose(model.forward(ref["prompt_1"][None])[0], ref["logits_1"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("code", ["F16", "BF16"])
def test_half_precision_weights_load_as_their_float32_values(tmp_path, loaded, code):
    d = copy_fixture(tmp_path)
    t = fixture_tensors()
    rewrite(d, t, code)
    model, _ = load_gpt2(d)
    full, _ = loaded
    for hf_name, a in t.items():
        name = {"transformer.wte.weight": "wte", "transformer.wpe.weight": "wpe"}.get(
            hf_name, hf_name.removeprefix("transformer."))
        want = a.astype(np.float16).astype(np.float32) if code == "F16" else \
            (a.view(np.uint32) & 0xFFFF0000).view(np.float32)     # bf16 = f32 with the low 16 bits cut
        np.testing.assert_array_equal(model.params[name], want, err_msg=name)
    assert not np.array_equal(model.params["wte"], full.params["wte"])  # really rounded


def _expect_error(d: Path, fragment: str) -> str:
    with pytest.raises(GPT2Error) as e:
        load_gpt2(d)
    msg = str(e.value)
    assert fragment in msg and "\n" not in msg, msg
    return msg


def test_wrong_shape_names_the_tensor(tmp_path):
    d = copy_fixture(tmp_path)
    t = fixture_tensors()
    t["transformer.h.1.mlp.c_fc.weight"] = t["transformer.h.1.mlp.c_fc.weight"].T.copy()  # (4C, C), torch Linear layout
    rewrite(d, t)
    _expect_error(d, "'transformer.h.1.mlp.c_fc.weight' has shape [128, 32]")


def test_missing_tensor_is_named(tmp_path):
    d = copy_fixture(tmp_path)
    t = fixture_tensors()
    del t["transformer.ln_f.bias"]
    rewrite(d, t)
    _expect_error(d, "lacks tensor 'ln_f.bias'")


def test_extra_layer_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    t = fixture_tensors()
    t["transformer.h.2.ln_1.weight"] = np.ones(32, np.float32)
    rewrite(d, t)
    _expect_error(d, "unexpected tensor 'transformer.h.2.ln_1.weight'")


def test_untied_head_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    t = fixture_tensors()
    t["lm_head.weight"] = t["transformer.wte.weight"] + 1
    rewrite(d, t)
    _expect_error(d, "lm_head.weight differs from wte")


def test_non_finite_weights_are_refused(tmp_path):
    d = copy_fixture(tmp_path)
    t = fixture_tensors()
    t["transformer.h.0.ln_2.bias"][3] = np.nan
    rewrite(d, t)
    _expect_error(d, "'h.0.ln_2.bias' holds NaN")


def test_truncated_weights_file_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    raw = (d / "model.safetensors").read_bytes()
    (d / "model.safetensors").write_bytes(raw[: len(raw) // 2])
    _expect_error(d, "truncated or corrupt")


# ---------------------------------------------------------------- bad directories and configs

@pytest.mark.parametrize("missing", ["config.json", "model.safetensors", "vocab.json", "merges.txt"])
def test_missing_file_is_named(tmp_path, missing):
    d = copy_fixture(tmp_path)
    (d / missing).unlink()
    _expect_error(d, f"{missing} not found")


def test_pytorch_only_directory_says_which_file_to_get(tmp_path):
    d = copy_fixture(tmp_path)
    (d / "model.safetensors").rename(d / "pytorch_model.bin")
    _expect_error(d, "has pytorch_model.bin); Pythia reads a single model.safetensors")


def test_missing_directory_is_named(tmp_path):
    _expect_error(tmp_path / "nowhere", "nowhere' not found")


@pytest.mark.parametrize("change,fragment", [
    ({"model_type": "llama"}, "model_type is 'llama'"),
    ({"architectures": ["GPT2ForSequenceClassification"]}, "architectures"),
    ({"activation_function": "gelu"}, "activation_function 'gelu'"),
    ({"layer_norm_epsilon": 1e-6}, "layer_norm_epsilon"),
    ({"scale_attn_by_inverse_layer_idx": True}, "scale_attn_by_inverse_layer_idx"),
    ({"scale_attn_weights": False}, "scale_attn_weights"),
    ({"add_cross_attention": True}, "add_cross_attention"),
    ({"tie_word_embeddings": False}, "tie_word_embeddings"),
    ({"n_inner": 100}, "n_inner=100"),
    ({"n_embd": None}, "lacks 'n_embd'"),
    ({"n_layer": 0}, "n_layer must be a positive integer"),
    ({"n_head": 3}, "divisible by n_head"),
    ({"vocab_size": 100}, "tokenizer has 513 tokens"),
    ({"n_positions": 32}, "'transformer.wpe.weight' has shape [64, 32]"),
])
def test_unsupported_or_inconsistent_config_is_refused(tmp_path, change, fragment):
    d = copy_fixture(tmp_path)
    cfg = json.loads((d / "config.json").read_text())
    for k, v in change.items():
        if v is None:
            cfg.pop(k)
        else:
            cfg[k] = v
    (d / "config.json").write_text(json.dumps(cfg))
    _expect_error(d, fragment)


def test_config_that_is_not_json_is_refused(tmp_path):
    d = copy_fixture(tmp_path)
    (d / "config.json").write_text("{'n_embd': 32")
    _expect_error(d, "config.json is not valid UTF-8 JSON")


def test_logits_match_a_fresh_transformers_model_when_installed(tmp_path):
    """A second, independently shaped random GPT-2 (3 layers, 4 heads) built here with torch."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(vocab_size=513, n_positions=24, n_embd=48, n_layer=3, n_head=4,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, attn_implementation="eager")
    torch.manual_seed(0)
    hf = transformers.GPT2LMHeadModel(cfg).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))                 # move LayerNorm gains/biases off 1/0 too
    d = tmp_path / "g"
    hf.save_pretrained(str(d), safe_serialization=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(FIXTURE / name, d / name)
    model, _ = load_gpt2(d)
    idx = np.random.default_rng(0).integers(0, 513, size=(2, 24))
    with torch.no_grad():
        want = hf(torch.tensor(idx)).logits.numpy()
    np.testing.assert_allclose(model.forward(idx), want, rtol=0, atol=ATOL)
