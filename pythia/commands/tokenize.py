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
               "tokenizer of a checkpoint or of a prepared corpus.")
EPILOG = ("examples:\n  python -m pythia tokenize --checkpoint books.npz --text 'Hello, world'\n"
          "  python -m pythia tokenize --data books.tok --text 'naïve café' | less")


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE", help="a .npz written by train, train-chat or convert-gpt2")
    src.add_argument("--data", metavar="DIR", help="a folder written by prepare")
    p.add_argument("--text", required=True, metavar="TEXT", help="the text to split into tokens")


def load_tokenizer(checkpoint: str | None, data: str | None):
    """The tokenizer of a checkpoint or of a prepared corpus folder."""
    if checkpoint:
        from ..formats.checkpoint import load_checkpoint
        return load_checkpoint(checkpoint, optimizer=False, quantized=True).tokenizer
    if data:
        from ..corpora.prepared import REPREPARE, read_meta, tokenizer_from_json
        meta = read_meta(Path(data))
        try:
            return tokenizer_from_json(meta["tokenizer"])
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"{str(Path(data) / 'meta.json')!r} holds an unreadable tokenizer ({e}); {REPREPARE}") \
                from None
    raise ConfigError("tokenize needs a tokenizer: --checkpoint FILE or --data DIR (a prepared corpus)")


def run(args: argparse.Namespace) -> int:
    from ..text.tokenview import render
    from ..ui import ConsoleUI, colour_allowed
    tokenizer = load_tokenizer(args.checkpoint, args.data)
    text = args.text.encode("utf-8", "replace").decode("utf-8")   # undecodable argv bytes -> '?'
    text, dropped = tokenizer.filter(text)
    if dropped:
        ConsoleUI(sys.stderr).notice(f"dropped {len(dropped)} character(s) the vocabulary lacks: {''.join(dropped)!r}")
    if not text:
        raise ConfigError("--text is empty (after dropping characters the vocabulary lacks); give some text")
    render(tokenizer, text, sys.stdout, colour_allowed(sys.stdout))
    return 0
