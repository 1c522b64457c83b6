"""Prepared corpora through the Python API: what prepare writes, that chunked streaming changes no
token, that a folder gives the batches and losses of its text files, and that every damaged
folder is refused with a clear DataError.

References: pythia.corpora.data.build_dataset (today's read-whole-and-encode path) for char ids and the
split; ByteBPETokenizer.encode / GPT2Tokenizer.encode on the whole text for BPE ids; hashlib
for the hashes.
"""
import hashlib
import json
import mmap
from pathlib import Path

import numpy as np
import pytest

from pythia.text.bpe import GPT2Tokenizer
from pythia.text.bpe_train import ByteBPETokenizer
from pythia.formats.checkpoint import load_checkpoint
from pythia.corpora.data import build_dataset
from pythia.errors import CheckpointError, ConfigError, DataError
from pythia.corpora.prepare import PrepareOptions, prepare
from pythia.corpora.textstream import last_safe_cut, read_chunks
from pythia.corpora.prepared import load_prepared, open_corpus
from pythia.train import prepare_trainer

FIXTURES = Path(__file__).resolve().parent / "fixtures"
TEXT_A = "".join(f"line {i}: the quick brown fox — jumps over the lazy dog. ¿Qué? 日本 🙂\n" for i in range(60))
TEXT_B = "\ufeff" + "".join(f"Second file, row {i}:  tabs\there,   spaces   and 'quotes' ain't it.\r\n"
                             for i in range(50))


@pytest.fixture
def files(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT_A, encoding="utf-8")
    b.write_text(TEXT_B, encoding="utf-8")
    return [a, b]


def run_prepare(files, out, **kw):
    kw.setdefault("chunk_bytes", 97)          # many chunks, cut mid-character and mid-word
    return prepare(PrepareOptions(files=files, out=out, **kw), out=open("/dev/null", "w"))


# ---- what prepare writes -------------------------------------------------------------------

def test_char_folder_holds_the_ids_and_split_of_build_dataset(files, tmp_path):
    meta = run_prepare(files, tmp_path / "c.tok")
    ref = build_dataset(files, block_size=8)
    got = load_prepared(tmp_path / "c.tok", block_size=8)
    assert got.tokenizer == ref.tokenizer
    np.testing.assert_array_equal(got.train, ref.train)
    np.testing.assert_array_equal(got.val, ref.val)
    assert got.train.dtype == np.uint16 and not got.train.flags.owndata and not got.train.flags.writeable
    assert len(got.maps) == 2 and all(isinstance(m, mmap.mmap) for m in got.maps)   # memory-mapped, not read
    assert meta["n_chars"] == ref.n_chars == meta["n_tokens"]


