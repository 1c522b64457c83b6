"""A tokenizer read from `tokenizer.json`, the file format of Hugging Face's `tokenizers` library:
byte-level BPE (GPT-2, SmolLM2, Qwen2) and BPE with byte fallback and "▁" for spaces (Llama-2,
TinyLlama). Pure Python; it is the specification and gives the ids `tokenizers` gives.

encode(text), as `tokenizers` does it:
1. Added tokens (the file's "added_tokens", special or not) are cut out of the raw text first,
   leftmost-longest, and map to their own ids (lstrip/rstrip take the whitespace beside them).
2. The normalizer rewrites each remaining piece (NFC, or Llama's Prepend "▁" + Replace " " -> "▁").
3. The pre-tokenizer splits pieces into words (its regex, Digits, ByteLevel's byte -> printable
   character map, Metaspace); see pythia.text.hf_pretokenize.
4. The BPE model spells each word as vocabulary symbols (a character missing from the vocabulary
   becomes its UTF-8 bytes as <0xXX> tokens under byte_fallback, else the unknown token), then
   joins the adjacent pair of lowest merge rank, leftmost first, until no ranked pair is left.
   With ignore_merges, a word that is itself in the vocabulary is that one token.
5. With add_special_tokens=True, the post-processor's single-sequence template adds e.g. <s>.

Step 4 has a compiled twin (pythia.text.hf_bpe_fast, backend "cython") that gives the same ids,
and so does step 3 for the pre-tokenizers of GPT-2, SmolLM2 and Qwen2 (pythia.text.hf_split_fast);
backend "python" (or PYTHIA_KERNELS=numpy) runs the methods below, which are their specification.

decode(ids): ids -> token strings (special ones dropped with skip_special_tokens) -> the file's
decoder chain (ByteLevel, Replace, ByteFallback, Fuse, Strip, Metaspace).
"""
from __future__ import annotations

import heapq
import json
import os
import re
from pathlib import Path

import numpy as np

from ..errors import GPT2Error
from .bpe_fast import class_table
from .hf_bpe_fast import merger_for, resolve
from .hf_decoders import BYTE_DECODER, BYTE_TOKEN, DECODERS
from .hf_pretokenize import make_normalizer, make_pre_tokenizer
from .hf_split_fast import byte_chars, split_plan

_CACHE_LIMIT = 100_000     # words kept in the merge cache before it is cleared
_CACHE_WORD = 256          # longest word (characters) the cache keeps
_SHORT_WORD = 32           # words of more symbols merge with a heap
MAX_TOKENIZER_JSON = 256 << 20


