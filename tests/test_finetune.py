"""Fine-tuning: Pythia's AdamW steps from the GPT-2 fixture equal transformers + torch.optim.AdamW
(committed reference, and live when torch is importable); gradient accumulation equals the big
batch; --init-from a checkpoint starts from its weights exactly with a fresh optimizer; the corpus
is encoded with SRC's tokenizer, BPE files joined by <|endoftext|>; sizes that contradict SRC fail.
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from pythia.engine import DeltaOptimizer
from pythia.errors import ConfigError, DataError
from pythia.training.finetune import DEFAULT_BLOCK, finetune_config, prepare_finetune
from pythia.formats.gpt2 import load_gpt2
from pythia.train import TrainConfig, Trainer, make_rng, prepare_trainer

FIXTURES = Path(__file__).parent / "fixtures"
GPT2 = FIXTURES / "gpt2"
LOSS_ATOL = 1e-5     # per-step loss, float32 NumPy vs float32 torch (loss ~10)
WEIGHT_ATOL = 1e-5   # final weights after five AdamW steps
TEXT = ("The sea is large and old, and the wind moves over it all day long.\n"
        "User: Hello! Who are you?\nPythia: I am a small model.\n") * 20


@pytest.fixture(scope="module")
def ref() -> dict[str, np.ndarray]:
    with np.load(GPT2 / "finetune.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def pythia_steps(ref):
    """Pythia's five steps on the reference batches: (losses, grad norms, lrs, final weights)."""
    model, _ = load_gpt2(GPT2)
    lr, min_lr, warmup, beta2, wd, clip = ref["settings"].tolist()
    steps = len(ref["loss"])
    opt = DeltaOptimizer.for_model(model, lr=lr, min_lr=min_lr, warmup_steps=int(warmup), total_steps=steps,
                                   beta2=beta2, weight_decay=wd, grad_clip=clip)
    losses, norms, lrs = [], [], []
    for s in range(steps):
        losses.append(model.loss(ref["x"][s], ref["y"][s]))
        model.backward()
        for i in range(model.config.n_layer):                      # as the generator does (its exact_zero)
            model.grads[f"h.{i}.attn.c_attn.bias"][model.config.d_model:2 * model.config.d_model] = 0
        info = opt.step()
        norms.append(info["grad_norm"])
        lrs.append(info["lr"])
    return np.array(losses), np.array(norms), np.array(lrs), model.params


def test_five_clipped_adamw_steps_match_the_committed_torch_reference(ref):
    losses, norms, lrs, params = pythia_steps(ref)
    assert (ref["grad_norm"] > ref["settings"][5]).any()          # clipping acted on some step
    np.testing.assert_allclose(lrs, ref["lr"], rtol=1e-12)
    np.testing.assert_allclose(losses, ref["loss"], rtol=0, atol=LOSS_ATOL)
    np.testing.assert_allclose(norms, ref["grad_norm"], rtol=1e-5)
    trained, _ = load_gpt2(GPT2)                                    # training moved the model: the
    for name, w in params.items():                                  # first batch's loss fell
        trained.params[name][...] = w
    assert trained.loss(ref["x"][0], ref["y"][0]) < losses[0] - 0.1
    got = _checksums(params)
    rng = np.random.Generator(np.random.PCG64(11))
    for name in sorted(params):
        l1 = np.abs(rng.uniform(-1, 1, size=params[name].shape)).sum()
        # elementwise |dw| <= WEIGHT_ATOL implies |d sum(w r)| <= WEIGHT_ATOL * sum|r|
        assert abs(float(got[name]) - float(ref[f"check/{name}"])) <= WEIGHT_ATOL * l1, name


def _checksums(weights):
    """The generator's checksums (tests/fixtures/make_finetune_fixtures.py), without importing torch."""
    rng = np.random.Generator(np.random.PCG64(11))
    out = {}
    for name in sorted(weights):
        w = np.asarray(weights[name], dtype=np.float64)
        out[name] = float((w * rng.uniform(-1, 1, size=w.shape)).sum())
    return out


def test_five_clipped_adamw_steps_match_torch_live(ref):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    sys.path.insert(0, str(FIXTURES))
    try:
        import make_finetune_fixtures as gen
    finally:
        sys.path.remove(str(FIXTURES))
    arrays, weights = gen.reference()
    np.testing.assert_array_equal(arrays["x"], ref["x"])           # the committed batches are today's
    losses, _, _, params = pythia_steps(ref)
    np.testing.assert_allclose(losses, arrays["loss"], rtol=0, atol=LOSS_ATOL)
    for name, w in weights.items():
        np.testing.assert_allclose(params[name], w, rtol=0, atol=WEIGHT_ATOL, err_msg=name)
    assert gen.checksums(weights) == {k: np.array(v) for k, v in _checksums(weights).items()}


# ---- gradient accumulation ------------------------------------------------------------------------