def test_meta_names_every_source_with_size_and_sha256(files, tmp_path):
    run_prepare(files, tmp_path / "c.tok")
    meta = json.loads((tmp_path / "c.tok" / "meta.json").read_text())
    assert meta["format"] == "pythia-prepared" and meta["version"] == 1
    assert meta["split"]["val_fraction"] == 0.1 and meta["dtype"] == "uint16"
    assert [s["name"] for s in meta["sources"]] == ["a.txt", "b.txt"]
    for s, f in zip(meta["sources"], files):
        assert s["size"] == f.stat().st_size and s["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    bins = tmp_path / "c.tok"
    assert (bins / "train.bin").stat().st_size == 2 * meta["n_train"]
    assert (bins / "val.bin").stat().st_size == 2 * meta["n_val"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt", "c.tok"]  # no temporary left


@pytest.mark.parametrize("chunk", [7, 64, 1 << 20])
@pytest.mark.parametrize("workers", [1, 2])
def test_bpe_ids_equal_encoding_each_whole_file_with_endoftext_between(files, tmp_path, chunk, workers):
    meta = run_prepare(files, tmp_path / "b.tok", tokenizer="bpe", vocab_size=400, chunk_bytes=chunk, workers=workers)
    got = load_prepared(tmp_path / "b.tok", block_size=4)
    tok = got.tokenizer
    # the trainer saw the whole text (the sample default exceeds it): the reference learns the same merges
    texts = [TEXT_A, TEXT_B[1:]]
    assert tok == ByteBPETokenizer.train(texts, vocab_size=400)
    expected = tok.encode(texts[0]) + [tok.eot_id] + tok.encode(texts[1])
    np.testing.assert_array_equal(np.concatenate([got.train, got.val]), expected)
    assert meta["n_train"] == int(len(expected) * 0.9)


def test_gpt2_folder_ids_equal_gpt2_tokenizer(files, tmp_path):
    run_prepare(files, tmp_path / "g.tok", tokenizer="gpt2", gpt2_dir=FIXTURES / "gpt2", workers=2)
    got = load_prepared(tmp_path / "g.tok", block_size=4)
    ref = GPT2Tokenizer.from_dir(FIXTURES / "gpt2")
    expected = ref.encode(TEXT_A) + [ref.eot_id] + ref.encode(TEXT_B[1:])
    np.testing.assert_array_equal(np.concatenate([got.train, got.val]), expected)


def test_uint32_bins_read_back_the_same_ids(files, tmp_path):
    from pythia.corpora.prepared import dtype_for
    assert dtype_for(65536) == "uint16" and dtype_for(65537) == "uint32"
    d = tmp_path / "c.tok"
    run_prepare(files, d)
    ref = load_prepared(d, block_size=8)
    train, val = np.array(ref.train), np.array(ref.val)
    for name, ids in (("train.bin", train), ("val.bin", val)):
        (d / name).write_bytes(ids.astype("<u4").tobytes())
    meta = json.loads((d / "meta.json").read_text())
    (d / "meta.json").write_text(json.dumps({**meta, "dtype": "uint32"}))
    got = load_prepared(d, block_size=8)
    assert got.train.dtype == np.uint32
    np.testing.assert_array_equal(got.train, train)
    np.testing.assert_array_equal(got.val, val)


def test_val_fraction_moves_the_split(files, tmp_path):
    meta = run_prepare(files, tmp_path / "c.tok", val_fraction=0.25)
    assert meta["n_train"] == int(meta["n_tokens"] * 0.75)


def test_bpe_sample_draws_part_of_the_text(tmp_path):
    f = tmp_path / "big.txt"
    f.write_text("".join(f"word{i % 997} other{i % 13}\n" for i in range(20000)), encoding="utf-8")
    full = run_prepare([f], tmp_path / "full", tokenizer="bpe", vocab_size=300, chunk_bytes=4096)
    part = run_prepare([f], tmp_path / "part", tokenizer="bpe", vocab_size=300, chunk_bytes=4096, bpe_sample_mb=0.05)
    assert full["n_tokens"] > 0 and part["n_tokens"] > 0
    assert full["tokenizer"]["merges"] != part["tokenizer"]["merges"]   # learnt from a different sample


# ---- chunked reading -------------------------------------------------------------------------

def test_safe_cut_is_after_a_non_space_before_a_space():
    assert last_safe_cut("ab  cd") == 2 and last_safe_cut("ab cd\n\n") == 5 and last_safe_cut("   ") == 0
    assert last_safe_cut("x\x1cy") == 0          # \x1c is whitespace to Python but not to GPT-2


def test_chunks_rejoin_to_the_text_for_any_chunk_size(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text(TEXT_A, encoding="utf-8")
    for size in (1, 2, 3, 5, 1000):
        for cut in (False, True):
            assert "".join(read_chunks(p, size, cut=cut)) == TEXT_A


def test_a_byte_that_is_not_utf8_is_reported_with_its_offset(tmp_path):
    p = tmp_path / "bad.txt"
    good = "héllo wörld " * 20
    p.write_bytes(good.encode() + b"\xff" + b"tail")
    for size in (1, 3, 7, 4096):
        with pytest.raises(DataError, match=f"bad.txt.*offset {len(good.encode())}"):
            list(read_chunks(p, size, cut=True))


def test_a_truncated_character_at_the_end_is_reported(tmp_path):
    p = tmp_path / "cut.txt"
    p.write_bytes("abc 日".encode()[:-1])
    with pytest.raises(DataError, match="offset 4"):
        list(read_chunks(p, 2, cut=False))


# ---- a folder trains like its files ------------------------------------------------------------

def test_folder_and_files_give_the_same_batches_and_losses(files, tmp_path):
    run_prepare(files, tmp_path / "c.tok")
    sizes = {"block_size": 8, "d_model": 16, "n_layer": 1, "n_head": 2}
    train = {"steps": 6, "batch_size": 4, "eval_interval": 3, "eval_iters": 2, "seed": 5}
    runs = []
    for data in (files, [tmp_path / "c.tok"]):
        t = prepare_trainer(data, model=sizes, train=train)
        rng = np.random.default_rng(3)
        batch = t.dataset.get_batch("train", 4, rng)
        runs.append((batch, t.run()))
    (bx, ra), (by, rb) = runs
    np.testing.assert_array_equal(bx[0], by[0])
    np.testing.assert_array_equal(bx[1], by[1])
    assert ra.losses == rb.losses and ra.evals == rb.evals


def test_trained_bpe_checkpoint_saves_its_tokenizer_and_corpus(files, tmp_path):
    run_prepare(files, tmp_path / "b.tok", tokenizer="bpe", vocab_size=320)
    sizes = {"block_size": 8, "d_model": 16, "n_layer": 1, "n_head": 2}
    t = prepare_trainer([tmp_path / "b.tok"], model=sizes, train={"steps": 2, "eval_interval": 2, "eval_iters": 1},
                        out=tmp_path / "m.npz")
    t.run()
    ck = load_checkpoint(tmp_path / "m.npz")
    assert ck.tokenizer == t.dataset.tokenizer and ck.model.config.vocab_size == 320
    assert [s["name"] for s in ck.corpus["sources"]] == ["a.txt", "b.txt"]
    # resuming on the same folder works and continues from step 2
    again = prepare_trainer([tmp_path / "b.tok"], train={"steps": 3}, resume=tmp_path / "m.npz")
    assert again.start_step == 2


def test_resume_on_another_corpus_says_what_differs(files, tmp_path):
    run_prepare(files, tmp_path / "c.tok")
    sizes = {"block_size": 8, "d_model": 16, "n_layer": 1, "n_head": 2}
    prepare_trainer([tmp_path / "c.tok"], model=sizes, train={"steps": 2, "eval_interval": 2, "eval_iters": 1},
                    out=tmp_path / "m.npz").run()
    files[1].write_text(TEXT_B.replace("row", "ROW"), encoding="utf-8")   # same characters, other text
    run_prepare(files, tmp_path / "d.tok")
    with pytest.raises(CheckpointError, match=r"not the corpus .* b\.txt differs \(sha256"):
        prepare_trainer([tmp_path / "d.tok"], train={"steps": 3}, resume=tmp_path / "m.npz")


def test_resume_on_a_folder_with_another_tokenizer_is_refused(files, tmp_path):
    sizes = {"block_size": 8, "d_model": 16, "n_layer": 1, "n_head": 2}
    prepare_trainer(files, model=sizes, train={"steps": 2, "eval_interval": 2, "eval_iters": 1},
                    out=tmp_path / "m.npz").run()
    run_prepare(files, tmp_path / "b.tok", tokenizer="bpe", vocab_size=300)
    with pytest.raises(CheckpointError, match="different one"):
        prepare_trainer([tmp_path / "b.tok"], train={"steps": 3}, resume=tmp_path / "m.npz")


# ---- damaged folders and bad options -----------------------------------------------------------

@pytest.fixture
def folder(files, tmp_path):
    run_prepare(files, tmp_path / "c.tok")
    return tmp_path / "c.tok"


@pytest.mark.parametrize("damage, needle", [
    (lambda d: (d / "val.bin").unlink(), "val.bin' is missing"),
    (lambda d: (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-2]), "truncated"),
    (lambda d: (d / "meta.json").write_text("{not json"), "malformed JSON"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()), "version": 9})),
     "format version 9"),
    (lambda d: (d / "meta.json").write_text(json.dumps({**json.loads((d / "meta.json").read_text()), "n_val": 3})),
     "inconsistent"),
    (lambda d: (d / "meta.json").unlink(), "meta.json' is missing"),
])
def test_a_damaged_folder_is_one_clear_error(folder, damage, needle):
    damage(folder)
    with pytest.raises(DataError) as e:
        open_corpus([folder], block_size=8)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_mixing_a_folder_and_text_files_is_refused(folder, files):
    with pytest.raises(DataError, match="mixes a prepared corpus"):
        open_corpus([folder, files[0]], block_size=8)


