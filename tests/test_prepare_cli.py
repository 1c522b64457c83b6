"""`prepare`, `train --data DIR` and `tokenize` as a user runs them: through `pythia.cli.main`
in-process, and `python -m pythia` in a subprocess for a terminal, Ctrl-C and a worker pool.
Bad input ends as one `error:` line, a non-zero exit, no traceback, and nothing of the user's
lost or left half-written.
"""
import json
import os
import subprocess
import sys

import pytest

from helpers import TINY, assert_ok, assert_one_line_error, run_cli as run, run_subprocess, subprocess_env

TEXT = "".join(f"The sea is large and old, line {i}; the wind moves over it all day long.\n" for i in range(80))

@pytest.fixture
def corpus(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "b.txt").write_text(TEXT.upper(), encoding="utf-8")
    return tmp_path


def test_prepare_then_train_from_the_folder_gives_the_losses_of_the_files(corpus):
    r = run(["prepare", "--data", "a.txt", "b.txt", "--out", "c.tok"], corpus)
    assert_ok(r)
    assert "wrote c.tok" in r.stdout and "\r" not in r.stdout      # plain lines on a pipe
    assert any(line.startswith("encoding") and "MB/s" in line for line in r.stdout.splitlines())
    logs = []
    for data, log in ((["a.txt", "b.txt"], "files.jsonl"), (["c.tok"], "dir.jsonl")):
        assert_ok(run(["train", *TINY, "--data", *data, "--out", f"{log}.npz", "--log-file", log], corpus))
        logs.append([json.loads(line) for line in (corpus / log).read_text().splitlines()])
    key = lambda rec: (rec["step"], rec["train_loss"], rec.get("val_loss"))  # noqa: E731
    assert [key(r) for r in logs[0]] == [key(r) for r in logs[1]] and len(logs[0]) == 5


def test_trained_bpe_folder_trains_generates_and_resumes(corpus):
    # --workers 2 may start a pool of forked workers: never a fork of the test process
    assert_ok(run_subprocess(["prepare", "--data", "a.txt", "b.txt", "--out", "b.tok", "--tokenizer", "bpe",
                   "--vocab-size", "300", "--workers", "2"], corpus))
    assert_ok(run(["train", *TINY, "--data", "b.tok", "--out", "m.npz"], corpus))
    r = run(["generate", "--checkpoint", "m.npz", "--prompt", "The sea", "--max-new-tokens", "5", "--seed", "1"],
            corpus)
    assert_ok(r)
    assert r.stdout.startswith("The sea")
    steps = [a if a != "5" else "8" for a in TINY]
    assert_ok(run(["train", *steps, "--data", "b.tok", "--resume", "m.npz"], corpus))
    r = run(["tokenize", "--checkpoint", "m.npz", "--text", "The sea"], corpus)
    assert_ok(r)
    assert "byte-bpe tokenizer, 300 tokens" in r.stdout


def test_resume_on_another_folder_names_the_file_that_differs(corpus):
    assert_ok(run(["prepare", "--data", "a.txt", "b.txt", "--out", "c.tok"], corpus))
    assert_ok(run(["train", *TINY, "--data", "c.tok", "--out", "m.npz"], corpus))
    (corpus / "b.txt").write_text(TEXT.upper().replace("SEA", "AES"), encoding="utf-8")
    assert_ok(run(["prepare", "--data", "a.txt", "b.txt", "--out", "c.tok", "--force"], corpus))
    steps = [a if a != "5" else "8" for a in TINY]
    r = run(["train", *steps, "--data", "c.tok", "--resume", "m.npz"], corpus)
    assert_one_line_error(r, "b.txt differs")


