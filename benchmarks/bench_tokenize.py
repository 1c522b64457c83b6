"""BPE speed: Pythia's GPT-2-format encoder against Hugging Face `tokenizers` (and tiktoken), and
BPE training against tokenizers' BpeTrainer.

    python benchmarks/bench_tokenize.py [--data FILE] [--vocab 50000] [--encode-mb 5]
                                        [--train-mb 100] [--train-vocab 8192] [--repeats 3]

Encoding. tokenizers' ByteLevelBPETokenizer is trained on --data (default: the Tiny Shakespeare
file $PYTHIA_SHAKESPEARE names; corpus_path.py) with --vocab tokens (fewer when the text runs out of pairs) and saved as
vocab.json + merges.txt; Pythia loads those files (GPT2Tokenizer) and encodes with its compiled
encoder (pythia.text.bpe_fast). The text encoded is --data repeated to --encode-mb MB, so both sides'
word caches are warm. Rows: one call on the whole text (one core); a batch of ~64 KB pieces cut
where prepare cuts (tokenizers' encode_batch on all cores; Pythia on --workers forked processes,
as prepare runs); tiktoken (an Encoding built from the same ranks, GPT-2's pattern), when it is
installed; Pythia's pure-Python reference on the first MB; and `python -m pythia prepare --gpt2`
end to end on the text as a file (two reads, hashing, writing). Every row's ids are compared
with Pythia's. Each measurement is repeated --repeats times, the methods interleaved; the table
gives the median MB/s and the range.

Training. --train-mb MB of synthetic text (benchmarks/synth_text.py) in a temporary file:
tokenizers' BpeTrainer (ByteLevelBPETokenizer.train, min_frequency 2) against Pythia's scan and
trainer as prepare runs them (word counts from the compiled pre-tokenizer, then the compiled
incremental trainer), both to --train-vocab tokens; and how many of the first 1,000 merges the
two share (they break ties differently, and Pythia keeps no minimum frequency).

Without tokenizers installed, only Pythia's rows run, on the small GPT-2-format vocabulary of
the test fixtures.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from corpus_path import shakespeare  # noqa: E402

from pythia.text.bpe import GPT2Tokenizer  # noqa: E402
from pythia.text.bpe_fast import BACKEND, count_words, encoder_for, train_merges  # noqa: E402
from pythia.corpora.textstream import last_safe_cut, read_chunks  # noqa: E402

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""


def pieces(text: str, size: int = 1 << 16) -> list[str]:
    """text cut into ~size-character pieces at prepare's safe cut points (their words are the text's)."""
    out, start = [], 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            c = last_safe_cut(text[start:end])
            end = start + c if c > 0 else end
        out.append(text[start:end])
        start = end
    return out


_ENC = None


def _init(vocab: str, merges: str) -> None:
    global _ENC
    _ENC = encoder_for(GPT2Tokenizer.from_files(vocab, merges))


def _encode(text: str) -> np.ndarray:
    return _ENC.encode_array(text)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def main(argv: list[str] | None = None) -> int:
    work = Path(tempfile.mkdtemp(prefix="pythia-bench-tokenize-"))
    try:
        return run(argv, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run(argv: list[str] | None, work: Path) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=None,
                    help="text to train the vocabulary on and to encode (default: $PYTHIA_SHAKESPEARE)")
    ap.add_argument("--vocab", type=int, default=50000, help="tokens of the vocabulary tokenizers trains for encoding")
    ap.add_argument("--encode-mb", type=float, default=5.0, help="MB of text encoded per measurement")
    ap.add_argument("--train-mb", type=float, default=100.0, help="MB of synthetic text both trainers learn from")
    ap.add_argument("--train-vocab", type=int, default=8192, help="tokens both trainers learn")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2, help="Pythia's encoding processes in the batch row")
    a = ap.parse_args(argv)
    a.data = shakespeare(a.data)
    if BACKEND != "cython":
        sys.exit("the compiled BPE (pythia._bpe) is not built or PYTHIA_KERNELS=numpy; build with pip install -e .")
    try:
        import tokenizers
        from tokenizers import ByteLevelBPETokenizer
    except ImportError:
        tokenizers = None
    try:
        import tiktoken
    except ImportError:
        tiktoken = None

    source = a.data.read_text(encoding="utf-8")
    if tokenizers is not None:
        hf = ByteLevelBPETokenizer()
        hf.train_from_iterator([source], vocab_size=a.vocab, min_frequency=2, show_progress=False)
        hf.save_model(str(work))
        vocab, merges = work / "vocab.json", work / "merges.txt"
    else:
        vocab, merges = REPO / "tests" / "fixtures" / "gpt2" / "vocab.json", REPO / "tests" / "fixtures" / "gpt2" / "merges.txt"
        print("tokenizers is not installed: Pythia's rows only, on the test fixtures' vocabulary")
    tok = GPT2Tokenizer.from_files(vocab, merges)
    enc = encoder_for(tok)
    reps = max(1, int(a.encode_mb * 1e6 / len(source.encode("utf-8")) + 0.999))
    text = source * reps
    mb = len(text.encode("utf-8")) / 1e6
    batch = pieces(text)
    ref_ids = enc.encode_array(text)
    print(f"vocabulary {tok.vocab_size:,} tokens; encoding {mb:.1f} MB ({reps} x {a.data.name}), "
          f"{len(ref_ids):,} tokens, {len(batch)} pieces", flush=True)

    methods = {"pythia, one call (1 core)": lambda: enc.encode_array(text)}
    pool = mp.get_context("fork").Pool(a.workers, initializer=_init, initargs=(str(vocab), str(merges)))
    pool.map(_encode, batch[: a.workers])                         # start the workers before timing
    methods[f"pythia, {a.workers} processes (as prepare)"] = lambda: np.concatenate(pool.map(_encode, batch, 1))
    if tokenizers is not None:
        methods["tokenizers encode, one call"] = lambda: hf.encode(text).ids
        methods["tokenizers encode_batch (all cores)"] = lambda: [i for e in hf.encode_batch(batch) for i in e.ids]
    if tiktoken is not None and tokenizers is not None:
        ranks = {bytes(tok.byte_decoder[c] for c in t): i for t, i in tok.encoder.items() if t not in tok.special_tokens}
        tk = tiktoken.Encoding("bench", pat_str=GPT2_PATTERN, mergeable_ranks=ranks, special_tokens={})
        methods["tiktoken encode_ordinary, one call"] = lambda: tk.encode_ordinary(text)
        methods["tiktoken encode_ordinary_batch (all cores)"] = \
            lambda: [i for ids in tk.encode_ordinary_batch(batch, num_threads=os.cpu_count() or 2) for i in ids]

    times: dict[str, list[float]] = {m: [] for m in methods}
    same: dict[str, bool] = {}
    for _ in range(a.repeats):
        for name, fn in methods.items():
            dt, ids = timed(fn)
            times[name].append(dt)
            same[name] = list(map(int, ids)) == ref_ids.tolist()
    pool.terminate()

    one_mb = source[: 1_000_000]
    dt_ref, ids = timed(lambda: tok.encode(one_mb))
    rows = [(name, [mb / t for t in ts], same[name]) for name, ts in times.items()]
    rows.append(("pythia reference (pure Python), first MB", [len(one_mb.encode()) / 1e6 / dt_ref],
                 ids == enc.encode(one_mb)))
    (work / "text.txt").write_text(text, encoding="utf-8")
    prep = []
    for _ in range(a.repeats):
        out = work / "text.tok"
        cmd = [sys.executable, "-m", "pythia", "prepare", "--data", "text.txt", "--out", str(out), "--force",
               "--gpt2", str(work if tokenizers is not None else vocab.parent), "--workers", str(a.workers)]
        dt, r = timed(lambda: subprocess.run(cmd, cwd=work, capture_output=True, text=True,
                                             env={**os.environ, "PYTHONPATH": str(REPO)}))
        if r.returncode != 0:
            sys.exit(r.stderr)
        prep.append(mb / dt)
    bins = np.concatenate([np.fromfile(out / "train.bin", dtype="<u2"), np.fromfile(out / "val.bin", dtype="<u2")])
    rows.append((f"pythia prepare --gpt2, {a.workers} workers, end to end", prep, bins.tolist() == ref_ids.tolist()))

    print("\n| encoder | MB/s median | MB/s range | same ids as Pythia |")
    print("|---|---:|---:|---|")
    for name, rates, ok in rows:
        print(f"| {name} | {statistics.median(rates):,.2f} | {min(rates):,.2f}-{max(rates):,.2f} | "
              f"{'yes' if ok else 'NO'} |")

    if tokenizers is None or a.train_mb <= 0:
        return 0
    from synth_text import generate
    corpus = work / "train.txt"
    generate(corpus, int(a.train_mb * 1e6), seed=3)
    size = corpus.stat().st_size / 1e6
    hf_t, py_t = [], []
    for _ in range(a.repeats):
        h = ByteLevelBPETokenizer()
        dt, _ = timed(lambda: h.train([str(corpus)], vocab_size=a.train_vocab, min_frequency=2, show_progress=False))
        hf_t.append(dt)

        def ours():
            counts: dict[str, int] = {}
            for piece in read_chunks(corpus, 1 << 20, cut=True):
                count_words(piece, counts)
            return train_merges(counts, a.train_vocab - 257)
        dt, m = timed(ours)
        py_t.append(dt)
    ours_b = [(tok_bytes(m, x), tok_bytes(m, y)) for x, y in m[:1000]]
    decoder = {c: b for b, c in tok.byte_encoder.items()}
    theirs = _hf_merges(h, work, decoder)
    common = len(set(ours_b) & set(theirs))
    print(f"\nBPE training on {size:,.1f} MB of synthetic text to {a.train_vocab:,} tokens "
          f"(tokenizers {tokenizers.__version__}, {os.cpu_count()} cores):")
    print("\n| trainer | seconds median | range |")
    print("|---|---:|---:|")
    print(f"| tokenizers BpeTrainer (all cores) | {statistics.median(hf_t):,.1f} | {min(hf_t):,.1f}-{max(hf_t):,.1f} |")
    print(f"| pythia count + train (1 core) | {statistics.median(py_t):,.1f} | {min(py_t):,.1f}-{max(py_t):,.1f} |")
    print(f"\n{common} of the first 1,000 merges are the same pair of byte strings in both")
    return 0


def tok_bytes(merges: list[tuple[int, int]], i: int, _memo: dict = {}) -> bytes:
    """The bytes of id i under Pythia's merges (256 byte tokens, then one id per merge)."""
    if i < 256:
        return bytes([i])
    key = (id(merges), i)
    if key not in _memo:
        a, b = merges[i - 256]
        _memo[key] = tok_bytes(merges, a) + tok_bytes(merges, b)
    return _memo[key]


def _hf_merges(h, work: Path, decoder: dict[str, int]) -> list[tuple[bytes, bytes]]:
    d = work / "trained"
    d.mkdir(exist_ok=True)
    h.save_model(str(d))
    lines = [x for x in (d / "merges.txt").read_text(encoding="utf-8").splitlines() if x and not x.startswith("#")]
    out = []
    for line in lines[:1000]:
        a, b = line.split(" ")
        out.append((bytes(decoder[c] for c in a), bytes(decoder[c] for c in b)))
    return out


if __name__ == "__main__":
    sys.exit(main())
