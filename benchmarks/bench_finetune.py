"""Fine-tuning cost at GPT-2-small's shape: Pythia vs transformers + torch AdamW, and chat's memory.

    python benchmarks/bench_finetune.py [--rounds 3] [--steps 3] [--shape small|tiny]

Shape "small" is GPT-2 small (12 layers, width 768, 12 heads, vocabulary 50257, 1024 positions)
with random weights; a step is batch 4 x block 256: forward, backward, global-norm clip to 1.0,
AdamW. Every measurement runs in a child process of its own, so one side's memory and threads
never touch the other's:

- step time: each round starts one Pythia child and one transformers child (interleaved), each
  doing --steps steps on the same random batch; the first step of each child is warm-up, the
  rest are timed; the table gives the median over all rounds and the range [min-max]. transformers
  runs GPT2LMHeadModel in eager PyTorch with its default attention, torch.optim.AdamW.
- peak memory: the same children report their peak resident set (ru_maxrss) after --steps
  steps (median over rounds, range).
- inference: a GPT-2 folder of that shape (random weights, a synthetic 50257-token byte-level
  BPE) is written with Pythia's export, then `python -m pythia chat --gpt2 DIR` answers one
  line of piped input; its peak resident set is compared with the weights' bytes.

Prints a markdown table; the benchmarks README quotes it with the machine it ran on.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SHAPES = {  # name: (n_layer, d_model, n_head, vocab, positions, batch, block)
    "small": (12, 768, 12, 50257, 1024, 4, 256),
    "tiny": (2, 64, 2, 300, 64, 2, 16),
}
MB = 1 << 20


def peak_rss() -> int:
    """This process's peak resident set in bytes (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def batch(shape: tuple, seed: int = 0):
    import numpy as np
    L, C, H, V, P, B, T = shape
    rng = np.random.default_rng(seed)
    x = rng.integers(0, V, size=(B, T))
    y = rng.integers(0, V, size=(B, T))
    return x, y


def child_pythia(shape: tuple, steps: int) -> dict:
    from pythia import DeltaOptimizer, Pythia, PythiaConfig
    L, C, H, V, P, B, T = shape
    model = Pythia(PythiaConfig(vocab_size=V, block_size=P, d_model=C, n_layer=L, n_head=H), seed=0)
    opt = DeltaOptimizer.for_model(model, lr=1e-4, min_lr=1e-4, warmup_steps=0, total_steps=steps,
                         weight_decay=0.1, grad_clip=1.0)
    x, y = batch(shape)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        model.loss(x, y)
        model.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak": peak_rss()}


def child_torch(shape: tuple, steps: int) -> dict:
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel
    L, C, H, V, P, B, T = shape
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=V, n_positions=P, n_embd=C, n_layer=L, n_head=H, resid_pdrop=0.0,
                     embd_pdrop=0.0, attn_pdrop=0.0, activation_function="gelu_new")
    model = GPT2LMHeadModel(cfg).train()
    params = list(model.parameters())
    decay = [p for p in params if p.ndim == 2]
    other = [p for p in params if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=1e-4, betas=(0.9, 0.99), eps=1e-8)
    x, y = (torch.from_numpy(a) for a in batch(shape))
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        logits = model(x).logits
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, V), y.reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        times.append(time.perf_counter() - t0)
    return {"times": times, "peak": peak_rss(), "threads": torch.get_num_threads(),
            "attention": model.config._attn_implementation}


def synthetic_bpe(vocab: int):
    """A valid byte-level BPE of exactly `vocab` tokens: 256 bytes, pair merges, <|endoftext|> last."""
    from pythia.text.bpe import EOT, GPT2Tokenizer, bytes_to_unicode
    chars = list(bytes_to_unicode().values())
    encoder = {c: i for i, c in enumerate(chars)}
    merges = []
    for a in chars:
        for b in chars:
            if len(encoder) == vocab - 1:
                break
            merges.append((a, b))
            encoder[a + b] = len(encoder)
    encoder[EOT] = len(encoder)
    return GPT2Tokenizer(encoder, merges)


def child_write_folder(shape: tuple, folder: str) -> dict:
    from pythia import Pythia, PythiaConfig
    from pythia.formats.export import save_hf
    L, C, H, V, P, B, T = shape
    model = Pythia(PythiaConfig(vocab_size=V, block_size=P, d_model=C, n_layer=L, n_head=H), seed=0)
    save_hf(folder, model, synthetic_bpe(V))
    return {"weight_bytes": sum(p.nbytes for p in model.params.values())}


