"""SimpleTokenizer: vocabulary, round trip, unknown characters, storage without pickle."""
import numpy as np
import pytest

from pythia.errors import DataError, PythiaError
from pythia.tokenizer import SimpleTokenizer, tokenizer_from_arrays

TEXT = "The keeper climbed the stairs:\nAt dusk she lit the lamp and watched the sea.\nÉtoile — naïve café ☕\r\n"


def test_vocabulary_is_the_sorted_distinct_characters():
    tok = SimpleTokenizer.from_text(TEXT)
    assert tok.chars == sorted(set(TEXT))
    assert tok.vocab_size == len(set(TEXT))
    assert tok.kind == "char"


def test_ids_follow_sorted_order_independent_of_text_order():
    # The same set of characters in any order gives the same ids: the reference is Python's sort.
    a, b = SimpleTokenizer.from_text("cab"), SimpleTokenizer.from_text("bca")
    assert a.encode("abc") == b.encode("abc") == [0, 1, 2]


def test_encode_decode_round_trip_including_non_ascii():
    tok = SimpleTokenizer.from_text(TEXT)
    ids = tok.encode(TEXT)
    assert len(ids) == len(TEXT)
    assert ids == [tok.chars.index(c) for c in TEXT]   # independent reference: list.index
    assert tok.decode(ids) == TEXT


def test_encode_array_matches_encode_and_is_int64():
    tok = SimpleTokenizer.from_text(TEXT)
    arr = tok.encode_array(TEXT * 3)
    assert arr.dtype == np.int64
    assert arr.tolist() == [tok.stoi[c] for c in TEXT * 3]


def test_encode_empty_text_is_empty():
    assert SimpleTokenizer.from_text("ab").encode("") == []


def test_encode_unknown_characters_raises_a_clear_pythia_error():
    tok = SimpleTokenizer.from_text("hello world")
    with pytest.raises(DataError) as e:
        tok.encode("hello Zürich")
    msg = str(e.value)
    assert isinstance(e.value, PythiaError)
    assert "'Z'" in msg and "'ü'" in msg and "not in the vocabulary" in msg
    assert "\n" not in msg


def test_unknown_character_above_every_vocabulary_code_point_is_caught():
    # searchsorted puts code points past the last one at index V; that must not wrap to a valid id.
    tok = SimpleTokenizer.from_text("abc")
    with pytest.raises(DataError):
        tok.encode("abz")


def test_filter_keeps_known_and_reports_dropped_characters():
    tok = SimpleTokenizer.from_text("hello world")
    kept, dropped = tok.filter("hello, Wörld!")
    assert kept == "hello rld"
    assert dropped == sorted({",", "W", "ö", "!"})
    assert tok.encode(kept)  # what is kept always encodes


def test_decode_rejects_ids_outside_the_vocabulary():
    tok = SimpleTokenizer.from_text("ab")
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([0, 2])


def test_empty_text_cannot_make_a_vocabulary():
    with pytest.raises(DataError):
        SimpleTokenizer.from_text("")


def test_arrays_round_trip_through_npz_without_pickle(tmp_path):
    tok = SimpleTokenizer.from_text(TEXT)
    arrays = tok.to_arrays()
    assert all(a.dtype != object for a in arrays.values())
    np.savez(tmp_path / "t.npz", **arrays)
    with np.load(tmp_path / "t.npz", allow_pickle=False) as f:
        back = tokenizer_from_arrays("char", {k: f[k] for k in f.files})
    assert back == tok
    assert back.decode(tok.encode(TEXT)) == TEXT


@pytest.mark.parametrize("arrays", [
    {},
    {"chars": np.array([1.0, 2.0])},
    {"chars": np.frombuffer(b"\xff\xfe", dtype=np.uint8)},
    {"chars": np.frombuffer(b"ba", dtype=np.uint8)},       # not sorted
    {"chars": np.frombuffer(b"aab", dtype=np.uint8)},      # repeated
    {"chars": np.zeros(0, dtype=np.uint8)},                # empty
])
def test_from_arrays_rejects_malformed_arrays(arrays):
    with pytest.raises(ValueError):
        SimpleTokenizer.from_arrays(arrays)


def test_dispatch_rejects_an_unknown_kind():
    with pytest.raises(ValueError, match="unknown tokenizer kind"):
        tokenizer_from_arrays("word", {})


def test_dispatch_builds_the_gpt2_tokenizer_lazily():
    bpe = pytest.importorskip("pythia.text.bpe")
    # A minimal byte-level vocabulary: the 256 byte tokens and one merge.
    byte_tokens = list(bpe.bytes_to_unicode().values())
    encoder = {t: i for i, t in enumerate(byte_tokens)}
    encoder["ab"] = 256
    tok = bpe.GPT2Tokenizer(encoder, [("a", "b")])
    back = tokenizer_from_arrays("gpt2-bpe", tok.to_arrays())
    assert back.kind == "gpt2-bpe"
    assert back.encode("abc") == tok.encode("abc") == [256, encoder["c"]]


def test_lone_surrogates_from_undecodable_terminal_input_are_unknown_characters():
    # input() decodes bad bytes with surrogateescape: "\udcff" must be reported, not crash the encoder.
    tok = SimpleTokenizer.from_text("abc")
    with pytest.raises(DataError, match="not in the vocabulary"):
        tok.encode("a\udcffb")
    assert tok.filter("a\udcffb") == ("ab", ["\udcff"])
