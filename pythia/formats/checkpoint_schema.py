"""What a checkpoint's metadata must hold: every field, its type and its range, as one table.

A checkpoint's `meta` entry is a JSON object (pythia.formats.checkpoint). JSON that parses is not yet
metadata Pythia can use: a list where an object belongs, "4" where 4 belongs, true where a
count belongs, or an RNG state of the wrong shape would fail much later with a traceback. So
`validate_meta` checks every field in SCHEMA before anything is built from it and reports the
first bad one in one line that names it:

    checkpoint 'm.npz': field model_config.n_head must be a positive integer, got "4"; ...

SCHEMA maps a dotted path to a rule; a new field is one line. A rule says what it accepts and,
for the tests, which values it must refuse (tests/test_checkpoint_schema.py corrupts every
field in turn with each of them). Integers are JSON integers, never booleans (Python's True is
an int, JSON's true is not a count) and never floats; numbers must be finite. Optional fields
may be absent; objects whose every field is optional may be absent as a whole.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from ..models import FAMILIES
from ..tokenizer import TOKENIZER_KINDS
from .chat_template import FORMATS as CHAT_FORMATS

FORMAT = "pythia-checkpoint"   # meta["format"] of every checkpoint
FORMAT_VERSION = 1              # meta["version"]: raised when a change breaks older readers
U128 = 1 << 128                                         # PCG64's state and increment are 128-bit


@dataclass(frozen=True)
class Int:
    """A JSON integer in [lo, hi) (hi None: unbounded)."""
    lo: int = 0
    hi: int | None = None
    required: bool = True

    @property
    def need(self) -> str:
        if self.hi is not None:
            return f"an integer in [{self.lo}, {self.hi})" if self.hi < 1 << 40 else \
                f"an integer in [{self.lo}, 2**{self.hi.bit_length() - 1})"
        return {0: "a non-negative integer", 1: "a positive integer"}.get(self.lo, f"an integer of at least {self.lo}")

    def ok(self, v: Any) -> bool:
        return type(v) is int and v >= self.lo and (self.hi is None or v < self.hi)

    def bad_values(self) -> list:
        bad = [str(self.lo), float(self.lo) + 0.5, True, None, [self.lo], self.lo - 1]
        return bad + ([self.hi] if self.hi is not None else [])


@dataclass(frozen=True)
class Number:
    """A finite JSON number (integer or float, not a boolean) with lo <(=) v <(=) hi."""
    lo: float = -math.inf
    hi: float = math.inf
    lo_open: bool = False
    hi_open: bool = False
    required: bool = True

    @property
    def need(self) -> str:
        left = "(" if self.lo_open else "["
        right = ")" if self.hi_open else "]"
        if self.hi == math.inf:
            return "a number above 0" if (self.lo, self.lo_open) == (0, True) else f"a number of at least {self.lo:g}"
        return f"a number in {left}{self.lo:g}, {self.hi:g}{right}"

    def ok(self, v: Any) -> bool:
        if type(v) not in (int, float) or not math.isfinite(v):
            return False
        above = v > self.lo if self.lo_open else v >= self.lo
        below = v < self.hi if self.hi_open else v <= self.hi
        return above and below

    def bad_values(self) -> list:
        out = self.lo if math.isfinite(self.lo) else None
        return ["0.1", True, None, float("nan"), float("inf")] + ([out - (0 if self.lo_open else 1)]
                                                                  if out is not None else [])


@dataclass(frozen=True)
class Bool:
    required: bool = True
    need: str = "true or false"

    def ok(self, v: Any) -> bool:
        return type(v) is bool

    def bad_values(self) -> list:
        return [1, "true", None]


@dataclass(frozen=True)
class Text:
    required: bool = True
    need: str = "a string"

    def ok(self, v: Any) -> bool:
        return isinstance(v, str)

    def bad_values(self) -> list:
        return [1, ["x"], None]


@dataclass(frozen=True)
class Sources:
    """A prepared corpus's source files, as its meta.json lists them."""
    required: bool = True
    need: str = "a list of objects with a string name, an integer size and a string sha256"

    def ok(self, v: Any) -> bool:
        return isinstance(v, list) and all(
            isinstance(s, dict) and isinstance(s.get("name"), str) and type(s.get("size")) is int
            and isinstance(s.get("sha256"), str) for s in v)

    def bad_values(self) -> list:
        return ["x", [1], [{"size": "1"}]]


