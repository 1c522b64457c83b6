"""Load Hugging Face GPT-2 weights into Pythia, with NumPy alone.

A GPT-2 directory in the usual Hugging Face layout holds
    config.json         sizes and options (n_embd, n_layer, n_head, n_positions, vocab_size, ...)
    model.safetensors   weights; names with or without the "transformer." prefix
    vocab.json, merges.txt   the byte-level BPE tokenizer

Pythia's parameters already carry GPT-2's names and GPT-2's Conv1D (in, out) layout (y = x W + b),
so the mapping is only: strip "transformer.", "wte.weight" -> "wte", "wpe.weight" -> "wpe", drop
the attention-mask buffers ("h.i.attn.bias", "h.i.attn.masked_bias"), and accept an lm_head that
is tied to wte. Every option Pythia does not implement is refused with a GPT2Error rather than
loaded into a model that would compute something else.

Sizes: V vocabulary, C n_embd, L n_layer; the position table has n_positions rows.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..text.bpe import GPT2Tokenizer, read_gpt2_json
from ..errors import ConfigError, GPT2Error
from ..model import Pythia, PythiaConfig
from ..tokenizer import SimpleTokenizer
from .safetensors import FLOAT_DTYPES, SafetensorsFile

_TANH_GELUS = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")  # all 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3)))
_BUFFER = re.compile(r"h\.\d+\.attn\.(bias|masked_bias)")    # causal-mask buffers, not weights
_HINT = "Pythia loads GPT-2 (GPT2LMHeadModel) checkpoints only"


def read_gpt2_config(path: str | Path) -> PythiaConfig:
    """The PythiaConfig of a Hugging Face GPT-2 config.json; GPT2Error on anything Pythia cannot run."""
    path = Path(path)
    cfg = read_gpt2_json(path)
    if not isinstance(cfg, dict):
        raise GPT2Error(f"{path} must hold a JSON object")

    def refuse(what: str) -> GPT2Error:
        return GPT2Error(f"{path}: {what}; {_HINT}")

    model_type = cfg.get("model_type", "gpt2")
    if model_type != "gpt2":
        raise refuse(f"model_type is {model_type!r}, not 'gpt2'")
    archs = cfg.get("architectures") or ["GPT2LMHeadModel"]
    if not any(a in ("GPT2LMHeadModel", "GPT2Model") for a in archs):
        raise refuse(f"architectures {archs} has no GPT2LMHeadModel")
    act = cfg.get("activation_function", "gelu_new")
    if act not in _TANH_GELUS:
        raise refuse(f"activation_function {act!r} is not supported (Pythia uses GPT-2's tanh GELU, 'gelu_new')")
    eps = cfg.get("layer_norm_epsilon", 1e-5)
    if not isinstance(eps, (int, float)) or abs(eps - 1e-5) > 1e-12:
        raise refuse(f"layer_norm_epsilon {eps!r} is not supported (Pythia's LayerNorm uses 1e-5)")
    for key, ok in (("scale_attn_weights", True), ("scale_attn_by_inverse_layer_idx", False),
                    ("add_cross_attention", False), ("tie_word_embeddings", True)):
        if key in cfg and bool(cfg[key]) != ok:
            raise refuse(f"{key}={cfg[key]!r} is not supported")

    sizes = {}
    for key in ("vocab_size", "n_embd", "n_layer", "n_head"):
        sizes[key] = cfg.get(key)
    sizes["n_positions"] = cfg.get("n_positions", cfg.get("n_ctx"))
    for key, v in sizes.items():
        if v is None:
            raise GPT2Error(f"{path} lacks {key!r}; it is not a complete GPT-2 config")
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise GPT2Error(f"{path}: {key} must be a positive integer, got {v!r}")
    n_inner = cfg.get("n_inner")
    if n_inner is not None and n_inner != 4 * sizes["n_embd"]:
        raise refuse(f"n_inner={n_inner!r} is not supported (Pythia's MLP is 4 * n_embd = {4 * sizes['n_embd']})")
    config = PythiaConfig(vocab_size=sizes["vocab_size"], block_size=sizes["n_positions"],
                          d_model=sizes["n_embd"], n_layer=sizes["n_layer"], n_head=sizes["n_head"])
    try:
        config.validate()
    except ConfigError as e:
        raise GPT2Error(f"{path}: {e}") from None
    return config


def _expected_shapes(cfg: PythiaConfig) -> dict[str, tuple[int, ...]]:
    """Pythia's parameter names and shapes (GPT-2's, without the 'transformer.' prefix)."""
    V, C, L = cfg.vocab_size, cfg.d_model, cfg.n_layer
    shapes = {"wte": (V, C), "wpe": (cfg.block_size, C), "ln_f.weight": (C,), "ln_f.bias": (C,)}
    for i in range(L):
        p = f"h.{i}."
        shapes.update({
            p + "ln_1.weight": (C,), p + "ln_1.bias": (C,), p + "ln_2.weight": (C,), p + "ln_2.bias": (C,),
            p + "attn.c_attn.weight": (C, 3 * C), p + "attn.c_attn.bias": (3 * C,),
            p + "attn.c_proj.weight": (C, C), p + "attn.c_proj.bias": (C,),
            p + "mlp.c_fc.weight": (C, 4 * C), p + "mlp.c_fc.bias": (4 * C,),
            p + "mlp.c_proj.weight": (4 * C, C), p + "mlp.c_proj.bias": (C,),
        })
    return shapes


def _pythia_name(hf_name: str) -> str:
    """'transformer.wte.weight' -> 'wte', 'h.0.ln_1.weight' -> 'h.0.ln_1.weight'."""
    name = hf_name.removeprefix("transformer.")
    return {"wte.weight": "wte", "wpe.weight": "wpe"}.get(name, name)


def _plan(f: SafetensorsFile, config: PythiaConfig) -> tuple[dict[str, str], str | None]:
    """Which file tensor holds each Pythia parameter (every name and shape checked, nothing read),
    and the name of an lm_head tensor if the file has one."""
    expected = _expected_shapes(config)
    plan: dict[str, str] = {}
    head = None
    for hf_name in f.keys():
        name = _pythia_name(hf_name)
        if _BUFFER.fullmatch(name):
            continue
        if name == "lm_head.weight":
            head = hf_name
            continue
        if name not in expected:
            raise GPT2Error(f"{f.path}: unexpected tensor {hf_name!r}; {_HINT} (n_layer={config.n_layer})")
        if name in plan:
            raise GPT2Error(f"{f.path}: tensor {name!r} appears twice (with and without 'transformer.')")
        if f.shape(hf_name) != expected[name]:
            raise GPT2Error(f"{f.path}: tensor {hf_name!r} has shape {list(f.shape(hf_name))}, config.json "
                            f"implies {list(expected[name])}; the weights and config do not match")
        if f.dtype(hf_name) not in FLOAT_DTYPES:
            raise GPT2Error(f"{f.path}: tensor {hf_name!r} has dtype {f.dtype(hf_name)}; Pythia reads only "
                            f"{', '.join(FLOAT_DTYPES)} weights")
        plan[name] = hf_name
    missing = [n for n in expected if n not in plan]
    if missing:
        raise GPT2Error(f"{f.path} lacks tensor {missing[0]!r} ({len(missing)} missing); the file is incomplete "
                        "or not a GPT-2 model")
    return plan, head


def _check_head(f: SafetensorsFile, head: str | None, wte: np.ndarray) -> None:
    """Pythia's head is tied to wte: an lm_head in the file must be that same matrix (compared a
    slab of rows at a time, so no second (V, C) array is ever held)."""
    if head is not None:
        same = f.shape(head) == wte.shape
        slab = np.empty((min(1024, len(wte)),) + wte.shape[1:], np.float32)  # (rows, C)
        for lo in range(0, len(wte), len(slab)) if same else ():
            part = slab[:min(len(slab), len(wte) - lo)]
            f.read_into(head, part, lo)
            same = np.array_equal(part, wte[lo:lo + len(part)])
            if not same:
                break
        if not same:
            raise GPT2Error(f"{f.path}: lm_head.weight differs from wte; Pythia supports only the tied head")


def all_finite(a: np.ndarray) -> bool:
    """Whether every value of a is finite, without a boolean temporary of a's size (np.isfinite of
    GPT-2-small's wte alone is 8% of its weight bytes, on top of the model while it loads). A
    float64 sum of float32 values cannot overflow (3.4e38 x 1e9 elements << 1.8e308), and NaN or
    inf anywhere makes it non-finite (inf - inf is NaN), so the sum is finite exactly when every
    value is."""
    return bool(np.isfinite(a.sum(dtype=np.float64)))


def read_tokenizer(d: Path):
    """The tokenizer of a GPT-2 folder: byte-level BPE from vocab.json + merges.txt, or a character
    vocabulary from the tokenizer.json that Pythia's export writes for character models."""
    if not (d / "vocab.json").exists() and not (d / "merges.txt").exists() and (d / "tokenizer.json").is_file():
        from ..text.tokenizer_json import read_char_tokenizer_json
        return read_char_tokenizer_json(d / "tokenizer.json")
    return GPT2Tokenizer.from_dir(d)