def test_a_folder_too_short_for_the_block_size_is_refused(folder):
    with pytest.raises(DataError, match="too short.*--block-size"):
        open_corpus([folder], block_size=1000)


@pytest.mark.parametrize("kw, exc, needle", [
    ({"tokenizer": "bpe", "vocab_size": 256}, ConfigError, "--vocab-size must be between 257"),
    ({"tokenizer": "bpe", "vocab_size": 2**31}, ConfigError, "--vocab-size must be between 257"),
    ({"val_fraction": 1.0}, ConfigError, "--val-fraction"),
])
def test_bad_options_are_refused_before_reading(files, tmp_path, kw, exc, needle):
    with pytest.raises(exc, match=needle):
        run_prepare(files, tmp_path / "x.tok", **kw)
    assert not (tmp_path / "x.tok").exists()


def test_existing_out_is_kept_unless_force(folder, files):
    before = (folder / "train.bin").read_bytes()
    with pytest.raises(ConfigError, match="already exists"):
        run_prepare(files[:1], folder)
    assert (folder / "train.bin").read_bytes() == before
    run_prepare(files[:1], folder, force=True)
    assert (folder / "train.bin").read_bytes() != before
    assert sorted(p.name for p in folder.parent.iterdir()) == ["a.txt", "b.txt", "c.tok"]