@dataclass(frozen=True)
class IdList:
    """A list of token ids: whole numbers >= 0."""
    required: bool = True
    need: str = "a list of whole numbers >= 0"

    def ok(self, v: Any) -> bool:
        return isinstance(v, list) and all(type(i) is int and i >= 0 for i in v)

    def bad_values(self) -> list:
        return ["x", [-1], [1.5]]


@dataclass(frozen=True)
class Choice:
    """One of a few exact strings (or one exact integer, for the format version)."""
    choices: tuple
    required: bool = True

    @property
    def need(self) -> str:
        return " or ".join(json.dumps(c) for c in self.choices)

    def ok(self, v: Any) -> bool:
        return any(type(v) is type(c) and v == c for c in self.choices)

    def bad_values(self) -> list:
        return [None, ["x"], "bogus"]


@dataclass(frozen=True)
class Obj:
    """A JSON object; closed: only the keys SCHEMA lists under it. nullable: null stands for absent."""
    required: bool = True
    closed: bool = False
    nullable: bool = False
    need: str = "an object"

    def ok(self, v: Any) -> bool:
        return isinstance(v, dict) or (self.nullable and v is None)

    def bad_values(self) -> list:
        return [[], "x", 3]


def opt(rule):
    """The same rule for a field that may be absent."""
    return type(rule)(**{**rule.__dict__, "required": False})


SCHEMA: dict[str, Any] = {
    "format": Choice((FORMAT,)),
    "version": Choice((FORMAT_VERSION,)),
    "model_config": Obj(closed=True),
    "model_config.vocab_size": Int(lo=1),
    "model_config.block_size": Int(lo=1),
    "model_config.d_model": Int(lo=1),
    "model_config.n_layer": Int(lo=1),
    "model_config.n_head": Int(lo=1),
    # the Llama family's further sizes (pythia.models.llama.LlamaConfig)
    "model_config.n_kv_head": opt(Int(lo=1)),
    "model_config.head_dim": opt(Int(lo=2)),
    "model_config.d_ff": opt(Int(lo=1)),
    "model_config.norm_eps": opt(Number(lo=0, lo_open=True)),
    "model_config.rope_theta": opt(Number(lo=0, lo_open=True)),
    "model_config.qkv_bias": opt(Bool()),
    "model_config.tie_embeddings": opt(Bool()),
    "family": opt(Choice(tuple(FAMILIES))),
    "quantized": opt(Choice(("q8_0",))),                  # int8 matrices under q8/ (pythia.quant.model)
    "chat": Obj(required=False, nullable=True),           # a converted chat model's template
    "chat.template": Obj(closed=True),
    "chat.template.format": Choice(CHAT_FORMATS),
    "chat.template.bos_token": opt(Text()),
    "chat.template.eos_token": opt(Text()),
    "chat.template.default_system": opt(Text()),
    "chat.template.system_always": opt(Bool()),
    "chat.stop_ids": opt(IdList()),
    "chat.jinja": opt(Text()),                            # the folder's template text, for export
    "lora": Obj(required=False, nullable=True),           # LoRA adapters (pythia.lora): settings, base reference
    "lora.rank": Int(lo=1),
    "lora.alpha": Number(lo=0, lo_open=True),
    "lora.base": Obj(closed=True),
    "lora.base.path": Text(),
    "lora.base.sha256": Text(),
    "tokenizer_kind": Choice(TOKENIZER_KINDS),
    "step": Int(lo=0),
    "has_optimizer": opt(Bool()),
    "train_config": Obj(required=False, nullable=True),
    "train_config.steps": opt(Int(lo=1)),
    "train_config.batch_size": opt(Int(lo=1)),
    "train_config.lr": opt(Number(lo=0, lo_open=True)),
    "train_config.min_lr": opt(Number(lo=0)),
    "train_config.warmup_steps": opt(Int(lo=0)),
    "train_config.weight_decay": opt(Number(lo=0)),
    "train_config.beta2": opt(Number(lo=0, hi=1, hi_open=True)),
    "train_config.grad_clip": opt(Number(lo=0)),
    "train_config.eval_interval": opt(Int(lo=1)),
    "train_config.eval_iters": opt(Int(lo=1)),
    "train_config.seed": opt(Int(lo=0)),
    "train_config.grad_accum": opt(Int(lo=1)),
    "corpus": Obj(required=False, nullable=True),          # a prepared folder's identity (pythia.corpora.prepared)
    "corpus.prepared": opt(Text()),
    "corpus.tokenizer": opt(Text()),
    "corpus.n_tokens": opt(Int(lo=0)),
    "corpus.val_fraction": opt(Number(lo=0, hi=1)),
    "corpus.sources": opt(Sources()),
    "rng_state": Obj(required=False, nullable=True),
    "rng_state.train": Obj(required=False, nullable=True),
    "rng_state.train.bit_generator": Choice(("PCG64",)),
    "rng_state.train.state": Obj(closed=True),
    "rng_state.train.state.state": Int(lo=0, hi=U128),
    "rng_state.train.state.inc": Int(lo=0, hi=U128),
    "rng_state.train.has_uint32": Int(lo=0, hi=2),
    "rng_state.train.uinteger": Int(lo=0, hi=1 << 32),
}

