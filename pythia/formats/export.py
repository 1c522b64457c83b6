"""Export a Pythia checkpoint as a Hugging Face folder that `transformers` loads: GPT-2's layout
for a GPT-2-family model (below), Llama's or Qwen2's for a Llama-family one (pythia.formats.hf_export).

    config.json        GPT-2's config: model_type "gpt2", n_embd, n_layer, n_head, n_positions,
                       vocab_size, activation_function "gelu_new" (GPT-2's tanh GELU, Pythia's),
                       layer_norm_epsilon 1e-5, tied embeddings, no dropout (Pythia trains without)
    model.safetensors  every weight as F32, named as transformers saves GPT2LMHeadModel
                       ("transformer.h.0.attn.c_attn.weight", ...; the tied lm_head is not stored),
                       written by pythia.formats.safetensors.save_safetensors
    vocab.json, merges.txt           for a byte-level BPE model: GPT-2's own, or one trained by
                                     `prepare --tokenizer bpe` (rewritten by pythia.text.bpe_export)
    tokenizer.json, tokenizer_config.json   for a character model (see pythia.text.tokenizer_json)

Pythia's parameters already have GPT-2's names and its Conv1D (in, out) layout, so no tensor is
transposed or renamed beyond the prefix. `GPT2LMHeadModel.from_pretrained(DIR)` loads the folder
and Pythia reads it back (`chat --gpt2 DIR`, `convert-gpt2 DIR`).

The folder is written whole or not at all: every file goes into a temporary sibling folder,
which is renamed to DIR only once complete, so an interrupted export leaves no folder that looks
finished. An existing DIR that is not empty, or a file at DIR, is refused unless `force`; then
it is replaced only after the new folder is complete, and only when it holds nothing but the
files an export writes (EXPORT_FILES). DIR is claimed (locked) while it is written; '.', a
folder holding the working directory, a mount point and a symlink are refused before anything
is touched (pythia.system.claims).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

from ..errors import ConfigError
from ..system.claims import check_replaceable_directory, claim_output
from ..units import fmt_size
from .hf_export import write_json

LAYER_NORM_EPS = 1e-5   # what pythia.kernels.layernorm_forward uses
# every name write_hf_folder may write: --force replaces a folder holding these alone
EXPORT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer.json",
                "tokenizer_config.json", "adapter_config.json", "adapter_model.safetensors")


def gpt2_config(model_config, tokenizer) -> dict:
    """config.json for a model of these sizes (see module docstring)."""
    c = model_config
    eot = getattr(tokenizer, "eot_id", None)
    return {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2",
        "vocab_size": c.vocab_size, "n_positions": c.block_size, "n_ctx": c.block_size,
        "n_embd": c.d_model, "n_layer": c.n_layer, "n_head": c.n_head, "n_inner": None,
        "activation_function": "gelu_new", "layer_norm_epsilon": LAYER_NORM_EPS,
        "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0, "initializer_range": 0.02,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": True, "bos_token_id": eot, "eos_token_id": eot, "torch_dtype": "float32",
    }


def hf_name(name: str) -> str:
    """Pythia's parameter name -> the key transformers writes for GPT2LMHeadModel."""
    return "transformer." + {"wte": "wte.weight", "wpe": "wpe.weight"}.get(name, name)


def write_hf_folder(folder: Path, model, tokenizer, chat: dict | None = None) -> None:
    """Write the model's Hugging Face layout into an existing empty folder."""
    from ..models import family_of
    from .hf_export import write_llama_folder
    writers = {"gpt2": write_gpt2_folder, "llama": write_llama_folder}   # by pythia.models family name
    writers[family_of(model)](folder, model, tokenizer, chat)


def write_gpt2_folder(folder: Path, model, tokenizer, chat: dict | None = None) -> None:
    """Write the GPT-2 layout into an existing empty folder."""
    from .safetensors import save_safetensors
    from ..text.tokenizer_json import char_tokenizer_config, char_tokenizer_json
    if tokenizer.kind == "byte-bpe":                 # the same ids in GPT-2's string form
        from ..text.bpe_export import as_gpt2_tokenizer
        tokenizer = as_gpt2_tokenizer(tokenizer)
    write_json(folder / "config.json", gpt2_config(model.config, tokenizer))
    save_safetensors(folder / "model.safetensors", {hf_name(k): p for k, p in model.params.items()},
                     metadata={"format": "pt"})
    if tokenizer.kind == "gpt2-bpe":
        write_json(folder / "vocab.json", tokenizer.encoder)
        merges = "".join(f"{a} {b}\n" for a, b in tokenizer.merges)
        (folder / "merges.txt").write_text("#version: 0.2\n" + merges, encoding="utf-8")
        special = {"bos_token": tokenizer.special_tokens[0], "eos_token": tokenizer.special_tokens[0],
                   "unk_token": tokenizer.special_tokens[0]} if tokenizer.special_tokens else {}
        write_json(folder / "tokenizer_config.json", {"tokenizer_class": "GPT2Tokenizer", "add_prefix_space": False,
                                                      "model_max_length": model.config.block_size, **special})
    elif tokenizer.kind == "char":
        write_json(folder / "tokenizer.json", char_tokenizer_json(tokenizer))
        write_json(folder / "tokenizer_config.json", char_tokenizer_config(model.config.block_size))
    else:
        raise ConfigError(f"cannot export a tokenizer of kind {tokenizer.kind!r}; export handles 'char', "
                          f"'gpt2-bpe' and 'byte-bpe' models")


