"""Checkpoints: exact round trip, no pickle, atomic writes, and a clear error for every bad file."""
import json
import os
import zipfile
from pathlib import Path

import numpy as np
import pytest

import pythia.formats.checkpoint as ckmod
from pythia.formats.checkpoint import check_resume_sizes, load_checkpoint, save_checkpoint
from pythia.engine import DeltaOptimizer
from pythia.errors import CheckpointError
from pythia.model import Pythia, PythiaConfig
from pythia.tokenizer import SimpleTokenizer

TEXT = "hello world, a tiny corpus for checkpoints!\n"


@pytest.fixture
def trained():
    """A tiny model and an optimizer that has taken two steps, so every moment is non-zero."""
    tok = SimpleTokenizer.from_text(TEXT)
    model = Pythia(PythiaConfig(vocab_size=tok.vocab_size, block_size=8, d_model=16, n_layer=1, n_head=2), seed=3)
    opt = DeltaOptimizer.for_model(model, lr=1e-2, warmup_steps=0, total_steps=10)
    ids = np.array(tok.encode(TEXT[:18]))
    for _ in range(2):
        model.loss(ids[None, :8], ids[None, 1:9])
        model.backward()
        opt.step()
    return model, tok, opt


def save(path, trained, **kw):
    model, tok, opt = trained
    kw.setdefault("optimizer", opt)
    save_checkpoint(path, model, tok, **kw)
    return path


def rewrite(src: Path, dst: Path, change) -> Path:
    """Copy a checkpoint's arrays into a new .npz after change(arrays) edits them."""
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def edit_meta(arrays, **changes):
    meta = json.loads(arrays["meta"].tobytes())
    meta.update(changes)
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)


# ---- round trip ------------------------------------------------------------------------------

def test_round_trip_restores_everything_exactly(tmp_path, trained):
    model, tok, opt = trained
    rng = np.random.Generator(np.random.PCG64(5))
    rng.integers(0, 10, size=7)
    state = {"train": rng.bit_generator.state}
    tc = {"steps": 10, "lr": 0.01, "seed": 5}
    save(tmp_path / "c.npz", trained, step=2, rng_state=state, train_config=tc)
    ck = load_checkpoint(tmp_path / "c.npz")
    assert ck.model.config == model.config
    assert ck.model.params.keys() == model.params.keys()
    for k, p in model.params.items():
        np.testing.assert_array_equal(ck.model.params[k], p)
        assert ck.model.params[k].dtype == np.float32
    assert ck.tokenizer == tok
    ref = opt.state_arrays()
    assert ck.optimizer_arrays.keys() == ref.keys()
    for k, a in ref.items():
        np.testing.assert_array_equal(ck.optimizer_arrays[k], a)
    assert ck.step == 2 and ck.train_config == tc and ck.path == tmp_path / "c.npz"
    # The 128-bit PCG64 state survives JSON: the restored generator continues the same stream.
    back = np.random.Generator(np.random.PCG64(0))
    back.bit_generator.state = ck.rng_state["train"]
    np.testing.assert_array_equal(back.integers(0, 1 << 30, size=5), rng.integers(0, 1 << 30, size=5))


def test_loaded_model_gives_the_same_logits(tmp_path, trained):
    model = trained[0]
    ck = load_checkpoint(save(tmp_path / "c.npz", trained))
    idx = np.array([[1, 2, 3, 4], [4, 3, 2, 1]])
    np.testing.assert_array_equal(ck.model.forward(idx), model.forward(idx))


def test_optimizer_state_restores_into_a_fresh_optimizer_and_steps_identically(tmp_path, trained):
    model, tok, opt = trained
    ck = load_checkpoint(save(tmp_path / "c.npz", trained))
    opt2 = DeltaOptimizer.for_model(ck.model, lr=1e-2, warmup_steps=0, total_steps=10)
    opt2.load_state_arrays(ck.optimizer_arrays)
    assert opt2.t == opt.t == 2
    grads = np.full_like(model.params_memory, 0.01)               # (P,) one flat gradient for both
    opt.step(grads)
    opt2.step(grads)
    for k in model.params:
        np.testing.assert_array_equal(ck.model.params[k], model.params[k])


def test_without_optimizer_there_is_no_optimizer_state(tmp_path, trained):
    ck = load_checkpoint(save(tmp_path / "c.npz", trained, optimizer=None))
    assert ck.optimizer_arrays is None and ck.step == 0 and ck.rng_state is None and ck.train_config == {}


