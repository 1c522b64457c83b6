"""GPT-2's byte-level BPE tokenizer, in the standard library alone.

Encoding a text takes four steps, exactly as GPT-2 does them:

1. Special tokens (`<|endoftext|>`) are cut out of the text first and map to their own ids.
2. Pre-tokenization splits the rest into words with GPT-2's pattern
       's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+
   Python's `re` has no \\p{L}/\\p{N}, so the letter, number and whitespace classes are built
   once from `unicodedata` (L* and N* general categories; whitespace is Unicode White_Space,
   which is what GPT-2's `regex` and Hugging Face's tokenizers use, not `str.isspace`). The
   classes follow the running Python's Unicode version; characters assigned in later versions
   count as "other" here and may be letters to a newer regex engine.
3. Each word's UTF-8 bytes are mapped to printable characters (bytes_to_unicode), so every
   byte sequence is spelled with vocabulary symbols and nothing is ever unknown.
4. Merges are applied by rank: repeatedly join the adjacent pair with the lowest rank in
   merges.txt, every occurrence left to right, until no ranked pair is left. Words are cached.

Decoding concatenates the tokens' bytes and decodes UTF-8 with errors="replace", so
decode(encode(text)) == text for any text without lone surrogates.
"""
from __future__ import annotations

import functools
import heapq
import json
import os
import re
import sys
import unicodedata
from pathlib import Path

import numpy as np

from ..errors import CheckpointError, GPT2Error

EOT = "<|endoftext|>"
_CACHE_LIMIT = 100_000  # words kept in the per-word merge cache before it is cleared
_LONG_WORD = 64        # words of more bytes are merged with a heap (O(n log n)) instead of GPT-2's loop

# Unicode White_Space: the \s of GPT-2's `regex` and of Rust's tokenizers (str.isspace adds \x1c-\x1f).
_WHITESPACE = "\t\n\v\f\r \x85\xa0\u1680" + "".join(map(chr, range(0x2000, 0x200B))) + \
    "\u2028\u2029\u202f\u205f\u3000"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map.

    Printable Latin-1 bytes map to themselves; the other 68 (control, space, 0x7f-0xa0, 0xad)
    map to chr(256 + k) in byte order, so a space becomes 'Ġ' and a newline 'Ċ'.
    """
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    extra = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _class_body(codepoints: list[int]) -> str:
    """A regex character-class body (no brackets) for sorted code points, as ranges."""
    parts = []
    i = 0
    while i < len(codepoints):
        j = i
        while j + 1 < len(codepoints) and codepoints[j + 1] == codepoints[j] + 1:
            j += 1
        lo, hi = codepoints[i], codepoints[j]
        parts.append(f"\\U{lo:08x}" if lo == hi else f"\\U{lo:08x}-\\U{hi:08x}")
        i = j + 1
    return "".join(parts)


@functools.cache
def pretokenize_pattern() -> re.Pattern[str]:
    """GPT-2's pre-tokenization regex with \\p{L}, \\p{N} and \\s spelled out for `re` (built once)."""
    letters, numbers = [], []
    category = unicodedata.category
    for cp in range(sys.maxunicode + 1):
        c = category(chr(cp))[0]
        if c == "L":
            letters.append(cp)
        elif c == "N":
            numbers.append(cp)
    L, N = _class_body(letters), _class_body(numbers)
    S = _class_body(sorted(map(ord, _WHITESPACE)))
    # (?![^S]) is (?!\S): a whitespace run gives its last character to the word that follows.
    return re.compile(
        rf"'s|'t|'re|'ve|'m|'ll|'d| ?[{L}]+| ?[{N}]+| ?[^{S}{L}{N}]+|[{S}]+(?![^{S}])|[{S}]+"
    )


def pretokenize(text: str) -> list[str]:
    """Split text into GPT-2 words ("Hello world" -> ["Hello", " world"])."""
    return pretokenize_pattern().findall(text)


