"""The PyTorch baseline: the same GPT-2 architecture and optimizer in plain eager PyTorch.

Used only by benchmarks, to measure Pythia against PyTorch CPU side by side in one run. It takes
Pythia's weights (`from_pythia`), so both start from the same point: pre-LN blocks, causal
attention (F.scaled_dot_product_attention, as nanoGPT uses), GELU-tanh MLP, tied head,
AdamW with decay on 2-d parameters only, global-norm clipping, warmup + cosine schedule.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C: int, H: int):
        super().__init__()
        self.H = H
        self.ln_1 = nn.LayerNorm(C)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C)
        self.c_fc = nn.Linear(C, 4 * C)
        self.mlp_proj = nn.Linear(4 * C, C)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(C, dim=2)                 # 3 x (B, T, C)
        q, k, v = (t.view(B, T, self.H, C // self.H).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hs)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)         # (B, H, T, hs)
        x = x + self.c_proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, V: int, block_size: int, C: int, L: int, H: int):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(block_size, C)
        self.h = nn.ModuleList(Block(C, H) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)

    def forward(self, idx, targets=None):
        T = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(T))                        # (B, T, C)
        for block in self.h:
            x = block(x)
        logits = self.ln_f(x) @ self.wte.weight.T                            # (B, T, V)
        if targets is None:
            return logits
        return logits, F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))

    @torch.no_grad()
    def from_pythia(self, params: dict[str, np.ndarray]) -> "TorchGPT":
        """Copy Pythia's weights; Pythia stores linear weights (in, out), torch (out, in)."""
        t = lambda a: torch.from_numpy(np.array(a, dtype=np.float32))
        self.wte.weight.copy_(t(params["wte"]))
        self.wpe.weight.copy_(t(params["wpe"]))
        for i, b in enumerate(self.h):
            p = lambda n: params[f"h.{i}.{n}"]
            for mod, name in ((b.ln_1, "ln_1"), (b.ln_2, "ln_2")):
                mod.weight.copy_(t(p(f"{name}.weight"))); mod.bias.copy_(t(p(f"{name}.bias")))
            for mod, name in ((b.c_attn, "attn.c_attn"), (b.c_proj, "attn.c_proj"),
                              (b.c_fc, "mlp.c_fc"), (b.mlp_proj, "mlp.c_proj")):
                mod.weight.copy_(t(p(f"{name}.weight")).T); mod.bias.copy_(t(p(f"{name}.bias")))
        self.ln_f.weight.copy_(t(params["ln_f.weight"])); self.ln_f.bias.copy_(t(params["ln_f.bias"]))
        return self


def make_optimizer(model: nn.Module, lr: float, weight_decay: float, beta2: float) -> torch.optim.AdamW:
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, beta2))


def lr_at(step: int, lr: float, min_lr: float, warmup: int, total: int) -> float:
    """Linear warmup, then cosine decay from lr to min_lr at `total`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    frac = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * frac)) * (lr - min_lr)


def train_step(model, opt, x, y, lr: float, grad_clip: float = 1.0) -> float:
    for g in opt.param_groups:
        g["lr"] = lr
    _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
    opt.step()
    return loss.item()


def serve_steps(conn, V: int, T: int, C: int, L: int, H: int, params: dict, x: np.ndarray, y: np.ndarray,
                lr: float = 1e-3) -> None:
    """Child-process loop for benchmarks: build the model from Pythia's weights, then run one training
    step per "step" message and send back its loss, until any other message arrives.

    This module imports torch before anything of Pythia's, so in a fresh ("spawn") process torch's
    OpenMP runtime starts with its own defaults (see bench_train_step.py).
    """
    torch.set_num_threads(2)
    model = TorchGPT(V, T, C, L, H).from_pythia(params)
    opt = make_optimizer(model, lr=lr, weight_decay=0.1, beta2=0.99)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    conn.send(("ready", torch.get_num_threads()))
    while conn.recv() == "step":
        conn.send(train_step(model, opt, xt, yt, lr))


def serve_kernels(conn) -> None:
    """Child-process loop for bench_kernels.py: time PyTorch's ops at torch's own OpenMP defaults.

    ("setup", kernel, size): build the op on bench_kernels' inputs and reply with k, the number
    of ops per "run" (enough for ~3 ms, so the pipe's ~0.1 ms round trip is a few percent);
    "run": do the op k times, reply; anything else ends the loop.
    """
    import time

    from bench_kernels import _case, _torch_thunk

    torch.set_num_threads(2)
    conn.send(("ready", torch.get_num_threads()))
    thunk, k = None, 1
    while True:
        msg = conn.recv()
        if msg == "run":
            for _ in range(k):
                thunk()
            conn.send(None)
        elif isinstance(msg, tuple) and msg[0] == "setup":
            thunk = _torch_thunk(msg[1], _case(msg[1], msg[2])[0])
            thunk()
            t0 = time.perf_counter()
            for _ in range(10):
                thunk()
            k = max(1, int(0.003 / ((time.perf_counter() - t0) / 10)))
            conn.send(k)
        else:
            return
