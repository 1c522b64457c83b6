"""Checkpoint metadata: every field of the schema, corrupted in turn, is refused in one line naming it.

The cases come from pythia.formats.checkpoint_schema.SCHEMA itself: each rule lists the values it must
refuse (a string where a number belongs, a boolean where a count belongs, a list where an object
belongs, a value out of range), so a field added to the schema is corrupted here without a new
test. The checkpoint is a real one (weights, AdamW state, train config, the training RNG's state),
rewritten with one metadata value changed; loading it must raise CheckpointError with one line
that holds `field <path>`. Conversely, every field a real save writes must have a rule.
"""
from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from pythia.formats.checkpoint import load_checkpoint, save_checkpoint
from pythia.formats.checkpoint_schema import SCHEMA, Obj, validate_meta
from pythia.errors import CheckpointError
from pythia.model import Pythia, PythiaConfig
from pythia.tokenizer import SimpleTokenizer
from pythia.train import TrainConfig, make_optimizer, make_rng

TEXT = "a real checkpoint, with its optimizer and random state.\n"


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """A checkpoint as `train` writes it, after two optimizer steps."""
    tok = SimpleTokenizer.from_text(TEXT)
    cfg = TrainConfig(steps=4, eval_interval=2, warmup_steps=1)
    model = Pythia(PythiaConfig(vocab_size=tok.vocab_size, block_size=8, d_model=16, n_layer=1, n_head=2), seed=1)
    opt = make_optimizer(model, cfg)
    rng = make_rng(cfg.seed)
    ids = np.array(tok.encode(TEXT))
    for _ in range(2):
        model.loss(ids[None, :8], ids[None, 1:9])
        model.backward()
        opt.step()
        rng.integers(0, 10, size=3)
    path = tmp_path_factory.mktemp("schema") / "real.npz"
    corpus = {"prepared": "notes.tok", "tokenizer": "char", "n_tokens": len(ids), "val_fraction": 0.1,
              "sources": [{"name": "notes.txt", "size": len(TEXT), "sha256": "0" * 64}]}  # as from a prepared folder
    save_checkpoint(path, model, tok, optimizer=opt, step=2, rng_state={"train": rng.bit_generator.state},
                    train_config=cfg.to_dict(), corpus=corpus,
                    chat={"template": {"format": "chatml", "bos_token": "a", "eos_token": "b", "default_system": "c",
                                       "system_always": False}, "stop_ids": [1, 2]})  # as a converted chat model
    return path


@pytest.fixture(scope="module")
def real_lora(real, tmp_path_factory) -> Path:
    """A LoRA checkpoint as `train --lora` writes it: adapters on `real`, referenced by path and hash."""
    from pythia.lora import LoRAConfig, attach
    ckpt = load_checkpoint(real)
    model = attach(ckpt.model, LoRAConfig(2, 4.0, ("attn", "mlp")), real)
    path = tmp_path_factory.mktemp("schema_lora") / "lora.npz"
    save_checkpoint(path, model, ckpt.tokenizer, optimizer=make_optimizer(model, TrainConfig()), step=1)
    return path


@pytest.fixture
def source(real, real_lora):
    """The real checkpoint that holds a field: the LoRA one for lora.*, else the full one."""
    return lambda field: real_lora if field.startswith("lora") else real


def read_meta(path: Path) -> dict:
    with np.load(path, allow_pickle=False) as f:
        return json.loads(f["meta"].tobytes())


def with_meta(src: Path, dst: Path, meta: dict) -> Path:
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def set_path(meta: dict, path: str, value) -> dict:
    meta = copy.deepcopy(meta)
    *parents, last = path.split(".")
    node = meta
    for p in parents:
        node = node[p]
    node[last] = value
    return meta


