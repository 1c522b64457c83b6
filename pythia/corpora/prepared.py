"""Prepared corpora: token files on disk, memory-mapped for training, validated on open.

A prepared corpus is a folder written by `python -m pythia prepare` (pythia.corpora.prepare):

    train.bin   the first tokens of the stream, raw little-endian uint16 (uint32 when the
                vocabulary has more than 65,536 tokens), no header
    val.bin     the rest: the last `val_fraction` of the token stream, as `train --data FILE`
                splits it (n_train = int(n_tokens * (1 - val_fraction)))
    meta.json   {"format": "pythia-prepared", "version": 1, "tokenizer": {...everything needed
                to rebuild it...}, "dtype", "n_tokens", "n_train", "n_val", "n_chars",
                "split": {"val_fraction"}, "sources": [{"name", "size", "sha256"}, ...]}

`PreparedCorpus` is a `pythia.corpora.data.Dataset` whose splits are read-only memory maps, so it hands
the trainer batches with the same `get_batch(split, batch_size, rng)` and the same draws: a
prepared corpus gives the batches of its text files. Training memory does not grow with the
corpus: a page a window touches stays mapped into the process, and the kernel maps cached
neighbours with it (fault-around, whole large folios: measured ~0.6 MB of resident memory per
random window of 33 tokens on a 200 MB folder), so 200 steps over a big corpus would add
~100 MB. The maps are therefore told the access is random (no read-ahead) and after each batch
their pages are unmapped (MADV_DONTNEED: for a read-only file mapping this drops only the page
table entries; the data stays in the page cache and the next access maps it again), which
bounds the resident part to one batch's windows. Mapping again costs page faults (measured
~0.4 ms per batch of 8 windows), so folders whose bins total RELEASE_ABOVE bytes or less stay
mapped: at most that much is ever resident. Anything wrong with a folder is a DataError naming
the file and what to do.
"""
from __future__ import annotations

import json
import mmap
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .data import Dataset
from ..errors import CheckpointError, DataError

FORMAT = "pythia-prepared"
FORMAT_VERSION = 1
META, TRAIN_BIN, VAL_BIN = "meta.json", "train.bin", "val.bin"
PREPARED_FILES = (META, TRAIN_BIN, VAL_BIN)        # all a prepared folder holds: all --force may replace
REPREPARE = "run `python -m pythia prepare` again"
RELEASE_ABOVE = 32 << 20      # bins larger than this in all are unmapped after each batch


def dtype_for(vocab_size: int) -> str:
    """uint16 while every id fits in 16 bits, else uint32."""
    return "uint16" if vocab_size <= 1 << 16 else "uint32"


# ---- tokenizers as JSON ------------------------------------------------------------------------

def tokenizer_to_json(tok) -> dict:
    """Everything needed to rebuild tok, as plain JSON."""
    if tok.kind == "char":
        return {"kind": "char", "chars": "".join(tok.chars)}
    if tok.kind == "byte-bpe":
        return tok.to_json()
    if tok.kind == "gpt2-bpe":
        return {"kind": "gpt2-bpe", "vocab": tok.encoder, "merges": [f"{a} {b}" for a, b in tok.merges],
                "special_tokens": tok.special_tokens}
    raise ValueError(f"cannot store a {tok.kind!r} tokenizer")


def tokenizer_from_json(d: dict):
    """Inverse of tokenizer_to_json; ValueError/KeyError/TypeError when d is not one."""
    kind = d["kind"]
    if kind == "char":
        from ..tokenizer import SimpleTokenizer
        chars = d["chars"]
        if not isinstance(chars, str) or list(chars) != sorted(set(chars)):
            raise ValueError("'chars' is not a sorted string of distinct characters")
        return SimpleTokenizer(chars)
    if kind == "byte-bpe":
        from ..text.bpe_train import ByteBPETokenizer
        return ByteBPETokenizer.from_json(d)
    if kind == "gpt2-bpe":
        from ..text.bpe import GPT2Tokenizer
        return GPT2Tokenizer(d["vocab"], [tuple(m.split(" ")) for m in d["merges"]], d["special_tokens"])
    raise ValueError(f"unknown tokenizer kind {kind!r}")