# Checks across fields: (field named in the message, test on the whole meta, what it must be).
# Each runs only when the fields it reads passed their own rules.
CROSS = [
    ("model_config.d_model", lambda m: "head_dim" in m["model_config"]      # its own head size: no rule
     or m["model_config"]["d_model"] % m["model_config"]["n_head"] == 0,
     lambda m: f"divisible by model_config.n_head ({m['model_config']['n_head']})"),
    ("train_config.min_lr",
     lambda m: m["train_config"].get("min_lr", 0) <= m["train_config"].get("lr", math.inf),
     lambda m: f"at most train_config.lr ({m['train_config'].get('lr')})"),
]


class MetaError(ValueError):
    """A field of the metadata is missing or wrong; the message starts with 'field <path>'."""


def _show(v: Any) -> str:
    text = json.dumps(v)
    return text if len(text) <= 40 else text[:37] + "..."


def _get(meta: dict, path: str) -> tuple[bool, Any]:
    """(present, value) of a dotted path; absent when any parent is absent or null."""
    node: Any = meta
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def _parent_present(meta: dict, path: str) -> bool:
    if "." not in path:
        return True
    present, value = _get(meta, path.rsplit(".", 1)[0])
    return present and isinstance(value, dict)


def validate_meta(meta: Any) -> None:
    """MetaError naming the first field of meta that breaks SCHEMA or CROSS."""
    if not isinstance(meta, dict):
        raise MetaError(f"the metadata must be {Obj().need}, got {_show(meta)}")
    for path, rule in SCHEMA.items():
        if not _parent_present(meta, path):
            continue                                     # an optional object that is absent or null
        present, value = _get(meta, path)
        if not present:
            if rule.required:
                raise MetaError(f"field {path} is missing")
            continue
        if not rule.ok(value):
            raise MetaError(f"field {path} must be {rule.need}, got {_show(value)}")
        if isinstance(rule, Obj) and rule.closed and isinstance(value, dict):
            known = {p.rsplit(".", 1)[1] for p in SCHEMA if p.rsplit(".", 1)[0] == path and "." in p}
            extra = sorted(set(value) - known)
            if extra:
                raise MetaError(f"field {path}.{extra[0]} is not one this Pythia knows "
                                f"(expected only {', '.join(sorted(known))})")
    for path, test, need in CROSS:
        if _parent_present(meta, path) and not test(meta):
            raise MetaError(f"field {path} must be {need(meta)}, got {_show(_get(meta, path)[1])}")
