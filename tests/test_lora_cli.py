"""LoRA fine-tuning and conversation data as a user runs them (`pythia.cli.main`, in-process): the
flows end to end, and every bad input one `error:` line, a non-zero exit, nothing overwritten."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from helpers import GPT2, REPO, assert_ok, assert_one_line_error, run_cli as run

from pythia import layers
from pythia.formats.chat_template import ChatTemplate
from pythia.formats.checkpoint import load_checkpoint as load_raw
from pythia.formats.source import open_model
from pythia.training.chats import build_chat_dataset, encode_chat

SMOL = REPO / "tests" / "fixtures" / "hf_models" / "smollm2"
FT = ["--steps", "2", "--batch-size", "2", "--block-size", "32", "--eval-interval", "2", "--eval-iters", "1"]


def load_checkpoint(path):
    return load_raw(path, open_base=open_model)


def chat_line(q: str, a: str) -> str:
    return json.dumps({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]})


def sums(pairs) -> str:
    return "\n".join(chat_line(f"What is {a} plus {b}?", f"ANSWER: {a + b}.") for a, b in pairs) + "\n"


def snapshot(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    d = tmp_path_factory.mktemp("loracli")
    shutil.copytree(GPT2, d / "base")                            # a base of our own: the test may change it
    rng = np.random.default_rng(0)
    (d / "chats.jsonl").write_text(sums(rng.integers(1, 10, (60, 2)).tolist()), encoding="utf-8")
    (d / "notes.txt").write_text("the sea is calm today. " * 200, encoding="utf-8")
    return d


def test_lora_run_resume_and_a_changed_base_refused(work):
    r = run(["train", "--init-from", "base", "--lora", "4", "--data", "notes.txt", "--out", "a.npz", *FT], work)
    assert_ok(r)
    assert "LoRA" in r.stdout and "base frozen" in r.stdout
    ck = load_checkpoint(work / "a.npz")
    assert set(ck.model.params) == {n for n in ck.model.layout}   # the adapters alone are stored
    assert all(".lora_" in n for n in ck.model.params)
    assert (work / "a.npz").stat().st_size < 0.5 * (work / "base" / "model.safetensors").stat().st_size
    r = run(["train", "--resume", "a.npz", "--data", "notes.txt", "--steps", "3"], work)
    assert_ok(r)
    assert load_checkpoint(work / "a.npz").step == 3
    r = run(["generate", "--model", "a.npz", "--prompt", "the sea", "--max-new-tokens", "3"], work)
    assert_ok(r)
    # the base changes under the adapter: loading is refused in one line, the adapter kept
    shutil.copytree(work / "base", work / "base2")
    from pythia.formats.safetensors import load_safetensors, save_safetensors
    t = load_safetensors(work / "base" / "model.safetensors")
    k = next(n for n in t if n.endswith("c_attn.weight"))
    t[k] = t[k] + np.float32(0.01)
    save_safetensors(work / "base" / "model.safetensors", t)
    before = snapshot(work)
    r = run(["generate", "--model", "a.npz", "--prompt", "x"], work)
    assert_one_line_error(r, "content hash differs")
    assert snapshot(work) == before
    shutil.rmtree(work / "base")
    shutil.move(work / "base2", work / "base")


@pytest.mark.parametrize("args, needle", [
    (["--init-from", "base", "--lora", "0"], "--lora"),
    (["--init-from", "base", "--lora", "40"], "at most 32"),
    (["--init-from", "base", "--lora", "4", "--lora-targets", "q_proj"], "valid names: attn, mlp, c_attn, c_fc, c_proj"),
    (["--lora", "4"], "--init-from"),
    (["--init-from", "base", "--lora-alpha", "8"], "add --lora"),
    (["--resume", "a.npz", "--lora", "4"], "drop --lora"),
    (["--init-from", "base", "--lora", "4", "--data", "bad.jsonl"], "bad.jsonl line 2 is not JSON"),
    (["--init-from", "base", "--lora", "4", "--data", "nomsg.jsonl"], "lacks a \"messages\" list"),
    (["--init-from", "base", "--lora", "4", "--data", "role.jsonl"], "role 'bot'"),
    (["--init-from", "base", "--lora", "4", "--data", "noasst.jsonl"], "no conversation"),
])
def test_bad_lora_and_chat_input_is_one_line(work, args, needle):
    (work / "bad.jsonl").write_text(chat_line("a", "b") + "\n{not json\n")
    (work / "nomsg.jsonl").write_text('{"text": "hi"}\n')
    (work / "role.jsonl").write_text(json.dumps({"messages": [{"role": "bot", "content": "x"}]}) + "\n")
    (work / "noasst.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    if not (work / "a.npz").exists():
        assert_ok(run(["train", "--init-from", "base", "--lora", "4", "--data", "notes.txt", "--out", "a.npz", *FT], work))
    before = snapshot(work)
    data = [] if "--data" in args else ["--data", "notes.txt"]
    r = run(["train", *args, *data, "--out", "z.npz", *(FT if "--resume" not in args else [])], work)
    assert_one_line_error(r, needle)
    assert snapshot(work) == before


def test_conversation_masks_score_the_assistant_turns_only():
    """Against a hand-made reference: the ChatML text of each turn, encoded piece by piece."""
    m = open_model(SMOL)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
            {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye."}]
    ids, scored = encode_chat(msgs, m.template, m.tokenizer)
    enc = lambda s: m.tokenizer.encode(s, add_special_tokens=False)
    said = [enc("Hello!<|im_end|>\n"), enc("Goodbye.<|im_end|>\n")]
    assert m.tokenizer.decode([int(i) for i in ids]) == m.template.render(msgs, add_generation_prompt=False)
    runs = np.split(ids[scored], np.cumsum([len(s) for s in said])[:-1])
    assert [r.tolist() for r in runs] == said                     # exactly the assistant's text and end of turn
    assert m.tokenizer.token_id("<|im_end|>") in ids[scored].tolist()   # the end-of-turn token is learnt


def test_batches_pad_to_the_longest_and_truncate_from_the_left(tmp_path):
    m = open_model(GPT2)
    (tmp_path / "c.jsonl").write_text(chat_line("hi", "yes") + "\n" + chat_line("a " * 40, "no " * 3) + "\n"
                                      + json.dumps({"messages": [{"role": "user", "content": "x"}]}) + "\n")
    ds = build_chat_dataset([tmp_path / "c.jsonl"], 24, m.tokenizer)
    assert any("longer than the block" in n for n in ds.notes) and any("1 conversations without" in n for n in ds.notes)
    x, y = ds.get_batch("train", 6, np.random.default_rng(0))
    assert x.shape[1] == max(len(ids) - 1 for ids, _ in ds.train)  # padded to the longest picked
    assert len(ds.val[0][0]) == 25                                # cut from the left to T + 1 tokens
    assert m.tokenizer.decode([int(i) for i in ds.val[0][0][-4:]]).strip().endswith("no")
    for ids, scored in ds.train:
        text = m.tokenizer.decode([int(i) for i, s in zip(ids, scored) if s])
        assert text.strip() in ("yes", "no no no")                # the plain template's assistant lines
    assert (y == layers.IGNORE).any() and (y != layers.IGNORE).any()


def test_lora_on_a_chat_set_learns_its_reply_pattern(work):
    """Every reply in the set is "ANSWER: <sum>."; after a short LoRA run, chat answers held-out
    questions in that pattern (the fixture's random base never does)."""
    for src in ("base", "c.npz"):
        if src == "c.npz":
            r = run(["train", "--init-from", "base", "--lora", "8", "--lora-targets", "attn,mlp", "--data", "chats.jsonl",
                     "--steps", "40", "--lr", "1e-2", "--batch-size", "8", "--block-size", "64", "--eval-interval", "40",
                     "--eval-iters", "1", "--out", "c.npz"], work)
            assert_ok(r)
        replies = []
        for q in ("What is 3 plus 4?", "What is 8 plus 1?"):
            r = run(["chat", "--model", src, "--temperature", "0"], work, stdin=q + "\n")
            assert_ok(r)
            replies.append(r.stdout.split("pythia>")[-1].strip())
        if src == "base":
            assert not any(t.startswith("ANSWER:") for t in replies), replies
        else:
            assert all(t.startswith("ANSWER:") for t in replies), replies
    # a chat run resumes on its conversations: the loss keeps falling from where it stopped
    r = run(["train", "--resume", "c.npz", "--data", "chats.jsonl", "--steps", "45", "--log-file", "c.jsonl"], work)
    assert_ok(r)
    log = [json.loads(line)["train_loss"] for line in (work / "c.jsonl").read_text().splitlines()]
    assert len(log) == 5 and max(log) < 1.5                       # still the chat set's loss, not raw JSON text


def test_conversation_loss_matches_transformers_with_labels_masked():
    """tests/fixtures/lora_chat.npz: transformers' tokenizer and LlamaForCausalLM on the SmolLM2
    fixture, labels -100 outside the assistant's spans (found by character offsets): the same ids,
    the same scored tokens, the same loss within 1e-5."""
    f = np.load(REPO / "tests" / "fixtures" / "lora_chat.npz")
    m = open_model(SMOL)
    ids, scored = encode_chat(json.loads(str(f["messages"])), m.template, m.tokenizer)
    assert ids.tolist() == f["ids"].tolist()
    assert scored.tolist() == (f["labels"] != -100).tolist()
    targets = np.where(scored[1:], ids[1:], layers.IGNORE)[None]  # as ChatDataset.get_batch builds them
    assert abs(m.model.loss(ids[None, :-1], targets) - float(f["loss"])) < 1e-5
