"""The training loop on a tiny real Pythia: determinism, exact resume, Ctrl-C, NaN, logging, bad settings."""
import json
import math
import os
import signal

import numpy as np
import pytest

from pythia.formats.checkpoint import load_checkpoint
from pythia.errors import CheckpointError, ConfigError, DataError, PythiaError
from pythia.train import EVAL_STREAM, Progress, TrainConfig, prepare_trainer

TEXT = "".join(f"{w} said the {a} to the {b}.\n" for w, a, b in
               [("so", "cat", "dog"), ("then", "fox", "hen"), ("and", "owl", "bat")] * 30)
SIZES = dict(block_size=8, d_model=16, n_layer=1, n_head=2)


def small(**kw) -> dict:
    base = dict(steps=12, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=3, eval_interval=4, eval_iters=2, seed=11)
    base.update(kw)
    return base


@pytest.fixture
def corpus(tmp_path):
    p = tmp_path / "corpus.txt"
    p.write_text(TEXT, encoding="utf-8")
    return [p]


def run(corpus, resume=None, **kw):
    trainer_kw = {k: kw.pop(k) for k in ("out", "log_file", "on_progress", "should_stop") if k in kw}
    t = prepare_trainer(corpus, model=SIZES, train=small(**kw), resume=resume, **trainer_kw)
    return t, t.run()


# ---- determinism and exact resume ------------------------------------------------------------

def test_same_seed_same_loss_curve_and_another_seed_another(corpus):
    _, a = run(corpus)
    _, b = run(corpus)
    _, c = run(corpus, seed=12)
    assert len(a.losses) == 12 and a.losses == b.losses and a.evals == b.evals
    assert a.losses != c.losses


def test_evaluation_does_not_perturb_the_training_stream(corpus):
    _, rare = run(corpus, eval_interval=100)      # evaluates only at the end
    _, often = run(corpus, eval_interval=1)       # evaluates after every step
    assert rare.losses == often.losses
    assert len(often.evals) == 12 and len(rare.evals) == 1
    assert often.evals[-1] == rare.evals[-1]


@pytest.mark.parametrize("how", ["should_stop", "sigint"])
@pytest.mark.parametrize("k", [5, 8])             # mid-interval and on an evaluation step
def test_interrupt_then_resume_reproduces_the_uninterrupted_run_exactly(corpus, tmp_path, how, k):
    # the trainer stops through its injected should_stop(); Ctrl-C reaches it as the commands
    # wire it, through pythia.system.signals.guard_signals
    from pythia.system.signals import guard_signals
    straight_trainer, straight = run(corpus, out=tmp_path / "straight.npz")
    asked: list[bool] = []

    def stop_at_k(p: Progress):
        if p.step == k:
            if how == "sigint":
                os.kill(os.getpid(), signal.SIGINT)   # what Ctrl-C sends
            else:
                asked.append(True)
    ck = tmp_path / "part.npz"
    with guard_signals() as stop, stop.polled():
        first_trainer, first = run(corpus, out=ck, on_progress=stop_at_k,
                                   should_stop=lambda: bool(asked) or stop.requested())
    assert first.interrupted and first.steps == k and first.checkpoint == ck
    assert load_checkpoint(ck).step == k
    assert sorted(os.listdir(tmp_path)) == ["corpus.txt", "part.npz", "straight.npz"]  # no temp files

    asked.clear()
    if how == "should_stop":
        assert first_trainer.evaluate() is not None   # the trainer keeps no stop state of its own
    resumed_trainer, second = run(corpus, resume=ck, out=ck)
    assert second.start_step == k and not second.interrupted
    assert first.losses + second.losses == straight.losses          # bit-for-bit, every step
    assert [e for e in straight.evals if e[0] > k] == second.evals
    for name, p in straight_trainer.model.params.items():
        np.testing.assert_array_equal(resumed_trainer.model.params[name], p)


def test_a_stop_between_micro_batches_abandons_the_step_and_resume_is_exact(corpus, tmp_path):
    # K = 4 micro-batches a step; the stop arrives after the second micro-batch of step 6, so the
    # run must draw no third one, save the state of step 5 (generator included) and a resumed run
    # must then give the uninterrupted run's losses bit for bit
    K = 4
    _, straight = run(corpus, grad_accum=K)
    drawn: list[int] = []
    ck = tmp_path / "part.npz"
    t = prepare_trainer(corpus, model=SIZES, train=small(grad_accum=K), out=ck,
                        should_stop=lambda: len(drawn) >= 5 * K + 2)
    draw = t.dataset.get_batch

    def counting(split, batch_size, rng):
        if rng is t.rng:                              # training micro-batches, not evaluation's
            drawn.append(1)
        return draw(split, batch_size, rng)
    t.dataset.get_batch = counting
    first = t.run()
    assert first.interrupted and first.steps == 5 and len(drawn) == 5 * K + 2
    assert load_checkpoint(ck).step == 5
    _, second = run(corpus, resume=ck, out=ck, grad_accum=K)
    assert first.losses + second.losses == straight.losses


