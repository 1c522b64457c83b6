"""`python -m pythia eval`: the perplexity of a text under a model, by Hugging Face's sliding
windows (pythia.evaluate), and optionally its agreement with a reference model."""
from __future__ import annotations

import argparse
import json
import sys
import time

from ..errors import ConfigError
from .kernel_choice import add_kernel_flag, select_kernels
from .model_source import add_model_source, load_model
from .types import positive_int

NAME = "eval"
SUMMARY = "measure a model's perplexity on a text file"
DESCRIPTION = ("Print the token count, the mean negative log-likelihood (nats per token) and the perplexity "
               "of --data under the model, with the sliding windows of Hugging Face's 'Perplexity of "
               "fixed-length models' guide: windows of --context tokens every --stride tokens, each scoring "
               "only the tokens no earlier window scored. --compare-to SRC also prints the mean KL divergence "
               "from SRC's predictions to the model's and how often both rank the same token first.")
EPILOG = ("examples:\n  python -m pythia eval --model ./gpt2 --data wiki.txt\n"
          "  python -m pythia eval --model ./gpt2 --data wiki.txt --quantize int8 --compare-to ./gpt2\n"
          "  python -m pythia eval --model gpt2-q8.npz --data wiki.txt --context 512 --stride 256 --json")


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_source(p, quantize=True)
    p.add_argument("--data", required=True, metavar="FILE", help="the UTF-8 text to score")
    p.add_argument("--context", type=positive_int, default=None, metavar="N",
                   help="tokens per window (default: the model's context length)")
    p.add_argument("--stride", type=positive_int, default=None, metavar="S",
                   help="tokens between window starts, 1..N (default: half the context)")
    p.add_argument("--compare-to", metavar="SRC", default=None,
                   help="a reference model (checkpoint or Hugging Face folder, same tokenizer) to compare "
                        "the model's predictions with, e.g. the float32 model of an int8 one")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    add_kernel_flag(p)


def read_text(path: str) -> str:
    from ..system.inputs import read_regular
    raw = read_regular(path, "--data", ConfigError, hint="give a UTF-8 text file")
    if not raw.strip():
        raise ConfigError(f"--data {path!r} is empty; give a text of at least two tokens")
    return raw.decode("utf-8", errors="replace")


def encode(m, text: str) -> list[int]:
    """The text as the model's tokenizer frames it (a Hugging Face tokenizer adds its BOS, as
    transformers' tokenizer(text) in the guide does); characters a character vocabulary lacks are
    dropped."""
    filt = getattr(m.tokenizer, "filter", None)
    if filt is not None:
        text, _ = filt(text)
    return m.prompt_ids(text)


class Progress:
    """Scored tokens so far, percent and ETA on stderr: redrawn in place on a terminal, else a
    line every tenth; nothing for a run done within QUIET_S seconds."""

    QUIET_S = 1.0

    def __init__(self, stream, label: str):
        self.stream, self.label, self.t0, self.shown = stream, label, time.monotonic(), -1
        self.live = getattr(stream, "isatty", lambda: False)()

    def __call__(self, done: int, total: int) -> None:
        from ..ui import fmt_duration
        elapsed = time.monotonic() - self.t0
        if elapsed < self.QUIET_S and self.shown < 0:
            return                                                       # a short run needs no progress
        eta = elapsed / done * (total - done) if done else 0.0
        tenth = 10 * done // max(total, 1)
        line = f"{self.label}: {done:,}/{total:,} tokens {100 * done / max(total, 1):3.0f}%  ETA {fmt_duration(eta)}"
        if self.live:
            self.stream.write("\r" + line + ("\n" if done >= total else ""))
        elif tenth != self.shown:
            self.stream.write(line + "\n")
        self.shown = tenth
        self.stream.flush()


def run(args: argparse.Namespace) -> int:
    from .. import evaluate
    select_kernels(args.kernels)
    text = read_text(args.data)
    m = load_model(args)
    model = m.model
    top = int(model.config.block_size)
    context = top if args.context is None else args.context
    if context > top:
        raise ConfigError(f"--context {context} exceeds the model's {top} positions; use --context {top} or less")
    if context < 2:
        raise ConfigError("--context must be at least 2 tokens (one to predict from, one to score)")
    stride = max(1, context // 2) if args.stride is None else args.stride
    if stride > context:
        raise ConfigError(f"--stride {stride} is above --context {context}; give a stride from 1 to {context}")
    ids = encode(m, text)
    if len(ids) < 2:
        raise ConfigError(f"--data {args.data!r} is {len(ids)} token(s) long; perplexity needs at least 2")
    print(f"pythia: {m.description}, {len(ids):,} tokens, context {context}, stride {stride}", file=sys.stderr)

    def logits(model):
        return lambda idx: model.forward(idx)                            # (1, T) -> (1, T, V)

    t0 = time.perf_counter()
    try:
        if args.compare_to:
            ref = _reference(args.compare_to, model, ids, text, context)
            r = evaluate.compare(logits(ref.model), logits(model), ids, context, stride,
                                 Progress(sys.stderr, "eval"), max_context=top)
        else:
            r = evaluate.perplexity(logits(model), ids, context, stride, Progress(sys.stderr, "eval"),
                                    max_context=top)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    seconds = time.perf_counter() - t0
    out = {"model": m.description, "data": args.data, "tokens": r["tokens"], "nll": r["nll"], "ppl": r["ppl"],
           "context": context, "stride": stride, "seconds": round(seconds, 3)}
    if args.compare_to:
        out.update(compare_to=args.compare_to, kl=r["kl"], top1=r["top1"])
    if args.json:
        print(json.dumps(out))
        return 0
    print(f"tokens      {r['tokens']:,} scored of {len(ids):,}")
    print(f"mean NLL    {r['nll']:.6f} nats/token")
    print(f"perplexity  {r['ppl']:.4f}")
    if args.compare_to:
        print(f"mean KL     {r['kl']:.6f} nats/token from {args.compare_to}")
        print(f"top-1 agree {100 * r['top1']:.2f}%")
    print(f"time        {seconds:.1f} s ({r['tokens'] / max(seconds, 1e-9):,.0f} tokens/s)")
    return 0


def _reference(src: str, model, ids: list[int], text: str, context: int):
    from ..formats.source import open_model
    ref = open_model(src)
    if ref.model.config.vocab_size != model.config.vocab_size or encode(ref, text) != ids:
        raise ConfigError(f"--compare-to {src!r} does not share the model's tokenizer (vocabulary "
                          f"{ref.model.config.vocab_size} vs {model.config.vocab_size}, or another split of "
                          f"the text); compare models of the same tokenizer")
    if ref.model.config.block_size < context:
        raise ConfigError(f"--compare-to {src!r} has {ref.model.config.block_size} positions, fewer than "
                          f"--context {context}; use --context {ref.model.config.block_size} or less")
    return ref
