"""Generation speed with the KV cache: Pythia vs Hugging Face transformers' CPU `generate`.

One command runs everything and prints a tokens/s table:

    python benchmarks/bench_generate.py            # add --quick for a smoke run

(`python -m pytest benchmarks/bench_generate.py --benchmark-only` runs the same cases as
pytest-benchmark groups; tokens/s is then in each benchmark's extra_info.)

Cases, all greedy (temperature 0), batch 1, random weights (speed does not depend on them):
    gpt2-small   12 layers, d_model 768, 12 heads, vocabulary 50257, block 1024 (GPT-2 small's
                 shape); prompt 16 tokens, 64 new. Pythia, and transformers' GPT2LMHeadModel with
                 the same config, use_cache=True, torch threads 2, when torch is importable.
    M            block 64, d_model 128, 4 layers, 4 heads, vocabulary 65 (the training recipe M);
                 prompt 1 token, 63 new (the whole block). Pythia with and without the KV cache.
    M-slide      the same model generating 256 tokens: past block_size the window slides and
                 the context is re-run each step, the cost of exact block-size semantics.
tokens/s = new tokens / wall time of the whole call, prompt prefill included; best of several runs.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from a checkout

from pythia import Pythia, PythiaConfig, kernels# noqa: E402

GPT2_SMALL = dict(vocab_size=50257, block_size=1024, d_model=768, n_layer=12, n_head=12)
CONFIG_M = dict(vocab_size=65, block_size=64, d_model=128, n_layer=4, n_head=4)
# case: (config, prompt tokens, new tokens)
CASES = {"gpt2-small": (GPT2_SMALL, 16, 64), "M": (CONFIG_M, 1, 63), "M-slide": (CONFIG_M, 1, 256)}
TORCH_THREADS = 2


def prompt_for(cfg: dict, n: int) -> list[int]:
    return np.random.default_rng(0).integers(0, cfg["vocab_size"], n).tolist()


def pythia_runner(cfg: dict, n_prompt: int, n_new: int, use_cache: bool = True):
    """A no-argument callable generating n_new tokens greedily with Pythia; returns the tokens."""
    model = Pythia(PythiaConfig(**cfg), seed=0)
    prompt = prompt_for(cfg, n_prompt)
    return lambda: list(model.generate(prompt, n_new, temperature=0, use_cache=use_cache))


def torch_runner(cfg: dict, n_prompt: int, n_new: int):
    """The same with transformers' GPT2LMHeadModel.generate (greedy, use_cache), or None without torch."""
    try:
        import torch
        from transformers import GPT2Config, GPT2LMHeadModel
        from transformers.utils import logging
    except ImportError:
        return None
    logging.set_verbosity_error()
    torch.set_num_threads(TORCH_THREADS)
    hf_cfg = GPT2Config(vocab_size=cfg["vocab_size"], n_positions=cfg["block_size"], n_embd=cfg["d_model"],
                        n_layer=cfg["n_layer"], n_head=cfg["n_head"], resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(hf_cfg).eval()
    x = torch.tensor([prompt_for(cfg, n_prompt)])

    def run():
        with torch.inference_mode():
            out = model.generate(x, max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False,
                                 use_cache=True, pad_token_id=0, eos_token_id=None)
        return out[0, n_prompt:].tolist()
    return run


def best_seconds(fn, repeats: int, expect: int) -> float:
    fn()  # warm-up: first-call allocations, BLAS thread start-up
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        tokens = fn()
        best = min(best, time.perf_counter() - t0)
        assert len(tokens) == expect, (len(tokens), expect)
    return best


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer tokens and repeats (a smoke run)")
    args = ap.parse_args(argv)
    repeats = 1 if args.quick else 3
    threads = {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS") if k in os.environ}
    print(f"pythia kernels: {kernels.BACKEND}; torch threads {TORCH_THREADS}; thread env {threads or 'unset'}; "
          f"best of {repeats} runs after a warm-up; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores")
    print("| case | engine | prompt | new tokens | seconds | tokens/s |")
    print("|---|---|---:|---:|---:|---:|")
    for case, (cfg, n_prompt, n_new) in CASES.items():
        if args.quick:
            n_new = min(n_new, 8)
        engines = [("pythia (KV cache)", pythia_runner(cfg, n_prompt, n_new))]
        if case == "gpt2-small":
            engines.append(("transformers generate", torch_runner(cfg, n_prompt, n_new)))
        if case == "M":
            engines.append(("pythia (no cache)", pythia_runner(cfg, n_prompt, n_new, use_cache=False)))
        for engine, run in engines:
            if run is None:
                print(f"| {case} | {engine} | {n_prompt} | {n_new} | not installed | |")
                continue
            s = best_seconds(run, repeats, n_new)
            print(f"| {case} | {engine} | {n_prompt} | {n_new} | {s:.3f} | {n_new / s:,.0f} |", flush=True)
            del run
    print(f"load average at the end: {os.getloadavg()[0]:.2f} (other processes share these cores)")
    return 0


# ---------------------------------------------------------------- pytest-benchmark entry points

@pytest.mark.parametrize("case", list(CASES))
def test_generate_pythia(benchmark, case):
    cfg, n_prompt, n_new = CASES[case]
    run = pythia_runner(cfg, n_prompt, n_new)
    benchmark.group = f"generate-{case}"
    tokens = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(engine="pythia", new_tokens=n_new, backend=kernels.BACKEND,
                                tokens_per_s=n_new / benchmark.stats.stats.min)
    assert len(tokens) == n_new


def test_generate_transformers_gpt2_small(benchmark):
    pytest.importorskip("torch")
    pytest.importorskip("transformers")
    cfg, n_prompt, n_new = CASES["gpt2-small"]
    run = torch_runner(cfg, n_prompt, n_new)
    benchmark.group = "generate-gpt2-small"
    tokens = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    benchmark.extra_info.update(engine="transformers", new_tokens=n_new, threads=TORCH_THREADS,
                                tokens_per_s=n_new / benchmark.stats.stats.min)
    assert len(tokens) == n_new


if __name__ == "__main__":
    raise SystemExit(main())