def test_tokenize_shows_ids_boundaries_and_the_count_without_colour_on_a_pipe(corpus):
    assert_ok(run(["prepare", "--data", "a.txt", "--out", "c.tok"], corpus))
    r = run(["tokenize", "--data", "c.tok", "--text", "The sea"], corpus)
    assert_ok(r)
    lines = r.stdout.splitlines()
    assert lines[0] == "|T|h|e| |s|e|a|"
    assert "\033[" not in r.stdout
    assert lines[-1].startswith("7 tokens for 7 characters (char tokenizer")
    chars = sorted(set(TEXT))
    assert lines[2].split() == [str(chars.index("T")), "'T'"]


def test_tokenize_colours_on_a_terminal_unless_no_color(corpus):
    pty = pytest.importorskip("pty")
    assert_ok(run(["prepare", "--data", "a.txt", "--out", "c.tok"], corpus))
    for env, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        master, slave = pty.openpty()
        full = subprocess_env({"TERM": "xterm", **env})
        p = subprocess.run([sys.executable, "-m", "pythia", "tokenize", "--data", "c.tok", "--text", "sea"],
                           cwd=corpus, stdout=slave, stderr=subprocess.PIPE, env=full, timeout=60)
        os.close(slave)
        out = os.read(master, 65536).decode()
        os.close(master)
        assert p.returncode == 0, p.stderr
        assert ("\033[48;5;" in out) is coloured, out
        assert "3 tokens" in out


# ---- bad input ------------------------------------------------------------------------------------

def test_mixing_a_folder_and_text_files_is_one_error(corpus):
    assert_ok(run(["prepare", "--data", "a.txt", "--out", "c.tok"], corpus))
    assert_one_line_error(run(["train", *TINY, "--data", "c.tok", "a.txt"], corpus), "mixes a prepared corpus")


@pytest.mark.parametrize("damage, needle", [
    ("truncate", "truncated"), ("missing", "val.bin' is missing"), ("malformed", "malformed JSON"),
    ("version", "format version 2"),
])
def test_a_damaged_folder_is_one_error_and_is_left_as_it_was(corpus, damage, needle):
    assert_ok(run(["prepare", "--data", "a.txt", "--out", "c.tok"], corpus))
    d = corpus / "c.tok"
    if damage == "truncate":
        (d / "train.bin").write_bytes((d / "train.bin").read_bytes()[:-3])
    elif damage == "missing":
        (d / "val.bin").unlink()
    elif damage == "malformed":
        (d / "meta.json").write_text("{\"format\": ")
    else:
        meta = json.loads((d / "meta.json").read_text())
        (d / "meta.json").write_text(json.dumps({**meta, "version": 2}))
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    assert_one_line_error(run(["train", *TINY, "--data", "c.tok"], corpus), needle)
    if damage in ("malformed", "version"):          # tokenize reads meta.json only
        assert_one_line_error(run(["tokenize", "--data", "c.tok", "--text", "x"], corpus), needle)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before
    assert not list(corpus.glob("*.npz"))


def test_a_file_that_is_not_utf8_names_the_file_and_offset(corpus):
    (corpus / "latin.txt").write_bytes(TEXT.encode() + "café".encode("latin-1"))
    r = run(["prepare", "--data", "a.txt", "latin.txt", "--out", "c.tok"], corpus)
    assert_one_line_error(r, f"'latin.txt' is not UTF-8 text (bad byte at offset {len(TEXT) + 3})")
    assert not (corpus / "c.tok").exists() and not list(corpus.glob(".c.tok*"))


@pytest.mark.parametrize("size", ["256", "100", "2147483648"])
def test_vocab_size_out_of_range_is_one_error(corpus, size):
    r = run(["prepare", "--data", "a.txt", "--out", "b.tok", "--tokenizer", "bpe", "--vocab-size", size], corpus)
    assert_one_line_error(r, "--vocab-size must be between 257")


