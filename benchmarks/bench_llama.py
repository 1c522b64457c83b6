"""The Llama family at SmolLM2-135M's exact shape: Pythia against transformers + torch, side by side.

    python benchmarks/bench_llama.py            # needs torch and transformers for their columns
    python benchmarks/bench_llama.py --quick    # a smaller shape, for a smoke run
    python benchmarks/bench_llama.py --inference-only   # decode and prefill, no training or RSS children

Shape: hidden 576, 30 layers, 9 query heads / 3 key-value heads (head 64), MLP 1536, vocabulary
49152, tied embedding, context 8192; random weights (speed does not depend on them), the same
weights in both. Both run on 2 threads (torch.set_num_threads(2); Pythia's thread rule).

    decode     greedy tokens/s after a 64-token prompt: 64 / (time of 65 new tokens - time of the
               first), both clocked inside one model.generate call (Pythia's yields each token,
               transformers' hands each to a streamer), so the prompt's pass is not timed twice
    prefill    prompt tokens/s of a 256-token prompt (the time to the first new token)
    step       one fine-tuning step at batch 4 x 256: loss, backward, AdamW (Pythia: the batch
               split across the cores as `train` does; torch: loss.backward() + torch.optim.AdamW)
    peak RSS   of a fresh process doing 2 such steps; and of a process that opens a model folder
               (BF16 safetensors, as SmolLM2's) and decodes 32 tokens, against the fp32 weights
    limit      the memory-bandwidth bound of decode: weight bytes read per token / copy bandwidth
               (numpy copy of 1 GiB, read + write bytes counted, best of 5)

Times are medians of interleaved rounds (Pythia, torch, Pythia, torch, ...), with the spread.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SMOLLM2_135M = dict(vocab_size=49152, d_model=576, n_layer=30, n_head=9, n_kv_head=3, head_dim=64, d_ff=1536,
                    norm_eps=1e-5, rope_theta=100000.0, block_size=8192, qkv_bias=False, tie_embeddings=True)
QUICK = dict(SMOLLM2_135M, n_layer=4, vocab_size=8192)
THREADS = 2


def pythia_model(shape: dict):
    from pythia.models.llama import Llama, LlamaConfig
    return Llama(LlamaConfig(**shape), seed=0)


def torch_model(model):
    """transformers' LlamaForCausalLM with the Pythia model's weights, or None without torch."""
    try:
        import torch
        from transformers import LlamaConfig, LlamaForCausalLM
    except ImportError:
        return None
    torch.set_num_threads(THREADS)
    hf = LlamaForCausalLM(LlamaConfig(**model.config.to_hf())).eval()
    hf.load_state_dict({k: torch.from_numpy(v.copy()) for k, v in model.params.items()}, strict=False)
    hf.tie_weights()
    return hf


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def decode_runners(model, hf, prompt: list[int]):
    """name -> fn(n) generating n tokens greedily after prompt; returns the seconds to the first
    new token and to the last."""
    def run_pythia(n):
        t0 = time.perf_counter()
        first = None
        for _ in model.generate(prompt, n, temperature=0):
            first = time.perf_counter() - t0 if first is None else first
        return first, time.perf_counter() - t0
    runs = {"pythia": run_pythia}
    if hf is not None:
        import torch
        ids = torch.tensor([prompt])

        class Clock:                     # transformers calls put() with the prompt, then each new token
            def __init__(self):
                self.t0, self.calls, self.first = time.perf_counter(), 0, None

            def put(self, _):
                self.calls += 1
                if self.calls == 2:
                    self.first = time.perf_counter() - self.t0

            def end(self):
                pass

        def run_hf(n):
            clock = Clock()
            with torch.no_grad():
                hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False, pad_token_id=0, streamer=clock)
            return clock.first, time.perf_counter() - clock.t0
        runs["torch"] = run_hf
    return runs


def interleaved(runs: dict, measure, rounds: int) -> dict[str, list[float]]:
    out: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(rounds):
        for name, fn in runs.items():
            out[name].append(measure(fn))
    return out


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):,.1f} ({min(values):,.1f}-{max(values):,.1f})"


def copy_bandwidth() -> float:
    """Bytes per second moved by a numpy copy of 1 GiB (read + write), best of 5."""
    a = np.ones(1 << 28, np.float32)
    b = np.empty_like(a)
    best = min(timed(lambda: np.copyto(b, a)) for _ in range(5))
    return 2 * a.nbytes / best


STEP_CHILD = """
import json, sys, time
def hwm():   # this process's peak resident memory (VmHWM; ru_maxrss would carry the parent's across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
import numpy as np
sys.path.insert(0, {repo!r})
shape, impl, B, T = json.loads(sys.argv[1]), sys.argv[2], 4, 256
rng = np.random.default_rng(0)
idx = rng.integers(0, shape["vocab_size"], (B, T + 1))
times = []
if impl == "pythia":
    from pythia.models.llama import Llama, LlamaConfig
    from pythia.engine import DeltaOptimizer
    from pythia.system.sharding import ShardedModel
    model = ShardedModel(Llama(LlamaConfig(**shape), seed=0))
    opt = DeltaOptimizer.for_model(model, lr=1e-4, weight_decay=0.0)
    for _ in range(3):
        t = time.perf_counter()
        model.loss(idx[:, :-1], idx[:, 1:]); model.backward(); opt.step()
        times.append(time.perf_counter() - t)
else:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.set_num_threads({threads})
    sys.path.insert(0, {bench!r})
    from bench_llama import pythia_model
    hf = LlamaForCausalLM(LlamaConfig(**pythia_model(shape).config.to_hf()))
    opt = torch.optim.AdamW(hf.parameters(), lr=1e-4, weight_decay=0.0)
    x = torch.from_numpy(idx)
    for _ in range(3):
        t = time.perf_counter()
        out = hf(x[:, :-1], labels=x[:, :-1])
        out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
print(json.dumps({{"step": min(times[1:]), "rss": hwm()}}))
"""

CHAT_CHILD = """
import json, sys
def hwm():   # this process's peak resident memory (VmHWM; ru_maxrss would carry the parent's across exec)
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
sys.path.insert(0, {repo!r})
from pythia.formats.source import open_model
m = open_model(sys.argv[1])
list(m.model.generate(list(range(10, 74)), 32, temperature=0))
print(json.dumps({{"rss": hwm()}}))
"""


def child(code: str, *args: str) -> dict:
    src = code.format(repo=str(REPO), bench=str(REPO / "benchmarks"), threads=THREADS)
    r = subprocess.run([sys.executable, "-c", src, *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def write_bf16_folder(model, folder: Path) -> None:
    """A SmolLM2-style folder: config.json and BF16 model.safetensors (rounded to nearest even)."""
    from pythia.formats.hf_export import write_json
    folder.mkdir()
    write_json(folder / "config.json", model.config.to_hf())
    header, blobs, offset = {}, [], 0
    for name, p in model.params.items():
        u = p.astype(np.float32).view(np.uint32)
        bf = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)   # round half to even
        header[name] = {"dtype": "BF16", "shape": list(p.shape), "data_offsets": [offset, offset + bf.nbytes]}
        blobs.append(bf.tobytes())
        offset += bf.nbytes
    head = json.dumps(header).encode()
    head += b" " * (-len(head) % 8)
    with open(folder / "model.safetensors", "wb") as f:
        f.write(len(head).to_bytes(8, "little") + head)
        for b in blobs:
            f.write(b)
    tok = REPO / "tests" / "fixtures" / "hf_models" / "smollm2"
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / name).write_bytes((tok / name).read_bytes())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="a 4-layer shape with an 8192 vocabulary")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--inference-only", action="store_true", help="only decode, prefill and the bandwidth limit")
    args = ap.parse_args()
    shape = QUICK if args.quick else SMOLLM2_135M
    model = pythia_model(shape)
    hf = torch_model(model)
    weight_bytes = model.params_memory.nbytes
    print(f"shape: {json.dumps(shape)}\nweights: {weight_bytes / 1e6:,.0f} MB fp32; threads {THREADS}; "
          f"load average {os.getloadavg()[0]:.1f}")

    rng = np.random.default_rng(1)
    prompt64 = rng.integers(0, shape["vocab_size"], 64).tolist()
    runs = decode_runners(model, hf, prompt64)
    for fn in runs.values():
        fn(2)                                                     # warm up
    per = interleaved(runs, lambda fn: (lambda first, total: 64 / (total - first))(*fn(65)), args.rounds)
    print("\ndecode tok/s, 64-token prompt (median (min-max) of", args.rounds, "interleaved rounds)")
    for name, v in per.items():
        print(f"  {name:8s} {summary(v)}")
    if "torch" in per:
        print(f"  ratio    {statistics.median(per['pythia']) / statistics.median(per['torch']):.2f}x")
    bw = copy_bandwidth()
    print(f"  limit    {bw / weight_bytes:,.1f} tok/s = copy bandwidth {bw / 1e9:.1f} GB/s / {weight_bytes / 1e6:,.0f} MB"
          f" per token; Pythia at {statistics.median(per['pythia']) / (bw / weight_bytes):.0%} of it")

    prompt256 = rng.integers(0, shape["vocab_size"], 256).tolist()
    runs = decode_runners(model, hf, prompt256)
    per = interleaved(runs, lambda fn: 256 / fn(1)[0], max(3, args.rounds // 2))
    print("\nprefill tok/s, 256-token prompt")
    for name, v in per.items():
        print(f"  {name:8s} {summary(v)}")
    if "torch" in per:
        print(f"  ratio    {statistics.median(per['pythia']) / statistics.median(per['torch']):.2f}x")

    if args.inference_only:
        print(f"load average at the end {os.getloadavg()[0]:.1f} (1 minute)")
        return
    impls = ["pythia"] + (["torch"] if hf is not None else [])
    del hf
    steps: dict[str, list[dict]] = {k: [] for k in impls}
    for _ in range(2):
        for impl in impls:
            steps[impl].append(child(STEP_CHILD, json.dumps(shape), impl))
    print("\nfine-tune step, batch 4 x 256 (fresh process each; best of steps 2-3; 2 interleaved rounds)")
    for impl, rs in steps.items():
        print(f"  {impl:8s} {summary([r['step'] for r in rs])} s   peak RSS {max(r['rss'] for r in rs) / 1e9:.2f} GB")
    if "torch" in steps:
        t = statistics.median([r["step"] for r in steps["torch"]]) / statistics.median([r["step"] for r in steps["pythia"]])
        m = max(r["rss"] for r in steps["pythia"]) / max(r["rss"] for r in steps["torch"])
        print(f"  pythia is {t:.2f}x torch's speed at {m:.2f}x its peak RSS")

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "model"
        write_bf16_folder(model, folder)
        rss = child(CHAT_CHILD, str(folder))["rss"]
    print(f"\nopen a BF16 folder + decode 32 tokens: peak RSS {rss / 1e9:.2f} GB = {rss / weight_bytes:.2f}x the fp32 weights")
    print(f"load average at the end {os.getloadavg()[0]:.1f} (1 minute)")


if __name__ == "__main__":
    main()