def test_file_layout_is_plain_arrays_loadable_without_pickle(tmp_path, trained):
    path = save(tmp_path / "c.npz", trained, step=2)
    with np.load(path, allow_pickle=False) as f:
        keys = set(f.files)
        assert all(f[k].dtype != object for k in keys)
        meta = json.loads(f["meta"].tobytes().decode("utf-8"))
    assert {"meta", "tok/chars", "opt/t", "param/wte", "opt/m/wte", "opt/v/wte"} <= keys
    assert meta["format"] == "pythia-checkpoint" and meta["version"] == 1
    assert meta["model_config"]["d_model"] == 16 and meta["tokenizer_kind"] == "char" and meta["step"] == 2


def test_path_is_used_as_given_without_adding_a_suffix(tmp_path, trained):
    save(tmp_path / "model.ckpt", trained)
    assert os.listdir(tmp_path) == ["model.ckpt"]
    assert load_checkpoint(tmp_path / "model.ckpt").step == 0


# ---- atomic writes ---------------------------------------------------------------------------

def test_saving_over_an_existing_checkpoint_replaces_it(tmp_path, trained):
    path = save(tmp_path / "c.npz", trained, step=1)
    save(path, trained, step=2)
    assert load_checkpoint(path).step == 2
    assert os.listdir(tmp_path) == ["c.npz"]


@pytest.mark.parametrize("exc", [OSError(28, "No space left on device"), KeyboardInterrupt()])
def test_a_failed_save_leaves_the_existing_file_untouched_and_no_temp_file(tmp_path, trained, monkeypatch, exc):
    path = save(tmp_path / "c.npz", trained, step=1)
    before = path.read_bytes()

    def failing_savez(fh, **arrays):
        fh.write(b"PK\x03\x04 half an archive")
        raise exc
    monkeypatch.setattr(ckmod.np, "savez", failing_savez)
    with pytest.raises(CheckpointError if isinstance(exc, OSError) else KeyboardInterrupt):
        save(path, trained, step=2)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["c.npz"]