class GPT2Tokenizer:
    """Byte-level BPE over a GPT-2 vocabulary (vocab.json) and merge list (merges.txt)."""

    kind = "gpt2-bpe"

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]],
                 special_tokens: list[str] | None = None) -> None:
        """encoder: token string -> id; merges in rank order; special_tokens default to
        [<|endoftext|>] when it is in the vocabulary. Raises ValueError on an inconsistent vocabulary."""
        self.encoder = dict(encoder)
        self.decoder = {i: t for t, i in self.encoder.items()}
        if len(self.decoder) != len(self.encoder):
            raise ValueError("the vocabulary maps two tokens to the same id")
        if any(not isinstance(i, int) or i < 0 for i in self.decoder):
            raise ValueError("the vocabulary has an id that is not a non-negative integer")
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {c: b for b, c in self.byte_encoder.items()}
        missing = [c for c in self.byte_encoder.values() if c not in self.encoder]
        if missing:
            raise ValueError(f"the vocabulary lacks {len(missing)} of the 256 byte tokens (e.g. {missing[0]!r}); "
                             "it is not a byte-level BPE vocabulary")
        self.merges = [tuple(m) for m in merges]
        self.ranks: dict[tuple[str, str], int] = {}
        for rank, (a, b) in enumerate(self.merges):
            if a + b not in self.encoder:
                raise ValueError(f"merge {rank + 1} ({a} {b}) makes {a + b!r}, which is not in the vocabulary")
            self.ranks.setdefault((a, b), rank)  # a repeated merge keeps its first (lowest) rank
        if special_tokens is None:
            special_tokens = [EOT] if EOT in self.encoder else []
        for tok in special_tokens:
            if tok not in self.encoder:
                raise ValueError(f"special token {tok!r} is not in the vocabulary")
        self.special_tokens = list(special_tokens)
        self._special_ids = {self.encoder[t]: t for t in self.special_tokens}
        # Longest first so that one special token that prefixes another cannot shadow it.
        alternatives = "|".join(re.escape(t) for t in sorted(self.special_tokens, key=len, reverse=True))
        self._special_split = re.compile(f"({alternatives})") if alternatives else None
        self._cache: dict[str, list[int]] = {}
        # id -> the bytes it spells: special tokens as their UTF-8 text, others through byte_decoder
        self._id_bytes = {i: bytes(self.byte_decoder[c] for c in t) if all(c in self.byte_decoder for c in t)
                          else t.encode("utf-8") for i, t in self.decoder.items()}
        self._id_bytes.update({i: t.encode("utf-8") for i, t in self._special_ids.items()})
        self.vocab_size = max(self.decoder) + 1
        self.eot_id: int | None = self.encoder.get(EOT)

    # ---- loading -------------------------------------------------------------------------
    @classmethod
    def from_files(cls, vocab_path: str | Path, merges_path: str | Path) -> GPT2Tokenizer:
        """Load vocab.json and merges.txt; GPT2Error (naming the file) on anything wrong."""
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        encoder = _read_vocab(vocab_path)
        merges = _read_merges(merges_path)
        try:
            return cls(encoder, merges)
        except ValueError as e:
            raise GPT2Error(f"{vocab_path.parent}: {e}; use the vocab.json and merges.txt of one GPT-2 model") from None

    @classmethod
    def from_dir(cls, directory: str | Path) -> GPT2Tokenizer:
        d = Path(directory)
        return cls.from_files(d / "vocab.json", d / "merges.txt")

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The vocabulary, merges and special tokens as uint8 UTF-8 arrays (JSON / merges.txt text)."""
        def u8(s: str) -> np.ndarray:
            return np.frombuffer(s.encode("utf-8"), dtype=np.uint8).copy()
        return {
            "vocab_json": u8(json.dumps(self.encoder, ensure_ascii=False)),
            "merges_txt": u8("\n".join(f"{a} {b}" for a, b in self.merges)),
            "special_json": u8(json.dumps(self.special_tokens, ensure_ascii=False)),
        }

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GPT2Tokenizer:
        """Inverse of to_arrays; CheckpointError when the arrays are missing or corrupt."""
        try:
            text = {k: np.asarray(arrays[k], dtype=np.uint8).tobytes().decode("utf-8")
                    for k in ("vocab_json", "merges_txt", "special_json")}
            encoder = json.loads(text["vocab_json"])
            special = json.loads(text["special_json"])
            merges = [tuple(line.split(" ")) for line in text["merges_txt"].split("\n") if line]
            if not isinstance(encoder, dict) or not isinstance(special, list) or any(len(m) != 2 for m in merges):
                raise ValueError("unexpected structure")
            return cls(encoder, merges, special)
        except (KeyError, ValueError, TypeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"the checkpoint's BPE tokenizer is corrupt ({e}); convert the GPT-2 model again") \
                from None

    # ---- encoding ------------------------------------------------------------------------
    def encode(self, text: str, *, allow_special: bool = True) -> list[int]:
        """Token ids of text. With allow_special, '<|endoftext|>' in the text is the special id
        (as Hugging Face's GPT-2 tokenizer does); otherwise it is spelled out as ordinary text."""
        if not allow_special or self._special_split is None:
            return self._encode_ordinary(text)
        ids: list[int] = []
        for i, piece in enumerate(self._special_split.split(text)):
            if i % 2:  # odd pieces are the captured special tokens
                ids.append(self.encoder[piece])
            elif piece:
                ids.extend(self._encode_ordinary(piece))
        return ids

    def _encode_ordinary(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in pretokenize(text):
            ids.extend(self._bpe(word))
        return ids

    def _bpe(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word: its bytes as symbols, merged by rank."""
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        # Lone surrogates (from undecodable input) keep their bytes instead of crashing encode.
        parts = [self.byte_encoder[b] for b in word.encode("utf-8", errors="surrogatepass")]
        parts = self._merge(parts) if len(parts) <= _LONG_WORD else self._merge_heap(parts)
        ids = [self.encoder[p] for p in parts]
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[word] = ids
        return ids

    def _merge(self, parts: list[str]) -> list[str]:
        """GPT-2's merge loop, O(n^2) in the word's length: fine for words, not for megabyte runs."""
        ranks = self.ranks
        while len(parts) > 1:
            # The adjacent pair with the lowest merge rank; stop when no pair is ranked.
            best, best_rank = None, None
            for pair in zip(parts, parts[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            a, b = best
            merged, i, n = [], 0, len(parts)
            while i < n:  # join every non-overlapping occurrence, left to right
                if i + 1 < n and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    def _merge_heap(self, parts: list[str]) -> list[str]:
        """The same merges in O(n log n), for long words (a pasted URL, base64, a run of one symbol).

        A heap holds (rank, slot) for adjacent pairs; popping the lowest rank, leftmost first, is
        the order in which _merge joins pairs. Symbols live in slots of a doubly linked list; an
        entry is stale when its slot was absorbed or its pair no longer has that rank.
        """
        ranks, n = self.ranks, len(parts)
        sym: list[str | None] = list(parts)
        nxt = list(range(1, n + 1))            # slot after i (n = end)
        prv = list(range(-1, n - 1))           # slot before i (-1 = start)
        heap = [(r, i) for i in range(n - 1) if (r := ranks.get((parts[i], parts[i + 1]))) is not None]
        heapq.heapify(heap)
        while heap:
            r, i = heapq.heappop(heap)
            j = nxt[i]
            if sym[i] is None or j >= n or ranks.get((sym[i], sym[j])) != r:
                continue                       # stale entry
            sym[i] = sym[i] + sym[j]           # merge slot j into slot i
            sym[j] = None
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            p, k = prv[i], nxt[i]
            if p >= 0 and (rp := ranks.get((sym[p], sym[i]))) is not None:
                heapq.heappush(heap, (rp, p))
            if k < n and (rk := ranks.get((sym[i], sym[k]))) is not None:
                heapq.heappush(heap, (rk, i))
        return [s for s in sym if s is not None]

    # ---- decoding ------------------------------------------------------------------------
    def decode_bytes(self, ids: list[int]) -> bytes:
        """The exact bytes the ids spell (an id outside the vocabulary gives U+FFFD's bytes).
        Streaming callers can feed these to an incremental UTF-8 decoder."""
        table, unknown = self._id_bytes, "\ufffd".encode("utf-8")
        return b"".join(table.get(int(i), unknown) for i in ids)

    def decode(self, ids: list[int]) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def filter(self, text: str) -> tuple[str, str]:
        """Same interface as SimpleTokenizer.filter: byte-level BPE encodes everything, drops nothing."""
        return text, ""


GPT2_FILES = "a GPT-2 directory needs config.json, model.safetensors, vocab.json and merges.txt"
MAX_GPT2_TEXT = 256 << 20   # the text files' size limit; GPT-2's vocab.json is 1.0 MB, merges.txt 0.5 MB


def read_gpt2_text(path: Path) -> str:
    """The UTF-8 text of one file of a GPT-2 directory; GPT2Error naming it if missing or unreadable."""
    from ..system.inputs import read_regular
    if not os.path.lexists(path):
        raise GPT2Error(f"{path} not found; {GPT2_FILES}")
    raw = read_regular(path, "GPT-2 file", GPT2Error, limit=MAX_GPT2_TEXT, hint=GPT2_FILES)
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise GPT2Error(f"{path} is not valid UTF-8 text ({e}); download it again") from None


def read_gpt2_json(path: Path):
    """The parsed JSON of one file of a GPT-2 directory (config.json, vocab.json)."""
    try:
        return json.loads(read_gpt2_text(path))
    except json.JSONDecodeError as e:
        raise GPT2Error(f"{path} is not valid UTF-8 JSON ({e}); download it again") from None


def _read_vocab(path: Path) -> dict[str, int]:
    encoder = read_gpt2_json(path)
    if not isinstance(encoder, dict) or not encoder or \
            not all(isinstance(k, str) and isinstance(v, int) and not isinstance(v, bool) for k, v in encoder.items()):
        raise GPT2Error(f"{path} must be a JSON object mapping token strings to integer ids")
    return encoder


def _read_merges(path: Path) -> list[tuple[str, str]]:
    lines = read_gpt2_text(path).split("\n")
    merges = []
    for n, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if not line or (n == 1 and line.startswith("#version")):
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise GPT2Error(f"{path} line {n}: expected two tokens separated by one space, got {line[:60]!r}")
        merges.append((parts[0], parts[1]))
    return merges
