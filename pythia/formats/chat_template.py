"""Chat templates of Hugging Face folders, recognised by their text and rendered by Pythia itself
(no Jinja engine): the same string transformers' apply_chat_template(messages, tokenize=False,
add_generation_prompt=...) gives for these templates.

    chatml   <|im_start|>{role}\\n{content}<|im_end|>\\n per message; generation prompt
             <|im_start|>assistant\\n. A default system turn first when the template has one
             (SmolLM2: "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
             Qwen2.5: "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.") and the
             conversation does not start with a system message. Stops at <|im_end|> (or eos).
    llama2   {bos}[INST] {user} [/INST] {assistant} {eos} ..., the system message inside the first
             user turn as <<SYS>>\\n{system}\\n<</SYS>>\\n\\n; contents stripped; roles alternate.
             Stops at eos.
    zephyr   <|{role}|>\\n{content}{eos}\\n per message (TinyLlama-Chat, Zephyr); generation
             prompt <|assistant|>\\n. Stops at eos.
    plain    Pythia's own transcript: "User: {content}\\nPythia: {content}\\n"; a system message is
             a first line of its own; generation prompt "Pythia:". Stops at "\\nUser:".

A template none of these matches is refused with one line that names --chat-format.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError

FORMATS = ("chatml", "llama2", "zephyr", "plain")
CHOOSE = f"--chat-format {{{','.join(FORMATS)}}}"
# the literal default system prompt of a ChatML template: '<|im_start|>system\n' + TEXT + '<|im_end|>'
# inside one Jinja string (a real newline or the two characters \n)
_DEFAULT_SYSTEM = re.compile(r"<\|im_start\|>system(?:\n|\\n)([^'\"{}+\\]+?)<\|im_end\|>")


@dataclass
class ChatTemplate:
    format: str                        # one of FORMATS
    bos_token: str | None = None
    eos_token: str | None = None
    default_system: str | None = None  # chatml: the system turn added when none is given
    system_always: bool = False        # chatml: that turn even for no messages (Qwen2.5 writes it
                                       # before its message loop, SmolLM2 inside it)

    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        """The prompt text of messages ([{"role": "system"|"user"|"assistant", "content": str}])."""
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("role"), str) or not isinstance(m.get("content"), str):
                raise ValueError("messages must be a list of {'role': str, 'content': str} objects")
        return getattr(self, "_" + self.format)(messages, add_generation_prompt)

    def stop_strings(self) -> list[str]:
        """The end-of-turn token(s) a reply stops at, most specific first."""
        if self.format == "plain":
            return ["\nUser:"]
        stops = ["<|im_end|>"] if self.format == "chatml" else []
        if self.eos_token and self.eos_token not in stops:
            stops.append(self.eos_token)
        return stops

    # ---- renderers -------------------------------------------------------------------------
    def _chatml(self, messages: list[dict], gen: bool) -> str:
        out = []
        if self.default_system is not None and (not messages or messages[0]["role"] != "system") \
                and (messages or self.system_always):
            out.append(f"<|im_start|>system\n{self.default_system}<|im_end|>\n")
        out += [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
        if gen:
            out.append("<|im_start|>assistant\n")
        return "".join(out)

    def _llama2(self, messages: list[dict], gen: bool) -> str:
        system = None
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"], messages[1:]
        bos, eos, out = self.bos_token or "", self.eos_token or "", []
        for i, m in enumerate(messages):
            if (m["role"] == "user") != (i % 2 == 0):
                raise ValueError("Conversation roles must alternate user/assistant/user/assistant/...")
            content = m["content"]
            if i == 0 and system is not None:
                content = f"<<SYS>>\n{system}\n<</SYS>>\n\n{content}"
            if m["role"] == "user":
                out.append(f"{bos}[INST] {content.strip()} [/INST]")
            elif m["role"] == "assistant":
                out.append(f" {content.strip()} {eos}")
        return "".join(out)

    def _zephyr(self, messages: list[dict], gen: bool) -> str:
        eos, out = self.eos_token or "", []
        for i, m in enumerate(messages):
            if m["role"] in ("user", "system", "assistant"):
                out.append(f"<|{m['role']}|>\n{m['content']}{eos}\n")
            if i == len(messages) - 1 and gen:
                out.append("<|assistant|>\n")
        return "".join(out)

    def _plain(self, messages: list[dict], gen: bool) -> str:
        names = {"user": "User: ", "assistant": "Pythia: ", "system": ""}
        out = [f"{names.get(m['role'], m['role'] + ': ')}{m['content']}\n" for m in messages]
        if gen:
            out.append("Pythia:")
        return "".join(out)


def recognise_template(template: str) -> tuple[str, str | None, bool] | None:
    """(format, default system prompt, system turn written outside the message loop) of a Jinja
    chat template's text, or None when it is none Pythia renders."""
    if "<|im_start|>" in template and "<|im_end|>" in template:
        m = _DEFAULT_SYSTEM.search(template)
        outside = m is not None and template.find("for message in messages") > m.start()
        return "chatml", (m.group(1) if m else None), outside
    if "[INST]" in template and "<<SYS>>" in template and "bos_token" in template:
        return "llama2", None, False
    if "<|user|>" in template and "<|assistant|>" in template and "eos_token" in template:
        return "zephyr", None, False
    return None


