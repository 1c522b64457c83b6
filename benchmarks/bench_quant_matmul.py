"""One linear layer at decode size: Q8_0 int8 kernel (pythia.quant) against float32 x @ W.

    python benchmarks/bench_quant_matmul.py [--threads 2] [--rows 1] [--shape 768 3072] [--copies 24]

Default: GPT-2-small's c_fc (768 in, 3072 out) at one row, 2 threads for both (OpenMP for the
kernel, BLAS for NumPy). "hot" reuses one matrix (it stays in cache); "cold" cycles through
--copies matrices (24 copies: 226 MB float32, 59 MB int8, beyond the caches), as a decode step
does over a whole model. Rounds interleave the four cases; each figure is the median over rounds
of the mean time per call.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))   # this checkout's pythia, not an installed one


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rows", type=int, default=1)
    ap.add_argument("--shape", type=int, nargs=2, default=(768, 3072), metavar=("IN", "OUT"))
    ap.add_argument("--copies", type=int, default=24)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                 # before NumPy starts its BLAS threads
    import numpy as np
    from pythia import quant

    rng = np.random.default_rng(0)
    cin, cout = args.shape
    Ws = [(rng.standard_normal((cin, cout)) * 0.02).astype(np.float32) for _ in range(args.copies)]
    Ls = [quant.QuantLinear.from_in_out(W) for W in Ws]
    x = rng.standard_normal((args.rows, cin)).astype(np.float32)
    cases = {"hot  float32 x @ W": lambda i: x @ Ws[0],
             "hot  int8 Q8_0    ": lambda i: Ls[0].apply(x, threads=args.threads),
             "cold float32 x @ W": lambda i: x @ Ws[i % args.copies],
             "cold int8 Q8_0    ": lambda i: Ls[i % args.copies].apply(x, threads=args.threads)}
    times: dict[str, list[float]] = {k: [] for k in cases}
    for _ in range(args.rounds):
        for name, f in cases.items():
            t = time.perf_counter()
            for i in range(2 * args.copies):
                f(i)
            times[name].append((time.perf_counter() - t) / (2 * args.copies))
    isa = quant.compiled.ISA if quant.BACKEND == "cython" else "-"
    print(f"backend {quant.BACKEND} ({isa}), {args.threads} threads, x ({args.rows}, {cin}), W ({cin}, {cout})")
    med = {k: float(np.median(v)) * 1e6 for k, v in times.items()}
    for name, us in med.items():
        print(f"{name}  {us:9.1f} us")
    for kind in ("hot ", "cold"):
        print(f"{kind} speed-up int8 / float32: {med[kind + ' float32 x @ W'] / med[kind + ' int8 Q8_0    ']:.2f}x")


if __name__ == "__main__":
    main()