def same_tokenizer(a, b) -> bool:
    """True when a and b give every text the same ids (same kind, same stored tables)."""
    if a.kind != b.kind:
        return False
    x, y = a.to_arrays(), b.to_arrays()
    return x.keys() == y.keys() and all(np.array_equal(x[k], y[k]) for k in x)


# ---- opening a folder --------------------------------------------------------------------------

@dataclass
class PreparedCorpus(Dataset):
    """A Dataset over memory-mapped train.bin / val.bin (get_batch is Dataset's)."""
    path: Path = Path(".")
    meta: dict = field(default_factory=dict)
    maps: list = field(default_factory=list)      # the mmap objects under train and val

    def get_batch(self, split, batch_size, rng):
        """Dataset.get_batch (the same draws and windows, copied out), then, for a big folder,
        the pages the windows touched are unmapped, so resident memory does not grow with it."""
        batch = super().get_batch(split, batch_size, rng)
        if sum(len(m) for m in self.maps) > RELEASE_ABOVE:
            for m in self.maps:
                if hasattr(m, "madvise"):
                    m.madvise(mmap.MADV_DONTNEED)
        return batch

    @property
    def identity(self) -> dict:
        """What a checkpoint records to recognise this corpus when resuming."""
        m = self.meta
        return {"prepared": str(self.path), "tokenizer": m["tokenizer"]["kind"], "n_tokens": m["n_tokens"],
                "val_fraction": m["split"]["val_fraction"],
                "sources": [{k: s[k] for k in ("name", "size", "sha256")} for s in m["sources"]]}


def is_prepared(path: Path) -> bool:
    """A folder that holds a meta.json or a bin: meant as a prepared corpus."""
    path = Path(path)
    return path.is_dir() and any((path / n).exists() for n in (META, TRAIN_BIN, VAL_BIN))


def read_meta(path: Path) -> dict:
    """DIR/meta.json, checked: format, version and the keys and types the rest relies on."""
    path = Path(path)
    where = f"{str(path / META)!r}"
    if not (path / META).is_file():
        raise DataError(f"{where} is missing, so {str(path)!r} is not a prepared corpus; {REPREPARE}")
    try:
        meta = json.loads((path / META).read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise DataError(f"{where} is not UTF-8 text; it is corrupt, {REPREPARE}") from None
    except json.JSONDecodeError as e:
        raise DataError(f"{where} is malformed JSON (line {e.lineno}, column {e.colno}: {e.msg}); "
                        f"it is corrupt, {REPREPARE}") from None
    except OSError as e:
        raise DataError(f"cannot read {where}: {e.strerror or e}; check its permissions") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise DataError(f"{where} is not a Pythia prepared-corpus description; {REPREPARE}")
    version = meta.get("version")
    if version != FORMAT_VERSION:
        newer = isinstance(version, int) and version > FORMAT_VERSION
        raise DataError(f"{where} has format version {version!r} but this Pythia reads version {FORMAT_VERSION}; "
                        + ("upgrade Pythia to read it" if newer else REPREPARE))
    try:
        for key in ("n_tokens", "n_train", "n_val"):
            if not isinstance(meta[key], int) or meta[key] < 0:
                raise ValueError(f"{key!r} is not a token count")
        if meta["n_train"] + meta["n_val"] != meta["n_tokens"]:
            raise ValueError("n_train + n_val != n_tokens")
        if meta["dtype"] not in ("uint16", "uint32"):
            raise ValueError(f"dtype {meta['dtype']!r} is not uint16 or uint32")
        float(meta["split"]["val_fraction"])
        for s in meta["sources"]:
            str(s["name"]), int(s["size"]), str(s["sha256"])
        if not isinstance(meta["tokenizer"], dict):
            raise ValueError("'tokenizer' is not an object")
    except (KeyError, TypeError, ValueError) as e:
        what = f"lacks {e}" if isinstance(e, KeyError) else f"is inconsistent ({e})"
        raise DataError(f"{where} {what}; it is corrupt, {REPREPARE}") from None
    return meta


def _map(path: Path, name: str, n: int, dtype: str, maps: list) -> np.ndarray:
    f = path / name
    if not f.is_file():
        raise DataError(f"{str(f)!r} is missing from the prepared corpus; {REPREPARE}")
    size, itemsize = f.stat().st_size, np.dtype(dtype).itemsize
    if size != n * itemsize:
        raise DataError(f"{str(f)!r} has {size:,} bytes but meta.json says {n:,} {dtype} tokens "
                        f"({n * itemsize:,} bytes); it is truncated or from another corpus, {REPREPARE}")
    if n == 0:
        return np.zeros(0, dtype=dtype)
    with open(f, "rb") as fh:
        m = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)   # the map outlives the descriptor
    if hasattr(m, "madvise"):
        m.madvise(mmap.MADV_RANDOM)                                # batches read windows at random offsets
    maps.append(m)
    return np.frombuffer(m, dtype=np.dtype(dtype).newbyteorder("<"), count=n)  # (n,) read-only


