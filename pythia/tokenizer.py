"""Character tokenizer: one token per Unicode code point of the training corpus.

The vocabulary is the sorted set of distinct characters in the corpus, so the same text always
gives the same ids. It is stored inside checkpoints as UTF-8 bytes (no pickle), and
`tokenizer_from_arrays` rebuilds whichever tokenizer kind a checkpoint names ("char" here,
"gpt2-bpe" in `pythia.text.bpe`, "byte-bpe" in `pythia.text.bpe_train`).
"""
from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np

from .errors import DataError


def describe_chars(chars: Iterable[str], limit: int = 8) -> str:
    """A short, printable list of characters for error messages: 'é', '\\t', ... (+3 more)."""
    chars = list(chars)
    shown = ", ".join(repr(c) for c in chars[:limit])
    return shown + (f", ... (+{len(chars) - limit} more)" if len(chars) > limit else "")


class SimpleTokenizer:
    """Characters <-> ids over a fixed, sorted vocabulary."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        vocab = sorted(set(chars))
        if not vocab:
            raise DataError("cannot build a vocabulary from empty text; give a corpus with some text in it")
        if any(len(c) != 1 for c in vocab):
            raise ValueError("a character vocabulary holds single characters only")
        self.chars: list[str] = vocab
        self.stoi: dict[str, int] = {c: i for i, c in enumerate(vocab)}
        # Sorted code points let encode_array map a whole text with one searchsorted.
        self._codes = np.array([ord(c) for c in vocab], dtype=np.int64)  # (V,)

    @classmethod
    def from_text(cls, text: str) -> "SimpleTokenizer":
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def unknown(self, text: str) -> list[str]:
        """The distinct characters of text that are not in the vocabulary, sorted."""
        return sorted(set(text) - self.stoi.keys())

    def encode(self, text: str) -> list[int]:
        """Text -> ids. Raises DataError naming the characters the vocabulary lacks."""
        return self.encode_array(text).tolist()

    def encode_array(self, text: str) -> np.ndarray:
        """Text -> int64 ids (N,), vectorised: fast enough for megabyte corpora."""
        # UTF-32 little-endian without BOM is one uint32 per code point; surrogatepass lets lone
        # surrogates (undecodable terminal bytes) through to be reported as unknown characters.
        raw = text.encode("utf-32-le", "surrogatepass")
        codes = np.frombuffer(raw, dtype=np.uint32).astype(np.int64)                       # (N,)
        ids = np.searchsorted(self._codes, codes)                                          # (N,)
        ids = np.minimum(ids, len(self._codes) - 1)
        if codes.size and not np.array_equal(self._codes[ids], codes):
            missing = self.unknown(text)
            raise DataError(f"the text has {len(missing)} character(s) that are not in the vocabulary of "
                            f"{self.vocab_size}: {describe_chars(missing)}; remove them, or train on a corpus that "
                            f"contains them")
        return ids

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text. Raises ValueError for an id outside the vocabulary."""
        out = []
        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} is outside the vocabulary of {self.vocab_size}")
            out.append(self.chars[i])
        return "".join(out)

    def filter(self, text: str) -> tuple[str, list[str]]:
        """Split text into what can be encoded and the distinct characters that were dropped.

        Chat uses it to drop unknown characters with a notice instead of failing.
        """
        kept = "".join(c for c in text if c in self.stoi)
        return kept, self.unknown(text)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The vocabulary as UTF-8 bytes, in id order: no object arrays, no pickle."""
        return {"chars": np.frombuffer("".join(self.chars).encode("utf-8"), dtype=np.uint8).copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "SimpleTokenizer":
        """Inverse of to_arrays; ValueError when the arrays do not describe a vocabulary."""
        if "chars" not in arrays:
            raise ValueError("character tokenizer arrays lack 'chars'")
        raw = np.asarray(arrays["chars"])
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"'chars' must be a 1-d uint8 array, got {raw.dtype} {raw.shape}")
        try:
            text = raw.tobytes().decode("utf-8")
        except UnicodeDecodeError as e:
            raise ValueError(f"'chars' is not UTF-8: {e}") from None
        if not text or list(text) != sorted(set(text)):
            raise ValueError("'chars' is not a non-empty, sorted list of distinct characters")
        return cls(text)

    def __eq__(self, other: Any) -> bool:
        return isinstance(other, SimpleTokenizer) and self.chars == other.chars

    def __repr__(self) -> str:
        return f"SimpleTokenizer(vocab_size={self.vocab_size})"


TOKENIZER_KINDS = ("char", "gpt2-bpe", "byte-bpe", "hf-bpe")   # every kind a checkpoint may record


def tokenizer_from_arrays(kind: str, arrays: dict[str, np.ndarray]):
    """Rebuild a tokenizer saved with to_arrays(), dispatching on its kind."""
    if kind == "char":
        return SimpleTokenizer.from_arrays(arrays)
    if kind == "gpt2-bpe":
        from .text.bpe import GPT2Tokenizer  # imported lazily: only GPT-2 checkpoints need it
        return GPT2Tokenizer.from_arrays(arrays)
    if kind == "byte-bpe":
        from .text.bpe_train import ByteBPETokenizer  # a BPE trained by `pythia prepare --tokenizer bpe`
        return ByteBPETokenizer.from_arrays(arrays)
    if kind == "hf-bpe":
        from .text.hf_tokenizer import HFTokenizer    # a Hugging Face folder's tokenizer.json
        return HFTokenizer.from_arrays(arrays)
    raise ValueError(f"unknown tokenizer kind {kind!r}; expected one of {', '.join(TOKENIZER_KINDS)}")
