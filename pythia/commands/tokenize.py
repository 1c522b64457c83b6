"""`python -m pythia tokenize`: how the tokenizer of a checkpoint or a prepared corpus splits a text
(shown by pythia.text.tokenview)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import ConfigError, DataError

NAME = "tokenize"
SUMMARY = "show how a tokenizer splits a text"
DESCRIPTION = ("Print the tokens of --text with their ids and boundaries, and their count, using the "
               "tokenizer of a model (a checkpoint or a Hugging Face folder) or of a prepared corpus.")
EPILOG = ("examples:\n  python -m pythia tokenize --model books.npz --text 'Hello, world'\n"
          "  python -m pythia tokenize --model ./smollm2 --text '<|im_start|>user 12345'\n"
          "  python -m pythia tokenize --data books.tok --text 'naïve café' | less")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="SRC", help="a checkpoint (.npz) or a Hugging Face model folder (only "
                                                     "its tokenizer files are read)")
    src.add_argument("--checkpoint", metavar="FILE", help="the same as --model FILE")
    src.add_argument("--data", metavar="DIR", help="a folder written by prepare")
    p.add_argument("--text", required=True, metavar="TEXT", help="the text to split into tokens")


def load_tokenizer(checkpoint: str | None, data: str | None):
    """The tokenizer of a checkpoint, a Hugging Face folder or a prepared corpus folder."""
    if checkpoint and Path(checkpoint).is_dir():
        from ..formats.hf_folder import is_hf_llama_folder
        from ..formats.source import refuse_unknown_model_type
        if is_hf_llama_folder(checkpoint):
            from ..text.hf_tokenizer import load_hf_tokenizer
            return load_hf_tokenizer(checkpoint)
        refuse_unknown_model_type(Path(checkpoint))
        from ..formats.gpt2 import read_tokenizer
        return read_tokenizer(Path(checkpoint))
    if checkpoint:
        from ..formats.checkpoint import load_checkpoint
        from ..formats.source import open_model
        return load_checkpoint(checkpoint, optimizer=False, open_base=open_model, quantized=True).tokenizer
    if data:
        from ..corpora.prepared import REPREPARE, read_meta, tokenizer_from_json
        meta = read_meta(Path(data))
        try:
            return tokenizer_from_json(meta["tokenizer"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{str(Path(data) / 'meta.json')!r} holds an unreadable tokenizer ({e}); {REPREPARE}") \
                from None
    raise ConfigError("tokenize needs a tokenizer: --model SRC or --data DIR (a prepared corpus)")


def run(args: argparse.Namespace) -> int:
    from ..text.tokenview import render
    from ..ui import ConsoleUI, colour_allowed
    tokenizer = load_tokenizer(args.model or args.checkpoint, args.data)
    text = args.text.encode("utf-8", "replace").decode("utf-8")   # undecodable argv bytes -> '?'
    text, dropped = tokenizer.filter(text)
    if dropped:
        ConsoleUI(sys.stderr).notice(f"dropped {len(dropped)} character(s) the vocabulary lacks: {''.join(dropped)!r}")
    if not text:
        raise ConfigError("--text is empty (after dropping characters the vocabulary lacks); give some text")
    render(tokenizer, text, sys.stdout, colour_allowed(sys.stdout))
    return 0
