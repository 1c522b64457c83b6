"""Presets, explain, plot and /probs through the command line (`pythia.cli.main`), and the preset values.

Models are tiny (a few steps) so the file runs in seconds; what is tested is the program around
them: a preset fills in what the flags leave out, the banner names it, --plot draws the logged
values, and each bad input is one `error:` line without a traceback.
"""
import json
import xml.etree.ElementTree as ET
from dataclasses import fields

import pytest

from helpers import TEXT, TINY_MODEL, assert_ok, run_cli as run
from pythia.formats.checkpoint import load_checkpoint
from pythia.model import PythiaConfig
from pythia.training.presets import PRESETS, get_preset
from pythia.train import TrainConfig

TINY = ["--steps", "6", *TINY_MODEL, "--eval-interval", "3"]


def assert_one_line_error(r, needle, status=None):
    assert r.returncode != 0 and (status is None or r.returncode == status), r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert "Traceback" not in r.stdout + r.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    d = tmp_path_factory.mktemp("presets")
    (d / "corpus.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train", "--data", "corpus.txt", "--out", "model.npz", "--log-file", "run.jsonl",
             "--plot", "loss.svg", *TINY], d)
    assert_ok(r)
    return d


# ---- preset values -------------------------------------------------------------------------------

def test_seed_preset_is_exactly_todays_defaults():
    defaults = {f.name: f.default for f in fields(TrainConfig)}
    defaults.update({f.name: f.default for f in fields(PythiaConfig) if f.name != "vocab_size"})
    assert get_preset("seed") == defaults
    assert {k: get_preset("seed")[k] for k in ("batch_size", "block_size", "d_model", "n_layer", "steps")} == \
        dict(batch_size=8, block_size=32, d_model=48, n_layer=3, steps=500)     # the seed's numbers


def test_every_preset_sets_every_training_flag_validly():
    keys = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(PythiaConfig)} - {"vocab_size"}
    for name, values in PRESETS.items():
        assert set(values) == keys, name
        TrainConfig(**{k: values[k] for k in values if k in {f.name for f in fields(TrainConfig)}}).validate()
        PythiaConfig(vocab_size=10, **{k: values[k] for k in ("block_size", "d_model", "n_layer", "n_head")}).validate()


def test_shakespeare_preset_is_nanogpts_cpu_recipe():
    assert get_preset("shakespeare") == dict(block_size=64, d_model=128, n_layer=4, n_head=4, steps=2000,
                                             batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100,
                                             weight_decay=0.1, beta2=0.99, grad_clip=1.0, eval_interval=250,
                                             eval_iters=20, seed=1337, grad_accum=1)


# ---- presets on the command line -----------------------------------------------------------------

def test_a_preset_fills_what_the_flags_leave_out_and_the_banner_names_it(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train", "--preset", "shakespeare", "--data", "corpus.txt", "--out", "s.npz", "--steps", "2",
             "--batch-size", "2", "--eval-iters", "1", "--n-layer", "1"], tmp_path)
    assert_ok(r)
    assert "preset" in r.stdout and "shakespeare  (your flags set --n-layer, --steps, --batch-size, --eval-iters)" \
        in r.stdout
    ck = load_checkpoint(tmp_path / "s.npz")
    c = ck.model.config
    assert (c.block_size, c.d_model, c.n_layer, c.n_head) == (64, 128, 1, 4)   # preset, but --n-layer given
    assert ck.step == 2 and ck.train_config["lr"] == 1e-3 and ck.train_config["batch_size"] == 2


def test_unknown_preset_lists_the_names(tmp_path):
    r = run(["train", "--preset", "large"], tmp_path)
    assert_one_line_error(r, "unknown preset 'large'; choose one of: seed, chat, shakespeare", status=2)


def test_resume_refuses_a_preset(trained):
    r = run(["train", "--resume", "model.npz", "--data", "corpus.txt", "--preset", "chat"], trained)
    assert_one_line_error(r, "--preset starts a new model")


# ---- --plot and plot -----------------------------------------------------------------------------

def polyline_vertices(svg_text, cls):
    root = ET.fromstring(svg_text)
    ns = {"s": "http://www.w3.org/2000/svg"}
    line = next(p for p in root.iterfind(".//s:polyline", ns) if p.get("class") == cls)
    return len(line.get("points").split())


