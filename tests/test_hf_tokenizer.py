"""The tokenizer.json reader against the `tokenizers` library: the committed fixtures (made by
tests/fixtures/make_hf_tokenizer_fixtures.py with tokenizers configured as SmolLM2's, Qwen2's and
TinyLlama's are) always, and tokenizers itself on more text when it is importable. Ids and
decoded text must be equal exactly."""
from __future__ import annotations

import json
import random
import unicodedata
from pathlib import Path

import pytest

from pythia.errors import GPT2Error
from pythia.text.hf_pretokenize import translate_regex
from pythia.text.hf_tokenizer import HFTokenizer, load_hf_tokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "hf_tokenizers"
NAMES = ["smollm2", "qwen2", "tinyllama", "llama_metaspace", "variants", "llama_added"]


def cases(name: str) -> list[dict]:
    return json.loads((FIXTURES / name / "cases.json").read_text("utf-8"))


@pytest.mark.parametrize("name", NAMES)
def test_ids_and_decoding_equal_the_tokenizers_library_fixture(name):
    tok = load_hf_tokenizer(FIXTURES / name)
    for c in cases(name):
        assert tok.encode(c["text"]) == c["ids"], c["text"]
        assert tok.encode(c["text"], add_special_tokens=True) == c["ids_special"], c["text"]
        assert tok.decode(c["ids"]) == c["decoded"], c["text"]
        assert tok.decode(c["ids"], skip_special_tokens=True) == c["decoded_skip"], c["text"]


def test_fixtures_exercise_byte_fallback_digits_and_special_tokens():
    """The fixtures would not prove much if these paths were never taken."""
    llama = load_hf_tokenizer(FIXTURES / "tinyllama")
    emoji = next(c for c in cases("tinyllama") if c["text"].startswith("emoji"))
    assert any(3 <= i < 259 for i in emoji["ids"])                       # <0xXX> byte tokens
    qwen = load_hf_tokenizer(FIXTURES / "qwen2")
    digits = next(c for c in cases("qwen2") if c["text"].startswith("numbers"))
    assert [qwen.decode([i]) for i in qwen.encode("4567")] == ["4", "5", "6", "7"]
    assert qwen.token_id("<|im_end|>") in next(c for c in cases("qwen2") if c["text"].startswith("<|im_start|>"))["ids"]
    assert digits["ids"] and llama.encode("x", add_special_tokens=True)[0] == 1   # <s> first


@pytest.mark.parametrize("name", NAMES)
def test_merges_written_as_strings_give_the_same_ids(name):
    """Older tokenizer.json files write merges as "a b"; newer ones as ["a", "b"]."""
    obj = json.loads((FIXTURES / name / "tokenizer.json").read_text("utf-8"))
    assert all(isinstance(m, list) for m in obj["model"]["merges"])
    obj["model"]["merges"] = [" ".join(m) for m in obj["model"]["merges"]]
    tok = HFTokenizer(obj)
    for c in cases(name):
        assert tok.encode(c["text"]) == c["ids"]


def test_regex_unicode_classes_follow_unicodedata():
    """\\p{L} / \\p{N} / \\s in a tokenizer.json regex mean Unicode letters, numbers and White_Space."""
    letters, numbers = translate_regex(r"\p{L}"), translate_regex(r"\p{N}")
    for ch in "aZéßЖ中ﬁ٣½①\u00a0\u1680 _-🙂":
        assert bool(letters.fullmatch(ch)) == unicodedata.category(ch).startswith("L"), ch
        assert bool(numbers.fullmatch(ch)) == unicodedata.category(ch).startswith("N"), ch
    space = translate_regex(r"\s")
    assert space.fullmatch("\u3000") and space.fullmatch("\x85") and not space.fullmatch("\x1c")
    other = translate_regex(r"[^\s\p{L}\p{N}]+")
    assert other.findall("ab, 12!?") == [",", "!?"]


@pytest.mark.parametrize("name", ["L", "N", "Lu", "Nd", "M", "P"])
def test_unicode_classes_built_from_runs_equal_the_code_point_by_code_point_ones(name):
    """A class body built from category runs spells exactly the ranges of the code points whose
    category matches, found one by one over all of Unicode (the independent reference)."""
    import sys
    from pythia.text.bpe import _class_body
    from pythia.text.hf_pretokenize import unicode_class
    points = [cp for cp in range(sys.maxunicode + 1) if unicodedata.category(chr(cp)).startswith(name)]
    assert unicode_class(name) == _class_body(points)


def test_the_unicode_tables_stay_small():
    """Building the category tables keeps under 2 MB alive (all code points as ints: about 45 MB)."""
    import tracemalloc
    from pythia.text import hf_pretokenize as hp
    hp._categories.cache_clear()
    hp.unicode_class.cache_clear()
    tracemalloc.start()
    try:
        hp.unicode_class("L")
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert kept < 2e6, f"{kept / 1e6:.1f} MB kept"


