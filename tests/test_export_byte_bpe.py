"""Export of a model whose tokenizer is the byte-level BPE trained by `prepare --tokenizer bpe`.

A user's flow through the command line (`pythia.cli.main`, in-process): prepare a varied corpus (scripts, emoji, whitespace
runs, digits, contractions, `<|endoftext|>`) with a trained BPE, train on the folder, export.
Proven here: vocab.json spells every id's bytes through GPT-2's byte-to-unicode table (written out
independently below); Pythia's GPT-2 loader (pythia.text.bpe, as `chat --gpt2` and `convert-gpt2` read
an export, and its compiled twin in pythia.text.bpe_fast) encodes a varied text set to the trained
BPE's ids and decodes back exactly; export -> convert-gpt2 gives the same weights bit for bit and
the loaded export the same logits; two ids with the same bytes are refused with one error line.
Against Hugging Face: the ids that transformers' GPT2TokenizerFast gave a committed trained BPE
(tests/fixtures/byte_bpe, made by tests/fixtures/make_byte_bpe_fixtures.py) are checked without
transformers; when transformers is importable, it loads the exported folder to the same ids and
logits within 1e-4.
"""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from pythia.formats.checkpoint import load_checkpoint, save_checkpoint
from pythia.formats.export import save_hf
from pythia.formats.gpt2 import load_gpt2
from pythia.model import Pythia, PythiaConfig
from pythia.text import bpe_fast
from pythia.text.bpe import GPT2Tokenizer
from pythia.text.bpe_train import ByteBPETokenizer
from helpers import assert_ok, assert_one_line_error, run_cli as run

FIXTURES = Path(__file__).resolve().parent / "fixtures"
ATOL = 1e-4   # float32 NumPy vs float32 torch logits of size ~10
EOT = "<|endoftext|>"
MODEL = ["--steps", "30", "--d-model", "32", "--n-layer", "2", "--n-head", "4", "--block-size", "32",
         "--batch-size", "4", "--eval-interval", "30", "--eval-iters", "1", "--lr", "3e-3"]


def gpt2_byte_table() -> dict[int, str]:
    """GPT-2's bytes_to_unicode as GPT-2's encoder.py defines it: printable bytes ! .. ~, ¡ .. ¬, ® .. ÿ
    stand for themselves, the other 68 bytes for chr(256), chr(257), ... in byte order."""
    keep = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    rest = [b for b in range(256) if b not in keep]
    return {**{b: chr(b) for b in keep}, **{b: chr(256 + k) for k, b in enumerate(rest)}}


def varied_texts() -> list[str]:
    """The GPT-2 fixture's texts (scripts, emoji, controls, runs of one symbol, long words, random
    mixtures) and random strings over an alphabet that stresses the pre-tokenizer."""
    texts = [r["text"] for r in json.loads((FIXTURES / "gpt2" / "tokens.json").read_text(encoding="utf-8"))]
    rnd = random.Random(5)
    alphabet = "the sea  is\n\t\t 0123 '’s'll'RE é日本🙂👍🏽\u00a0\u3000.,;-<|>endoftext"
    texts += ["".join(rnd.choice(alphabet) for _ in range(rnd.randint(1, 120))) for _ in range(300)]
    return texts + [" ".join(texts[:40]), "aaaa " * 30 + "a" * 200, EOT.join(texts[40:60])]


CORPUS = ("The sea is large and old, and the wind moves over it all day long. It's 1234 miles; "
          "we'll see 56789 waves.\n" * 40 + "Καλημέρα κόσμε, привет мир, 日本語のテキスト、한국어 🙂👍🏽🇫🇷 "
          "café naïve ½ ٣٤\n" * 20 + "   lots   of    spaces\n\n\n\t\ttabs\t end  \n" * 20 +
          "I'm sure you're right; they've gone, he'd know, don't.\n" * 20)


@pytest.fixture(scope="module")
def flow(tmp_path_factory) -> Path:
    """prepare (trained BPE, two files joined by <|endoftext|>) -> train on the folder -> export."""
    d = tmp_path_factory.mktemp("bbpe")
    (d / "a.txt").write_text(CORPUS, encoding="utf-8")
    (d / "b.txt").write_text(CORPUS.upper() + "\nliteral <|endoftext|> in the text\n", encoding="utf-8")
    assert_ok(run(["prepare", "--data", "a.txt", "b.txt", "--out", "c.tok", "--tokenizer", "bpe",
                   "--vocab-size", "400"], d))
    assert_ok(run(["train", *MODEL, "--data", "c.tok", "--out", "m.npz"], d))
    r = run(["export", "m.npz", "--out", "hf"], d)
    assert_ok(r)
    assert "wrote hf" in r.stdout
    return d


def test_the_trained_model_exports_as_vocab_json_and_merges_txt(flow):
    files = sorted(p.name for p in (flow / "hf").iterdir())
    assert files == ["config.json", "merges.txt", "model.safetensors", "tokenizer_config.json", "vocab.json"]
    tok = load_checkpoint(flow / "m.npz").tokenizer
    assert tok.kind == "byte-bpe" and tok.vocab_size == 400
    vocab = json.loads((flow / "hf" / "vocab.json").read_text(encoding="utf-8"))
    table = gpt2_byte_table()
    assert vocab == {"".join(table[b] for b in tok.token_bytes(i)) if i != tok.eot_id else EOT: i
                     for i in range(tok.vocab_size)}
    assert all(vocab[table[b]] == b for b in range(256)) and vocab[EOT] == 399
    lines = (flow / "hf" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0].startswith("#version") and len(lines) == 1 + len(tok.merges) == 1 + 399 - 256
    inverse = {s: i for s, i in vocab.items()}
    for k, line in enumerate(lines[1:]):
        left, right = line.split(" ")
        assert (inverse[left], inverse[right]) == tok.merges[k] and vocab[left + right] == 256 + k
    cfg = json.loads((flow / "hf" / "config.json").read_text())
    special = json.loads((flow / "hf" / "tokenizer_config.json").read_text())
    assert cfg["vocab_size"] == 400 and cfg["eos_token_id"] == cfg["bos_token_id"] == 399
    assert special["eos_token"] == special["bos_token"] == EOT


