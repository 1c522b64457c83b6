"""A request's messages or prompt as the model's token ids, and where its reply must end.

A chat model (a Hugging Face folder, or a checkpoint that records a template) renders the messages
with its own chat template, exactly as apply_chat_template does, and its reply ends at the
template's end-of-turn token. A model Pythia trained speaks the bundled corpus's dialogue lines
(pythia.conversation): "User: ...\\nPythia: ...\\n\\n" per exchange, then "User: {last}\\nPythia:";
its reply ends at a new line or a speaker tag, and starts after the space the corpus puts there.
System messages have no place in that format and are left out.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..conversation import BOT, TURN_END, USER, Dialogue
from .openai_schema import APIError


@dataclass
class Prompt:
    ids: list[int]
    stop_ids: frozenset           # token ids the reply ends at (not part of it)
    stop_strings: tuple           # text the reply ends before
    lstrip: bool = False          # drop the whitespace the format puts before a reply


def _known(tokenizer, text: str) -> str:
    """text without the characters a character vocabulary lacks (byte-level BPE keeps everything)."""
    filt = getattr(tokenizer, "filter", None)
    return text if filt is None else filt(text)[0]


def chat_prompt(loaded, messages: list[dict], stop: list[str]) -> Prompt:
    tok, template = loaded.tokenizer, loaded.template
    if template is not None:
        try:
            text = template.render(messages, add_generation_prompt=True)
        except ValueError as e:                       # e.g. llama2's roles must alternate
            raise APIError(400, f"the model's chat template cannot render these messages: {e}",
                           param="messages") from None
        kwargs = {"add_special_tokens": False} if tok.kind == "hf-bpe" else {}
        ids = tok.encode(text, **kwargs)              # the template wrote BOS if the model has one
        return Prompt(ids, frozenset(loaded.stop_ids), tuple(template.stop_strings()) + tuple(stop))
    turns = [m for m in messages if m["role"] != "system"]
    if not turns or turns[-1]["role"] != "user":
        raise APIError(400, "the last message must be the user's: this model's dialogue format "
                            "continues a user turn", param="messages")
    text = ""
    for m in turns[:-1]:
        text += (f"{USER}: {m['content']}\n" if m["role"] == "user" else f"{BOT}: {m['content'].strip()}{TURN_END}")
    text += f"{USER}: {turns[-1]['content']}\n{BOT}:"
    ids = tok.encode(_known(tok, text))
    return Prompt(ids, frozenset(), Dialogue(tok).stop_strings + tuple(stop), lstrip=True)


def completion_prompt(loaded, prompt: str | list[int], stop: list[str]) -> Prompt:
    V = loaded.model.config.vocab_size
    if isinstance(prompt, list):
        bad = [t for t in prompt if not 0 <= t < V]
        if bad:
            raise APIError(400, f"prompt token {bad[0]} is outside the vocabulary [0, {V})", param="prompt")
        ids = prompt
    else:
        ids = loaded.prompt_ids(_known(loaded.tokenizer, prompt))
    return Prompt(list(ids), frozenset(loaded.stop_ids), tuple(stop))


def fit(prompt: Prompt, max_tokens: int | None, block_size: int, param: str) -> int:
    """The reply's length limit: max_tokens capped at the room the context leaves; 400 when the
    prompt leaves none."""
    n = len(prompt.ids)
    if n == 0:
        raise APIError(400, "the prompt is empty after dropping the characters this model's vocabulary lacks",
                       param=param)
    if n >= block_size:
        raise APIError(400, f"the prompt is {n} tokens and the model's context is {block_size}: "
                            f"{n - block_size + 1} tokens too many (a reply needs at least one position); "
                            f"shorten the {param}", param=param, code="context_length_exceeded")
    room = block_size - n
    return room if max_tokens is None else min(max_tokens, room)
