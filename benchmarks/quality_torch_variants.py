"""How much the Tiny Shakespeare val loss moves with the seed and the architecture, in PyTorch.

    python benchmarks/quality_torch_variants.py --seed 1                 # nanoGPT's model
    python benchmarks/quality_torch_variants.py --seed 1 --gpt2          # GPT-2's, as Pythia

The recipe of quality_shakespeare.py (batch 12, block 64, d_model 128, 4 layers, 4 heads, 2000
steps, AdamW 1e-3 -> 1e-4 cosine, warmup 100, betas (0.9, 0.99), weight decay 0.1, clip 1.0) on
the same batches and evaluation batches as Pythia's Trainer for that seed, but with weights
drawn by torch (GPT-2's scheme: N(0, 0.02), residual projections / sqrt(2 * layers), zero
biases). nanoGPT's model, which its 1.88 comes from, has no biases (`bias=False`) and the erf
GELU; `--gpt2` adds the biases and the tanh GELU, the architecture Pythia implements. PyTorch
only (needs torch); a benchmark, not a test. Prints val loss over 20 and 200 batches.
"""
from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch  # first: torch's OpenMP starts at its own defaults
import torch.nn as nn
import torch.nn.functional as F

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from quality_shakespeare import DEFAULT_DATA  # noqa: E402
from torch_gpt import lr_at  # noqa: E402

from pythia.corpora.data import build_dataset  # noqa: E402
from pythia.train import EVAL_STREAM, make_rng  # noqa: E402

T, C, L, H, BATCH, STEPS = 64, 128, 4, 4, 12, 2000


class LayerNorm(nn.Module):
    def __init__(self, bias: bool):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(C))
        self.bias = nn.Parameter(torch.zeros(C)) if bias else None

    def forward(self, x):
        return F.layer_norm(x, (C,), self.weight, self.bias, 1e-5)


class Block(nn.Module):
    def __init__(self, bias: bool, gelu: str):
        super().__init__()
        self.gelu = gelu
        self.ln_1, self.ln_2 = LayerNorm(bias), LayerNorm(bias)
        self.c_attn, self.c_proj = nn.Linear(C, 3 * C, bias=bias), nn.Linear(C, C, bias=bias)
        self.c_fc, self.mlp_proj = nn.Linear(C, 4 * C, bias=bias), nn.Linear(4 * C, C, bias=bias)

    def forward(self, x):
        B, T_, _ = x.shape
        q, k, v = (t.view(B, T_, H, C // H).transpose(1, 2) for t in self.c_attn(self.ln_1(x)).split(C, 2))
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T_, C)
        x = x + self.c_proj(a)
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate=self.gelu))


class GPT(nn.Module):
    def __init__(self, V: int, bias: bool, gelu: str):
        super().__init__()
        self.wte, self.wpe = nn.Embedding(V, C), nn.Embedding(T, C)
        self.h = nn.ModuleList(Block(bias, gelu) for _ in range(L))
        self.ln_f = LayerNorm(bias)
        for name, p in self.named_parameters():
            if p.dim() == 2:
                resid = name.endswith(("c_proj.weight", "mlp_proj.weight"))
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * L) if resid else 0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T                      # tied head
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--gpt2", action="store_true", help="biases and tanh GELU (Pythia's architecture)")
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    args = ap.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(2)
    ds = build_dataset([args.data], block_size=T)
    net = GPT(ds.tokenizer.vocab_size, bias=args.gpt2, gelu="tanh" if args.gpt2 else "none")
    decay = [p for p in net.parameters() if p.dim() >= 2]
    rest = [p for p in net.parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                            lr=1e-3, betas=(0.9, 0.99))
    rng = make_rng(args.seed)                                          # the Trainer's batches for this seed

    @torch.no_grad()
    def val_loss(iters: int) -> float:
        erng = np.random.Generator(np.random.PCG64([args.seed, EVAL_STREAM]))
        return float(np.mean([net(*(torch.from_numpy(a) for a in ds.get_batch("val", BATCH, erng))).item()
                              for _ in range(iters)]))

    t0 = time.perf_counter()
    for step in range(STEPS):
        x, y = ds.get_batch("train", BATCH, rng)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, 1e-3, 1e-4, 100, STEPS)
        loss = net(torch.from_numpy(x), torch.from_numpy(y))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
    arch = "GPT-2 (biases, tanh GELU)" if args.gpt2 else "nanoGPT (no biases, erf GELU)"
    print(f"seed {args.seed}, {arch}: val loss {val_loss(20):.4f} (20 batches), {val_loss(200):.4f} "
          f"(200 batches); {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
