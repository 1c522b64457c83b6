"""A byte-level BPE trained on the user's text: the pure-Python reference (the specification).

Read it the way minbpe teaches it:

- Text is cut into words by GPT-2's pre-tokenization pattern (`pythia.text.bpe.pretokenize`), so a
  merge never joins across a word boundary ("dog." stays "dog" + ".").
- Every word starts as its UTF-8 bytes: ids 0..255 are the 256 byte tokens, so any text,
  in any script, encodes, and decodes back exactly.
- Training repeats: count every adjacent pair of ids over all words (`get_stats`, each word
  weighted by how often it occurs), take the most frequent pair, give it the next id
  (256, 257, ...) and replace it everywhere (`merge`). Ties go to the smallest pair, comparing
  (left id, right id): that makes the merges a function of the text alone.
- The special token `<|endoftext|>` takes the last id, vocab_size - 1; a prepared corpus puts it
  between files. It is never merged and never learnt from the text.
- Encoding a word applies the learnt merges in the order they were learnt: repeatedly the
  adjacent pair with the earliest merge, every occurrence left to right, until none is left.

`pythia.text.bpe_fast` computes exactly the same merges and ids in compiled code; the parity tests
hold the two equal.
"""
from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable

import numpy as np

from .bpe import EOT, pretokenize

N_BYTES = 256
MIN_VOCAB = N_BYTES + 1                     # the byte tokens and <|endoftext|>
MAX_VOCAB = 2**31 - 1                       # ids are int32 in the merge tables and uint32 in the bins

Pair = tuple[int, int]
_SPECIAL_SPLIT = re.compile(f"({re.escape(EOT)})")


def get_stats(words: dict[tuple[int, ...], int]) -> Counter:
    """How often each adjacent pair of ids occurs: sum over words of (occurrences in word) * count."""
    stats: Counter = Counter()
    for ids, count in words.items():
        for pair in zip(ids, ids[1:]):
            stats[pair] += count
    return stats


def merge(ids: tuple[int, ...], pair: Pair, new_id: int) -> tuple[int, ...]:
    """ids with every occurrence of pair, left to right and non-overlapping, replaced by new_id."""
    out, i = [], 0
    while i < len(ids):
        if i + 1 < len(ids) and ids[i] == pair[0] and ids[i + 1] == pair[1]:
            out.append(new_id)
            i += 2
        else:
            out.append(ids[i])
            i += 1
    return tuple(out)


def count_words(texts: Iterable[str]) -> Counter:
    """Occurrences of each pre-tokenized word in texts (a literal <|endoftext|> is not text)."""
    counts: Counter = Counter()
    for text in texts:
        for piece in _SPECIAL_SPLIT.split(text)[::2]:
            counts.update(pretokenize(piece))
    return counts


def best_pair(stats: Counter) -> Pair:
    """The most frequent pair; among equals, the smallest (left id, right id)."""
    return max(stats.items(), key=lambda kv: (kv[1], -kv[0][0], -kv[0][1]))[0]


def train_merges(word_counts: dict[str, int], n_merges: int) -> list[Pair]:
    """Up to n_merges merges learnt from word counts; fewer when no adjacent pair is left."""
    words = {tuple(w.encode("utf-8", "surrogatepass")): 0 for w in word_counts}
    for w, c in word_counts.items():
        words[tuple(w.encode("utf-8", "surrogatepass"))] += c
    merges: list[Pair] = []
    for k in range(n_merges):
        stats = get_stats(words)
        if not stats:
            break
        pair = best_pair(stats)
        new_id = N_BYTES + k
        merged: dict[tuple[int, ...], int] = {}
        for ids, count in words.items():
            key = merge(ids, pair, new_id)
            merged[key] = merged.get(key, 0) + count
        words = merged
        merges.append(pair)
    return merges


def encode_word(word: bytes, ranks: dict[Pair, int]) -> list[int]:
    """Ids of one word's bytes: apply the earliest-learnt merge present, until none is left."""
    ids = tuple(word)
    while len(ids) >= 2:
        pair = min(zip(ids, ids[1:]), key=lambda p: ranks.get(p, float("inf")))
        if pair not in ranks:
            break
        ids = merge(ids, pair, N_BYTES + ranks[pair])
    return list(ids)