def _token_text(v: object) -> str | None:
    """A tokenizer_config.json token entry: a string, or {"content": str, ...} in older files."""
    if isinstance(v, dict):
        v = v.get("content")
    return v if isinstance(v, str) else None


def read_tokenizer_config(folder: str | os.PathLike) -> dict:
    """folder/tokenizer_config.json as a dict ({} when absent), with the text of chat_template.jinja
    as its chat_template when the JSON has none; ConfigError when it is not JSON."""
    path = Path(folder) / "tokenizer_config.json"
    if not path.is_file():
        return {}
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(f"{path} is not readable JSON ({e}); download it again") from None
    if not isinstance(obj, dict):
        raise ConfigError(f"{path} must hold a JSON object")
    jinja = Path(folder) / "chat_template.jinja"   # newer folders keep the template in a file of its own
    if "chat_template" not in obj and jinja.is_file():
        try:
            obj["chat_template"] = jinja.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise ConfigError(f"{jinja} is not readable UTF-8 text ({e}); download it again") from None
    return obj


def chat_template_from_config(config: dict, chat_format: str | None = None, where: str = "tokenizer_config.json"
                              ) -> ChatTemplate:
    """The ChatTemplate of a parsed tokenizer_config.json; chat_format (one of FORMATS) overrides
    the recognised template. ConfigError when there is no template or it is not recognised."""
    bos, eos = _token_text(config.get("bos_token")), _token_text(config.get("eos_token"))
    template = config.get("chat_template")
    if isinstance(template, list):              # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default")
    found = recognise_template(template) if isinstance(template, str) else None
    if chat_format is not None:
        if chat_format not in FORMATS:
            raise ConfigError(f"--chat-format {chat_format!r} is not one of {', '.join(FORMATS)}")
        default = found[1] if found and found[0] == chat_format else None
        return ChatTemplate(chat_format, bos, eos, default, bool(default is not None and found[2]))
    if not isinstance(template, str):
        raise ConfigError(f"{where} has no chat_template; choose one with {CHOOSE}")
    if found is None:
        raise ConfigError(f"{where}: the chat template is not one Pythia recognises; choose one with {CHOOSE}")
    return ChatTemplate(found[0], bos, eos, found[1], found[2])


def load_chat_template(folder: str | os.PathLike, chat_format: str | None = None) -> ChatTemplate:
    """The chat template of a Hugging Face folder (its tokenizer_config.json)."""
    path = Path(folder) / "tokenizer_config.json"
    return chat_template_from_config(read_tokenizer_config(folder), chat_format, str(path))
