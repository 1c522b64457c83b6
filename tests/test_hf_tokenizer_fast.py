"""The compiled merge step of the tokenizer.json BPE (pythia._hf_bpe, backend "cython") against
the pure-Python one it twins (backend "python", the specification), on the committed fixtures
(whose ids the `tokenizers` library gave) and on a varied text; ids must be equal exactly.

The backends are chosen explicitly, so the file proves the same under PYTHIA_KERNELS=numpy and
without it; one test checks that the variable picks the default."""
from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pythia.text import hf_bpe_fast
from pythia.text.hf_tokenizer import HFTokenizer, load_hf_tokenizer

pytestmark = pytest.mark.skipif(hf_bpe_fast._hf_bpe is None, reason="pythia._hf_bpe is not built")

FIXTURES = Path(__file__).parent / "fixtures" / "hf_tokenizers"
NAMES = ["smollm2", "qwen2", "tinyllama", "llama_metaspace", "variants", "llama_added"]


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "tokenizer.json").read_text("utf-8"))


def both(obj: dict) -> tuple[HFTokenizer, HFTokenizer]:
    ref, fast = HFTokenizer(obj, backend="python"), HFTokenizer(obj, backend="cython")
    assert (ref.backend, fast.backend) == ("python", "cython")
    return ref, fast


def varied_text(specials: list[str], seed: int = 0, n: int = 3000) -> str:
    """~100 KB mixing prose, many scripts, emoji (ZWJ and skin tones), digit runs, whitespace
    runs (tabs, newlines, NBSP, ideographic space), "▁", the tokenizer's added tokens, and
    runs of hundreds of characters with no space (the long-word and heap paths)."""
    rng = random.Random(seed)
    pieces = (["the ", "The quick brown fox ", "jumps over the lazy dog. ", "I'm ", "they'LL ", "don't "]
              + ["Ünïcödé ", "naïve café ", "Straße ", "Ελληνικά ", "Русский текст ", "中文字符 ", "日本語の",
                 "한국어 ", "العربية ", "עברית ", "हिन्दी ", "ไทย ", "e\u0301 "]
              + ["🙂", "👍🏽", "👩\u200d👩\u200d👧", "🇺🇳", "🧪🧬 "]
              + ["0", "42", "3.14159", "1,000,000", "２０２４", "٣٤٥", " 12345678901234567890 "]
              + ["  ", "   ", "\t", "\n", "\n\n", "\r\n", " \t \n ", "\u00a0", "\u3000", "\u2581", "\u2581\u2581"]
              + specials)
    out = []
    for _ in range(n):
        k = rng.random()
        if k < 0.9:
            out.append(rng.choice(pieces))
        elif k < 0.97:
            out.append(chr(rng.choice([rng.randrange(0x20, 0x2FFF), rng.randrange(0x1F300, 0x1FAFF)])))
        else:   # a long run without spaces: more than 32 symbols, sometimes more than 256 characters
            out.append("".join(rng.choice("abcdefghij0123é中🙂\u2581") for _ in range(rng.randrange(33, 700))))
    return "".join(out)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_ids_equal_the_reference_and_the_fixture_cases(name):
    ref, fast = both(fixture(name))
    for c in json.loads((FIXTURES / name / "cases.json").read_text("utf-8")):
        assert fast.encode(c["text"]) == ref.encode(c["text"]) == c["ids"], c["text"]
        assert fast.encode(c["text"], add_special_tokens=True) == c["ids_special"], c["text"]
        assert fast.encode(c["text"], allow_special=False) == ref.encode(c["text"], allow_special=False)


@pytest.mark.parametrize("name", NAMES)
def test_compiled_ids_equal_the_reference_on_varied_text(name):
    obj = fixture(name)
    ref, fast = both(obj)
    text = varied_text([t["content"] for t in obj["added_tokens"]])
    want = ref.encode(text)
    assert fast.encode(text) == want
    assert fast.encode(text) == want                   # again, every word now from the cache
    for line in text.splitlines()[:300]:               # short texts: at_start, Prepend, cache hits
        assert fast.encode(line, add_special_tokens=True) == ref.encode(line, add_special_tokens=True), line


@pytest.mark.parametrize("change", [
    pytest.param(lambda m: m.update(byte_fallback=False), id="unk-fused"),
    pytest.param(lambda m: m.update(byte_fallback=False, fuse_unk=False), id="unk-per-character"),
    pytest.param(lambda m: m.update(byte_fallback=False, unk_token=None), id="unknown-dropped"),
    pytest.param(lambda m: m.update(unk_token="<not-a-token>"), id="unk-not-in-vocab"),
    pytest.param(lambda m: m.update(ignore_merges=True), id="ignore-merges"),
    pytest.param(lambda m: [m["vocab"].pop(f"<0x{b:02X}>", None) for b in range(0x80, 0xC0)], id="bytes-missing"),
    pytest.param(lambda m: m.update(merges=m["merges"][::-1]), id="ranks-reversed"),
    pytest.param(lambda m: m.update(merges=m["merges"] + m["merges"][:50] + [["zz", "qq"]]),
                 id="repeated-and-non-token-merges"),
])
@pytest.mark.parametrize("name", ["tinyllama", "smollm2"])
def test_compiled_ids_equal_the_reference_for_each_model_option(name, change):
    """unk / fuse_unk / byte fallback / ignore_merges / rank order: paths the fixtures never take."""
    obj = fixture(name)
    change(obj["model"])
    ref, fast = both(obj)
    text = varied_text([t["content"] for t in obj["added_tokens"]], seed=1, n=1500)
    assert fast.encode(text) == ref.encode(text)


