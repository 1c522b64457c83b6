"""The model a command runs: --model SRC (a Pythia checkpoint or a Hugging Face folder, told apart
by looking), with --checkpoint FILE and --gpt2 DIR kept as its older spellings."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import ConfigError


def add_model_source(p: argparse.ArgumentParser, *, chat_format: bool = False, quantize: bool = False) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", metavar="SRC",
                     help="a Pythia checkpoint (.npz) or a Hugging Face model folder: GPT-2, Llama, SmolLM2, "
                          "Qwen2.5, TinyLlama (config.json, model.safetensors, tokenizer files)")
    src.add_argument("--checkpoint", metavar="FILE", help="the same as --model FILE")
    src.add_argument("--gpt2", metavar="DIR", help="the same as --model DIR")
    if quantize:
        add_quantize_flag(p, "run the model with int8 weights (Q8_0: blocks of 32 with one scale; 4x fewer "
                             "weight bytes than float32, faster decoding, slightly less exact)")
    if chat_format:
        from ..formats.chat_template import FORMATS
        p.add_argument("--chat-format", choices=FORMATS, default=None,
                       help="the chat template to use instead of the model's own (chatml: SmolLM2, Qwen2.5; "
                            "zephyr: TinyLlama-Chat; llama2: [INST]; plain: User:/Pythia: lines)")


def add_quantize_flag(p: argparse.ArgumentParser, help: str) -> None:
    from ..quant.model import KINDS
    p.add_argument("--quantize", choices=KINDS, default=None, metavar="KIND",
                   help=f"{help} ({', '.join(KINDS)})")


def gpt2_support():
    """pythia.formats.gpt2, or a ConfigError when this installation lacks it."""
    try:
        from ..formats import gpt2
    except ImportError as e:
        raise ConfigError(f"GPT-2 support is missing from this installation ({e}); reinstall Pythia") from None
    return gpt2


def load_model(args: argparse.Namespace):
    """The pythia.formats.source.LoadedModel that --model, --checkpoint or --gpt2 names."""
    from ..formats.source import open_model
    src = args.model or args.checkpoint or args.gpt2
    if src:
        return open_model(src, chat_format=getattr(args, "chat_format", None), folder=bool(args.gpt2),
                          quantize=getattr(args, "quantize", None))
    found = sorted(str(p) for p in Path(".").glob("*.npz"))
    hint = f"; e.g. --model {found[0]}" if found else "; train one with `python -m pythia train`"
    raise ConfigError(f"{args.command} needs a model: --model SRC (a checkpoint or a Hugging Face folder){hint}")
