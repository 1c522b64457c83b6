"""The command line: `python -m pythia <command>` and the `pythia` console script.

    train-chat   train a model, save it, then chat with it (the default command)
    train        train (or --resume) and save a checkpoint
    chat         chat with a checkpoint or a GPT-2 directory
    generate     one completion of --prompt to stdout, for scripts
    convert-gpt2 turn a Hugging Face GPT-2 directory into a Pythia checkpoint
    export       write a checkpoint as a Hugging Face GPT-2 folder
    explain      per-token probabilities and attention heat maps of a text
    plot         the loss curves of a --log-file as an SVG

Every problem with what the user gave us (a PythiaError, a bad flag, a file the system refuses,
Ctrl-C outside the places that handle it) ends as one line on stderr, `error: <what and what to
do>`, and a non-zero exit status: 1 for errors, 2 for command-line usage, 128 + the signal's
number when a signal stopped it (130 Ctrl-C, 143 SIGTERM, 129 SIGHUP; see pythia.system.outputs).
Settings are checked before any data is read or any training starts, and no command replaces a
file the user already has unless asked to (--force, or --resume's own checkpoint).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Sequence

from .commands import (DEFAULT_OUT, cmd_chat, cmd_convert_gpt2, cmd_explain, cmd_export, cmd_generate, cmd_plot,
                       cmd_train, cmd_train_chat)
from .errors import ConfigError, PythiaError
from .system.outputs import Interrupted, interrupted_message, written_files


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
            raise UsageError(f"unrecognized arguments: {' '.join(extra)}",
                             f"{self.prog} {command}" if command else self.prog)
        return ns


class Store(argparse.Action):
    """Store a value and remember that the user gave it (resume keeps the checkpoint's settings
    for every flag the user did not give)."""

    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values)
        explicit = getattr(namespace, "explicit", None) or set()
        explicit.add(self.dest)
        namespace.explicit = explicit


# ---- value types: each says what is wrong in words a user can act on ----------------------------

def _number(kind: Callable[[str], Any], test: Callable[[Any], bool], need: str) -> Callable[[str], Any]:
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}") from None
        if isinstance(v, float) and v != v or v in (float("inf"), float("-inf")) or not test(v):
            raise argparse.ArgumentTypeError(f"expected {need}, got {text!r}")
        return v
    parse.__name__ = need
    return parse


positive_int = _number(int, lambda v: v > 0, "a whole number of at least 1")
nonneg_int = _number(int, lambda v: v >= 0, "a whole number of at least 0")
positive_float = _number(float, lambda v: v > 0, "a number above 0")
nonneg_float = _number(float, lambda v: v >= 0, "a number of at least 0")
beta_float = _number(float, lambda v: 0 <= v < 1, "a number in [0, 1)")
prob_float = _number(float, lambda v: 0 < v <= 1, "a number in (0, 1]")


# ---- the parser ----------------------------------------------------------------------------------

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

DATA_HELP = """\
data: --data FILE... when given; otherwise input.txt and model.txt from the current directory
when both are there; otherwise the corpus bundled with Pythia. Files are UTF-8 text, joined in
order; the first 90% of the tokens train, the last 10% validate. A folder written by `python -m
pythia prepare` is memory-mapped instead, with its own tokenizer and split."""

OUT_HELP = """\
checkpoint: without --out the model is saved as {default} in the current directory; if that
file already exists, the next free name is used instead ({stem}-2.npz, {stem}-3.npz, ...), so an
earlier model is never replaced. An --out FILE that already exists is an error unless you add
--force.{resume}"""


def _add_training_flags(p: argparse.ArgumentParser, command: str) -> None:
    from .model import PythiaConfig
    from .train import TrainConfig
    t = {f.name: f.default for f in fields(TrainConfig)}
    m = {f.name: f.default for f in fields(PythiaConfig) if f.name != "vocab_size"}

    g = p.add_argument_group("data and output")
    g.add_argument("--data", nargs="+", metavar="FILE", action=Store,
                   help="text files to train on, or one folder written by `prepare` (see 'data' below) "
                        "(default: input.txt + model.txt, else the bundled corpus)")
    g.add_argument("--out", metavar="FILE", action=Store,
                   help=f"where to save the checkpoint (default: {DEFAULT_OUT[command]}, never replacing a file)")
    g.add_argument("--force", action="store_true", help="allow --out (and --plot) to replace an existing file")
    g.add_argument("--no-memory-check", action="store_true",
                   help="train even when the memory estimate (shown in the banner) exceeds the memory available")
    if command == "train":
        g.add_argument("--resume", metavar="CKPT", action=Store,
                       help="continue training CKPT from its saved step, optimizer and data position; "
                            "raise --steps to train further")
    g.add_argument("--init-from", metavar="SRC", action=Store,
                   help="fine-tune: start from the weights, sizes and tokenizer of SRC, a Hugging Face GPT-2 "
                        "folder or a Pythia checkpoint, with a fresh optimizer; settings you do not give take "
                        "fine-tuning defaults (constant --lr 1e-4, --warmup-steps 10, --weight-decay 0, "
                        "--steps 200, --block-size min(256, SRC's context))")
    g.add_argument("--plot", metavar="FILE.svg",
                   help="after training, draw the train and val loss curves into this SVG file")
    g.add_argument("--log-file", metavar="FILE", action=Store,
                   help="append one JSON object per step (step, train_loss, val_loss, lr, tokens_per_s, "
                        "elapsed_s) to FILE")

    from .training.presets import preset_arg, preset_names
    p.add_argument("--preset", type=preset_arg, default=None, metavar="NAME",
                   help=f"named model and training values ({', '.join(preset_names())}); flags you give "
                        f"override it (default: seed, the values shown below)")

    g = p.add_argument_group("model shape")
    g.add_argument("--block-size", type=positive_int, default=m["block_size"], action=Store, metavar="T",
                   help="context length in tokens")
    g.add_argument("--d-model", type=positive_int, default=m["d_model"], action=Store, metavar="C",
                   help="width of the residual stream; must be divisible by --n-head")
    g.add_argument("--n-layer", type=positive_int, default=m["n_layer"], action=Store, metavar="L",
                   help="Transformer blocks")
    g.add_argument("--n-head", type=positive_int, default=m["n_head"], action=Store, metavar="H",
                   help="attention heads")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=t["steps"], action=Store, metavar="N",
                   help="training steps (optimizer updates)")
    g.add_argument("--batch-size", type=positive_int, default=t["batch_size"], action=Store, metavar="B",
                   help="sequences per micro-batch")
    g.add_argument("--grad-accum", type=positive_int, default=t["grad_accum"], action=Store, metavar="K",
                   help="micro-batches per optimizer step: each step learns from K x B sequences")
    g.add_argument("--lr", type=positive_float, default=t["lr"], action=Store, metavar="LR", help="peak learning rate")
    g.add_argument("--min-lr", type=nonneg_float, default=t["min_lr"], action=Store, metavar="LR",
                   help="learning rate at the end of the cosine decay (at most --lr)")
    g.add_argument("--warmup-steps", type=nonneg_int, default=t["warmup_steps"], action=Store, metavar="N",
                   help="steps of linear warmup to --lr")
    g.add_argument("--weight-decay", type=nonneg_float, default=t["weight_decay"], action=Store, metavar="WD",
                   help="AdamW decoupled weight decay (matrices and embeddings only)")
    g.add_argument("--beta2", type=beta_float, default=t["beta2"], action=Store, metavar="B2", help="AdamW beta2")
    g.add_argument("--grad-clip", type=nonneg_float, default=t["grad_clip"], action=Store, metavar="NORM",
                   help="clip the global gradient norm to this (0 = off)")
    g.add_argument("--eval-interval", type=positive_int, default=t["eval_interval"], action=Store, metavar="N",
                   help="evaluate and save every N steps (and at the end)")
    g.add_argument("--eval-iters", type=positive_int, default=t["eval_iters"], action=Store, metavar="N",
                   help="batches averaged per split at each evaluation")
    g.add_argument("--seed", type=nonneg_int, default=t["seed"], action=Store, metavar="S",
                   help="seeds the weights, the batches and (train-chat) the chat's sampler")
    _add_kernel_flag(g)


def _add_kernel_flag(g) -> None:
    g.add_argument("--kernels", choices=("cython", "numpy"), default=None,
                   help="kernel backend (default: compiled Cython when built, else NumPy; "
                        "the PYTHIA_KERNELS environment variable sets it too)")


def _add_model_source(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE", help="a .npz written by train, train-chat or convert-gpt2")
    src.add_argument("--gpt2", metavar="DIR",
                     help="a Hugging Face GPT-2 folder (config.json, model.safetensors, vocab.json, merges.txt)")


def _add_sampling_flags(p: argparse.ArgumentParser, *, length: int) -> None:
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
    _add_kernel_flag(p)


def build_parser() -> Parser:
    from . import __version__
    top = Parser(prog=_prog_name(), formatter_class=HelpFormatter, epilog=TOP_EPILOG,
                 description=_para("Pythia: a GPT in NumPy with Cython kernels. Train a small "
                                   "character-level model on a CPU, then chat with it."))
    top.add_argument("--version", action="version", version=f"pythia {__version__}")
    sub = top.add_subparsers(dest="command", metavar="COMMAND", title="commands",
                             description="train-chat runs when no command is given")

    def command(name: str, summary: str, description: str, epilog: str) -> Parser:
        return sub.add_parser(name, help=summary, description=_para(description), epilog=epilog,
                              formatter_class=HelpFormatter)

    p = command("train-chat", "train a model, save it, then chat with it (default)",
                "Train a model (boot banner, live progress, summary with a loss curve), save its "
                "checkpoint, then open the chat. Ctrl-C during training stops early, saves, and goes on "
                "to the chat.",
                DATA_HELP + "\n\n" + OUT_HELP.format(default=DEFAULT_OUT["train-chat"], stem="pythia-chat",
                                                     resume="") +
                "\n\nexamples:\n  python -m pythia train-chat\n"
                "  python -m pythia train-chat --preset chat        (about a minute; answers in words)\n"
                "  python -m pythia train-chat --steps 2000 --d-model 64 --out big.npz\n"
                "  python -m pythia train-chat --data notes.txt --block-size 64\n"
                "  python -m pythia train-chat --init-from ./gpt2 --data notes.txt")
    _add_training_flags(p, "train-chat")
    p.set_defaults(func=cmd_train_chat)

    p = command("train", "train (or --resume) a model and save a checkpoint",
                "Train a model and save it. Ctrl-C stops at the end of the current step, saves the "
                "checkpoint and exits (status 130; SIGTERM 143 and SIGHUP 129 do the same); --resume "
                "continues from it exactly.",
                DATA_HELP + "\n\n" + OUT_HELP.format(
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
    _add_training_flags(p, "train")
    p.set_defaults(func=cmd_train)

    p = command("chat", "chat with a saved model",
                "Chat with a checkpoint or a GPT-2 model. Replies stream as they are generated; "
                "type /help in the chat for its commands.",
                "chat commands: /help /temp X /topk K /topp P /seed N /len N /reset /clear, exit or quit\n"
                "Ctrl-C stops a reply; Ctrl-D (or the end of piped input) leaves.\n\n"
                "examples:\n  python -m pythia chat --checkpoint pythia-chat.npz\n"
                "  printf 'Hello\\nquit\\n' | python -m pythia chat --checkpoint pythia-chat.npz\n"
                "  python -m pythia chat --gpt2 ./gpt2")
    _add_model_source(p)
    _add_sampling_flags(p, length=200)
    p.set_defaults(func=cmd_chat)

    p = command("generate", "print one completion of a prompt",
                "Continue --prompt and write the prompt and its continuation to stdout (status and "
                "notices go to stderr), for scripts.",
                "examples:\n  python -m pythia generate --checkpoint pythia-chat.npz --prompt 'User: Hi' --seed 7\n"
                "  python -m pythia generate --gpt2 ./gpt2 --prompt 'The sea' --temperature 0")
    _add_model_source(p)
    p.add_argument("--prompt", required=True, metavar="TEXT", help="the text to continue")
    p.add_argument("--no-echo", action="store_true", help="print only the continuation, not the prompt")
    _add_sampling_flags(p, length=200)
    p.set_defaults(func=cmd_generate)

    p = command("convert-gpt2", "convert a Hugging Face GPT-2 folder to a Pythia checkpoint",
                "Read config.json, model.safetensors, vocab.json and merges.txt from DIR with NumPy "
                "alone and save them as one Pythia .npz checkpoint.",
                "examples:\n  python -m pythia convert-gpt2 ./gpt2 --out gpt2.npz\n"
                "  python -m pythia chat --checkpoint gpt2.npz")
    p.add_argument("dir", metavar="DIR", help="the GPT-2 folder")
    p.add_argument("--out", required=True, metavar="FILE", help="the checkpoint to write")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_convert_gpt2)

    p = command("export", "write a checkpoint as a Hugging Face GPT-2 folder",
                "Write CKPT as a Hugging Face GPT-2 folder DIR (config.json, model.safetensors, and "
                "vocab.json + merges.txt or, for a character model, tokenizer.json) that transformers "
                "loads with GPT2LMHeadModel.from_pretrained(DIR) and Pythia with --gpt2 DIR.",
                "examples:\n  python -m pythia export notes-ft.npz --out ./notes-hf\n"
                "  python -m pythia chat --gpt2 ./notes-hf")
    p.add_argument("checkpoint", metavar="CKPT", help="a .npz written by train, train-chat or convert-gpt2")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (new or empty)")
    p.add_argument("--force", action="store_true", help="replace DIR even if it holds files")
    p.set_defaults(func=cmd_export)

    from .corpora import prepare
    from .text import tokenview
    p = command("prepare", "tokenize text files once into a folder that training memory-maps",
                "Stream text files into DIR (token files + meta.json) with a character tokenizer, "
                "a byte-level BPE trained on the text, or GPT-2's BPE.", prepare.PREPARE_HELP)
    prepare.add_arguments(p)
    p.set_defaults(func=prepare.cmd_prepare)

    p = command("tokenize", "show how a tokenizer splits a text",
                "Print the tokens of --text with their ids and boundaries, and their count, using the "
                "tokenizer of a checkpoint or of a prepared corpus.",
                "examples:\n  python -m pythia tokenize --checkpoint books.npz --text 'Hello, world'\n"
                "  python -m pythia tokenize --data books.tok --text 'naïve café' | less")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--checkpoint", metavar="FILE", help="a .npz written by train, train-chat or convert-gpt2")
    src.add_argument("--data", metavar="DIR", help="a folder written by prepare")
    p.add_argument("--text", required=True, metavar="TEXT", help="the text to split into tokens")
    p.set_defaults(func=tokenview.cmd_tokenize)

    p = command("explain", "show how sure a model is of each token, and where it attends",
                "For each token of --text: the probability the model gave it, its rank among all tokens "
                "and the entropy of the model's prediction; then the attention of one layer and head as "
                "a heat map (rows: queries, columns: keys; darker = more attention).",
                "examples:\n  python -m pythia explain --checkpoint pythia-chat.npz --text 'User: Hello'\n"
                "  python -m pythia explain --checkpoint pythia-chat.npz --text 'The sea' --layer all\n"
                "  python -m pythia explain --gpt2 ./gpt2 --text 'The cat sat on the mat' --layer 5 --head 1")
    _add_model_source(p)
    p.add_argument("--text", required=True, metavar="TEXT", help="the text to explain")
    p.add_argument("--layer", default="0", metavar="L",
                   help="attention layer to show, from 0, or 'all' for a small map per layer averaged "
                        "over heads (default: 0)")
    p.add_argument("--head", type=nonneg_int, default=0, metavar="H", help="attention head, from 0 (default: 0)")
    _add_kernel_flag(p)
    p.set_defaults(func=cmd_explain)

    p = command("plot", "draw the loss curves of a --log-file as an SVG",
                "Read the JSON lines that train --log-file wrote and draw the train and val loss "
                "against the step as an SVG picture to open in a browser.",
                "examples:\n  python -m pythia plot run.jsonl --out loss.svg\n"
                "  python -m pythia plot run.jsonl --out loss-log.svg --log-y")
    p.add_argument("log", metavar="LOG.jsonl", help="the file written by --log-file")
    p.add_argument("--out", required=True, metavar="FILE.svg", help="the SVG to write")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=cmd_plot)
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
        _check_kernel_env()                      # before anything imports the kernels
        args = build_parser().parse_args(argv)
        streams.require(getattr(args, "command", None), closed)
        return int(args.func(args) or 0)
    except UsageError as e:
        return _fail(f"{e} (see `{e.prog} --help`)", 2)
    except PythiaError as e:
        return _fail(str(e))
    except Interrupted as e:                     # a stop signal that could not wait for a safe point
        return _fail(interrupted_message(e), e.exit_status)
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


def _check_kernel_env() -> None:
    """PYTHIA_KERNELS and PYTHIA_KERNELS_ISA are read when the kernels load; a bad value is the
    user's, so say so plainly (checked here without importing the kernels, which would raise)."""
    wanted = os.environ.get("PYTHIA_KERNELS", "").strip().lower()
    if wanted not in ("", "cython", "numpy"):
        raise ConfigError(f"PYTHIA_KERNELS={wanted!r} is not a kernel backend; set it to 'cython' or "
                          f"'numpy', or unset it")
    isa = os.environ.get("PYTHIA_KERNELS_ISA", "").strip().lower()   # as kernels._loader.isa_wanted reads it
    if isa not in ("", "baseline"):
        raise ConfigError(f"PYTHIA_KERNELS_ISA={isa!r} is not a kernel build; set it to 'baseline' (the build "
                          f"for any x86-64 CPU) or unset it (the AVX2 build when the CPU has AVX2 and FMA)")


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
