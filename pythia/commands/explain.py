"""`python -m pythia explain`: how sure a model is of each token, and where it attends."""
from __future__ import annotations

import argparse
import sys

from .kernel_choice import add_kernel_flag, select_kernels
from .model_source import add_model_source, load_model
from .types import nonneg_int

NAME = "explain"
SUMMARY = "show how sure a model is of each token, and where it attends"
DESCRIPTION = ("For each token of --text: the probability the model gave it, its rank among all tokens "
               "and the entropy of the model's prediction; then the attention of one layer and head as "
               "a heat map (rows: queries, columns: keys; darker = more attention).")
EPILOG = ("examples:\n  python -m pythia explain --checkpoint pythia-chat.npz --text 'User: Hello'\n"
          "  python -m pythia explain --checkpoint pythia-chat.npz --text 'The sea' --layer all\n"
          "  python -m pythia explain --gpt2 ./gpt2 --text 'The cat sat on the mat' --layer 5 --head 1")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_source(p, quantize=True)
    p.add_argument("--text", required=True, metavar="TEXT", help="the text to explain")
    p.add_argument("--layer", default="0", metavar="L",
                   help="attention layer to show, from 0, or 'all' for a small map per layer averaged "
                        "over heads (default: 0)")
    p.add_argument("--head", type=nonneg_int, default=0, metavar="H", help="attention head, from 0 (default: 0)")
    add_kernel_flag(p)


def run(args: argparse.Namespace) -> int:
    from ..inspection.explain import run_explain
    select_kernels(args.kernels)
    m = load_model(args)
    run_explain(m.model, m.tokenizer, args.text, layer=args.layer, head=args.head, out=sys.stdout)
    return 0