def test_resume_keeps_the_checkpoint_train_config_unless_overridden(corpus, tmp_path):
    ck = tmp_path / "c.npz"
    run(corpus, out=ck, steps=6)
    t = prepare_trainer(corpus, model={}, train={"steps": 10, "lr": None}, resume=ck)
    assert t.cfg.steps == 10 and t.cfg.lr == 3e-3 and t.cfg.batch_size == 4 and t.start_step == 6
    assert t.run().steps == 10


def test_run_leaves_the_signal_handlers_alone(corpus):
    # signals belong to the command layer: during and after run() SIGINT keeps its handler
    before = signal.getsignal(signal.SIGINT)
    during = []
    run(corpus, steps=2, on_progress=lambda p: during.append(signal.getsignal(signal.SIGINT)))
    assert during == [before, before] and signal.getsignal(signal.SIGINT) is before


# ---- what run() reports ----------------------------------------------------------------------

def test_progress_every_step_with_evaluations_on_schedule(corpus):
    seen: list[Progress] = []
    trainer, result = run(corpus, steps=10, on_progress=seen.append)
    assert [p.step for p in seen] == list(range(1, 11))
    assert [p.step for p in seen if p.evaluated] == [4, 8, 10]
    assert all(p.steps == 10 and p.tokens_per_s > 0 and p.elapsed_s >= 0 for p in seen)
    assert seen[0].val_loss is None and seen[4].val_loss == seen[3].val_loss
    # lr is the schedule's rate for the 0-based step just taken (independent closed form).
    lr, lo, warm, total = 3e-3, 3e-4, 3, 10
    for p in seen:
        s = p.step - 1
        ref = lr * (s + 1) / warm if s < warm else lo + 0.5 * (1 + math.cos(math.pi * (s - warm) / (total - warm))) * (lr - lo)
        assert p.lr == pytest.approx(ref, rel=1e-12)
    assert seen[-1].eta_s == 0
    assert [p.train_loss for p in seen] == result.losses
    assert (result.train_loss, result.val_loss) == (seen[-1].eval_train_loss, seen[-1].val_loss)
    assert result.steps == 10 and not result.interrupted and result.checkpoint is None
    assert result.wall_time_s > 0 and result.tokens_per_s > 0


def test_evaluation_is_the_mean_loss_over_fixed_batches_of_each_split(corpus):
    trainer, _ = run(corpus, steps=2)
    rng = np.random.Generator(np.random.PCG64([11, EVAL_STREAM]))
    ref = []
    for split in ("train", "val"):
        ref.append(np.mean([trainer.model.loss(*trainer.dataset.get_batch(split, 4, rng)) for _ in range(2)]))
    got = trainer.evaluate()
    assert got == pytest.approx(tuple(ref), rel=1e-12)
    assert trainer.evaluate() == got                       # the same batches every time


def test_training_learns_the_corpus(corpus):
    # Uniform guessing costs ln(V); a working loop must get far below it on this repetitive text.
    trainer, result = run(corpus, steps=150, lr=1e-2, min_lr=1e-3, eval_interval=150, eval_iters=4)
    V = trainer.dataset.tokenizer.vocab_size
    assert result.val_loss < 0.6 * math.log(V), (result.val_loss, math.log(V))


def test_log_file_has_one_json_object_per_step_and_is_appended_to(corpus, tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"note": "an earlier run"}\n')
    run(corpus, steps=5, log_file=log)
    lines = log.read_text().splitlines()
    assert json.loads(lines[0]) == {"note": "an earlier run"}     # the user's file is not overwritten
    records = [json.loads(line) for line in lines[1:]]
    assert [r["step"] for r in records] == [1, 2, 3, 4, 5]
    for r in records:
        assert {"step", "train_loss", "lr", "tokens_per_s", "elapsed_s"} <= r.keys()
        assert ("val_loss" in r) == (r["step"] in (4, 5))


def test_unwritable_log_file_is_a_clear_error(corpus, tmp_path):
    t = prepare_trainer(corpus, model=SIZES, train=small(), log_file=tmp_path / "no" / "log.jsonl")
    with pytest.raises(ConfigError, match="cannot open --log-file"):
        t.run()


def test_out_holds_the_final_state(corpus, tmp_path):
    trainer, result = run(corpus, out=tmp_path / "c.npz", steps=6)
    ck = load_checkpoint(result.checkpoint)
    assert ck.step == 6 and ck.train_config["steps"] == 6 and ck.tokenizer == trainer.dataset.tokenizer
    for name, p in trainer.model.params.items():
        np.testing.assert_array_equal(ck.model.params[name], p)


# ---- divergence ------------------------------------------------------------------------------

