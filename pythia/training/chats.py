"""Conversations as training data: JSONL chats rendered with the model's chat template, the loss
on the assistant's turns only.

Each line of a .jsonl file is one conversation, the format OpenAI's and Hugging Face's tools use:

    {"messages": [{"role": "system" | "user" | "assistant", "content": "..."}, ...]}

A conversation is rendered by the model's ChatTemplate (for a model without one, Pythia's own
dialogue lines "User: ...\\nPythia: ...", the plain template). An assistant turn's tokens are the
text between the conversation up to it with the generation prompt, render(m[:i], True), and the
conversation including it, render(m[:i+1], False): its content and its end-of-turn marker. Only
those tokens are targets; every other target is layers.IGNORE. Segments are encoded one by one,
so a scored span never shares a token with the prompt before it.

A conversation longer than the block (T + 1 tokens) keeps its last T + 1 (the newest turns
matter most for what the model says next) and the dataset counts how many were cut; one without
an assistant turn teaches nothing and is skipped with a count (an error if none has one). A batch
is B random conversations padded on the right to the longest: inputs with id 0, targets IGNORE.
The last tenth of the conversations (at least one) validate; a single conversation serves both.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..errors import DataError
from ..layers import IGNORE

ROLES = ("system", "user", "assistant")


def is_chat_data(paths) -> bool:
    """True when every data file is .jsonl (conversations), False when none is; mixing is a DataError."""
    kinds = {Path(p).suffix.lower() == ".jsonl" for p in paths}
    if len(kinds) > 1:
        raise DataError("--data mixes .jsonl conversations with plain text files; train on one kind at a time")
    return kinds == {True}


def read_chats(path: Path) -> tuple[list[list[dict]], int]:
    """(conversations with an assistant turn, how many were skipped for having none); DataError
    naming the file and line of anything malformed."""
    from ..corpora.data import read_text
    chats, skipped = [], 0
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            obj = json.loads(line)
        except ValueError as e:
            raise DataError(f"{where} is not JSON ({e.msg}); each line must be one {{\"messages\": [...]}} object") from None
        msgs = obj.get("messages") if isinstance(obj, dict) else None
        if not isinstance(msgs, list):
            raise DataError(f"{where} lacks a \"messages\" list; each line must be {{\"messages\": [{{\"role\": "
                            f"\"user\", \"content\": \"...\"}}, ...]}}")
        for m in msgs:
            if not isinstance(m, dict) or m.get("role") not in ROLES:
                role = m.get("role") if isinstance(m, dict) else m
                raise DataError(f"{where} has a message with role {role!r}; roles are {', '.join(ROLES)}")
            if not isinstance(m.get("content"), str):
                raise DataError(f"{where} has a {m['role']} message whose content is not a string")
        if not any(m["role"] == "assistant" for m in msgs):
            skipped += 1
            continue
        chats.append([{"role": m["role"], "content": m["content"]} for m in msgs])
    return chats, skipped


def _encode(tokenizer, text: str) -> list[int]:
    if tokenizer.kind == "hf-bpe":
        return tokenizer.encode(text, add_special_tokens=False)  # the template writes BOS if any
    return tokenizer.encode(text)


def encode_chat(messages: list[dict], template, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """(ids (L,), scored (L,) bool): the rendered conversation and which tokens the assistant said."""
    pieces: list[tuple[str, bool]] = []
    done = ""
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = template.render(messages[:i], add_generation_prompt=True)
        upto = template.render(messages[:i + 1], add_generation_prompt=False)
        if not (before.startswith(done) and upto.startswith(before)):
            raise DataError(f"the chat template ({template.format}) does not render this conversation turn by turn "
                            f"(roles must alternate user/assistant for it)")
        pieces += [(before[len(done):], False), (upto[len(before):], True)]
        done = upto
    ids: list[int] = []
    scored: list[bool] = []
    for text, s in pieces:
        if text:
            t = _encode(tokenizer, text)
            ids += t
            scored += [s] * len(t)
    return np.array(ids, np.int64), np.array(scored, bool)


@dataclass
class ChatDataset:
    """Encoded conversations; get_batch as pythia.corpora.data.Dataset, targets IGNORE off the assistant."""
    train: list                           # [(ids (L,), scored (L,))]
    val: list
    block_size: int                       # T: longest rows (a batch is as long as its longest conversation)
    tokenizer: object
    files: list[Path] = field(default_factory=list)
    n_tokens: int = 0
    notes: list[str] = field(default_factory=list)   # what was cut or skipped, for the user

    def get_batch(self, split: Literal["train", "val"], batch_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) int64 (B, L), L the longest picked conversation's length - 1 (at most T)."""
        data = self.train if split == "train" else self.val
        picks = [data[i] for i in rng.integers(0, len(data), size=batch_size)]
        L = max(len(ids) for ids, _ in picks) - 1
        x = np.zeros((batch_size, L), np.int64)                   # padding id 0 (never scored)
        y = np.full((batch_size, L), IGNORE, np.int64)
        for b, (ids, scored) in enumerate(picks):
            n = len(ids) - 1
            x[b, :n] = ids[:-1]
            y[b, :n] = np.where(scored[1:], ids[1:], IGNORE)     # predict token t+1 only where the assistant said it
        return x, y


def build_chat_dataset(paths: list[Path], block_size: int, tokenizer, template=None) -> ChatDataset:
    """Read, render, encode and split the conversations of the .jsonl files at paths."""
    from ..formats.chat_template import ChatTemplate
    template = template if template is not None else ChatTemplate(format="plain")
    paths = [Path(p) for p in paths]
    chats, skipped = [], 0
    for p in paths:
        c, s = read_chats(p)
        chats += c
        skipped += s
    names = " + ".join(p.name for p in paths)
    if not chats:
        raise DataError(f"no conversation in {names} has an assistant turn ({skipped} without one); the loss counts "
                        f"only what the assistant says, so add assistant messages")
    encoded, cut = [], 0
    for msgs in chats:
        ids, scored = encode_chat(msgs, template, tokenizer)
        if len(ids) > block_size + 1:
            ids, scored = ids[-(block_size + 1):], scored[-(block_size + 1):]   # keep the newest turns
            cut += 1
        if scored[1:].any():
            encoded.append((ids, scored))
    if not encoded:
        raise DataError(f"after cutting to the block of {block_size} tokens no conversation in {names} keeps an "
                        f"assistant token; raise --block-size")
    notes = []
    if cut:
        notes.append(f"{cut} of {len(chats)} conversations are longer than the block ({block_size} tokens) and "
                     f"lose their beginning")
    if skipped:
        notes.append(f"{skipped} conversations without an assistant turn are skipped")
    n_val = max(1, len(encoded) // 10) if len(encoded) > 1 else 0
    train, val = encoded[:len(encoded) - n_val], encoded[len(encoded) - n_val:] or encoded
    return ChatDataset(train=train, val=val, block_size=block_size, tokenizer=tokenizer, files=paths,
                       n_tokens=sum(len(ids) for ids, _ in encoded), notes=notes)
