"""The PyTorch baseline: the same GPT-2 architecture and optimizer in plain eager PyTorch.

Used only by benchmarks, to measure Pythia against PyTorch CPU side by side in one run. It takes
Pythia's weights (`from_pythia`), so both start from the same point: pre-LN blocks, causal
attention, GELU-tanh MLP, tied head, AdamW with decay on 2-d parameters only, global-norm
clipping, warmup + cosine schedule. Three ways to run it (VARIANTS): "eager" writes attention
as explicit products, mask and softmax (nanoGPT's path without flash attention); "sdpa" calls
F.scaled_dot_product_attention (nanoGPT's default path); "compile" is "sdpa" under
torch.compile (inductor, which builds C++ and needs a compiler).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


VARIANTS = ("eager", "sdpa", "compile")


class Block(nn.Module):
    def __init__(self, C: int, H: int, sdpa: bool = True):
        super().__init__()
        self.H, self.sdpa = H, sdpa
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
        if self.sdpa:
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)     # (B, H, T, hs)
        else:                                   # softmax(q k^T / sqrt(hs) + causal mask) v
            att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
            mask = torch.ones(T, T, dtype=torch.bool).tril()
            a = F.softmax(att.masked_fill(~mask, float("-inf")), dim=-1) @ v
        x = x + self.c_proj(a.transpose(1, 2).reshape(B, T, C))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class TorchGPT(nn.Module):
    def __init__(self, V: int, block_size: int, C: int, L: int, H: int, sdpa: bool = True):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(block_size, C)
        self.h = nn.ModuleList(Block(C, H, sdpa) for _ in range(L))
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
                lr: float = 1e-3, variant: str = "sdpa") -> None:
    """Child-process loop for benchmarks: build the model of `variant` (VARIANTS) from Pythia's
    weights and reply ("ready", threads), or ("skip", reason) when it cannot be built; then per
    message: "step" runs one training step and replies its loss; ("time", n) runs n steps and
    replies (their times in seconds, measured here, the last loss); anything else ends the loop.

    This module imports torch before anything of Pythia's, so in a fresh ("spawn") process torch's
    OpenMP runtime starts with its own defaults (see bench_train_step.py).
    """
    import time

    torch.set_num_threads(2)
    model = TorchGPT(V, T, C, L, H, sdpa=variant != "eager").from_pythia(params)
    opt = make_optimizer(model, lr=lr, weight_decay=0.1, beta2=0.99)
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    if variant == "compile":
        try:                                    # build forward and backward now, outside the timing
            model = torch.compile(model)
            model(xt, yt)[1].backward()
            opt.zero_grad(set_to_none=True)
        except Exception as e:                  # inductor could not build (no compiler, ...)
            conn.send(("skip", f"torch.compile failed: {type(e).__name__}: {str(e).splitlines()[0][:160]}"))
            return
    conn.send(("ready", torch.get_num_threads()))
    while True:
        msg = conn.recv()
        if msg == "step":
            conn.send(train_step(model, opt, xt, yt, lr))
        elif isinstance(msg, tuple) and msg[0] == "time":
            times, loss = [], float("nan")
            for _ in range(msg[1]):
                t0 = time.perf_counter()
                loss = train_step(model, opt, xt, yt, lr)
                times.append(time.perf_counter() - t0)
            conn.send((times, loss))
        else:
            return


def serve_kernels(conn) -> None:
    """Child-process loop for bench_kernels.py: time PyTorch's ops at torch's own OpenMP defaults.

    ("setup", kernel, size): build the op on kernel_cases' inputs and reply with k, the number
    of ops per "run" (enough for ~3 ms, so the pipe's ~0.1 ms round trip is a few percent);
    "run": do the op k times, reply; anything else ends the loop.
    """
    import time

    from kernel_cases import case, torch_thunk

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
            thunk = torch_thunk(msg[1], case(msg[1], msg[2])[0])
            thunk()
            t0 = time.perf_counter()
            for _ in range(10):
                thunk()
            k = max(1, int(0.003 / ((time.perf_counter() - t0) / 10)))
            conn.send(k)
        else:
            return
