"""The same `train` command in two checkouts of Pythia, interleaved: does a change keep the speed?

    python benchmarks/ab_train.py --a ../old-checkout --b .              # S M L, 3 rounds
    python benchmarks/ab_train.py --a ../old --b . --configs M --rounds 5

Each round runs, per config and in alternating order, `python -m pythia train` on Tiny
Shakespeare (--data FILE, else the file $PYTHIA_SHAKESPEARE names; corpus_path.py) with the
config's sizes in checkout A and in checkout B (PYTHONPATH set to the checkout, compiled kernels
as built there), and reads the tokens/s of the run's summary line ("Trained N steps in T s · R tok/s"). The table gives each side's median tokens/s over the
rounds with the range, B/A as the median of the rounds' ratios with their range, and each side's
final validation loss (the same seed: equal losses mean the change kept the arithmetic).
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from corpus_path import shakespeare  # beside this script

REPO = Path(__file__).resolve().parents[1]
CONFIGS = {  # name: (batch, block, d_model, n_layer, n_head, steps), as bench_train_step.py's sizes
    "S": (8, 32, 48, 3, 4, 400),
    "M": (12, 64, 128, 4, 4, 150),
    "L": (16, 256, 384, 6, 6, 8),
}
SUMMARY = re.compile(r"Trained (\d+) steps in \S+ · ([\d,]+) tok/s · train loss ([\d.]+) · val loss ([\d.]+)")


def run(tree: Path, name: str, data: Path, work: Path, steps: int | None = None) -> tuple[float, float]:
    """(tokens/s, final val loss) of one train run of config name in checkout tree (steps: the
    config's unless given)."""
    B, T, C, L, H, default_steps = CONFIGS[name]
    steps = steps or default_steps
    cmd = [sys.executable, "-m", "pythia", "train", "--data", str(data), "--batch-size", str(B), "--block-size",
           str(T), "--d-model", str(C), "--n-layer", str(L), "--n-head", str(H), "--steps", str(steps),
           "--eval-interval", str(steps), "--seed", "1", "--out", str(work / "ab.npz"), "--force"]
    env = {**os.environ, "PYTHONPATH": str(tree.resolve()), "NO_COLOR": "1"}
    r = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True)
    m = SUMMARY.search(r.stdout + r.stderr)
    if r.returncode != 0 or m is None:
        raise SystemExit(f"{tree}: train {name} failed ({r.returncode}): {(r.stderr or r.stdout)[-400:]}")
    return float(m.group(2).replace(",", "")), float(m.group(4))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--a", type=Path, required=True, help="the checkout to compare against (e.g. the last release)")
    ap.add_argument("--b", type=Path, default=REPO, help="the checkout under test (default: this one)")
    ap.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=None, help="steps of every run (default: per config)")
    ap.add_argument("--data", type=Path, default=None, help="Tiny Shakespeare (default: $PYTHIA_SHAKESPEARE)")
    args = ap.parse_args()
    args.data = shakespeare(args.data)
    results = {(n, side): [] for n in args.configs for side in "ab"}
    with tempfile.TemporaryDirectory() as tmp:
        for k in range(args.rounds):
            for name in args.configs:
                order = "ab" if k % 2 == 0 else "ba"                 # alternate who goes first
                for side in order:
                    results[name, side].append(run(getattr(args, side), name, args.data, Path(tmp), args.steps))
    print(f"A = {args.a}, B = {args.b}; tok/s median (min-max) of {args.rounds} interleaved rounds")
    print("config |      A tok/s          |      B tok/s          | B/A              | val loss A / B")
    for name in args.configs:
        a, b = results[name, "a"], results[name, "b"]
        ratios = [y[0] / x[0] for x, y in zip(a, b)]
        cell = lambda v: f"{statistics.median(v):>9,.0f} ({min(v):,.0f}-{max(v):,.0f})"
        print(f"{name:6s} | {cell([x[0] for x in a]):21s} | {cell([y[0] for y in b]):21s} | "
              f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f}) | "
              f"{a[-1][1]:.4f} / {b[-1][1]:.4f}")


if __name__ == "__main__":
    main()