def expect_field_error(path: Path, field: str) -> str:
    with pytest.raises(CheckpointError) as e:
        load_checkpoint(path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert f"field {field}" in msg, msg
    return msg


CASES = [(field, bad) for field, rule in SCHEMA.items() for bad in rule.bad_values()]


def test_the_real_checkpoint_loads_and_passes_the_schema(real, real_lora):
    validate_meta(read_meta(real))
    ckpt = load_checkpoint(real)
    assert ckpt.step == 2 and ckpt.rng_state["train"]["bit_generator"] == "PCG64"
    validate_meta(read_meta(real_lora))
    from pythia.formats.source import open_model
    assert load_checkpoint(real_lora, open_base=open_model).model.base_ref["path"] == str(real)
    with pytest.raises(CheckpointError, match="holds LoRA adapters, which need their base model"):
        load_checkpoint(real_lora)


@pytest.mark.parametrize("field, bad", CASES, ids=[f"{f}={json.dumps(b)}" for f, b in CASES])
def test_each_field_with_a_wrong_value_is_named_in_one_line(tmp_path, source, field, bad):
    real = source(field)
    meta = set_path(read_meta(real), field, bad)
    msg = expect_field_error(with_meta(real, tmp_path / "bad.npz", meta), field)
    if field not in ("format", "version"):          # those two have messages of their own (not ours / too new)
        assert f"got {json.dumps(bad)}" in msg, msg


def test_the_message_reads_as_one_plain_line(tmp_path, real):
    meta = set_path(read_meta(real), "model_config.n_head", "4")
    msg = expect_field_error(with_meta(real, tmp_path / "bad.npz", meta), "model_config.n_head")
    assert msg.startswith(f"checkpoint {str(tmp_path / 'bad.npz')!r}: field model_config.n_head must be a "
                          f'positive integer, got "4"'), msg


@pytest.mark.parametrize("field", [f for f, rule in SCHEMA.items() if rule.required])
def test_each_required_field_that_is_missing_is_named(tmp_path, source, field):
    real = source(field)
    meta = copy.deepcopy(read_meta(real))
    *parents, last = field.split(".")
    node = meta
    for p in parents:
        node = node[p]
    del node[last]
    expect_field_error(with_meta(real, tmp_path / "bad.npz", meta), field)


@pytest.mark.parametrize("field", [f for f, rule in SCHEMA.items() if isinstance(rule, Obj) and rule.closed])
def test_an_unknown_key_in_a_closed_object_is_named(tmp_path, source, field):
    real = source(field)
    meta = set_path(read_meta(real), f"{field}.surprise", 1)
    expect_field_error(with_meta(real, tmp_path / "bad.npz", meta), f"{field}.surprise")


@pytest.mark.parametrize("field, value", [("model_config.d_model", 15), ("train_config.min_lr", 1.0)])
def test_fields_that_must_agree(tmp_path, real, field, value):
    meta = set_path(read_meta(real), field, value)
    expect_field_error(with_meta(real, tmp_path / "bad.npz", meta), field)


@pytest.mark.parametrize("field", ["train_config", "rng_state", "rng_state.train"])
def test_optional_objects_may_be_null(tmp_path, real, field):
    load_checkpoint(with_meta(real, tmp_path / "ok.npz", set_path(read_meta(real), field, None)))


def _leaves(node, prefix=""):
    for k, v in node.items():
        path = f"{prefix}{k}"
        yield path
        if isinstance(v, dict):
            yield from _leaves(v, path + ".")


def test_every_field_a_save_writes_has_a_rule(real):
    missing = [p for p in _leaves(read_meta(real)) if p not in SCHEMA]
    assert not missing, f"add these to checkpoint_schema.SCHEMA: {missing}"


@pytest.mark.parametrize("config, prefix", [(PythiaConfig, "model_config"), (TrainConfig, "train_config")])
def test_every_config_field_has_a_rule(config, prefix):
    missing = [f.name for f in dataclasses.fields(config) if f"{prefix}.{f.name}" not in SCHEMA]
    assert not missing, f"add these to checkpoint_schema.SCHEMA: {missing}"


# ---- the arrays must agree with the metadata --------------------------------------------------

def rewrite_arrays(src: Path, dst: Path, change) -> Path:
    with np.load(src, allow_pickle=False) as f:
        arrays = {k: f[k] for k in f.files}
    change(arrays)
    with open(dst, "wb") as fh:
        np.savez(fh, **arrays)
    return dst


def test_a_tokenizer_smaller_than_the_vocabulary_is_caught_at_load(tmp_path, real):
    """A character vocabulary one short: sampling would fail only when it picked the last id."""
    chars = SimpleTokenizer.from_text(TEXT).chars
    short = np.frombuffer("".join(chars[:-1]).encode(), dtype=np.uint8)
    p = rewrite_arrays(real, tmp_path / "bad.npz", lambda a: a.update({"tok/chars": short}))
    msg = expect_field_error(p, "model_config.vocab_size")
    assert f"tokenizer has {len(chars) - 1} tokens" in msg


def test_an_embedding_that_disagrees_with_vocab_size_is_caught_before_the_model_is_built(tmp_path, real):
    meta = set_path(read_meta(real), "model_config.vocab_size", 10 ** 9)   # ~190 GB of weights if allocated
    msg = expect_field_error(with_meta(real, tmp_path / "bad.npz", meta), "model_config")
    assert "'wte'" in msg


@pytest.mark.parametrize("change, needle", [
    (lambda a: a.update({"opt/m/wte": a["opt/m/wte"][:-1]}), "m/wte"),
    (lambda a: a.update({"opt/v/wpe": a["opt/v/wpe"].astype(np.float64)}), "v/wpe"),
    (lambda a: a.update({"opt/v/wpe": -a["opt/v/wpe"] - 1}), "v/wpe"),
    (lambda a: a.update({"opt/t": np.array(1.5)}), "'t'"),
])
def test_optimizer_state_that_does_not_fit_the_weights(tmp_path, real, change, needle):
    p = rewrite_arrays(real, tmp_path / "bad.npz", change)
    with pytest.raises(CheckpointError, match="optimizer state") as e:
        load_checkpoint(p)
    assert needle in str(e.value)
