"""LoRA against full fine-tuning at SmolLM2's shapes: step time and peak memory, side by side.

    python benchmarks/bench_lora.py                      # SmolLM2-135M's shape, batch 4 x 256
    python benchmarks/bench_lora.py --shape 360m         # SmolLM2-360M's
    python benchmarks/bench_lora.py --shape tiny --rounds 1 --steps 2   # a smoke run

Random weights (speed and memory do not depend on them). Each measurement is a fresh process
(so its peak RSS, VmHWM, is its own) that builds the model and takes --steps training steps
(loss, backward, AdamW) on a random batch; the step time is the median step after the first.
Columns:

    pythia-lora   rank 8 on q, k, v, o (pythia.lora.LoRAModel): frozen base, adapters trained
    pythia-full   every weight trained (Pythia's full fine-tune)
    torch-peft    transformers + PEFT, the same targets and rank, fp32 (when importable)

all on 2 threads (Pythia's thread rule: the batch split across the cores; torch.set_num_threads(2)).
Rounds interleave the columns (lora, full, peft, lora, ...); a cell is the median over rounds.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "135m": dict(vocab_size=49152, d_model=576, n_layer=30, n_head=9, n_kv_head=3, head_dim=64, d_ff=1536,
                 norm_eps=1e-5, rope_theta=100000.0, block_size=8192, qkv_bias=False, tie_embeddings=True),
    "360m": dict(vocab_size=49152, d_model=960, n_layer=32, n_head=15, n_kv_head=5, head_dim=64, d_ff=2560,
                 norm_eps=1e-5, rope_theta=100000.0, block_size=8192, qkv_bias=False, tie_embeddings=True),
    "tiny": dict(vocab_size=512, d_model=64, n_layer=2, n_head=4, n_kv_head=2, head_dim=16, d_ff=128,
                 norm_eps=1e-5, rope_theta=10000.0, block_size=256, qkv_bias=False, tie_embeddings=True),
}
RANK, TARGETS, THREADS = 8, ("q_proj", "k_proj", "v_proj", "o_proj"), 2

CHILD = """
import json, sys, time
def hwm():   # this process's peak resident memory
    return int(next(l for l in open("/proc/self/status") if l.startswith("VmHWM")).split()[1]) * 1024
import numpy as np
sys.path.insert(0, {repo!r})
shape, impl, B, T, steps = json.loads(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
rng = np.random.default_rng(0)
idx = rng.integers(0, shape["vocab_size"], (B, T + 1))
times = []
if impl.startswith("pythia"):
    from pythia.models.llama import Llama, LlamaConfig
    from pythia.engine import DeltaOptimizer
    from pythia.lora import LoRAConfig, LoRAModel
    from pythia.system.sharding import ShardedModel
    net = Llama(LlamaConfig(**shape), seed=0)
    if impl == "pythia-lora":
        net = LoRAModel(net, LoRAConfig({rank}, 2.0 * {rank}, {targets!r}))
    model = ShardedModel(net)
    opt = DeltaOptimizer.for_model(model, lr=1e-4, weight_decay=0.0)
    for _ in range(steps):
        t = time.perf_counter()
        model.loss(idx[:, :-1], idx[:, 1:]); model.backward(); opt.step()
        times.append(time.perf_counter() - t)
    trained = net.num_params()
else:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM
    from peft import LoraConfig, get_peft_model
    torch.set_num_threads({threads})
    from pythia.models.llama import LlamaConfig as PC
    hf = LlamaForCausalLM(LlamaConfig(**PC(**shape).to_hf()))
    hf = get_peft_model(hf, LoraConfig(r={rank}, lora_alpha=2 * {rank}, target_modules=list({targets!r}), lora_dropout=0.0))
    params = [p for p in hf.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    x = torch.from_numpy(idx)
    for _ in range(steps):
        t = time.perf_counter()
        out = hf(x[:, :-1], labels=x[:, :-1])
        out.loss.backward(); opt.step(); opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    trained = sum(p.numel() for p in params)
print(json.dumps({{"step": sorted(times[1:])[len(times[1:]) // 2] if len(times) > 1 else times[0], "rss": hwm(),
                  "trained": trained}}))
"""


def run(impl: str, shape: dict, B: int, T: int, steps: int, python: str) -> dict | None:
    code = CHILD.format(repo=str(REPO), rank=RANK, targets=TARGETS, threads=THREADS)
    r = subprocess.run([python, "-c", code, json.dumps(shape), impl, str(B), str(T), str(steps)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        if impl == "torch-peft" and "ModuleNotFoundError" in r.stderr:
            return None
        raise SystemExit(f"{impl} failed:\n{r.stderr[-2000:]}")
    return json.loads(r.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="135m")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--steps", type=int, default=4, help="steps per process (the first is not timed)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-torch", action="store_true", help="skip the transformers + PEFT column")
    ap.add_argument("--torch-python", default=sys.executable, metavar="PYTHON",
                    help="the interpreter that has torch, transformers and peft (default: this one)")
    args = ap.parse_args()
    shape = SHAPES[args.shape]
    impls = ["pythia-lora", "pythia-full"] + ([] if args.no_torch else ["torch-peft"])
    got: dict[str, list[dict]] = {k: [] for k in impls}
    for _ in range(args.rounds):
        for impl in impls:
            python = args.torch_python if impl == "torch-peft" else sys.executable
            r = run(impl, shape, args.batch, args.seq, args.steps, python)
            if r is not None:
                got[impl].append(r)
    print(f"shape {args.shape}: {json.dumps(shape)}\nbatch {args.batch} x {args.seq}, rank {RANK} on "
          f"{', '.join(TARGETS)}, {THREADS} threads, {args.rounds} rounds x {args.steps} steps\n")
    print("| run | trained parameters | step (s) | peak RSS (MB) |")
    print("|---|---|---|---|")
    for impl, rs in got.items():
        if not rs:
            print(f"| {impl} | - | not run (torch, transformers or peft missing) | - |")
            continue
        step = statistics.median(r["step"] for r in rs)
        rss = statistics.median(r["rss"] for r in rs) / 1e6
        print(f"| {impl} | {rs[0]['trained']:,} | {step:.2f} | {rss:,.0f} |")


if __name__ == "__main__":
    main()
