"""What each command does: train, chat, generate, convert, given the parsed command line.

`pythia.cli` parses the arguments and reports errors; the functions here (one `cmd_<name>` per
command, and the pieces they share) check settings before any data is read, never replace a file
the user already has unless asked to, and raise `PythiaError` for anything the user can fix.
"""
from __future__ import annotations

import argparse
import contextlib
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


def _free_names(path: Path):
    """path, then stem-2.suffix, stem-3.suffix, ...: the candidates for a default output name."""
    yield path
    n = 2
    while True:
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1


def claim_out(args: argparse.Namespace, command: str):
    """Claim the checkpoint this run writes (pythia.system.outputs.claim_output), checked and locked now.

    Returns (claim, note for the banner or None, the --resume source when it is another file)."""
    from .system.outputs import OutputBusy, claim_output, is_claimed
    resume = getattr(args, "resume", None)
    if args.out is not None:
        out = args.out                          # a str: Path() would drop a trailing '/'
        in_place = resume is not None and os.path.exists(out) and os.path.exists(resume) and \
            os.path.samefile(out, resume)
        claim = claim_output(out, flag="--out", replace=bool(args.force or in_place))
        return claim, ("updated in place" if in_place else None), (None if in_place else resume)
    if resume is not None:
        return claim_output(resume, flag="--resume", replace=True), "updated in place", None
    default = Path(DEFAULT_OUT[command])
    why = None                                  # why the default name itself was passed over
    for out in _free_names(default):           # never replace a file, nor race a live run for one
        if os.path.lexists(out) or is_claimed(out):
            why = why or ("already exists, so it is kept" if os.path.lexists(out)
                          else "is being written by another run")
            continue
        try:
            claim = claim_output(out, flag="--out")
        except OutputBusy:
            why = why or "is being written by another run"
            continue
        return claim, (f"{default} {why}" if why else None), None


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


def _check_corpus_memory(files: list[Path], skip: bool) -> None:
    """Refuse, before a byte is read, a corpus that is not regular files or too big to encode in memory."""
    from .errors import DataError
    from .system.inputs import require_regular
    from .system.memory_budget import check_corpus
    total = sum(require_regular(p, "data file", DataError, hint="pass UTF-8 text files with --data") for p in files)
    check_corpus(total, skip=skip)


def train_model(args: argparse.Namespace, command: str, ui, stop):
    """The training half of train and train-chat: check, build, boot banner, train, summary.

    stop is the pythia.system.outputs.SignalGuard of the command: training polls it at step boundaries.
    The checkpoint is claimed from the first check until the last save.
    Returns (model, tokenizer, TrainResult, checkpoint path).
    """
    with contextlib.ExitStack() as held:
        return _train_model(args, command, ui, stop, held)


