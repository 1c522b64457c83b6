"""Checkpoints: the whole training state in one `.npz`, written atomically, read without pickle.

Layout of the archive (every entry a plain NumPy array, so `allow_pickle=False` loads it):

    param/<name>   model weights, float32, Hugging Face names (of an int8 model: those kept in
                   float32); for LoRA adapters (meta "lora": rank, alpha, targets, base {path,
                   sha256}) the adapters alone, PEFT's names
    q8/<name>.q, q8/<name>.scales, q8/<name>.bias
                   an int8 model's matrices in Q8_0 (int8 blocks of 32, float32 scales; meta
                   "quantized": "q8_0"), by pythia.quant.model's names; loaded as they are
    opt/<key>      optimizer state ("m/<name>", "v/<name>", "t"), when saved with an optimizer
    tok/<key>      the tokenizer's arrays (tokenizer.to_arrays())
    meta           uint8 bytes of a JSON object: format name and version, model config,
                   tokenizer kind, step, train config, RNG state, and (trained on a
                   prepared corpus) that corpus's sources and hashes, checked on --resume

A save writes a temporary file next to the target and renames it over the target only once the
archive is complete and flushed, so an interrupted or failed save never leaves a half-written
file and never touches an existing checkpoint. Anything wrong with a file on load is a
`CheckpointError` whose message says what is wrong and what to do.
"""
from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import CheckpointError
from ..models import family, family_of
from .checkpoint_schema import FORMAT, FORMAT_VERSION


@dataclass
class Checkpoint:
    """What load_checkpoint returns: a ready model and tokenizer plus the state to resume from."""
    model: Any                                   # pythia.model.Pythia with the saved weights
    tokenizer: Any                               # SimpleTokenizer or the GPT-2 BPE tokenizer
    optimizer_arrays: dict[str, np.ndarray] | None
    step: int
    rng_state: dict | None
    train_config: dict = field(default_factory=dict)
    path: Path | None = None
    corpus: dict | None = None                   # the prepared corpus trained on (pythia.corpora.prepared identity)
    chat: dict | None = None                     # {"template": ChatTemplate fields, "stop_ids": [...]} or None


def _meta_bytes(meta: dict) -> np.ndarray:
    return np.frombuffer(json.dumps(meta, sort_keys=True).encode("utf-8"), dtype=np.uint8).copy()


