"""The flags of train and train-chat, and the help that explains their data and checkpoint."""
from __future__ import annotations

import argparse
from dataclasses import fields

from .kernel_choice import add_kernel_flag
from .types import Store, beta_float, nonneg_float, nonneg_int, positive_float, positive_int, preset_name

DEFAULT_OUT = {"train-chat": "pythia-chat.npz", "train": "pythia.npz"}

DATA_HELP = """\
data: --data FILE... when given; otherwise input.txt and model.txt from the current directory
when both are there; otherwise the corpus bundled with Pythia. Files are UTF-8 text, joined in
order; the first 90% of the tokens train, the last 10% validate. A folder written by `python -m
pythia prepare` is memory-mapped instead, with its own tokenizer and split."""

OUT_HELP = """\
checkpoint: without --out the model is saved as {default} in the current directory; if that
file already exists, the next free name is used instead ({stem}-2.npz, {stem}-3.npz, ...), so an
earlier model is never replaced. An --out FILE that already exists is an error unless you add
--force.{resume}"""


def add_training_flags(p: argparse.ArgumentParser, command: str) -> None:
    from ..model import PythiaConfig
    from ..train import TrainConfig
    from ..training.presets import preset_names
    t = {f.name: f.default for f in fields(TrainConfig)}
    m = {f.name: f.default for f in fields(PythiaConfig) if f.name != "vocab_size"}

    g = p.add_argument_group("data and output")
    g.add_argument("--data", nargs="+", metavar="FILE", action=Store,
                   help="text files to train on, or one folder written by `prepare` (see 'data' below) "
                        "(default: input.txt + model.txt, else the bundled corpus)")
    g.add_argument("--out", metavar="FILE", action=Store,
                   help=f"where to save the checkpoint (default: {DEFAULT_OUT[command]}, never replacing a file)")
    g.add_argument("--force", action="store_true", help="allow --out (and --plot) to replace an existing file")
    g.add_argument("--no-memory-check", action="store_true",
                   help="train even when the memory estimate (shown in the banner) exceeds the memory available")
    if command == "train":
        g.add_argument("--resume", metavar="CKPT", action=Store,
                       help="continue training CKPT from its saved step, optimizer and data position; "
                            "raise --steps to train further")
    g.add_argument("--init-from", metavar="SRC", action=Store,
                   help="fine-tune: start from the weights, sizes and tokenizer of SRC, a Hugging Face GPT-2 "
                        "folder or a Pythia checkpoint, with a fresh optimizer; settings you do not give take "
                        "fine-tuning defaults (constant --lr 1e-4, --warmup-steps 10, --weight-decay 0, "
                        "--steps 200, --block-size min(256, SRC's context))")
    g = p.add_argument_group("LoRA adapters (with --init-from)")
    g.add_argument("--lora", type=positive_int, default=None, action=Store, metavar="R",
                   help="freeze SRC's weights and train rank-R adapters on its projections instead (LoRA): no "
                        "gradients or optimizer state for the base, a checkpoint of a few MB that refers to "
                        "SRC; e.g. --lora 8. --lr then defaults to a constant 1e-3. No adapter dropout: on a "
                        "short run over a small set it only slows learning, and without it the training loss "
                        "is the one the merged model gives")
    g.add_argument("--lora-alpha", type=positive_float, default=None, action=Store, metavar="A",
                   help="the adapters' update is scaled by A / R (default: 2 x R)")
    g.add_argument("--lora-targets", default=None, action=Store, metavar="NAMES",
                   help="comma-separated projections to adapt: attn (the attention projections, the default), "
                        "mlp, or names such as q_proj,v_proj (Llama family) or c_attn,c_fc (GPT-2)")
    g = p.add_argument_group("data and output")
    g.add_argument("--plot", metavar="FILE.svg",
                   help="after training, draw the train and val loss curves into this SVG file")
    g.add_argument("--log-file", metavar="FILE", action=Store,
                   help="append one JSON object per step (step, train_loss, val_loss, lr, tokens_per_s, "
                        "elapsed_s) to FILE")

    p.add_argument("--preset", type=preset_name, default=None, metavar="NAME",
                   help=f"named model and training values ({', '.join(preset_names())}); flags you give "
                        f"override it (default: seed, the values shown below)")

    g = p.add_argument_group("model shape")
    g.add_argument("--block-size", type=positive_int, default=m["block_size"], action=Store, metavar="T",
                   help="context length in tokens")
    g.add_argument("--d-model", type=positive_int, default=m["d_model"], action=Store, metavar="C",
                   help="width of the residual stream; must be divisible by --n-head")
    g.add_argument("--n-layer", type=positive_int, default=m["n_layer"], action=Store, metavar="L",
                   help="Transformer blocks")
    g.add_argument("--n-head", type=positive_int, default=m["n_head"], action=Store, metavar="H",
                   help="attention heads")

    g = p.add_argument_group("optimisation")
    g.add_argument("--steps", type=positive_int, default=t["steps"], action=Store, metavar="N",
                   help="training steps (optimizer updates)")
    g.add_argument("--batch-size", type=positive_int, default=t["batch_size"], action=Store, metavar="B",
                   help="sequences per micro-batch")
    g.add_argument("--grad-accum", type=positive_int, default=t["grad_accum"], action=Store, metavar="K",
                   help="micro-batches per optimizer step: each step learns from K x B sequences")
    g.add_argument("--lr", type=positive_float, default=t["lr"], action=Store, metavar="LR", help="peak learning rate")
    g.add_argument("--min-lr", type=nonneg_float, default=t["min_lr"], action=Store, metavar="LR",
                   help="learning rate at the end of the cosine decay (at most --lr)")
    g.add_argument("--warmup-steps", type=nonneg_int, default=t["warmup_steps"], action=Store, metavar="N",
                   help="steps of linear warmup to --lr")
    g.add_argument("--weight-decay", type=nonneg_float, default=t["weight_decay"], action=Store, metavar="WD",
                   help="AdamW decoupled weight decay (matrices and embeddings only)")
    g.add_argument("--beta2", type=beta_float, default=t["beta2"], action=Store, metavar="B2", help="AdamW beta2")
    g.add_argument("--grad-clip", type=nonneg_float, default=t["grad_clip"], action=Store, metavar="NORM",
                   help="clip the global gradient norm to this (0 = off)")
    g.add_argument("--eval-interval", type=positive_int, default=t["eval_interval"], action=Store, metavar="N",
                   help="evaluate and save every N steps (and at the end)")
    g.add_argument("--eval-iters", type=positive_int, default=t["eval_iters"], action=Store, metavar="N",
                   help="batches averaged per split at each evaluation")
    g.add_argument("--seed", type=nonneg_int, default=t["seed"], action=Store, metavar="S",
                   help="seeds the weights, the batches and (train-chat) the chat's sampler")
    add_kernel_flag(g)
