# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# distutils: language = c++
"""Compiled byte-level BPE behind `pythia.bpe_fast`: pre-tokenize, encode, train.

The specification is pure Python: `pythia.bpe.pretokenize` (GPT-2's regex), `pythia.bpe_train`
(minbpe-style get_stats / merge) and `GPT2Tokenizer._merge`. This module computes the same
words, ids and merges; the parity tests hold it to that.

Pre-tokenization is GPT-2's pattern written as a scanner over code points, with one class per
code point looked up in a table (0 other, 1 letter, 2 number, 3 whitespace) built by
pythia.bpe_fast from the same Unicode categories as the regex:

    's|'t|'re|'ve|'m|'ll|'d       an ASCII contraction, tried first
    ' '? then a run of one class  letters, numbers or "other" (the optional space is U+0020)
    whitespace run                all of it at the end of the text; else all but its last
                                  character when it is two or more long ((?!\\S) backs off one),
                                  so the last one can lead the next word; else the one character

Training is the incremental algorithm (as Hugging Face's BpeTrainer does it): pair counts are
kept in a hash map, a max-heap orders pairs by (count, then smallest (left, right)), and a merge
updates only the words that hold the pair, through an index pair -> words. Heap entries whose
count went stale are corrected when popped. Words are doubly linked lists of symbols in one
flat array, so a merge unlinks one slot.
"""
cimport numpy as cnp
import numpy as np
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
from libcpp.vector cimport vector
from libcpp.unordered_map cimport unordered_map
from libcpp.queue cimport priority_queue
from libcpp.utility cimport pair
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize
from cpython.dict cimport PyDict_GetItem, PyDict_SetItem
from cpython.ref cimport PyObject
from cython.operator cimport dereference as deref

cnp.import_array()

cdef extern from "Python.h":
    int PyUnicode_KIND(object)
    void* PyUnicode_DATA(object)
    Py_UCS4 PyUnicode_READ(int kind, void* data, Py_ssize_t index) nogil
    object PyUnicode_Substring(object, Py_ssize_t start, Py_ssize_t end)

include "_pretokenize.pxi"

cdef int64_t NO_RANK = 1 << 62


cdef inline uint64_t pair_key(int32_t a, int32_t b) noexcept nogil:
    return (<uint64_t><uint32_t>a << 32) | <uint32_t>b


def pretokenize(str text, const uint8_t[::1] table):
    """GPT-2's words of text, as pythia.bpe.pretokenize gives them."""
    cdef Py_ssize_t i = 0, j, n = len(text)
    cdef int kind = PyUnicode_KIND(text)
    cdef void* data = PyUnicode_DATA(text)
    out = []
    while i < n:
        j = gpt2_word_end(kind, data, i, n, &table[0])
        out.append(PyUnicode_Substring(text, i, j))
        i = j
    return out


def count_words(str text, dict counts, const uint8_t[::1] table):
    """Add the occurrences of each word of text to counts (word -> int)."""
    cdef Py_ssize_t i = 0, j, n = len(text)
    cdef int kind = PyUnicode_KIND(text)
    cdef void* data = PyUnicode_DATA(text)
    cdef PyObject* hit
    while i < n:
        j = gpt2_word_end(kind, data, i, n, &table[0])
        w = PyUnicode_Substring(text, i, j)
        hit = PyDict_GetItem(counts, w)
        PyDict_SetItem(counts, w, 1 if hit == NULL else <object>hit + 1)
        i = j