def test_force_never_replaces_something_that_is_not_a_prepared_corpus(files, tmp_path):
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not a prepared corpus"):
        run_prepare(files, mine, force=True)
    assert (mine / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize("text", ["", "\ufeff", "ab"])
def test_an_empty_or_tiny_corpus_is_refused_and_leaves_nothing(tmp_path, text):
    p = tmp_path / "tiny.txt"
    p.write_text(text, encoding="utf-8")
    with pytest.raises(DataError, match="empty|too small"):
        run_prepare([p], tmp_path / "t.tok")
    assert sorted(x.name for x in tmp_path.iterdir()) == ["tiny.txt"]


def test_a_big_folder_unmaps_what_each_batch_touched(files, tmp_path, monkeypatch):
    """Resident file pages (RssFile) stay near one batch's worth however many batches are drawn."""
    import pythia.corpora.prepared as prepared
    status = Path("/proc/self/status")
    if not status.exists():
        pytest.skip("needs /proc/self/status")

    def rss_file_kb() -> int:
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("RssFile"))
    big = tmp_path / "big.txt"
    big.write_text("".join(f"{i * 7919 % 100003} and more words\n" for i in range(800_000)), encoding="utf-8")
    run_prepare([big], tmp_path / "big.tok", chunk_bytes=1 << 20)          # ~40 MB of uint16 bins
    monkeypatch.setattr(prepared, "RELEASE_ABOVE", 0)
    c = load_prepared(tmp_path / "big.tok", block_size=32)
    rng = np.random.default_rng(0)
    c.get_batch("train", 8, rng)
    before = rss_file_kb()
    for _ in range(200):
        c.get_batch("train", 8, rng)
    # without the release, 1,600 random windows map tens of MB; with it, what one batch maps
    assert rss_file_kb() - before < 8 * 1024