def test_a_failed_first_save_leaves_no_file_at_all(tmp_path, trained, monkeypatch):
    monkeypatch.setattr(ckmod.np, "savez", lambda fh, **a: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        save(tmp_path / "c.npz", trained)
    assert os.listdir(tmp_path) == []


def test_save_into_a_missing_directory_is_a_clear_error(tmp_path, trained):
    with pytest.raises(CheckpointError, match="does not exist"):
        save(tmp_path / "no" / "c.npz", trained)


def test_save_onto_a_directory_is_a_clear_error(tmp_path, trained):
    (tmp_path / "d").mkdir()
    with pytest.raises(CheckpointError, match="is a directory"):
        save(tmp_path / "d", trained)


def test_saved_file_gets_ordinary_permissions(tmp_path, trained):
    path = save(tmp_path / "c.npz", trained)
    mask = os.umask(0)
    os.umask(mask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~mask


# ---- bad files: one clear CheckpointError each ------------------------------------------------

def expect_error(path, *words):
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg
    for w in words:
        assert w in msg, msg
    return msg


def test_missing_file(tmp_path):
    expect_error(tmp_path / "nope.npz", "does not exist")


def test_directory(tmp_path):
    expect_error(tmp_path, "is a directory")


def test_not_a_zip(tmp_path):
    p = tmp_path / "text.npz"
    p.write_text("just some text\n")
    expect_error(p, "not a Pythia checkpoint")


def test_empty_file(tmp_path):
    p = tmp_path / "empty.npz"
    p.write_bytes(b"")
    expect_error(p, "not a Pythia checkpoint")


def test_a_plain_npy_file(tmp_path):
    p = tmp_path / "a.npy"
    np.save(p, np.arange(3))
    expect_error(p, "not a Pythia checkpoint")


@pytest.mark.parametrize("fraction", [0.1, 0.5, 0.9, 0.999])
def test_truncated(tmp_path, trained, fraction):
    good = save(tmp_path / "good.npz", trained).read_bytes()
    p = tmp_path / "cut.npz"
    p.write_bytes(good[:int(len(good) * fraction)])
    expect_error(p, "truncated or corrupt")


def test_corrupt_bytes_inside_a_weight_are_caught_by_the_zip_checksum(tmp_path, trained):
    p = save(tmp_path / "c.npz", trained)
    with zipfile.ZipFile(p) as z:
        info = z.getinfo("param/wte.npy")
    data = bytearray(p.read_bytes())
    at = info.header_offset + 30 + len(info.filename) + info.compress_size // 2  # inside the array bytes
    data[at] ^= 0xFF
    p.write_bytes(bytes(data))
    expect_error(p, "cannot be read")


def test_an_archive_needing_pickle_is_refused(tmp_path):
    p = tmp_path / "pickled.npz"
    np.savez(p, meta=np.array([{"evil": 1}], dtype=object))
    expect_error(p, "cannot be read")


def test_archive_without_meta(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, x=np.arange(3))
    expect_error(p, "no 'meta'")


def test_meta_that_is_not_json(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz",
                lambda a: a.update(meta=np.frombuffer(b"{not json", dtype=np.uint8)))
    expect_error(p, "unreadable 'meta'")


def test_another_format(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: edit_meta(a, format="other"))
    expect_error(p, "not a Pythia checkpoint")


def test_newer_format_version(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: edit_meta(a, version=2))
    expect_error(p, "format version 2", "upgrade")


def test_older_format_version(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: edit_meta(a, version=0))
    expect_error(p, "format version 0")


@pytest.mark.parametrize("key", ["model_config", "tokenizer_kind", "step"])
def test_meta_missing_a_key(tmp_path, trained, key):
    def drop(a):
        meta = json.loads(a["meta"].tobytes())
        del meta[key]
        a["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", drop)
    expect_error(p, f"field {key} is missing")


def test_invalid_model_config(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz",
                lambda a: edit_meta(a, model_config={"vocab_size": 10, "d_model": 15, "n_head": 2,
                                                     "block_size": 8, "n_layer": 1}))
    expect_error(p, "field model_config.d_model must be divisible by model_config.n_head (2)")


def test_missing_weight(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: a.pop("param/ln_f.bias"))
    expect_error(p, "ln_f.bias")


def test_weight_of_the_wrong_shape(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz",
                lambda a: a.update({"param/wpe": np.zeros((9, 16), np.float32)}))
    expect_error(p, "wpe")


def test_weights_that_do_not_match_the_config_vocabulary(tmp_path, trained):
    # Another vocabulary's weights under this config: the embedding has the wrong number of rows.
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz",
                lambda a: a.update({"param/wte": np.zeros((a["param/wte"].shape[0] + 5, 16), np.float32)}))
    expect_error(p, "wte")


def test_weight_with_nan(tmp_path, trained):
    def poison(a):
        w = a["param/wte"].copy()
        w[0, 0] = np.nan
        a["param/wte"] = w
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", poison)
    expect_error(p, "NaN")


def test_weight_of_the_wrong_dtype(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz",
                lambda a: a.update({"param/wte": a["param/wte"].astype(np.float64)}))
    expect_error(p, "float32")


def test_tokenizer_larger_than_the_model_vocabulary(tmp_path, trained):
    big = SimpleTokenizer.from_text(TEXT + "XYZQ").to_arrays()["chars"]
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: a.update({"tok/chars": big}))
    expect_error(p, "tokenizer has")


def test_unreadable_tokenizer(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz",
                lambda a: a.update({"tok/chars": np.frombuffer(b"\xff\xfe", dtype=np.uint8)}))
    expect_error(p, "tokenizer")


def test_unknown_tokenizer_kind(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: edit_meta(a, tokenizer_kind="word"))
    expect_error(p, "tokenizer")


def test_optimizer_state_of_the_wrong_shape(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz",
                lambda a: a.update({"opt/m/wte": np.zeros((2, 2), np.float32)}))
    expect_error(p, "m/wte")


def test_optimizer_state_without_step_count(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: a.pop("opt/t"))
    expect_error(p, "'t'")


def test_negative_step(tmp_path, trained):
    p = rewrite(save(tmp_path / "c.npz", trained), tmp_path / "bad.npz", lambda a: edit_meta(a, step=-1))
    expect_error(p, "field step must be a non-negative integer, got -1")


# ---- resuming with other sizes ----------------------------------------------------------------

def test_resume_with_the_same_or_unspecified_sizes_is_accepted(tmp_path, trained):
    ck = load_checkpoint(save(tmp_path / "c.npz", trained))
    check_resume_sizes(ck, d_model=16, n_layer=None, n_head=2, block_size=None)


@pytest.mark.parametrize("name, value", [("d_model", 32), ("n_layer", 2), ("n_head", 4), ("block_size", 16)])
def test_resume_with_another_model_size_is_a_clear_error(tmp_path, trained, name, value):
    ck = load_checkpoint(save(tmp_path / "c.npz", trained))
    with pytest.raises(CheckpointError) as e:
        check_resume_sizes(ck, **{name: value})
    assert f"--{name.replace('_', '-')} {value}" in str(e.value) and "without --resume" in str(e.value)