def load_gpt2(directory: str | Path, *, quantize: str | None = None) -> tuple[Pythia, GPT2Tokenizer | SimpleTokenizer]:
    """The Pythia model and GPT-2 tokenizer of a Hugging Face GPT-2 directory (see module docstring).
    quantize="int8": the model with Q8_0 matrices, each quantized as it is read (the float32 model
    is never whole in memory); ConfigError when its sizes cannot be quantized."""
    d = Path(directory)
    if not d.is_dir():
        from ..system.inputs import file_kind
        what = f"is {file_kind(d.stat().st_mode)}, not a folder" if d.exists() else "not found"
        raise GPT2Error(f"GPT-2 directory {str(d)!r} {what}; give a folder holding config.json, "
                        "model.safetensors, vocab.json and merges.txt")
    config = read_gpt2_config(d / "config.json")
    tokenizer = read_tokenizer(d)
    if tokenizer.vocab_size > config.vocab_size:
        raise GPT2Error(f"{d}: the tokenizer has {tokenizer.vocab_size} tokens but config.json's vocab_size is "
                        f"{config.vocab_size}; vocab.json and config.json are from different models")
    weights = d / "model.safetensors"
    if not weights.is_file():
        legacy = [n for n in ("pytorch_model.bin", "tf_model.h5", "model.safetensors.index.json") if (d / n).exists()]
        if legacy:
            raise GPT2Error(f"{weights} not found ({d} has {legacy[0]}); Pythia reads a single model.safetensors: "
                            "download that file from the model's page, or save the model with "
                            "save_pretrained(..., safe_serialization=True)")
    f = SafetensorsFile(weights)
    try:
        plan, head = _plan(f, config)
        if quantize is not None:
            return _quantized_gpt2(f, plan, head, config), tokenizer
        model = Pythia(config, init=False)                     # every weight is loaded next
        for name, hf_name in plan.items():
            # read from the file straight into the model's buffer: mapping the file instead
            # would count its pages in this process's memory beside the model's copy
            f.read_into(hf_name, model.params[name])
        _check_head(f, head, model.params["wte"])
    finally:
        f.close()
    for name, p in model.params.items():
        if not all_finite(p):
            raise GPT2Error(f"{weights}: tensor {name!r} holds NaN or infinite values; the file is corrupt")
    return model, tokenizer