def _train_model(args: argparse.Namespace, command: str, ui, stop, held: contextlib.ExitStack):
    from . import __version__
    from .training import distributed
    from .corpora.data import resolve_corpus
    from .system.outputs import check_appendable, check_distinct
    from .train import TrainConfig, prepare_trainer

    session = distributed.session()             # under mpiexec: this process's rank (else one process)
    given = _explicit(args)
    resume = getattr(args, "resume", None)
    init_from = getattr(args, "init_from", None)
    if resume is not None and init_from is not None:
        raise ConfigError("--init-from starts a new run from a model's weights and --resume continues one; "
                          "give only one of them")
    preset, overridden = None, []
    if resume is None and init_from is None:     # a preset fills in every flag not given
        from .training.presets import apply_preset
        preset, overridden = apply_preset(args, given)
        given = given | set(MODEL_FLAGS) | {f.name for f in fields(TrainConfig)}
    elif getattr(args, "preset", None):
        raise ConfigError("--preset starts a new model; a resumed run keeps its checkpoint's settings and "
                          "--init-from takes SRC's (drop --preset, or give single flags such as --steps)")
    sizes = {k: getattr(args, k) if k in given else None for k in MODEL_FLAGS}
    train = {f.name: getattr(args, f.name) if f.name in given else None for f in fields(TrainConfig)}
    plot = None
    if getattr(args, "plot", None) and session.rank == 0:
        from .system.outputs import claim_output
        plot = held.enter_context(claim_output(args.plot, flag="--plot", replace=args.force)).path
    if init_from is not None:
        from .training.finetune import finetune_config
        finetune_config(train)                   # bad settings fail before the model is read
    elif resume is None:
        _model_config(args, vocab_size=1)       # shape errors (d_model % n_head) before anything else
        _train_config(args)
    if session.rank == 0:                       # rank 0 alone writes, so it alone claims the checkpoint
        claim, out_note, resume_source = claim_out(args, command)
        held.enter_context(claim)
        out = claim.path
    else:
        claim, out_note, resume_source = None, None, None
        out = Path(args.out or resume or DEFAULT_OUT[command])
    log_file = Path(args.log_file) if args.log_file else None
    if log_file is not None:
        check_appendable(args.log_file, flag="--log-file")
    select_kernels(args.kernels)
    files = resolve_corpus(args.data)
    check_distinct({"--out": out, "--log-file": log_file},
                   {"--data": files, "--resume": [resume_source] if resume_source else []})
    if not any(p.is_dir() for p in files):      # a prepared folder is memory-mapped, not read into memory
        _check_corpus_memory(files, getattr(args, "no_memory_check", False))
    notes = []
    if not args.data:
        from .corpora.data import DEFAULT_FILES
        here = [name for name in DEFAULT_FILES if Path(name).is_file()]
        if len(here) == 1:  # the seed's contract needs both; say why the one present is unused
            notes.append(f"{here[0]} is here but not {next(n for n in DEFAULT_FILES if n not in here)}, so the "
                      f"bundled corpus is used; pass --data {here[0]} to train on it")
    memory = {}

    def check_memory(config, cfg, n_tokens):                  # before the model is allocated
        from .system.memory_budget import check_training
        memory["fit"] = check_training(config, cfg.batch_size, n_tokens,
                                       skip=getattr(args, "no_memory_check", False))

    def build(files, *, resume=None, check_memory=None, **kwargs):
        if init_from is None:
            return prepare_trainer(files, resume=resume, check_memory=check_memory, **kwargs)
        from .training.finetune import prepare_finetune
        return prepare_finetune(files, init_from, **kwargs)    # sizes and tokenizer come from SRC
    trainer = session.prepare(build, files, model=sizes, train=train, resume=Path(resume) if resume else None,
                              out=out, log_file=log_file, on_progress=ui.progress, should_stop=stop.requested,
                              check_memory=check_memory)
    from .system.sharding import ShardedModel
    trainer.model = ShardedModel(trainer.model)  # threads and batch shards: the system layer's wrapper
    model, tokenizer, dataset, cfg = trainer.model, trainer.tokenizer, trainer.dataset, trainer.cfg
    start = trainer.start_step

    backend, fallback = _kernel_status(args.kernels)
    rows = [("train", f"{cfg.steps} steps{ui.dot}batch {cfg.batch_size}{ui.dot}lr {cfg.lr:g} -> {cfg.min_lr:g}"
                      f"{ui.dot}seed {cfg.seed}" + (f"{ui.dot}resuming at step {start}" if resume else ""))]
    if init_from is not None:
        rows.append(("from", f"{init_from} (fine-tuning: fresh optimizer, block {dataset.block_size})"))
    if cfg.grad_accum > 1:
        rows.append(("batch", f"{cfg.grad_accum} x {cfg.batch_size} sequences per step"))
    notes_out = [n for n in (claim.note if claim else None, out_note) if n]
    rows.append(("saving to", str(out) + (f"  ({'; '.join(notes_out)})" if notes_out else "")))
    if "fit" in memory:
        from .system.memory_budget import describe_fit
        rows.append(("memory", describe_fit(*memory["fit"])))
    if session.multi:
        rows.append(("processes", session.describe()))
    if preset is not None:
        flags = ", ".join("--" + k.replace("_", "-") for k in overridden)
        rows.insert(0, ("preset", preset + (f"  (your flags set {flags})" if flags else "")))
    ui.banner(version=__version__, backend=backend, fallback_reason=fallback, config=model.config,
              n_params=model.num_params(), vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.kind,
              corpus=_corpus_info(dataset.files, len(dataset.train) + len(dataset.val)), rows=rows)
    for note in notes:
        ui.notice(note)
    ui.notice("Training... (Ctrl-C stops early and saves)")
    with stop.polled():
        result = trainer.run()
    held.close()                                # the last save is done: release the checkpoint

    train_loss, val_loss = result.train_loss, result.val_loss
    if result.evals and train_loss is None:      # stopped between evaluations: report the latest one
        _, train_loss, val_loss = result.evals[-1]
    elif train_loss is None and result.losses:
        train_loss = result.losses[-1]
    ui.summary(steps_done=result.steps, steps=cfg.steps, train_loss=train_loss, val_loss=val_loss,
               wall_s=result.wall_time_s, tokens_per_s=result.tokens_per_s,
               checkpoint=str(result.checkpoint) if result.checkpoint else "not saved (no step finished)",
               interrupted=result.interrupted, reason=stop.name or "Ctrl-C")
    if plot is not None and result.losses:
        from .system.outputs import atomic_write
        from .inspection.plot import loss_svg
        first = result.start_step + 1
        svg = loss_svg(list(enumerate(result.losses, first)), [(s, v) for s, _, v in result.evals],
                       title=f"{model.config.n_layer} layers, d_model {model.config.d_model}")
        atomic_write(plot, lambda f: f.write(svg.encode("utf-8")))
        ui.line("  " + ui.style("loss plot  ", "dim") + str(plot))
    return model, tokenizer, result, out


