"""The trained byte-level BPE: the reference does what it says, and the compiled twin equals it.

Reference (pythia.text.bpe_train): hand-computed merges on small texts, the stated tie-break, the
vocabulary layout, exact round trips of any Unicode, storage. Twin (pythia.text.bpe_fast, compiled
from kernels/_bpe.pyx): the same words as GPT-2's regex (pythia.text.bpe.pretokenize), the same
merges and the same ids as the reference on several corpora, and the same ids as
GPT2Tokenizer on a GPT-2-format vocabulary. Parity is exact: these are integers.
"""
import random
from pathlib import Path

import numpy as np
import pytest

from pythia.text import bpe_fast
from pythia.text.bpe import GPT2Tokenizer, pretokenize
from pythia.text.bpe_train import (ByteBPETokenizer, count_words, get_stats, merge, train_merges)
from pythia.tokenizer import tokenizer_from_arrays

compiled = pytest.mark.skipif(bpe_fast._bpe is None, reason="the compiled BPE (pythia._bpe) is not built")
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def corpora() -> dict[str, str]:
    """Texts the parity tests run on: English prose, code, many scripts and symbols, random."""
    rnd = random.Random(12)
    alphabet = "ab '\n\t 1é日🙂.,\u00a0\u2028sRelvdmt\x1c\u3000-"
    prose = (FIXTURES.parent.parent / "data" / "input.txt").read_text(encoding="utf-8")[:20000]
    return {
        "prose": prose,
        "code": "def f(x):\n    return x ** 2  # it's   squared\n\n\tif x'll: y've = 're\n" * 40,
        "scripts": "Ελληνικά κείμενα, русский текст, 日本語の文章、한국어 문장, العربية 🙂🙂 ١٢٣ ½ Ⅻ\n" * 30,
        "random": "".join(rnd.choice(alphabet) for _ in range(6000)),
        "runs": "aaaaaaa bbbbbbbb aaaa  ab ab ab abab\n" * 50,
    }


# ---- the reference, by hand ------------------------------------------------------------------

def test_get_stats_weights_pairs_by_word_count():
    stats = get_stats({(1, 2, 1, 2): 3, (2, 1): 1})
    assert stats == {(1, 2): 6, (2, 1): 4}


def test_merge_is_left_to_right_and_non_overlapping():
    assert merge((5, 5, 5), (5, 5), 9) == (9, 5)
    assert merge((1, 5, 5, 5, 5, 2), (5, 5), 9) == (1, 9, 9, 2)


def test_first_merges_of_a_small_text_by_hand():
    # words "aab", " aab", " ab": pairs (a,a) 2, (a,b) 3, (sp,a) 2 -> (a,b) becomes 256
    merges = train_merges(count_words(["aab aab ab"]), 3)
    a, b, sp = ord("a"), ord("b"), ord(" ")
    assert merges[0] == (a, b)
    # then [a,256], [sp,a,256], [sp,256]: (a,256) 2, (sp,a) 1, (sp,256) 1 -> (a,256) becomes 257
    assert merges[1] == (a, 256)
    # then [257], [sp,257], [sp,256]: (sp,257) 1 and (sp,256) 1 tie; the smaller pair (32, 256) wins
    assert merges[2] == (sp, 256)


def test_ties_go_to_the_smallest_pair():
    # "ba" and "dc" occur once each: the tie goes to (98, 97) < (100, 99)
    assert train_merges({"dc": 1, "ba": 1}, 1) == [(ord("b"), ord("a"))]


def test_merges_never_cross_words():
    merges = train_merges(count_words(["a.a.a.a.a."]), 10)
    assert (ord("a"), ord(".")) not in merges   # "a" and "." are separate words


def test_training_stops_when_no_pair_is_left():
    tok = ByteBPETokenizer.train(["ab ab"], vocab_size=1000)
    assert tok.merges == [(ord("a"), ord("b")), (ord(" "), 256)]
    assert tok.vocab_size == 259 and tok.eot_id == 258


def test_vocabulary_layout_bytes_then_merges_then_endoftext():
    tok = ByteBPETokenizer.train([corpora()["prose"]], vocab_size=300)
    assert tok.vocab_size == 300 and tok.eot_id == 299 and len(tok.merges) == 43
    assert [tok.token_bytes(i) for i in (0, 65, 255)] == [b"\x00", b"A", b"\xff"]
    a, b = tok.merges[0]
    assert tok.token_bytes(256) == tok.token_bytes(a) + tok.token_bytes(b)
    assert tok.encode("x<|endoftext|>y") == [ord("x"), 299, ord("y")]
    assert tok.decode([299]) == "<|endoftext|>"


