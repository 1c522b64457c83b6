"""One train or train-chat run from its resolved settings: claim the outputs, build, train, report.

    settings = training_settings.resolve(args, command)      # pure: flags -> settings
    model, tokenizer, result, out = train_model(settings, ui, stop)

train_model claims every output first (the checkpoint, --plot, and checks --log-file), then reads
the corpus and builds the run (build_trainer: the one place that calls the training core), shows
the banner, trains inside `stop.polled()` and shows the summary (and draws --plot).
"""
from __future__ import annotations

import contextlib
import os
from pathlib import Path

from .kernel_choice import kernel_status, select_kernels
from .training_flags import DEFAULT_OUT
from .training_settings import TrainSettings


def _free_names(path: Path):
    """path, then stem-2.suffix, stem-3.suffix, ...: the candidates for a default output name."""
    yield path
    n = 2
    while True:
        yield path.with_name(f"{path.stem}-{n}{path.suffix}")
        n += 1


def claim_checkpoint(s: TrainSettings):
    """Claim the checkpoint this run writes (pythia.system.claims.claim_output), checked and locked now.

    Returns (claim, note for the banner or None, the --resume source when it is another file)."""
    from ..system.claims import OutputBusy, claim_output, is_claimed
    resume = s.resume
    if s.out is not None:
        out = s.out                             # a str: Path() would drop a trailing '/'
        in_place = resume is not None and os.path.exists(out) and os.path.exists(resume) and \
            os.path.samefile(out, resume)
        claim = claim_output(out, flag="--out", replace=bool(s.force or in_place))
        return claim, ("updated in place" if in_place else None), (None if in_place else resume)
    if resume is not None:
        return claim_output(resume, flag="--resume", replace=True), "updated in place", None
    default = Path(DEFAULT_OUT[s.command])
    kept, busy = [], []                         # the names passed over, each for its reason
    for out in _free_names(default):           # never replace a file, nor race a live run for one
        if os.path.lexists(out) or is_claimed(out):
            (kept if os.path.lexists(out) else busy).append(out.name)
            continue
        try:
            claim = claim_output(out, flag="--out")
        except OutputBusy:
            busy.append(out.name)
            continue
        return claim, _passed_over(kept, busy), None


def _passed_over(kept: list[str], busy: list[str]) -> str | None:
    """Why the names before the one chosen were not used: every one of them, by reason."""
    def names(found: list[str]) -> str:
        if len(found) > 3:
            return f"the {len(found)} files {found[0]} ... {found[-1]}"
        return " and ".join([", ".join(found[:-1]), found[-1]] if len(found) > 1 else found)
    parts = []
    if kept:
        parts.append(f"{names(kept)} already exist{'s' if len(kept) == 1 else ''}, so "
                     f"{'it is' if len(kept) == 1 else 'they are'} kept")
    if busy:
        parts.append(f"{names(busy)} {'is' if len(busy) == 1 else 'are'} being written by another run")
    return "; ".join(parts) or None


def _corpus_info(files: list[Path], n_tokens: int):
    from ..corpus import bundled_corpus_dir
    from ..ui import CorpusInfo
    bundled = False
    try:
        bdir = bundled_corpus_dir()
        bundled = all(p.resolve().parent == bdir for p in files)
    except FileNotFoundError:
        pass
    shown = [(p.name if bundled else str(p), p.stat().st_size) for p in files]
    return CorpusInfo(files=shown, n_tokens=n_tokens, bundled=bundled)


def _check_corpus_memory(files: list[Path], skip: bool) -> None:
    """Refuse, before a byte is read, a corpus that is not regular files or too big to encode in memory."""
    from ..errors import DataError
    from ..system.inputs import require_regular
    from ..system.memory_budget import check_corpus
    total = sum(require_regular(p, "data file", DataError, hint="pass UTF-8 text files with --data") for p in files)
    check_corpus(total, skip=skip)


def _default_corpus_note(s: TrainSettings) -> str | None:
    """Why input.txt (or model.txt) alone in the current directory is not trained on."""
    from ..corpus import DEFAULT_FILES
    if s.data:
        return None
    here = [name for name in DEFAULT_FILES if Path(name).is_file()]
    if len(here) != 1:                          # the seed's contract needs both
        return None
    missing = next(n for n in DEFAULT_FILES if n not in here)
    return (f"{here[0]} is here but not {missing}, so the bundled corpus is used; pass --data {here[0]} "
            f"to train on it")


