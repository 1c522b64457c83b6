"""The training loop: sample a batch, loss, backward, optimizer step; evaluate, log, checkpoint.

The Trainer knows only that a model has `loss(x, y) -> float`, `backward()`, `params` and
`grads_memory`, and that an optimizer has `step(flat_grads) -> {"lr", "grad_norm"}`: it is the
same loop for any model family and size. Between backward and the optimizer step a reducer sums
the gradients of the processes of a data-parallel run (pythia.training.parallel; in one process
it does nothing), and it averages their losses for evaluation and logging. It stops when the
injected should_stop() turns true (the command layer owns the signals that set it). An error in
what a process may do alone (save, log, report: rank 0's work in a data-parallel run) goes
through the reducer's hold, which raises it at once in one process and, in several, at the next
stop poll on every process together. B is the batch size and T the block size.

Gradient accumulation (grad_accum = K): one optimizer step sees K micro-batches of B sequences,
each drawn from the same training stream. Every micro-batch holds B * T tokens, so the mean loss
over all K * B * T tokens is the mean of the K micro-batch losses, and its gradient the mean of
their gradients: g = (1/K) sum_k g_k. Steps, the log and progress count optimizer steps. A step
reads at most the training split's worth of tokens (K * B * T <= its length; more would only
repeat windows at K times the cost), and a stop asked for between two micro-batches abandons the
step: nothing is updated, the batch generator goes back to where the step began, and the state of
the last completed step is saved, so a long step answers Ctrl-C within one micro-batch.

Determinism: training batches come from one seeded generator whose state is saved in every
checkpoint, so a run resumed from step k sees exactly the batches the uninterrupted run saw after
step k, and gives the same losses. Evaluation draws from its own generator, seeded afresh at each
evaluation, so it never moves the training stream and every evaluation scores the same batches
(changes in the curve are the model's, not the sample's).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from .training.parallel import LocalReducer
from .errors import ConfigError, PythiaError

EVAL_STREAM = 0xE7A1  # mixed into the seed of the evaluation generator, apart from the training stream


@dataclass
class TrainConfig:
    """Optimisation settings (model sizes live in PythiaConfig). Defaults suit the seed's small model."""
    steps: int = 500              # the seed's STEPS
    batch_size: int = 8           # the seed's BATCH_SIZE
    # Peak rate. A ~90k-parameter model takes larger steps than nanoGPT's 1e-3 for 10M. Measured on the
    # bundled corpus with the other defaults (val loss after 500 steps): 1e-3 2.31, 3e-3 2.09, 6e-3 2.04,
    # 1e-2 2.40. 3e-3 is near the best yet well clear of the breakdown, which comes sooner for wider models.
    lr: float = 3e-3
    min_lr: float = 3e-4          # cosine floor at lr / 10, as in nanoGPT (Chinchilla's advice)
    warmup_steps: int = 50        # ~10% of the default run: Adam's second moments settle before the peak rate
    weight_decay: float = 0.1     # decoupled, matrices and embeddings only; light, a short run barely overfits
    beta2: float = 0.99           # small batches give noisy gradients: a shorter memory than 0.999 reacts sooner
    grad_clip: float = 1.0        # global-norm clip against early spikes; 0 turns it off
    eval_interval: int = 100      # evaluate (and checkpoint) every this many steps, and at the end
    eval_iters: int = 20          # batches averaged per split per evaluation: 20 x 8 x 32 = 5k tokens
    seed: int = 1337              # seeds weights, training batches and evaluation batches
    grad_accum: int = 1           # micro-batches of batch_size per optimizer step (K x B sequences a step)

    def validate(self) -> None:
        """ConfigError naming the flag when a setting is out of range."""
        def bad(flag: str, value, need: str) -> None:
            raise ConfigError(f"--{flag} must be {need}, got {value}")
        for name in ("steps", "batch_size", "eval_interval", "eval_iters", "grad_accum"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
                bad(name.replace("_", "-"), v, "a positive integer")
        if not (isinstance(self.warmup_steps, (int, np.integer)) and self.warmup_steps >= 0):
            bad("warmup-steps", self.warmup_steps, "a non-negative integer")
        for name in ("lr", "min_lr", "weight_decay", "beta2", "grad_clip"):
            if not math.isfinite(float(getattr(self, name))):
                bad(name.replace("_", "-"), getattr(self, name), "a finite number")
        if self.lr <= 0:
            bad("lr", self.lr, "positive")
        if not 0 <= self.min_lr <= self.lr:
            bad("min-lr", self.min_lr, f"between 0 and --lr ({self.lr})")
        if self.weight_decay < 0:
            bad("weight-decay", self.weight_decay, "0 or more")
        if not 0 <= self.beta2 < 1:
            bad("beta2", self.beta2, "in [0, 1)")
        if self.grad_clip < 0:
            bad("grad-clip", self.grad_clip, "0 (off) or more")
        if not isinstance(self.seed, (int, np.integer)) or isinstance(self.seed, bool) or self.seed < 0:
            bad("seed", self.seed, "a non-negative integer")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """From a checkpoint's saved train config; keys this version does not know are ignored."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def check_step_size(cfg: TrainConfig, dataset) -> None:
    """ConfigError when --grad-accum K makes one step read more than the training split holds:
    K * B sequences of T tokens above its len(train) // T whole sequences (K = 1 is always allowed)."""
    T = dataset.block_size
    sequences = len(dataset.train) // T
    if cfg.grad_accum > 1 and cfg.grad_accum * cfg.batch_size > sequences:
        most = max(1, sequences // cfg.batch_size)
        raise ConfigError(f"--grad-accum {cfg.grad_accum} makes each step read {cfg.grad_accum:,} x {cfg.batch_size} "
                          f"sequences of {T} tokens, more than the training split's {sequences:,} "
                          f"({len(dataset.train):,} tokens); use --grad-accum {most} or less")


def make_optimizer(model, cfg: TrainConfig):
    """The DeltaOptimizer (AdamW + warmup/cosine) for model's parameters under cfg."""
    from .engine import DeltaOptimizer
    return DeltaOptimizer.for_model(model, lr=cfg.lr, min_lr=cfg.min_lr, warmup_steps=cfg.warmup_steps,
                                    total_steps=cfg.steps, beta2=cfg.beta2, weight_decay=cfg.weight_decay,
                                    grad_clip=cfg.grad_clip)


def make_rng(seed: int, state: dict | None = None) -> np.random.Generator:
    """The training batch generator: PCG64 seeded with seed, or restored to a saved state."""
    rng = np.random.Generator(np.random.PCG64(seed))
    if state is not None:
        try:
            rng.bit_generator.state = state
        except (TypeError, ValueError, KeyError) as e:
            from .errors import CheckpointError
            raise CheckpointError(f"the checkpoint's random generator state is unreadable ({e}); "
                                  f"it is corrupt, use another checkpoint") from None
    return rng


@dataclass
class Progress:
    """One step's report to on_progress (and one line of the log file)."""
    step: int                      # steps completed so far, 1-based
    steps: int                     # total steps of the run
    train_loss: float              # this step's minibatch loss
    val_loss: float | None         # the latest evaluation's val loss, None before the first
    lr: float                      # learning rate used for this step
    tokens_per_s: float            # training throughput of this run so far (evaluation time excluded)
    elapsed_s: float               # wall time since run() started
    eta_s: float                   # estimated wall time left
    evaluated: bool = False        # True on steps that ran an evaluation
    eval_train_loss: float | None = None  # the latest evaluation's train loss (averaged over eval_iters)
    grad_norm: float | None = None  # global gradient norm before clipping


@dataclass
class TrainResult:
    steps: int                                   # the step training stopped at
    train_loss: float | None                     # final evaluation's train loss (averaged)
    val_loss: float | None                       # final evaluation's val loss (averaged)
    losses: list[float] = field(default_factory=list)        # minibatch loss of each step of this run
    evals: list[tuple[int, float, float]] = field(default_factory=list)  # (step, train, val) per evaluation
    wall_time_s: float = 0.0
    tokens_per_s: float = 0.0
    checkpoint: Path | None = None               # where the final state was saved (None without out)
    interrupted: bool = False                    # stopped by Ctrl-C or a stop request before finishing
    start_step: int = 0                          # the step this run started from (non-zero when resumed)
    planned_steps: int = 0                       # the step the run was asked to reach (--steps)


class Trainer:
    """Trains model on dataset with optimizer under cfg, reporting through on_progress."""

    def __init__(self, model, optimizer, dataset, cfg: TrainConfig, *, tokenizer=None,
                 out: Path | None = None, log_file: Path | None = None,
                 on_progress: Callable[[Progress], None] | None = None,
                 start_step: int = 0, rng_state: dict | None = None,
                 should_stop: Callable[[], bool] | None = None, reducer=None, chat: dict | None = None):
        cfg.validate()
        if start_step >= cfg.steps:
            raise ConfigError(f"the model has already trained {start_step} steps and --steps is {cfg.steps}; "
                              f"pass --steps greater than {start_step} to train further")
        if dataset.block_size > model.config.block_size:
            raise ConfigError(f"the data's block size {dataset.block_size} exceeds the model's "
                              f"{model.config.block_size}; use --block-size {model.config.block_size} or less")
        check_step_size(cfg, dataset)
        self.model, self.optimizer, self.dataset, self.cfg = model, optimizer, dataset, cfg
        self.chat = chat                      # a chat model's template and stop ids, kept in its checkpoints
        self.tokenizer = tokenizer if tokenizer is not None else dataset.tokenizer
        self.out = Path(out) if out is not None else None
        self.log_file = Path(log_file) if log_file is not None else None
        self.on_progress = on_progress
        self.start_step = start_step
        self.rng = make_rng(cfg.seed, rng_state)
        self.should_stop = should_stop if should_stop is not None else (lambda: False)
        # sums gradients and losses over the processes of a data-parallel run; a no-op in one
        self.reducer = reducer if reducer is not None else LocalReducer()
        self._stopped = False                   # a stop was agreed (on any process of a data-parallel run)
        self._saved_step: int | None = None     # the step of the state last written to out
        self._save_point: int | None = None     # the step of the last save() call, written or not (no out)
        self._log_fh = None
        self._acc: np.ndarray | None = None     # (P,) gradient sum over micro-batches (grad_accum > 1)

    @classmethod
    def resume(cls, ckpt, dataset, cfg: TrainConfig, **kwargs) -> "Trainer":
        """A Trainer that continues ckpt (a pythia.formats.checkpoint.Checkpoint) exactly where it stopped."""
        from .errors import CheckpointError
        if ckpt.optimizer_arrays is None:
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r} holds no optimizer state, so training cannot "
                                  f"resume from it; start a new model without --resume")
        model = ckpt.model
        optimizer = make_optimizer(model, cfg)
        try:
            optimizer.load_state_arrays(ckpt.optimizer_arrays)
        except ValueError as e:
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r} has optimizer state that does not fit its "
                                  f"model ({e}); it is corrupt, use another checkpoint") from None
        rng_state = (ckpt.rng_state or {}).get("train")
        return cls(model, optimizer, dataset, cfg, tokenizer=ckpt.tokenizer, start_step=ckpt.step,
                   rng_state=rng_state, chat=ckpt.chat, **kwargs)

    # -- the loop -----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train from start_step to cfg.steps. When should_stop() turns true the run stops at the end
        of the current step or evaluation, saves, and returns with interrupted=True. A NaN or
        infinite loss raises PythiaError; the checkpoint at out then still holds the last good
        state (it is only ever written with finite weights)."""
        cfg, tokens_per_step = self.cfg, self.cfg.grad_accum * self.cfg.batch_size * self.dataset.block_size
        result = TrainResult(steps=self.start_step, train_loss=None, val_loss=None, start_step=self.start_step,
                             planned_steps=cfg.steps)
        self._stopped = False
        t0, train_time, step = time.perf_counter(), 0.0, self.start_step
        last_eval: tuple[float, float] | None = None
        # non-finite values are reported below as one clear error; NumPy's warnings would be noise
        with self._open_log(), np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            while step < cfg.steps and not self._stopping():
                ts = time.perf_counter()
                grads = self._gradients(step)                    # batch -> loss -> backward -> reduce
                if grads is None:                                # a stop between micro-batches
                    break
                loss, grads = grads
                try:
                    info = self.optimizer.step(grads)
                except PythiaError:                              # a non-finite gradient norm: nothing was updated
                    raise PythiaError(self._diverged_message(float("nan"), step + 1, "gradient norm")) from None
                step += 1
                train_time += time.perf_counter() - ts
                result.losses.append(loss)
                evaluated = False
                if step % cfg.eval_interval == 0 or step == cfg.steps:
                    evaluated = self._evaluate_and_save(step, result)
                    last_eval = result.evals[-1][1:] if evaluated else last_eval
                elapsed = time.perf_counter() - t0
                tps = (step - self.start_step) * tokens_per_step / train_time if train_time > 0 else 0.0
                progress = Progress(step=step, steps=cfg.steps, train_loss=loss,
                                    val_loss=last_eval[1] if last_eval else None,
                                    lr=float(info.get("lr", float("nan"))), tokens_per_s=tps, elapsed_s=elapsed,
                                    eta_s=(cfg.steps - step) * elapsed / (step - self.start_step),
                                    evaluated=evaluated, eval_train_loss=last_eval[0] if last_eval else None,
                                    grad_norm=_maybe_float(info.get("grad_norm")))
                self._report(progress)
        stopped = self._stopped or self.should_stop()            # no collective here: an error must not wait
        self._stopped = False                                    # the stop ended this run only
        result.steps = step
        # a stop during the final evaluation still counts: that evaluation and its save were skipped
        result.interrupted = step < cfg.steps or stopped
        if step > self.start_step and self._save_point != step and self._params_finite():
            self.save(step)                                      # the state reached is always saved
        self.reducer.settle()                                    # a process's failed save stops every one here
        if result.evals and result.evals[-1][0] == step:
            result.train_loss, result.val_loss = result.evals[-1][1], result.evals[-1][2]
        result.wall_time_s = time.perf_counter() - t0
        result.tokens_per_s = (step - self.start_step) * tokens_per_step / train_time if train_time > 0 else 0.0
        result.checkpoint = self.out if self._saved_step is not None else None
        return result

    # -- pieces -------------------------------------------------------------------------------

    def _gradients(self, step: int) -> tuple[float, np.ndarray] | None:
        """Loss and flat gradient of one optimizer step: the mean over grad_accum micro-batches
        (g = (1/K) sum_k g_k), then summed over the processes of a data-parallel run. None when a
        stop arrives between micro-batches (agreed by every process: the poll is a collective at
        the same micro-batch on each); the batch generator is then back where the step began.

        With K = 1 the model's own grads_memory is handed on (no copy); with K > 1 a sum buffer
        of its size is kept across steps (backward() overwrites grads_memory)."""
        K, B = self.cfg.grad_accum, self.cfg.batch_size
        total = 0.0
        grads = self.model.grads_memory                          # (P,)
        begun = self.rng.bit_generator.state if K > 1 else None
        for k in range(K):
            if k > 0 and self._stopping():
                self.rng.bit_generator.state = begun             # the resumed run draws this step's batches
                return None
            x, y = self.dataset.get_batch("train", B, self.rng)  # (B, T), (B, T)
            total += float(self.model.loss(x, y))
            self.model.backward()
            if K > 1:
                if self._acc is None:
                    self._acc = np.empty_like(grads)
                if k == 0:
                    np.copyto(self._acc, grads)
                else:
                    self._acc += grads
        if K > 1:
            self._acc *= np.float32(1.0 / K)
            grads = self._acc
        loss = self.reducer.mean_loss(total / K)                 # the same value on every process
        if not math.isfinite(loss):
            raise PythiaError(self._diverged_message(loss, step + 1))
        self.reducer.reduce_gradients(grads)
        return loss, grads

    def _stopping(self) -> bool:
        """A stop asked for here, or in a data-parallel run on any process: all stop after the same step."""
        if self.reducer.any_stop(self.should_stop()):
            self._stopped = True
        return self._stopped

    def evaluate(self, iters: int | None = None) -> tuple[float, float] | None:
        """Mean loss over `iters` (default eval_iters) batches of each split, from a freshly seeded
        generator. None when a stop arrives during it (the loop then stops without this result)."""
        iters = self.cfg.eval_iters if iters is None else iters
        rng = np.random.Generator(np.random.PCG64([self.cfg.seed, EVAL_STREAM]))
        result = []
        for split in ("train", "val"):
            total = 0.0
            for _ in range(iters):
                if self._stopping():
                    return None
                x, y = self.dataset.get_batch(split, self.cfg.batch_size, rng)  # (B, T), (B, T)
                total += float(self.model.loss(x, y))
            result.append(self.reducer.mean_loss(total) / iters)
        return result[0], result[1]

    def _evaluate_and_save(self, step: int, result: TrainResult) -> bool:
        """The scheduled evaluation and checkpoint; False when a stop cut the evaluation short."""
        losses = self.evaluate()
        if losses is None:
            return False
        result.evals.append((step, *losses))
        if not math.isfinite(losses[1]):
            raise PythiaError(self._diverged_message(losses[1], step, "val loss"))
        if not self._params_finite():
            raise PythiaError(self._diverged_message(float("nan"), step, "weights"))
        self.save(step)
        return True

    def save(self, step: int) -> None:
        """Checkpoint the state after `step` completed steps to out (when set)."""
        self._save_point = step                 # the same on every process: only rank 0 has an out
        if self.out is None:
            return
        from .formats.checkpoint import save_checkpoint
        with self._alone():
            save_checkpoint(self.out, self.model, self.tokenizer, optimizer=self.optimizer, step=step,
                            rng_state={"train": self.rng.bit_generator.state}, train_config=self.cfg.to_dict(),
                            corpus=getattr(self.dataset, "identity", None),  # a prepared corpus says what it is
                            chat=self.chat)
            self._saved_step = step

    @contextmanager
    def _alone(self) -> Iterator[None]:
        """A part this process may do alone (in a data-parallel run rank 0 alone saves, logs and
        reports). Its error goes to the reducer's hold: raised at once in one process; in several,
        at the next poll on every process together, since the others cannot know of it sooner."""
        try:
            yield
        except Exception as e:                  # noqa: BLE001 - raised by the reducer, now or at the next poll
            self.reducer.hold(e)

    def _params_finite(self) -> bool:
        return bool(np.isfinite(self.model.params_memory).all())

    def _report(self, progress: Progress) -> None:
        """One JSON line to the log file, then on_progress."""
        record = {"step": progress.step, "train_loss": progress.train_loss, "lr": progress.lr,
                  "tokens_per_s": progress.tokens_per_s, "elapsed_s": progress.elapsed_s,
                  "grad_norm": progress.grad_norm}
        if progress.evaluated:
            record.update(eval_train_loss=progress.eval_train_loss, val_loss=progress.val_loss)
        with self._alone():
            self._write_log(record)
            if self.on_progress is not None:
                self.on_progress(progress)

    def _write_log(self, record: dict) -> None:
        if self._log_fh is not None:
            try:
                self._log_fh.write(json.dumps(record) + "\n")
                self._log_fh.flush()               # every line flushed: closing the file writes nothing
            except OSError as e:                   # a full disk's OSError carries no file name: add it
                fh, self._log_fh = self._log_fh, None
                try:
                    fh.close()                     # tries the unwritten line once more; its error is this one
                except OSError:
                    pass
                raise PythiaError(f"cannot write --log-file {str(self.log_file)!r}: {e.strerror or e}; free "
                                  f"space on its disk or choose another --log-file") from None

    @contextmanager
    def _open_log(self) -> Iterator[None]:
        """The log file, opened for appending (never clobbering a user's file) for the run."""
        if self.log_file is not None:
            try:
                self._log_fh = open(self.log_file, "a", encoding="utf-8")
            except OSError as e:
                raise ConfigError(f"cannot open --log-file {str(self.log_file)!r}: {e.strerror or e}; "
                                  f"check the path") from None
        try:
            yield
        finally:
            if self._log_fh is not None:
                self._log_fh.close()
                self._log_fh = None

    def _diverged_message(self, value: float, step: int, what: str = "loss") -> str:
        kept = (f"the last good checkpoint in {str(self.out)!r} (with finite weights) is kept"
                if self._saved_step is not None else "no checkpoint was written")
        return (f"training diverged: the {what} became {'non-finite' if what == 'weights' else value} at step {step}; {kept}; lower --lr (now {self.cfg.lr:g}) "
                f"or --grad-clip, or raise --warmup-steps, and train again")


def _maybe_float(v) -> float | None:
    return None if v is None else float(v)


def _tokens_in_memory(dataset) -> int:
    """Tokens the corpus holds in memory: none for a prepared (memory-mapped) folder."""
    return 0 if getattr(dataset, "identity", None) is not None else len(dataset.train) + len(dataset.val)


def prepare_trainer(paths: list[Path], *, model: dict | None = None, train: dict | None = None,
                    resume: Path | None = None, check_memory: Callable | None = None,
                    **trainer_kwargs) -> Trainer:
    """Everything the CLI needs to start or resume a run, with every check in a sensible order.

    model: PythiaConfig sizes the user gave (None values mean "not given": the default for a new
    model, the checkpoint's when resuming); train: TrainConfig fields likewise. A new run builds a
    character vocabulary from the corpus; a resumed one keeps the checkpoint's model, vocabulary,
    optimizer, step, RNG and train config, overridden by the train fields that were given.
    trainer_kwargs go to Trainer (out, log_file, on_progress). check_memory(model_config,
    train_config, n_tokens), when given, runs once the sizes are known and before the model and
    optimizer are allocated (pythia.system.memory_budget); it raises to refuse the run.
    """
    from .formats.checkpoint import check_resume_sizes, load_checkpoint
    from .model import Pythia, PythiaConfig
    from .corpora.prepared import open_corpus           # text files, or one prepared (memory-mapped) folder

    sizes = {k: v for k, v in (model or {}).items() if v is not None}
    given = {k: v for k, v in (train or {}).items() if v is not None}
    if resume is None:
        cfg = TrainConfig(**given)
        cfg.validate()
        PythiaConfig(vocab_size=1, **sizes).validate()     # bad sizes fail before the corpus is read
        block_size = sizes.get("block_size", PythiaConfig.block_size)
        dataset = open_corpus(paths, block_size)
        if check_memory is not None:
            check_memory(PythiaConfig(vocab_size=dataset.tokenizer.vocab_size, **sizes), cfg, _tokens_in_memory(dataset))
        net = Pythia(PythiaConfig(vocab_size=dataset.tokenizer.vocab_size, **sizes), seed=cfg.seed)
        return Trainer(net, make_optimizer(net, cfg), dataset, cfg, **trainer_kwargs)
    from .formats.source import open_model
    ckpt = load_checkpoint(resume, open_base=open_model)        # a LoRA run opens its base as well
    check_resume_sizes(ckpt, **sizes)
    cfg = TrainConfig.from_dict({**ckpt.train_config, **given})
    cfg.validate()
    from .training.chats import is_chat_data
    if is_chat_data(paths):                                  # conversations, rendered as the run began
        from .formats.chat_template import ChatTemplate
        from .training.chats import build_chat_dataset
        template = ChatTemplate(**ckpt.chat["template"]) if ckpt.chat else None
        # rows are as long as the conversations; the model's context bounds the longest kept
        dataset = build_chat_dataset(paths, ckpt.model.config.block_size, ckpt.tokenizer, template)
    else:
        dataset = open_corpus(paths, ckpt.model.config.block_size, tokenizer=ckpt.tokenizer, saved=ckpt.corpus,
                              checkpoint=f"checkpoint {str(resume)!r}")
    if check_memory is not None:
        check_memory(ckpt.model.config, cfg, _tokens_in_memory(dataset))
    return Trainer.resume(ckpt, dataset, cfg, **trainer_kwargs)
