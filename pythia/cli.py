"""The command line: `python -m pythia <command>` and the `pythia` console script.

    train-chat   train a model, save it, then chat with it (the default command)
    train        train (or --resume) and save a checkpoint
    chat         chat with a checkpoint or a GPT-2 directory
    generate     one completion of --prompt to stdout, for scripts
    convert-gpt2 turn a Hugging Face GPT-2 directory into a Pythia checkpoint

Every problem with what the user gave us (a PythiaError, a bad flag, a file the system refuses,
Ctrl-C outside the places that handle it) ends as one line on stderr, `error: <what and what to
do>`, and a non-zero exit status: 1 for errors, 2 for command-line usage, 130 for Ctrl-C.
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

from .errors import ConfigError, PythiaError

DEFAULT_OUT = {"train-chat": "pythia-chat.npz", "train": "pythia.npz"}
MODEL_FLAGS = ("block_size", "d_model", "n_layer", "n_head")


class UsageError(Exception):
    """A command-line mistake that argparse found; reported as one line, exit status 2."""

    def __init__(self, message: str, prog: str):
        super().__init__(message)
        self.prog = prog


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error raises instead of printing the usage block and exiting."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(message, self.prog)


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
Exit status: 0 done, 1 error, 2 bad command line, 130 interrupted by Ctrl-C."""

DATA_HELP = """\
data: --data FILE... when given; otherwise input.txt and model.txt from the current directory
when both are there; otherwise the corpus bundled with Pythia. Files are UTF-8 text, joined in
order; the first 90% of the tokens train, the last 10% validate."""

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
                   help="text files to train on (see 'data' below) (default: input.txt + model.txt, "
                        "else the bundled corpus)")
    g.add_argument("--out", metavar="FILE", action=Store,
                   help=f"where to save the checkpoint (default: {DEFAULT_OUT[command]}, never replacing a file)")
    g.add_argument("--force", action="store_true", help="allow --out to replace an existing file")
    if command == "train":
        g.add_argument("--resume", metavar="CKPT", action=Store,
                       help="continue training CKPT from its saved step, optimizer and data position; "
                            "raise --steps to train further")
    g.add_argument("--log-file", metavar="FILE", action=Store,
                   help="append one JSON object per step (step, train_loss, val_loss, lr, tokens_per_s, "
                        "elapsed_s) to FILE")

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
                   help="sequences per step")
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
                "  python -m pythia train-chat --steps 2000 --d-model 64 --out big.npz\n"
                "  python -m pythia train-chat --data notes.txt --block-size 64")
    _add_training_flags(p, "train-chat")
    p.set_defaults(func=cmd_train_chat)

    p = command("train", "train (or --resume) a model and save a checkpoint",
                "Train a model and save it. Ctrl-C stops at the end of the current step, saves the "
                "checkpoint and exits (status 130); --resume continues from it exactly.",
                DATA_HELP + "\n\n" + OUT_HELP.format(
                    default=DEFAULT_OUT["train"], stem="pythia",
                    resume=" With --resume and no --out, the resumed checkpoint is updated in place.") +
                "\n\nexamples:\n  python -m pythia train --steps 2000 --out shake.npz "
                "--data ../shared/data/tinyshakespeare.txt\n"
                "  python -m pythia train --resume shake.npz --steps 4000 "
                "--data ../shared/data/tinyshakespeare.txt")
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
    argv = with_default_command(sys.argv[1:] if argv is None else argv)
    _forgiving_streams()
    try:
        _check_kernel_env()                      # before anything imports the kernels
        args = build_parser().parse_args(argv)
        return int(args.func(args) or 0)
    except UsageError as e:
        return _fail(f"{e} (see `{e.prog} --help`)", 2)
    except PythiaError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted by Ctrl-C", 130)
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (e.g. `| head`); not worth a message
        return 1
    except MemoryError:
        return _fail("out of memory; use a smaller model (--d-model, --n-layer, --block-size) "
                     "or a smaller --batch-size")
    except OSError as e:
        where = f" {e.filename!r}" if getattr(e, "filename", None) else ""
        return _fail(f"cannot use{where}: {e.strerror or e}; check the path and its permissions")