def test_existing_out_is_refused_unless_force(corpus):
    assert_ok(run(["prepare", "--data", "a.txt", "--out", "c.tok"], corpus))
    before = (corpus / "c.tok" / "train.bin").read_bytes()
    assert_one_line_error(run(["prepare", "--data", "b.txt", "--out", "c.tok"], corpus), "--force")
    assert (corpus / "c.tok" / "train.bin").read_bytes() == before
    (corpus / "mine.txt").write_text("keep me")
    assert_one_line_error(run(["prepare", "--data", "a.txt", "--out", "mine.txt", "--force"], corpus),
                          "not a prepared corpus")
    assert (corpus / "mine.txt").read_text() == "keep me"


@pytest.mark.parametrize("text, needle", [("", "is empty"), ("hi", "too small")])
def test_an_empty_or_tiny_corpus_is_one_error(corpus, text, needle):
    (corpus / "t.txt").write_text(text)
    assert_one_line_error(run(["prepare", "--data", "t.txt", "--out", "t.tok"], corpus), needle)
    assert not (corpus / "t.tok").exists() and not list(corpus.glob(".t.tok*"))


def test_a_full_disk_during_prepare_is_one_error_and_leaves_nothing(corpus, tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (corpus / "big.txt").write_text(TEXT * 40, encoding="utf-8")          # ~0.5 MB of tokens as uint16
        r = run(["prepare", "--data", "big.txt", "--out", str(small / "big.tok")], corpus)
        assert_one_line_error(r, "disk filled up")
        assert list(small.iterdir()) == []
    finally:
        subprocess.run(["umount", str(small)], capture_output=True)


def test_gpt2_folder_that_is_not_one_is_one_error(corpus):
    (corpus / "nogpt").mkdir()
    assert_one_line_error(run(["prepare", "--data", "a.txt", "--out", "g.tok", "--gpt2", "nogpt"], corpus),
                          "vocab.json")
    assert not (corpus / "g.tok").exists()


def test_prepare_redraws_its_progress_in_place_on_a_terminal(corpus):
    pty = pytest.importorskip("pty")
    master, slave = pty.openpty()
    env = subprocess_env({"TERM": "xterm"})
    p = subprocess.run([sys.executable, "-m", "pythia", "prepare", "--data", "a.txt", "b.txt", "--out", "c.tok"],
                       cwd=corpus, stdout=slave, stderr=subprocess.PIPE, env=env, timeout=120)
    os.close(slave)
    out = os.read(master, 65536).decode()
    os.close(master)
    assert p.returncode == 0, p.stderr
    assert "\rscanning" in out and "\rencoding" in out and "MB/s" in out and "ETA" in out, out
    assert "wrote c.tok" in out


def test_ctrl_c_during_prepare_leaves_no_folder(corpus):
    big = corpus / "big.txt"
    big.write_text(TEXT * 4000, encoding="utf-8")                       # ~24 MB: seconds of work
    env = subprocess_env()
    p = subprocess.Popen([sys.executable, "-m", "pythia", "prepare", "--data", "big.txt", "--out", "big.tok",
                          "--tokenizer", "bpe", "--vocab-size", "300"], cwd=corpus, env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = p.stdout.readline()                                        # the first progress line: work has begun
    assert first.startswith(("scanning", "BPE")), first
    p.send_signal(__import__("signal").SIGINT)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("prepare finished before Ctrl-C arrived")
    assert p.returncode == 130 and err.strip().splitlines()[-1] == \
        "error: stopped by Ctrl-C before anything was saved; existing files are unchanged", err
    assert "Traceback" not in err
    assert sorted(x.name for x in corpus.iterdir()) == ["a.txt", "b.txt", "big.txt"]


def test_train_chat_takes_a_prepared_folder(corpus):
    assert_ok(run(["prepare", "--data", "a.txt", "--out", "c.tok"], corpus))
    r = run(["train-chat", *TINY, "--data", "c.tok", "--out", "chat.npz"], corpus, stdin="Hello\nquit\n")
    assert_ok(r)
    assert (corpus / "chat.npz").exists() and "pythia>" in r.stdout
