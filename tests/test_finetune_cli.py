"""The fine-tune and export commands as a user runs them (through `pythia.cli.main`, in-process):
the flows work end to end, and every bad input is one `error:` line, a non-zero exit, no
traceback, and no file of the user's changed."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import GPT2, TEXT, TINY, assert_ok, assert_one_line_error, run_cli as run

FT = ["--steps", "2", "--batch-size", "2", "--block-size", "16", "--eval-interval", "2", "--eval-iters", "1"]


def snapshot(d: Path) -> dict[str, str]:
    """Every file under d with its SHA-256 (to prove nothing was written or replaced)."""
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("ftcli")
    (d / "notes.txt").write_text(TEXT, encoding="utf-8")
    (d / "more.txt").write_text(TEXT.upper(), encoding="utf-8")
    r = run(["train", "--data", "notes.txt", "--out", "char.npz", *TINY], d)
    assert_ok(r)
    return d


def test_finetune_gpt2_folder_then_checkpoint_then_export_and_read_back(work):
    r = run(["train", "--init-from", str(GPT2), "--data", "notes.txt", "more.txt", "--out", "ft.npz",
             "--grad-accum", "2", "--log-file", "ft.jsonl", *FT], work)
    assert_ok(r)
    log = [json.loads(line) for line in (work / "ft.jsonl").read_text().splitlines()]
    assert [rec["step"] for rec in log] == [1, 2]                 # optimizer steps, not micro-batches
    r = run(["train", "--init-from", "ft.npz", "--data", "more.txt", "--out", "ft2.npz", *FT], work)
    assert_ok(r)
    r = run(["export", "ft2.npz", "--out", "ft-hf"], work)
    assert_ok(r)
    assert "from_pretrained" in r.stdout
    r = run(["generate", "--gpt2", "ft-hf", "--prompt", "The sea", "--temperature", "0", "--max-new-tokens", "5"],
            work)
    assert_ok(r)
    assert r.stdout.startswith("The sea")
    r = run(["convert-gpt2", "ft-hf", "--out", "back.npz"], work)
    assert_ok(r)


def test_char_checkpoint_exports_and_chats_from_the_folder(work):
    r = run(["export", "char.npz", "--out", "char-hf"], work)
    assert_ok(r)
    assert (work / "char-hf" / "tokenizer.json").is_file()
    r = run(["chat", "--gpt2", "char-hf", "--seed", "1", "--max-new-tokens", "8"], work, stdin="Hello\nquit\n")
    assert_ok(r)


def test_train_chat_fine_tunes_then_chats(work):
    r = run(["train-chat", "--init-from", str(GPT2), "--data", "notes.txt", "--out", "tc.npz", *FT], work,
            stdin="Hello\nquit\n")
    assert_ok(r)


def test_finetune_on_a_folder_prepared_with_the_models_tokenizer(work):
    # one file, the same split (the last 10% validates) and seed: the folder prepared with
    # GPT-2's BPE must hand fine-tuning the batches of the text file itself, so equal losses
    r = run(["prepare", "--data", "notes.txt", "--out", "notes-gpt2.tok", "--gpt2", str(GPT2)], work)
    assert_ok(r)
    runs = {}
    for name, data in (("text", "notes.txt"), ("folder", "notes-gpt2.tok")):
        r = run(["train", "--init-from", str(GPT2), "--data", data, "--out", f"ft-{name}.npz",
                 "--log-file", f"ft-{name}.jsonl", *FT], work)
        assert_ok(r)
        runs[name] = [json.loads(line)["train_loss"] for line in (work / f"ft-{name}.jsonl").read_text().splitlines()]
    assert len(runs["folder"]) == 2
    np.testing.assert_allclose(runs["folder"], runs["text"], rtol=1e-6)
    # a checkpoint's tokenizer: char.npz learnt notes.txt's characters, as a char folder of it holds
    r = run(["prepare", "--data", "notes.txt", "--out", "notes-char.tok"], work)
    assert_ok(r)
    r = run(["train", "--init-from", "char.npz", "--data", "notes-char.tok", "--out", "ft-char.npz",
             *FT[:4]], work)
    assert_ok(r)


def _prepared(d: Path, name: str, *flags: str) -> None:
    if not (d / name).exists():
        assert_ok(run(["prepare", "--out", name, *flags], d))


def test_export_help_teaches(work):
    r = run(["export", "--help"], work)
    assert_ok(r)
    assert r.stdout.rstrip().splitlines()[-1].strip().startswith("python -m pythia")
    assert "examples:" in r.stdout
    r = run(["train", "--help"], work)
    assert "--init-from" in r.stdout and "--grad-accum" in r.stdout


def _gpt2_variant(d: Path, name: str, **changes) -> Path:
    folder = d / name
    if not folder.exists():
        shutil.copytree(GPT2, folder)
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(changes)
        (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def _unknown_tokenizer_ckpt(d: Path) -> Path:
    """char.npz with its tokenizer kind renamed to one Pythia does not know."""
    path = d / "oddtok.npz"
    if not path.exists():
        with np.load(d / "char.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        meta = json.loads(arrays["meta"].tobytes())
        meta["tokenizer_kind"] = "sentencepiece"
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        np.savez(path, **arrays)
    return path


BAD = {
    "missing SRC": (["train", "--init-from", "nowhere", "--data", "notes.txt", "--out", "x.npz"], "does not exist"),
    "another model_type": (["train", "--init-from", "bert", "--data", "notes.txt", "--out", "x.npz"],
                           "model_type 'bert' is not supported"),
    "an option Pythia lacks": (["train", "--init-from", "scaled", "--data", "notes.txt", "--out", "x.npz"],
                               "scale_attn_by_inverse_layer_idx"),
    "block above context": (["train", "--init-from", str(GPT2), "--data", "notes.txt", "--block-size", "65",
                             "--out", "x.npz"], "exceeds the context"),
    "contradicting size": (["train", "--init-from", str(GPT2), "--data", "notes.txt", "--d-model", "64",
                            "--out", "x.npz"], "--d-model 64 contradicts"),
    "contradicting checkpoint size": (["train", "--init-from", "char.npz", "--data", "notes.txt", "--n-layer", "3",
                                       "--out", "x.npz"], "--n-layer 3 contradicts"),
    "grad-accum 0": (["train", "--data", "notes.txt", "--grad-accum", "0", "--out", "x.npz"], "--grad-accum"),
    "grad-accum above the corpus": (["train", "--data", "notes.txt", "--grad-accum", "10000000000000000000000",
                                     "--out", "x.npz"], "more than the training split's"),
    "short corpus": (["train", "--init-from", str(GPT2), "--data", "short.txt", "--block-size", "64",
                      "--out", "x.npz"], "too short"),
    "init-from and resume": (["train", "--init-from", "char.npz", "--resume", "char.npz", "--data", "notes.txt"],
                             "give only one of them"),
    "export onto a folder": (["export", "char.npz", "--out", "full"], "not empty"),
    "export onto a file": (["export", "char.npz", "--out", "notes.txt"], "is a file"),
    "export an unknown tokenizer": (["export", "oddtok.npz", "--out", "odd-hf"], "sentencepiece"),
    "init from an unknown tokenizer": (["train", "--init-from", "oddtok.npz", "--data", "notes.txt",
                                        "--out", "x.npz"], "sentencepiece"),
    "init from GPT-2 on a char folder": (["train", "--init-from", str(GPT2), "--data", "notes-char.tok",
                                         "--out", "x.npz"], f"--gpt2 {GPT2}"),
    "init from a checkpoint on another char folder": (["train", "--init-from", "char.npz", "--data", "more-char.tok",
                                                       "--out", "x.npz"], "was prepared with a different one"),
    "export a missing checkpoint": (["export", "nope.npz", "--out", "nope-hf"], "does not exist"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_is_one_line_and_changes_nothing(work, case):
    _gpt2_variant(work, "bert", model_type="bert")
    _gpt2_variant(work, "scaled", scale_attn_by_inverse_layer_idx=True)
    _unknown_tokenizer_ckpt(work)
    (work / "short.txt").write_text("The sea is old. " * 6, encoding="utf-8")
    (work / "full").mkdir(exist_ok=True)
    _prepared(work, "notes-char.tok", "--data", "notes.txt")
    _prepared(work, "more-char.tok", "--data", "more.txt")          # upper case: other characters
    (work / "full" / "mine.txt").write_text("mine")
    before = snapshot(work)
    args, needle = BAD[case]
    r = run(args, work)
    assert_one_line_error(r, needle)
    assert snapshot(work) == before
    assert not (work / "x.npz").exists() and not (work / "odd-hf").exists()
