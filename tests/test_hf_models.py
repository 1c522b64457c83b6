"""Hugging Face chat-model folders end to end: --model detection, generate, chat through the
model's own template, convert to a checkpoint and back, and the refusals.

The references are transformers' own outputs on tiny random-weight folders built as SmolLM2-Instruct
(Llama, tied, BF16 file, ChatML), Qwen2.5-Instruct (q/k/v biases, default system prompt) and
TinyLlama-Chat (Metaspace tokenizer with BOS, Zephyr template): tests/fixtures/hf_models, made by
tests/fixtures/make_hf_model_fixtures.py. Logits agree within 1e-4 of their largest magnitude;
greedy token ids must be equal.
"""
from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import helpers
from helpers import assert_one_line_error
from pythia.chat import ChatSession, ChatSettings
from pythia.formats.source import open_model
from pythia.ui import ConsoleUI

FIXTURES = Path(__file__).parent / "fixtures" / "hf_models"
NAMES = ["smollm2", "qwen25", "tinyllama"]


def run_cli(args, stdin: str = ""):
    return helpers.run_cli(args, FIXTURES, stdin=stdin)


def expected(name: str) -> dict:
    return json.loads((FIXTURES / name / "expected.json").read_text(encoding="utf-8"))


def session(m, **settings) -> ChatSession:
    s = ChatSettings(temperature=0.0, max_new_tokens=24, **settings)
    return ChatSession(m.model, m.tokenizer, ui=ConsoleUI(io.StringIO(), color=False, live=False), settings=s,
                       stdin=io.StringIO(""), template=m.template, stop_ids=m.stop_ids)


@pytest.mark.parametrize("name", NAMES)
def test_folder_logits_prompt_ids_and_greedy_ids_equal_transformers(name):
    e, m = expected(name), open_model(FIXTURES / name)
    assert m.model.FAMILY == "llama"
    assert m.prompt_ids(e["prompt"]) == e["prompt_ids"]          # BOS as tokenizer(prompt) adds it
    cache = m.model.new_kv_cache()
    logits = m.model.forward_cached(np.array(e["prompt_ids"]), cache)
    want = np.array(e["last_logits"], np.float32)
    np.testing.assert_allclose(logits, want, atol=1e-4 * np.abs(want).max(), rtol=0)
    got = list(m.model.generate(e["prompt_ids"], len(e["greedy"]), temperature=0.0))
    assert got == e["greedy"]


@pytest.mark.parametrize("name", NAMES)
def test_chat_prompt_and_reply_equal_apply_chat_template_and_greedy_generation(name):
    e, m = expected(name), open_model(FIXTURES / name)
    for chat in e["chats"]:
        s = session(m)
        system = [c["content"] for c in chat["messages"] if c["role"] == "system"]
        user = chat["messages"][-1]["content"]
        s.format.system = system[0] if system else None
        assert s.format.prompt_ids(user, 10_000) == chat["prompt_ids"]
        reply = s.reply(user)
        assert s.last_ids == chat["reply"][:len(s.last_ids)] and len(s.last_ids) >= 20
        if "\ufffd" not in reply:    # invalid byte runs stream as U+FFFD per held group, not per byte
            assert reply == m.tokenizer.decode(s.last_ids).strip()
        assert s.format.messages[-1] == {"role": "assistant", "content": reply}


def test_generate_command_on_a_folder_prints_transformers_greedy_text():
    e = expected("smollm2")
    r = run_cli(["generate", "--model", str(FIXTURES / "smollm2"), "--prompt", e["prompt"], "--temperature", "0",
                 "--max-new-tokens", str(len(e["greedy"])), "--no-echo"])
    assert r.returncode == 0, r.stderr
    assert r.stdout == e["greedy_text"] + "\n"
    assert "llama weights from" in r.stderr
    cfg = json.loads((FIXTURES / "smollm2" / "config.json").read_text())
    assert f"{cfg['num_attention_heads']} heads / {cfg['num_key_value_heads']} kv" in r.stderr


