"""Quality run: nanoGPT's CPU recipe on Tiny Shakespeare through Pythia's own Trainer.

    python benchmarks/quality_shakespeare.py                # Pythia only (~2000 steps)
    python benchmarks/quality_shakespeare.py --torch        # and the PyTorch reference, same run

The recipe (nanoGPT's README, "I only have a macbook"): batch 12, block 64, d_model 128,
4 layers, 4 heads, dropout 0, 2000 steps, AdamW lr 1e-3 with 100 warmup steps then cosine to
1e-4, betas (0.9, 0.99), weight decay 0.1, clip 1.0, 90/10 split, val loss over 20 batches
(nanoGPT's --eval_iters=20). Target: val loss <= 1.88 (PyTorch reference on this machine: 1.883
in 107 s). The final model is also scored on 200 val batches, a steadier estimate of the same
number.

With --torch, the PyTorch model of benchmarks/torch_gpt.py starts from Pythia's initial weights
and trains on the very same batches, and both are scored on the same evaluation batches, so the
two losses differ only by the implementations. Tiny Shakespeare is read in place, never copied:
--data FILE, else the file $PYTHIA_SHAKESPEARE names (corpus_path.py).
A benchmark, not a test: it takes minutes and is not collected by pytest.

Results, with the machine they were measured on: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # torch_gpt.py and corpus_path.py live beside this script

from corpus_path import shakespeare  # noqa: E402

TARGET = 1.88
# nanoGPT's recipe in PyTorch on this machine, measured with this script's --torch
REFERENCE = "PyTorch reference (nanoGPT recipe, quality_shakespeare.py --torch): val 1.883 in 107 s"


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="Tiny Shakespeare (default: $PYTHIA_SHAKESPEARE)")
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--eval-interval", type=int, default=250)
    ap.add_argument("--eval-iters", type=int, default=20)
    ap.add_argument("--final-eval-iters", type=int, default=200)
    ap.add_argument("--seed", type=int, default=1337)
    ap.add_argument("--kernels", choices=("cython", "numpy"), default=None)
    ap.add_argument("--log-file", type=Path, default=None)
    ap.add_argument("--torch", action="store_true", help="also train the PyTorch reference on the same batches")
    args = ap.parse_args(argv)
    args.data = shakespeare(args.data)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from pythia import kernels
    from pythia.corpora.data import build_dataset
    from pythia.model import Pythia, PythiaConfig
    from pythia.train import TrainConfig, Trainer, make_optimizer

    if args.kernels:
        kernels.use(args.kernels)
    cfg = TrainConfig(steps=args.steps, batch_size=12, lr=1e-3, min_lr=1e-4, warmup_steps=100, weight_decay=0.1,
                      beta2=0.99, grad_clip=1.0, eval_interval=args.eval_interval, eval_iters=args.eval_iters,
                      seed=args.seed)
    dataset = build_dataset([args.data], block_size=64)
    model_cfg = PythiaConfig(vocab_size=dataset.tokenizer.vocab_size, block_size=64, d_model=128, n_layer=4, n_head=4)
    model = Pythia(model_cfg, seed=cfg.seed)
    init_params = copy.deepcopy(model.params)
    print(f"data {args.data} ({dataset.n_chars:,} chars, vocab {dataset.tokenizer.vocab_size}, "
          f"train {len(dataset.train):,} / val {len(dataset.val):,} tokens)")
    print(f"model {model_cfg} ({model.num_params():,} params), kernels {kernels.BACKEND}")
    print(f"train {cfg}")

    def report(p):
        if p.evaluated:
            print(f"  step {p.step:5d}  train {p.eval_train_loss:.4f}  val {p.val_loss:.4f}  lr {p.lr:.2e}  "
                  f"{p.tokens_per_s:,.0f} tok/s  {p.elapsed_s:6.1f} s", flush=True)

    trainer = Trainer(model, make_optimizer(model, cfg), dataset, cfg, log_file=args.log_file, on_progress=report)
    result = trainer.run()
    if result.interrupted:
        print("interrupted")
        return 1
    train_s = result.steps * cfg.batch_size * 64 / result.tokens_per_s
    _, val_big = trainer.evaluate(iters=args.final_eval_iters)
    ok = result.val_loss <= TARGET
    print(f"pythia: val loss {result.val_loss:.4f} ({cfg.eval_iters} batches), {val_big:.4f} "
          f"({args.final_eval_iters} batches); wall time {result.wall_time_s:.1f} s "
          f"({train_s:.1f} s in training steps, {result.tokens_per_s:,.0f} tok/s); "
          f"target <= {TARGET}: {'met' if ok else 'NOT met'}")
    print(REFERENCE)

    if args.torch:
        run_torch(args, cfg, init_params, model_cfg)
    return 0 if ok else 1


def run_torch(args, cfg, init_params, model_cfg) -> None:
    """The same recipe in PyTorch eager, from the same initial weights, on the same batches.

    It runs in a child process started with "spawn", which imports torch before anything else
    and without the OpenMP wait setting Pythia put in the environment for itself: both libraries use the one libgomp a
    process loads, so in this process torch would run under Pythia's thread policy."""
    import importlib.util
    import multiprocessing

    from pythia.kernels import _loader

    if importlib.util.find_spec("torch") is None:
        print("torch is not importable: skipping the PyTorch reference")
        return
    ctx = multiprocessing.get_context("spawn")
    child = ctx.Process(target=_torch_child, args=(str(args.data), cfg, model_cfg, init_params, args.final_eval_iters))
    with _loader.without_our_wait_setting():
        child.start()
    child.join()


