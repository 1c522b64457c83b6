"""Which tokenizer.json pre-tokenizers the compiled scanners reproduce, and their tables.

The pre-tokenizers of pythia.text.hf_pretokenize are the specification: a regex split then
ByteLevel's byte -> character map. Three set-ups in wide use are also written as scanners in
kernels/_pretokenize.pxi, run by `WordMerger.extend_text` together with the map and the merge:

    ByteLevel(use_regex=true)                          GPT-2, SmolLM2's base vocabulary
    Sequence[Digits(individual_digits=true), ByteLevel(use_regex=true)]         SmolLM2
    Sequence[Split(Qwen2's regex, Isolated), ByteLevel(use_regex=false)]       Qwen2, Qwen2.5

each with add_prefix_space false. Any other set-up (another regex, a prefix space, Metaspace)
returns None from split_plan, and the Python stages run.
"""
from __future__ import annotations

import functools

import numpy as np

from .bpe import bytes_to_unicode

SPLIT_GPT2, SPLIT_QWEN2 = 1, 2          # the pattern codes of _hf_bpe.WordMerger.extend_text
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _byte_level(spec: dict, *, regex: bool) -> bool:
    return (spec.get("type") == "ByteLevel" and not spec.get("add_prefix_space", True)
            and bool(spec.get("use_regex", True)) == regex)


def split_plan(spec: dict | None) -> tuple[int, bool] | None:
    """(pattern code, digits first) for a pre_tokenizer object the scanners reproduce, else None."""
    if not isinstance(spec, dict):
        return None
    if _byte_level(spec, regex=True):
        return SPLIT_GPT2, False
    steps = spec.get("pretokenizers") if spec.get("type") == "Sequence" else None
    if not isinstance(steps, list) or len(steps) != 2 or not all(isinstance(s, dict) for s in steps):
        return None
    first, second = steps
    if first.get("type") == "Digits" and first.get("individual_digits") and _byte_level(second, regex=True):
        return SPLIT_GPT2, True
    if (first.get("type") == "Split" and first.get("pattern") == {"Regex": QWEN2_PATTERN}
            and first.get("behavior", "Isolated") == "Isolated" and not first.get("invert")
            and _byte_level(second, regex=False)):
        return SPLIT_QWEN2, False
    return None


@functools.cache
def byte_chars() -> np.ndarray:
    """ByteLevel's printable character for each byte, as int32 code points (256,)."""
    table = bytes_to_unicode()
    return np.array([ord(table[b]) for b in range(256)], dtype=np.int32)
