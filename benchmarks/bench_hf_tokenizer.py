"""tokenizer.json encoding speed: HFTokenizer's compiled steps against their Python reference.

    python benchmarks/bench_hf_tokenizer.py [--data FILE] [--mb 1] [--repeats 5]

The text is the first --mb MB of --data (default: the Tiny Shakespeare file $PYTHIA_SHAKESPEARE
names; corpus_path.py). It is encoded with the smollm2 (byte-level, SmolLM2's pipeline), qwen2
(Qwen2's regex) and tinyllama (byte fallback + "▁", TinyLlama's) tokenizers of the test fixtures:
small vocabularies trained offline, so words stay long in symbols and the merge step has work to
do. "cython" is the compiled merge step, and for smollm2 and qwen2 also the compiled
pre-tokenizer (pythia.text.hf_split_fast); tinyllama has no pre-tokenizer. Each backend
encodes the text cold (word cache cleared first: every distinct word is merged once) and warm
(the same text again: every word from the cache); the backends take turns within each repeat.
The table gives the median MB/s and the range; both backends' ids are checked equal first.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from corpus_path import shakespeare  # noqa: E402

from pythia.text import hf_bpe_fast  # noqa: E402
from pythia.text.hf_tokenizer import load_hf_tokenizer  # noqa: E402

FIXTURES = REPO / "tests" / "fixtures" / "hf_tokenizers"
NAMES = ["smollm2", "qwen2", "tinyllama"]
BACKENDS = ["python", "cython"]


def seconds(tok, text: str, *, cold: bool) -> float:
    if cold:
        tok.clear_cache()
    t0 = time.perf_counter()
    tok.encode(text)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=None, help="text file (default: $PYTHIA_SHAKESPEARE)")
    ap.add_argument("--mb", type=float, default=1.0, help="MB of the file to encode")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    if args.mb <= 0 or args.repeats < 1:
        sys.exit("error: --mb must be positive and --repeats at least 1")
    if hf_bpe_fast._hf_bpe is None:
        sys.exit("error: pythia._hf_bpe is not built; run `python setup.py build_ext --inplace` first")
    text = shakespeare(args.data).read_text("utf-8")[: int(args.mb * 1e6)]
    mb = len(text.encode("utf-8")) / 1e6
    print(f"{mb:.2f} MB of {args.data or 'the $PYTHIA_SHAKESPEARE file'}, {args.repeats} repeats, interleaved")
    print(f"| tokenizer | cache | python MB/s | cython MB/s | cython/python |")
    print(f"|---|---|---|---|---|")
    for name in NAMES:
        toks = {b: load_hf_tokenizer(FIXTURES / name, backend=b) for b in BACKENDS}
        if toks["python"].encode(text) != toks["cython"].encode(text):
            sys.exit(f"error: the backends' ids differ on {name}; run tests/test_hf_tokenizer_fast.py")
        for cold in (True, False):
            times: dict[str, list[float]] = {b: [] for b in BACKENDS}
            for _ in range(args.repeats):
                for b in BACKENDS:
                    times[b].append(seconds(toks[b], text, cold=cold))
            rate = {b: [mb / t for t in times[b]] for b in BACKENDS}
            med = {b: statistics.median(rate[b]) for b in BACKENDS}
            cells = [f"{med[b]:.2f} ({min(rate[b]):.2f}-{max(rate[b]):.2f})" for b in BACKENDS]
            print(f"| {name} | {'cold' if cold else 'warm'} | {cells[0]} | {cells[1]} | "
                  f"{med['cython'] / med['python']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