cdef class Encoder:
    """Words -> ids under a merge table of ids: (left, right) -> (rank, merged id).

    byte_ids[b] is the id of the byte token b. Each word's ids are cached (as int32 bytes) up to
    cache_limit distinct words; the cache is then cleared, which bounds its memory.
    """
    cdef unordered_map[uint64_t, int64_t] ranks   # pair_key -> rank << 32 | merged id
    cdef int32_t byte_ids[256]
    cdef dict cache
    cdef const uint8_t[::1] table
    cdef Py_ssize_t cache_limit

    def __init__(self, const int32_t[::1] byte_ids, const int32_t[:, ::1] merges,
                 const int32_t[::1] merged, const uint8_t[::1] table, Py_ssize_t cache_limit=200_000):
        cdef Py_ssize_t r
        cdef uint64_t key
        if byte_ids.shape[0] != 256 or merges.shape[0] != merged.shape[0]:
            raise ValueError("byte_ids must have 256 entries and merges one merged id each")
        for r in range(256):
            self.byte_ids[r] = byte_ids[r]
        for r in range(merges.shape[0]):
            key = pair_key(merges[r, 0], merges[r, 1])
            if self.ranks.count(key) == 0:                      # a repeated merge keeps its first rank
                self.ranks[key] = (<int64_t>r << 32) | <uint32_t>merged[r]
        self.cache = {}
        self.table = table
        self.cache_limit = cache_limit

    cdef bytes _word(self, str w):
        """One word's ids as int32 bytes: its byte tokens, merged lowest rank first."""
        cdef bytes raw = w.encode("utf-8", "surrogatepass")
        cdef const unsigned char* p = <const unsigned char*>PyBytes_AS_STRING(raw)
        cdef Py_ssize_t n = PyBytes_GET_SIZE(raw), t, u
        cdef vector[int32_t] s
        cdef int64_t best, v
        cdef int32_t a = 0, b = 0, new_id
        cdef unordered_map[uint64_t, int64_t].iterator it
        s.reserve(n)
        for t in range(n):
            s.push_back(self.byte_ids[p[t]])
        while s.size() >= 2:
            best = NO_RANK
            for t in range(<Py_ssize_t>s.size() - 1):
                it = self.ranks.find(pair_key(s[t], s[t + 1]))
                if it != self.ranks.end():
                    v = deref(it).second
                    if v < best:
                        best, a, b = v, s[t], s[t + 1]
            if best == NO_RANK:
                break
            new_id = <int32_t><uint32_t>best
            u = 0
            t = 0
            while t < <Py_ssize_t>s.size():                     # every occurrence, left to right
                if t + 1 < <Py_ssize_t>s.size() and s[t] == a and s[t + 1] == b:
                    s[u] = new_id
                    t += 2
                else:
                    s[u] = s[t]
                    t += 1
                u += 1
            s.resize(u)
        return PyBytes_FromStringAndSize(<char*>s.data(), <Py_ssize_t>s.size() * 4)

    def encode(self, str text):
        """int32 ids of text (no special tokens: the caller splits them out)."""
        cdef Py_ssize_t i = 0, j, n = len(text), m
        cdef int kind = PyUnicode_KIND(text)
        cdef void* data = PyUnicode_DATA(text)
        cdef vector[int32_t] out
        cdef PyObject* hit
        cdef const int32_t* ids
        out.reserve(n // 3 + 16)
        while i < n:
            j = gpt2_word_end(kind, data, i, n, &self.table[0])
            w = PyUnicode_Substring(text, i, j)
            hit = PyDict_GetItem(self.cache, w)
            if hit == NULL:
                value = self._word(w)
                if len(self.cache) >= self.cache_limit:
                    self.cache.clear()
                self.cache[w] = value
            else:
                value = <object>hit
            ids = <const int32_t*>PyBytes_AS_STRING(value)
            m = PyBytes_GET_SIZE(value) // 4
            out.insert(out.end(), ids, ids + m)
            i = j
        result = np.empty(out.size(), dtype=np.int32)
        cdef int32_t[::1] r = result
        for i in range(<Py_ssize_t>out.size()):
            r[i] = out[i]
        return result


def train_merges(list words, const int64_t[::1] counts, Py_ssize_t n_merges):
    """(M, 2) int32 merges learnt from words (bytes objects) occurring counts[w] times each,
    M <= n_merges: the same merges as pythia.bpe_train.train_merges."""
    cdef Py_ssize_t W = len(words), w, t, total = 0, start, k
    cdef vector[int32_t] sym, nxt, prv, word_of, word_start
    cdef pair[uint64_t, int64_t] kv
    cdef vector[int64_t] wcount
    cdef vector[int64_t] last_seen
    cdef unordered_map[uint64_t, int64_t] stats
    cdef unordered_map[uint64_t, vector[int32_t]] where
    cdef priority_queue[pair[int64_t, uint64_t]] heap      # (count, ~key): max count, then min key
    cdef vector[uint64_t] touched
    cdef vector[int32_t] holders
    cdef pair[int64_t, uint64_t] top
    cdef uint64_t key, q
    cdef int64_t c, actual
    cdef int32_t a, b, new_id, i, j, p, nx
    cdef const unsigned char* raw
    if counts.shape[0] != W:
        raise ValueError("one count per word")
    merges = np.zeros((max(n_merges, 0), 2), dtype=np.int32)
    cdef int32_t[:, ::1] out = merges
    for w in range(W):
        word = words[w]
        raw = <const unsigned char*>PyBytes_AS_STRING(word)
        start = total
        for t in range(PyBytes_GET_SIZE(word)):
            sym.push_back(raw[t])
            prv.push_back(-1 if t == 0 else <int32_t>(total - 1))
            nxt.push_back(<int32_t>(total + 1))
            word_of.push_back(<int32_t>w)
            total += 1
        if total > start:
            nxt[total - 1] = -1
        word_start.push_back(<int32_t>start if total > start else -1)
        wcount.push_back(counts[w])
        last_seen.push_back(-1)
    with nogil:
        for t in range(total):                                  # initial pair counts and index
            if nxt[t] != -1:
                key = pair_key(sym[t], sym[nxt[t]])
                stats[key] += wcount[word_of[t]]
                where[key].push_back(word_of[t])
        for kv in stats:
            heap.push(pair[int64_t, uint64_t](kv.second, ~kv.first))
        k = 0
        while k < n_merges and not heap.empty():
            top = heap.top()
            heap.pop()
            key = ~top.second
            actual = stats[key]
            if actual != top.first:                             # stale: re-queue at its true count
                if actual > 0:
                    heap.push(pair[int64_t, uint64_t](actual, top.second))
                continue
            if actual <= 0:
                continue
            a = <int32_t>(key >> 32)
            b = <int32_t><uint32_t>key
            new_id = <int32_t>(256 + k)
            out[k, 0] = a
            out[k, 1] = b
            holders.swap(where[key])
            where.erase(key)
            touched.clear()
            for w in range(<Py_ssize_t>holders.size()):
                if last_seen[holders[w]] == k:                  # listed twice: already done
                    continue
                last_seen[holders[w]] = k
                c = wcount[holders[w]]
                i = word_start[holders[w]]                      # a merge never removes a word's first slot
                while i != -1 and nxt[i] != -1:
                    j = nxt[i]
                    if sym[i] == a and sym[j] == b:
                        p = prv[i]
                        nx = nxt[j]
                        stats[key] -= c
                        if p != -1:
                            stats[pair_key(sym[p], a)] -= c
                            q = pair_key(sym[p], new_id)
                            stats[q] += c
                            where[q].push_back(holders[w])
                            touched.push_back(q)
                        if nx != -1:
                            stats[pair_key(b, sym[nx])] -= c
                            q = pair_key(new_id, sym[nx])
                            stats[q] += c
                            where[q].push_back(holders[w])
                            touched.push_back(q)
                            prv[nx] = i
                        sym[i] = new_id
                        nxt[i] = nx
                        sym[j] = -1
                        i = nx                                   # non-overlapping: go past the merged pair
                    else:
                        i = j
            holders.clear()
            stats.erase(key)
            for t in range(<Py_ssize_t>touched.size()):
                q = touched[t]
                if stats[q] > 0:
                    heap.push(pair[int64_t, uint64_t](stats[q], ~q))
            k += 1
    return merges[:k]

