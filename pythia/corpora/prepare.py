"""`python -m pythia prepare`: stream text files into a prepared corpus folder (pythia.corpora.prepared).

Memory stays bounded whatever the corpus size: files are read in chunks of `chunk_bytes`, never
whole. Two passes:

1. scan: decode UTF-8 strictly (a bad byte is reported with its file and byte offset), hash
   each file (SHA-256), and gather what the tokenizer needs: the set of characters (char), or
   word counts from a uniform random sample of chunks of about --bpe-sample MB (trained BPE),
   from which the merges are learnt (pythia.text.bpe_fast).
2. encode: chunk by chunk into one token stream (BPE chunks on all --workers processes, in
   order), `<|endoftext|>` between files for the BPE tokenizers; then the last val_fraction of
   the stream is moved to val.bin and the rest becomes train.bin.

Chunk boundaries and progress: pythia.corpora.textstream.

Everything is written into a temporary sibling folder that is renamed to --out at the end; an
error, a full disk or a stop signal removes it, and an existing --out is only replaced with
--force, and only when it holds nothing but a prepared corpus's files. --out is claimed (locked,
pythia.system.claims) for the whole run, so a second prepare onto it is refused; a file that
changes while it is read is refused (pythia.corpora.textstream.read_chunks).
"""
from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import ConfigError, DataError
from ..system.atomic import install_directory, new_directory
from ..system.claims import check_replaceable_directory, claim_output
from ..system.inputs import require_regular
from .prepared import (FORMAT, FORMAT_VERSION, META, PREPARED_FILES, TRAIN_BIN, VAL_BIN, dtype_for, is_prepared,
                       tokenizer_to_json)
from .textstream import Progress, read_chunks

CHUNK_BYTES = 1 << 20          # bytes read at a time: bounds memory per chunk in flight
MIN_SPLIT_TOKENS = 2           # each split must hold at least one (input, target) pair
MAX_DEFAULT_WORKERS = 4        # each encoding process holds ~30-60 MB (word cache, chunks in flight)


@dataclass
class PrepareOptions:
    files: list[Path]
    out: Path
    tokenizer: str = "char"           # "char", "bpe" (trained here) or "gpt2" (from gpt2_dir)
    vocab_size: int = 4096            # trained BPE only: 256 bytes + merges + <|endoftext|>
    gpt2_dir: Path | None = None
    val_fraction: float = 0.1
    bpe_sample_mb: float = 32.0       # MB of text the BPE is trained on (a uniform sample)
    workers: int = 1
    force: bool = False
    seed: int = 0                     # seeds the sample
    chunk_bytes: int = CHUNK_BYTES


# ---- checks before any work --------------------------------------------------------------------

def check_options(o: PrepareOptions) -> None:
    from ..text.bpe_train import MAX_VOCAB, MIN_VOCAB
    if not o.files:
        raise DataError("no data files given; pass at least one text file with --data")
    for p in o.files:
        if is_prepared(p):
            raise DataError(f"--data {str(p)!r} is a prepared corpus; prepare reads text files (train on the "
                            f"folder with `python -m pythia train --data {p}`)")
        if not p.exists():
            raise DataError(f"data file {str(p)!r} does not exist; check the path or pass another with --data")
        if p.is_dir():
            raise DataError(f"data path {str(p)!r} is a directory; pass the text files inside it with --data")
        # a FIFO, /dev/stdin on a pipe or /dev/zero: refused unread (one that never ends, or blocks)
        require_regular(p, "data file", DataError, hint="give a text file (save a pipe's text to a file first)")
    if o.tokenizer == "bpe" and not MIN_VOCAB <= o.vocab_size <= MAX_VOCAB:
        raise ConfigError(f"--vocab-size must be between {MIN_VOCAB} (256 bytes + <|endoftext|>) and {MAX_VOCAB:,} "
                          f"(ids are stored as uint32 and handled as int32), got {o.vocab_size}")
    if not 0 < o.val_fraction < 1:
        raise ConfigError(f"--val-fraction must be between 0 and 1, got {o.val_fraction}")
    out = o.out
    if not out.parent.is_dir():
        raise ConfigError(f"--out {str(out)!r}: directory {str(out.parent)!r} does not exist; create it first")
    check_replaceable_directory(out, "--out")          # a symlink, '.', the working directory, a mount point
    if out.exists() and not (out.is_dir() and not any(out.iterdir())):   # an empty folder holds nothing to lose
        if not o.force:
            raise ConfigError(f"--out {str(out)!r} already exists and would be replaced; choose another --out, "
                              f"or add --force to replace it")
        if not (out.is_dir() and (out / META).is_file()):
            raise ConfigError(f"--out {str(out)!r} exists and is not a prepared corpus, so even --force will not "
                              f"replace it; choose another --out")
    check_replaceable_directory(out, "--out", replace=o.force, owned=PREPARED_FILES)   # files it did not write


