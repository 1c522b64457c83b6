"""The command line end to end, in a fresh directory: `pythia.cli.main` in this process for
most cases, `python -m pythia` in a subprocess where the process itself is under test (the entry
point with a pipe on stdin, a reader that closes its pipe, the terminal's encoding).

Every model here is tiny (d_model 16, one layer, context 8, a few steps) so the whole file runs in
seconds; what is tested is the program around the model: flows, files, streams, exit status, and
that every bad input ends as one `error:` line on stderr without a traceback.
"""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import pythia
from helpers import (GPT2, REPO, TEXT, TINY, assert_ok, assert_one_line_error, run_cli as run, run_subprocess,
                     subprocess_env)

@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny checkpoint trained once for the chat, generate and corrupt-file tests."""
    d = tmp_path_factory.mktemp("trained")
    (d / "corpus.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train", "--data", "corpus.txt", "--out", "model.npz", *TINY], d)
    assert_ok(r)
    return d / "model.npz"


# ---- the flows ---------------------------------------------------------------------------------

def test_train_chat_on_bundled_corpus_reaches_the_chat_and_quits(tmp_path):
    r = run_subprocess(["train-chat", *TINY], tmp_path, stdin="Hello\n/temp 0\nHow are you?\nquit\n")
    assert_ok(r)
    out = r.stdout
    for needle in ("Pythia " + pythia.__version__, "kernels", "1 layer", "parameters", "[bundled]",
                   "Trained 5 steps", "pythia-chat.npz", "you> Hello", "you> How are you?", "Goodbye."):
        assert needle in out, needle
    assert out.count("pythia> ") == 2
    assert "\x1b[" not in out and "\r" not in out         # a pipe gets plain lines, no colour
    assert (tmp_path / "pythia-chat.npz").is_file()


def test_no_command_means_train_chat_and_cwd_corpus_is_used(tmp_path):
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "model.txt").write_text("User: Hi\nPythia: Hi there!\n\n" * 20, encoding="utf-8")
    r = run(TINY, tmp_path, stdin="Hi\nexit\n")
    assert_ok(r)
    assert "input.txt" in r.stdout and "[bundled]" not in r.stdout
    assert "pythia> " in r.stdout and (tmp_path / "pythia-chat.npz").is_file()


def test_a_lone_input_txt_is_pointed_out_not_silently_ignored(tmp_path):
    (tmp_path / "input.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train", *TINY], tmp_path)
    assert_ok(r)
    assert "[bundled]" in r.stdout and "pass --data input.txt" in r.stdout


def test_chat_from_checkpoint_with_piped_input(trained):
    r = run(["chat", "--checkpoint", str(trained), "--seed", "1"], trained.parent, stdin="Hello\nquit\n")
    assert_ok(r)
    assert "trained 5 steps" in r.stdout and "you> Hello" in r.stdout and "pythia> " in r.stdout
    assert r.stdout.rstrip().endswith("Goodbye.")


def test_chat_survives_undecodable_input_and_an_ascii_terminal(trained):
    args = ["chat", "--checkpoint", str(trained), "--seed", "1"]
    r = run(args, trained.parent, stdin=b"H\xffello \xc3\xa9\nquit\n")
    assert_ok(r)
    assert "dropped 2 character(s)" in r.stdout          # the bad byte (as U+FFFD) and the e-acute
    assert "pythia> " in r.stdout and r.stdout.rstrip().endswith("Goodbye.")
    # an ASCII-only terminal: what it cannot show becomes '?', never an encoding crash
    r = run_subprocess(args, trained.parent, stdin=b"H\xc3\xa9llo\nquit\n", env={"PYTHONIOENCODING": "ascii"})
    assert_ok(r)
    assert "you> H??llo" in r.stdout and "pythia> " in r.stdout and "Goodbye." in r.stdout


def test_chat_ends_cleanly_at_end_of_input(trained):
    r = run(["chat", "--checkpoint", str(trained)], trained.parent, stdin="Hello\n")
    assert_ok(r)
    assert r.stdout.rstrip().endswith("Goodbye.")


def test_generate_is_the_models_own_seeded_sample(trained):
    """The CLI's output equals model.generate run here with the same seed and the CLI's defaults."""
    from pythia.formats.checkpoint import load_checkpoint
    args = ["generate", "--checkpoint", str(trained), "--prompt", "The sea", "--seed", "3",
            "--max-new-tokens", "40"]
    a, b = run(args, trained.parent), run(args, trained.parent)
    assert_ok(a)
    assert a.stdout == b.stdout
    ck = load_checkpoint(trained)
    ids = ck.tokenizer.encode("The sea")
    want = ck.tokenizer.decode(list(ck.model.generate(ids, 40, temperature=0.8, top_k=40, top_p=None,
                                                      rng=np.random.default_rng(3))))
    assert a.stdout == "The sea" + want + "\n"
    c = run(args[:-4] + ["--seed", "4", "--max-new-tokens", "40"], trained.parent)
    assert c.stdout != a.stdout
    d = run(args + ["--no-echo"], trained.parent)
    assert d.stdout == want + "\n"


def test_generate_greedy_passes_sampling_flags(trained):
    from pythia.formats.checkpoint import load_checkpoint
    r = run(["generate", "--checkpoint", str(trained), "--prompt", "Hello", "--temperature", "0",
             "--max-new-tokens", "12", "--no-echo"], trained.parent)
    assert_ok(r)
    ck = load_checkpoint(trained)
    want = ck.tokenizer.decode(list(ck.model.generate(ck.tokenizer.encode("Hello"), 12, temperature=0)))
    assert r.stdout == want + "\n"


def test_generate_drops_unknown_characters_with_a_notice(trained):
    r = run(["generate", "--checkpoint", str(trained), "--prompt", "Hello€", "--seed", "1",
             "--max-new-tokens", "5"], trained.parent)
    assert_ok(r)
    assert r.stdout.startswith("Hello") and "€" not in r.stdout
    assert "dropped 1 character" in r.stderr


def test_generate_into_a_closed_pipe_is_quiet(trained):
    env = subprocess_env()
    p = subprocess.Popen([sys.executable, "-m", "pythia", "generate", "--checkpoint", str(trained),
                          "--prompt", "Hello", "--max-new-tokens", "5000", "--seed", "1"],
                         cwd=trained.parent, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    p.stdout.read(3)
    p.stdout.close()
    err = p.stderr.read().decode()
    p.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_train_resume_continues_to_more_steps(tmp_path):
    from pythia.formats.checkpoint import load_checkpoint
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    assert_ok(run(["train", "--data", "c.txt", "--out", "a.npz", *TINY], tmp_path))
    r = run(["train", "--data", "c.txt", "--resume", "a.npz", "--steps", "8"], tmp_path)
    assert_ok(r)
    assert "resuming at step 5" in r.stdout and "updated in place" in r.stdout
    ck = load_checkpoint(tmp_path / "a.npz")
    assert ck.step == 8 and ck.model.config.d_model == 16 and ck.train_config["steps"] == 8


def test_log_file_gets_one_json_object_per_step(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    assert_ok(run(["train", "--data", "c.txt", "--out", "a.npz", "--log-file", "log.jsonl", *TINY], tmp_path))
    rows = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2, 3, 4, 5]
    for key in ("train_loss", "lr", "tokens_per_s", "elapsed_s"):
        assert all(key in row for row in rows)
    assert "val_loss" in rows[-1]


def test_kernels_flag_selects_and_reports_the_backend(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train", "--data", "c.txt", "--kernels", "numpy", *TINY], tmp_path)
    assert_ok(r)
    line = next(x for x in r.stdout.splitlines() if x.strip().startswith("kernels"))
    assert "numpy" in line


def test_help_teaches(tmp_path):
    r = run(["--help"], tmp_path)
    assert_ok(r)
    assert "train-chat" in r.stdout and "examples:" in r.stdout
    r = run(["train", "--help"], tmp_path)
    assert_ok(r)
    for flag in ("--data", "--steps", "--batch-size", "--block-size", "--d-model", "--n-layer", "--n-head",
                 "--lr", "--min-lr", "--warmup-steps", "--weight-decay", "--beta2", "--grad-clip",
                 "--eval-interval", "--eval-iters", "--seed", "--kernels", "--out", "--log-file", "--resume"):
        assert flag in r.stdout, flag
    assert "(default: 500)" in r.stdout and "(default: 8)" in r.stdout


# ---- GPT-2 weights (the tiny fixture made with Hugging Face transformers) ------------------------

def _transformers_greedy(k: int):
    """Prompt text and transformers' own greedy continuation, from the fixture's reference file."""
    from pythia.formats.gpt2 import load_gpt2
    _, tok = load_gpt2(GPT2)
    with np.load(GPT2 / "reference.npz", allow_pickle=False) as ref:
        prompt, greedy = ref[f"prompt_{k}"].tolist(), ref[f"greedy_{k}"].tolist()
    assert tok.encode(tok.decode(prompt)) == prompt
    return tok.decode(prompt), tok.decode(greedy), len(greedy)


@pytest.mark.skipif(not (GPT2 / "reference.npz").is_file(), reason="GPT-2 fixture missing")
@pytest.mark.parametrize("k", [0, 1])
def test_generate_with_gpt2_weights_matches_transformers_greedy(tmp_path, k):
    prompt, want, n = _transformers_greedy(k)
    args = ["--prompt", prompt, "--temperature", "0", "--max-new-tokens", str(n), "--no-echo"]
    r = run(["generate", "--gpt2", str(GPT2), *args], tmp_path)
    assert_ok(r)
    assert r.stdout == want + "\n"
    # the same through a converted checkpoint
    assert_ok(run(["convert-gpt2", str(GPT2), "--out", "g.npz"], tmp_path))
    r = run(["generate", "--checkpoint", "g.npz", *args], tmp_path)
    assert_ok(r)
    assert r.stdout == want + "\n" and "converted GPT-2" in r.stderr


@pytest.mark.skipif(not (GPT2 / "reference.npz").is_file(), reason="GPT-2 fixture missing")
def test_chat_with_gpt2_weights_and_piped_input(tmp_path):
    r = run(["chat", "--gpt2", str(GPT2), "--seed", "0", "--max-new-tokens", "8"], tmp_path,
            stdin="Hello, café 😀\nquit\n")
    assert_ok(r)
    assert "gpt2-bpe" in r.stdout and "you> Hello, café 😀" in r.stdout and "dropped" not in r.stdout
    assert r.stdout.count("pythia> ") == 1 and r.stdout.rstrip().endswith("Goodbye.")


# ---- files of the user's are never replaced -----------------------------------------------------

def test_existing_out_is_an_error_and_stays_untouched(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    precious = tmp_path / "mine.npz"
    precious.write_bytes(b"my precious bytes")
    r = run(["train", "--data", "c.txt", "--out", "mine.npz", *TINY], tmp_path)
    assert_one_line_error(r, "already exists")
    assert precious.read_bytes() == b"my precious bytes"
    assert_ok(run(["train", "--data", "c.txt", "--out", "mine.npz", "--force", *TINY], tmp_path))
    assert precious.read_bytes() != b"my precious bytes"


def test_default_checkpoint_name_steps_aside_from_an_existing_file(tmp_path):
    (tmp_path / "pythia-chat.npz").write_bytes(b"older model")
    r = run(["train-chat", *TINY], tmp_path, stdin="quit\n")
    assert_ok(r)
    assert (tmp_path / "pythia-chat.npz").read_bytes() == b"older model"
    assert (tmp_path / "pythia-chat-2.npz").is_file()
    assert "pythia-chat-2.npz" in r.stdout


def test_convert_gpt2_refuses_to_replace_out(tmp_path):
    (tmp_path / "g.npz").write_bytes(b"keep")
    assert_one_line_error(run(["convert-gpt2", "somewhere", "--out", "g.npz"], tmp_path), "already exists")
    assert (tmp_path / "g.npz").read_bytes() == b"keep"


# ---- bad input: one line, non-zero exit, no traceback -------------------------------------------

def _setup(tmp_path, trained):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "short.txt").write_text("tiny", encoding="utf-8")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 ".encode("latin-1") * 50)
    (tmp_path / "garbage.npz").write_bytes(b"this is not a checkpoint")
    data = trained.read_bytes()
    (tmp_path / "truncated.npz").write_bytes(data[: len(data) // 2])


BAD = [
    (["train", "--data", "missing.txt"], "does not exist"),
    (["train", "--data", "empty.txt"], "empty"),
    (["train", "--data", "short.txt"], "too short"),
    (["train", "--data", "latin1.txt"], "UTF-8"),
    (["train", "--data", "c.txt", "--steps", "0"], "--steps"),
    (["train", "--data", "c.txt", "--batch-size", "-2"], "--batch-size"),
    (["train", "--data", "c.txt", "--block-size", "0"], "--block-size"),
    (["train", "--data", "c.txt", "--n-layer", "zero"], "--n-layer"),
    (["train", "--data", "c.txt", "--d-model", "30", "--n-head", "4"], "divisible"),
    (["train", "--data", "c.txt", "--lr", "0.01", "--min-lr", "0.1"], "min-lr"),
    (["train", "--data", "c.txt", "--beta2", "1.5"], "--beta2"),
    (["train", "--data", "c.txt", "--kernels", "fast"], "--kernels"),
    (["train", "--data", "c.txt", "--frobnicate"], "unrecognized arguments"),
    (["train", "--data", "c.txt", "--out", "no/such/dir/m.npz"], "does not exist"),
    (["train", "--data", "c.txt", "--out", "."], "is a directory"),
    (["train", "--data", "c.txt", "--log-file", "no/such/dir/log.jsonl"], "does not exist"),
    (["train", "--data", "c.txt", "--resume", "model.npz", "--out", "garbage.npz", "--steps", "9"],
     "already exists"),
    (["train", "--data", "c.txt", "--resume", "missing.npz"], "does not exist"),
    (["train", "--data", "c.txt", "--resume", "garbage.npz"], "not a Pythia checkpoint"),
    (["trian"], "invalid choice"),
    (["PYTHIA_KERNELS=bogus", "train", "--data", "c.txt"], "PYTHIA_KERNELS"),
    (["chat"], "--model SRC"),
    (["chat", "--checkpoint", "missing.npz"], "does not exist"),
    (["chat", "--checkpoint", "garbage.npz"], "not a Pythia checkpoint"),
    (["chat", "--checkpoint", "truncated.npz"], "checkpoint"),
    (["chat", "--gpt2", "no-such-dir"], "no-such-dir"),
    (["chat", "--checkpoint", "x.npz", "--gpt2", "d"], "not allowed"),
    (["generate", "--checkpoint", "truncated.npz", "--prompt", "Hi"], "checkpoint"),
    (["generate", "--checkpoint", "garbage.npz"], "--prompt"),
    (["generate", "--checkpoint", "model.npz", "--prompt", "€€"], "--prompt"),
    (["generate", "--checkpoint", "model.npz", "--prompt", "Hi", "--top-p", "0"], "--top-p"),
    (["generate", "--checkpoint", "model.npz", "--prompt", "Hi", "--temperature", "-1"], "--temperature"),
    (["convert-gpt2", "no-such-dir", "--out", "g.npz"], "no-such-dir"),
]


@pytest.mark.parametrize("args, needle", BAD, ids=[" ".join(a) for a, _ in BAD])
def test_bad_input_is_one_clear_line(tmp_path, trained, args, needle):
    _setup(tmp_path, trained)
    (tmp_path / "model.npz").write_bytes(trained.read_bytes())
    before = sorted(p.name for p in tmp_path.iterdir())
    env = {}
    if args[0] == "PYTHIA_KERNELS=bogus":
        env, args = {"PYTHIA_KERNELS": "bogus"}, args[1:]
    r = run(args, tmp_path, env=env)
    assert_one_line_error(r, needle)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing written or removed


@pytest.mark.skipif(os.geteuid() == 0 if hasattr(os, "geteuid") else True,
                    reason="root can write to read-only directories")
def test_unwritable_directory_fails_before_training(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        r = run(["train", "--data", str(tmp_path / "c.txt"), *TINY], ro)
        assert_one_line_error(r, "not writable")
        assert "Training" not in r.stdout
    finally:
        ro.chmod(0o755)


def test_resume_with_a_different_shape_is_refused(tmp_path, trained):
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    (tmp_path / "m.npz").write_bytes(trained.read_bytes())
    r = run(["train", "--data", "c.txt", "--resume", "m.npz", "--d-model", "32", "--steps", "9"], tmp_path)
    assert_one_line_error(r, "--d-model")
    r = run(["train", "--data", "c.txt", "--resume", "m.npz"], tmp_path)   # already at its 5 steps
    assert_one_line_error(r, "--steps")
    assert (tmp_path / "m.npz").read_bytes() == trained.read_bytes()


def test_readme_configuration_table_matches_the_real_defaults():
    """README's flag table is what users read; it must not drift from the parser's defaults."""
    import re

    from pythia.cli import build_parser
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Configuration", 1)[1].split("\n## ", 1)[0]
    sub = build_parser()._subparsers._group_actions[0].choices["train"]
    defaults = {a.option_strings[0]: a.default for a in sub._actions if a.option_strings}
    checked = 0
    for flags, values in re.findall(r"^\| (`--[^|]+) \| ([^|]+) \|", section, re.M):
        names = re.findall(r"`(--[a-z0-9-]+)", flags)
        vals = [v.strip() for v in values.split(",")]
        if len(names) != len(vals) or not all(re.fullmatch(r"[0-9.e-]+", v) for v in vals):
            continue  # rows whose default is words (files, backends) are not numbers to compare
        for name, v in zip(names, vals):
            assert float(v) == float(defaults[name]), f"README says {name} {v}, the parser {defaults[name]}"
            checked += 1
    assert checked >= 12
