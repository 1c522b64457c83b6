"""`python -m pythia train`: train (or --resume) a model and save a checkpoint."""
from __future__ import annotations

import argparse

from .training_flags import DATA_HELP, DEFAULT_OUT, OUT_HELP, add_training_flags

NAME = "train"
SUMMARY = "train (or --resume) a model and save a checkpoint"
DESCRIPTION = ("Train a model and save it. Ctrl-C stops at the end of the current step, saves the "
               "checkpoint and exits (status 130; SIGTERM 143 and SIGHUP 129 do the same); --resume "
               "continues from it exactly.")
EPILOG = (DATA_HELP + "\n\n" + OUT_HELP.format(
              default=DEFAULT_OUT["train"], stem="pythia",
              resume=" With --resume and no --out, the resumed checkpoint is updated in place.") +
          "\n\nexamples:\n  python -m pythia train --steps 2000 --out shake.npz "
          "--data shakespeare.txt\n"
          "  python -m pythia train --resume shake.npz --steps 4000 "
          "--data shakespeare.txt\n"
          "  python -m pythia train --init-from ./gpt2 --data notes.txt --steps 200 --out notes-ft.npz\n"
          "  mpiexec -n 2 python -m pythia train --batch-size 16 --out shake.npz "
          "--data shakespeare.txt\n"
          "  python -m pythia train --preset shakespeare --data shakespeare.txt --plot loss.svg")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_training_flags(p, NAME)


def run(args: argparse.Namespace) -> int:
    from ..system.signals import guard_signals
    from ..system.streams import keep_running_without_streams
    from ..ui import ConsoleUI
    from .training_run import train_model
    from .training_settings import resolve
    settings = resolve(args, NAME)
    keep_running_without_streams()              # the report may go away; the run may not
    ui = ConsoleUI()
    with guard_signals() as stop:
        _, _, result, out = train_model(settings, ui, stop)
        if result.checkpoint is None:
            pass                                # the summary said "not saved"; name no file
        elif result.steps < result.planned_steps:
            ui.notice(f"Continue with: python -m pythia train --resume {out} (and the same --data)")
        else:
            ui.notice(f"Chat with it: python -m pythia chat --checkpoint {out}")
    if result.interrupted or stop.requested():
        return stop.exit_status or 130
    return 0