def random_texts(n: int, seed: int = 0) -> list[str]:
    """Texts mixing the fixture texts' pieces with random code points of many scripts."""
    rng = random.Random(seed)
    alphabet = (list("abc XYZ 019 ,.'!?\n\t\r") + ["  ", "'s", "'LL", "<|im_end|>", "<s>", "</s>", "▁"]
                + [chr(rng.randrange(0x20, 0x3000)) for _ in range(60)] + ["🙂", "👍🏽", "e\u0301"])
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 40))) for _ in range(n)]


@pytest.mark.parametrize("name", NAMES)
def test_ids_equal_tokenizers_live_on_random_text(name):
    tokenizers = pytest.importorskip("tokenizers")
    ref = tokenizers.Tokenizer.from_file(str(FIXTURES / name / "tokenizer.json"))
    tok = load_hf_tokenizer(FIXTURES / name / "tokenizer.json")
    for text in random_texts(300):
        want = ref.encode(text, add_special_tokens=False).ids
        assert tok.encode(text) == want, text
        assert tok.decode(want) == ref.decode(want, skip_special_tokens=False), text


# ---- bad input ------------------------------------------------------------------------------------
def test_missing_tokenizer_json_is_one_clear_error(tmp_path):
    with pytest.raises(GPT2Error, match="tokenizer.json not found"):
        load_hf_tokenizer(tmp_path)


def test_malformed_tokenizer_json_is_one_clear_error(tmp_path):
    (tmp_path / "tokenizer.json").write_text('{"model": {"type": "BPE", "vocab": ', "utf-8")
    with pytest.raises(GPT2Error, match="not readable JSON"):
        load_hf_tokenizer(tmp_path)
    (tmp_path / "tokenizer.json").write_text('{"added_tokens": []}', "utf-8")
    with pytest.raises(GPT2Error, match='no "model"'):
        load_hf_tokenizer(tmp_path)


@pytest.mark.parametrize("change, message", [
    (lambda o: o["model"].update(type="Unigram"), "model type 'Unigram'"),
    (lambda o: o.update(pre_tokenizer={"type": "BertPreTokenizer"}), "pre_tokenizer 'BertPreTokenizer'"),
    (lambda o: o.update(normalizer={"type": "BertNormalizer"}), "normalizer 'BertNormalizer'"),
    (lambda o: o.update(decoder={"type": "WordPiece"}), "decoder 'WordPiece'"),
    (lambda o: o["model"].update(merges=[["a"]]), "merge 1"),
    (lambda o: o.update(pre_tokenizer={"type": "Split", "pattern": {"Regex": r"[^\S\n]+"},
                                       "behavior": "Isolated", "invert": False}), r"\\S inside a class"),
])
def test_unsupported_stages_are_refused_by_name(tmp_path, change, message):
    obj = json.loads((FIXTURES / "qwen2" / "tokenizer.json").read_text("utf-8"))
    change(obj)
    (tmp_path / "tokenizer.json").write_text(json.dumps(obj), "utf-8")
    with pytest.raises(GPT2Error, match=message):
        load_hf_tokenizer(tmp_path)


@pytest.mark.parametrize("name", NAMES)
def test_token_bytes_spell_the_decoded_text(name):
    """decode_bytes (token views) gives each token's bytes; joined, they are the decoded text
    (up to the leading space a Llama decoder strips)."""
    tok = load_hf_tokenizer(FIXTURES / name)
    for c in cases(name):
        text = tok.decode_bytes(c["ids"]).decode("utf-8")
        assert text == c["decoded"] or (text.startswith(" ") and text[1:] == c["decoded"]), c["text"]


def test_checkpoint_arrays_round_trip_and_refuse_corruption():
    import numpy as np
    tok = load_hf_tokenizer(FIXTURES / "tinyllama")
    again = HFTokenizer.from_arrays(tok.to_arrays())
    for c in cases("tinyllama"):
        assert again.encode(c["text"]) == c["ids"]
    with pytest.raises(ValueError, match="corrupt"):
        HFTokenizer.from_arrays({"tokenizer_json": np.frombuffer(b'{"model": 1', dtype=np.uint8)})
    with pytest.raises(ValueError, match="corrupt"):
        HFTokenizer.from_arrays({})


def test_special_tokens_can_be_spelled_as_text():
    tok = load_hf_tokenizer(FIXTURES / "qwen2")
    end = tok.token_id("<|im_end|>")
    assert tok.encode("a<|im_end|>") == tok.encode("a") + [end]
    spelled = tok.encode("a<|im_end|>", allow_special=False)
    assert end not in spelled and tok.decode(spelled) == "a<|im_end|>"