def test_pythias_gpt2_loader_encodes_the_export_as_the_trained_bpe(flow):
    tok = load_checkpoint(flow / "m.npz").tokenizer
    gpt2 = GPT2Tokenizer.from_dir(flow / "hf")
    fast = bpe_fast.encoder_for(gpt2)           # what `prepare --gpt2 DIR` encodes with
    texts = varied_texts()
    merged = 0
    for t in texts:
        ids = tok.encode(t)
        assert gpt2.encode(t) == ids and fast.encode(t) == ids, repr(t)
        assert gpt2.decode(ids) == t == tok.decode(ids), repr(t)
        merged += any(256 <= i < tok.eot_id for i in ids)
    assert merged > len(texts) // 2       # the merges were exercised, not only the byte tokens


def test_export_then_convert_gpt2_gives_the_same_weights_bit_for_bit(flow):
    assert_ok(run(["convert-gpt2", "hf", "--out", "back.npz"], flow))
    a, b = load_checkpoint(flow / "m.npz"), load_checkpoint(flow / "back.npz")
    assert a.model.config == b.model.config and b.tokenizer.kind == "gpt2-bpe"
    assert sorted(a.model.params) == sorted(b.model.params)
    for name, p in a.model.params.items():
        assert p.tobytes() == b.model.params[name].tobytes(), name
    texts = varied_texts()[:120]
    assert [a.tokenizer.encode(t) for t in texts] == [b.tokenizer.encode(t) for t in texts]


def test_the_export_loaded_by_pythia_gives_the_same_logits_and_greedy_tokens(flow):
    ckpt = load_checkpoint(flow / "m.npz")
    model, tok = load_gpt2(flow / "hf")
    ids = tok.encode("The sea is 🙂 old")
    assert ids == ckpt.tokenizer.encode("The sea is 🙂 old")
    x = np.array([ids])
    assert model.forward(x).tobytes() == ckpt.model.forward(x).tobytes()
    assert list(model.generate(ids, 8, temperature=0)) == list(ckpt.model.generate(ids, 8, temperature=0))


def test_hugging_faces_ids_for_a_trained_bpe_are_pythias(tmp_path):
    """Without transformers: the committed ids GPT2TokenizerFast gave (make_byte_bpe_fixtures.py)."""
    fx = json.loads((FIXTURES / "byte_bpe" / "tokens.json").read_text(encoding="utf-8"))
    tok = ByteBPETokenizer(fx["merges"])
    assert tok.vocab_size == fx["vocab_size"]
    model = Pythia(PythiaConfig(vocab_size=tok.vocab_size, block_size=16, d_model=8, n_layer=1, n_head=2), seed=0)
    gpt2 = GPT2Tokenizer.from_dir(save_hf(tmp_path / "hf", model, tok))
    assert len(fx["records"]) > 200
    for r in fx["records"]:
        assert tok.encode(r["text"]) == r["ids"] == gpt2.encode(r["text"]), repr(r["text"])


def test_two_ids_with_the_same_bytes_are_refused_naming_the_token(tmp_path):
    # merges: 256 = "ab", 257 = "ab"+"c", 258 = "bc", 259 = "a"+"bc": ids 257 and 259 both spell "abc"
    a, b, c = map(ord, "abc")
    tok = ByteBPETokenizer([(a, b), (256, c), (b, c), (a, 258)])
    assert tok.token_bytes(257) == tok.token_bytes(259) == b"abc"
    model = Pythia(PythiaConfig(vocab_size=tok.vocab_size, block_size=8, d_model=8, n_layer=1, n_head=2), seed=0)
    save_checkpoint(tmp_path / "dup.npz", model, tok, step=0)
    r = run(["export", "dup.npz", "--out", "hf"], tmp_path)
    assert_one_line_error(r, "ids 257 and 259 are the same token 'abc'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dup.npz"]     # no folder, no leftovers


# ---- with transformers / tokenizers -----------------------------------------------------------------

def test_gpt2_tokenizer_fast_loading_the_export_gives_the_trained_bpes_ids(flow):
    transformers = pytest.importorskip("transformers")
    tok = load_checkpoint(flow / "m.npz").tokenizer
    hf = transformers.GPT2TokenizerFast.from_pretrained(str(flow / "hf"))
    auto = transformers.AutoTokenizer.from_pretrained(str(flow / "hf"))
    for t in varied_texts():
        ids = tok.encode(t)
        assert hf.encode(t) == ids and auto.encode(t) == ids, repr(t)
        assert hf.decode(ids) == t, repr(t)


def test_gpt2_lm_head_model_loading_the_export_gives_pythias_logits(flow):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ckpt = load_checkpoint(flow / "m.npz")
    hf = transformers.GPT2LMHeadModel.from_pretrained(str(flow / "hf"), attn_implementation="eager").eval()
    checked = 0
    for text in ["The sea is large", "Καλημέρα 🙂 1234", "   lots   of\n\n\ttabs", "we'll see<|endoftext|>I'M"]:
        ids = ckpt.tokenizer.encode(text)
        with torch.no_grad():
            want = hf(torch.tensor([ids])).logits[0].numpy()
        np.testing.assert_allclose(ckpt.model.forward(np.array([ids]))[0], want, rtol=0, atol=ATOL, err_msg=text)
        checked += 1
    assert checked == 4