# ---- the two passes ----------------------------------------------------------------------------

def _scan(o: PrepareOptions, progress: Progress, stamps: dict) -> tuple[list[dict], set[str], dict[str, int], int]:
    """(sources, characters, sampled word counts, characters of text) from one read of every file
    (stamps: each file's size and mtime as read, which the encoding pass must find unchanged)."""
    from ..text.bpe_fast import count_words
    sources, chars, counts, n_chars = [], set(), {}, 0
    total = sum(p.stat().st_size for p in o.files)
    keep = min(1.0, o.bpe_sample_mb * 1e6 / max(1, total))
    rng = np.random.default_rng(o.seed)
    progress.start("scanning")
    for p in o.files:
        h, size = hashlib.sha256(), 0

        def seen(raw: bytes) -> None:
            nonlocal size
            h.update(raw)
            size += len(raw)
            progress.advance(len(raw))
        n_file = 0
        for text in read_chunks(p, o.chunk_bytes, cut=o.tokenizer == "bpe", on_bytes=seen, stamps=stamps):
            n_file += len(text)
            if o.tokenizer == "char":
                chars.update(text)
            elif o.tokenizer == "bpe" and (keep >= 1.0 or rng.random() < keep):
                count_words(text, counts)
        if n_file == 0:
            raise DataError(f"data file {str(p)!r} is empty; give a file with some text in it")
        n_chars += n_file
        sources.append({"name": p.name, "path": str(p), "size": size, "sha256": h.hexdigest()})
    return sources, chars, counts, n_chars


def _build_tokenizer(o: PrepareOptions, chars: set[str], counts: dict[str, int], out=None):
    if o.tokenizer == "char":
        from ..tokenizer import SimpleTokenizer
        return SimpleTokenizer(chars)
    if o.tokenizer == "gpt2":
        from ..text.bpe import GPT2Tokenizer
        return GPT2Tokenizer.from_dir(o.gpt2_dir)
    from ..text.bpe_fast import train_merges
    from ..text.bpe_train import MIN_VOCAB, ByteBPETokenizer
    t0 = time.perf_counter()
    merges = train_merges(counts, o.vocab_size - MIN_VOCAB)
    tok = ByteBPETokenizer(merges)
    if out is not None:
        note = "" if tok.vocab_size == o.vocab_size else \
            f" (the sample has no more pairs to merge than {len(merges)}, so not {o.vocab_size})"
        out.write(f"trained BPE: {tok.vocab_size:,} tokens from {len(counts):,} distinct words in "
                  f"{time.perf_counter() - t0:.1f}s{note}\n")
    return tok


_WORKER_ENCODER = None


def _worker_init(tokenizer_json: dict | None) -> None:
    """Build the worker's encoder: forked workers inherit the parent's (and its Unicode class
    table); spawned ones rebuild the tokenizer from its JSON."""
    global _WORKER_ENCODER
    import signal
    # the parent handles stop signals and ends the pool: Ctrl-C to the process group is the
    # parent's alone, and the parent's SIGTERM ends a worker as the default action would
    for name, action in (("SIGINT", signal.SIG_IGN), ("SIGTERM", signal.SIG_DFL), ("SIGHUP", signal.SIG_DFL)):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), action)
    if tokenizer_json is None and _WORKER_ENCODER is not None:
        return
    from ..text.bpe_fast import encoder_for
    from .prepared import tokenizer_from_json
    _WORKER_ENCODER = encoder_for(tokenizer_from_json(tokenizer_json))


