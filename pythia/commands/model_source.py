"""The model a command runs: --checkpoint FILE or --gpt2 DIR (chat, generate, explain)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_model_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE", help="a .npz written by train, train-chat or convert-gpt2")
    src.add_argument("--gpt2", metavar="DIR",
                     help="a Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt)")


def gpt2_support():
    """pythia.formats.gpt2, or a ConfigError when this installation lacks it."""
    try:
        from ..formats import gpt2
    except ImportError as e:
        raise ConfigError(f"GPT-2 support is missing from this installation ({e}); reinstall Pythia") from None
    return gpt2


def load_model(args: argparse.Namespace):
    """(model, tokenizer, description) from --checkpoint FILE or --gpt2 DIR."""
    if args.gpt2:
        model, tokenizer = gpt2_support().load_gpt2(args.gpt2)
        return model, tokenizer, f"GPT-2 weights from {args.gpt2}"
    if args.checkpoint:
        from ..formats.checkpoint import load_checkpoint
        ckpt = load_checkpoint(args.checkpoint, optimizer=False)
        if ckpt.step:
            what = f"trained {ckpt.step} steps"
        else:
            what = "converted GPT-2 weights" if ckpt.tokenizer.kind == "gpt2-bpe" else "untrained"
        return ckpt.model, ckpt.tokenizer, f"{args.checkpoint} ({what})"
    found = sorted(str(p) for p in Path(".").glob("*.npz"))
    hint = f"; e.g. --checkpoint {found[0]}" if found else "; train one with `python -m pythia train`"
    raise ConfigError(f"{args.command} needs a model: --checkpoint FILE or --gpt2 DIR{hint}")