def save_checkpoint(path: str | os.PathLike, model, tokenizer, *, optimizer=None, step: int = 0,
                    rng_state: dict | None = None, train_config: dict | None = None,
                    corpus: dict | None = None, chat: dict | None = None) -> None:
    """Write model, tokenizer and (optionally) optimizer, step, RNG state and train config to path.

    Atomic (pythia.system.atomic.atomic_write): the archive goes to a temporary file in the same
    directory, is flushed to disk, then renamed over path, keeping the replaced file's mode; a
    symlink is followed to the file it points to and only a regular file is replaced. On any failure the temporary
    file is removed and a file already at path is left as it was; a signal waits for the rename.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint path {str(path)!r} is a directory; give a file name such as "
                              f"{str(path / 'model.npz')!r}")
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: directory {str(parent)!r} does not "
                              f"exist; create it first or choose another --out")
    quantized = getattr(model, "quantized", None) is not None  # int8 matrices (pythia.quant.model)
    arrays: dict[str, np.ndarray] = {}
    if quantized:
        from ..quant.model import kept_params, quantized_arrays
        if optimizer is not None:
            raise CheckpointError("an int8 model has no optimizer state to save; save it without one")
        arrays.update({f"param/{k}": np.asarray(model.params[k], order="C") for k in kept_params(model)})
        arrays.update({f"q8/{k}": a for k, a in quantized_arrays(model).items()})
    else:
        for name, p in model.params.items():
            arrays[f"param/{name}"] = np.asarray(p, order="C")
    if optimizer is not None:
        for key, a in optimizer.state_arrays().items():
            arrays[f"opt/{key}"] = np.asarray(a, order="C")
    for key, a in tokenizer.to_arrays().items():
        arrays[f"tok/{key}"] = np.asarray(a, order="C")
    meta = {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "family": family_of(model),
        "model_config": dataclasses.asdict(model.config),
        "tokenizer_kind": tokenizer.kind,
        "step": int(step),
        "has_optimizer": optimizer is not None,
        "train_config": dict(train_config or {}),
        "rng_state": rng_state,
    }
    if corpus is not None:
        meta["corpus"] = corpus
    if getattr(model, "adapter_meta", None) is not None:
        meta["lora"] = model.adapter_meta()      # param/ holds the adapters; the base is referenced
    if chat is not None:
        meta["chat"] = chat                      # the chat template and stop ids of a converted chat model
    if quantized:
        from ..quant.model import SCHEME
        meta["quantized"] = SCHEME               # int8 matrices under q8/, for inference only
    arrays["meta"] = _meta_bytes(meta)

    from ..system.atomic import atomic_write
    try:
        atomic_write(path, lambda f: np.savez(f, **arrays))
    except OSError as e:
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {e.strerror or e}; "
                              f"check free disk space and permissions") from None


ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")    # a zip's first bytes: a member, or an empty archive


def _read_archive(path: Path, skip: str | tuple[str, ...] | None = None) -> dict[str, np.ndarray]:
    """Every entry of the .npz (but those whose name starts with skip, or one of skip's prefixes), read eagerly so that a
    truncated archive fails here.

    The file must be a regular file (pythia.system.inputs), start like a zip archive, hold only .npy
    members, and its members' declared sizes must fit in the memory available: so neither a
    device nor a crafted archive can make the load read or allocate without bound.
    """
    from ..system.inputs import open_regular
    from ..units import fmt_size
    from ..system.memory_budget import available_memory
    what = f"checkpoint {str(path)!r}"
    hint = "use another checkpoint or train a new one"
    f, size = open_regular(path, "checkpoint", CheckpointError, hint="give the .npz file a train run wrote")
    with f:
        head = f.read(4)
        if size == 0:
            raise CheckpointError(f"{what} is empty (0 bytes), not a Pythia checkpoint; {hint}")
        if head not in ZIP_MAGIC:
            raise CheckpointError(f"{what} is not a Pythia checkpoint: a checkpoint is an .npz (zip) archive but "
                                  f"this file starts with {head!r}; {hint}")
        f.seek(0)
        try:
            zf = zipfile.ZipFile(f)
        except zipfile.BadZipFile:
            raise CheckpointError(f"{what} is truncated or corrupt: its zip directory, stored at the end of the "
                                  f"file, is missing or damaged ({fmt_size(size)} on disk); {hint}") from None
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{what} cannot be read ({e}); {hint}") from None
        with zf:
            members = zf.infolist()
            odd = next((m.filename for m in members if not m.filename.endswith(".npy")), None)
            if odd is not None:
                raise CheckpointError(f"{what} is a zip archive but not an .npz checkpoint: its entry {odd!r} is "
                                      f"not a NumPy array; {hint}")
            declared = sum(m.file_size for m in members)
            free = available_memory()
        if free is not None and declared > free:
            raise CheckpointError(f"{what} holds {fmt_size(declared)} of arrays but only {fmt_size(free)} of "
                                  f"memory is available; free some memory or load it on a larger machine")
        f.seek(0)
        try:
            with np.load(f, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files if skip is None or not key.startswith(skip)}
        except Exception as e:  # BadZipFile, zlib.error, EOFError, ValueError, OSError, ...: a damaged member
            raise CheckpointError(f"{what} is truncated or corrupt: an array cannot be read "
                                  f"({type(e).__name__}: {e}); {hint}") from None


def _read_meta(arrays: dict[str, np.ndarray], what: str) -> dict:
    """The metadata object, every field checked against pythia.formats.checkpoint_schema."""
    from .checkpoint_schema import MetaError, validate_meta
    if "meta" not in arrays:
        raise CheckpointError(f"{what} is not a Pythia checkpoint (it has no 'meta' entry); "
                              f"use a file written by `python -m pythia train`")
    raw = arrays["meta"]
    try:
        if raw.dtype != np.uint8 or raw.ndim != 1:
            raise ValueError(f"meta is {raw.dtype} {raw.shape}, not 1-d uint8")
        meta = json.loads(raw.tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError("meta is not a JSON object")
    except (ValueError, RecursionError) as e:
        raise CheckpointError(f"{what} has an unreadable 'meta' entry ({e}); it is corrupt, "
                              f"use another checkpoint") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{what} is not a Pythia checkpoint (field format is {meta.get('format')!r}); "
                              f"use a file written by `python -m pythia train`")
    version = meta.get("version")
    if type(version) is int and version != FORMAT_VERSION:
        raise CheckpointError(f"{what} has format version {version!r} but this Pythia reads version "
                              f"{FORMAT_VERSION}; " + ("upgrade Pythia to load it" if version > FORMAT_VERSION
                                                       else "retrain or re-convert it with this version"))
    try:
        validate_meta(meta)
    except MetaError as e:
        raise CheckpointError(f"{what}: {e}; the file is damaged or was not written by Pythia, "
                              f"use another checkpoint") from None
    return meta


def load_checkpoint(path: str | os.PathLike, *, optimizer: bool = True, open_base=None,
                    quantized: bool = False, quantize: str | None = None) -> Checkpoint:
    """Read a checkpoint written by save_checkpoint; CheckpointError on anything wrong.

    optimizer=False leaves the optimizer state (twice the weights' size) unread, for a caller
    that only uses the model (chat, generate, export); optimizer_arrays is then None.
    open_base(path) -> LoadedModel opens the base model of a LoRA checkpoint (the caller passes
    pythia.formats.source.open_model, which itself reads checkpoints); without it such a
    checkpoint is refused.
    quantized=True accepts an int8 checkpoint (for inference); otherwise one is refused.
    quantize="int8" (with quantized=True) turns a float32 checkpoint's matrices into Q8_0 as each
    is read, so the float32 model is never whole in memory (pythia.quant.model.quantize_tensors);
    ConfigError when its sizes cannot be quantized."""
    from ..tokenizer import tokenizer_from_arrays

    path = Path(path)
    what = f"checkpoint {str(path)!r}"
    skip = () if optimizer else ("opt/",)
    stream = quantize is not None and quantized and not optimizer   # weights read as they are quantized
    arrays = _read_archive(path, skip=skip + ("param/",) if stream else skip or None)
    meta = _read_meta(arrays, what)
    if stream and (isinstance(meta.get("lora"), dict) or meta.get("quantized")):
        stream = False                                          # adapters / int8 already: read as usual
        arrays = _read_archive(path, skip=skip or None)

    Config, Model, param_shapes = family(meta.get("family", "gpt2"))
    try:
        config = Config.from_dict(dict(meta["model_config"]))
    except Exception as e:
        raise CheckpointError(f"{what} has an invalid model config ({e}); it is corrupt, use another checkpoint") from None

    params = {k[len("param/"):]: a for k, a in arrays.items() if k.startswith("param/")}
    if stream:
        model = _quantized_while_reading(path, Model, config, param_shapes(config), what)
    for name, a in params.items():
        if a.dtype != np.float32:
            raise CheckpointError(f"{what}: weight {name!r} is {a.dtype}, expected float32; it is corrupt")
        if not np.isfinite(a).all():
            raise CheckpointError(f"{what}: weight {name!r} holds NaN or infinite values; "
                                  f"use an earlier checkpoint")
    if isinstance(meta.get("lora"), dict):                     # LoRA adapters on a base read from its path
        if open_base is None:
            raise CheckpointError(f"{what} holds LoRA adapters, which need their base model; open it with "
                                  f"--model {str(path)!r}")
        from ..lora import open_adapted
        model = open_adapted(meta["lora"], params, what, open_base)
    elif meta.get("quantized"):
        model = _quantized_model(Model, config, params, arrays, what, allowed=quantized)
    elif stream:
        pass                                                   # the int8 model read above
    else:
        _check_param_shapes(params, param_shapes(config), config, what)  # before allocating the model
        model = Model(config, init=False)                      # every weight is loaded next
        model.load_params(params)

    kind = meta["tokenizer_kind"]
    from ..tokenizer import TOKENIZER_KINDS
    if kind not in TOKENIZER_KINDS:
        raise CheckpointError(f"{what} has a tokenizer of kind {kind!r}, which this Pythia does not know "
                              f"(it knows {', '.join(map(repr, TOKENIZER_KINDS))}); use a checkpoint "
                              f"written by this version")
    tok_arrays = {k[len("tok/"):]: a for k, a in arrays.items() if k.startswith("tok/")}
    try:
        tokenizer = tokenizer_from_arrays(meta["tokenizer_kind"], tok_arrays)
    except (ValueError, KeyError) as e:
        raise CheckpointError(f"{what} has an unreadable tokenizer ({e}); it is corrupt, use another checkpoint") from None
    _check_tokenizer_fits(tokenizer, config.vocab_size, what)
    chat = meta.get("chat") if isinstance(meta.get("chat"), dict) else None
    chat = chat or getattr(model, "base_chat", None)           # an adapter chats as its base does
    bad = [i for i in (chat or {}).get("stop_ids", []) if i >= config.vocab_size]
    if bad:
        raise CheckpointError(f"{what}: field chat.stop_ids holds id {bad[0]}, outside the vocabulary of "
                              f"{config.vocab_size}; it is corrupt, use another checkpoint")

    opt = None
    if meta.get("has_optimizer") and optimizer:
        opt = {k[len("opt/"):]: a for k, a in arrays.items() if k.startswith("opt/")}
        _check_optimizer_arrays(opt, model.params, what)

    return Checkpoint(model=model, tokenizer=tokenizer, optimizer_arrays=opt, step=meta["step"],
                      rng_state=meta.get("rng_state"), train_config=dict(meta.get("train_config") or {}),
                      path=path, corpus=meta.get("corpus") if isinstance(meta.get("corpus"), dict) else None,
                      chat=chat)


def _quantized_while_reading(path: Path, Model, config, expected: dict, what: str):
    """The int8 model of a float32 checkpoint, each weight read from the archive straight into
    the buffer its matrix is quantized from; the checks of a full load (names, shapes, float32,
    finite) are made on each weight as it arrives."""
    from ..errors import ConfigError
    from ..quant.model import quantize_tensors
    from .npz_members import NpzMembers
    hint = "it is corrupt, use another checkpoint"
    try:
        members = NpzMembers(path)
    except (OSError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{what} cannot be read ({e}); {hint}") from None
    with members:
        names = {k[len("param/"):] for k in members.names if k.startswith("param/")}
        for name in expected:
            if name not in names:
                raise CheckpointError(f"{what}: weight {name!r} is missing, though field model_config needs it; {hint}")

        def read(name: str, out: np.ndarray) -> None:
            try:
                members.read_into("param/" + name, out)
            except ValueError as e:
                raise CheckpointError(f"{what}: weight {name!r} {e}; {hint}") from None
            except Exception as e:  # BadZipFile, zlib.error, EOFError, OSError: a damaged member
                raise CheckpointError(f"{what} is truncated or corrupt: weight {name!r} cannot be read "
                                      f"({type(e).__name__}: {e}); {hint}") from None
            if not np.isfinite(out.sum(dtype=np.float64)):     # NaN/inf anywhere, no (shape) bool temporary
                raise CheckpointError(f"{what}: weight {name!r} holds NaN or infinite values; use an earlier checkpoint")
        try:
            return quantize_tensors(Model, config, read)
        except ValueError as e:                                 # sizes Q8_0 cannot hold
            raise ConfigError(str(e)) from None


def _quantized_model(Model, config, params: dict, arrays: dict, what: str, *, allowed: bool):
    """The int8 model of a checkpoint with meta "quantized"; refused unless allowed (training)."""
    from ..quant.model import model_from_quantized
    if not allowed:
        raise CheckpointError(f"{what} holds int8 weights, which are for inference only (chat, generate, explain, "
                              f"eval); train, --init-from, --resume and export need the float32 model it was made from")
    q8 = {k[len("q8/"):]: a for k, a in arrays.items() if k.startswith("q8/")}
    try:
        return model_from_quantized(Model, config, params, q8)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{what}: {e}; it is corrupt, use another checkpoint") from None


def _check_param_shapes(params: dict[str, np.ndarray], expected: dict, config, what: str) -> None:
    """The weights must be exactly those model_config implies, by name and shape."""
    sizes = ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(config).items())
    for name, shape in expected.items():
        if name not in params:
            raise CheckpointError(f"{what}: weight {name!r} is missing, though field model_config ({sizes}) "
                                  f"needs it; it is corrupt, use another checkpoint")
        if params[name].shape != shape:
            raise CheckpointError(f"{what}: weight {name!r} has shape {params[name].shape} but field model_config "
                                  f"({sizes}) needs {shape}; it is corrupt, use another checkpoint")
    extra = sorted(set(params) - set(expected))
    if extra:
        raise CheckpointError(f"{what}: weight {extra[0]!r} is not part of the model field model_config describes "
                              f"({sizes}); it is corrupt, use another checkpoint")


def _check_tokenizer_fits(tokenizer, vocab_size: int, what: str) -> None:
    """Every id the model can emit must be one the tokenizer decodes.

    A character tokenizer decodes exactly ids 0..len-1, so its size must equal the model's
    vocabulary; a smaller one would fail only when sampling first picks an id past its end. GPT-2's
    BPE may be smaller than a padded vocabulary (it decodes a padding id as U+FFFD), never larger.
    """
    n, char = tokenizer.vocab_size, tokenizer.kind == "char"
    if n > vocab_size or (char and n != vocab_size):
        rule = "equal for a character model" if char else "at most equal"
        raise CheckpointError(f"{what}: its tokenizer has {n} tokens but field model_config.vocab_size is "
                              f"{vocab_size}; they must be {rule}; it is corrupt, use another checkpoint")


def _check_optimizer_arrays(opt: dict[str, np.ndarray], params: dict[str, np.ndarray], what: str) -> None:
    """The optimizer state must hold m and v of every weight's shape and a step count t."""
    t = opt.get("t")
    if t is None or t.shape != () or not np.issubdtype(t.dtype, np.integer) or int(t) < 0:
        raise CheckpointError(f"{what}: its optimizer state lacks a valid step count 't'; it is corrupt, "
                              f"use another checkpoint")
    for name, p in params.items():
        for moment in ("m", "v"):
            a = opt.get(f"{moment}/{name}")
            if a is None or a.shape != p.shape or a.dtype != np.float32:
                got = "missing" if a is None else f"{a.dtype} of shape {a.shape}"
                raise CheckpointError(f"{what}: optimizer state {moment}/{name} is {got}, expected float32 of "
                                      f"shape {p.shape}; it is corrupt, use another checkpoint")
            if not np.isfinite(a).all() or (moment == "v" and (a < 0).any()):
                raise CheckpointError(f"{what}: optimizer state {moment}/{name} holds "
                                      f"{'negative, ' if moment == 'v' else ''}NaN or infinite values; "
                                      f"it is corrupt, use another checkpoint")


def check_resume_sizes(ckpt: Checkpoint, **sizes: int | None) -> None:
    """CheckpointError when a model size the user asked for (not None) differs from the checkpoint's.

    Resuming continues the saved model, so its sizes cannot change; the CLI passes the size flags
    the user gave explicitly (e.g. d_model=64) and None for the rest.
    """
    saved = dataclasses.asdict(ckpt.model.config)
    for name, value in sizes.items():
        if value is not None and name in saved and saved[name] != value:
            flag = "--" + name.replace("_", "-")
            raise CheckpointError(f"checkpoint {str(ckpt.path)!r} has {name} {saved[name]} but {flag} {value} was "
                                  f"given; drop the model-size flags when resuming, or start a new model "
                                  f"without --resume")
