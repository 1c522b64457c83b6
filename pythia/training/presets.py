"""Presets: named sets of model and training values for `train` and `train-chat`.

A preset fills in every training flag the user did not give; a flag given on the command line
always wins. The names:

    seed         the seed's numbers (the default): a small model that trains in seconds
    chat         the best chat that about a minute of training on 2 cores buys on the bundled corpus
    shakespeare  nanoGPT's CPU recipe for Tiny Shakespeare (pass its text with --data)
"""
from __future__ import annotations

from ..errors import ConfigError

MODEL_KEYS = ("block_size", "d_model", "n_layer", "n_head")

PRESETS: dict[str, dict[str, float | int]] = {
    # The seed's BATCH_SIZE=8, BLOCK_SIZE=32, D_MODEL=48, N_LAYER=3, STEPS=500 and the project's
    # defaults for the rest; equal to PythiaConfig's and TrainConfig's defaults (a test holds them equal).
    "seed": dict(block_size=32, d_model=48, n_layer=3, n_head=4, steps=500, batch_size=8, lr=3e-3,
                 min_lr=3e-4, warmup_steps=50, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                 eval_interval=100, eval_iters=20, seed=1337, grad_accum=1),
    # The best of the runs in benchmarks/README.md ("How the chat preset was chosen").
    "chat": dict(block_size=128, d_model=128, n_layer=3, n_head=4, steps=2000, batch_size=8, lr=3e-3,
                 min_lr=3e-4, warmup_steps=100, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                 eval_interval=500, eval_iters=20, seed=1337, grad_accum=1),
    # nanoGPT's CPU recipe as README's Tiny Shakespeare section gives it.
    "shakespeare": dict(block_size=64, d_model=128, n_layer=4, n_head=4, steps=2000, batch_size=12, lr=1e-3,
                        min_lr=1e-4, warmup_steps=100, weight_decay=0.1, beta2=0.99, grad_clip=1.0,
                        eval_interval=250, eval_iters=20, seed=1337, grad_accum=1),
}
DEFAULT = "seed"
# Sampling the chat of train-chat starts with (ChatSettings fields); a preset not named keeps the
# chat's defaults. /temp in the chat changes it.
CHAT_SAMPLING: dict[str, dict[str, float]] = {"chat": dict(temperature=0.5)}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> dict[str, float | int]:
    """The values of preset `name`; ConfigError listing the names when there is no such preset."""
    try:
        return dict(PRESETS[name])
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def chat_sampling(name: str | None) -> dict[str, float]:
    """The ChatSettings values preset `name` gives train-chat's chat (empty: the chat's defaults)."""
    return dict(CHAT_SAMPLING.get(name or DEFAULT, {}))
