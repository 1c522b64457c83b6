"""`python -m pythia prepare`: tokenize text files once into a folder that training memory-maps
(pythia.corpora.prepare does the work)."""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from ..errors import ConfigError
from .types import fraction, positive_float, positive_int, whole_number

NAME = "prepare"
SUMMARY = "tokenize text files once into a folder that training memory-maps"
DESCRIPTION = ("Stream text files into DIR (token files + meta.json) with a character tokenizer, "
               "a byte-level BPE trained on the text, or GPT-2's BPE.")
EPILOG = """\
The folder holds train.bin and val.bin (token ids, little-endian uint16, or uint32 above 65,536
tokens) and meta.json (tokenizer, counts, split, each file's size and SHA-256). Files are read
in chunks, never whole; the last --val-fraction of the tokens validates, as `train --data FILE`
splits them. A BPE puts <|endoftext|> between files.

examples:
  python -m pythia prepare --data books/*.txt --out books.tok
  python -m pythia prepare --data books/*.txt --out books.tok --tokenizer bpe --vocab-size 4096
  python -m pythia prepare --data books/*.txt --out books.tok --gpt2 ./gpt2
  python -m pythia train --data books.tok --steps 5000 --out books.npz"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", nargs="+", required=True, metavar="FILE", help="UTF-8 text files, in order")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (refused if it exists)")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                   help="char: one token per character; bpe: a byte-level BPE trained on the text")
    p.add_argument("--vocab-size", type=whole_number, default=4096, metavar="N",
                   help="tokens of the trained BPE (256 bytes + merges + <|endoftext|>)")
    p.add_argument("--gpt2", metavar="DIR", help="use GPT-2's BPE from a Hugging Face folder (vocab.json, merges.txt)")
    p.add_argument("--val-fraction", type=fraction, default=0.1, metavar="F", help="the last F of the tokens validate")
    p.add_argument("--bpe-sample", type=positive_float, default=32.0, metavar="MB",
                   help="train the BPE on a uniform random sample of about MB megabytes of the text")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="processes that encode with a BPE (default: one per CPU core, at most 4)")
    p.add_argument("--force", action="store_true", help="replace --out when it is an earlier prepared corpus")


def run(args: argparse.Namespace) -> int:
    """Options from the parsed flags, then a one-line summary."""
    from ..corpora.prepare import MAX_DEFAULT_WORKERS, PrepareOptions, prepare
    kind = "gpt2" if args.gpt2 else args.tokenizer
    if args.gpt2 and args.tokenizer == "bpe":
        raise ConfigError("--gpt2 brings GPT-2's own BPE; drop --tokenizer bpe (or drop --gpt2 to train one)")
    workers = args.workers or max(1, min(MAX_DEFAULT_WORKERS, os.cpu_count() or 1))
    o = PrepareOptions(files=[Path(p) for p in args.data], out=Path(args.out), tokenizer=kind,
                       vocab_size=args.vocab_size, gpt2_dir=Path(args.gpt2) if args.gpt2 else None,
                       val_fraction=args.val_fraction, bpe_sample_mb=args.bpe_sample, workers=workers,
                       force=args.force)
    from ..system.signals import guard_signals
    from ..system.streams import keep_running_without_streams
    t0 = time.perf_counter()
    keep_running_without_streams()             # progress is a report: the corpus outlives its reader
    with guard_signals():                      # any stop signal raises: the temporary folder is removed
        meta = prepare(o)
    print(f"wrote {o.out}: {meta['n_tokens']:,} tokens ({meta['n_train']:,} train, {meta['n_val']:,} val), "
          f"{meta['tokenizer']['kind']} tokenizer of {meta['vocab_size']:,}, {meta['dtype']}, "
          f"{time.perf_counter() - t0:.1f}s")
    print(f"train on it: python -m pythia train --data {o.out}")
    return 0