def build_trainer(s: TrainSettings, session, files: list[Path], *, out: Path, log_file: Path | None, ui, stop,
                  memory: dict):
    """The Trainer of this run on every process of the session: a new model, a resumed one, or
    SRC's weights to fine-tune. memory["fit"] receives the memory estimate checked on the way."""
    from ..train import prepare_trainer

    def check_memory(config, cfg, n_tokens):                  # before the model is allocated
        from ..system.memory_budget import check_training
        memory["fit"] = check_training(config, cfg.batch_size, n_tokens, skip=s.no_memory_check)

    def build(files, *, resume=None, check_memory=None, **kwargs):
        if s.init_from is None:
            return prepare_trainer(files, resume=resume, check_memory=check_memory, **kwargs)
        from ..training.finetune import prepare_finetune
        return prepare_finetune(files, s.init_from, lora=s.lora, **kwargs)  # sizes and tokenizer come from SRC
    trainer = session.prepare(build, files, model=s.sizes, train=s.train, resume=Path(s.resume) if s.resume else None,
                              out=out, log_file=log_file, on_progress=ui.progress, should_stop=stop.requested,
                              check_memory=check_memory, stop_signal=lambda: stop.signum)
    from ..system.sharding import ShardedModel
    trainer.model = ShardedModel(trainer.model)     # threads and batch shards: the system layer's wrapper
    return trainer


def train_model(s: TrainSettings, ui, stop):
    """The training half of train and train-chat: claim, build, boot banner, train, summary.

    stop is the command's pythia.system.signals.SignalGuard: training polls it at step boundaries.
    The checkpoint is claimed from the first check until the last save.
    Returns (model, tokenizer, TrainResult, checkpoint path).
    """
    with contextlib.ExitStack() as held:
        return _train_model(s, ui, stop, held)


def _train_model(s: TrainSettings, ui, stop, held: contextlib.ExitStack):
    from ..corpora.data import resolve_corpus
    from ..system.claims import check_appendable, check_distinct, claim_output
    from ..training import distributed

    session = distributed.session()             # under mpiexec: this process's rank (else one process)

    def outputs_and_corpus():
        """Claims (rank 0's alone), checks and the corpus's files. Run under session.agree, so an
        error on one rank (rank 0's --out exists) is every rank's: rank 0 prints its one line and
        all exit together, with no MPI_Abort (and no launcher's abort banner) needed."""
        plot = None
        if s.plot:                                  # before either is claimed: the second claim would be our own
            check_distinct({"--out": s.out or s.resume, "--plot": s.plot})
        if s.plot and session.rank == 0:
            plot = held.enter_context(claim_output(s.plot, flag="--plot", replace=s.force)).path
        if session.rank == 0:                       # rank 0 alone writes, so it alone claims the checkpoint
            claim, out_note, resume_source = claim_checkpoint(s)
            held.enter_context(claim)
            out = claim.path
        else:
            claim, out_note, resume_source = None, None, None
            out = Path(s.out or s.resume or DEFAULT_OUT[s.command])
        log_file = Path(s.log_file) if s.log_file else None
        if log_file is not None:
            check_appendable(s.log_file, flag="--log-file")
        select_kernels(s.kernels)
        files = resolve_corpus(list(s.data) if s.data else None)
        check_distinct({"--out": out, "--log-file": log_file},
                       {"--data": files, "--resume": [resume_source] if resume_source else []})
        if not any(p.is_dir() for p in files):      # a prepared folder is memory-mapped, not read into memory
            _check_corpus_memory(files, s.no_memory_check)
        return plot, claim, out_note, resume_source, out, log_file, files
    plot, claim, out_note, resume_source, out, log_file, files = session.agree(outputs_and_corpus)
    note = _default_corpus_note(s)
    memory: dict = {}
    trainer = build_trainer(s, session, files, out=out, log_file=log_file, ui=ui, stop=stop, memory=memory)

    model, tokenizer, steps = trainer.model, trainer.tokenizer, trainer.cfg.steps
    notes = [n for n in (claim.note if claim else None, out_note) if n]
    _banner(s, ui, trainer, session, out, notes, memory)
    for n in [note] + list(getattr(trainer.dataset, "notes", [])):   # a chat set says what it cut or skipped
        if n:
            ui.notice(n)
    ui.notice("Training... (Ctrl-C stops early and saves)")
    with stop.polled():
        result = trainer.run()
    stop.adopt(getattr(trainer.reducer, "stop_signum", None))   # a signal another process received
    held.close()                                # the last save is done: release the checkpoint
    _summary(ui, steps, result, stop)

    def draw() -> None:                         # rank 0 alone draws: its error stops every rank, unaborted
        if plot is not None and result.losses:
            _draw_plot(ui, plot, model, result)
    session.together(draw)
    return model, tokenizer, result, out


