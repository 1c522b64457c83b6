"""The compiled merge step of HFTokenizer (tokenizer.json BPE), and the choice of backend.

`pythia._hf_bpe.WordMerger` (built from kernels/_hf_bpe.pyx) gives each pre-tokenized word the
ids HFTokenizer's Python `_word` / `_spell` / `_merge` give it; the parity tests hold them equal.
The tables are the tokenizer's own, turned from strings into ids: one-character tokens by code
point, the <0xXX> byte tokens, and merges as (left id, right id, merged id) rows in rank order.

BACKEND is "cython" when the extension is built and PYTHIA_KERNELS is not "numpy" (the switch
pythia.kernels and pythia.text.bpe_fast read), else "python": the reference does the work.
"""
from __future__ import annotations

import os

import numpy as np

from ..kernels._loader import _import

# this package's build, or an installed copy's when a source checkout shadows it (as the kernels
# are found); None without either: the reference does the work
_hf_bpe = _import("_hf_bpe")

BACKEND = "cython" if _hf_bpe is not None and os.environ.get("PYTHIA_KERNELS", "").lower() != "numpy" else "python"


def resolve(backend: str | None) -> str:
    """"cython" or "python" for a requested backend (None: BACKEND); ValueError on another name,
    RuntimeError when "cython" is asked for and the extension is not built."""
    backend = backend or BACKEND
    if backend not in ("cython", "python"):
        raise ValueError(f"unknown tokenizer backend {backend!r}; choose 'cython' or 'python'")
    if backend == "cython" and _hf_bpe is None:
        raise RuntimeError("the compiled tokenizer (pythia._hf_bpe) is not built; run "
                           "`python setup.py build_ext --inplace` or choose backend 'python'")
    return backend


def merger_for(vocab: dict[str, int], ranks: dict[tuple[str, str], int], *, byte_fallback: bool,
               unk_token: str | None, fuse_unk: bool, ignore_merges: bool, boundary,
               cache_limit: int, cache_word: int):
    """A WordMerger with the same ids as the Python merge step over these tables, or None when
    the tables are outside what it computes exactly (then the caller keeps the reference):
    two tokens sharing an id, an id past int32, or a merge of two tokens whose join is not a token."""
    if len(set(vocab.values())) != len(vocab) or max(vocab.values(), default=0) >= 2**31:
        return None                             # ids must name one token each and fit int32
    # Every symbol is a token: characters, byte tokens and unk are looked up in vocab, and a merge
    # of two tokens makes a token (checked below), so a merge whose halves are not both tokens can
    # never apply: leaving it out changes no id.
    rows = []
    for (a, b), rank in sorted(ranks.items(), key=lambda kv: kv[1]):   # rows in rank order
        if a in vocab and b in vocab:
            joined = vocab.get(a + b)
            if joined is None:
                return None                     # the reference would make a symbol with no id
            rows.append((vocab[a], vocab[b], joined))
    merges = np.array(rows, dtype=np.int32).reshape(-1, 3)                  # (M, 3)
    chars = {ord(t): i for t, i in vocab.items() if len(t) == 1}
    byte_ids = np.array([vocab.get(f"<0x{b:02X}>", -1) for b in range(256)], dtype=np.int32)
    unk_id = vocab.get(unk_token, -1) if unk_token is not None else -1
    return _hf_bpe.WordMerger(chars, byte_fallback, byte_ids, merges, unk_id, fuse_unk,
                              vocab if ignore_merges else None, boundary, cache_limit, cache_word)