def test_long_words_merge_alike_through_the_heap_and_the_rescan():
    """Words of 1..600 symbols (both steps switch from a rescan to a heap above 32) give the
    reference's ids: uncut against both Python merges, and cut at "▁" as long words are."""
    ref, fast = both(fixture("tinyllama"))
    uncut = hf_bpe_fast.merger_for(ref.vocab, ref.ranks, byte_fallback=True, unk_token="<unk>", fuse_unk=True,
                                   ignore_merges=False, boundary=None, cache_limit=10, cache_word=10_000)
    rng = random.Random(2)
    syllables = ["the", "\u2581", "\u2581\u2581", "qu", "ick", "brown", "ing", "er", "on", "a", "e", "s", "t", "in"]
    syllables = [w for w in syllables if all(ch in ref.vocab for ch in w)]
    for n in list(range(1, 70)) + [255, 256, 257, 600]:
        word = "".join(rng.choice(syllables) for _ in range(n))[:n]
        heap = [ref.vocab[t] for t in ref._merge(list(word))]
        rescan = [ref.vocab[t] for t in ref._merge_short(list(word))]
        assert uncut.word(word) == heap == rescan, word
        assert fast._fast.word(word) == ref._word(word), word

def test_a_small_word_cache_changes_no_id():
    obj = fixture("smollm2")
    ref = HFTokenizer(obj, backend="python")
    merger = hf_bpe_fast.merger_for(ref.vocab, ref.ranks, byte_fallback=False, unk_token=None, fuse_unk=False,
                                    ignore_merges=False, boundary=None, cache_limit=3, cache_word=4)
    words = ref.pre_tokenize([(varied_text([], seed=3, n=400), True)])
    out: list[int] = []
    merger.extend(words, out)
    assert out == [i for w, _ in words for i in ref._spell(w)]


def test_tables_the_compiled_step_cannot_follow_keep_the_reference():
    """A merge whose join is not a token would make a symbol with no id: the reference runs."""
    obj = fixture("smollm2")
    a, b = obj["model"]["merges"][0]
    del obj["model"]["vocab"][a + b]
    assert HFTokenizer(obj, backend="cython").backend == "python"
    obj = fixture("smollm2")
    first = next(iter(obj["model"]["vocab"]))
    obj["model"]["vocab"]["\u2603"] = obj["model"]["vocab"][first]    # two tokens, one id
    assert HFTokenizer(obj, backend="cython").backend == "python"
    obj = fixture("smollm2")
    obj["model"]["vocab"]["\u2603"] = 2**31                           # past int32
    assert HFTokenizer(obj, backend="cython").backend == "python"


def test_a_lone_surrogate_is_refused_alike():
    ref, fast = both(fixture("tinyllama"))
    with pytest.raises(UnicodeEncodeError):
        ref.encode("a\ud800b")
    with pytest.raises(UnicodeEncodeError):
        fast.encode("a\ud800b")
    ref, fast = both(fixture("smollm2"))                # ByteLevel writes surrogates' bytes as text
    assert fast.encode("a\ud800b") == ref.encode("a\ud800b")


def test_backend_names_and_tables_are_checked():
    with pytest.raises(ValueError, match="unknown tokenizer backend 'fast'"):
        load_hf_tokenizer(FIXTURES / "qwen2", backend="fast")
    with pytest.raises(ValueError, match="byte_ids must have 256 entries"):
        hf_bpe_fast._hf_bpe.WordMerger({}, True, np.zeros(3, np.int32), np.zeros((0, 3), np.int32), -1, False,
                                       None, None)
    with pytest.raises(ValueError, match=r"merges must be \(M, 3\)"):
        hf_bpe_fast._hf_bpe.WordMerger({}, True, np.zeros(256, np.int32), np.zeros((1, 2), np.int32), -1, False,
                                       None, None)
    with pytest.raises(ValueError, match=r"token ids in \[0, 2\*\*31\)"):
        hf_bpe_fast._hf_bpe.WordMerger({97: 0}, True, np.zeros(256, np.int32), np.array([[0, 0, -5]], np.int32),
                                       -1, False, None, None)
    with pytest.raises(ValueError, match="token ids or -1"):
        hf_bpe_fast._hf_bpe.WordMerger({}, True, np.full(256, -2, np.int32), np.zeros((0, 3), np.int32), -1,
                                       False, None, None)


@pytest.mark.parametrize("env, want", [("numpy", "python"), ("", "cython")])
def test_pythia_kernels_numpy_selects_the_reference_by_default(env, want):
    code = ("from pythia.text.hf_tokenizer import load_hf_tokenizer; import sys; "
            f"print(load_hf_tokenizer(sys.argv[1]).backend)")
    root = Path(__file__).resolve().parents[1]
    environ = {**os.environ, "PYTHIA_KERNELS": env,
               "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, str(FIXTURES / "smollm2")], capture_output=True, text=True,
                         env=environ, cwd=root, check=True)
    assert out.stdout.strip() == want


@pytest.mark.parametrize("name", NAMES)
def test_compiled_ids_equal_tokenizers_live_on_varied_text(name):
    tokenizers = pytest.importorskip("tokenizers")
    lib = tokenizers.Tokenizer.from_file(str(FIXTURES / name / "tokenizer.json"))
    fast = load_hf_tokenizer(FIXTURES / name, backend="cython")
    text = varied_text([t["content"] for t in fixture(name)["added_tokens"]], seed=4, n=1500)
    assert fast.encode(text) == lib.encode(text, add_special_tokens=False).ids
    for line in text.splitlines()[:200]:
        assert fast.encode(line, add_special_tokens=True) == lib.encode(line).ids, line
