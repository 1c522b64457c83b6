"""The compiled pre-tokenizer scanners (kernels/_pretokenize.pxi, run by
WordMerger.extend_text) against the Python stages they twin (pythia.text.hf_pretokenize: the
file's regex translated for `re`, then ByteLevel's map): ids must be equal exactly, on text dense
in the regexes' edge cases. Which tokenizer.json set-ups take the scanners is split_plan's
table; anything else keeps the Python stages."""
from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from pythia.text import hf_bpe_fast
from pythia.text.bpe_fast import class_table
from pythia.text.hf_split_fast import QWEN2_PATTERN, SPLIT_GPT2, SPLIT_QWEN2, byte_chars, split_plan
from pythia.text.hf_tokenizer import HFTokenizer

FIXTURES = Path(__file__).parent / "fixtures" / "hf_tokenizers"
compiled = pytest.mark.skipif(hf_bpe_fast._hf_bpe is None, reason="pythia._hf_bpe is not built")

# contractions in every case (and U+017F, which folds to "s" in Qwen2's (?i:...)), newline and
# whitespace mixes, digits of several scripts, letters after punctuation, surrogate-free symbols
ALPHABET = (list("aZsStTrReEvVlLdDmMx'  \n\r\t0123.,!?-_") +
            ["\u017f", "\u212a", "\u00a0", "\u3000", "\u2028", "\u0085", "é", "ß", "中", "😀", "\u2581",
             "\u0661", "\u00b2", "\u2167", "\u0301", "'s", "'LL", "'Re", " \n", "\r\n", "  a"])


def fixture(name: str) -> dict:
    return json.loads((FIXTURES / name / "tokenizer.json").read_text("utf-8"))


def dense_text(rng: random.Random, n: int) -> str:
    return "".join(rng.choice(ALPHABET) for _ in range(n))


@pytest.mark.parametrize("name, plan", [("smollm2", (SPLIT_GPT2, True)), ("qwen2", (SPLIT_QWEN2, False)),
                                        ("tinyllama", None)])
def test_the_fixtures_pre_tokenizers_take_the_plan_they_are(name, plan):
    assert split_plan(fixture(name)["pre_tokenizer"]) == plan


GPT2_BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
QWEN_SPLIT = {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False}
QWEN_BL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}


@pytest.mark.parametrize("spec", [
    None, {"type": "Metaspace"}, {**GPT2_BL, "add_prefix_space": True}, {**GPT2_BL, "use_regex": False},
    {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": False}, GPT2_BL]},
    {"type": "Sequence", "pretokenizers": [{**QWEN_SPLIT, "behavior": "Removed"}, QWEN_BL]},
    {"type": "Sequence", "pretokenizers": [{**QWEN_SPLIT, "invert": True}, QWEN_BL]},
    {"type": "Sequence", "pretokenizers": [{**QWEN_SPLIT, "pattern": {"Regex": r"\p{N}{1,3}"}}, QWEN_BL]},
    {"type": "Sequence", "pretokenizers": [QWEN_SPLIT, GPT2_BL]},            # the regex twice: not Qwen2's
    {"type": "Sequence", "pretokenizers": [GPT2_BL]},
])
def test_other_set_ups_keep_the_python_stages(spec):
    assert split_plan(spec) is None


@compiled
@pytest.mark.parametrize("name", ["smollm2", "qwen2"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scanner_ids_equal_the_python_stages_on_edge_case_text(name, seed):
    obj = fixture(name)
    fast, ref = HFTokenizer(obj, backend="cython"), HFTokenizer(obj, backend="python")
    assert fast._split is not None and ref._split is None
    rng = random.Random(seed)
    for _ in range(1500):
        text = dense_text(rng, rng.randint(1, 24))
        assert fast.encode(text) == ref.encode(text), repr(text)
    long = dense_text(rng, 20_000)                  # one piece: the word cache and digit look-ahead
    assert fast.encode(long) == ref.encode(long)


@compiled
def test_extend_text_splits_as_the_translated_regex_on_a_one_token_per_byte_vocabulary():
    """With no merges every byte is a token, so the ids spell the words: the scanner's word ends
    are the regex's, byte for byte (here for Qwen2's pattern, the one with newline rules)."""
    obj = fixture("qwen2")
    obj = {**obj, "model": {**obj["model"], "merges": []}}
    fast, ref = HFTokenizer(obj, backend="cython"), HFTokenizer(obj, backend="python")
    rng = random.Random(5)
    for _ in range(500):
        text = dense_text(rng, rng.randint(1, 16))
        assert fast.encode(text) == ref.encode(text), repr(text)


@compiled
def test_extend_text_checks_its_tables_before_reading_them():
    tok = HFTokenizer(fixture("smollm2"), backend="cython")
    table, chars, out = class_table(), byte_chars(), []
    with pytest.raises(ValueError, match="pattern must be"):
        tok._fast.extend_text("a b", 3, False, table, chars, out)
    with pytest.raises(ValueError, match="digits applies"):
        tok._fast.extend_text("a b", SPLIT_QWEN2, True, table, chars, out)
    with pytest.raises(ValueError, match="0x110000 code points"):
        tok._fast.extend_text("a b", SPLIT_GPT2, False, table[:256], chars, out)
    with pytest.raises(ValueError, match="256 entries"):
        tok._fast.extend_text("a b", SPLIT_GPT2, False, table, chars[:255], out)
    bad = table.copy()
    bad[97] = 9
    with pytest.raises(ValueError, match="classes 0-3"):
        tok._fast.extend_text("a b", SPLIT_GPT2, False, bad, chars, out)
    wild = chars.copy()
    wild[0] = -5
    with pytest.raises(ValueError, match="below 0x110000"):
        tok._fast.extend_text("a b", SPLIT_GPT2, False, table, wild, out)
    assert out == []
    tok._fast.extend_text("a b", SPLIT_GPT2, False, table, chars, out)
    assert out == HFTokenizer(fixture("smollm2"), backend="python").encode("a b")


def test_byte_chars_is_bytelevels_map():
    from pythia.text.bpe import bytes_to_unicode
    chars = byte_chars()
    assert chars.dtype == np.int32 and chars.shape == (256,)
    assert "".join(map(chr, chars)) == "".join(bytes_to_unicode()[b] for b in range(256))
