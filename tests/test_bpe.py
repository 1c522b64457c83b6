"""GPT-2 byte-level BPE: ids equal to Hugging Face's tokenizer on a varied text set (fixture),
exact round trips on random Unicode, pre-tokenization equal to GPT-2's `regex` pattern (when the
regex package is installed), checkpoint arrays without pickle, and clear errors on bad files."""
from __future__ import annotations

import io
import json
import random
import sys
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from pythia.text.bpe import EOT, GPT2Tokenizer, bytes_to_unicode, pretokenize
from pythia.errors import CheckpointError, GPT2Error

FIXTURE = Path(__file__).parent / "fixtures" / "gpt2"
GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


@pytest.fixture(scope="module")
def tok() -> GPT2Tokenizer:
    return GPT2Tokenizer.from_dir(FIXTURE)


@pytest.fixture(scope="module")
def cases() -> list[dict]:
    return json.loads((FIXTURE / "tokens.json").read_text(encoding="utf-8"))


def random_unicode(rng: random.Random, n: int, assigned_only: bool = False) -> str:
    """n code points from all planes (no surrogates), biased towards ASCII whitespace and letters.
    assigned_only keeps code points this Python's unicodedata knows (other Unicode versions may
    classify later additions differently)."""
    out: list[str] = []
    while len(out) < n:
        r = rng.random()
        if r < 0.1:  # characters on the edges of the classes (whitespace-like, format, separators)
            c = rng.choice("\x1c\x1d\x1e\x1f\x85\xa0\u1680\u180e\u200b\u2028\u3000\ufeff\u00ad")
        elif r < 0.3:
            c = rng.choice(" \t\n\r'sdtlmve")
        elif r < 0.5:
            c = chr(rng.randint(0x20, 0x7E))
        else:
            cp = rng.randint(0, sys.maxunicode)
            c = chr(cp if not 0xD800 <= cp <= 0xDFFF else cp - 0x800)
            if assigned_only and unicodedata.category(c) == "Cn":
                continue
        out.append(c)
    return "".join(out)


def test_encodings_equal_huggingface_ids_for_every_fixture_text(tok, cases):
    assert len(cases) > 200
    wrong = [(c["text"], c["ids"], tok.encode(c["text"])) for c in cases if tok.encode(c["text"]) != c["ids"]]
    assert not wrong, f"{len(wrong)} texts differ, first: {wrong[0]!r}"


def test_decoding_fixture_ids_gives_the_text_back(tok, cases):
    for c in cases:
        assert tok.decode(c["ids"]) == c["text"]


def test_fixture_covers_the_hard_cases(cases):
    """The reference set really contains what the encoding test claims to prove."""
    text = "".join(c["text"] for c in cases)
    for needle in ("  ", "\n\n", "\t", "123", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d", "é", "😀", "中", EOT):
        assert needle in text, needle


def test_long_word_heap_merge_equals_gpt2_merge_loop(tok):
    """Words longer than the threshold take the O(n log n) path; it must merge exactly as the loop."""
    rng = random.Random(2)
    for trial in range(300):
        alphabet = ["ab", "the sea", "etaoinshrdlu", "aé😀"][trial % 4]
        word = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 150)))
        parts = [tok.byte_encoder[b] for b in word.encode("utf-8")]
        assert tok._merge_heap(list(parts)) == tok._merge(list(parts)), repr(word)


def test_fixture_has_long_words(cases):
    assert max(len(w.encode()) for c in cases for w in pretokenize(c["text"])) > 256


def test_round_trip_is_exact_on_random_unicode(tok):
    rng = random.Random(0)
    for _ in range(300):
        s = random_unicode(rng, rng.randint(0, 60))
        ids = tok.encode(s)
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == s


def test_pretokenization_matches_gpt2_regex_pattern():
    regex = pytest.importorskip("regex")
    pat = regex.compile(GPT2_PATTERN)
    rng = random.Random(1)
    for _ in range(500):
        s = random_unicode(rng, rng.randint(0, 50), assigned_only=True)
        assert pretokenize(s) == pat.findall(s), repr(s)


def test_pretokenization_known_splits():
    # worked by hand from GPT-2's pattern: a space joins the following word; a whitespace run
    # before a word keeps all but its last character; contractions are their own words.
    assert pretokenize("Hello  world's 123!!\n") == ["Hello", " ", " world", "'s", " 123", "!!", "\n"]
    assert pretokenize("I'M don't") == ["I", "'", "M", " don", "'t"]
    assert pretokenize("café 東京42") == ["café", " 東京", "42"]
    assert pretokenize("a\u3000b") == ["a", "\u3000", "b"]  # only ' ' joins a word; U+3000 is whitespace
    assert pretokenize("a\u3000\u3000b") == ["a", "\u3000", "\u3000", "b"]
    assert pretokenize("a\x1cb") == ["a", "\x1c", "b"]  # \x1c is not Unicode White_Space: "other"
    assert pretokenize("a \x1c!") == ["a", " \x1c!"]
    assert pretokenize("a \x85!") == ["a", " ", "\x85", "!"]  # U+0085 is White_Space


