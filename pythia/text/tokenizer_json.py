"""A character vocabulary as a `tokenizer.json` in the format of Hugging Face's `tokenizers` library.

Written so that `PreTrainedTokenizerFast(tokenizer_file=...)` (or AutoTokenizer on an exported
folder) encodes and decodes exactly as SimpleTokenizer does:

    normalizer, pre_tokenizer: none     the whole text is one piece, nothing is changed
    model: BPE with no merges           a piece splits into its Unicode code points, each looked up
                                        in the vocabulary (char -> id, ids in sorted order)
    decoder: Fuse                       ids -> characters, concatenated with nothing between them

so encode(text) is [stoi[c] for c in text] and decode(ids) is "".join(chars[i] for i in ids).
Characters outside the vocabulary follow Pythia's one rule, they are dropped: with no unknown
token `tokenizers` drops them silently, as Pythia's commands do with a notice (SimpleTokenizer.filter).

read_char_tokenizer_json() recognises this layout (and only it) when Pythia reads a folder back.
"""
from __future__ import annotations

from pathlib import Path

from ..errors import GPT2Error
from ..tokenizer import SimpleTokenizer


def char_tokenizer_json(tokenizer: SimpleTokenizer) -> dict:
    """The tokenizer.json object for a character vocabulary (see module docstring)."""
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [],
        "normalizer": None,
        "pre_tokenizer": None,
        "post_processor": None,
        "decoder": {"type": "Fuse"},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": None,
                  "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False,
                  "vocab": {c: i for i, c in enumerate(tokenizer.chars)}, "merges": []},
    }


def char_tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json beside it: the fast tokenizer class, and no clean-up of spaces on
    decode (transformers would otherwise delete the space before punctuation)."""
    return {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": int(model_max_length),
            "clean_up_tokenization_spaces": False}


def is_char_tokenizer_json(obj: object) -> bool:
    """Whether a parsed tokenizer.json has the layout char_tokenizer_json() writes."""
    if not isinstance(obj, dict):
        return False
    model = obj.get("model")
    return (isinstance(model, dict) and model.get("type") == "BPE" and model.get("merges") == []
            and isinstance(model.get("vocab"), dict) and obj.get("pre_tokenizer") is None
            and obj.get("normalizer") is None and obj.get("decoder") == {"type": "Fuse"}
            and not obj.get("added_tokens"))


def read_char_tokenizer_json(path: str | Path) -> SimpleTokenizer:
    """The SimpleTokenizer a Pythia-written tokenizer.json describes; GPT2Error on anything else."""
    from .bpe import read_gpt2_json
    path = Path(path)
    obj = read_gpt2_json(path)
    if not is_char_tokenizer_json(obj):
        raise GPT2Error(f"{path} is not a character tokenizer written by Pythia's export; a GPT-2 folder "
                        f"needs vocab.json and merges.txt (byte-level BPE) or that tokenizer.json")
    vocab = obj["model"]["vocab"]
    chars = sorted(vocab, key=lambda c: vocab[c])
    ok = (all(isinstance(c, str) and len(c) == 1 for c in chars)
          and [vocab[c] for c in chars] == list(range(len(chars))) and chars == sorted(chars))
    if not ok:
        raise GPT2Error(f"{path}: the vocabulary must map single characters, in sorted order, to ids 0, 1, 2, ...; "
                        f"this one does not, so it is not a Pythia character tokenizer")
    return SimpleTokenizer(chars)