def _worker_encode(text: str) -> np.ndarray:
    return _WORKER_ENCODER.encode_array(text)


def _encode_stream(o: PrepareOptions, tok, f, dtype: str, progress: Progress, stamps: dict) -> int:
    """Write the ids of every file, in order, to f; returns how many were written."""
    n = 0
    eot = getattr(tok, "eot_id", None)
    sep = np.array([eot], dtype=dtype) if tok.kind != "char" and eot is not None else None

    def write(ids: np.ndarray) -> None:
        nonlocal n
        f.write(ids.astype(dtype, copy=False).tobytes())
        n += len(ids)

    progress.start("encoding")
    if tok.kind == "char":
        # code point -> id through one table lookup: the ids of SimpleTokenizer.encode_array (every
        # character is in the vocabulary, which the scan built from these files), without its search
        codes = np.array([ord(c) for c in tok.chars], dtype=np.int64)
        table = np.zeros(int(codes.max()) + 1, dtype=dtype)
        table[codes] = np.arange(len(codes))
        for p in o.files:
            for text in read_chunks(p, o.chunk_bytes, cut=False, on_bytes=lambda raw: progress.advance(len(raw)),
                                   stamps=stamps):
                write(table[np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)])
        return n
    global _WORKER_ENCODER
    from ..text.bpe_fast import encoder_for
    pool, encode = None, encoder_for(tok).encode_array
    small = sum(p.stat().st_size for p in o.files) < 4 * o.chunk_bytes   # a pool would cost more than it saves
    if o.workers > 1 and not small:
        import multiprocessing as mp
        fork = sys.platform.startswith("linux")
        _WORKER_ENCODER = encoder_for(tok) if fork else None
        pool = mp.get_context("fork" if fork else "spawn").Pool(
            o.workers, initializer=_worker_init, initargs=(None if fork else tokenizer_to_json(tok),))
    try:
        for k, p in enumerate(o.files):
            if k and sep is not None:
                write(sep)
            sizes: deque = deque()
            pending: deque = deque()

            def on_bytes(raw: bytes) -> None:
                sizes.append(len(raw))
            for text in read_chunks(p, o.chunk_bytes, cut=True, on_bytes=on_bytes, stamps=stamps):
                if pool is None:
                    write(encode(text))
                    while sizes:
                        progress.advance(sizes.popleft())
                    continue
                pending.append((pool.apply_async(_worker_encode, (text,)), sum(sizes)))
                sizes.clear()
                while len(pending) >= 2 * o.workers:   # bounded: at most 2 chunks per worker in flight
                    res, nbytes = pending.popleft()
                    write(res.get())
                    progress.advance(nbytes)
            while pending:
                res, nbytes = pending.popleft()
                write(res.get())
                progress.advance(nbytes)
            while sizes:
                progress.advance(sizes.popleft())
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    return n


def _split(tmp: Path, n: int, val_fraction: float, dtype: str) -> tuple[int, int]:
    """Move the last val_fraction of tokens.bin to val.bin, in bounded pieces; the rest is train.bin."""
    n_train = int(n * (1.0 - val_fraction))          # the same expression as pythia.corpora.data.build_dataset
    item = np.dtype(dtype).itemsize
    stream = tmp / "tokens.bin"
    with open(stream, "r+b") as src, open(tmp / VAL_BIN, "wb") as dst:
        src.seek(n_train * item)
        while True:
            buf = src.read(CHUNK_BYTES * 8)
            if not buf:
                break
            dst.write(buf)
        dst.flush()
        os.fsync(dst.fileno())
        src.truncate(n_train * item)
        src.flush()
        os.fsync(src.fileno())
    os.replace(stream, tmp / TRAIN_BIN)
    return n_train, n - n_train