class HFTokenizer:
    """encode(str) -> list[int], decode(list[int]) -> str over a parsed tokenizer.json object.

    backend: "cython" (the compiled merge step), "python" (the reference) or None for
    pythia.text.hf_bpe_fast.BACKEND; self.backend says which one runs (the reference when the
    file's tables fall outside what the compiled step computes exactly)."""

    kind = "hf-bpe"

    def __init__(self, obj: dict, where: str = "tokenizer.json", *, backend: str | None = None) -> None:
        if not isinstance(obj, dict) or not isinstance(obj.get("model"), dict):
            raise GPT2Error(f"{where} has no \"model\" object; it is not a tokenizers file")
        self.where = where
        self.source = obj                   # the parsed tokenizer.json, for checkpoints and export
        model = obj["model"]
        if model.get("type", "BPE") != "BPE":
            raise GPT2Error(f"{where}: model type {model.get('type')!r} is not supported; Pythia reads BPE")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise GPT2Error(f"{where}: BPE {key} {model[key]!r} is not supported")
        if model.get("dropout"):
            raise GPT2Error(f"{where}: BPE dropout {model['dropout']} is not supported for inference")
        vocab = model.get("vocab")
        if not isinstance(vocab, dict) or not all(type(i) is int and i >= 0 for i in vocab.values()):
            raise GPT2Error(f"{where}: model.vocab must map token strings to non-negative integer ids")
        self.vocab: dict[str, int] = dict(vocab)
        self.byte_fallback = bool(model.get("byte_fallback"))
        self.ignore_merges = bool(model.get("ignore_merges"))
        self.unk_token = model.get("unk_token")
        self.fuse_unk = bool(model.get("fuse_unk"))
        self.ranks = self._merge_table(model.get("merges") or [], where)

        # added tokens: vocabulary entries of their own, matched in the text before anything else
        self.added: dict[str, dict] = {}
        for t in obj.get("added_tokens") or []:
            if not isinstance(t, dict) or not isinstance(t.get("content"), str) or type(t.get("id")) is not int:
                raise GPT2Error(f"{where}: every added_tokens entry needs a string \"content\" and an integer \"id\"")
            if t.get("single_word"):
                raise GPT2Error(f"{where}: added token {t['content']!r} has single_word true, which Pythia does "
                                "not support")
            self.added[t["content"]] = t
        self.id_to_token = {i: s for s, i in self.vocab.items()}
        self.id_to_token.update({t["id"]: s for s, t in self.added.items()})
        self.token_to_id = {**self.vocab, **{s: t["id"] for s, t in self.added.items()}}
        self.special_ids = {t["id"] for t in self.added.values() if t.get("special")}
        self.vocab_size = max(self.id_to_token) + 1
        self.normalize = make_normalizer(obj.get("normalizer"))
        # a normalized added token decodes as the normalizer writes it, as in tokenizers
        self.id_to_token.update({t["id"]: self.normalize(s) for s, t in self.added.items()
                                 if t.get("normalized", not t.get("special"))})
        self._raw_added = self._added_pattern(normalized=False)
        self._norm_added = self._added_pattern(normalized=True)
        self.pre_tokenize = make_pre_tokenizer(obj.get("pre_tokenizer"))
        self._template = self._post_template(obj.get("post_processor"), where)
        self._decoders = self._decoder_chain(obj.get("decoder"), where)
        steps = self._decoders or []
        self._byte_level = any(d["type"] == "ByteLevel" for d in steps)
        self._spaces = [(d["pattern"]["String"], d.get("content", "")) for d in steps
                        if d["type"] == "Replace" and "String" in d.get("pattern", {})]
        self._spaces += [(d.get("replacement", "\u2581"), " ") for d in steps if d["type"] == "Metaspace"]
        self._byte_ids = None
        if self.byte_fallback:
            self._byte_ids = [self.vocab.get(f"<0x{b:02X}>") for b in range(256)]
        self._cache: dict[str, list[int]] = {}
        # Cutting a word before each "▁" that follows another character changes no id when no
        # merge makes a token holding such a pair: a merged symbol across the cut would hold it.
        across = re.compile("[^\u2581]\u2581")
        self._boundary = None if any(across.search(a + b) for a, b in self.ranks) else \
            re.compile("(?<=[^\u2581])(?=\u2581)")
        self.backend = resolve(backend)
        self._fast = None
        if self.backend == "cython":
            self._fast = merger_for(self.vocab, self.ranks, byte_fallback=self.byte_fallback,
                                    unk_token=self.unk_token, fuse_unk=self.fuse_unk,
                                    ignore_merges=self.ignore_merges, boundary=self._boundary,
                                    cache_limit=_CACHE_LIMIT, cache_word=_CACHE_WORD)
            if self._fast is None:
                self.backend = "python"
        # the pre-tokenizer as a compiled scanner, when it is one of the set-ups they reproduce
        self._split = split_plan(obj.get("pre_tokenizer")) if self._fast is not None else None

    # ---- loading -----------------------------------------------------------------------------
    @staticmethod
    def _merge_table(merges: list, where: str) -> dict[tuple[str, str], int]:
        ranks: dict[tuple[str, str], int] = {}
        for rank, m in enumerate(merges):
            pair = m.split(" ") if isinstance(m, str) else m   # "a b" (older files) or ["a", "b"]
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(p, str) for p in pair)):
                raise GPT2Error(f"{where}: merge {rank + 1} ({m!r}) is not two tokens")
            ranks.setdefault((pair[0], pair[1]), rank)          # a repeated merge keeps its first rank
        return ranks

    def _added_pattern(self, *, normalized: bool) -> tuple[re.Pattern[str] | None, list[int]]:
        """One regex over the added tokens matched on raw (normalized=False) or normalized text, and
        the id of each of its alternatives. A normalized token is matched as the normalizer writes it
        (Llama's Prepend makes "world" "▁world"). Longest first, so at one position the longest token
        wins (leftmost-longest); lstrip/rstrip take the whitespace beside the token with it."""
        toks = [((self.normalize(t["content"]) if normalized else t["content"]), t) for t in self.added.values()
                if bool(t.get("normalized", not t.get("special"))) == normalized]
        toks.sort(key=lambda x: len(x[0]), reverse=True)
        alts = [f"(?P<t{k}>" + ("\\s*" if t.get("lstrip") else "") + re.escape(text)
                + ("\\s*" if t.get("rstrip") else "") + ")" for k, (text, t) in enumerate(toks)]
        return (re.compile("|".join(alts)) if alts else None), [t["id"] for _, t in toks]

    @staticmethod
    def _split_added(text: str, pattern: re.Pattern[str] | None, ids: list[int]) -> list[str | int]:
        """text cut at the added tokens: its pieces (str) and the tokens' ids (int), in order."""
        if pattern is None:
            return [text]
        out: list[str | int] = []
        last = 0
        for m in pattern.finditer(text):
            out.append(text[last:m.start()])
            out.append(ids[int(m.lastgroup[1:])])
            last = m.end()
        out.append(text[last:])
        return out

    @staticmethod
    def _post_template(spec: dict | None, where: str) -> list[tuple[str, int | None]] | None:
        """The single-sequence template as [("A", None) | (token, id), ...]; None adds nothing."""
        if spec is None:
            return None
        kind = spec.get("type")
        if kind == "ByteLevel":
            return None                                         # changes offsets only, never ids
        if kind == "Sequence":
            parts = [HFTokenizer._post_template(p, where) for p in spec.get("processors", [])]
            parts = [p for p in parts if p is not None]
            if len(parts) > 1:
                raise GPT2Error(f"{where}: a post_processor Sequence with several templates is not supported")
            return parts[0] if parts else None
        if kind == "TemplateProcessing":
            out: list[tuple[str, int | None]] = []
            for item in spec.get("single", []):
                if "Sequence" in item:
                    out.append(("A", None))
                else:
                    name = item["SpecialToken"]["id"]
                    ids = spec.get("special_tokens", {}).get(name, {}).get("ids")
                    if not ids:
                        raise GPT2Error(f"{where}: post_processor names special token {name!r} without ids")
                    out.extend((name, i) for i in ids)
            return out
        raise GPT2Error(f"{where}: post_processor {kind!r} is not supported; Pythia reads TemplateProcessing, "
                        "ByteLevel and Sequence")

    @staticmethod
    def _decoder_chain(spec: dict | None, where: str) -> list[dict] | None:
        if spec is None:
            return None
        if spec.get("type") == "Sequence":
            return [d for s in spec.get("decoders", []) for d in (HFTokenizer._decoder_chain(s, where) or [])]
        if spec.get("type") not in DECODERS:
            raise GPT2Error(f"{where}: decoder {spec.get('type')!r} is not supported; Pythia reads ByteLevel, "
                            "Replace, ByteFallback, Fuse, Strip, Metaspace and Sequence")
        return [spec]

    # ---- encoding ----------------------------------------------------------------------------
    def encode(self, text: str, *, add_special_tokens: bool = False, allow_special: bool = True) -> list[int]:
        """Token ids of text (tokenizers' encode(text, add_special_tokens=...).ids). With
        allow_special=False, added tokens in the text are spelled as ordinary text (for what a
        user types into a chat, so "<|im_end|>" typed there cannot end a turn)."""
        ids: list[int] = []
        none = (None, [])
        raw_added, norm_added = (self._raw_added, self._norm_added) if allow_special else (none, none)
        cache, fast, split = self._cache, self._fast, self._split
        for i, piece in enumerate(self._split_added(text, *raw_added)):
            if isinstance(piece, int):
                ids.append(piece)
                continue
            if not piece:
                continue
            at_start = i == 0
            norm = self.normalize(piece)
            for k, sub in enumerate(self._split_added(norm, *norm_added)):
                if isinstance(sub, int):
                    ids.append(sub)
                elif sub and split is not None:     # steps 3 and 4 compiled
                    fast.extend_text(sub, split[0], split[1], class_table(), byte_chars(), ids)
                elif sub:
                    words = self.pre_tokenize([(sub, at_start and k == 0)])
                    if fast is not None:
                        fast.extend(words, ids)         # the loop below, compiled
                        continue
                    for word, _ in words:
                        got = cache.get(word)
                        ids.extend(got if got is not None else self._word(word))
        if add_special_tokens and self._template is not None:
            ids = [j for name, tid in self._template for j in (ids if tid is None else [tid])]
        return ids

    def clear_cache(self) -> None:
        """Forget the words merged so far (either backend); ids do not change, only speed."""
        self._cache.clear()
        if self._fast is not None:
            self._fast.clear_cache()

    def _word(self, word: str) -> list[int]:
        """Ids of one pre-tokenized word: its characters as symbols, merged by rank. A long word
        (a whole text, when there is no pre-tokenizer) is cut where no merge can reach across."""
        if len(word) > _CACHE_WORD and self._boundary is not None:
            return [i for sub in self._boundary.split(word) if sub for i in self._spell(sub)]
        return self._spell(word)

    def _spell(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        vocab = self.vocab
        if self.ignore_merges and word in vocab:
            ids = [vocab[word]]
        else:
            parts: list[str] = []
            for ch in word:
                if ch in vocab:
                    parts.append(ch)
                elif self.byte_fallback and all(self._byte_ids[b] is not None for b in ch.encode("utf-8")):
                    parts.extend(f"<0x{b:02X}>" for b in ch.encode("utf-8"))
                elif self.unk_token is not None and self.unk_token in vocab:
                    if not (self.fuse_unk and parts and parts[-1] == self.unk_token):
                        parts.append(self.unk_token)
                # else: no way to spell the character; tokenizers drops it, and so do we
            ids = [vocab[p] for p in self._merge(parts)]
        if len(word) <= _CACHE_WORD:           # a whole text (no pre-tokenizer) is not worth keeping
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            self._cache[word] = ids
        return ids

    def _merge(self, parts: list[str]) -> list[str]:
        """Join the adjacent pair of lowest rank, leftmost first, until no pair is ranked.

        A heap holds (rank, slot) for adjacent pairs, so a whole text (Llama's tokenizers have no
        pre-tokenizer: the text is one word) merges in O(n log n). Symbols live in the slots of a
        doubly linked list; an entry is stale when its slot was absorbed or its pair changed.
        """
        ranks, n = self.ranks, len(parts)
        if n <= _SHORT_WORD:
            return self._merge_short(parts)
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
        return [t for t in sym if t is not None]

    def _merge_short(self, parts: list[str]) -> list[str]:
        """The same merges for a short word: rescan for the lowest-ranked pair, join every
        occurrence of it left to right (GPT-2's loop; no heap to build)."""
        ranks = self.ranks
        while len(parts) > 1:
            best, best_rank = None, None
            for pair in zip(parts, parts[1:]):
                r = ranks.get(pair)
                if r is not None and (best_rank is None or r < best_rank):
                    best, best_rank = pair, r
            if best is None:
                break
            a, b = best
            merged, i, n = [], 0, len(parts)
            while i < n:
                if i + 1 < n and parts[i] == a and parts[i + 1] == b:
                    merged.append(a + b)
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return parts

    # ---- decoding ----------------------------------------------------------------------------
    def decode(self, ids: list[int], *, skip_special_tokens: bool = False) -> str:
        """The text of ids (tokenizers' decode; an id outside the vocabulary is dropped, as there)."""
        tokens = [self.id_to_token[i] for i in map(int, ids) if i in self.id_to_token
                  and not (skip_special_tokens and i in self.special_ids)]
        if self._decoders is None:
            return " ".join(tokens)
        for d in self._decoders:
            tokens = DECODERS[d["type"]](d, tokens)
        return "".join(tokens)

    def decode_bytes(self, ids: list[int]) -> bytes:
        """The bytes the tokens spell one after another, partial UTF-8 kept (token views): byte-level
        symbols as their bytes, <0xXX> as that byte, "▁" as a space, no leading space stripped.
        An id outside the vocabulary gives U+FFFD's bytes."""
        out = []
        for i in map(int, ids):
            t = self.id_to_token.get(i)
            if t is None:
                out.append("\ufffd".encode("utf-8"))
            elif self._byte_level and all(c in BYTE_DECODER for c in t):
                out.append(bytes(BYTE_DECODER[c] for c in t))
            elif self.byte_fallback and (m := BYTE_TOKEN.fullmatch(t)):
                out.append(bytes([int(m.group(1), 16)]))
            else:
                for old, new in self._spaces:
                    t = t.replace(old, new)
                out.append(t.encode("utf-8"))
        return b"".join(out)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """The tokenizer.json text as a uint8 UTF-8 array (a checkpoint holds it; no pickle)."""
        text = json.dumps(self.source, ensure_ascii=False, separators=(",", ":"))
        return {"tokenizer_json": np.frombuffer(text.encode("utf-8"), dtype=np.uint8).copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> HFTokenizer:
        """Inverse of to_arrays; ValueError when the arrays are missing or corrupt."""
        try:
            obj = json.loads(np.asarray(arrays["tokenizer_json"], dtype=np.uint8).tobytes().decode("utf-8"))
            return cls(obj, "the checkpoint's tokenizer")
        except (KeyError, UnicodeDecodeError, json.JSONDecodeError, GPT2Error, TypeError, AttributeError) as e:
            raise ValueError(f"the checkpoint's tokenizer.json is corrupt ({e})") from None

    def token_id(self, token: str) -> int | None:
        """The id of a token string (vocabulary or added), or None."""
        return self.token_to_id.get(token)

    def filter(self, text: str) -> tuple[str, str]:
        """Same interface as SimpleTokenizer.filter: nothing is dropped."""
        return text, ""


def load_hf_tokenizer(path: str | os.PathLike, *, backend: str | None = None) -> HFTokenizer:
    """The tokenizer of a tokenizer.json file (or of a folder holding one); GPT2Error, one line,
    when it is missing, not JSON, or uses a stage Pythia does not read. backend: as HFTokenizer's."""
    path = Path(path)
    if path.is_dir():
        path = path / "tokenizer.json"
    if not path.is_file():
        raise GPT2Error(f"{path} not found; a Llama-family folder needs the model's tokenizer.json")
    if path.stat().st_size > MAX_TOKENIZER_JSON:
        raise GPT2Error(f"{path} is larger than {MAX_TOKENIZER_JSON >> 20} MB; it is not a tokenizer.json")
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GPT2Error(f"{path} is not readable JSON ({e}); download the model's tokenizer.json again") from None
    try:
        return HFTokenizer(obj, str(path), backend=backend)
    except (KeyError, TypeError, AttributeError) as e:
        raise GPT2Error(f"{path} is malformed ({type(e).__name__}: {e}); download it again") from None
