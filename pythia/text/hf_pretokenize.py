"""The text-splitting stages of a `tokenizer.json` (Hugging Face's `tokenizers` format): normalizers
and pre-tokenizers, with the file's Oniguruma regexes translated for Python's `re`.

A piece of text travels as (text, at_start): at_start says the piece begins at offset 0 of the
original input, which Metaspace's prepend_scheme "first" needs. Each stage maps a list of pieces
to a list of pieces, as `tokenizers` does, so a Sequence is a loop over its members.

Regex translation: `re` has no \\p{..}; \\p{L}, \\p{N}, \\p{Lu}, ... become explicit character
classes built from `unicodedata` general categories (as pythia.text.bpe does for GPT-2's pattern),
and \\s / \\S become Unicode White_Space (the \\s of Oniguruma and of Rust's regex), not Python's.
(?i:...), lookahead and possessive quantifiers mean the same in both engines. The classes follow
the running Python's Unicode version: a character assigned in a later version (Rust's tables are
usually newer) is "unassigned" here and may be split differently from `tokenizers`.
"""
from __future__ import annotations

import functools
import re
import sys
import unicodedata

from ..errors import GPT2Error
from .bpe import _WHITESPACE, _class_body, bytes_to_unicode

Piece = tuple[str, bool]    # (text, starts at offset 0 of the input)

GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"


@functools.cache
def _categories() -> dict[str, list[tuple[int, int]]]:
    """General category (two letters) -> its runs of consecutive code points [lo, hi], over all of
    Unicode (built once). Runs, not code points: a few thousand pairs instead of 1.1 million ints
    (a list of every code point would keep about 45 MB alive for the life of the process)."""
    out: dict[str, list[tuple[int, int]]] = {}
    category = unicodedata.category
    lo, cat = 0, category(chr(0))
    for cp in range(1, sys.maxunicode + 2):
        c = category(chr(cp)) if cp <= sys.maxunicode else None
        if c != cat:                                          # the run of cat ends at cp - 1
            out.setdefault(cat, []).append((lo, cp - 1))
            lo, cat = cp, c
    return out


@functools.cache
def unicode_class(name: str) -> str:
    """Class body (no brackets) for \\p{name}: a one-letter major class (L, N, P...) or a category."""
    cats = _categories()
    if len(name) == 1:
        runs = sorted(r for c, rs in cats.items() if c[0] == name for r in rs)
    elif name in cats:
        runs = cats[name]
    else:
        raise GPT2Error(f"tokenizer.json: the regex uses \\p{{{name}}}, a Unicode class Pythia does not translate")
    merged: list[list[int]] = []                              # runs of different categories that touch join
    for lo, hi in runs:
        if merged and merged[-1][1] + 1 == lo:
            merged[-1][1] = hi
        else:
            merged.append([lo, hi])
    return "".join(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}" for lo, hi in merged)


_SPACE = _class_body(sorted(map(ord, _WHITESPACE)))
_TOKEN = re.compile(r"\\[pP]\{([A-Za-z_&]+)\}|\\[pP]([A-Za-z])|\\.|\[\^?|\]|.", re.S)


@functools.lru_cache(maxsize=32)
def translate_regex(pattern: str) -> re.Pattern[str]:
    """A tokenizers/Oniguruma regex as a compiled Python `re` pattern with the same matches."""
    out, in_class = [], False
    for m in _TOKEN.finditer(pattern):
        t = m.group(0)
        prop = m.group(1) or m.group(2)
        if prop:
            negated = t[1] == "P"
            body = unicode_class({"Letter": "L", "Number": "N"}.get(prop, prop))
            if in_class and negated:
                raise GPT2Error(f"tokenizer.json: the regex {pattern!r} negates \\P{{{prop}}} inside a class, "
                                "which Pythia does not translate")
            out.append(body if in_class else f"[{'^' if negated else ''}{body}]")
        elif t == r"\s":
            out.append(_SPACE if in_class else f"[{_SPACE}]")
        elif t == r"\S":
            if in_class:
                raise GPT2Error(f"tokenizer.json: the regex {pattern!r} uses \\S inside a class, which Pythia "
                                "does not translate")
            out.append(f"[^{_SPACE}]")
        elif t.startswith("[") and not in_class:
            in_class = True
            out.append(t)
        elif t == "]" and in_class and not (out and out[-1] in ("[", "[^")):
            in_class = False
            out.append(t)
        else:
            out.append(t)
    try:
        return re.compile("".join(out))
    except re.error as e:
        raise GPT2Error(f"tokenizer.json: the regex {pattern!r} does not translate to Python ({e})") from None


# ---- splitting ---------------------------------------------------------------------------------
@functools.lru_cache(maxsize=32)
def _capturing(pattern: re.Pattern[str]) -> re.Pattern[str]:
    """pattern as one capturing group, for re.split."""
    return re.compile(f"({pattern.pattern})", pattern.flags)


def split_pieces(pieces: list[Piece], pattern: re.Pattern[str], behavior: str) -> list[Piece]:
    """Split each piece at the matches of pattern, as tokenizers' SplitDelimiterBehavior does:
    Isolated (matches are pieces), Removed (dropped), MergedWithPrevious / MergedWithNext
    (joined to the text before / after), Contiguous (consecutive matches form one piece)."""
    out: list[Piece] = []
    splitter = _capturing(pattern) if behavior == "Isolated" and pattern.groups == 0 else None
    for text, at_start in pieces:
        if splitter is not None:
            # Isolated in C: re.split with the whole pattern captured gives gap, match, gap, ...
            parts = splitter.split(text)
            if "" not in parts[1::2]:                       # (an empty match needs the loop below)
                for part in parts:
                    if part:
                        out.append((part, at_start))       # the first non-empty part starts at 0
                        at_start = False
                continue
        spans: list[tuple[int, int, bool]] = []            # (begin, end, is_match)
        last = 0
        for m in pattern.finditer(text):
            b, e = m.span()
            if b == e:
                continue
            if b > last:
                spans.append((last, b, False))
            spans.append((b, e, True))
            last = e
        if last < len(text):
            spans.append((last, len(text), False))
        if behavior == "Removed":
            spans = [sp for sp in spans if not sp[2]]
        elif behavior in ("MergedWithPrevious", "MergedWithNext", "Contiguous"):
            # a match joins its neighbour (previous / next piece, or the match before it); a match
            # right after another match stands alone, as in tokenizers' fold over the matches
            backward = behavior == "MergedWithNext"
            res: list[tuple[int, int, bool]] = []
            prev = False
            for b, e, is_match in (reversed(spans) if backward else spans):
                if behavior == "Contiguous" and is_match and prev:
                    res[-1] = (res[-1][0], e, True)
                elif behavior != "Contiguous" and is_match and not prev and res:
                    res[-1] = (b, res[-1][1], False) if backward else (res[-1][0], e, False)
                else:
                    res.append((b, e, is_match))
                prev = is_match
            spans = res[::-1] if backward else res
        merged = spans
        out.extend((text[b:e], at_start and b == 0) for b, e, _ in merged)
    return out


# ---- normalizers -------------------------------------------------------------------------------
def make_normalizer(spec: dict | None):
    """A function str -> str for a tokenizer.json "normalizer" object (None: identity)."""
    if spec is None:
        return lambda s: s
    kind = spec.get("type")
    if kind == "Sequence":
        parts = [make_normalizer(n) for n in spec.get("normalizers", [])]

        def seq(s: str) -> str:
            for f in parts:
                s = f(s)
            return s
        return seq
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return lambda s: unicodedata.normalize(kind, s)
    if kind == "Lowercase":
        return str.lower
    if kind == "Prepend":
        pre = spec["prepend"]
        return lambda s: pre + s if s else s
    if kind == "Replace":
        pat, content = spec.get("pattern", {}), spec.get("content", "")
        if "String" in pat:
            return lambda s: s.replace(pat["String"], content)
        rx = translate_regex(pat["Regex"])
        return lambda s: rx.sub(lambda m: content, s)
    raise GPT2Error(f"tokenizer.json: normalizer {kind!r} is not supported; Pythia reads NFC/NFD/NFKC/NFKD, "
                    "Lowercase, Prepend, Replace and Sequence")


# ---- pre-tokenizers ----------------------------------------------------------------------------
def make_pre_tokenizer(spec: dict | None):
    """A function list[Piece] -> list[Piece] for a tokenizer.json "pre_tokenizer" object.
    ByteLevel also maps each piece's UTF-8 bytes to GPT-2's printable characters."""
    if spec is None:
        return lambda pieces: pieces
    kind = spec.get("type")
    if kind == "Sequence":
        parts = [make_pre_tokenizer(p) for p in spec.get("pretokenizers", [])]

        def seq(pieces: list[Piece]) -> list[Piece]:
            for f in parts:
                pieces = f(pieces)
            return pieces
        return seq
    if kind == "Split":
        if spec.get("invert"):
            raise GPT2Error("tokenizer.json: a Split pre-tokenizer with invert true is not supported")
        pat = spec.get("pattern", {})
        rx = translate_regex(pat["Regex"]) if "Regex" in pat else re.compile(re.escape(pat["String"]))
        behavior = spec.get("behavior", "Isolated")
        return lambda pieces: split_pieces(pieces, rx, behavior)
    if kind == "Digits":
        rx = translate_regex(r"\p{N}" if spec.get("individual_digits") else r"\p{N}+")
        return lambda pieces: split_pieces(pieces, rx, "Isolated")
    if kind == "ByteLevel":
        rx = translate_regex(GPT2_PATTERN) if spec.get("use_regex", True) else None
        prefix = bool(spec.get("add_prefix_space", True))
        # byte b -> GPT-2's printable character, as a str.translate table over the Latin-1 code points
        table = {b: c for b, c in bytes_to_unicode().items()}

        def byte_level(pieces: list[Piece]) -> list[Piece]:
            if prefix:
                pieces = [(t if t.startswith(" ") else " " + t, s) for t, s in pieces]
            if rx is not None:
                pieces = split_pieces(pieces, rx, "Isolated")
            return [(t.encode("utf-8", "surrogatepass").decode("latin-1").translate(table), s) for t, s in pieces]
        return byte_level
    if kind == "Metaspace":
        rep = spec.get("replacement", "\u2581")
        scheme = spec.get("prepend_scheme") or ("always" if spec.get("add_prefix_space", True) else "never")
        split = spec.get("split", True)
        rx = re.compile(re.escape(rep))

        def metaspace(pieces: list[Piece]) -> list[Piece]:
            out = []
            for t, s in pieces:
                t = t.replace(" ", rep)
                if not t.startswith(rep) and (scheme == "always" or (scheme == "first" and s)):
                    t = rep + t
                out.append((t, s))
            return split_pieces(out, rx, "MergedWithNext") if split else out
        return metaspace
    if kind == "WhitespaceSplit":
        rx = translate_regex(r"\s+")
        return lambda pieces: split_pieces(pieces, rx, "Removed")
    raise GPT2Error(f"tokenizer.json: pre_tokenizer {kind!r} is not supported; Pythia reads ByteLevel, Split, "
                    "Digits, Metaspace, WhitespaceSplit and Sequence")
