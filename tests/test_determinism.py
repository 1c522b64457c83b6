"""The same command with the same seed, on the same machine and thread count, gives bitwise
identical losses, checkpoint weights and generated text, run after run.

Each case runs the command twice in fresh processes and compares byte for byte: every field of
the JSON log except the two timings (elapsed_s, tokens_per_s), every parameter and optimizer
array of the checkpoint, and generate's output. Config S (batch 8, block 32, d_model 48, 3
layers, 4 heads) runs unsplit; the wider config makes a training pass large enough that the
thread rule splits the batch across cores when there are two or more (pythia.system.threads).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import pythia

REPO = Path(pythia.__file__).resolve().parent.parent
S = ["--batch-size", "8", "--block-size", "32", "--d-model", "48", "--n-layer", "3", "--n-head", "4",
     "--steps", "30", "--eval-interval", "10", "--eval-iters", "2"]
WIDE = ["--batch-size", "8", "--block-size", "32", "--d-model", "128", "--n-layer", "1", "--n-head", "4",
        "--steps", "8", "--eval-interval", "4", "--eval-iters", "1"]
TIMINGS = ("elapsed_s", "tokens_per_s")


def pythia_run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "pythia", *args], cwd=cwd, capture_output=True, text=True,
                       timeout=300, env=env)
    assert r.returncode == 0, r.stderr
    return r


def log_without_timings(path: Path) -> list[dict]:
    records = [json.loads(line) for line in path.read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in TIMINGS} for r in records]


def arrays(path: Path) -> dict[str, bytes]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k].tobytes() for k in z.files if k.startswith(("param/", "opt/"))}


@pytest.mark.parametrize("sizes", [S, WIDE], ids=["S", "wide"])
def test_two_train_runs_give_the_same_losses_and_weights_bit_for_bit(tmp_path, sizes):
    runs = []
    for i in range(2):
        out, log = tmp_path / f"m{i}.npz", tmp_path / f"m{i}.jsonl"
        pythia_run(["train", *sizes, "--seed", "7", "--out", str(out), "--log-file", str(log)], tmp_path)
        runs.append((log_without_timings(log), arrays(out)))
    (log_a, w_a), (log_b, w_b) = runs
    assert len(log_a) == int(sizes[sizes.index("--steps") + 1])
    assert log_a == log_b                                       # floats from JSON: every bit of every loss
    assert w_a.keys() == w_b.keys() and any(k.startswith("opt/") for k in w_a)
    for k in w_a:
        assert w_a[k] == w_b[k], k


def test_two_generate_runs_give_the_same_text(tmp_path):
    out = tmp_path / "m.npz"
    pythia_run(["train", *S, "--steps", "5", "--out", str(out)], tmp_path)
    texts = [pythia_run(["generate", "--checkpoint", str(out), "--prompt", "The ", "--seed", "3",
                         "--max-new-tokens", "60"], tmp_path).stdout for _ in range(2)]
    assert len(texts[0]) > 60 and texts[0] == texts[1]
