"""The settings of one train or train-chat run, resolved from the flags before anything is read.

resolve(args, command) is pure: it reads the parsed flags and nothing else (no file, no corpus),
fills in the preset, and validates the result with the config dataclasses' own checks
(PythiaConfig.validate, TrainConfig.validate, or fine-tuning's defaults), so a bad setting fails
before any file is claimed or read. What it cannot know yet (a resumed checkpoint's settings,
SRC's sizes) stays None and is filled in when the run is built.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass, fields

from ..errors import ConfigError
from .types import explicit

MODEL_FLAGS = ("block_size", "d_model", "n_layer", "n_head")


@dataclass(frozen=True)
class TrainSettings:
    command: str                   # "train" or "train-chat": names the default checkpoint
    sizes: dict                    # PythiaConfig sizes; None: the checkpoint's or SRC's (or the default)
    train: dict                    # TrainConfig fields likewise
    preset: str | None             # the preset that filled in the flags not given (new models only)
    overridden: tuple[str, ...]    # the preset's keys that flags set
    seed: int                      # --seed in effect (train-chat also seeds its chat with it)
    resume: str | None = None      # --resume CKPT: continue that run
    init_from: str | None = None   # --init-from SRC: fine-tune SRC's weights
    data: tuple[str, ...] | None = None
    out: str | None = None
    force: bool = False
    log_file: str | None = None
    plot: str | None = None
    no_memory_check: bool = False
    kernels: str | None = None
    lora: dict | None = None       # {"rank", "alpha", "targets"} of --lora (with --init-from)


def resolve(args: argparse.Namespace, command: str) -> TrainSettings:
    """TrainSettings from the parsed flags; ConfigError naming the flag for a bad or contradictory one."""
    from ..model import PythiaConfig
    from ..train import TrainConfig
    from ..training.presets import DEFAULT, get_preset
    train_fields = tuple(f.name for f in fields(TrainConfig))
    given = explicit(args)
    resume, init_from = getattr(args, "resume", None), getattr(args, "init_from", None)
    if resume is not None and init_from is not None:
        raise ConfigError("--init-from starts a new run from a model's weights and --resume continues one; "
                          "give only one of them")
    values = {k: getattr(args, k) for k in (*MODEL_FLAGS, *train_fields)}
    preset, overridden = None, ()
    if resume is None and init_from is None:     # a preset fills in every flag not given
        preset = getattr(args, "preset", None) or DEFAULT
        chosen = get_preset(preset)
        overridden = tuple(k for k in chosen if k in given)
        values.update({k: v for k, v in chosen.items() if k not in given})
        given = set(values)
    elif getattr(args, "preset", None):
        raise ConfigError("--preset starts a new model; a resumed run keeps its checkpoint's settings and "
                          "--init-from takes SRC's (drop --preset, or give single flags such as --steps)")
    lora = _lora(args, resume, init_from)
    sizes = {k: values[k] if k in given else None for k in MODEL_FLAGS}
    train = {k: values[k] if k in given else None for k in train_fields}
    if init_from is not None:
        from ..training.finetune import finetune_config
        finetune_config(train)                   # bad settings fail before the model is read
    elif resume is None:
        PythiaConfig(vocab_size=1, **sizes).validate()   # shape errors (d_model % n_head) before anything else
        TrainConfig(**train).validate()
    return TrainSettings(
        command=command, sizes=sizes, train=train, preset=preset, overridden=overridden, seed=values["seed"],
        resume=resume, init_from=init_from, data=tuple(args.data) if args.data else None, out=args.out,
        force=args.force, log_file=args.log_file, plot=getattr(args, "plot", None),
        no_memory_check=getattr(args, "no_memory_check", False), kernels=args.kernels, lora=lora)


def _lora(args: argparse.Namespace, resume, init_from) -> dict | None:
    """The --lora settings, or None; ConfigError for one given where it cannot apply."""
    rank, alpha, targets = (getattr(args, k, None) for k in ("lora", "lora_alpha", "lora_targets"))
    if rank is None:
        if alpha is not None or targets is not None:
            raise ConfigError("--lora-alpha and --lora-targets set up LoRA adapters; add --lora R (e.g. --lora 8)")
        return None
    if resume is not None:
        raise ConfigError("--resume continues a run with its checkpoint's own settings (a LoRA run stays one, a "
                          "full fine-tune stays one); drop --lora, --lora-alpha and --lora-targets")
    if init_from is None:
        raise ConfigError("--lora adapts a pretrained model; give it with --init-from SRC (a Hugging Face folder "
                          "or a Pythia checkpoint)")
    names = tuple(t.strip() for t in (targets or "attn").split(",") if t.strip())
    if not names:
        raise ConfigError("--lora-targets is empty; give e.g. attn, mlp or q_proj,v_proj")
    return {"rank": rank, "alpha": float(alpha if alpha is not None else 2 * rank), "targets": names}
