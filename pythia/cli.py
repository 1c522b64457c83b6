"""The command line: `python -m pythia <command>` and the `pythia` console script.

    train-chat   train a model, save it, then chat with it (the default command)
    train        train (or --resume) and save a checkpoint
    chat         chat with a checkpoint or a GPT-2 directory
    generate     one completion of --prompt to stdout, for scripts
    serve        the OpenAI HTTP API and a web chat over one model (the serve extra)
    convert-gpt2 turn a Hugging Face GPT-2 directory into a Pythia checkpoint
    export       write a checkpoint as a Hugging Face GPT-2 folder
    prepare      tokenize text files once into a folder that training memory-maps
    tokenize     show how a tokenizer splits a text
    explain      per-token probabilities and attention heat maps of a text
    plot         the loss curves of a --log-file as an SVG

This module is the parser and the dispatch; each command is a module of pythia.commands with
`add_arguments(p)` and `run(args)`.

Every problem with what the user gave us (a PythiaError, a bad flag, a file the system refuses,
Ctrl-C outside the places that handle it) ends as one line on stderr, `error: <what and what to
do>`, and a non-zero exit status: 1 for errors, 2 for command-line usage, 128 + the signal's
number when a signal stopped it (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; see pythia.system.signals).
Settings are checked before any data is read or any training starts, and no command replaces a
file the user already has unless asked to (--force, or --resume's own checkpoint).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

from .commands import (chat, convert, convert_gpt2, eval, explain, export, generate, plot, prepare, serve,
                       tokenize, train, train_chat)
from .commands.kernel_choice import check_kernel_env
from .errors import PythiaError
from .system.atomic import written_files
from .system.signals import Interrupted, interrupted_message


class UsageError(Exception):
    """A command-line mistake that argparse found; reported as one line, exit status 2."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises instead of printing the usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message, self.prog)

    def parse_args(self, args=None, namespace=None):  # type: ignore[override]
        """As argparse, but a flag the command does not know points to that command's --help."""
        ns, extra = self.parse_known_args(args, namespace)
        if extra:
            command = getattr(ns, "command", None)
            if any(e.split("=")[0] == "--quantize" for e in extra):
                raise UsageError(f"--quantize is for running a model (chat, generate, explain, eval, convert), not "
                                 f"{command}; train in float32, then `convert SRC --out FILE --quantize int8`",
                                 f"{self.prog} {command}" if command else self.prog)
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}",
                             f"{self.prog} {command}" if command else self.prog)
        return ns


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows each flag's default and keeps the hand-made line breaks of the examples."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=30)

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "(default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _para(text: str) -> str:
    """A description paragraph wrapped for an 80-column terminal."""
    import textwrap
    return textwrap.fill(text, width=79)


TOP_EPILOG = """\
examples:
  python -m pythia                          train on the bundled corpus, then chat (= train-chat)
  python -m pythia train-chat --steps 2000  train longer, then chat
  python -m pythia train --data book.txt --out book.npz
  python -m pythia chat --checkpoint book.npz
  python -m pythia generate --checkpoint book.npz --prompt "Once" --seed 1

`python -m pythia COMMAND --help` explains each command and its flags.
Exit status: 0 done, 1 error, 2 bad command line, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP."""


TOP_EPILOG = """\
examples:
  python -m pythia                          train on the bundled corpus, then chat (= train-chat)
  python -m pythia train-chat --steps 2000  train longer, then chat
  python -m pythia train --data book.txt --out book.npz
  python -m pythia chat --checkpoint book.npz
  python -m pythia generate --checkpoint book.npz --prompt "Once" --seed 1

`python -m pythia COMMAND --help` explains each command and its flags.
Exit status: 0 done, 1 error, 2 bad command line, 130 Ctrl-C, 143 SIGTERM, 129 SIGHUP."""


COMMANDS = (train_chat, train, chat, generate, serve, eval, convert, convert_gpt2, export, prepare, tokenize, explain,
            plot)


