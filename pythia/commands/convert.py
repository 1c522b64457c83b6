"""`python -m pythia convert`: a Hugging Face model folder (GPT-2 or Llama family) as one Pythia checkpoint."""
from __future__ import annotations

import argparse
from pathlib import Path

NAME = "convert"
SUMMARY = "convert a Hugging Face model folder to a Pythia checkpoint"
DESCRIPTION = ("Read a Hugging Face folder (GPT-2, Llama, SmolLM2, Qwen2.5, TinyLlama: config.json, "
               "model.safetensors or its shards, the tokenizer files, the chat template) with NumPy alone and "
               "save it as one Pythia .npz checkpoint, with the chat template and stop tokens. BF16 and F16 "
               "weights become float32.")
EPILOG = ("examples:\n  python -m pythia convert ./smollm2 --out smollm2.npz\n"
          "  python -m pythia chat --model smollm2.npz\n"
          "  python -m pythia convert ./gpt2 --out gpt2.npz\n"
          "  python -m pythia convert ./gpt2 --out gpt2-q8.npz --quantize int8")


def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..formats.chat_template import FORMATS
    p.add_argument("src", metavar="DIR", help="the Hugging Face model folder")
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--chat-format", choices=FORMATS, default=None,
                   help="record this chat template instead of the folder's own")
    from .model_source import add_quantize_flag
    add_quantize_flag(p, "store the matrices as int8 (Q8_0 blocks of 32 with one float32 scale: about a "
                         "quarter of the float32 size); chat/generate/eval read it without requantizing")


def run(args: argparse.Namespace) -> int:
    from ..formats.checkpoint import save_checkpoint
    from ..formats.source import open_model
    from ..system.claims import claim_output
    from ..system.signals import guard_signals
    source = Path(args.src)
    inputs = {"DIR": [p for p in source.iterdir() if p.is_file()] if source.is_dir() else []}
    with guard_signals(), claim_output(args.out, flag="--out", replace=args.force, inputs=inputs) as claim:
        m = open_model(source, chat_format=args.chat_format, folder=True, quantize=args.quantize)
        save_checkpoint(claim.path, m.model, m.tokenizer, step=0, chat=m.chat_meta())
    print(f"wrote {claim.path}; chat with it: python -m pythia chat --model {claim.path}")
    return 0
