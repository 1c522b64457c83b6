"""Export to the Hugging Face GPT-2 layout: the safetensors writer's files read back exactly with an
independent parser; export -> convert-gpt2 gives the same weights bit for bit (char and BPE);
Pythia reads its char export's tokenizer.json; transformers and tokenizers, when importable, load
the folder to the same logits (1e-4), greedy tokens and token ids; the folder is written whole or
not at all, and nothing is replaced without force."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pythia.formats.checkpoint import load_checkpoint, save_checkpoint
from pythia.errors import ConfigError, GPT2Error
from pythia.formats.export import export, save_hf
from pythia.formats.gpt2 import convert_gpt2, load_gpt2
from pythia.model import Pythia, PythiaConfig
from pythia.formats.safetensors import save_safetensors
from pythia.tokenizer import SimpleTokenizer

GPT2 = Path(__file__).parent / "fixtures" / "gpt2"
ATOL = 1e-4   # float32 NumPy vs float32 torch logits of size ~10


def fixture_texts() -> list[str]:
    return [r["text"] for r in json.loads((GPT2 / "tokens.json").read_text(encoding="utf-8"))]


@pytest.fixture(scope="module")
def char_model():
    """A char model over every character of the fixture's texts, with logits spread wide enough
    that greedy decoding is decided by clear margins (wte scaled up)."""
    tok = SimpleTokenizer("".join(fixture_texts()))
    model = Pythia(PythiaConfig(vocab_size=tok.vocab_size, block_size=48, d_model=32, n_layer=2, n_head=4), seed=3)
    rng = np.random.default_rng(4)
    for name, p in model.params.items():
        p += rng.standard_normal(p.shape).astype(np.float32) * (0.3 if p.ndim == 1 else 0.05)
    model.params["wte"] *= 20
    return model, tok


@pytest.fixture(scope="module")
def bpe_finetuned(tmp_path_factory):
    """The GPT-2 fixture after three fine-tuning steps on the bundled corpus."""
    from pythia.training.finetune import prepare_finetune
    d = tmp_path_factory.mktemp("ft")
    t = prepare_finetune([GPT2.parent.parent.parent / "data" / "input.txt"], GPT2,
                         train={"steps": 3, "batch_size": 2, "eval_interval": 3, "eval_iters": 1, "lr": 1e-3},
                         out=d / "ft.npz")
    t.run()
    return d / "ft.npz"


def test_safetensors_writer_reads_back_exactly_with_an_independent_parser(tmp_path):
    rng = np.random.default_rng(0)
    tensors = {"b": rng.standard_normal((3, 5)).astype(np.float32), "a": np.arange(7, dtype=np.float32),
               "s": np.array(2.5, np.float32), "e": np.zeros((0, 4), np.float32)}
    save_safetensors(tmp_path / "t.safetensors", tensors, metadata={"format": "pt"})
    raw = (tmp_path / "t.safetensors").read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert (8 + n) % 8 == 0                                     # the data buffer starts aligned
    header = json.loads(raw[8:8 + n])
    assert header.pop("__metadata__") == {"format": "pt"}
    assert list(header) == list(tensors)
    data = raw[8 + n:]
    end = 0
    for name, t in tensors.items():
        e = header[name]
        assert e["dtype"] == "F32" and e["shape"] == list(t.shape) and e["data_offsets"][0] == end
        begin, end = e["data_offsets"]
        np.testing.assert_array_equal(np.frombuffer(data[begin:end], "<f4").reshape(t.shape), t)
    assert end == len(data)


def char_ckpt(tmp_path, char_model) -> Path:
    model, tok = char_model
    save_checkpoint(tmp_path / "char.npz", model, tok, step=4)
    return tmp_path / "char.npz"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_export_then_convert_gives_the_same_weights_bit_for_bit(tmp_path, kind, char_model, bpe_finetuned):
    src = char_ckpt(tmp_path, char_model) if kind == "char" else bpe_finetuned
    export(src, tmp_path / "hf")
    files = sorted(p.name for p in (tmp_path / "hf").iterdir())
    tok_files = ["tokenizer.json", "tokenizer_config.json"] if kind == "char" else \
        ["merges.txt", "tokenizer_config.json", "vocab.json"]
    assert files == sorted(["config.json", "model.safetensors", *tok_files])
    convert_gpt2(tmp_path / "hf", tmp_path / "back.npz")
    a, b = load_checkpoint(src), load_checkpoint(tmp_path / "back.npz")
    assert a.model.config == b.model.config and a.tokenizer.kind == b.tokenizer.kind
    for name, p in a.model.params.items():
        assert p.tobytes() == b.model.params[name].tobytes(), name
    texts = fixture_texts()
    assert [a.tokenizer.encode(t) for t in texts] == [b.tokenizer.encode(t) for t in texts]


def test_config_json_says_gpt2_with_the_models_sizes(tmp_path, char_model):
    export(char_ckpt(tmp_path, char_model), tmp_path / "hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    m = char_model[0].config
    assert cfg["model_type"] == "gpt2" and cfg["activation_function"] == "gelu_new"
    assert (cfg["vocab_size"], cfg["n_positions"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"]) == \
        (m.vocab_size, m.block_size, m.d_model, m.n_layer, m.n_head)
    assert cfg["tie_word_embeddings"] is True and cfg["layer_norm_epsilon"] == 1e-5


def test_a_tokenizer_json_pythia_did_not_write_is_refused(tmp_path, char_model):
    export(char_ckpt(tmp_path, char_model), tmp_path / "hf")
    obj = json.loads((tmp_path / "hf" / "tokenizer.json").read_text(encoding="utf-8"))
    obj["pre_tokenizer"] = {"type": "Whitespace"}
    (tmp_path / "hf" / "tokenizer.json").write_text(json.dumps(obj), encoding="utf-8")
    with pytest.raises(GPT2Error, match="not a character tokenizer"):
        load_gpt2(tmp_path / "hf")


def test_existing_folder_or_file_is_refused_and_kept(tmp_path, char_model):
    src = char_ckpt(tmp_path, char_model)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "mine.txt").write_text("keep")
    (tmp_path / "afile").write_text("keep")
    with pytest.raises(ConfigError, match="not empty"):
        export(src, tmp_path / "full")
    with pytest.raises(ConfigError, match="is a file"):
        export(src, tmp_path / "afile")
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep" and (tmp_path / "afile").read_text() == "keep"
    (tmp_path / "empty").mkdir()
    export(src, tmp_path / "empty")                            # an empty folder is fine
    with pytest.raises(ConfigError, match="'mine.txt', which this command did not write"):
        export(src, tmp_path / "full", force=True)             # --force never deletes what export did not write
    assert (tmp_path / "full" / "mine.txt").read_text() == "keep"
    (tmp_path / "empty" / "config.json").write_text("{}")       # an earlier export, edited
    export(src, tmp_path / "empty", force=True)                # --force replaces an export
    assert json.loads((tmp_path / "empty" / "config.json").read_text())["model_type"] == "gpt2"
    with pytest.raises(ConfigError, match="is a file"):               # --force replaces only a folder
        export(src, tmp_path / "afile", force=True)
    assert (tmp_path / "afile").read_text() == "keep"
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []   # no leftovers


def test_an_interrupted_export_leaves_nothing_that_looks_complete(tmp_path, char_model, monkeypatch):
    import pythia.formats.safetensors as st
    model, tok = char_model

    def broken(path, tensors, metadata=None):
        Path(path).write_bytes(b"half")
        raise KeyboardInterrupt
    monkeypatch.setattr(st, "save_safetensors", broken)
    with pytest.raises(KeyboardInterrupt):
        save_hf(tmp_path / "out", model, tok)
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "config.json").write_text("keep")
    with pytest.raises(KeyboardInterrupt):
        save_hf(tmp_path / "old", model, tok, force=True)
    assert (tmp_path / "old" / "config.json").read_text() == "keep"       # replaced only once complete
    assert sorted(p.name for p in tmp_path.iterdir()) == ["old"]


def test_inference_load_builds_no_gradient_buffer(tmp_path, char_model):
    model, _ = load_gpt2(GPT2)
    assert model._grads is None
    ckpt = load_checkpoint(char_ckpt(tmp_path, char_model), optimizer=False)
    assert ckpt.model._grads is None and ckpt.optimizer_arrays is None


# ---- with transformers / tokenizers -----------------------------------------------------------------

def _hf_logits(folder: Path, ids: list[int]) -> np.ndarray:
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    m = transformers.GPT2LMHeadModel.from_pretrained(str(folder), attn_implementation="eager").eval()
    with torch.no_grad():
        return m(torch.tensor([ids])).logits[0].numpy(), m


def _hf_greedy(m, ids: list[int], n: int) -> list[int]:
    import torch
    with torch.no_grad():
        g = m.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, use_cache=True,
                       pad_token_id=0, eos_token_id=None)
    return g[0, len(ids):].tolist()


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_transformers_loads_the_export_to_the_same_logits_and_greedy_tokens(tmp_path, kind, char_model,
                                                                            bpe_finetuned):
    pytest.importorskip("transformers")
    src = char_ckpt(tmp_path, char_model) if kind == "char" else bpe_finetuned
    export(src, tmp_path / "hf")
    ckpt = load_checkpoint(src)
    model, tok = ckpt.model, ckpt.tokenizer
    checked = 0
    for text in ["The sea is", "Hello world", "café 😀 中文 and more", "line one\nline two"]:
        ids = tok.encode(text)
        want, hf = _hf_logits(tmp_path / "hf", ids)
        np.testing.assert_allclose(model.forward(np.array([ids]))[0], want, rtol=0, atol=ATOL, err_msg=text)
        n = min(16, model.config.block_size - len(ids))
        assert list(model.generate(ids, n, temperature=0)) == _hf_greedy(hf, ids, n), text
        checked += 1
    assert checked == 4


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_hf_tokenizer_loading_the_export_gives_pythias_ids(tmp_path, kind, char_model, bpe_finetuned):
    transformers = pytest.importorskip("transformers")
    src = char_ckpt(tmp_path, char_model) if kind == "char" else bpe_finetuned
    export(src, tmp_path / "hf")
    tok = load_checkpoint(src).tokenizer
    cls = transformers.PreTrainedTokenizerFast if kind == "char" else transformers.GPT2TokenizerFast
    hf = cls.from_pretrained(str(tmp_path / "hf"))
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    texts = fixture_texts()
    assert len(texts) > 200
    for t in texts:
        ids = tok.encode(t)
        assert hf.encode(t) == ids and auto.encode(t) == ids, repr(t)
        assert hf.decode(ids) == tok.decode(ids), repr(t)


def test_tokenizers_library_reads_the_char_tokenizer_json_as_simple_tokenizer(tmp_path, char_model):
    tokenizers = pytest.importorskip("tokenizers")
    export(char_ckpt(tmp_path, char_model), tmp_path / "hf")
    t = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    _, tok = char_model
    for text in fixture_texts():
        ids = tok.encode(text)
        assert t.encode(text).ids == ids and t.decode(ids) == text, repr(text)


def test_the_exported_char_tokenizer_drops_what_the_vocabulary_lacks_as_pythia_does(tmp_path):
    # the one rule for unknown characters: dropped. Pythia's filter (which its commands apply,
    # with a notice) and the exported tokenizer.json in tokenizers and transformers give the same ids
    tokenizers = pytest.importorskip("tokenizers")
    tok = SimpleTokenizer("Hi there.")
    model = Pythia(PythiaConfig(vocab_size=tok.vocab_size, block_size=8, d_model=16, n_layer=1, n_head=2), seed=1)
    save_checkpoint(tmp_path / "m.npz", model, tok, step=1)
    export(tmp_path / "m.npz", tmp_path / "hf")
    t = tokenizers.Tokenizer.from_file(str(tmp_path / "hf" / "tokenizer.json"))
    for text in ["Hi Zoë, there.", "ZZZ", "Hi\x00 😀 there"]:
        kept, dropped = tok.filter(text)
        assert dropped and t.encode(text).ids == tok.encode(kept), repr(text)
    transformers = pytest.importorskip("transformers")
    auto = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    assert auto("Hi Zoë, there.").input_ids == tok.encode("Hi  there.") and auto("ZZZ").input_ids == []


@pytest.mark.parametrize("block", [8, 32])
def test_the_documented_transformers_snippet_runs_on_a_short_context(tmp_path, block):
    # the Python snippet of docs/finetune-and-export.md, run as written on exports whose context
    # (8 or 32 positions) is shorter than "The sea" plus 40 new tokens: the prompt keeps its last
    # context - new tokens and the reply has new = min(40, context // 2), so every id has a position
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    doc = (Path(__file__).resolve().parent.parent / "docs" / "finetune-and-export.md").read_text(encoding="utf-8")
    code = re.search(r"```python\n(from transformers.*?)```", doc, re.S).group(1)
    tok = SimpleTokenizer("The sea is old.")
    model = Pythia(PythiaConfig(vocab_size=tok.vocab_size, block_size=block, d_model=16, n_layer=1, n_head=2), seed=1)
    save_checkpoint(tmp_path / "m.npz", model, tok, step=1)
    export(tmp_path / "m.npz", tmp_path / "hf")
    r = subprocess.run([sys.executable, "-c", code.replace("./notes-hf", str(tmp_path / "hf"))],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    new = min(40, block // 2)
    text = r.stdout.rstrip("\n")
    prompt = "The sea"[-(block - new):]
    assert text.startswith(prompt) and len(text) == len(prompt) + new, text