@pytest.mark.parametrize("name", ["prose", "scripts", "random"])
def test_any_unicode_round_trips_exactly(name):
    tok = ByteBPETokenizer.train([corpora()["prose"]], vocab_size=400)
    text = corpora()[name] + "\x00\U0010ffff e\u0301 \r\n"
    assert tok.decode(tok.encode(text)) == text


def test_vocab_size_below_257_is_refused():
    with pytest.raises(ValueError, match="at least 257"):
        ByteBPETokenizer.train(["abc"], vocab_size=256)


def test_arrays_and_json_rebuild_the_same_tokenizer():
    tok = ByteBPETokenizer.train([corpora()["code"]], vocab_size=320)
    again = tokenizer_from_arrays("byte-bpe", tok.to_arrays())
    assert again == tok and again.vocab_size == tok.vocab_size
    assert ByteBPETokenizer.from_json(tok.to_json()) == tok


def test_merges_using_undefined_ids_are_refused():
    with pytest.raises(ValueError, match="not defined"):
        ByteBPETokenizer([(256, 1)])


# ---- the compiled twin equals the reference -------------------------------------------------

@compiled
@pytest.mark.parametrize("name", list(corpora()))
def test_compiled_pretokenizer_gives_the_regex_words(name):
    text = corpora()[name]
    assert bpe_fast.pretokenize(text, backend="cython") == pretokenize(text)


@compiled
def test_compiled_pretokenizer_on_many_short_random_strings():
    rnd = random.Random(5)
    alphabet = " \t\n\r\x0b\x0c\x1c\x85\u00a0\u2028\u3000'sdmtrevl A1é日²½🙂.,!-_"
    for _ in range(3000):
        s = "".join(rnd.choice(alphabet) for _ in range(rnd.randint(0, 12)))
        assert bpe_fast.pretokenize(s, backend="cython") == pretokenize(s), repr(s)


@compiled
@pytest.mark.parametrize("name", list(corpora()))
def test_compiled_trainer_learns_the_reference_merges(name):
    counts = count_words([corpora()[name]])
    assert bpe_fast.train_merges(counts, 120, backend="cython") == train_merges(counts, 120)


@compiled
def test_compiled_word_counts_equal_the_reference():
    text = "".join(corpora().values()) + "<|endoftext|>tail"
    counts: dict = {}
    bpe_fast.count_words(text, counts, backend="cython")
    assert counts == dict(count_words([text]))


@pytest.mark.parametrize("backend", ["python", pytest.param("cython", marks=compiled)])
@pytest.mark.parametrize("name", list(corpora()))
def test_encoder_ids_equal_the_reference(backend, name):
    tok = ByteBPETokenizer.train([corpora()["prose"], corpora()["scripts"]], vocab_size=420)
    text = corpora()[name] + "<|endoftext|>" + corpora()["code"][:500]
    enc = bpe_fast.encoder_for(tok, backend=backend)
    ids = enc.encode_array(text)
    assert ids.dtype == np.int32
    assert ids.tolist() == tok.encode(text)


@pytest.mark.parametrize("backend", ["python", pytest.param("cython", marks=compiled)])
def test_encoder_ids_equal_gpt2_tokenizer_on_a_gpt2_vocabulary(backend):
    tok = GPT2Tokenizer.from_dir(FIXTURES / "gpt2")
    enc = bpe_fast.encoder_for(tok, backend=backend)
    for name, text in corpora().items():
        text = text[:3000] + "<|endoftext|> x"
        assert enc.encode(text) == tok.encode(text), name


@compiled
def test_compiled_encoder_cache_limit_changes_no_id():
    tok = ByteBPETokenizer.train([corpora()["prose"]], vocab_size=350)
    m = np.asarray(tok.merges, dtype=np.int32)
    small = bpe_fast._bpe.Encoder(np.arange(256, dtype=np.int32), m, 256 + np.arange(len(m), dtype=np.int32),
                                  bpe_fast.class_table(), 3)
    text = corpora()["prose"]
    assert small.encode(text).tolist() == tok.encode(text)