class FixedBatches:
    """A dataset that hands out slices of one fixed big batch in order (the Trainer's only view of data)."""

    def __init__(self, x, y, per_call):
        self.x, self.y, self.per_call, self.calls = x, y, per_call, 0
        self.block_size = x.shape[1]
        self.train = x.reshape(-1)              # (N * T,) the tokens it hands out, for the step-size check
        self.tokenizer = None

    def get_batch(self, split, batch_size, rng):
        assert batch_size == self.per_call
        i = (self.calls * batch_size) % len(self.x)
        self.calls += 1
        return self.x[i:i + batch_size], self.y[i:i + batch_size]


class Recorder:
    """An optimizer that records the gradients it is given and updates nothing."""

    def __init__(self):
        self.seen = []

    def step(self, grads):
        self.seen.append(grads.copy())                                # (P,) the flat gradient
        return {"lr": 1e-3, "grad_norm": 0.0}


def test_grad_accum_equals_one_big_batch(tmp_path):
    from pythia.model import Pythia, PythiaConfig
    cfg = PythiaConfig(vocab_size=23, block_size=8, d_model=16, n_layer=2, n_head=2)
    rng = np.random.default_rng(3)
    x = rng.integers(0, 23, size=(12, 8))
    y = rng.integers(0, 23, size=(12, 8))
    runs = {}
    for K, B in ((1, 12), (3, 4), (4, 3)):
        model, opt = Pythia(cfg, seed=5), Recorder()
        data = FixedBatches(x, y, B)
        log = tmp_path / f"log{K}.jsonl"
        t = Trainer(model, opt, data, TrainConfig(steps=2, batch_size=B, grad_accum=K, eval_interval=100,
                                                  eval_iters=1), log_file=log)
        t.evaluate = lambda iters=None: (0.0, 0.0)                 # evaluation is not under test
        res = t.run()
        assert data.calls == 2 * K and len(opt.seen) == 2           # K micro-batches per optimizer step
        assert [r["step"] for r in map(eval_json, log.read_text().splitlines())] == [1, 2]
        runs[K] = (res.losses, opt.seen)
    layout = Pythia(cfg, init=False).layout                       # name -> (offset, shape) in the flat gradient
    for K in runs:
        runs[K] = (runs[K][0], [{k: g[lo:lo + int(np.prod(s))] for k, (lo, s) in layout.items()} for g in runs[K][1]])
    big_losses, big_grads = runs[1]
    for K in (3, 4):
        losses, grads = runs[K]
        np.testing.assert_allclose(losses, big_losses, rtol=1e-6)
        for step in range(2):
            for name, g in big_grads[step].items():
                scale = np.abs(g).max()
                np.testing.assert_allclose(grads[step][name], g, rtol=0, atol=1e-5 * scale + 1e-9,
                                           err_msg=f"K={K} step {step} {name}")
    assert np.abs(big_grads[0]["h.0.attn.c_attn.weight"]).max() > 1e-4   # not a comparison of zeros


def eval_json(line):
    import json
    return json.loads(line)


def test_grad_accum_below_one_is_refused():
    with pytest.raises(ConfigError, match="--grad-accum"):
        TrainConfig(grad_accum=0).validate()


def test_grad_accum_reads_at_most_the_training_split_a_step():
    # 12 windows of 8 tokens in the training split: K x B = 12 is the largest step, 13 is refused;
    # K = 1 is never refused for the corpus's size (a batch larger than it is the batch size's matter)
    from pythia.corpora.data import Dataset
    from pythia.model import Pythia, PythiaConfig
    from pythia.tokenizer import SimpleTokenizer
    tok = SimpleTokenizer("ab")
    data = Dataset(train=np.zeros(12 * 8 + 7, np.int32), val=np.zeros(20, np.int32), block_size=8, tokenizer=tok,
                   files=[], n_chars=0)
    model = Pythia(PythiaConfig(vocab_size=2, block_size=8, d_model=16, n_layer=1, n_head=2), seed=1)
    for K, B in ((4, 3), (6, 2), (1, 50)):
        cfg = TrainConfig(steps=1, batch_size=B, grad_accum=K)
        Trainer(model, Recorder(), data, cfg)
    for K, B in ((13, 1), (5, 3), (10**21, 1)):
        with pytest.raises(ConfigError, match=rf"--grad-accum {K} .* training split's 12 .*use --grad-accum {12 // B} or less"):
            Trainer(model, Recorder(), data, TrainConfig(steps=1, batch_size=B, grad_accum=K))


# ---- --init-from ----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def char_ckpt(tmp_path_factory):
    d = tmp_path_factory.mktemp("ckpt")
    corpus = d / "corpus.txt"
    corpus.write_text(TEXT, encoding="utf-8")
    t = prepare_trainer([corpus], model={"d_model": 16, "n_layer": 1, "n_head": 2, "block_size": 16},
                        train={"steps": 6, "batch_size": 4, "eval_interval": 6, "eval_iters": 1},
                        out=d / "char.npz")
    t.run()
    return d / "char.npz", corpus