def test_chat_command_with_piped_input_replies_as_transformers():
    e = expected("smollm2")
    chat = e["chats"][0]
    r = run_cli(["chat", "--model", str(FIXTURES / "smollm2"), "--temperature", "0", "--max-new-tokens", "24"],
                stdin=chat["messages"][-1]["content"] + "\nquit\n")
    assert r.returncode == 0, r.stderr
    want = expected_reply = open_model(FIXTURES / "smollm2").tokenizer.decode(chat["reply"]).strip()
    assert f"assistant> {want}\n" in r.stdout, (r.stdout, expected_reply)


def test_stop_id_ends_a_reply_and_is_not_shown():
    m = open_model(FIXTURES / "smollm2")
    e = expected("smollm2")
    first = e["chats"][0]["reply"]
    s = session(m)
    s.format.stop_ids = (first[3],)                                # the 4th greedy token ends the turn
    reply = s.reply(e["chats"][0]["messages"][-1]["content"])
    assert reply == m.tokenizer.decode(first[:3]).strip() and s.ended


def test_system_command_sets_and_clears_the_system_prompt():
    m = open_model(FIXTURES / "qwen25")
    s = session(m)
    s.command("/system Be brief.")
    ids = s.format.prompt_ids("Hi", 10_000)
    text = m.tokenizer.decode(ids)
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>\n") and "You are Qwen" not in text
    s.command("/system")
    assert "You are Qwen" in m.tokenizer.decode(s.format.prompt_ids("Hi", 10_000))  # the template's default


def test_long_conversations_drop_the_oldest_exchanges_first():
    m = open_model(FIXTURES / "smollm2")
    s = session(m)
    for k in range(6):
        s.format.record(f"question {k} " * 5, f"answer {k} " * 5)
    full = s.format.prompt_ids("last", 10_000)
    cut = s.format.prompt_ids("last", len(full) - 1)
    text = m.tokenizer.decode(cut)
    assert len(cut) < len(full) and "question 0" not in text and "question 5" in text and "last" in text
    assert text.startswith("<|im_start|>system\n")                 # the system turn stays


@pytest.mark.parametrize("name", ["smollm2", "tinyllama"])
def test_convert_keeps_weights_tokenizer_template_and_stop_ids(tmp_path, name):
    out = tmp_path / f"{name}.npz"
    r = run_cli(["convert", str(FIXTURES / name), "--out", str(out)])
    assert r.returncode == 0, r.stderr
    a, b = open_model(FIXTURES / name), open_model(out)
    assert np.array_equal(a.model.params_memory, b.model.params_memory)
    assert b.template == a.template and b.stop_ids == a.stop_ids and b.model.config == a.model.config
    e = expected(name)
    assert b.prompt_ids(e["prompt"]) == e["prompt_ids"]
    s = session(b)
    s.reply(e["chats"][0]["messages"][-1]["content"])
    assert s.last_ids == e["chats"][0]["reply"][:len(s.last_ids)] and len(s.last_ids) >= 20


def test_an_unrecognised_template_is_refused_and_chat_format_overrides_it(tmp_path):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "smollm2", folder)
    (folder / "chat_template.jinja").write_text("{{ messages }} made up", encoding="utf-8")
    r = run_cli(["chat", "--model", str(folder)], stdin="hi\n")
    assert_one_line_error(r, "--chat-format")
    r = run_cli(["chat", "--model", str(folder), "--chat-format", "chatml", "--temperature", "0",
                 "--max-new-tokens", "3"], stdin="hi\nquit\n")
    assert r.returncode == 0 and "assistant> " in r.stdout, r.stderr


@pytest.mark.parametrize("change, message", [
    (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                           "model_type": "mamba"})), "model_type"),
    (lambda f: (f / "tokenizer.json").unlink(), "tokenizer.json"),
    (lambda f: (f / "model.safetensors").unlink(), "safetensors"),
    (lambda f: (f / "config.json").write_text(json.dumps({**json.loads((f / "config.json").read_text()),
                                                           "hidden_size": 32})), "shape"),
])
def test_broken_folders_are_one_line_errors_and_write_nothing(tmp_path, change, message):
    folder = tmp_path / "m"
    shutil.copytree(FIXTURES / "smollm2", folder)
    change(folder)
    r = run_cli(["convert", str(folder), "--out", str(tmp_path / "x.npz")])
    assert_one_line_error(r, message)
    assert not (tmp_path / "x.npz").exists()
    r = run_cli(["generate", "--model", str(folder), "--prompt", "hi"])
    assert_one_line_error(r, message)


