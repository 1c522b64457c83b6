"""Decode speed of float32 against int8 (Q8_0) weights, and how near each is to the memory limit.

    python benchmarks/bench_decode_int8.py [--shapes gpt2-small smollm2-135m] [--threads 2]
                                           [--prompt 64] [--tokens 32] [--rounds 3]
        [--transformers-python PY] [--llamacpp-python PY --llamacpp-src DIR] [--gguf-dir DIR]

Random-weight models at GPT-2-small's shape (12 x 768, vocabulary 50257, tied head) and
SmolLM2-135M's (30 x 576, 9 query / 3 key-value heads, MLP 1536, vocabulary 49152, tied). Each
round runs, for float32 then int8 (pythia.quant.model.quantize_model of the same weights): a
prefill of --prompt tokens, then --tokens greedy decode steps through forward_cached, each pass
under the thread rule `pythia generate` runs it with (pythia.system.threads.for_pass: a decode
step's BLAS and element-wise kernels on one thread, its few-row products and the int8 product on
their pools over every core); the table gives medians over rounds. A decode step reads every matrix once (the tied head reads the whole
token table; the embedding only one row), so "MB/token" is the bytes of those matrices, and
tokens/s times MB/token is the bandwidth a step uses. The limit is the copy bandwidth measured
here: np.copyto of a --copy-mb array, counting the bytes read and written, the best of a
measurement at the start and one each round (other work on a shared machine only lowers it).

With --transformers-python and --llamacpp-python the same random weights also decode in
transformers (float32) and llama.cpp (F32 and Q8_0 GGUF made by llama.cpp's own converter), each
in its own interpreter, timed the same way (prefill of the same prompt, then --tokens greedy
single-token steps) in the same interleaved rounds: bench_llamacpp.py says how, and how to build
them. With --threads above 1 llama.cpp also runs on one thread, and so does Pythia's int8
product (the row "1 thread"); "/ llama.cpp" compares a float32 row with the faster llama.cpp F32 row and an int8 row with the
faster Q8_0 row. The peers run with the environment the benchmark was started with. A --threads
other than the cores this process may use is set for Pythia as a user sets it
(OMP_NUM_THREADS, OPENBLAS_NUM_THREADS), which overrides the thread rule.

--rss also saves the first shape as a float32 and an int8 checkpoint (random weights, the tiny
GPT-2 fixture's tokenizer for a GPT-2 shape) and reports the peak resident memory of
`python -m pythia generate` (8 tokens) on each, and on the float32 one with --quantize int8;
--rss-folder DIR does the same for a Hugging Face folder, with and without --quantize int8.

One warm-up round is run and dropped.
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))                               # run as a script from a checkout
sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_llamacpp  # noqa: E402  (the peers' columns)

SHAPES = {
    "gpt2-small": ("gpt2", dict(vocab_size=50257, block_size=1024, d_model=768, n_layer=12, n_head=12)),
    "smollm2-135m": ("llama", dict(vocab_size=49152, d_model=576, n_layer=30, n_head=9, n_kv_head=3, head_dim=64,
                                   d_ff=1536, norm_eps=1e-5, rope_theta=100000.0, block_size=2048,
                                   tie_embeddings=True)),
    "tiny": ("llama", dict(vocab_size=1024, d_model=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=16, d_ff=128,
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


def run_once(model, prompt, tokens: int, q8_threads: int | None = None) -> tuple[float, float]:
    """(prefill seconds, decode tokens per second) of one greedy generation, each pass under the
    thread rule `pythia generate` runs it with (pythia.system.threads.for_pass); q8_threads, when
    given, is the int8 product's thread count in place of its default (every core)."""
    import numpy as np

    from pythia import quant
    from pythia.system import threads
    per = threads.widest_per_token(model)
    default = quant.default_threads
    if q8_threads is not None:
        quant.default_threads = lambda: q8_threads
    try:
        cache = model.new_kv_cache()
        t = time.perf_counter()
        with threads.for_pass(per * len(prompt)):
            logits = model.forward_cached(prompt, cache)
        prefill = time.perf_counter() - t
        t = time.perf_counter()
        for _ in range(tokens):
            with threads.for_pass(per):
                logits = model.forward_cached(np.array([int(np.argmax(logits))]), cache)
        return prefill, tokens / (time.perf_counter() - t)
    finally:
        quant.default_threads = default


