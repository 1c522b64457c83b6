"""pythia.system.memory_budget: the training-memory estimate against measured peaks, and the refusal.

The estimate is held to what a real training process allocates: a fresh interpreter builds the
model and optimizer and trains three steps, and reports (a) the peak of NumPy's allocations as
tracemalloc counts them (NumPy registers every array buffer with it) and (b) the growth of its
peak resident memory (VmHWM, reset through /proc/self/clear_refs before the model is built).
Measured on the configurations below and config L (16, 256, 384, 6, 6), with either kernel
backend: tracemalloc 0.93-1.01 of the estimate, RSS 0.91-1.11. The bounds allow 0.8-1.2 for
tracemalloc and 0.75-1.35 for RSS (the allocator and BLAS add a little of their own).
"""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pythia.system import memory_budget as mb
from pythia.model import Pythia, PythiaConfig

REPO = Path(__file__).resolve().parent.parent

PEAK = """
import json, sys, tracemalloc
import numpy as np
from pythia.model import Pythia, PythiaConfig
from pythia.train import TrainConfig, make_optimizer
from pythia.system.memory_budget import estimate_training

def status(key):
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith(key + ":"))

B, T, C, L, H, V = map(int, sys.argv[1:7])
cfg = PythiaConfig(vocab_size=V, block_size=T, d_model=C, n_layer=L, n_head=H)
rng = np.random.default_rng(0)
x, y = rng.integers(0, V, size=(2, B, T))
before = status("VmRSS")
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                   # VmHWM := VmRSS, so the peak is this run's
    reset = True
except OSError:
    reset = False
tracemalloc.start()
model = Pythia(cfg, seed=0)
opt = make_optimizer(model, TrainConfig(steps=10))
for _ in range(3):
    model.loss(x, y)
    model.backward()
    opt.step()
traced = tracemalloc.get_traced_memory()[1]
tracemalloc.stop()
print(json.dumps({"traced": traced, "rss": status("VmHWM") - before if reset else None,
                  "estimate": estimate_training(cfg, B).total}))
"""

CONFIGS = {  # B, T, C, L, H, V
    "seed-like, 4 layers": (12, 64, 128, 4, 4, 65),
    "long blocks, split attention": (2, 256, 128, 2, 8, 65),
    "GPT-2 vocabulary": (2, 128, 128, 2, 4, 50257),
}


def run_python(code: str, *args: str, **kw) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, env=env,
                          timeout=300, **kw)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("sizes", CONFIGS.values(), ids=CONFIGS.keys())
def test_estimate_matches_the_measured_peak_of_three_training_steps(sizes):
    r = run_python(PEAK, *map(str, sizes))
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert 0.8 <= m["traced"] / m["estimate"] <= 1.2, m
    if m["rss"] is not None:
        assert 0.75 <= m["rss"] / m["estimate"] <= 1.35, m


@pytest.mark.parametrize("sizes", [(65, 32, 48, 3, 4), (50257, 1024, 768, 12, 12), (7, 3, 6, 1, 2)])
def test_parameter_count_is_the_models_own(sizes):
    V, T, C, L, H = sizes
    cfg = PythiaConfig(vocab_size=V, block_size=T, d_model=C, n_layer=L, n_head=H)
    if V > 1000:
        assert mb.n_params(cfg) == 124_439_808          # GPT-2 small, as Hugging Face counts it
    else:
        assert mb.n_params(cfg) == Pythia(cfg, init=False).num_params()


def test_activations_grow_with_the_batch_and_attention_with_the_square_of_the_block():
    cfg = PythiaConfig(vocab_size=65, block_size=64, d_model=64, n_layer=2, n_head=4)
    one, two = (mb.estimate_training(cfg, b, shards=1) for b in (4, 8))
    assert two.activations == 2 * one.activations
    assert two.weights == one.weights and two.optimizer == one.optimizer == 3 * one.weights
    assert mb.attention_area(64) == 64 * 64 and mb.attention_area(256) == 3 * 256 * 256 // 4


# ---- what the machine has -----------------------------------------------------------------------

def test_meminfo_available_is_read_in_bytes(tmp_path):
    p = tmp_path / "meminfo"
    p.write_text("MemTotal:       24683584 kB\nMemFree:  100 kB\nMemAvailable:   1000 kB\n")
    assert mb._meminfo_available(str(p)) == 1000 * 1024
    p.write_text("MemTotal: 5 kB\n")                    # kernels before 3.14 lack the field
    assert mb._meminfo_available(str(p)) is None


def test_a_cgroup_limit_lowers_what_is_available(tmp_path):
    (tmp_path / "memory.max").write_text("500000\n")
    (tmp_path / "memory.current").write_text("200000\n")
    assert mb._cgroup_room(tmp_path, "/") == 300000
    (tmp_path / "memory.max").write_text("max\n")
    assert mb._cgroup_room(tmp_path, "/") is None


def test_the_tightest_cgroup_on_the_way_to_the_root_counts(tmp_path):
    job = tmp_path / "user.slice" / "job"
    job.mkdir(parents=True)
    for d, limit, used in ((tmp_path, "max", "900"), (tmp_path / "user.slice", "10000", "9000"), (job, "max", "50")):
        (d / "memory.max").write_text(limit + "\n")
        (d / "memory.current").write_text(used + "\n")
    assert mb._cgroup_room(tmp_path, "/user.slice/job\n") == 1000