def test_plot_flag_draws_the_logged_values(trained):
    from test_plot import assert_points, read_points
    logged = [json.loads(line) for line in (trained / "run.jsonl").read_text().splitlines()]
    pts = read_points((trained / "loss.svg").read_text(encoding="utf-8"))
    assert_points(pts["train"], [(r["step"], r["train_loss"]) for r in logged], 2e-3)
    assert_points(pts["val"], [(r["step"], r["val_loss"]) for r in logged if "val_loss" in r], 2e-3)


def test_plot_command_redraws_the_log_and_never_replaces_a_file_unasked(trained):
    r = run(["plot", "run.jsonl", "--out", "again.svg", "--log-y"], trained)
    assert_ok(r)
    assert "wrote again.svg (6 train and 2 val points)" in r.stdout
    assert polyline_vertices((trained / "again.svg").read_text(encoding="utf-8"), "train") == 6
    r = run(["plot", "run.jsonl", "--out", "again.svg"], trained)
    assert_one_line_error(r, "already exists and would be replaced")


def test_plot_into_a_missing_folder_fails_before_training(tmp_path):
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train", "--data", "corpus.txt", "--plot", "nowhere/loss.svg", *TINY], tmp_path)
    assert_one_line_error(r, "nowhere' does not exist")
    assert not list(tmp_path.glob("*.npz"))                                   # nothing was trained


# ---- explain and /probs --------------------------------------------------------------------------

def test_explain_prints_the_table_and_the_map(trained):
    r = run(["explain", "--checkpoint", "model.npz", "--text", "Hi sea", "--layer", "0", "--head", "1"], trained)
    assert_ok(r)
    assert r.stdout.startswith("6 token(s)") and " pos  token" in r.stdout and r.stderr == ""
    assert "attention · layer 0 · head 1" in r.stdout


@pytest.mark.parametrize("args, needle", [
    (["--layer", "1"], "--layer 1 is out of range: this model has 1 layer(s), numbered 0 to 0"),
    (["--head", "2"], "--head 2 is out of range: this model has 2 head(s) per layer"),
    (["--text", ""], "--text is empty"),
    (["--text", "é~"], "--text is empty (after dropping characters the vocabulary lacks)"),
])
def test_explain_bad_input_is_one_line(trained, args, needle):
    base = ["explain", "--checkpoint", "model.npz"] + (["--text", "Hello"] if "--text" not in args else [])
    r = run(base + args, trained)
    assert_one_line_error(r, needle)


def test_explain_drops_the_characters_the_vocabulary_lacks_with_a_notice(trained):
    r = run(["explain", "--checkpoint", "model.npz", "--text", "Hé~"], trained)
    assert_ok(r)
    assert r.stdout.startswith("1 token(s)")
    assert r.stderr.strip() == "note: dropped 2 character(s) the vocabulary lacks: '~é'"


def test_explain_of_a_long_text_says_it_explains_the_last_block(trained):
    r = run(["explain", "--checkpoint", "model.npz", "--text", "The sea is large and old"], trained)
    assert_ok(r)
    assert r.stderr.strip() == ("note: the text is 24 tokens and the model's context holds 8, so the last 8 "
                                "tokens are explained")
    assert r.stdout.startswith("8 token(s)")


def test_probs_on_a_pipe_says_what_it_shows_and_shows_a_table(trained):
    r = run(["chat", "--checkpoint", "model.npz", "--seed", "3", "--max-new-tokens", "12"], trained,
            stdin="/probs\nHello\n/help\nquit\n")
    assert_ok(r)
    assert "(probabilities on: the output is not a colour terminal, so each reply is followed by a compact " \
           "table" in r.stdout
    assert "least sure (top 5 candidates):" in r.stdout
    assert "probs on" in r.stdout                                           # /help shows the state


def test_train_chat_with_the_chat_preset_chats_at_the_presets_temperature(tmp_path):
    from pythia.training.presets import chat_sampling
    (tmp_path / "corpus.txt").write_text(TEXT, encoding="utf-8")
    r = run(["train-chat", "--preset", "chat", "--data", "corpus.txt", *TINY], tmp_path, stdin="/help\nquit\n")
    assert_ok(r)
    t = chat_sampling("chat")["temperature"]
    assert f"(the chat preset chats at temperature {t:g}; /temp changes it)" in r.stdout
    assert f"now: temperature {t:g}," in r.stdout
    assert chat_sampling("seed") == {} and chat_sampling(None) == {}      # the seed's chat is unchanged
