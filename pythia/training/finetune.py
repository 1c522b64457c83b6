"""Fine-tuning: train on your own text starting from a pretrained model (`--init-from SRC`).

SRC is anything `--model` takes: a Hugging Face folder (GPT-2, or a Llama-family model such as
SmolLM2, Qwen2.5 or TinyLlama) or a Pythia checkpoint (char, BPE or converted). A chat model's
template and stop ids go on into the fine-tuned checkpoints. The model's sizes and tokenizer come from SRC, its weights are the starting point, and the
optimizer starts fresh (this is not `--resume`, which continues a run with its optimizer state).
The corpus is encoded with SRC's tokenizer; for a BPE model the files are joined with
`<|endoftext|>` between them, as GPT-2's training documents were, so no window pretends that
the end of one file runs on into the next. A prepared folder (`prepare --gpt2 SRC`, or one whose
stored tokenizer is SRC's) is memory-mapped as is; one prepared with another tokenizer is refused:
its ids would mean other tokens to SRC's embeddings.

A size flag that contradicts SRC (--d-model, --n-layer, --n-head) is an error: the weights fix
them. --block-size may be smaller than SRC's context (shorter windows cost less memory and time
per step; the model keeps all of SRC's positions), never larger (there are no position
embeddings past it).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import ConfigError

# Defaults for the settings a user does not give. A pretrained model needs small steps: large ones
# wreck what it knows before the new text is learnt; nanoGPT's finetune_shakespeare holds GPT-2-XL
# at a constant 3e-5. Measured on the tiny GPT-2 fixture (tests/fixtures/gpt2: 2 layers, width 32,
# a 513-token BPE) fine-tuned on the bundled corpus with `python -m pythia train --init-from
# tests/fixtures/gpt2 --steps 200 --block-size 64 --lr LR --min-lr LR --eval-interval 200` (batch
# 8, the other settings below): val loss 10.43 before, after 200 steps at a constant rate of
#     3e-5 8.60   1e-4 6.68   3e-4 5.84   1e-3 4.73   3e-3 4.09
# The fixture's weights are random, far from anything learnt, so larger rates keep paying there;
# a real GPT-2 already sits near a good minimum that a large rate would leave. 1e-4 held constant
# is the middle ground: about nanoGPT's rate scaled up for a model 12x smaller than GPT-2-XL, and
# still clearly moving the fixture (10.43 -> 6.68) in the default 200 steps.
FINETUNE_DEFAULTS = {
    "steps": 200,              # a short run: the model already knows language, it adapts to the text
    "lr": 1e-4,
    "min_lr": 1e-4,            # constant rate (min_lr = lr), as nanoGPT's finetune config
    "warmup_steps": 10,        # a short warmup lets Adam's second moments settle before full steps
    "weight_decay": 0.0,       # decaying towards 0 pulls pretrained weights away from what they know
    "eval_interval": 50,
}
DEFAULT_BLOCK = 256            # training windows when --block-size is not given (at most SRC's context)
SIZE_FLAGS = ("d_model", "n_layer", "n_head")


def load_source(src: str | Path):
    """The pythia.formats.source.LoadedModel of SRC: a Hugging Face folder or a Pythia checkpoint;
    PythiaError if neither."""
    path = Path(src)
    if not path.exists():
        raise ConfigError(f"--init-from {str(src)!r} does not exist; give a Hugging Face model folder "
                          f"(GPT-2 or Llama family, downloaded by you) or a Pythia checkpoint (.npz)")
    from ..formats.source import open_model
    return open_model(path)


def source_config(src: str | Path):
    """SRC's PythiaConfig, read cheaply first for a GPT-2 folder (config.json alone), so size flags
    that contradict it fail before any weights are read; None for a checkpoint."""
    path = Path(src)
    if path.is_dir():
        from ..formats.hf_folder import is_hf_llama_folder
        if is_hf_llama_folder(path):
            from ..formats.hf_config import read_hf_config
            from ..models.llama import LlamaConfig
            return LlamaConfig.from_dict(dict(read_hf_config(path).model))
        from ..formats.source import refuse_unknown_model_type
        refuse_unknown_model_type(path)
        from ..formats.gpt2 import read_gpt2_config
        return read_gpt2_config(path / "config.json")
    return None


def check_sizes(config, sizes: dict, src: str | Path) -> int:
    """The block size to train on; ConfigError when a given size flag contradicts SRC's config.

    sizes maps PythiaConfig fields to what the user gave (None: not given)."""
    for name in SIZE_FLAGS:
        given, have = sizes.get(name), getattr(config, name)
        if given is not None and given != have:
            flag = "--" + name.replace("_", "-")
            raise ConfigError(f"{flag} {given} contradicts --init-from {str(src)!r}, whose {name} is {have}; "
                              f"drop {flag} (the model's sizes come from SRC)")
    block = sizes.get("block_size")
    if block is not None and block > config.block_size:
        raise ConfigError(f"--block-size {block} exceeds the context of --init-from {str(src)!r} "
                          f"({config.block_size} positions); use --block-size {config.block_size} or less")
    return block if block is not None else min(config.block_size, DEFAULT_BLOCK)


def finetune_config(train: dict):
    """TrainConfig: the fields the user gave over FINETUNE_DEFAULTS. A given --lr without --min-lr
    keeps the rate constant at that --lr."""
    from ..train import TrainConfig
    given = {k: v for k, v in train.items() if v is not None}
    merged = {**FINETUNE_DEFAULTS, **given}
    if "lr" in given and "min_lr" not in given:
        merged["min_lr"] = given["lr"]
    cfg = TrainConfig(**merged)
    cfg.validate()
    return cfg


def prepare_finetune(paths: list[Path], src: str | Path, *, model: dict | None = None,
                     train: dict | None = None, lora: dict | None = None, **trainer_kwargs):
    """A Trainer that fine-tunes SRC's weights on the files at paths (see module docstring).

    model: the size flags the user gave (None = not given); train: TrainConfig fields likewise;
    lora: {"rank", "alpha", "targets"} to train LoRA adapters on frozen SRC weights (pythia.lora);
    trainer_kwargs go to Trainer (out, log_file, on_progress)."""
    from ..text.bpe import EOT
    from ..corpora.prepared import open_corpus
    from ..train import Trainer, make_optimizer

    sizes = dict(model or {})
    train = dict(train or {})
    if lora is not None and train.get("lr") is None:
        from ..lora import DEFAULT_LR
        train["lr"] = DEFAULT_LR                # adapters start at 0: larger steps (pythia.lora.DEFAULT_LR)
    cfg = finetune_config(train)
    early = source_config(src)
    if early is not None:
        check_sizes(early, sizes, src)
    loaded = load_source(src)
    net, tokenizer = loaded.model, loaded.tokenizer
    if getattr(net, "quantized", None) is not None:
        raise ConfigError(f"--init-from {str(src)!r} holds int8 weights, which are for inference only (chat, "
                          f"generate, explain, eval); fine-tune the float32 model it was made from")
    block = check_sizes(net.config, sizes, src)
    if lora is not None:
        from ..lora import LoRAConfig, attach
        net = attach(net, LoRAConfig(lora["rank"], lora["alpha"], tuple(lora["targets"])), src, seed=cfg.seed)
    # files are joined by an end-of-document token where the model has one: GPT-2's <|endoftext|>,
    # a chat model's eos
    eos = loaded.template.eos_token if loaded.template is not None else None
    joiner = EOT if tokenizer.kind == "gpt2-bpe" else eos if tokenizer.kind == "hf-bpe" and eos else ""
    from .chats import build_chat_dataset, is_chat_data
    if is_chat_data(paths):                     # conversations: the loss on the assistant's turns only
        dataset = build_chat_dataset(paths, block, tokenizer, loaded.template)
    else:
        redo = (f"prepare it again with --gpt2 {src}" if tokenizer.kind == "gpt2-bpe" else
                "prepare it with that tokenizer") + ", or pass its text files to --data to be encoded with the model's tokenizer"
        dataset = open_corpus(paths, block, tokenizer=tokenizer, joiner=joiner, checkpoint=f"--init-from {str(src)!r}",
                              redo=redo)
    return Trainer(net, make_optimizer(net, cfg), dataset, cfg, tokenizer=tokenizer, chat=loaded.chat_meta(),
                   **trainer_kwargs)