def _banner(s: TrainSettings, ui, trainer, session, out: Path, notes: list[str], memory: dict) -> None:
    from .. import __version__
    model, tokenizer, dataset, cfg = trainer.model, trainer.tokenizer, trainer.dataset, trainer.cfg
    backend, fallback = kernel_status(s.kernels)
    rows = [("train", f"{cfg.steps} steps{ui.dot}batch {cfg.batch_size}{ui.dot}lr {cfg.lr:g} -> {cfg.min_lr:g}"
                      f"{ui.dot}seed {cfg.seed}" + (f"{ui.dot}resuming at step {trainer.start_step}"
                                                   if s.resume else ""))]
    if s.init_from is not None:
        rows.append(("from", f"{s.init_from} (fine-tuning: fresh optimizer, block {dataset.block_size})"))
    if getattr(model, "adapter_meta", None) is not None:
        lora = model.adapter_meta()
        rows.append(("LoRA", f"rank {lora['rank']}{ui.dot}alpha {lora['alpha']:g}{ui.dot}{', '.join(lora['targets'])}"
                             f"{ui.dot}{model.num_params():,} trained of {model.base.num_params():,} (base frozen)"))
    if cfg.grad_accum > 1:
        rows.append(("batch", f"{cfg.grad_accum} x {cfg.batch_size} sequences per step"))
    rows.append(("saving to", str(out) + (f"  ({'; '.join(notes)})" if notes else "")))
    if "fit" in memory:
        from ..system.memory_budget import describe_fit
        rows.append(("memory", describe_fit(*memory["fit"])))
    if session.multi:
        rows.append(("processes", session.describe()))
    if s.preset is not None:
        flags = ", ".join("--" + k.replace("_", "-") for k in s.overridden)
        rows.insert(0, ("preset", s.preset + (f"  (your flags set {flags})" if flags else "")))
    ui.banner(version=__version__, backend=backend, fallback_reason=fallback, config=model.config,
              n_params=model.num_params(), vocab_size=tokenizer.vocab_size, tokenizer=tokenizer.kind,
              corpus=_corpus_info(dataset.files, getattr(dataset, "n_tokens", 0) or len(dataset.train) + len(dataset.val)),
              rows=rows)


def _summary(ui, steps: int, result, stop) -> None:
    train_loss, val_loss = result.train_loss, result.val_loss
    if result.evals and train_loss is None:      # stopped between evaluations: report the latest one
        _, train_loss, val_loss = result.evals[-1]
    elif train_loss is None and result.losses:
        train_loss = result.losses[-1]
    ui.summary(steps_done=result.steps, steps=steps, train_loss=train_loss, val_loss=val_loss,
               wall_s=result.wall_time_s, tokens_per_s=result.tokens_per_s,
               checkpoint=str(result.checkpoint) if result.checkpoint else "not saved (no step finished)",
               interrupted=result.interrupted, reason=stop.name or "Ctrl-C")


def _draw_plot(ui, plot: Path, model, result) -> None:
    from ..inspection.plot import loss_svg
    from ..system.atomic import atomic_write
    first = result.start_step + 1
    svg = loss_svg(list(enumerate(result.losses, first)), [(s, v) for s, _, v in result.evals],
                   title=f"{model.config.n_layer} layers, d_model {model.config.d_model}")
    atomic_write(plot, lambda f: f.write(svg.encode("utf-8")))
    ui.line("  " + ui.style("loss plot  ", "dim") + str(plot))