def test_nan_loss_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(corpus, tmp_path):
    out = tmp_path / "c.npz"
    t = prepare_trainer(corpus, model=SIZES, train=small(), out=out)
    real_loss, n = t.model.loss, {"train_steps": 0}
    original_get_batch = t.dataset.get_batch

    def get_batch(split, B, rng):
        if rng is t.rng:                                  # the training stream, not an evaluation
            n["train_steps"] += 1
        return original_get_batch(split, B, rng)
    t.dataset.get_batch = get_batch
    t.model.loss = lambda x, y: float("nan") if n["train_steps"] == 7 else real_loss(x, y)
    with pytest.raises(PythiaError) as e:
        t.run()
    msg = str(e.value)
    assert "diverged" in msg and "step 7" in msg and "kept" in msg and "--lr" in msg and "\n" not in msg
    ck = load_checkpoint(out)
    assert ck.step == 4 and all(np.isfinite(p).all() for p in ck.model.params.values())


def test_weights_gone_bad_are_never_saved(corpus, tmp_path):
    out = tmp_path / "c.npz"
    t = prepare_trainer(corpus, model=SIZES, train=small(), out=out)
    real_step = t.optimizer.step

    def step(grads):
        info = real_step(grads)
        if t.optimizer.t == 6:
            t.model.params["ln_f.bias"][0] = np.inf      # the update itself went bad
        return info
    t.optimizer.step = step
    with pytest.raises(PythiaError, match="diverged: the (loss|val loss|weights) became"):
        t.run()
    assert load_checkpoint(out).step == 4                 # not overwritten at step 8 with inf weights


def test_non_finite_gradient_is_reported_as_divergence(corpus):
    t = prepare_trainer(corpus, model=SIZES, train=small())
    real_backward = t.model.backward

    def backward():
        real_backward()
        t.model.grads["wte"][0, 0] = np.nan
    t.model.backward = backward
    with pytest.raises(PythiaError, match="diverged: the gradient norm became nan at step 1; no checkpoint"):
        t.run()


# ---- bad settings ----------------------------------------------------------------------------

@pytest.mark.parametrize("field, value, flag", [
    ("steps", 0, "--steps"), ("steps", -5, "--steps"), ("batch_size", 0, "--batch-size"),
    ("eval_interval", 0, "--eval-interval"), ("eval_iters", 0, "--eval-iters"),
    ("warmup_steps", -1, "--warmup-steps"), ("lr", 0.0, "--lr"), ("lr", float("nan"), "--lr"),
    ("min_lr", 1.0, "--min-lr"), ("weight_decay", -0.1, "--weight-decay"), ("beta2", 1.0, "--beta2"),
    ("grad_clip", -1.0, "--grad-clip"), ("seed", -1, "--seed"), ("steps", 2.5, "--steps"),
])
def test_bad_train_settings_name_the_flag(field, value, flag):
    with pytest.raises(ConfigError) as e:
        TrainConfig(**{field: value}).validate()
    assert str(e.value).startswith(flag + " ")


def test_defaults_are_valid_and_match_the_seed():
    cfg = TrainConfig()
    cfg.validate()
    assert (cfg.steps, cfg.batch_size) == (500, 8)


@pytest.mark.parametrize("sizes", [dict(d_model=15, n_head=2), dict(n_layer=0), dict(block_size=-1)])
def test_bad_model_sizes_fail_before_reading_data(tmp_path, sizes):
    with pytest.raises(ConfigError):
        prepare_trainer([tmp_path / "missing.txt"], model=sizes, train={})


def test_resume_with_a_corpus_outside_the_vocabulary(corpus, tmp_path):
    ck = tmp_path / "c.npz"
    run(corpus, out=ck, steps=4)
    other = tmp_path / "other.txt"
    other.write_text(TEXT.upper(), encoding="utf-8")
    with pytest.raises(DataError, match="vocabulary"):
        prepare_trainer([other], model={}, train={"steps": 8}, resume=ck)


def test_resume_with_another_model_size(corpus, tmp_path):
    ck = tmp_path / "c.npz"
    run(corpus, out=ck, steps=4)
    with pytest.raises(CheckpointError, match="--d-model 32"):
        prepare_trainer(corpus, model={"d_model": 32}, train={"steps": 8}, resume=ck)


def test_resume_a_finished_run_asks_for_more_steps(corpus, tmp_path):
    ck = tmp_path / "c.npz"
    run(corpus, out=ck, steps=4)
    with pytest.raises(ConfigError, match="--steps greater than 4"):
        prepare_trainer(corpus, model={}, train={}, resume=ck)


def test_resume_from_a_checkpoint_without_optimizer_state(corpus, tmp_path):
    from pythia.formats.checkpoint import save_checkpoint
    t, _ = run(corpus, steps=2)
    ck = tmp_path / "weights-only.npz"
    save_checkpoint(ck, t.model, t.dataset.tokenizer, step=2)
    with pytest.raises(CheckpointError, match="no optimizer state"):
        prepare_trainer(corpus, model={}, train={"steps": 8}, resume=ck)


def test_resume_from_a_corrupt_checkpoint(corpus, tmp_path):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(CheckpointError):
        prepare_trainer(corpus, model={}, train={}, resume=bad)
