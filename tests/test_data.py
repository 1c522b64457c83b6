"""Corpus loading, the 90/10 split, seeded batches, and every bad data input."""
from pathlib import Path

import numpy as np
import pytest

from pythia.corpora.data import build_dataset, read_corpus, resolve_corpus
from pythia.errors import DataError
from pythia.tokenizer import SimpleTokenizer

TEXT = "".join(f"line {i}: the quick brown fox jumps over the lazy dog.\n" for i in range(40))


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# ---- which files ---------------------------------------------------------------------------

def test_resolve_prefers_data_args(tmp_path):
    write(tmp_path / "input.txt", "x")
    write(tmp_path / "model.txt", "y")
    assert resolve_corpus(["a.txt", "b.txt"], tmp_path) == [Path("a.txt"), Path("b.txt")]


def test_resolve_uses_input_and_model_txt_from_cwd_when_both_exist(tmp_path):
    write(tmp_path / "input.txt", "x")
    write(tmp_path / "model.txt", "y")
    assert resolve_corpus(None, tmp_path) == [tmp_path / "input.txt", tmp_path / "model.txt"]


def test_resolve_falls_back_to_the_bundled_corpus(tmp_path):
    from pythia.corpus import bundled_corpus_files
    write(tmp_path / "input.txt", "only one of the two")
    assert resolve_corpus(None, tmp_path) == bundled_corpus_files()
    assert resolve_corpus([], tmp_path) == bundled_corpus_files()


def test_bundled_corpus_builds_a_dataset_at_the_default_block_size():
    ds = build_dataset(resolve_corpus(None, Path("/nonexistent-dir")), block_size=32)
    assert len(ds.train) > 33 and len(ds.val) > 33


# ---- reading and splitting -----------------------------------------------------------------

def test_files_are_concatenated_in_order(tmp_path):
    a, b = write(tmp_path / "a.txt", "hello "), write(tmp_path / "b.txt", "world")
    assert read_corpus([a, b]) == "hello world"