def _check_kernel_env() -> None:
    """PYTHIA_KERNELS is read when the kernels load; a bad value is the user's, so say so plainly."""
    wanted = os.environ.get("PYTHIA_KERNELS", "").strip().lower()
    if wanted not in ("", "cython", "numpy"):
        raise ConfigError(f"PYTHIA_KERNELS={wanted!r} is not a kernel backend; set it to 'cython' or "
                          f"'numpy', or unset it")


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
    from .ui import colour_allowed, line_open
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        pass
    first = message.strip().splitlines()[0] if message.strip() else "failed"
    tty = sys.stderr.isatty()
    # after an in-place progress bar, or the ^C a terminal echoes, start on a fresh line
    newline = "\n" if line_open() or (tty and status == 130) else ""
    label = "\033[1;31merror:\033[0m" if colour_allowed(sys.stderr) else "error:"
    sys.stderr.write(f"{newline}{label} {first}\n")
    sys.stderr.flush()
    return status


def _silence_stdout() -> None:
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass



# ---- shared pieces of the commands ------------------------------------------------------------------

def select_kernels(choice: str | None) -> None:
    """Apply --kernels; asking for compiled kernels that are not built is an error, not a fallback."""
    from . import kernels
    if choice:
        try:
            kernels.use(choice)
        except RuntimeError as e:
            raise ConfigError(f"--kernels {choice} is not available: {e}; or use --kernels numpy") from None


def _kernel_status(choice: str | None) -> tuple[str, str | None]:
    """The active backend, and why it is NumPy when compiled kernels were wanted but missing
    (nothing to explain when the user asked for NumPy)."""
    from . import kernels
    return kernels.BACKEND, (None if choice == "numpy" else kernels.FALLBACK_REASON)


def _explicit(args: argparse.Namespace) -> set[str]:
    return getattr(args, "explicit", None) or set()


def _train_config(args: argparse.Namespace):
    """TrainConfig from the flags, validated (ConfigError naming the flag)."""
    from .train import TrainConfig
    cfg = TrainConfig(**{f.name: getattr(args, f.name) for f in fields(TrainConfig)})
    cfg.validate()
    return cfg


def _model_config(args: argparse.Namespace, vocab_size: int):
    from .model import PythiaConfig
    cfg = PythiaConfig(vocab_size=vocab_size, **{k: getattr(args, k) for k in MODEL_FLAGS})
    cfg.validate()
    return cfg


def _next_free(path: Path) -> Path:
    """path itself when free, else stem-2.suffix, stem-3.suffix, ... whichever is free first."""
    if not path.exists():
        return path
    n = 2
    while True:
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
        if not candidate.exists():
            return candidate
        n += 1


def _check_target(path: Path, flag: str) -> None:
    """Fail now, not after training, when path cannot be written."""
    if path.is_dir():
        raise ConfigError(f"{flag} {str(path)!r} is a directory; give a file name such as "
                          f"{str(path / 'model.npz')!r}")
    parent = path.parent
    if not parent.is_dir():
        raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist; create it "
                          f"first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{flag} {str(path)!r}: directory {str(parent.resolve())!r} is not writable; "
                          f"choose a path in a directory you can write to")


def resolve_out(args: argparse.Namespace, command: str) -> tuple[Path, str | None]:
    """The checkpoint path to write, and a note for the banner when it is not the obvious one."""
    resume = getattr(args, "resume", None)
    if args.out is not None:
        out = Path(args.out)
        _check_target(out, "--out")
        same_as_resume = resume is not None and out.exists() and out.resolve() == Path(resume).resolve()
        if out.exists() and not (args.force or same_as_resume):
            raise ConfigError(f"--out {str(out)!r} already exists and would be replaced; choose another "
                              f"--out, or add --force to replace it")
        return out, ("updated in place" if same_as_resume else None)
    if resume is not None:
        return Path(resume), "updated in place"
    default = Path(DEFAULT_OUT[command])
    out = _next_free(default)
    note = None if out == default else f"{default} already exists, so it is kept"
    return out, note


