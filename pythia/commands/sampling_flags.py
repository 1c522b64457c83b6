"""How chat and generate sample: the sampling flags and the ChatSettings they make."""
from __future__ import annotations

import argparse

from .kernel_choice import add_kernel_flag
from .types import nonneg_float, nonneg_int, positive_int, prob_float


def add_sampling_flags(p: argparse.ArgumentParser, *, length: int) -> None:
    g = p.add_argument_group("sampling")
    g.add_argument("--max-new-tokens", type=positive_int, default=length, metavar="N",
                   help="tokens to generate (chat: longest reply)")
    g.add_argument("--temperature", type=nonneg_float, default=0.8, metavar="T",
                   help="sampling temperature; 0 always picks the likeliest token")
    g.add_argument("--top-k", type=nonneg_int, default=40, metavar="K",
                   help="sample from the K likeliest tokens only (0 = off)")
    g.add_argument("--top-p", type=prob_float, default=1.0, metavar="P",
                   help="sample from the smallest set of tokens whose probability reaches P (1 = off)")
    g.add_argument("--seed", type=nonneg_int, default=None, metavar="S",
                   help="seed the sampler: the same seed and settings give the same text (default: random)")
    add_kernel_flag(p)


def chat_settings(args: argparse.Namespace):
    """ChatSettings from the sampling flags (0 top-k and 1 top-p mean off)."""
    from ..chat import ChatSettings
    return ChatSettings(temperature=args.temperature, top_k=args.top_k or None,
                        top_p=None if args.top_p >= 1 else args.top_p, max_new_tokens=args.max_new_tokens,
                        seed=args.seed)