def test_utf8_byte_order_mark_is_not_text(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes("\ufeffhi".encode("utf-8"))
    assert read_corpus([p]) == "hi"


def test_split_is_first_90_percent_train_last_10_percent_val(tmp_path):
    p = write(tmp_path / "c.txt", TEXT)
    ds = build_dataset([p], block_size=8)
    tok = SimpleTokenizer.from_text(TEXT)
    ids = np.array(tok.encode(TEXT))
    n = int(len(TEXT) * 0.9)
    np.testing.assert_array_equal(ds.train, ids[:n])
    np.testing.assert_array_equal(ds.val, ids[n:])
    assert ds.tokenizer == tok and ds.n_chars == len(TEXT)


def test_batches_are_windows_with_targets_shifted_by_one(tmp_path):
    ds = build_dataset([write(tmp_path / "c.txt", TEXT)], block_size=16)
    x, y = ds.get_batch("train", 5, np.random.default_rng(0))
    assert x.shape == y.shape == (5, 16) and x.dtype == y.dtype == np.int64
    text = ds.tokenizer.decode(ds.train)
    for row_x, row_y in zip(x, y):
        sx, sy = ds.tokenizer.decode(row_x), ds.tokenizer.decode(row_y)
        assert sx[1:] == sy[:-1]
        start = text.find(sx + sy[-1])
        assert start >= 0  # the window x + last target is a substring of the train split


def test_val_batches_come_from_the_val_split(tmp_path):
    ds = build_dataset([write(tmp_path / "c.txt", TEXT)], block_size=8)
    x, y = ds.get_batch("val", 64, np.random.default_rng(1))
    val_text = ds.tokenizer.decode(ds.val)
    for row_x, row_y in zip(x, y):
        assert ds.tokenizer.decode(np.append(row_x, row_y[-1])) in val_text


def test_every_window_start_is_reachable_including_the_last(tmp_path):
    ds = build_dataset([write(tmp_path / "c.txt", TEXT)], block_size=8)
    n_starts = len(ds.val) - 8
    x, _ = ds.get_batch("val", 20000, np.random.default_rng(2))
    starts = {tuple(r) for r in x}
    assert len(starts) == len({tuple(ds.val[i:i + 8]) for i in range(n_starts)})


def test_same_seed_same_batches_and_different_seed_different(tmp_path):
    ds = build_dataset([write(tmp_path / "c.txt", TEXT)], block_size=8)
    a = ds.get_batch("train", 4, np.random.default_rng(7))
    b = ds.get_batch("train", 4, np.random.default_rng(7))
    c = ds.get_batch("train", 4, np.random.default_rng(8))
    np.testing.assert_array_equal(a[0], b[0])
    assert not np.array_equal(a[0], c[0])


def test_sampling_continues_exactly_from_a_saved_generator_state(tmp_path):
    ds = build_dataset([write(tmp_path / "c.txt", TEXT)], block_size=8)
    rng = np.random.Generator(np.random.PCG64(3))
    ds.get_batch("train", 4, rng)
    state = rng.bit_generator.state
    expected = ds.get_batch("train", 4, rng)[0]
    restored = np.random.Generator(np.random.PCG64(0))
    restored.bit_generator.state = state
    np.testing.assert_array_equal(ds.get_batch("train", 4, restored)[0], expected)


def test_given_tokenizer_is_used_and_its_vocabulary_kept(tmp_path):
    tok = SimpleTokenizer.from_text(TEXT + "XYZ")
    ds = build_dataset([write(tmp_path / "c.txt", TEXT)], block_size=8, tokenizer=tok)
    assert ds.tokenizer is tok
    assert ds.tokenizer.decode(np.concatenate([ds.train, ds.val])) == TEXT


# ---- bad input: one clear line each ----------------------------------------------------------

def one_line(e: pytest.ExceptionInfo) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg
    return msg


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as e:
        build_dataset([tmp_path / "nope.txt"], block_size=8)
    assert "does not exist" in one_line(e) and "nope.txt" in str(e.value)


def test_directory_instead_of_file(tmp_path):
    with pytest.raises(DataError) as e:
        build_dataset([tmp_path], block_size=8)
    assert "is a directory" in one_line(e)


def test_empty_file(tmp_path):
    p = tmp_path / "empty.txt"
    p.write_bytes(b"")
    with pytest.raises(DataError) as e:
        build_dataset([write(tmp_path / "ok.txt", TEXT), p], block_size=8)
    assert "empty" in one_line(e) and "empty.txt" in str(e.value)


def test_file_with_only_a_byte_order_mark_is_empty(tmp_path):
    p = tmp_path / "bom.txt"
    p.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(DataError, match="empty"):
        read_corpus([p])


def test_bytes_that_are_not_utf8(tmp_path):
    p = tmp_path / "latin1.txt"
    p.write_bytes("café olé".encode("latin-1"))
    with pytest.raises(DataError) as e:
        build_dataset([p], block_size=2)
    assert "not UTF-8" in one_line(e) and "offset 3" in str(e.value)


def test_no_files(tmp_path):
    with pytest.raises(DataError, match="no data files"):
        build_dataset([], block_size=8)


@pytest.mark.parametrize("n_chars, block", [(20, 8), (80, 8), (1000, 200)])
def test_text_shorter_than_block_size_plus_one_in_either_split(tmp_path, n_chars, block):
    p = write(tmp_path / "short.txt", ("abcdefghij" * 200)[:n_chars])
    with pytest.raises(DataError) as e:
        build_dataset([p], block_size=block)
    msg = one_line(e)
    assert "too short" in msg and "--block-size" in msg


def test_shortest_text_that_fits_is_accepted(tmp_path):
    # block 8 needs 9 val tokens: N - int(0.9 N) >= 9 first holds at N = 81 (80 -> 8, tested above).
    p = write(tmp_path / "ok.txt", ("abcdefghij" * 10)[:81])
    ds = build_dataset([p], block_size=8)
    assert len(ds.val) == 9
    x, y = ds.get_batch("val", 3, np.random.default_rng(0))
    np.testing.assert_array_equal(x, np.tile(ds.val[:8], (3, 1)))  # one window only


def test_corpus_with_characters_outside_a_given_vocabulary(tmp_path):
    tok = SimpleTokenizer.from_text("abc ")
    with pytest.raises(DataError) as e:
        build_dataset([write(tmp_path / "c.txt", "abc abd " * 50)], block_size=8, tokenizer=tok)
    assert "'d'" in one_line(e) and "--resume" in str(e.value)
