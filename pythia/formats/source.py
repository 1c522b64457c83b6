"""Any model Pythia runs, from where it lives: a Pythia checkpoint (.npz), a Hugging Face GPT-2
folder, or a Hugging Face Llama-family folder (model_type llama or qwen2), told apart by looking.

    m = open_model("smollm2")          # ConfigError / GPT2Error / CheckpointError, one line
    m.model, m.tokenizer, m.description
    m.template                         # ChatTemplate of a chat model, else None (m.template_error says why)
    m.stop_ids                         # ids a reply or completion ends at (end of turn, eos)
    m.prompt_ids("The sea")            # the prompt as the model's own tokenizer frames it (BOS and all)
    open_model("gpt2", quantize="int8")  # every matrix in Q8_0 int8 (pythia.quant.model); an int8
                                       # checkpoint is int8 whatever quantize says

A Llama-family folder is read tensor by tensor with file reads straight into the model's flat
buffer (a BF16 or F16 file converted through one small buffer), so loading never holds more than
the fp32 model plus a couple of megabytes.
"""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .chat_template import ChatTemplate, chat_template_from_config


@dataclass
class LoadedModel:
    model: Any
    tokenizer: Any
    description: str                   # for banners: where it came from and what it is
    template: ChatTemplate | None = None
    stop_ids: list[int] = field(default_factory=list)
    template_error: str | None = None  # why a folder that should have a chat template has none
    jinja: str | None = None           # the folder's chat template text (export writes it back)
    checkpoint: Any = None             # the pythia.formats.checkpoint.Checkpoint, when read from one

    def prompt_ids(self, text: str) -> list[int]:
        """text encoded as the model's tokenizer frames a prompt (a Hugging Face tokenizer adds its
        BOS, as transformers' tokenizer(text) does); other tokenizers encode text as it is."""
        if self.tokenizer.kind == "hf-bpe":
            return self.tokenizer.encode(text, add_special_tokens=True)
        return self.tokenizer.encode(text)

    def chat_meta(self) -> dict | None:
        """The template and stop ids as a checkpoint records them (meta "chat"), or None."""
        if self.template is None:
            return None
        fields = {k: v for k, v in dataclasses.asdict(self.template).items() if v is not None}
        out = {"template": fields, "stop_ids": [int(i) for i in self.stop_ids]}
        if self.jinja:
            out["jinja"] = self.jinja
        return out


def open_model(src: str | os.PathLike, *, chat_format: str | None = None, folder: bool = False,
               quantize: str | None = None) -> LoadedModel:
    """The model at src (a checkpoint file or a Hugging Face folder); chat_format (chatml, llama2,
    zephyr, plain) overrides the chat template the source records. folder=True: src must be a
    folder (--gpt2 DIR). quantize="int8": the model's matrices in Q8_0 (ConfigError for another
    kind or a model whose sizes Q8_0 cannot hold)."""
    if quantize is not None:
        from ..quant.model import KINDS
        if quantize not in KINDS:
            raise ConfigError(f"--quantize {quantize} is not a kind Pythia knows; use --quantize {' or '.join(KINDS)}")
    m = _open(Path(src), chat_format, folder, quantize)
    if quantize is not None:
        _quantize(m)
    if getattr(m.model, "quantized", None) is not None:   # asked for, or an int8 checkpoint
        m.description += ", int8 weights"
    return m


def _quantize(m: LoadedModel) -> None:
    from ..quant.model import quantize_model
    try:
        m.model = quantize_model(m.model)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if m.checkpoint is not None:
        m.checkpoint.model = m.model


