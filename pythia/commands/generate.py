"""`python -m pythia generate`: one completion of --prompt on stdout, for scripts."""
from __future__ import annotations

import argparse
import sys

from ..errors import ConfigError
from .kernel_choice import kernel_status, select_kernels
from .model_source import add_model_source, load_model
from .sampling_flags import add_sampling_flags, chat_settings

NAME = "generate"
SUMMARY = "print one completion of a prompt"
DESCRIPTION = ("Continue --prompt and write the prompt and its continuation to stdout (status and "
               "notices go to stderr), for scripts.")
EPILOG = ("examples:\n  python -m pythia generate --model pythia-chat.npz --prompt 'User: Hi' --seed 7\n"
          "  python -m pythia generate --model ./gpt2 --prompt 'The sea' --temperature 0\n"
          "  python -m pythia generate --model ./smollm2 --prompt 'The capital of France is' --temperature 0\n"
          "  python -m pythia generate --model ./gpt2 --prompt 'Hello' --quantize int8 --timing")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_source(p, quantize=True)
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    p.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    p.add_argument("--timing", action="store_true",
                   help="after the text, print to stderr the load time and the prompt and decode speeds "
                        "(tokens per second), as llama.cpp's perf lines")
    add_sampling_flags(p, length=200)


def run(args: argparse.Namespace) -> int:
    import time

    import numpy as np

    from ..chat import stream_text, until_stop
    from ..timing import DecodeTimer
    from ..ui import ConsoleUI, heads_text
    err = ConsoleUI(sys.stderr)
    select_kernels(args.kernels)
    t0 = time.perf_counter()
    m = load_model(args)
    timer = DecodeTimer(load_seconds=time.perf_counter() - t0)
    model, tokenizer = m.model, m.tokenizer
    backend, fallback = kernel_status(args.kernels)
    err.notice(f"pythia: {m.description}{err.dot}{heads_text(model.config)}{err.dot}kernels {backend}")
    if fallback:
        err.warn(f"fell back to the NumPy kernels, which are slower: {fallback}")
    prompt = args.prompt.encode("utf-8", "replace").decode("utf-8")  # undecodable argv bytes -> '?'
    filt = getattr(tokenizer, "filter", None)
    if filt is not None:
        prompt, dropped = filt(prompt)
        if dropped:
            err.notice(f"dropped {len(dropped)} character(s) the vocabulary lacks: {''.join(dropped)!r}")
    ids = m.prompt_ids(prompt)
    if not ids:
        raise ConfigError("--prompt is empty (after dropping characters the vocabulary lacks); "
                          "give some text to continue")
    s = chat_settings(args)
    rng = np.random.default_rng(s.seed)
    out = sys.stdout
    if not args.no_echo:
        out.write(prompt)
        out.flush()
    ids = ids[-model.config.block_size:]
    gen = model.generate(ids, s.max_new_tokens, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p, rng=rng)
    gen = timer.wrap(gen, prompt_tokens=len(ids))
    gen = until_stop(gen, m.stop_ids)              # a Hugging Face model's eos ends the completion
    try:
        for piece in stream_text(tokenizer, gen):
            out.write(piece)
            out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        raise
    out.write("\n")
    out.flush()
    if args.timing:
        for line in timer.lines():
            err.notice(f"timing: {line}")
    return 0
