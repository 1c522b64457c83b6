"""`python -m pythia chat`: talk with a checkpoint or a Hugging Face model (GPT-2 or Llama family)."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from .kernel_choice import kernel_status, select_kernels
from .model_source import add_model_source, load_model
from .sampling_flags import add_sampling_flags, chat_settings

NAME = "chat"
SUMMARY = "chat with a saved model"
DESCRIPTION = ("Chat with a checkpoint or a Hugging Face model folder (GPT-2, or a chat model such as "
               "SmolLM2-Instruct, Qwen2.5-Instruct or TinyLlama-Chat, through its own chat template). Replies "
               "stream as they are generated; type /help in the chat for its commands. Pythia never downloads: fetch a model folder yourself, "
               "e.g. huggingface-cli download HuggingFaceTB/SmolLM2-135M-Instruct --local-dir smollm2")
EPILOG = ("chat commands: /help /temp X /topk K /topp P /seed N /len N /system TEXT /probs /stats /reset /clear,\n"
          "exit or quit. Ctrl-C stops a reply; Ctrl-D (or the end of piped input) leaves.\n\n"
          "examples:\n  python -m pythia chat --model pythia-chat.npz\n"
          "  printf 'Hello\\nquit\\n' | python -m pythia chat --model pythia-chat.npz\n"
          "  python -m pythia chat --model smollm2")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_source(p, chat_format=True, quantize=True)
    add_sampling_flags(p, length=200)


def run(args: argparse.Namespace) -> int:
    from .. import __version__
    from ..chat import run_chat
    from ..ui import ConsoleUI
    ui = ConsoleUI()
    import time
    select_kernels(args.kernels)
    t0 = time.perf_counter()
    m = load_model(args)
    load_seconds = time.perf_counter() - t0
    if m.template is None and m.template_error:
        raise ConfigError(m.template_error)
    model, tokenizer, source = m.model, m.tokenizer, m.description
    backend, fallback = kernel_status(args.kernels)
    ui.banner(version=__version__, backend=backend, fallback_reason=fallback, config=model.config,
              n_params=model.num_params(), vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.kind,
              source=source)
    ui.line()
    run_chat(model, tokenizer, ui=ui, settings=chat_settings(args), template=m.template, stop_ids=m.stop_ids,
             load_seconds=load_seconds)
    return 0