def run_child(*args: str) -> dict:
    p = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True)
    if p.returncode != 0:
        raise SystemExit(f"child {args} failed:\n{p.stderr[-3000:]}")
    return json.loads(p.stdout.strip().splitlines()[-1])


def chat_peak(folder: str) -> int:
    """Peak resident set of `python -m pythia chat --gpt2 folder` answering one piped line."""
    proc = subprocess.Popen([sys.executable, "-m", "pythia", "chat", "--gpt2", folder, "--max-new-tokens", "16",
                             "--seed", "1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    proc.stdin.write(b"Hello there\nquit\n")
    proc.stdin.close()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode("utf-8", "replace")
    if proc.returncode != 0:
        raise SystemExit(f"chat --gpt2 failed: {err[-2000:]}")
    return usage.ru_maxrss * 1024


def spread(values: list[float], fmt: str) -> str:
    return f"{format(statistics.median(values), fmt)} [{format(min(values), fmt)}-{format(max(values), fmt)}]"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3, help="interleaved Pythia/transformers child pairs")
    ap.add_argument("--steps", type=int, default=3, help="steps per child (the first is warm-up)")
    ap.add_argument("--shape", choices=SHAPES, default="small")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        kind, shape = args.child[0], SHAPES[args.child[1]]
        if kind == "pythia":
            out = child_pythia(shape, int(args.child[2]))
        elif kind == "torch":
            out = child_torch(shape, int(args.child[2]))
        else:
            out = child_write_folder(shape, args.child[2])
        print(json.dumps(out))
        return 0
    if args.steps < 2 or args.rounds < 1:
        ap.error("--steps must be at least 2 (one warm-up) and --rounds at least 1")

    import importlib.util
    from pythia import kernels
    has_torch = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))
    L, C, H, V, P, B, T = SHAPES[args.shape]
    print(f"shape {args.shape}: {L} layers, width {C}, {H} heads, vocabulary {V}, batch {B} x block {T}; "
          f"{args.rounds} rounds of {args.steps} steps per child; pythia kernels {kernels.BACKEND}; "
          f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores", flush=True)
    res: dict[str, list[dict]] = {"pythia": [], "torch": []}
    for r in range(args.rounds):
        for side in ("pythia", "torch") if r % 2 == 0 else ("torch", "pythia"):
            if side == "torch" and not has_torch:
                continue
            res[side].append(run_child(side, args.shape, str(args.steps)))
            print(f"round {r + 1} {side}: steps {[round(t, 3) for t in res[side][-1]['times']]} s, "
                  f"peak {res[side][-1]['peak'] / MB:,.0f} MB", flush=True)
    with tempfile.TemporaryDirectory() as d:
        folder = str(Path(d) / "gpt2-random")
        weight_bytes = run_child("folder", args.shape, folder)["weight_bytes"]
        chat = [chat_peak(folder) for _ in range(2)]

    def times(side):
        return [t for run in res[side] for t in run["times"][1:]]

    def peaks(side):
        return [run["peak"] / MB for run in res[side]]

    print()
    print("| measure | Pythia | transformers + torch | torch / Pythia |")
    print("|---|---:|---:|---:|")
    tp = times("pythia")
    tt = times("torch") if res["torch"] else None
    ratio = f"{statistics.median(tt) / statistics.median(tp):.2f}" if tt else "n/a"
    print(f"| step time, s (median [min-max]) | {spread(tp, '.3f')} | "
          f"{spread(tt, '.3f') if tt else 'not installed'} | {ratio} |")
    pp = peaks("pythia")
    pt = peaks("torch") if res["torch"] else None
    ratio = f"{statistics.median(pt) / statistics.median(pp):.2f}" if pt else "n/a"
    print(f"| peak RSS of {args.steps} steps, MB (median [min-max]) | {spread(pp, ',.0f')} | "
          f"{spread(pt, ',.0f') if pt else 'not installed'} | {ratio} |")
    print(f"| chat --gpt2 peak RSS, MB / weights MB | {max(chat) / MB:,.0f} / {weight_bytes / MB:,.0f} = "
          f"{max(chat) / weight_bytes:.2f}x | | |")
    if res["torch"]:
        print(f"torch threads {res['torch'][0]['threads']}, attention {res['torch'][0]['attention']}")
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
