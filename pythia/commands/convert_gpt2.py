"""`python -m pythia convert-gpt2`: a Hugging Face GPT-2 folder as one Pythia checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

from .model_source import gpt2_support

NAME = "convert-gpt2"
SUMMARY = "convert a Hugging Face GPT-2 folder to a Pythia checkpoint"
DESCRIPTION = ("Read config.json, model.safetensors, vocab.json and merges.txt from DIR with NumPy "
               "alone and save them as one Pythia .npz checkpoint.")
EPILOG = ("examples:\n  python -m pythia convert-gpt2 ./gpt2 --out gpt2.npz\n"
          "  python -m pythia chat --checkpoint gpt2.npz")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("dir", metavar="DIR", help="the GPT-2 folder")
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")


def run(args: argparse.Namespace) -> int:
    from ..system.claims import claim_output
    from ..system.streams import keep_running_without_streams
    keep_running_without_streams()              # the summary is a report: the file is the product
    from ..system.signals import guard_signals
    source = Path(args.dir)
    inputs = {"DIR": [p for p in source.iterdir() if p.is_file()] if source.is_dir() else []}
    with guard_signals(), claim_output(args.out, flag="--out", replace=args.force, inputs=inputs) as claim:
        written = gpt2_support().convert_gpt2(args.dir, claim.path, overwrite=args.force)
    print(f"wrote {written}; chat with it: python -m pythia chat --checkpoint {written}")
    return 0