def _open(path: Path, chat_format: str | None, folder: bool, quantize: str | None) -> LoadedModel:
    if folder and not path.is_dir():
        from .gpt2 import load_gpt2                         # says what src is instead of a folder
        load_gpt2(path)
    if path.is_dir():
        from .hf_folder import is_hf_llama_folder
        if is_hf_llama_folder(path):
            return _llama_folder(path, chat_format, quantize)
        if os.path.lexists(path / "config.json"):
            refuse_unknown_model_type(path)
            from .gpt2 import load_gpt2                     # a GPT-2 folder (it names what else it lacks)
            model, tokenizer = load_gpt2(path, quantize=quantize)   # int8 as read: no whole float32 model
            return _with_template(LoadedModel(model, tokenizer, f"GPT-2 weights from {path}"), None, chat_format)
        raise ConfigError(f"{str(path)!r} is a folder without config.json; give a Pythia checkpoint (.npz) or a "
                          f"Hugging Face model folder (config.json, model.safetensors, tokenizer files)")
    if not path.exists():
        raise ConfigError(f"{str(path)!r} does not exist; give a Pythia checkpoint (.npz) or a Hugging Face model "
                          f"folder you downloaded (Pythia never downloads)")
    from .checkpoint import load_checkpoint
    ckpt = load_checkpoint(path, optimizer=False, open_base=open_model, quantized=True,  # a LoRA checkpoint's base, too
                           quantize=quantize)                # a float32 one quantized as it is read
    if ckpt.step:
        what = f"trained {ckpt.step} steps"
    else:
        kinds = {"gpt2-bpe": "converted GPT-2 weights", "hf-bpe": "converted weights"}
        what = kinds.get(ckpt.tokenizer.kind, "untrained")
    loaded = LoadedModel(ckpt.model, ckpt.tokenizer, f"{path} ({what})", checkpoint=ckpt)
    return _with_template(loaded, ckpt.chat, chat_format)


def refuse_unknown_model_type(path: Path) -> None:
    """ConfigError naming the model types Pythia reads when path/config.json names another."""
    if (path / "config.json").is_file() and _model_type(path) != "gpt2":   # never open a FIFO
        from .hf_config import read_hf_config
        read_hf_config(path)


def _model_type(path: Path) -> object:
    import json
    try:
        return json.loads((path / "config.json").read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, ValueError, AttributeError):
        return None


def _with_template(m: LoadedModel, chat: dict | None, chat_format: str | None) -> LoadedModel:
    """m with the chat template a checkpoint recorded (chat_format overriding it)."""
    if chat is not None:
        m.template = ChatTemplate(**chat["template"])
        m.stop_ids = list(chat.get("stop_ids", []))
        m.jinja = chat.get("jinja")
    if chat_format is not None:
        config = {} if m.template is None else {"bos_token": m.template.bos_token, "eos_token": m.template.eos_token}
        m.template = chat_template_from_config(config, chat_format)
        if m.tokenizer.kind == "hf-bpe":
            extra = [m.tokenizer.token_id(s) for s in m.template.stop_strings()]
            m.stop_ids = [i for i in extra if i is not None] + [i for i in m.stop_ids if i not in extra]
    return m


def _quantized_from_tensors(Model, config, weights):
    """An int8 model read one tensor at a time without mapping the file, so neither the file's
    pages nor a float32 model stay resident (only one float32 matrix at a time)."""
    from ..quant.model import quantize_tensors
    try:
        return quantize_tensors(Model, config, weights.read_into)  # (name, out): F32/F16/BF16 -> out
    except ValueError as e:
        raise ConfigError(str(e)) from None


def _llama_folder(path: Path, chat_format: str | None, quantize: str | None = None) -> LoadedModel:
    from ..models.llama import Llama, LlamaConfig
    from .hf_folder import check_weights, read_hf_folder
    folder = read_hf_folder(path)
    try:
        check_weights(folder.weights, folder.config.model)
        config = LlamaConfig.from_dict(dict(folder.config.model))
        if quantize is not None:                            # int8 one matrix at a time: the float32
            model = _quantized_from_tensors(Llama, config, folder.weights)  # model is never whole
        else:
            model = Llama(config, init=False)               # zeros; each tensor is copied in next
            for name, p in model.params.items():            # (out, in) as stored: no transposes
                folder.weights.read_into(name, p)           # file reads into the model's own buffer
    finally:
        folder.weights.close()
    n = model.num_params()
    m = LoadedModel(model, folder.tokenizer, f"{folder.config.model_type} weights from {path} "
                    f"({n / 1e6:.0f}M parameters)" if n >= 1e6 else f"{folder.config.model_type} weights from {path}")
    jinja = folder.tokenizer_config.get("chat_template")
    m.jinja = jinja if isinstance(jinja, str) and chat_format is None else None
    try:
        m.template = folder.chat_template(chat_format)
        m.stop_ids = folder.stop_ids(m.template)
    except ConfigError as e:
        m.template_error = str(e)
        m.stop_ids = list(folder.config.eos_token_ids)
    return m