def _torch_child(data: str, cfg, model_cfg, init_params, final_eval_iters: int) -> None:
    import torch  # first: torch's OpenMP starts at its own defaults

    sys.path.insert(0, str(HERE))
    from pythia.corpora.data import build_dataset
    from pythia.train import EVAL_STREAM, make_rng
    from torch_gpt import TorchGPT, lr_at, make_optimizer, train_step

    torch.set_num_threads(2)
    dataset = build_dataset([Path(data)], block_size=model_cfg.block_size)   # the same text, split and batches
    net = TorchGPT(model_cfg.vocab_size, model_cfg.block_size, model_cfg.d_model, model_cfg.n_layer,
                   model_cfg.n_head).from_pythia(init_params)
    opt = make_optimizer(net, cfg.lr, cfg.weight_decay, cfg.beta2)
    rng = make_rng(cfg.seed)  # the Trainer's training stream: identical batches

    @torch.no_grad()
    def evaluate(iters):
        erng = np.random.Generator(np.random.PCG64([cfg.seed, EVAL_STREAM]))
        out = []
        for split in ("train", "val"):
            losses = [net(*(torch.from_numpy(a) for a in dataset.get_batch(split, cfg.batch_size, erng)))[1].item()
                      for _ in range(iters)]
            out.append(float(np.mean(losses)))
        return out

    t0 = time.perf_counter()
    for step in range(cfg.steps):
        x, y = dataset.get_batch("train", cfg.batch_size, rng)
        train_step(net, opt, torch.from_numpy(x), torch.from_numpy(y),
                   lr_at(step, cfg.lr, cfg.min_lr, cfg.warmup_steps, cfg.steps), cfg.grad_clip)
        if (step + 1) % cfg.eval_interval == 0 or step + 1 == cfg.steps:
            tr, va = evaluate(cfg.eval_iters)
            print(f"  torch step {step + 1:5d}  train {tr:.4f}  val {va:.4f}  {time.perf_counter() - t0:6.1f} s",
                  flush=True)
    wall = time.perf_counter() - t0
    _, val_big = evaluate(final_eval_iters)
    print(f"torch:  val loss {va:.4f} ({cfg.eval_iters} batches), {val_big:.4f} "
          f"({final_eval_iters} batches); wall time {wall:.1f} s", flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
