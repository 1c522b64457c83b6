# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Compiled merge step of the tokenizer.json BPE behind `pythia.text.hf_bpe_fast`.

The specification is pure Python: `HFTokenizer._word`, `_spell`, `_merge` and `_merge_short` in
pythia.text.hf_tokenizer. A word (one pre-tokenized piece, already in the model's alphabet:
ByteLevel's printable characters or Metaspace's "▁") is spelled as symbol ids, then merged:

    spell   each code point c -> the id of the one-character token c, else (byte fallback) the
            ids of <0xXX> for each UTF-8 byte of c, else the unknown token's id (one for a run
            of unknowns with fuse_unk), else nothing (the character is dropped)
    merge   join the adjacent pair of lowest rank, leftmost first, until no pair is ranked

Merges arrive as id rows (left, right, merged), row r having rank r. A word of at most SHORT
symbols rescans for the best pair and joins every occurrence left to right (GPT-2's loop); a
longer one keeps (rank, slot) of adjacent pairs in a heap over a doubly linked list, O(n log n).
The two orders give the same ids (a merge never recreates the pair it consumed).

Each word's ids are cached as a Python list (words of at most cache_word code points, cleared at
cache_limit words), as the reference caches them; the cache changes speed, never ids.
"""
import numpy as np
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libcpp.vector cimport vector
from libcpp.unordered_map cimport unordered_map
from libcpp.queue cimport priority_queue
from libcpp.utility cimport pair
from cpython.dict cimport PyDict_GetItem
from cpython.ref cimport PyObject
from cython.operator cimport dereference as deref

cdef extern from "Python.h":
    int PyUnicode_KIND(object)
    void* PyUnicode_DATA(object)
    Py_UCS4 PyUnicode_READ(int kind, void* data, Py_ssize_t index) nogil
    object PyUnicode_Substring(object, Py_ssize_t start, Py_ssize_t end)
    object PyUnicode_FromKindAndData(int kind, const void* buffer, Py_ssize_t size)

include "_pretokenize.pxi"

cdef enum:
    SPLIT_GPT2 = 1                   # extend_text's patterns (pythia.text.hf_split_fast)
    SPLIT_QWEN2 = 2
    SHORT = 32                       # words of more symbols merge with the heap (as the reference)
cdef int64_t NO_RANK = 1 << 62


cdef inline uint64_t pair_key(int32_t a, int32_t b) noexcept nogil:
    return (<uint64_t><uint32_t>a << 32) | <uint32_t>b


cdef inline int utf8_bytes(uint32_t c, unsigned char* out) noexcept nogil:
    """UTF-8 of code point c into out; returns its length (1..4)."""
    if c < 0x80:
        out[0] = <unsigned char>c
        return 1
    if c < 0x800:
        out[0] = <unsigned char>(0xC0 | (c >> 6))
        out[1] = <unsigned char>(0x80 | (c & 0x3F))
        return 2
    if c < 0x10000:
        out[0] = <unsigned char>(0xE0 | (c >> 12))
        out[1] = <unsigned char>(0x80 | ((c >> 6) & 0x3F))
        out[2] = <unsigned char>(0x80 | (c & 0x3F))
        return 3
    out[0] = <unsigned char>(0xF0 | (c >> 18))
    out[1] = <unsigned char>(0x80 | ((c >> 12) & 0x3F))
    out[2] = <unsigned char>(0x80 | ((c >> 6) & 0x3F))
    out[3] = <unsigned char>(0x80 | (c & 0x3F))
    return 4


cdef class WordMerger:
    """Pre-tokenized words -> ids, the same ids as HFTokenizer's Python merge step.

    chars: code point -> id of its one-character token. byte_fallback: spell a character missing
    from chars as its UTF-8 bytes when every byte b has a token, byte_ids[b] (-1: none).
    merges: (M, 3) int32 rows (left, right, merged), rank = row. unk_id: the unknown token's id
    or -1. whole: the vocabulary (str -> id) when ignore_merges, else None. boundary: a compiled
    regex cutting a word longer than cache_word where no merge reaches across, or None. Every
    id is non-negative (the heap marks an absorbed slot with -1).
    """
    cdef unordered_map[uint64_t, int64_t] ranks   # pair_key -> rank << 32 | merged id
    cdef unordered_map[uint32_t, int32_t] chars   # code point -> id
    cdef int32_t byte_ids[256]
    cdef int32_t unk_id
    cdef bint fuse_unk, byte_fallback
    cdef object whole
    cdef object boundary
    cdef dict cache
    cdef dict raw_cache              # extend_text's: text before ByteLevel's map -> ids
    cdef Py_ssize_t cache_limit, cache_word

    def __init__(self, dict chars, bint byte_fallback, const int32_t[::1] byte_ids,
                 const int32_t[:, ::1] merges, int32_t unk_id, bint fuse_unk, whole, boundary,
                 Py_ssize_t cache_limit=100_000, Py_ssize_t cache_word=256):
        cdef Py_ssize_t r
        cdef uint64_t key
        if byte_ids.shape[0] != 256:
            raise ValueError(f"byte_ids must have 256 entries, not {byte_ids.shape[0]}")
        if merges.shape[1] != 3:
            raise ValueError(f"merges must be (M, 3) rows (left, right, merged), not {merges.shape[1]} columns")
        if (merges.shape[0] and np.asarray(merges).min() < 0) or any(not 0 <= i < 2**31 for i in chars.values()):
            raise ValueError("merges and chars must hold token ids in [0, 2**31)")
        if unk_id < -1 or np.asarray(byte_ids).min() < -1:
            raise ValueError("unk_id and byte_ids must be token ids or -1 (none)")
        for cp, i in chars.items():
            self.chars[<uint32_t>cp] = <int32_t>i
        for r in range(256):
            self.byte_ids[r] = byte_ids[r]
        for r in range(merges.shape[0]):
            key = pair_key(merges[r, 0], merges[r, 1])
            if self.ranks.count(key) == 0:                      # a repeated merge keeps its first rank
                self.ranks[key] = (<int64_t>r << 32) | <uint32_t>merges[r, 2]
        self.unk_id = unk_id
        self.fuse_unk = fuse_unk
        self.byte_fallback = byte_fallback
        self.whole = whole
        self.boundary = boundary
        self.cache = {}
        self.raw_cache = {}
        self.cache_limit = cache_limit
        self.cache_word = cache_word

    cdef int64_t rank_of(self, int32_t a, int32_t b) noexcept nogil:
        """rank << 32 | merged id of the pair (a, b), NO_RANK when no merge joins it."""
        cdef unordered_map[uint64_t, int64_t].iterator it = self.ranks.find(pair_key(a, b))
        if it == self.ranks.end():
            return NO_RANK
        return deref(it).second

    cdef int spell_into(self, str word, vector[int32_t]& s) except -1:
        """word's symbols appended to s: one-character tokens, else <0xXX> byte tokens, else unk."""
        cdef int kind = PyUnicode_KIND(word)
        cdef void* data = PyUnicode_DATA(word)
        cdef Py_ssize_t i, n = len(word)
        cdef Py_UCS4 c
        cdef unsigned char b[4]
        cdef int k, m
        cdef bint spelled
        cdef unordered_map[uint32_t, int32_t].iterator it
        for i in range(n):
            c = PyUnicode_READ(kind, data, i)
            it = self.chars.find(<uint32_t>c)
            if it != self.chars.end():
                s.push_back(deref(it).second)
                continue
            spelled = self.byte_fallback
            if spelled:
                if 0xD800 <= c <= 0xDFFF:                       # as str.encode("utf-8") refuses it
                    raise UnicodeEncodeError("utf-8", word, i, i + 1, "surrogates not allowed")
                m = utf8_bytes(<uint32_t>c, b)
                for k in range(m):
                    spelled = spelled and self.byte_ids[b[k]] >= 0
            if spelled:
                for k in range(m):
                    s.push_back(self.byte_ids[b[k]])
            elif self.unk_id >= 0:
                if not (self.fuse_unk and s.size() > 0 and s.back() == self.unk_id):
                    s.push_back(self.unk_id)
            # else: no way to spell the character; dropped, as in the reference
        return 0

    cdef void merge_short(self, vector[int32_t]& s) noexcept nogil:
        """Rescan for the lowest-ranked pair, join every occurrence left to right; repeat."""
        cdef Py_ssize_t t, u
        cdef int64_t best, v
        cdef int32_t a = 0, b = 0, new_id
        while s.size() >= 2:
            best = NO_RANK
            for t in range(<Py_ssize_t>s.size() - 1):
                v = self.rank_of(s[t], s[t + 1])
                if v < best:
                    best, a, b = v, s[t], s[t + 1]
            if best == NO_RANK:
                break
            new_id = <int32_t><uint32_t>best
            u = 0
            t = 0
            while t < <Py_ssize_t>s.size():
                if t + 1 < <Py_ssize_t>s.size() and s[t] == a and s[t + 1] == b:
                    s[u] = new_id
                    t += 2
                else:
                    s[u] = s[t]
                    t += 1
                u += 1
            s.resize(u)

    cdef void merge_heap(self, vector[int32_t]& s) noexcept nogil:
        """The same merges through a heap of (rank, slot); slots form a doubly linked list, and an
        entry is stale when its slot was absorbed or its pair changed since it was pushed."""
        cdef Py_ssize_t n = s.size(), t
        cdef int32_t i, j, p, k, u
        cdef int64_t v, r
        cdef vector[int32_t] nxt, prv
        cdef priority_queue[pair[int64_t, int64_t]] heap   # (-rank, -slot): lowest rank, leftmost
        cdef pair[int64_t, int64_t] top
        nxt.resize(n)
        prv.resize(n)
        for t in range(n):
            nxt[t] = <int32_t>(t + 1)                            # n = end
            prv[t] = <int32_t>(t - 1)                            # -1 = start
        for t in range(n - 1):
            v = self.rank_of(s[t], s[t + 1])
            if v != NO_RANK:
                heap.push(pair[int64_t, int64_t](-(v >> 32), -t))
        while not heap.empty():
            top = heap.top()
            heap.pop()
            r, i = -top.first, <int32_t>(-top.second)
            j = nxt[i]
            if s[i] < 0 or j >= n:
                continue
            v = self.rank_of(s[i], s[j])
            if v == NO_RANK or (v >> 32) != r:
                continue                                         # stale entry
            s[i] = <int32_t><uint32_t>v                          # slot j merged into slot i
            s[j] = -1
            nxt[i] = nxt[j]
            if nxt[j] < n:
                prv[nxt[j]] = i
            p, k = prv[i], nxt[i]
            if p >= 0:
                v = self.rank_of(s[p], s[i])
                if v != NO_RANK:
                    heap.push(pair[int64_t, int64_t](-(v >> 32), -p))
            if k < n:
                v = self.rank_of(s[i], s[k])
                if v != NO_RANK:
                    heap.push(pair[int64_t, int64_t](-(v >> 32), -i))
        u = 0
        for t in range(n):
            if s[t] >= 0:
                s[u] = s[t]
                u += 1
        s.resize(u)

    cdef list compute(self, str word):
        """Ids of one word without the cache: spelled, then merged."""
        cdef vector[int32_t] s
        cdef Py_ssize_t t
        if self.whole is not None and word in self.whole:       # ignore_merges: a token as it stands
            return [self.whole[word]]
        self.spell_into(word, s)
        with nogil:
            if s.size() <= SHORT:
                self.merge_short(s)
            else:
                self.merge_heap(s)
        return [s[t] for t in range(<Py_ssize_t>s.size())]

    cdef void keep(self, dict cache, str word, list ids):
        """Cache ids under word, as the reference does: short words only, cleared when full."""
        if len(word) <= self.cache_word:                        # a whole text is not worth keeping
            if len(cache) >= self.cache_limit:
                cache.clear()
            cache[word] = ids

    cdef list spell(self, str word):
        """Ids of one word (HFTokenizer._spell), through the cache."""
        cdef PyObject* hit = PyDict_GetItem(self.cache, word)
        cdef list ids
        if hit != NULL:
            return <list>hit
        ids = self.compute(word)
        self.keep(self.cache, word, ids)
        return ids

    def word(self, str word):
        """Ids of one word (HFTokenizer._word): a long word is first cut at the boundary."""
        if len(word) > self.cache_word and self.boundary is not None:
            return [i for sub in self.boundary.split(word) if sub for i in self.spell(sub)]
        return list(self.spell(word))

    def extend(self, list pieces, list out):
        """Append to out the ids of each (word, at_start) piece, in order (the pre-tokenizer's list)."""
        cdef str w
        for piece in pieces:
            w = piece[0]
            if len(w) > self.cache_word and self.boundary is not None:
                for sub in self.boundary.split(w):
                    if sub:
                        out.extend(self.spell(sub))
            else:
                out.extend(self.spell(w))

    cdef list spell_bytes(self, str raw, const int32_t* byte_chars):
        """Ids of one word before ByteLevel's map: its UTF-8 bytes (surrogates as "surrogatepass"
        writes them) become the characters byte_chars names, then the word is merged (as extend)."""
        cdef PyObject* hit = PyDict_GetItem(self.raw_cache, raw)
        cdef int kind = PyUnicode_KIND(raw)
        cdef void* data = PyUnicode_DATA(raw)
        cdef Py_ssize_t i, n = len(raw)
        cdef vector[Py_UCS4] mapped
        cdef unsigned char b[4]
        cdef int k, m
        cdef list ids
        if hit != NULL:
            return <list>hit
        for i in range(n):
            m = utf8_bytes(<uint32_t>PyUnicode_READ(kind, data, i), b)
            for k in range(m):
                mapped.push_back(<Py_UCS4>byte_chars[b[k]])
        word = PyUnicode_FromKindAndData(4, mapped.data(), <Py_ssize_t>mapped.size())  # 4: UCS-4 kind
        if len(word) > self.cache_word and self.boundary is not None:
            ids = [j for sub in self.boundary.split(word) if sub for j in self.spell(sub)]
        else:
            ids = self.compute(word)
        self.keep(self.raw_cache, raw, ids)
        return ids

    def extend_text(self, str text, int pattern, bint digits, const uint8_t[::1] table,
                    const int32_t[::1] byte_chars, list out):
        """Append to out the ids of one normalized piece of text, split by a compiled pre-tokenizer
        and mapped by ByteLevel (pythia.text.hf_split_fast names the tokenizer.json setups): pattern
        SPLIT_GPT2 is GPT-2's regex (digits: each \\p{N} made a piece of its own first, as
        Digits(individual_digits) before it), SPLIT_QWEN2 Qwen2's. table: a class per code point
        (pythia.text.bpe_fast.class_table); byte_chars: ByteLevel's character for each byte."""
        cdef Py_ssize_t i = 0, j, n = len(text), next_digit = -1
        cdef int kind = PyUnicode_KIND(text)
        cdef void* data = PyUnicode_DATA(text)
        cdef const unsigned char* tab
        if pattern != SPLIT_GPT2 and pattern != SPLIT_QWEN2:
            raise ValueError(f"pattern must be {SPLIT_GPT2} (GPT-2's) or {SPLIT_QWEN2} (Qwen2's), not {pattern}")
        if digits and pattern != SPLIT_GPT2:
            raise ValueError("digits applies to GPT-2's pattern only")
        if table.shape[0] != 0x110000:
            raise ValueError(f"table must have a class for each of the 0x110000 code points, not {table.shape[0]}")
        if byte_chars.shape[0] != 256:
            raise ValueError(f"byte_chars must have 256 entries, not {byte_chars.shape[0]}")
        if np.asarray(table).max() > SPACE or not 0 <= np.asarray(byte_chars).min() <= np.asarray(byte_chars).max() < 0x110000:
            raise ValueError("table holds classes 0-3 and byte_chars code points below 0x110000")
        tab = &table[0]
        while i < n:
            if digits:
                if next_digit < i:                              # the next \\p{N} at or after i (or n)
                    next_digit = i
                    while next_digit < n and tab[PyUnicode_READ(kind, data, next_digit)] != NUMBER:
                        next_digit += 1
                j = i + 1 if next_digit == i else gpt2_word_end(kind, data, i, next_digit, tab)
            elif pattern == SPLIT_GPT2:
                j = gpt2_word_end(kind, data, i, n, tab)
            else:
                j = qwen2_word_end(kind, data, i, n, tab)
            out.extend(self.spell_bytes(PyUnicode_Substring(text, i, j), &byte_chars[0]))
            i = j

    def clear_cache(self):
        self.cache.clear()
        self.raw_cache.clear()
