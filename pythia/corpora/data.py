"""Training data: read the corpus files, encode them, split 90/10, and sample batches.

B is the batch size and T the block size (context length) throughout.

A batch is B windows of T + 1 consecutive tokens at uniformly random offsets of one split:
x is the first T tokens of each window and y the last T, so y[b, t] is the token after
x[b, :t + 1]. Sampling draws only from the `np.random.Generator` it is given, so a seeded
generator (whose state goes into checkpoints) gives the same batches every run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from ..corpus import DEFAULT_FILES, bundled_corpus_files
from ..errors import DataError
from ..tokenizer import SimpleTokenizer, describe_chars

VAL_FRACTION = 0.1


def resolve_corpus(data_args: list[str] | None, cwd: Path | None = None) -> list[Path]:
    """Which files to train on: --data FILE... when given, else input.txt + model.txt in cwd
    when both are there, else the corpus bundled with the package.

    Only chooses: read_corpus() reports a missing or unreadable file.
    """
    if data_args:
        return [Path(p) for p in data_args]
    cwd = Path.cwd() if cwd is None else Path(cwd)
    local = [cwd / name for name in DEFAULT_FILES]
    if all(p.is_file() for p in local):
        return local
    try:
        return bundled_corpus_files()
    except FileNotFoundError as e:
        raise DataError(str(e)) from None


def read_text(path: Path) -> str:
    """One corpus file as text, or a DataError that says what is wrong and what to do."""
    from ..system.inputs import read_regular
    raw = read_regular(path, "data file", DataError, hint="pass UTF-8 text files with --data")
    if not raw:
        raise DataError(f"data file {str(path)!r} is empty; give a file with some text in it")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"data file {str(path)!r} is not UTF-8 text (bad byte at offset {e.start}); "
                        f"convert it to UTF-8 or pass another file") from None
    if text.startswith("\ufeff"):  # a byte-order mark is an encoding marker, not text
        text = text[1:]
    if not text:
        raise DataError(f"data file {str(path)!r} is empty; give a file with some text in it")
    return text


def read_corpus(paths: list[Path], joiner: str = "") -> str:
    """All files' text joined in order; by default concatenated as is, like `cat`."""
    if not paths:
        raise DataError("no data files given; pass at least one text file with --data")
    return joiner.join(read_text(p) for p in paths)


@dataclass
class Dataset:
    """Token ids of the corpus, split into train (first 90%) and val (last 10%)."""
    train: np.ndarray                     # (N_train,) int32 token ids
    val: np.ndarray                       # (N_val,) int32 token ids
    block_size: int                       # T: the context length batches are cut to
    tokenizer: object                     # encodes and decodes; vocab_size bounds the ids
    files: list[Path] = field(default_factory=list)
    n_chars: int = 0                      # characters of text the ids came from

    def get_batch(self, split: Literal["train", "val"], batch_size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(x, y), each int64 (B, T): B random windows of the split, y shifted one token on."""
        data = self.train if split == "train" else self.val
        T = self.block_size
        starts = rng.integers(0, len(data) - T, size=batch_size)  # (B,) offsets with room for T + 1 tokens
        rows = starts[:, None] + np.arange(T)                     # (B, T) positions of x
        x = data[rows].astype(np.int64)                           # (B, T)
        y = data[rows + 1].astype(np.int64)                       # (B, T) the next token of each position
        return x, y


def build_dataset(paths: list[Path], block_size: int, tokenizer=None,
                  val_fraction: float = VAL_FRACTION, joiner: str = "") -> Dataset:
    """Read, encode and split the corpus (files joined with `joiner` between them).

    Without a tokenizer a character vocabulary is built from the text. With one (resuming, or a
    GPT-2 model) the text is encoded with it, and characters it cannot encode are a DataError.
    """
    paths = [Path(p) for p in paths]
    if block_size < 1:
        raise DataError(f"block size must be positive, got {block_size}")
    text = read_corpus(paths, joiner)
    where = " + ".join(p.name for p in paths)
    if tokenizer is None:
        tokenizer = SimpleTokenizer.from_text(text)
        ids = tokenizer.encode_array(text)
    else:
        ids = _encode_with(tokenizer, text, where)
    n_train = int(len(ids) * (1.0 - val_fraction))
    train, val = ids[:n_train].astype(np.int32), ids[n_train:].astype(np.int32)
    need = block_size + 1
    for name, part in (("training", train), ("validation", val)):
        if len(part) < need:
            total = int(np.ceil(need / min(1.0 - val_fraction, val_fraction)))
            raise DataError(f"the corpus ({where}, {len(ids)} tokens) is too short: its {name} split has "
                            f"{len(part)} tokens but block size {block_size} needs at least {need}; "
                            f"give more text (about {total} tokens in all) or lower --block-size")
    return Dataset(train=train, val=val, block_size=block_size, tokenizer=tokenizer,
                   files=paths, n_chars=len(text))


def _encode_with(tokenizer, text: str, where: str) -> np.ndarray:
    if isinstance(tokenizer, SimpleTokenizer):
        missing = tokenizer.unknown(text)
        if missing:
            raise DataError(f"the corpus ({where}) has {len(missing)} character(s) the model's vocabulary of "
                            f"{tokenizer.vocab_size} lacks: {describe_chars(missing)}; train on text the checkpoint's "
                            f"vocabulary covers, or start a new model without --resume or --init-from")
        return tokenizer.encode_array(text)
    return np.asarray(tokenizer.encode(text), dtype=np.int64)