def check_export_target(out: str | Path, force: bool) -> Path:
    """The folder to write; ConfigError when it would replace something without force."""
    out = Path(out)
    parent = out.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(parent)!r} does not exist; create it first "
                          f"or choose another --out")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {str(out)!r}: directory {str(parent.resolve())!r} is not writable; choose "
                          f"a folder in a directory you can write to")
    check_replaceable_directory(out, "--out")          # '.', the working directory, a mount point
    if out.is_symlink():
        raise ConfigError(f"--out {str(out)!r} is a symbolic link; export writes a real folder, so give the "
                          f"folder it points to ({os.path.realpath(out)!r}) or a new name")
    if out.exists() and not out.is_dir():
        kind = "a file" if out.is_file() else "not a regular file or folder (a device, FIFO or socket)"
        raise ConfigError(f"--out {str(out)!r} is {kind}, and export writes a folder; choose a new folder "
                          f"name (--force replaces only a folder)")
    if out.is_dir() and any(out.iterdir()) and not force:
        raise ConfigError(f"--out {str(out)!r} is a folder that is not empty; choose a new folder, or add "
                          f"--force to replace it")
    check_replaceable_directory(out, "--out", replace=force, owned=EXPORT_FILES)   # '.', a mount, foreign files
    return out


def export(checkpoint: str | Path, out: str | Path, *, force: bool = False, adapter_only: bool = False) -> Path:
    """Write the checkpoint as a Hugging Face folder at out (see module docstring); a LoRA
    checkpoint merged, or with adapter_only its adapter in PEFT's layout (pythia.formats.lora_export)."""
    from .checkpoint import load_checkpoint
    out = check_export_target(out, force)
    src = Path(checkpoint).resolve()
    if out.is_dir() and (out.resolve() == src or out.resolve() in src.parents):
        raise ConfigError(f"--out {str(out)!r} holds the checkpoint being exported, {str(checkpoint)!r}, and "
                          f"replacing the folder would delete it; choose another folder")
    # claimed (locked) while it is written: a second export onto out is refused naming this process
    with claim_output(out, flag="--out", replace=force, directory=True, owned=EXPORT_FILES):
        from .source import open_model
        ckpt = load_checkpoint(checkpoint, optimizer=False, open_base=open_model)  # a LoRA checkpoint opens its base
        adapted = getattr(ckpt.model, "adapter_meta", None) is not None
        if adapter_only:
            if not adapted:
                raise ConfigError(f"--adapter-only writes a LoRA adapter, but {str(checkpoint)!r} is a full model "
                                  f"(trained without --lora); drop --adapter-only to export the whole model")
            from .lora_export import write_adapter
            return write_folder(out, lambda tmp: write_adapter(tmp, ckpt.model), force=force)
        model = ckpt.model.merged() if adapted else ckpt.model   # W + (alpha/r) B A: a plain model of the family
        return save_hf(out, model, ckpt.tokenizer, force=force, chat=ckpt.chat)


def save_hf(out: str | Path, model, tokenizer, *, force: bool = False, chat: dict | None = None) -> Path:
    """Write model and tokenizer as a Hugging Face folder at out, atomically (module docstring)."""
    return write_folder(out, lambda tmp: write_hf_folder(tmp, model, tokenizer, chat), force=force)


def write_folder(out: str | Path, write, *, force: bool = False) -> Path:
    """Run write(tmp) on a new temporary sibling folder of out, then rename it to out (whole or not at all)."""
    from ..system.atomic import install_directory, new_directory
    out = check_export_target(out, force)
    tmp = new_directory(out)
    try:
        write(tmp)
        install_directory(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            raise ConfigError(f"cannot write {str(out)!r}: {e.strerror or e}; check free disk space and "
                              f"permissions") from None
        raise
    return out


def describe(out: Path) -> str:
    """One line naming what was written."""
    files = sorted(p.name for p in out.iterdir())
    size = sum(p.stat().st_size for p in out.iterdir())
    return f"wrote {out}/ ({', '.join(files)}; {fmt_size(size)})"