def _corpus_info(files: list[Path], n_tokens: int):
    from .ui import CorpusInfo
    bundled = False
    try:
        from .corpus import bundled_corpus_dir
        bdir = bundled_corpus_dir()
        bundled = all(p.resolve().parent == bdir for p in files)
    except FileNotFoundError:
        pass
    shown = [(p.name if bundled else str(p), p.stat().st_size) for p in files]
    return CorpusInfo(files=shown, n_tokens=n_tokens, bundled=bundled)


def train_model(args: argparse.Namespace, command: str, ui):
    """The training half of train and train-chat: check, build, boot banner, train, summary.

    Returns (model, tokenizer, TrainResult, checkpoint path).
    """
    from . import __version__
    from .data import resolve_corpus
    from .train import TrainConfig, prepare_trainer

    given = _explicit(args)
    resume = getattr(args, "resume", None)
    sizes = {k: getattr(args, k) if k in given else None for k in MODEL_FLAGS}
    train = {f.name: getattr(args, f.name) if f.name in given else None for f in fields(TrainConfig)}
    if resume is None:
        _model_config(args, vocab_size=1)       # shape errors (d_model % n_head) before anything else
        _train_config(args)
    out, out_note = resolve_out(args, command)
    log_file = Path(args.log_file) if args.log_file else None
    if log_file is not None:
        _check_target(log_file, "--log-file")
    select_kernels(args.kernels)
    files = resolve_corpus(args.data)
    notes = []
    if not args.data:
        from .data import DEFAULT_FILES
        here = [name for name in DEFAULT_FILES if Path(name).is_file()]
        if len(here) == 1:  # the seed's contract needs both; say why the one present is unused
            notes.append(f"{here[0]} is here but not {next(n for n in DEFAULT_FILES if n not in here)}, so the "
                      f"bundled corpus is used; pass --data {here[0]} to train on it")
    trainer = prepare_trainer(files, model=sizes, train=train, resume=Path(resume) if resume else None,
                              out=out, log_file=log_file, on_progress=ui.progress)
    model, tokenizer, dataset, cfg = trainer.model, trainer.tokenizer, trainer.dataset, trainer.cfg
    start = trainer.start_step

    backend, fallback = _kernel_status(args.kernels)
    rows = [("train", f"{cfg.steps} steps{ui.dot}batch {cfg.batch_size}{ui.dot}lr {cfg.lr:g} -> {cfg.min_lr:g}"
                      f"{ui.dot}seed {cfg.seed}" + (f"{ui.dot}resuming at step {start}" if resume else ""))]
    rows.append(("saving to", str(out) + (f"  ({out_note})" if out_note else "")))
    ui.banner(version=__version__, backend=backend, fallback_reason=fallback, config=model.config,
              n_params=model.num_params(), vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.kind,
              corpus=_corpus_info(dataset.files, len(dataset.train) + len(dataset.val)), rows=rows)
    for note in notes:
        ui.notice(note)
    ui.notice("Training... (Ctrl-C stops early and saves)")
    result = trainer.run()

    train_loss, val_loss = result.train_loss, result.val_loss
    if result.evals and train_loss is None:      # stopped between evaluations: report the latest one
        _, train_loss, val_loss = result.evals[-1]
    elif train_loss is None and result.losses:
        train_loss = result.losses[-1]
    ui.summary(steps_done=result.steps, steps=cfg.steps, train_loss=train_loss, val_loss=val_loss,
               wall_s=result.wall_time_s, tokens_per_s=result.tokens_per_s,
               checkpoint=str(result.checkpoint) if result.checkpoint else "not saved (no step finished)",
               interrupted=result.interrupted)
    return model, tokenizer, result, out


def _chat_settings(args: argparse.Namespace | None = None, seed: int | None = None):
    from .chat import ChatSettings
    if args is None:
        return ChatSettings(seed=seed)
    return ChatSettings(temperature=args.temperature, top_k=args.top_k or None,
                        top_p=None if args.top_p >= 1 else args.top_p, max_new_tokens=args.max_new_tokens,
                        seed=args.seed)