# A forked child starts with its parent's resident size as its peak (ru_maxrss survives exec), so
# cmd runs under a small Python that forks it and reports its children's peak, in KiB.
_MEASURE = ("import resource, subprocess, sys; r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL); "
            "print(r.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def peak_rss(cmd: list[str]) -> int:
    """Peak resident bytes of a process running cmd."""
    import subprocess
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    p = subprocess.run([sys.executable, "-c", _MEASURE, *cmd], capture_output=True, text=True, env=env)
    code, kib = (int(v) for v in p.stdout.split())
    if p.returncode or code:
        raise SystemExit(f"{' '.join(cmd)} failed: {p.stderr[-500:]}")
    return kib * 1024


def rss_table(model, quantize_model) -> None:
    """Peak RSS of generate on a float32 checkpoint, an int8 one, and the float32 one --quantize int8."""
    from pythia.formats.checkpoint import save_checkpoint
    tokenizer = bench_llamacpp.fixture_tokenizer(model)
    with tempfile.TemporaryDirectory() as d:
        f32, q8 = Path(d) / "f32.npz", Path(d) / "q8.npz"
        save_checkpoint(f32, model, tokenizer)
        save_checkpoint(q8, quantize_model(model), tokenizer)
        gen = [sys.executable, "-m", "pythia", "generate", "--prompt", "Hello", "--max-new-tokens", "8",
               "--temperature", "0", "--model"]
        rows = [("float32 checkpoint", peak_rss(gen + [str(f32)])),
                ("int8 checkpoint", peak_rss(gen + [str(q8)])),
                ("float32 checkpoint --quantize int8", peak_rss(gen + [str(f32), "--quantize", "int8"]))]
        sizes = (f32.stat().st_size, q8.stat().st_size, f32.stat().st_size)
    print()
    print("| generate on | file MB | peak RSS MB | of float32's |")
    print("|---|---:|---:|---:|")
    for (name, rss), size in zip(rows, sizes):
        print(f"| {name} | {size / 1e6:,.0f} | {rss / 1e6:,.0f} | {rss / rows[0][1]:.2f}x |")


def pythia_runs(f32, q8, threads: int, tokens: int) -> dict:
    """name -> (measure(prompt) -> (prefill s, decode tok/s), bytes a step reads) for Pythia's rows."""
    rows = {"Pythia float32": (f32, None), "Pythia int8 Q8_0": (q8, None)}
    if threads > 1:
        rows["Pythia int8 Q8_0, 1 thread"] = (q8, 1)
    return {k: ((lambda p, m=m, t=t: run_once(m, p, tokens, t)), matrix_bytes(m)) for k, (m, t) in rows.items()}


def print_rows(shape: str, runs: dict, nbytes: dict, prompt_len: int, bw: float) -> None:
    """One table row per engine: medians, the decode range, and ratios to Pythia fp32 and llama.cpp."""
    decode = {k: statistics.median(d for _, d in v) for k, v in runs.items()}
    base = decode["Pythia float32"]
    llama = {w: max((v for k, v in decode.items() if k.startswith(f"llama.cpp {w}")), default=None)
             for w in ("F32", "Q8_0")}                      # the faster of 2 threads and 1
    for k, v in runs.items():
        prefill = statistics.median(p for p, _ in v)
        lo, hi = min(d for _, d in v), max(d for _, d in v)
        ref = llama["Q8_0" if ("int8" in k or "Q8_0" in k) else "F32"]
        used = decode[k] * nbytes[k]
        print(f"| {shape} | {k} | {nbytes[k] / 1e6:,.2f} | {prompt_len / prefill:,.0f} | {decode[k]:,.1f} | "
              f"{lo:,.1f}-{hi:,.1f} | {decode[k] / base:.2f}x | {f'{decode[k] / ref:.2f}x' if ref else ''} | "
              f"{used / 1e9:.1f} | {used / bw:.0%} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shapes", nargs="+", choices=sorted(SHAPES), default=["gpt2-small", "smollm2-135m"])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt", type=int, default=64)
    ap.add_argument("--tokens", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--copy-mb", type=int, default=256)
    ap.add_argument("--rss", action="store_true", help="also measure generate's peak memory on checkpoints")
    ap.add_argument("--rss-folder", metavar="DIR", help="also measure generate's peak memory on this HF folder")
    bench_llamacpp.add_arguments(ap)
    args = ap.parse_args()
    if min(args.threads, args.prompt, args.tokens, args.rounds, args.copy_mb) < 1:
        ap.error("--threads, --prompt, --tokens, --rounds and --copy-mb must be at least 1")
    bench_llamacpp.check_arguments(ap, args)
    peer_env = dict(os.environ)                             # the peers run with their own defaults
    if args.threads != len(os.sched_getaffinity(0)):        # fewer threads than cores: a user's choice
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)             # before NumPy starts its BLAS threads
    import numpy as np

    from pythia import quant
    from pythia.models import family
    from pythia.quant.model import quantize_model

    bw = copy_bandwidth(args.copy_mb)
    isa = quant.compiled.ISA if quant.BACKEND == "cython" else "-"
    print(f"int8 backend {quant.BACKEND} ({isa}), {args.threads} threads, prompt {args.prompt}, "
          f"{args.tokens} decode tokens, {args.rounds} rounds (medians); copy bandwidth at the start "
          f"{bw / 1e9:.1f} GB/s; load average {os.getloadavg()[0]:.2f}")
    tables = []                                             # (shape, runs, bytes): printed with the run's best bandwidth
    work = Path(args.gguf_dir) if args.gguf_dir else Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    try:
        for shape in args.shapes:
            name, sizes = SHAPES[shape]
            Config, Model, _ = family(name)
            f32 = Model(Config(**sizes), seed=0)
            q8 = quantize_model(f32)
            engines = pythia_runs(f32, q8, args.threads, args.tokens)
            peers = bench_llamacpp.start_peers(f32, shape, args, work, peer_env)
            try:
                engines.update({k: ((lambda p, peer=peer: peer.measure(p.tolist())), peer.nbytes)
                                for k, peer in peers.items()})
                prompt = np.random.default_rng(1).integers(0, sizes["vocab_size"], args.prompt)
                runs: dict[str, list[tuple[float, float]]] = {k: [] for k in engines}
                for r in range(args.rounds + 1):            # interleaved: each engine once a round
                    bw = max(bw, copy_bandwidth(args.copy_mb))
                    for k, (measure, _) in engines.items():
                        timed = measure(prompt)
                        if r:                               # round 0 warms caches and thread pools
                            runs[k].append(timed)
            finally:
                for peer in peers.values():
                    peer.close()
            tables.append((shape, runs, {k: b for k, (_, b) in engines.items()}))
            if args.rss and shape == args.shapes[0]:
                first = f32
            del f32, q8, engines
    finally:
        if not args.gguf_dir:
            shutil.rmtree(work, ignore_errors=True)
    print(f"copy bandwidth, best of the run (the start and each round): {bw / 1e9:.1f} GB/s; load average at "
          f"the end {os.getloadavg()[0]:.2f}")
    print()
    print("| shape | engine, weights | MB/token | prefill tok/s | decode tok/s | decode range | / Pythia fp32 "
          "| / llama.cpp | GB/s used | of copy bw |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for shape, runs, nbytes in tables:
        print_rows(shape, runs, nbytes, args.prompt, bw)
    if args.rss:
        rss_table(first, quantize_model)
    if args.rss_folder:
        gen = [sys.executable, "-m", "pythia", "generate", "--prompt", "Hello", "--max-new-tokens", "8",
               "--temperature", "0", "--model", args.rss_folder]
        f32, q8 = peak_rss(gen), peak_rss(gen + ["--quantize", "int8"])
        print()
        print(f"| generate on {args.rss_folder} | peak RSS MB | of float32's |")
        print("|---|---:|---:|")
        print(f"| float32 | {f32 / 1e6:,.0f} | 1.00x |")
        print(f"| --quantize int8 | {q8 / 1e6:,.0f} | {q8 / f32:.2f}x |")

if __name__ == "__main__":
    main()
