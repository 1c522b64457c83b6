# Pre-tokenizer regexes written as scanners over code points, shared by _bpe.pyx and _hf_bpe.pyx
# (each includes this file after declaring PyUnicode_READ). A scanner gives the end of the word
# that starts at code point i of a text whose piece ends at n; the regex's leftmost alternative
# that matches decides, as in the regex engine. Each code point has one class, looked up in a
# table built by pythia.text.bpe_fast.class_table from the Unicode categories the regexes name.

cdef enum:
    OTHER = 0          # neither letter, number nor whitespace: [^\s\p{L}\p{N}]
    LETTER = 1         # \p{L}
    NUMBER = 2         # \p{N}
    SPACE = 3          # \s, Unicode White_Space


cdef inline Py_ssize_t space_run(int kind, void* data, Py_ssize_t i, Py_ssize_t n,
                                 const unsigned char* table) noexcept nogil:
    """\\s+(?!\\S)|\\s+ at a whitespace code point i: the run to the end of the piece; else all
    but its last character when it is two or more long (the last one may lead the next word)."""
    cdef Py_ssize_t j = i + 1
    while j < n and table[PyUnicode_READ(kind, data, j)] == SPACE:
        j += 1
    if j == n or j - i < 2:
        return j
    return j - 1


cdef Py_ssize_t gpt2_word_end(int kind, void* data, Py_ssize_t i, Py_ssize_t n,
                              const unsigned char* table) noexcept nogil:
    """GPT-2's pattern  's|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+

    an ASCII contraction first; else an optional U+0020 then a run of one class (letters, numbers
    or other); else a whitespace run (space_run)."""
    cdef Py_UCS4 c = PyUnicode_READ(kind, data, i), d, e
    cdef Py_ssize_t j
    cdef int k
    if c == 39 and i + 1 < n:                                  # "'" : a contraction?
        d = PyUnicode_READ(kind, data, i + 1)
        if d == 115 or d == 116 or d == 109 or d == 100:       # 's 't 'm 'd
            return i + 2
        if i + 2 < n:
            e = PyUnicode_READ(kind, data, i + 2)
            if (d == 114 and e == 101) or (d == 118 and e == 101) or (d == 108 and e == 108):  # 're 've 'll
                return i + 3
    k = table[c]
    j = i + 1
    if c == 32 and i + 1 < n and table[PyUnicode_READ(kind, data, i + 1)] != SPACE:
        k = table[PyUnicode_READ(kind, data, i + 1)]           # ' ?X+': the space leads the run
        j = i + 2
    if k != SPACE:
        while j < n and table[PyUnicode_READ(kind, data, j)] == k:
            j += 1
        return j
    return space_run(kind, data, i, n, table)


cdef inline Py_UCS4 ascii_fold(Py_UCS4 c) noexcept nogil:
    """c case-folded as the (?i:...) of a contraction sees it: A-Z -> a-z, U+017F (long s) -> s,
    the one other code point that folds onto a contraction's letters."""
    if 65 <= c <= 90:
        return <Py_UCS4>(<unsigned int>c + 32)
    if c == 0x17F:
        return 115
    return c


cdef Py_ssize_t qwen2_word_end(int kind, void* data, Py_ssize_t i, Py_ssize_t n,
                               const unsigned char* table) noexcept nogil:
    """Qwen2's pattern, alternative by alternative:

        (?i:'s|'t|'re|'ve|'m|'ll|'d)      a contraction, any case
        [^\\r\\n\\p{L}\\p{N}]?\\p{L}+        letters, led by at most one non-letter, non-number, non-newline
        \\p{N}                            one number
         ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*         an optional U+0020, other characters, then newlines
        \\s*[\\r\\n]+                       whitespace up to and including its last newline
        \\s+(?!\\S)|\\s+                    as GPT-2's (space_run)"""
    cdef Py_UCS4 c = PyUnicode_READ(kind, data, i), d, e
    cdef Py_ssize_t j, last_newline
    cdef int k = table[c]
    if c == 39 and i + 1 < n:
        d = ascii_fold(PyUnicode_READ(kind, data, i + 1))
        if d == 115 or d == 116 or d == 109 or d == 100:
            return i + 2
        if i + 2 < n:
            e = ascii_fold(PyUnicode_READ(kind, data, i + 2))
            if (d == 114 and e == 101) or (d == 118 and e == 101) or (d == 108 and e == 108):
                return i + 3
    j = -1
    if k == LETTER:
        j = i + 1
    elif k != NUMBER and c != 10 and c != 13 and i + 1 < n and table[PyUnicode_READ(kind, data, i + 1)] == LETTER:
        j = i + 2
    if j >= 0:
        while j < n and table[PyUnicode_READ(kind, data, j)] == LETTER:
            j += 1
        return j
    if k == NUMBER:
        return i + 1
    if k == OTHER:
        j = i + 1
    elif c == 32 and i + 1 < n and table[PyUnicode_READ(kind, data, i + 1)] == OTHER:
        j = i + 2
    if j >= 0:
        while j < n and table[PyUnicode_READ(kind, data, j)] == OTHER:
            j += 1
        while j < n and (PyUnicode_READ(kind, data, j) == 10 or PyUnicode_READ(kind, data, j) == 13):
            j += 1
        return j
    last_newline = -1                                          # c is whitespace from here on
    j = i
    while j < n and table[PyUnicode_READ(kind, data, j)] == SPACE:
        if PyUnicode_READ(kind, data, j) == 10 or PyUnicode_READ(kind, data, j) == 13:
            last_newline = j
        j += 1
    if last_newline >= 0:
        return last_newline + 1
    return space_run(kind, data, i, n, table)