CHECK_CHUNK = 1 << 22          # ids scanned at a time when validating a bin (8-16 MB of the map)


def check_header(path: Path, meta: dict, tokenizer) -> None:
    """DataError unless meta.json's byte_order is little-endian and its vocab_size is the tokenizer's."""
    where = repr(str(path / META))
    order = meta.get("byte_order", "little")
    if order != "little":
        raise DataError(f"{where} says byte_order {order!r} but Pythia writes and reads little-endian ids; "
                        f"{REPREPARE}")
    size = meta.get("vocab_size", tokenizer.vocab_size)
    if size != tokenizer.vocab_size:
        raise DataError(f"{where} says vocab_size {size!r} but its tokenizer has {tokenizer.vocab_size} tokens; "
                        f"it is corrupt, {REPREPARE}")
    if tokenizer.vocab_size > 1 << 16 and meta["dtype"] == "uint16":
        raise DataError(f"{where} stores ids as uint16, too narrow for {tokenizer.vocab_size} tokens; {REPREPARE}")


def check_ids(file: Path, ids: np.ndarray, vocab_size: int) -> None:
    """DataError naming file and the first offending token when an id is >= vocab_size.

    A max per chunk of CHECK_CHUNK ids over the memory map: one pass at memory speed, and only
    one chunk's pages are brought in at a time (memory stays flat whatever the corpus size)."""
    for start in range(0, len(ids), CHECK_CHUNK):
        part = ids[start:start + CHECK_CHUNK]                     # (<= CHECK_CHUNK,) view of the map
        if int(part.max()) >= vocab_size:
            bad = start + int(np.argmax(part >= vocab_size))
            raise DataError(f"{str(file)!r} holds token id {int(ids[bad])} at token {bad:,} (byte offset "
                            f"{bad * ids.itemsize:,}), outside the tokenizer's {vocab_size} tokens; it is corrupt "
                            f"or from another corpus, {REPREPARE}")


def load_prepared(path: str | Path, block_size: int) -> PreparedCorpus:
    """Open DIR for training: validate meta.json, the bins' sizes and every id (below the
    tokenizer's vocabulary size), memory-map the bins."""
    path = Path(path)
    meta = read_meta(path)
    try:
        tokenizer = tokenizer_from_json(meta["tokenizer"])
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{str(path / META)!r} holds an unreadable tokenizer ({e}); it is corrupt, {REPREPARE}") \
            from None
    check_header(path, meta, tokenizer)
    maps: list = []
    train = _map(path, TRAIN_BIN, meta["n_train"], meta["dtype"], maps)
    val = _map(path, VAL_BIN, meta["n_val"], meta["dtype"], maps)
    for name, ids in ((TRAIN_BIN, train), (VAL_BIN, val)):
        check_ids(path / name, ids, tokenizer.vocab_size)
    if sum(len(m) for m in maps) > RELEASE_ABOVE:
        for m in maps:                                             # the check's pages: mapped again on use
            if hasattr(m, "madvise"):
                m.madvise(mmap.MADV_DONTNEED)
    need = block_size + 1
    for name, part in (("training", train), ("validation", val)):
        if len(part) < need:
            raise DataError(f"the prepared corpus {str(path)!r} is too short: its {name} split has {len(part)} tokens "
                            f"but block size {block_size} needs at least {need}; give more text or lower --block-size")
    return PreparedCorpus(train=train, val=val, block_size=block_size, tokenizer=tokenizer,
                          files=[path / TRAIN_BIN, path / VAL_BIN], n_chars=int(meta.get("n_chars", 0)),
                          path=path, meta=meta, maps=maps)