def _chat_settings(args: argparse.Namespace | None = None, seed: int | None = None, preset: str | None = None):
    from .chat import ChatSettings
    if args is None:
        from .training.presets import chat_sampling
        return ChatSettings(seed=seed, **chat_sampling(preset))
    return ChatSettings(temperature=args.temperature, top_k=args.top_k or None,
                        top_p=None if args.top_p >= 1 else args.top_p, max_new_tokens=args.max_new_tokens,
                        seed=args.seed)


def load_model(args: argparse.Namespace):
    """(model, tokenizer, description) from --checkpoint FILE or --gpt2 DIR."""
    if args.gpt2:
        try:
            from .formats.gpt2 import load_gpt2
        except ImportError as e:
            raise ConfigError(f"GPT-2 support is missing from this installation ({e}); reinstall Pythia") from None
        model, tokenizer = load_gpt2(args.gpt2)
        return model, tokenizer, f"GPT-2 weights from {args.gpt2}"
    if args.checkpoint:
        from .formats.checkpoint import load_checkpoint
        ckpt = load_checkpoint(args.checkpoint, optimizer=False)
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
    import signal

    from .training import distributed
    from .chat import run_chat
    from .system.outputs import guard_signals, keep_running_without_streams
    from .ui import ConsoleUI
    keep_running_without_streams()              # the report may go away; the run may not
    ui = ConsoleUI()
    with guard_signals() as stop:
        model, tokenizer, result, out = train_model(args, "train-chat", ui, stop)
    if stop.requested() and stop.signum != signal.SIGINT:   # Ctrl-C goes on to the chat; others end here
        if result.checkpoint:
            ui.notice(f"Chat with it: python -m pythia chat --checkpoint {out}")
        return stop.exit_status
    if distributed.session().rank != 0:          # under mpiexec, rank 0 alone chats
        return 0
    ui.line()
    settings = _chat_settings(seed=args.seed, preset=args.preset)
    if args.preset and settings.temperature != type(settings)().temperature:
        ui.notice(f"(the {args.preset} preset chats at temperature {settings.temperature:g}; /temp changes it)")
    run_chat(model, tokenizer, ui=ui, settings=settings)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from .system.outputs import guard_signals, keep_running_without_streams
    from .ui import ConsoleUI
    keep_running_without_streams()              # the report may go away; the run may not
    ui = ConsoleUI()
    with guard_signals() as stop:
        _, _, result, out = train_model(args, "train", ui, stop)
        if result.checkpoint is None:
            pass                                # the summary said "not saved"; name no file
        elif result.steps < result.planned_steps:
            ui.notice(f"Continue with: python -m pythia train --resume {out} (and the same --data)")
        else:
            ui.notice(f"Chat with it: python -m pythia chat --checkpoint {out}")
    if result.interrupted or stop.requested():
        return stop.exit_status or 130
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
    from .system.outputs import claim_output, guard_signals
    source = Path(args.dir)
    inputs = {"DIR": [p for p in source.iterdir() if p.is_file()] if source.is_dir() else []}
    with guard_signals(), claim_output(args.out, flag="--out", replace=args.force, inputs=inputs) as claim:
        try:
            from .formats.gpt2 import convert_gpt2
        except ImportError as e:
            raise ConfigError(f"GPT-2 support is missing from this installation ({e}); reinstall Pythia") from None
        written = convert_gpt2(args.dir, claim.path, overwrite=args.force)
    print(f"wrote {written}; chat with it: python -m pythia chat --checkpoint {written}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .formats.export import describe, export
    from .system.outputs import guard_signals
    with guard_signals():          # a signal raises, so the half-written temporary folder is removed
        out = export(args.checkpoint, args.out, force=args.force)
    print(describe(out))
    print(f"load it: GPT2LMHeadModel.from_pretrained({str(out)!r}); in Pythia: python -m pythia chat --gpt2 {out}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from .system.outputs import atomic_write, claim_output
    from .inspection.plot import loss_svg, read_log
    with claim_output(args.out, flag="--out", replace=args.force, inputs={"LOG.jsonl": [Path(args.log)]}) as claim:
        out = claim.path
        train, val = read_log(args.log)
        svg = loss_svg(train, val, log_y=args.log_y, title=f"Loss: {Path(args.log).name}")
        atomic_write(out, lambda f: f.write(svg.encode("utf-8")))
    print(f"wrote {out} ({len(train)} train and {len(val)} val points); open it in a browser")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .inspection.explain import run_explain
    select_kernels(args.kernels)
    model, tokenizer, _ = load_model(args)
    run_explain(model, tokenizer, args.text, layer=args.layer, head=args.head, out=sys.stdout)
    return 0
