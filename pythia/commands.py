"""What each command does: train, chat, generate, convert, given the parsed command line.

`pythia.cli` parses the arguments and reports errors; the functions here (one `cmd_<name>` per
command, and the pieces they share) check settings before any data is read, never replace a file
the user already has unless asked to, and raise `PythiaError` for anything the user can fix.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import fields
from pathlib import Path

from .errors import ConfigError

DEFAULT_OUT = {"train-chat": "pythia-chat.npz", "train": "pythia.npz"}
MODEL_FLAGS = ("block_size", "d_model", "n_layer", "n_head")


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
    preset, overridden = None, []
    if resume is None:                           # a preset fills in every flag not given
        from .presets import apply_preset
        preset, overridden = apply_preset(args, given)
        given = given | set(MODEL_FLAGS) | {f.name for f in fields(TrainConfig)}
    elif getattr(args, "preset", None):
        raise ConfigError("--preset starts a new run; a resumed run keeps its checkpoint's settings "
                          "(drop --preset, or give single flags such as --steps)")
    sizes = {k: getattr(args, k) if k in given else None for k in MODEL_FLAGS}
    train = {f.name: getattr(args, f.name) if f.name in given else None for f in fields(TrainConfig)}
    plot = None
    if getattr(args, "plot", None):
        from .plot import check_plot_target
        plot = check_plot_target(args.plot, args.force)
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
    if preset is not None:
        flags = ", ".join("--" + k.replace("_", "-") for k in overridden)
        rows.insert(0, ("preset", preset + (f"  (your flags set {flags})" if flags else "")))
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
    if plot is not None and result.losses:
        from .plot import loss_svg, write_plot
        first = result.start_step + 1
        write_plot(plot, loss_svg(list(enumerate(result.losses, first)), [(s, v) for s, _, v in result.evals],
                                  title=f"{model.config.n_layer} layers, d_model {model.config.d_model}"))
        ui.line("  " + ui.style("loss plot  ", "dim") + str(plot))
    return model, tokenizer, result, out


def _chat_settings(args: argparse.Namespace | None = None, seed: int | None = None, preset: str | None = None):
    from .chat import ChatSettings
    if args is None:
        from .presets import chat_sampling
        return ChatSettings(seed=seed, **chat_sampling(preset))
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
    settings = _chat_settings(seed=args.seed, preset=args.preset)
    if args.preset and settings.temperature != type(settings)().temperature:
        ui.notice(f"(the {args.preset} preset chats at temperature {settings.temperature:g}; /temp changes it)")
    run_chat(model, tokenizer, ui=ui, settings=settings)
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


def cmd_plot(args: argparse.Namespace) -> int:
    from .plot import check_plot_target, loss_svg, read_log, write_plot
    out = check_plot_target(args.out, args.force)
    train, val = read_log(args.log)
    write_plot(out, loss_svg(train, val, log_y=args.log_y, title=f"Loss: {Path(args.log).name}"))
    print(f"wrote {out} ({len(train)} train and {len(val)} val points); open it in a browser")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import run_explain
    select_kernels(args.kernels)
    model, tokenizer, _ = load_model(args)
    run_explain(model, tokenizer, args.text, layer=args.layer, head=args.head, out=sys.stdout)
    return 0