def prepare(o: PrepareOptions, out=None) -> dict:
    """Write the prepared corpus o.out; returns its meta. DataError/ConfigError on bad input."""
    out = out or sys.stdout
    o.files = [Path(p) for p in o.files]
    o.out = Path(o.out)
    check_options(o)
    if o.tokenizer == "gpt2":
        _build_tokenizer(o, set(), {})                # a bad GPT-2 folder fails before any reading
    if o.tokenizer != "char":
        from ..text import bpe_fast
        out.write("BPE: compiled (pythia._bpe)\n" if bpe_fast.BACKEND == "cython" else
                  "BPE: the pure-Python reference, which is slow; build the compiled one with `pip install -e .`\n")
    progress = Progress(sum(p.stat().st_size for p in o.files), out)
    # claimed (locked) for the whole run: a second prepare onto the same --out is refused naming us
    with claim_output(o.out, flag="--out", replace=o.force, directory=True, owned=PREPARED_FILES):
        return _write(o, progress, out)


def _write(o: PrepareOptions, progress: Progress, out) -> dict:
    """Both passes into a temporary folder, installed as o.out only once complete."""
    try:
        tmp = new_directory(o.out)
    except OSError as e:
        raise DataError(f"cannot write {str(o.out)!r}: {e.strerror or e}; check that its folder is writable "
                        f"and has free space") from None
    try:
        stamps: dict = {}
        sources, chars, counts, n_chars = _scan(o, progress, stamps)
        tok = _build_tokenizer(o, chars, counts, out)
        del chars, counts
        dtype = dtype_for(tok.vocab_size)
        with open(tmp / "tokens.bin", "wb") as f:
            n = _encode_stream(o, tok, f, dtype, progress, stamps)
            f.flush()
            os.fsync(f.fileno())
        need = 2 * MIN_SPLIT_TOKENS
        n_train = int(n * (1.0 - o.val_fraction))
        if min(n_train, n - n_train) < MIN_SPLIT_TOKENS:
            raise DataError(f"the corpus is too small: its {n} tokens leave {n_train} to train and {n - n_train} "
                            f"to validate (--val-fraction {o.val_fraction:g}) but each needs at least "
                            f"{MIN_SPLIT_TOKENS}; give more text (at least {need} tokens, and far more to learn from)")
        n_train, n_val = _split(tmp, n, o.val_fraction, dtype)
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "tokenizer": tokenizer_to_json(tok),
                "vocab_size": tok.vocab_size, "dtype": dtype, "byte_order": "little",
                "n_tokens": n, "n_train": n_train, "n_val": n_val, "n_chars": n_chars,
                "split": {"val_fraction": o.val_fraction, "rule": "the last val_fraction of the token stream "
                          "validates: n_train = int(n_tokens * (1 - val_fraction))"},
                "separator": None if tok.kind == "char" else "<|endoftext|> between files",
                "sources": [{k: s[k] for k in ("name", "size", "sha256")} for s in sources]}
        with open(tmp / META, "w", encoding="utf-8") as f:
            f.write(meta_text(meta))
        install_directory(tmp, o.out)
        return meta
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, OSError):
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DataError(f"the disk filled up while writing {str(o.out)!r}; nothing was kept; free some space "
                                f"or choose another --out") from None
            raise DataError(f"cannot write {str(o.out)!r}: {e.strerror or e}; nothing was kept; check the "
                            f"folder's permissions and free space") from None
        raise


def meta_text(meta: dict) -> str:
    """meta.json's text: one key per line, the tokenizer (possibly megabytes of tables) last on one line."""
    head = json.dumps({k: v for k, v in meta.items() if k != "tokenizer"}, ensure_ascii=False, indent=1)
    tok = json.dumps(meta["tokenizer"], ensure_ascii=False, separators=(",", ":"))
    return head[:-2] + f',\n "tokenizer": {tok}\n}}\n'
