"""The decoders of a `tokenizer.json`: each maps a list of token strings to a list of token strings,
and a file's "decoder" (or its Sequence) is a chain of them, as in Hugging Face's `tokenizers`.

    ByteLevel      GPT-2's printable characters back to bytes, then UTF-8 (invalid bytes -> U+FFFD)
    Replace        a literal string by another ("▁" -> " ")
    ByteFallback   runs of <0xXX> tokens to the text their bytes spell
    Fuse           all tokens into one
    Strip          up to `start` leading and `stop` trailing `content` characters of each token
    Metaspace      "▁" -> " ", dropping the first token's leading one unless prepend_scheme is never
"""
from __future__ import annotations

import re

from ..errors import GPT2Error
from .bpe import bytes_to_unicode

BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")
BYTE_DECODER = {c: b for b, c in bytes_to_unicode().items()}


def _dec_byte_level(spec: dict, tokens: list[str]) -> list[str]:
    # a token with a character outside the byte map (an added token) contributes its own UTF-8
    raw = b"".join(bytes(BYTE_DECODER[c] for c in t) if all(c in BYTE_DECODER for c in t)
                   else t.encode("utf-8") for t in tokens)
    return [raw.decode("utf-8", errors="replace")]


def _dec_replace(spec: dict, tokens: list[str]) -> list[str]:
    pat = spec.get("pattern", {})
    if "String" not in pat:
        raise GPT2Error("tokenizer.json: a Replace decoder with a regex pattern is not supported")
    return [t.replace(pat["String"], spec.get("content", "")) for t in tokens]


def _dec_byte_fallback(spec: dict, tokens: list[str]) -> list[str]:
    """Runs of <0xXX> tokens become the text their bytes spell; bytes that are not valid UTF-8
    become one U+FFFD per byte, as tokenizers' ByteFallback does."""
    out: list[str] = []
    run: list[int] = []

    def flush() -> None:
        if run:
            try:
                out.append(bytes(run).decode("utf-8"))
            except UnicodeDecodeError:
                out.extend("\ufffd" for _ in run)
            run.clear()
    for t in tokens:
        m = BYTE_TOKEN.fullmatch(t) if len(t) == 6 else None
        if m:
            run.append(int(m.group(1), 16))
        else:
            flush()
            out.append(t)
    flush()
    return out


def _dec_fuse(spec: dict, tokens: list[str]) -> list[str]:
    return ["".join(tokens)]


def _dec_strip(spec: dict, tokens: list[str]) -> list[str]:
    c, start, stop = spec.get("content", " "), int(spec.get("start", 0)), int(spec.get("stop", 0))
    out = []
    for t in tokens:
        i, j = 0, len(t)
        while i < min(start, len(t)) and t[i] == c:
            i += 1
        k = 0
        while k < stop and j > i and t[j - 1] == c:
            j -= 1
            k += 1
        out.append(t[i:j])
    return out


def _dec_metaspace(spec: dict, tokens: list[str]) -> list[str]:
    rep = spec.get("replacement", "\u2581")
    scheme = spec.get("prepend_scheme") or ("always" if spec.get("add_prefix_space", True) else "never")
    out = []
    for i, t in enumerate(tokens):
        if i == 0 and scheme != "never" and t.startswith(rep):
            t = t[len(rep):]
        out.append(t.replace(rep, " "))
    return out


DECODERS = {"ByteLevel": _dec_byte_level, "Replace": _dec_replace, "ByteFallback": _dec_byte_fallback,
             "Fuse": _dec_fuse, "Strip": _dec_strip, "Metaspace": _dec_metaspace}