# ---- the corpus the trainer gets ---------------------------------------------------------------

def open_corpus(paths: list[Path], block_size: int, tokenizer=None, saved: dict | None = None,
                checkpoint: str = "the checkpoint", joiner: str = "",
                redo: str = "resume on the corpus it was trained on") -> Dataset:
    """Text files (read, joined with joiner and encoded, pythia.corpora.data) or one prepared
    folder (memory-mapped).

    tokenizer: the model's when resuming or fine-tuning (checkpoint names that model); a prepared
    folder must then use the same one (else a CheckpointError naming both and saying redo), and
    when the checkpoint recorded its corpus (saved), the folder must hold the same sources.
    """
    from .data import build_dataset
    paths = [Path(p) for p in paths]
    prepared = [p for p in paths if is_prepared(p)]
    if not prepared:
        return build_dataset(paths, block_size, tokenizer=tokenizer, joiner=joiner)
    if len(paths) > 1:
        others = [str(p) for p in paths if p not in prepared]
        if others:
            raise DataError(f"--data mixes a prepared corpus ({str(prepared[0])!r}) with text files "
                            f"({', '.join(others[:3])}); pass the prepared folder alone, or only text files")
        raise DataError(f"--data names {len(prepared)} prepared corpora; train on one, or prepare their text "
                        f"files together into one folder")
    corpus = load_prepared(prepared[0], block_size)
    if tokenizer is not None:
        if saved is not None and saved.get("sources") is not None:
            check_same_corpus(saved, corpus, checkpoint)
        if not same_tokenizer(tokenizer, corpus.tokenizer):
            raise CheckpointError(f"{checkpoint} uses a {tokenizer.kind} tokenizer of {tokenizer.vocab_size} tokens "
                                  f"but {str(corpus.path)!r} was prepared with a different one ({corpus.tokenizer.kind}, "
                                  f"{corpus.tokenizer.vocab_size} tokens); {redo}")
    return corpus


def _describe(sources: list[dict]) -> str:
    return ", ".join(f"{s['name']} ({s['size']:,} bytes, sha256 {s['sha256'][:12]})" for s in sources[:3]) + \
        (f" and {len(sources) - 3} more" if len(sources) > 3 else "")


def check_same_corpus(saved: dict, corpus: PreparedCorpus, checkpoint: str) -> None:
    """CheckpointError saying what differs when corpus is not the one the checkpoint recorded."""
    now = corpus.identity
    hint = "resume with the folder it was trained on, or start a new model without --resume"
    where = repr(str(corpus.path))
    if saved.get("sources") != now["sources"]:
        old = {s["name"]: s for s in saved["sources"]}
        new = {s["name"]: s for s in now["sources"]}
        changed = [n for n in old if n in new and old[n] != new[n]]
        if changed:
            n = changed[0]
            what = (f"{n} differs (sha256 {new[n]['sha256'][:12]} now, {old[n]['sha256'][:12]} when trained; "
                    f"{new[n]['size']:,} vs {old[n]['size']:,} bytes)")
        elif set(old) != set(new):
            what = f"it holds {_describe(now['sources'])} but the checkpoint's corpus held {_describe(saved['sources'])}"
        else:
            what = "its files are in another order"
        raise CheckpointError(f"{where} is not the corpus {checkpoint} was trained on: {what}; {hint}")
    for key, label in (("n_tokens", "token count"), ("val_fraction", "validation fraction"),
                       ("tokenizer", "tokenizer")):
        if saved.get(key) is not None and saved.get(key) != now[key]:
            raise CheckpointError(f"{where} is not the corpus {checkpoint} was trained on: its {label} is "
                                  f"{now[key]} but was {saved[key]}; {hint}")