def test_a_folder_without_config_and_a_missing_path_say_what_model_takes(tmp_path):
    r = run_cli(["generate", "--model", str(tmp_path), "--prompt", "hi"])
    assert_one_line_error(r, "without config.json")
    r = run_cli(["generate", "--model", str(tmp_path / "nope"), "--prompt", "hi"])
    assert_one_line_error(r, "does not exist")


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """SmolLM2-shaped folder fine-tuned 6 steps on the bundled corpus, as `train --init-from` does."""
    home = tmp_path_factory.mktemp("ft")
    data = Path(__file__).resolve().parents[1] / "data" / "model.txt"
    r = helpers.run_cli(["train", "--init-from", str(FIXTURES / "smollm2"), "--data", str(data), "--steps", "6",
                         "--block-size", "32", "--eval-interval", "3", "--lr", "1e-3", "--out", "ft.npz"], home)
    assert r.returncode == 0, r.stderr
    return home


def test_finetuning_a_folder_moves_the_weights_and_keeps_the_chat_template(finetuned):
    base, ft = open_model(FIXTURES / "smollm2"), open_model(finetuned / "ft.npz")
    assert ft.checkpoint.step == 6 and ft.model.FAMILY == "llama" and ft.model.config == base.model.config
    assert ft.template == base.template and ft.stop_ids == base.stop_ids and ft.jinja == base.jinja
    moved = np.abs(ft.model.params_memory - base.model.params_memory)
    assert moved.max() > 1e-4 and np.isfinite(ft.model.params_memory).all()


def test_finetuning_refuses_a_size_that_contradicts_the_folder(tmp_path):
    (tmp_path / "x.txt").write_text("some text to train on\n" * 50)
    r = helpers.run_cli(["train", "--init-from", str(FIXTURES / "smollm2"), "--data", "x.txt", "--d-model", "32"],
                        tmp_path)
    assert_one_line_error(r, "--d-model 32 contradicts")


def test_export_of_a_finetuned_llama_reads_back_identically(finetuned, tmp_path):
    out = tmp_path / "hf"
    r = helpers.run_cli(["export", str(finetuned / "ft.npz"), "--out", str(out)], tmp_path)
    assert r.returncode == 0, r.stderr
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["tie_word_embeddings"] is True and cfg["eos_token_id"] == 2
    a, b = open_model(finetuned / "ft.npz"), open_model(out)
    assert np.array_equal(a.model.params_memory, b.model.params_memory) and b.template == a.template
    assert b.stop_ids == a.stop_ids and b.prompt_ids("Hi there") == a.prompt_ids("Hi there")


def test_transformers_loads_the_export_with_equal_logits(finetuned, tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    out = tmp_path / "hf"
    assert helpers.run_cli(["export", str(finetuned / "ft.npz"), "--out", str(out)], tmp_path).returncode == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(str(out)).eval()
    ids = [5, 77, 300, 12, 9, 640]
    with torch.no_grad():
        want = hf(torch.tensor([ids])).logits[0].numpy()
    got = open_model(finetuned / "ft.npz").model.forward(np.array([ids]))[0]
    np.testing.assert_allclose(got, want, atol=1e-4 * np.abs(want).max(), rtol=0)
    tok = transformers.AutoTokenizer.from_pretrained(str(out))
    chat = [{"role": "user", "content": "Hi"}]
    assert tok.apply_chat_template(chat, add_generation_prompt=True, tokenize=False) == \
        open_model(out).template.render(chat)


@pytest.mark.parametrize("name", NAMES)
def test_tokenize_reads_a_folders_tokenizer_and_counts_as_it_encodes(name):
    text = "Hello world, 12345 <|im_end|>"
    r = run_cli(["tokenize", "--model", str(FIXTURES / name), "--text", text])
    assert r.returncode == 0, r.stderr
    n = len(open_model(FIXTURES / name).tokenizer.encode(text))
    assert f"{n} tokens for {len(text)} characters (hf-bpe tokenizer" in r.stdout
