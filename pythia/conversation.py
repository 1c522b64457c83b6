"""How a chat keeps its conversation and frames the next prompt: the bundled corpus's dialogue
lines for models Pythia trained, or the model's own chat template for a chat model.

Both offer the same small interface to pythia.chat.ChatSession:

    fmt.prompt_ids(message, room) -> ids   the conversation so far plus message, ready for the
                                           model, at most `room` tokens long
    fmt.stop_strings, fmt.stop_ids         where a reply ends (text the reply must not contain, and
                                           token ids it ends at)
    fmt.record(message, reply)             add the finished exchange to the conversation
    fmt.reset(); fmt.system                forget the conversation; the system prompt (templates only)
"""
from __future__ import annotations

from typing import Any

USER, BOT = "User", "Pythia"      # speaker names used by data/model.txt
TURN_END = "\n\n"                 # the corpus separates exchanges with a blank line


class Dialogue:
    """`User: ...` / `Pythia: ...` lines with a blank line between exchanges (data/model.txt)."""

    supports_system = False

    def __init__(self, tokenizer: Any, user: str = USER, bot: str = BOT) -> None:
        self.tokenizer, self.user, self.bot = tokenizer, user, bot
        self.transcript = ""          # the conversation so far, in the corpus's dialogue format
        self.stop_strings = ("\n", f"{user}:", f"{bot}:")
        self.stop_ids: tuple[int, ...] = ()
        self.system = None

    def _known(self, text: str) -> str:
        filt = getattr(self.tokenizer, "filter", None)
        return text if filt is None else filt(text)[0]   # speaker tags may be unknown to a char model

    def prompt_ids(self, message: str, room: int) -> list[int]:
        text = self._known(self.transcript + f"{self.user}: {message}\n{self.bot}:")
        return self.tokenizer.encode(text)[-room:]

    def record(self, message: str, reply: str) -> None:
        self.transcript += f"{self.user}: {message}\n{self.bot}:" + reply.rstrip() + TURN_END
        if len(self.transcript) > 1 << 16:          # only the last block of tokens can matter
            self.transcript = self.transcript[-(1 << 15):]

    def reset(self) -> None:
        self.transcript = ""


class Templated:
    """A chat model's own template (pythia.formats.chat_template) over a list of messages."""

    supports_system = True

    def __init__(self, tokenizer: Any, template: Any, stop_ids: list[int]) -> None:
        self.tokenizer, self.template = tokenizer, template
        self.messages: list[dict] = []               # user and assistant turns, oldest first
        self.system: str | None = None               # None: the template's default system prompt
        self.stop_strings = tuple(template.stop_strings())
        self.stop_ids = tuple(stop_ids)

    def _encode(self, turns: list[dict]) -> list[int]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        text = self.template.render(head + turns, add_generation_prompt=True)
        return self.tokenizer.encode(text, add_special_tokens=False)   # the template wrote BOS if any

    def prompt_ids(self, message: str, room: int) -> list[int]:
        """The rendered conversation; when it is longer than room, the oldest exchanges are left
        out (the system prompt stays), and as a last resort the text is cut from the left."""
        turns = self.messages + [{"role": "user", "content": message}]
        ids = self._encode(turns)
        while len(ids) > room and len(turns) > 1:
            turns = turns[2:]                        # drop the oldest user/assistant pair
            ids = self._encode(turns)
        return ids[-room:]

    def record(self, message: str, reply: str) -> None:
        self.messages += [{"role": "user", "content": message}, {"role": "assistant", "content": reply.strip()}]

    def reset(self) -> None:
        self.messages = []
