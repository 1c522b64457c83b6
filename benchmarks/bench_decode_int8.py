"""Decode speed of float32 against int8 (Q8_0) weights, and how near each is to the memory limit.

    python benchmarks/bench_decode_int8.py [--shapes gpt2-small smollm2-135m] [--threads 2]
                                           [--prompt 64] [--tokens 32] [--rounds 3]

Random-weight models at GPT-2-small's shape (12 x 768, vocabulary 50257, tied head) and
SmolLM2-135M's (30 x 576, 9 query / 3 key-value heads, MLP 1536, vocabulary 49152, tied). Each
round runs, for float32 then int8 (pythia.quant.model.quantize_model of the same weights): a
prefill of --prompt tokens, then --tokens greedy decode steps through forward_cached; the table
gives medians over rounds. A decode step reads every matrix once (the tied head reads the whole
token table; the embedding only one row), so "MB/token" is the bytes of those matrices, and
tokens/s times MB/token is the bandwidth a step uses. The limit is the copy bandwidth measured
here: np.copyto of a --copy-mb array, counting the bytes read and written.

OMP_WAIT_POLICY is set to PASSIVE (unless already set): the int8 kernel's OpenMP threads would
otherwise spin after each product on the cores OpenBLAS then needs for the float32 model's
products, slowing whichever case runs next. One warm-up round is run and dropped.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

SHAPES = {
    "gpt2-small": ("gpt2", dict(vocab_size=50257, block_size=1024, d_model=768, n_layer=12, n_head=12)),
    "smollm2-135m": ("llama", dict(vocab_size=49152, d_model=576, n_layer=30, n_head=9, n_kv_head=3, head_dim=64,
                                   d_ff=1536, norm_eps=1e-5, rope_theta=100000.0, block_size=2048,
                                   tie_embeddings=True)),
    "tiny": ("llama", dict(vocab_size=512, d_model=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=16, d_ff=128,
                           block_size=256)),
}


def copy_bandwidth(mb: int, reps: int = 5) -> float:
    """Bytes per second of np.copyto over an array of mb MB (read + written), median of reps."""
    import numpy as np
    src = np.ones(mb * (1 << 20) // 4, np.float32)
    dst = np.empty_like(src)
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        np.copyto(dst, src)
        times.append(time.perf_counter() - t)
    return 2 * src.nbytes / statistics.median(times)


def matrix_bytes(model) -> int:
    """Bytes a decode step reads: every matrix of inference_matrices(), float32 or Q8_0."""
    if model.quantized is not None:
        return sum(m.q.nbytes + m.scales.nbytes for m in model.quantized.values())
    return sum(w.nbytes for w, _ in model.inference_matrices().values())


def run_once(model, prompt, tokens: int) -> tuple[float, float]:
    """(prefill seconds, decode tokens per second) of one greedy generation."""
    import numpy as np
    cache = model.new_kv_cache()
    t = time.perf_counter()
    logits = model.forward_cached(prompt, cache)
    prefill = time.perf_counter() - t
    t = time.perf_counter()
    for _ in range(tokens):
        logits = model.forward_cached(np.array([int(np.argmax(logits))]), cache)
    return prefill, tokens / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["gpt2-small", "smollm2-135m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copy-mb", type=int, default=256)
    args = ap.parse_args()
    if min(args.threads, args.prompt, args.tokens, args.rounds, args.copy_mb) < 1:
        ap.error("--threads, --prompt, --tokens, --rounds and --copy-mb must be at least 1")
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(args.threads)                 # before NumPy starts its BLAS threads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")     # before OpenMP starts its threads
    import numpy as np

    from pythia import quant
    from pythia.models import family
    from pythia.quant.model import quantize_model

    bw = copy_bandwidth(args.copy_mb)
    isa = quant.compiled.ISA if quant.BACKEND == "cython" else "-"
    print(f"int8 backend {quant.BACKEND} ({isa}), {args.threads} threads, prompt {args.prompt}, "
          f"{args.tokens} decode tokens, {args.rounds} rounds (medians), OMP_WAIT_POLICY "
          f"{os.environ['OMP_WAIT_POLICY']}; copy bandwidth {bw / 1e9:.1f} GB/s")
    print()
    print("| shape | weights | MB/token | prefill tok/s | decode tok/s | int8 / fp32 | GB/s used | of copy bw |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for shape in args.shapes:
        name, sizes = SHAPES[shape]
        Config, Model, _ = family(name)
        f32 = Model(Config(**sizes), seed=0)
        models = {"float32": f32, "int8 Q8_0": quantize_model(f32)}
        prompt = np.random.default_rng(1).integers(0, sizes["vocab_size"], args.prompt)
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in models}
        for r in range(args.rounds + 1):                    # interleaved: float32, int8, float32, ...
            for k, m in models.items():
                timed = run_once(m, prompt, args.tokens)
                if r:                                       # round 0 warms caches and thread pools
                    runs[k].append(timed)
        base = None
        for k, m in models.items():
            prefill = statistics.median(p for p, _ in runs[k])
            tps = statistics.median(d for _, d in runs[k])
            base = base or tps
            mb = matrix_bytes(m)
            used = tps * mb
            print(f"| {shape} | {k} | {mb / 1e6:,.2f} | {args.prompt / prefill:,.0f} | {tps:,.1f} | "
                  f"{tps / base:.2f}x | {used / 1e9:.1f} | {used / bw:.0%} |")


if __name__ == "__main__":
    main()