class ByteBPETokenizer:
    """Byte tokens 0..255, one id per merge from 256 on, then <|endoftext|> as the last id."""

    kind = "byte-bpe"

    def __init__(self, merges: Iterable[Pair]):
        self.merges: list[Pair] = [(int(a), int(b)) for a, b in merges]
        for k, (a, b) in enumerate(self.merges):
            if not (0 <= a < N_BYTES + k and 0 <= b < N_BYTES + k):
                raise ValueError(f"merge {k} ({a}, {b}) uses an id that is not defined before it")
        self.ranks: dict[Pair, int] = {}
        for k, pair in enumerate(self.merges):
            self.ranks.setdefault(pair, k)
        self.eot_id = N_BYTES + len(self.merges)
        self.vocab_size = self.eot_id + 1
        self.special_tokens = [EOT]
        self._bytes: list[bytes] = [bytes([b]) for b in range(N_BYTES)]
        for a, b in self.merges:
            self._bytes.append(self._bytes[a] + self._bytes[b])
        self._bytes.append(EOT.encode("utf-8"))

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "ByteBPETokenizer":
        """Learn vocab_size - 257 merges from texts (the reference: slow, for tests and small text)."""
        if vocab_size < MIN_VOCAB:
            raise ValueError(f"vocab_size must be at least {MIN_VOCAB}, got {vocab_size}")
        return cls(train_merges(count_words(texts), vocab_size - MIN_VOCAB))

    # ---- encoding and decoding -------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Ids of text; a literal '<|endoftext|>' is the special id."""
        ids: list[int] = []
        for i, piece in enumerate(_SPECIAL_SPLIT.split(text)):
            if i % 2:
                ids.append(self.eot_id)
            else:
                for word in pretokenize(piece):
                    ids.extend(encode_word(word.encode("utf-8", "surrogatepass"), self.ranks))
        return ids

    def token_bytes(self, i: int) -> bytes:
        return self._bytes[i]

    def decode_bytes(self, ids: Iterable[int]) -> bytes:
        """The bytes the ids spell; an id outside the vocabulary gives U+FFFD's bytes."""
        table, n, bad = self._bytes, len(self._bytes), "\ufffd".encode("utf-8")
        return b"".join(table[i] if 0 <= i < n else bad for i in map(int, ids))

    def decode(self, ids: Iterable[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def filter(self, text: str) -> tuple[str, str]:
        """Byte-level: every text encodes, nothing is dropped (same interface as SimpleTokenizer)."""
        return text, ""

    # ---- storage ---------------------------------------------------------------------------
    def to_arrays(self) -> dict[str, np.ndarray]:
        return {"merges": np.asarray(self.merges, dtype=np.int32).reshape(-1, 2)}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> "ByteBPETokenizer":
        """Inverse of to_arrays; ValueError when the arrays do not describe merges."""
        if "merges" not in arrays:
            raise ValueError("byte BPE arrays lack 'merges'")
        m = np.asarray(arrays["merges"])
        if m.ndim != 2 or m.shape[1] != 2 or not np.issubdtype(m.dtype, np.integer):
            raise ValueError(f"'merges' must be an (M, 2) integer array, got {m.dtype} {m.shape}")
        return cls(m.tolist())

    def to_json(self) -> dict:
        return {"kind": self.kind, "merges": [list(p) for p in self.merges], "eot_id": self.eot_id}

    @classmethod
    def from_json(cls, d: dict) -> "ByteBPETokenizer":
        tok = cls(d["merges"])
        if d.get("eot_id", tok.eot_id) != tok.eot_id:
            raise ValueError(f"eot_id {d.get('eot_id')} disagrees with {len(tok.merges)} merges")
        return tok

    def __eq__(self, other) -> bool:
        return isinstance(other, ByteBPETokenizer) and self.merges == other.merges

    def __repr__(self) -> str:
        return f"ByteBPETokenizer(vocab_size={self.vocab_size})"
