"""`python -m pythia chat`: talk with a checkpoint or a GPT-2 model."""
from __future__ import annotations

import argparse

from .kernel_choice import kernel_status, select_kernels
from .model_source import add_model_source, load_model
from .sampling_flags import add_sampling_flags, chat_settings

NAME = "chat"
SUMMARY = "chat with a saved model"
DESCRIPTION = ("Chat with a checkpoint or a GPT-2 model. Replies stream as they are generated; "
               "type /help in the chat for its commands.")
EPILOG = ("chat commands: /help /temp X /topk K /topp P /seed N /len N /reset /clear, exit or quit\n"
          "Ctrl-C stops a reply; Ctrl-D (or the end of piped input) leaves.\n\n"
          "examples:\n  python -m pythia chat --checkpoint pythia-chat.npz\n"
          "  printf 'Hello\\nquit\\n' | python -m pythia chat --checkpoint pythia-chat.npz\n"
          "  python -m pythia chat --gpt2 ./gpt2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_source(p)
    add_sampling_flags(p, length=200)


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..chat import run_chat
    from ..ui import ConsoleUI
    ui = ConsoleUI()
    select_kernels(args.kernels)
    model, tokenizer, source = load_model(args)
    backend, fallback = kernel_status(args.kernels)
    ui.banner(version=__version__, backend=backend, fallback_reason=fallback, config=model.config,
              n_params=model.num_params(), vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.kind,
              source=source)
    ui.line()
    run_chat(model, tokenizer, ui=ui, settings=chat_settings(args))
    return 0
