"""`python -m pythia tokenize`: how a tokenizer splits a text, token by token.

The text is printed once with the token boundaries visible (alternating colours on a terminal
that allows colour; `|` between tokens otherwise, e.g. through a pipe or with NO_COLOR), then
one line per token with its id and its text as a Python literal (a token that holds part of a
multi-byte character shows its bytes as \\x escapes), then the count.
"""
from __future__ import annotations

import unicodedata

from typing import TextIO

_BACKGROUNDS = ("\033[48;5;24m", "\033[48;5;58m", "\033[48;5;89m", "\033[48;5;22m")  # blue, olive, plum, green
_RESET = "\033[0m"


def token_bytes(tokenizer, i: int) -> bytes:
    """The bytes token i spells."""
    if hasattr(tokenizer, "decode_bytes"):
        return tokenizer.decode_bytes([i])
    return tokenizer.decode([i]).encode("utf-8")


def shown(piece: bytes) -> str:
    """A token's text for display: UTF-8 when it decodes, else its bytes escaped."""
    try:
        return repr(piece.decode("utf-8"))
    except UnicodeDecodeError:
        return repr(piece)[1:]                       # b'\xe2\x82' -> '\xe2\x82'


def is_control(c: str) -> bool:
    """A character a terminal acts on instead of showing: C0/C1 controls (ESC starts a screen
    command; U+009B is a one-character CSI) and the bidirectional overrides and isolates."""
    return unicodedata.category(c) == "Cc" or "\u202a" <= c <= "\u202e" or "\u2066" <= c <= "\u2069"


def escape_controls(text: str) -> str:
    """text with each control character written as its Python escape (ESC -> \\x1b), the rest as it is."""
    return "".join(repr(c)[1:-1] if is_control(c) else c for c in text)


def boundaries(pieces: list[bytes]) -> list[str]:
    """The tokens' texts, where tokens that each hold part of one character are shown together
    (byte-level BPE may split a character's UTF-8 bytes over several tokens)."""
    out, held = [], b""
    for p in pieces:
        held += p
        try:
            out.append(held.decode("utf-8"))
            held = b""
        except UnicodeDecodeError:
            if len(held) > 8:                        # not a split character: show it as it is
                out.append(held.decode("utf-8", "replace"))
                held = b""
    if held:
        out.append(held.decode("utf-8", "replace"))
    return out


def render(tokenizer, text: str, out: TextIO, color: bool) -> int:
    """Print the tokens of text to out; returns how many there are."""
    ids = tokenizer.encode(text)
    pieces = [token_bytes(tokenizer, i) for i in ids]
    segments = boundaries(pieces)
    if color:
        out.write("".join(f"{_BACKGROUNDS[k % len(_BACKGROUNDS)]}{s}{_RESET}" for k, s in enumerate(segments)) + "\n\n")
    else:
        out.write("|" + "|".join(segments) + "|\n\n")
    width = len(str(max(ids))) if ids else 1
    for i, p in zip(ids, pieces):
        out.write(f"  {i:>{width}}  {shown(p)}\n")
    out.write(f"{len(ids)} token{'s' if len(ids) != 1 else ''} for {len(text)} character"
              f"{'s' if len(text) != 1 else ''} ({tokenizer.kind} tokenizer, {tokenizer.vocab_size:,} tokens)\n")
    return len(ids)
