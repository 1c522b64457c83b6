"""A synthetic corpus of any size for the corpus benchmarks: generated, never stored in the repository.

Words are drawn from a Zipf law (exponent 1.1) over a fixed vocabulary of 60,000 made-up words
(2-4 syllables), so the word counts look like natural text: a few words are very common and a
long tail occurs rarely. About one word in ten carries punctuation, one in twelve ends a line,
and about one in four hundred is a non-Latin word (Greek, Cyrillic, CJK, an emoji), so the text
exercises multi-byte UTF-8 and the pre-tokenizer's classes. Seeded: the same size and seed give
the same bytes.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

SYLLABLES = ["ka", "to", "ri", "ne", "sa", "mo", "lu", "vi", "de", "pa", "shi", "gro", "th", "el", "an", "or",
             "qu", "is", "ben", "cal", "dor", "fen", "gal", "hum", "ix", "jor", "kel", "lim"]
FOREIGN = ["λόγος", "мир", "日本語", "한국어", "ñandú", "café", "🙂", "naïve", "٣٤", "Ⅻ"]
PUNCT = [",", ".", ";", ":", "!", "?", "'s", "'ll", " -", " (x)", " 42", " 1999"]


def vocabulary(n: int = 60_000, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words: set[str] = set()
    while len(words) < n:
        lengths = rng.integers(1, 5, size=2 * n)                                # 1-4 syllables
        picks = rng.integers(0, len(SYLLABLES), size=(2 * n, 4))
        words.update("".join(SYLLABLES[i] for i in row[:k]) for row, k in zip(picks.tolist(), lengths.tolist()))
    out = sorted(words)
    rng.shuffle(out)
    return out[:n]


def generate(path: Path, n_bytes: int, seed: int = 0, block_words: int = 500_000) -> int:
    """Write about n_bytes of text to path; returns the bytes written."""
    rng = np.random.default_rng(seed)
    vocab = vocabulary(seed=seed)
    decorated = np.array(vocab + [w.capitalize() for w in vocab[:5000]], dtype=object)
    written = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < n_bytes:
            ranks = rng.zipf(1.1, size=block_words) - 1
            ranks = ranks[ranks < len(decorated)]
            words = decorated[ranks]
            m = len(words)
            punct = rng.random(m) < 0.1
            words[punct] = [w + PUNCT[i] for w, i in zip(words[punct], rng.integers(0, len(PUNCT), punct.sum()))]
            foreign = rng.random(m) < 0.0025
            words[foreign] = [FOREIGN[i] for i in rng.integers(0, len(FOREIGN), foreign.sum())]
            ends = rng.random(m) < 1 / 12
            seps = np.where(ends, "\n", " ").astype(object)
            text = "".join((words + seps).tolist())
            data = text.encode("utf-8")
            if written + len(data) > n_bytes:
                data = data[: n_bytes - written]
                cut = data.rfind(b"\n") + 1 or len(data)   # end on a whole line (and a whole character)
                data = data[:cut]
                if not data:
                    break
            f.write(data.decode("utf-8"))
            written += len(data)
    return written