def test_init_from_checkpoint_starts_from_its_weights_with_a_fresh_optimizer(char_ckpt):
    from pythia.formats.checkpoint import load_checkpoint
    path, corpus = char_ckpt
    ckpt = load_checkpoint(path)
    assert ckpt.step == 6
    t = prepare_finetune([corpus], path, train={"steps": 2, "batch_size": 4, "eval_iters": 1})
    for name, p in ckpt.model.params.items():
        np.testing.assert_array_equal(t.model.params[name], p, err_msg=name)
    assert t.optimizer.t == 0 and t.start_step == 0
    assert t.dataset.block_size == 16                               # SRC's context (below DEFAULT_BLOCK)
    x, y = t.dataset.get_batch("train", 4, make_rng(t.cfg.seed))   # the first batch the run will draw
    expected = ckpt.model.loss(x, y)
    res = t.run()
    assert res.losses[0] == expected                                # the checkpoint's model, exactly


def test_bpe_corpus_is_encoded_with_src_tokenizer_and_files_joined_by_endoftext(tmp_path):
    a, b = tmp_path / "a.txt", tmp_path / "b.txt"
    a.write_text(TEXT, encoding="utf-8")
    b.write_text("Second file, café 😀.\n" * 30, encoding="utf-8")
    t = prepare_finetune([a, b], GPT2, model={"block_size": 32}, train={"steps": 1})
    tok = t.tokenizer
    ids = np.concatenate([t.dataset.train, t.dataset.val]).tolist()
    assert ids == tok.encode(TEXT) + [tok.eot_id] + tok.encode(b.read_text(encoding="utf-8"))
    assert t.dataset.block_size == 32 and t.model.config.block_size == 64   # shorter windows, all positions kept


def test_default_block_is_src_context_capped():
    t = prepare_finetune([FIXTURES.parent.parent / "data" / "input.txt"], GPT2, train={"steps": 1})
    assert t.dataset.block_size == min(64, DEFAULT_BLOCK)


@pytest.mark.parametrize("sizes, needle", [
    ({"d_model": 48}, "--d-model 48 contradicts"), ({"n_layer": 3}, "--n-layer 3 contradicts"),
    ({"n_head": 4}, "--n-head 4 contradicts"), ({"block_size": 65}, "--block-size 65 exceeds"),
])
def test_sizes_that_contradict_src_are_refused(tmp_path, sizes, needle):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    with pytest.raises(ConfigError, match=needle):
        prepare_finetune([tmp_path / "a.txt"], GPT2, model=sizes, train={"steps": 1})


def test_sizes_equal_to_src_are_accepted(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT, encoding="utf-8")
    t = prepare_finetune([tmp_path / "a.txt"], GPT2, model={"d_model": 32, "n_layer": 2, "n_head": 2,
                                                            "block_size": 64}, train={"steps": 1})
    assert t.dataset.block_size == 64


def test_corpus_too_short_after_bpe_encoding(tmp_path):
    (tmp_path / "a.txt").write_text("The sea is large and old. " * 8, encoding="utf-8")
    with pytest.raises(DataError, match="too short"):
        prepare_finetune([tmp_path / "a.txt"], GPT2, model={"block_size": 64}, train={"steps": 1})


def test_finetune_defaults_and_a_given_rate_held_constant():
    cfg = finetune_config({})
    assert cfg.lr == cfg.min_lr and cfg.lr < TrainConfig.lr and cfg.weight_decay == 0
    cfg = finetune_config({"lr": 3e-5, "steps": 9})
    assert (cfg.lr, cfg.min_lr, cfg.steps) == (3e-5, 3e-5, 9)


def test_grad_accum_sum_buffer_is_one_flat_gradient_the_optimizer_reads():
    # the micro-batches' sum lives in one (P,) buffer laid out like params_memory, and the
    # optimizer step that follows reads it: the update equals one step on that gradient
    from pythia.engine import DeltaOptimizer
    from pythia.model import Pythia, PythiaConfig
    from pythia.train import make_optimizer
    cfg = TrainConfig(steps=1, batch_size=2, grad_accum=2, eval_interval=100, eval_iters=1)
    model = Pythia(PythiaConfig(vocab_size=11, block_size=4, d_model=8, n_layer=1, n_head=2), seed=1)
    before = model.params_memory.copy()
    x = np.random.default_rng(0).integers(0, 11, size=(4, 4))
    t = Trainer(model, make_optimizer(model, cfg), FixedBatches(x, x, 2), cfg)
    t.evaluate = lambda iters=None: (0.0, 0.0)
    t.run()
    assert t._acc.shape == model.params_memory.shape and t._acc.dtype == np.float32
    replay = Pythia(model.config, init=False)
    replay.params_memory[...] = before
    DeltaOptimizer.for_model(replay, **{k: getattr(t.optimizer, k) for k in (
        "lr", "min_lr", "warmup_steps", "total_steps", "beta1", "beta2", "eps", "weight_decay",
        "grad_clip")}).step(t._acc)
    np.testing.assert_array_equal(replay.params_memory, model.params_memory)