def test_bytes_to_unicode_is_a_printable_bijection():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256
    assert all(c.isprintable() and not c.isspace() for c in table.values())
    assert table[ord(" ")] == "Ġ" and table[ord("\n")] == "Ċ" and table[ord("A")] == "A"


def test_endoftext_is_one_special_token_unless_disallowed(tok):
    eot = tok.eot_id
    assert eot == tok.encoder[EOT] == tok.vocab_size - 1
    ids = tok.encode(f"hi{EOT}there")
    assert ids == tok.encode("hi") + [eot] + tok.encode("there")
    plain = tok.encode(EOT, allow_special=False)
    assert eot not in plain and len(plain) > 1
    assert tok.decode(plain) == EOT and tok.decode([eot]) == EOT


def test_decode_bytes_is_exact_and_decode_replaces_partial_characters(tok):
    ids = tok.encode("😀")
    assert tok.decode_bytes(ids) == "😀".encode("utf-8")
    first = tok.decode_bytes(ids[:1])
    assert "😀".encode("utf-8").startswith(first)
    if len(first) < 4:  # the emoji is split over tokens: a partial character decodes to U+FFFD
        assert "\ufffd" in tok.decode(ids[:1])
    assert tok.decode([10**6]) == "\ufffd"


def test_lone_surrogates_encode_without_crashing(tok):
    s = "ok \udcff bad"
    assert tok.decode(tok.encode(s)).startswith("ok ")


def test_checkpoint_arrays_round_trip_without_pickle(tok, cases):
    arrays = tok.to_arrays()
    assert all(a.dtype != object for a in arrays.values())
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    buf.seek(0)
    with np.load(buf, allow_pickle=False) as npz:
        back = GPT2Tokenizer.from_arrays({k: npz[k] for k in npz.files})
    assert back.kind == "gpt2-bpe" and back.vocab_size == tok.vocab_size
    for c in cases:
        assert back.encode(c["text"]) == c["ids"]


def test_corrupt_checkpoint_arrays_are_a_checkpoint_error(tok):
    arrays = tok.to_arrays()
    with pytest.raises(CheckpointError):
        GPT2Tokenizer.from_arrays({k: v for k, v in arrays.items() if k != "merges_txt"})
    with pytest.raises(CheckpointError):
        GPT2Tokenizer.from_arrays({**arrays, "vocab_json": arrays["vocab_json"][:-3]})


def _copy_tokenizer_files(dst: Path) -> Path:
    for name in ("vocab.json", "merges.txt"):
        (dst / name).write_bytes((FIXTURE / name).read_bytes())
    return dst


@pytest.mark.parametrize("missing", ["vocab.json", "merges.txt"])
def test_missing_file_is_named(tmp_path, missing):
    _copy_tokenizer_files(tmp_path)
    (tmp_path / missing).unlink()
    with pytest.raises(GPT2Error, match=f"{missing} not found"):
        GPT2Tokenizer.from_dir(tmp_path)


def test_bad_merges_line_is_named_with_its_number(tmp_path):
    _copy_tokenizer_files(tmp_path)
    lines = (tmp_path / "merges.txt").read_text(encoding="utf-8").split("\n")
    lines[3] = "three tokens here"
    (tmp_path / "merges.txt").write_text("\n".join(lines), encoding="utf-8")
    with pytest.raises(GPT2Error, match="line 4"):
        GPT2Tokenizer.from_dir(tmp_path)


def test_vocab_without_byte_tokens_is_refused(tmp_path):
    _copy_tokenizer_files(tmp_path)
    vocab = json.loads((tmp_path / "vocab.json").read_text(encoding="utf-8"))
    del vocab["Ġ"]
    (tmp_path / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    with pytest.raises(GPT2Error, match="byte tokens"):
        GPT2Tokenizer.from_dir(tmp_path)


def test_vocab_that_is_not_a_token_map_is_refused(tmp_path):
    _copy_tokenizer_files(tmp_path)
    (tmp_path / "vocab.json").write_text("[1, 2, 3]", encoding="utf-8")
    with pytest.raises(GPT2Error, match="vocab.json must be a JSON object"):
        GPT2Tokenizer.from_dir(tmp_path)
    (tmp_path / "vocab.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(GPT2Error, match="not valid UTF-8 JSON"):
        GPT2Tokenizer.from_dir(tmp_path)
