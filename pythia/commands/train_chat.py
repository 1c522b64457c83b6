"""`python -m pythia train-chat` (the default command): train a model, save it, then chat with it."""
from __future__ import annotations

import argparse

from .training_flags import DATA_HELP, DEFAULT_OUT, OUT_HELP, add_training_flags

NAME = "train-chat"
SUMMARY = "train a model, save it, then chat with it (default)"
DESCRIPTION = ("Train a model (boot banner, live progress, summary with a loss curve), save its "
               "checkpoint, then open the chat. Ctrl-C during training stops early, saves, and goes on "
               "to the chat.")
EPILOG = (DATA_HELP + "\n\n" + OUT_HELP.format(default=DEFAULT_OUT["train-chat"], stem="pythia-chat", resume="") +
          "\n\nexamples:\n  python -m pythia train-chat\n"
          "  python -m pythia train-chat --preset chat        (about a minute; answers in words)\n"
          "  python -m pythia train-chat --steps 2000 --d-model 64 --out big.npz\n"
          "  python -m pythia train-chat --data notes.txt --block-size 64\n"
          "  python -m pythia train-chat --init-from ./gpt2 --data notes.txt")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_flags(p, NAME)


def run(args: argparse.Namespace) -> int:
    import signal

    from ..chat import ChatSettings, run_chat
    from ..system.signals import guard_signals
    from ..system.streams import keep_running_without_streams
    from ..training import distributed
    from ..training.presets import chat_sampling
    from ..ui import ConsoleUI
    from .training_run import train_model
    from .training_settings import resolve
    settings = resolve(args, NAME)
    keep_running_without_streams()              # the report may go away; the run may not
    ui = ConsoleUI()
    with guard_signals() as stop:
        model, tokenizer, result, out = train_model(settings, ui, stop)
    if stop.requested() and stop.signum != signal.SIGINT:   # Ctrl-C goes on to the chat; others end here
        if result.checkpoint:
            ui.notice(f"Chat with it: python -m pythia chat --checkpoint {out}")
        return stop.exit_status
    if distributed.session().rank != 0:          # under mpiexec, rank 0 alone chats
        return 0
    ui.line()
    chat = ChatSettings(seed=settings.seed, **chat_sampling(settings.preset))
    if args.preset and chat.temperature != ChatSettings().temperature:
        ui.notice(f"(the {args.preset} preset chats at temperature {chat.temperature:g}; /temp changes it)")
    run_chat(model, tokenizer, ui=ui, settings=chat)
    return 0
