"""`python -m pythia export`: a checkpoint as a Hugging Face folder (pythia.formats.export)."""
from __future__ import annotations

import argparse

NAME = "export"
SUMMARY = "write a checkpoint as a Hugging Face model folder"
DESCRIPTION = ("Write CKPT as a Hugging Face folder DIR that transformers loads with "
               "AutoModelForCausalLM.from_pretrained(DIR) and Pythia with --model DIR: GPT-2's layout "
               "(config.json, model.safetensors, and vocab.json + merges.txt or, for a character model, "
               "tokenizer.json) or, for a Llama-family model (SmolLM2, Qwen2.5, TinyLlama fine-tuned), "
               "Llama's or Qwen2's with the tokenizer.json and chat template it came with.")
EPILOG = ("examples:\n  python -m pythia export notes-ft.npz --out ./notes-hf\n"
          "  python -m pythia export mybot.npz --out mybot-adapter --adapter-only   # a LoRA run's adapter\n"
          "  python -m pythia chat --model ./notes-hf")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", metavar="CKPT", help="a .npz written by train, train-chat or convert-gpt2")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace DIR even if it holds files")
    p.add_argument("--adapter-only", action="store_true",
                   help="for a LoRA checkpoint: write the adapter alone in PEFT's layout (adapter_config.json, "
                        "adapter_model.safetensors) for PeftModel.from_pretrained(base, DIR); without it the "
                        "adapter is merged into a plain Hugging Face model")


def run(args: argparse.Namespace) -> int:
    from ..formats.export import describe, export
    from ..system.streams import keep_running_without_streams
    keep_running_without_streams()              # the summary is a report: the file is the product
    from ..system.signals import guard_signals
    with guard_signals():          # a signal raises, so the half-written temporary folder is removed
        out = export(args.checkpoint, args.out, force=args.force, adapter_only=args.adapter_only)
    print(describe(out))
    if args.adapter_only:
        print(f"load it: PeftModel.from_pretrained(base, {str(out)!r}) on the base model it was trained on")
    else:
        print(f"load it: AutoModelForCausalLM.from_pretrained({str(out)!r}); in Pythia: python -m pythia chat --model {out}")
    return 0