def load_model(args: argparse.Namespace):
    """(model, tokenizer, description) from --checkpoint FILE or --gpt2 DIR."""
    if args.gpt2:
        try:
            from .gpt2 import load_gpt2
        except ImportError as e:
            raise ConfigError(f"GPT-2 support is missing from this installation ({e}); reinstall Pythia") from None
        model, tokenizer = load_gpt2(args.gpt2)
        return model, tokenizer, f"GPT-2 weights from {args.gpt2}"
    if args.checkpoint:
        from .checkpoint import load_checkpoint
        ckpt = load_checkpoint(args.checkpoint)
        if ckpt.step:
            what = f"trained {ckpt.step} steps"
        else:
            what = "converted GPT-2 weights" if ckpt.tokenizer.kind == "gpt2-bpe" else "untrained"
        return ckpt.model, ckpt.tokenizer, f"{args.checkpoint} ({what})"
    found = sorted(str(p) for p in Path(".").glob("*.npz"))
    hint = f"; e.g. --checkpoint {found[0]}" if found else "; train one with `python -m pythia train`"
    raise ConfigError(f"{args.command} needs a model: --checkpoint FILE or --gpt2 DIR{hint}")


# ---- the commands --------------------------------------------------------------------------------

def cmd_train_chat(args: argparse.Namespace) -> int:
    from .chat import run_chat
    from .ui import ConsoleUI
    ui = ConsoleUI()
    model, tokenizer, _, _ = train_model(args, "train-chat", ui)
    ui.line()
    run_chat(model, tokenizer, ui=ui, settings=_chat_settings(seed=args.seed))
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .ui import ConsoleUI
    ui = ConsoleUI()
    _, _, result, out = train_model(args, "train", ui)
    if result.interrupted:
        if result.checkpoint:
            ui.notice(f"Continue with: python -m pythia train --resume {out} (and the same --data)")
        return 130
    ui.notice(f"Chat with it: python -m pythia chat --checkpoint {out}")
    return 0


def cmd_chat(args: argparse.Namespace) -> int:
    from . import __version__
    from .chat import run_chat
    from .ui import ConsoleUI
    ui = ConsoleUI()
    select_kernels(args.kernels)
    model, tokenizer, source = load_model(args)
    backend, fallback = _kernel_status(args.kernels)
    ui.banner(version=__version__, backend=backend, fallback_reason=fallback, config=model.config,
              n_params=model.num_params(), vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.kind,
              source=source)
    ui.line()
    run_chat(model, tokenizer, ui=ui, settings=_chat_settings(args))
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    import numpy as np

    from .chat import stream_text
    from .ui import ConsoleUI
    err = ConsoleUI(sys.stderr)
    select_kernels(args.kernels)
    model, tokenizer, source = load_model(args)
    backend, fallback = _kernel_status(args.kernels)
    err.notice(f"pythia: {source}{err.dot}kernels {backend}")
    if fallback:
        err.warn(f"fell back to the NumPy kernels, which are slower: {fallback}")
    prompt = args.prompt.encode("utf-8", "replace").decode("utf-8")  # undecodable argv bytes -> '?'
    filt = getattr(tokenizer, "filter", None)
    if filt is not None:
        prompt, dropped = filt(prompt)
        if dropped:
            err.notice(f"dropped {len(dropped)} character(s) the vocabulary lacks: {''.join(dropped)!r}")
    ids = tokenizer.encode(prompt)
    if not ids:
        raise ConfigError("--prompt is empty (after dropping characters the vocabulary lacks); "
                          "give some text to continue")
    s = _chat_settings(args)
    rng = np.random.default_rng(s.seed)
    out = sys.stdout
    if not args.no_echo:
        out.write(prompt)
        out.flush()
    gen = model.generate(ids[-model.config.block_size:], s.max_new_tokens, temperature=s.temperature,
                         top_k=s.top_k, top_p=s.top_p, rng=rng)
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
    return 0


def cmd_convert_gpt2(args: argparse.Namespace) -> int:
    out = Path(args.out)
    _check_target(out, "--out")
    if out.exists() and not args.force:
        raise ConfigError(f"--out {str(out)!r} already exists and would be replaced; choose another --out, "
                          f"or add --force to replace it")
    try:
        from .gpt2 import convert_gpt2
    except ImportError as e:
        raise ConfigError(f"GPT-2 support is missing from this installation ({e}); reinstall Pythia") from None
    written = convert_gpt2(args.dir, out, overwrite=args.force)
    print(f"wrote {written}; chat with it: python -m pythia chat --checkpoint {written}")
    return 0