def build_parser() -> Parser:
    from . import __version__
    top = Parser(prog=_prog_name(), formatter_class=HelpFormatter, epilog=TOP_EPILOG,
                 description=_para("Pythia: a GPT in NumPy with Cython kernels. Train a small "
                                   "character-level model on a CPU, then chat with it."))
    top.add_argument("--version", action="version", version=f"pythia {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                             description="train-chat runs when no command is given")
    for command in COMMANDS:
        p = sub.add_parser(command.NAME, help=command.SUMMARY, description=_para(command.DESCRIPTION),
                           epilog=command.EPILOG, formatter_class=HelpFormatter)
        command.add_arguments(p)
        p.set_defaults(func=command.run)
    return top


def _prog_name() -> str:
    """What the user typed to start us: `python -m pythia` or the `pythia` console script."""
    return "python -m pythia" if Path(sys.argv[0]).name == "__main__.py" else "pythia"


def with_default_command(argv: Sequence[str]) -> list[str]:
    """`pythia` and `pythia --steps 9` mean `pythia train-chat ...` (the seed's flow)."""
    argv = list(argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help", "--version")):
        return ["train-chat", *argv]
    return argv


# ---- entry point -----------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the process exit status (the console script exits with it)."""
    from .system import streams
    closed = streams.reopen_closed()             # before any file is opened: none may take fd 0-2
    argv = with_default_command(sys.argv[1:] if argv is None else argv)
    _forgiving_streams()
    try:
        check_kernel_env()                       # before anything imports the kernels
        args = build_parser().parse_args(argv)
        streams.require(getattr(args, "command", None), closed)
        return int(args.func(args) or 0)
    except UsageError as e:
        return _fail(f"{e} (see `{e.prog} --help`)", 2)
    except PythiaError as e:
        return _fail(str(e))
    except Interrupted as e:                     # a stop signal that could not wait for a safe point
        return _fail(interrupted_message(e, written_files()), e.exit_status)
    except KeyboardInterrupt:
        saved = written_files()                  # e.g. a Ctrl-C just after a guarded save ended
        return _fail("interrupted by Ctrl-C" + (f"; the last file saved, {str(saved[-1])!r}, is complete"
                                                if saved else ""), 130)
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (e.g. `| head`); not worth a message
        return 1
    except MemoryError:
        return _fail("out of memory; use a smaller model (--d-model, --n-layer, --block-size) "
                     "or a smaller --batch-size")
    except OSError as e:
        full = None if getattr(e, "filename", None) else streams.full_disk_file(e)
        if full is not None:
            return _fail(f"cannot write {full}: {e.strerror}; free space on that disk or write elsewhere")
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        return _fail(f"cannot use{where}: {e.strerror or e}; check the path and its permissions")


def run() -> None:
    """The program: main(), then exit with its status. Once the status is decided, a late stop
    signal (the second of two Ctrl-Cs, arriving while the interpreter shuts down, after Python has
    put back the default handlers) must not turn a finished, saved run into "killed by SIGINT"."""
    import signal
    status = main()
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
    raise SystemExit(status)


def _forgiving_streams() -> None:
    """Never die on text: bytes that are not valid input become U+FFFD (chat drops it with a
    notice), and characters the terminal's encoding cannot show are replaced on output."""
    for stream, errors in ((sys.stdin, "replace"), (sys.stdout, "replace")):
        try:
            stream.reconfigure(errors=errors)
        except (AttributeError, ValueError, OSError):  # not a TextIOWrapper (e.g. under a test harness)
            pass


def _fail(message: str, status: int = 1) -> int:
    """Print `error: <first line of message>` on stderr and return the exit status."""
    from .training import distributed
    from .ui import colour_allowed, line_open
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    first = distributed.error_line(first)       # under mpiexec: which rank says it, if this one
    if first is None:
        return status
    tty = sys.stderr.isatty()
    # after an in-place progress bar, or the ^C a terminal echoes, start on a fresh line
    newline = "\n" if line_open() or (tty and status == 130) else ""
    label = "\033[1;31merror:\033[0m" if colour_allowed(sys.stderr) else "error:"
    sys.stderr.write(f"{newline}{label} {first}\n")
    sys.stderr.flush()
    distributed.end_after_error(status)         # an error on one rank alone aborts the whole job
    return status


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass
