"""The fast twin of the byte-level BPE: compiled pre-tokenization, encoding and training.

`pythia._bpe` (built from kernels/_bpe.pyx) gives the same words as `pythia.text.bpe.pretokenize`,
the same ids as `ByteBPETokenizer.encode` / `GPT2Tokenizer.encode`, and the same merges as
`pythia.text.bpe_train.train_merges`; the parity tests hold them equal. When the extension is not
built, or PYTHIA_KERNELS=numpy asks for the references, everything here falls back to the
pure-Python reference (same results, much slower) and BACKEND says "python".

`encoder_for(tokenizer)` turns either BPE tokenizer into one `FastEncoder`: a table of byte ids
and merges over ids, (left, right) -> (rank, merged id).
"""
from __future__ import annotations

import functools
import os
import re
import sys
import unicodedata

import numpy as np

from ..kernels._loader import _import
from .bpe import _WHITESPACE, EOT, pretokenize as reference_pretokenize

# this package's build, or an installed copy's when a source checkout shadows it (as the kernels
# are found); None without either: the reference does the work
_bpe = _import("_bpe")

BACKEND = "cython" if _bpe is not None and os.environ.get("PYTHIA_KERNELS", "").lower() != "numpy" else "python"
_SPECIAL_SPLIT = re.compile(f"({re.escape(EOT)})")


@functools.cache
def class_table() -> np.ndarray:
    """uint8 per code point: 0 other, 1 letter (L*), 2 number (N*), 3 Unicode White_Space, the
    classes of pythia.text.bpe's regex."""
    table = np.zeros(sys.maxunicode + 1, dtype=np.uint8)
    category = unicodedata.category
    for cp in range(sys.maxunicode + 1):
        c = category(chr(cp))[0]
        if c == "L":
            table[cp] = 1
        elif c == "N":
            table[cp] = 2
    table[[ord(c) for c in _WHITESPACE]] = 3
    return table


def pretokenize(text: str, *, backend: str | None = None) -> list[str]:
    """GPT-2's words of text; backend "cython" or "python" (default: BACKEND)."""
    if (backend or BACKEND) == "cython":
        return _bpe.pretokenize(text, class_table())
    return reference_pretokenize(text)


def count_words(text: str, counts: dict[str, int], *, backend: str | None = None) -> None:
    """Add text's word occurrences to counts; a literal <|endoftext|> is not text."""
    for piece in _SPECIAL_SPLIT.split(text)[::2]:
        if (backend or BACKEND) == "cython":
            _bpe.count_words(piece, counts, class_table())
        else:
            for w in reference_pretokenize(piece):
                counts[w] = counts.get(w, 0) + 1


def train_merges(word_counts: dict[str, int], n_merges: int, *, backend: str | None = None) -> list[tuple[int, int]]:
    """The merges of pythia.text.bpe_train.train_merges, computed incrementally in compiled code."""
    if (backend or BACKEND) != "cython":
        from .bpe_train import train_merges as reference
        return reference(word_counts, n_merges)
    # equal byte strings (a word and its surrogate-escaped twin cannot differ, but be exact) add up
    merged: dict[bytes, int] = {}
    for w, c in word_counts.items():
        b = w.encode("utf-8", "surrogatepass")
        merged[b] = merged.get(b, 0) + c
    words = list(merged)
    counts = np.fromiter(merged.values(), dtype=np.int64, count=len(words))
    return [tuple(p) for p in _bpe.train_merges(words, counts, max(0, n_merges)).tolist()]


class FastEncoder:
    """Text -> ids for a byte-level BPE table, with special tokens split out first."""

    def __init__(self, byte_ids: np.ndarray, merges: np.ndarray, merged: np.ndarray,
                 specials: dict[str, int], *, backend: str | None = None, reference=None):
        self.backend = backend or BACKEND
        self.specials = dict(specials)
        alternatives = "|".join(re.escape(t) for t in sorted(self.specials, key=len, reverse=True))
        self._split = re.compile(f"({alternatives})") if alternatives else None
        self._reference = reference            # the tokenizer itself: the "python" path
        if self.backend == "cython":
            self._enc = _bpe.Encoder(np.ascontiguousarray(byte_ids, dtype=np.int32),
                                     np.ascontiguousarray(merges, dtype=np.int32).reshape(-1, 2),
                                     np.ascontiguousarray(merged, dtype=np.int32), class_table())

    def encode_array(self, text: str) -> np.ndarray:
        """int32 ids (N,) of text; special tokens in the text are their ids."""
        if self.backend != "cython":
            return np.asarray(self._reference.encode(text), dtype=np.int32)
        if self._split is None:
            return self._enc.encode(text)
        parts = []
        for i, piece in enumerate(self._split.split(text)):
            if i % 2:
                parts.append(np.array([self.specials[piece]], dtype=np.int32))
            elif piece:
                parts.append(self._enc.encode(piece))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int32)

    def encode(self, text: str) -> list[int]:
        return self.encode_array(text).tolist()


def encoder_for(tokenizer, *, backend: str | None = None) -> FastEncoder:
    """A FastEncoder giving the same ids as tokenizer (ByteBPETokenizer or GPT2Tokenizer)."""
    if tokenizer.kind == "byte-bpe":
        m = np.asarray(tokenizer.merges, dtype=np.int32).reshape(-1, 2)
        return FastEncoder(np.arange(256, dtype=np.int32), m, 256 + np.arange(len(m), dtype=np.int32),
                           {EOT: tokenizer.eot_id}, backend=backend, reference=tokenizer)
    if tokenizer.kind == "gpt2-bpe":
        enc = tokenizer.encoder
        byte_ids = np.array([enc[tokenizer.byte_encoder[b]] for b in range(256)], dtype=np.int32)
        # a merge whose halves are not tokens can never apply: leaving it out changes no id
        rows = [(enc[a], enc[b], enc[a + b]) for a, b in tokenizer.merges if a in enc and b in enc]
        t = np.array(rows, dtype=np.int32).reshape(-1, 3)
        specials = {s: enc[s] for s in tokenizer.special_tokens}
        return FastEncoder(byte_ids, t[:, :2], t[:, 2], specials, backend=backend, reference=tokenizer)
    raise ValueError(f"no BPE encoder for a {tokenizer.kind!r} tokenizer")