def _quantized_gpt2(f: SafetensorsFile, plan: dict[str, str], head: str | None, config: PythiaConfig):
    """The int8 model of the file's weights, one matrix at a time (pythia.quant.model.quantize_tensors),
    each tensor checked as it is read."""
    from ..quant.model import quantize_tensors

    def read(name: str, out: np.ndarray) -> None:
        f.read_into(plan[name], out)                           # no mapping: only `out` holds the data
        if not all_finite(out):
            raise GPT2Error(f"{f.path}: tensor {name!r} holds NaN or infinite values; the file is corrupt")
        if name == "wte":
            _check_head(f, head, out)
    try:
        return quantize_tensors(Pythia, config, read)
    except ValueError as e:                                    # sizes Q8_0 cannot hold
        raise ConfigError(str(e)) from None


def convert_gpt2(directory: str | Path, out: str | Path, *, overwrite: bool = False) -> Path:
    """Write a GPT-2 directory as a Pythia checkpoint (.npz) at out; refuses to replace a file unless overwrite."""
    from .checkpoint import save_checkpoint
    out = Path(out)
    if out.exists() and not overwrite:
        raise GPT2Error(f"{out} already exists; choose another --out or delete it first")
    model, tokenizer = load_gpt2(directory)
    save_checkpoint(out, model, tokenizer, step=0)
    return out