def test_refusal_names_the_estimate_the_available_memory_and_the_way_out(monkeypatch):
    monkeypatch.setattr(mb, "available_memory", lambda: 10 ** 6)
    cfg = PythiaConfig(vocab_size=65, block_size=64, d_model=64, n_layer=2, n_head=4)
    with pytest.raises(mb.ConfigError) as e:
        mb.check_training(cfg, 8, 1000)
    msg = str(e.value)
    assert "needs about" in msg and "1.0 MB is available" in msg and mb.NO_CHECK_FLAG in msg
    est, free = mb.check_training(cfg, 8, 1000, skip=True)   # the flag: no refusal, same figures
    assert free == 10 ** 6 and est.total > free


# ---- through the command line ---------------------------------------------------------------------

CLI = "import sys; from pythia.cli import main; sys.argv[0] = '__main__.py'; raise SystemExit(main(sys.argv[1:]))"
HUGE = ["--d-model", "16384", "--n-layer", "64", "--n-head", "64"]   # ~4 TB to train


@pytest.mark.parametrize("command", ["train", "train-chat"])
def test_a_model_far_too_big_is_refused_before_anything_is_allocated(tmp_path, command):
    """Under an 8 GB address-space limit: had the model been allocated, the message would be
    NumPy's MemoryError, not the estimate."""
    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))
    r = run_python(CLI, command, *HUGE, cwd=tmp_path, preexec_fn=limit, stdin=subprocess.DEVNULL)
    assert r.returncode == 1, r.stdout + r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: training this model needs about"), r.stderr
    assert "GB is available" in lines[0] and "--no-memory-check" in lines[0]
    assert "Traceback" not in r.stderr and "Training" not in r.stdout
    assert list(tmp_path.iterdir()) == []


def test_the_banner_shows_the_estimate(tmp_path):
    (tmp_path / "c.txt").write_text("some text to train on, long enough for a block. " * 40)
    r = run_python(CLI, "train", "--data", "c.txt", "--steps", "2", "--eval-interval", "2", "--eval-iters", "1",
                   "--no-memory-check", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    line = next(l for l in r.stdout.splitlines() if l.strip().startswith("memory"))
    assert "weights" in line and "AdamW" in line and "activations" in line and "available" in line


def test_a_checkpoint_larger_than_the_available_memory_is_refused_unread(tmp_path, monkeypatch):
    from pythia.formats.checkpoint import load_checkpoint, save_checkpoint
    from pythia.errors import CheckpointError
    from pythia.tokenizer import SimpleTokenizer
    tok = SimpleTokenizer.from_text("abcdef")
    save_checkpoint(tmp_path / "m.npz", Pythia(PythiaConfig(vocab_size=6, block_size=4, d_model=8, n_layer=1,
                                                            n_head=2)), tok)
    monkeypatch.setattr(mb, "available_memory", lambda: 1000)
    with pytest.raises(CheckpointError, match="of memory is available"):
        load_checkpoint(tmp_path / "m.npz")
    monkeypatch.setattr(mb, "available_memory", lambda: None)
    assert np.array_equal(load_checkpoint(tmp_path / "m.npz").tokenizer.chars, tok.chars)


# ---- the corpus, before it is read -----------------------------------------------------------------

@pytest.mark.parametrize("extra", ["", "é€ñ漢"], ids=["ascii", "non-ascii"])
def test_reading_a_corpus_peaks_below_the_stated_bytes_per_byte(tmp_path, extra):
    import tracemalloc
    from pythia.corpora.data import build_dataset
    path = tmp_path / "c.txt"
    path.write_text(("The sea is large and old, and the wind moves over it all day long.\n" + extra) * 20000,
                    encoding="utf-8")
    tracemalloc.start()
    try:
        build_dataset([path], 32)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    ratio = peak / path.stat().st_size
    assert 0.8 * mb.READ_BYTES_PER_BYTE <= ratio <= mb.READ_BYTES_PER_BYTE, ratio


def test_a_corpus_too_big_to_encode_is_refused_before_it_is_read(monkeypatch):
    monkeypatch.setattr(mb, "available_memory", lambda: 10 ** 9)
    with pytest.raises(mb.ConfigError, match="reading the corpus .* needs about 3.1 GB"):
        mb.check_corpus(10 ** 8)
    mb.check_corpus(10 ** 8, skip=True)
    mb.check_corpus(10 ** 7)


def test_a_cgroup_v1_memory_limit_counts_too(tmp_path):
    mem = tmp_path / "memory"
    mem.mkdir()
    (mem / "memory.limit_in_bytes").write_text("9223372036854771712\n")   # v1's "no limit"
    (mem / "memory.usage_in_bytes").write_text("100\n")
    assert mb._cgroup_room(tmp_path, "/") is None
    (mem / "memory.limit_in_bytes").write_text("4096\n")
    assert mb._cgroup_room(tmp_path, "/") == 3996
