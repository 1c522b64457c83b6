"""Chat templates: Pythia's renderings equal transformers' apply_chat_template on the real templates
(fixture made by tests/fixtures/make_hf_chat_fixtures.py; live when transformers is importable),
recognition by text, stop tokens, and a clear refusal of templates Pythia does not know."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pythia.errors import ConfigError
from pythia.formats.chat_template import ChatTemplate, chat_template_from_config, load_chat_template

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from hf_templates import TEMPLATES  # noqa: E402

RENDERS = json.loads((FIXTURES / "hf_chat" / "renders.json").read_text("utf-8"))


def template(name: str, bos: str | None, eos: str | None) -> ChatTemplate:
    return chat_template_from_config({"chat_template": TEMPLATES[name], "bos_token": bos, "eos_token": eos})


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_renders_equal_transformers_apply_chat_template(name):
    entries = [e for e in RENDERS if e["template"] == name]
    assert len(entries) == 16
    for e in entries:
        t = template(name, e["bos"], e["eos"])
        if e.get("error"):
            with pytest.raises(ValueError, match="alternate"):
                t.render(e["messages"], e["add_generation_prompt"])
        else:
            assert t.render(e["messages"], e["add_generation_prompt"]) == e["text"], e["messages"]


@pytest.mark.parametrize("name, fmt, system", [
    ("smollm2", "chatml", "You are a helpful AI assistant named SmolLM, trained by Hugging Face"),
    ("qwen25", "chatml", "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."),
    ("llama2", "llama2", None),
    ("zephyr", "zephyr", None),
])
def test_templates_are_recognised_with_their_default_system_prompt(name, fmt, system):
    t = template(name, "<s>", "</s>")
    assert (t.format, t.default_system) == (fmt, system)


def test_stop_strings_are_the_end_of_turn_token_then_eos():
    assert template("smollm2", "<|im_start|>", "<|im_end|>").stop_strings() == ["<|im_end|>"]
    assert template("qwen25", None, "<|endoftext|>").stop_strings() == ["<|im_end|>", "<|endoftext|>"]
    assert template("zephyr", "<s>", "</s>").stop_strings() == ["</s>"]
    assert template("llama2", "<s>", "</s>").stop_strings() == ["</s>"]


def test_folder_template_with_token_objects_and_a_chosen_format(tmp_path):
    cfg = {"chat_template": TEMPLATES["llama2"], "bos_token": {"content": "<s>", "lstrip": False},
           "eos_token": {"content": "</s>"}}
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(cfg), "utf-8")
    t = load_chat_template(tmp_path)
    assert t.render([{"role": "user", "content": " hi "}]) == "<s>[INST] hi [/INST]"
    assert load_chat_template(tmp_path, "zephyr").render([{"role": "user", "content": "hi"}]) == \
        "<|user|>\nhi</s>\n<|assistant|>\n"
    plain = load_chat_template(tmp_path, "plain")
    assert plain.render([{"role": "user", "content": "hi"}]) == "User: hi\nPythia:"


def test_unrecognised_or_missing_template_names_the_chat_format_flag(tmp_path):
    with pytest.raises(ConfigError, match=r"--chat-format \{chatml,llama2,zephyr,plain\}"):
        chat_template_from_config({"chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}"})
    with pytest.raises(ConfigError, match="has no chat_template.*--chat-format"):
        load_chat_template(tmp_path)
    with pytest.raises(ConfigError, match="not one of"):
        load_chat_template(tmp_path, "vicuna")
    (tmp_path / "tokenizer_config.json").write_text("{not json", "utf-8")
    with pytest.raises(ConfigError, match="not readable JSON"):
        load_chat_template(tmp_path)


def test_renders_equal_transformers_live_on_more_conversations():
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    convs = [[{"role": "system", "content": "  Be brief.  "}, {"role": "user", "content": "\n2+2?\n"},
              {"role": "assistant", "content": " 4 "}, {"role": "user", "content": "x" * 50}],
             [{"role": "user", "content": ""}]]
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    for name in TEMPLATES:
        hf = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>")
        hf.chat_template = TEMPLATES[name]
        for messages in convs:
            for gen in (True, False):
                want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=gen)
                assert template(name, "<s>", "</s>").render(messages, gen) == want
