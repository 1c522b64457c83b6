"""Chat quality of a preset: train it on the bundled corpus, then answer fixed prompts.

    python benchmarks/chat_quality.py --preset chat
    python benchmarks/chat_quality.py --preset seed --show        # and print every reply

Trains the preset exactly as `python -m pythia train-chat --preset NAME` does (the bundled
data/input.txt + data/model.txt), then sends each prompt of PROMPTS to a fresh conversation with
the chat's sampling as train-chat sets it for the preset (its temperature, or --temperature; top-k
40; replies up to 200 tokens) and a fixed seed, and reports:

    ended     share of replies that end on their own (a new line or a speaker tag) before the limit
    corpus    share of reply words (runs of letters and apostrophes, case folded) found in the corpus
    distinct  share of distinct replies (over all replies of all --seed passes)
              (with several --seed values, also each seed's own three shares, after the table)
    length    mean reply length in characters (and words)
    training  wall seconds of the training run, and steps x the median step time: the median is
              robust to the evaluation steps and to other work sharing the machine, so it is the
              figure to compare with "about a minute"

Every prompt is checked to be absent from the corpus as a user line. A benchmark, not a test.
"""
from __future__ import annotations

import argparse
import io
import re
import statistics
import sys
import time
from pathlib import Path

PROMPTS = [
    # greetings
    "Hello, Pythia!", "Hi, nice to see you.", "Good morning to you.", "Hey, how is your day?",
    "Hello friend", "Greetings!", "Hi again, it is me.", "Good evening, Pythia!",
    # questions
    "What is your favourite thing?", "Can you tell me about the ocean?", "How do fish breathe?",
    "Why do cats sleep so much?", "What is the moon made of?", "How tall is a tree?",
    "What do you eat for breakfast?", "Where do rivers go?", "Why is snow white?",
    "Can you tell me a riddle?", "What is your best story?", "Do you like the rain?",
    "How does a train move?", "What is in a garden?", "Who lives in a lighthouse?",
    "Why do people bake bread?", "What is a good name for a dog?", "How do you feel today?",
    "Can you write a poem?", "What is the biggest animal?", "Do you ever get tired?",
    "What should I read next?", "How far away are the stars?", "What do bees like?",
    # statements
    "I went to the beach today.", "My cat is sleeping on my bed.", "I baked a cake this morning.",
    "It is very windy outside.", "I like to read books.", "I saw a rainbow yesterday.",
    "My friend is sick.", "I want to learn music.", "The train was late today.",
    "I planted some flowers.", "You are a nice model.", "I am going to sleep now.",
]
WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def reply_metrics(replies: list[str], ended: list[bool], vocabulary: set[str]) -> dict:
    """The shares and means reported for one run (see the module docstring)."""
    ws = [w for r in replies for w in words(r)]
    n = max(1, len(replies))
    return {"ended": sum(ended) / n, "corpus": (sum(w in vocabulary for w in ws) / len(ws)) if ws else 0.0,
            "distinct": len(set(replies)) / n, "chars": sum(len(r) for r in replies) / n, "words": len(ws) / n}


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="chat", help="seed, chat or shakespeare (default: chat)")
    ap.add_argument("--steps", type=int, default=None, help="override the preset's steps (smoke tests)")
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                    help="override preset values, e.g. d_model=64 lr=0.003 (for choosing a preset)")
    ap.add_argument("--prompts", type=int, default=len(PROMPTS), help="use only the first N prompts")
    ap.add_argument("--seed", type=int, nargs="+", default=[7],
                    help="seed(s) of the chat's sampler; each seed answers every prompt (default: 7)")
    ap.add_argument("--temperature", type=float, nargs="+", default=None,
                    help="chat temperature(s); one table row each (default: the one train-chat uses with the preset)")
    ap.add_argument("--show", action="store_true", help="print every prompt and reply")
    ap.add_argument("--save", type=Path, default=None, metavar="CKPT", help="also save the trained model")
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from pythia import kernels
    from pythia.chat import ChatSession, ChatSettings
    from pythia.corpus import bundled_corpus_files
    from pythia.errors import PythiaError
    from pythia.training.presets import MODEL_KEYS, chat_sampling, get_preset
    from pythia.train import prepare_trainer
    from pythia.ui import ConsoleUI

    try:
        values = get_preset(args.preset)
    except PythiaError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for item in args.set:
        key, _, text = item.partition("=")
        if key not in values:
            print(f"error: --set {item}: no preset value {key!r}", file=sys.stderr)
            return 2
        values[key] = type(values[key])(float(text)) if isinstance(values[key], int) else float(text)
    if args.steps is not None:
        values["steps"] = args.steps
    files = bundled_corpus_files()
    corpus = "".join(p.read_text(encoding="utf-8") for p in files)
    seen = [p for p in PROMPTS if f"User: {p}\n" in corpus]
    assert not seen, f"prompts found in the corpus: {seen}"
    vocabulary = set(words(corpus))

    step_s: list[float] = []
    last = [0.0]

    def on_progress(p) -> None:
        step_s.append(p.elapsed_s - last[0])
        last[0] = p.elapsed_s

    sizes = {k: values[k] for k in MODEL_KEYS}
    train = {k: v for k, v in values.items() if k not in MODEL_KEYS}
    trainer = prepare_trainer(files, model=sizes, train=train, on_progress=on_progress, out=args.save)
    t0 = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - t0
    median_ms = 1000 * statistics.median(step_s)
    model, tokenizer = trainer.model, trainer.tokenizer

    rows, per_seed = [], []
    temperatures = args.temperature or [ChatSettings(**chat_sampling(args.preset)).temperature]
    for temperature in temperatures:
        replies, ended = [], []
        for seed in args.seed:                             # one pass over the prompts per chat seed
            session = ChatSession(model, tokenizer, ui=ConsoleUI(io.StringIO(), color=False, live=False),
                                  settings=ChatSettings(seed=seed, temperature=temperature), stdin=io.StringIO(""))
            for prompt in PROMPTS[:args.prompts]:
                session.transcript = ""                    # each prompt opens a fresh conversation
                replies.append(session.reply(prompt))
                ended.append(session.ended)
                if args.show:
                    print(f"User: {prompt}\nPythia: {replies[-1]}{'' if ended[-1] else '  [cut at the limit]'}\n")
        m = reply_metrics(replies, ended, vocabulary)
        n = len(PROMPTS[:args.prompts])             # replies per seed pass
        shares = [reply_metrics(replies[i * n:(i + 1) * n], ended[i * n:(i + 1) * n], vocabulary)
                  for i in range(len(args.seed))]
        per_seed.append(f"temperature {temperature:g}, per chat seed (ended / corpus words / distinct): " + "; ".join(
            f"{seed}: {100 * s['ended']:.0f}% / {100 * s['corpus']:.1f}% / {100 * s['distinct']:.0f}%"
            for seed, s in zip(args.seed, shares)))
        rows.append(f"| {args.preset} | {temperature:g} | {result.steps} | {median_ms:.1f} | "
                    f"{result.steps * median_ms / 1000:.1f} | {wall:.1f} | {result.val_loss:.3f} | {100 * m['ended']:.0f}% "
                    f"| {100 * m['corpus']:.1f}% | {100 * m['distinct']:.0f}% | {m['chars']:.0f} / {m['words']:.1f} |")

    shape = ", ".join(f"{k} {v:g}" for k, v in values.items())
    print(f"preset {args.preset}: {shape}")
    print(f"kernels {kernels.BACKEND}; {result.steps} steps, val loss {result.val_loss:.4f}; "
          f"{args.prompts} prompts x chat seeds {', '.join(map(str, args.seed))}")
    print()
    print("| preset | temperature | steps | median ms/step | steps x median (s) | wall (s) | val loss | ended "
          "| corpus words | distinct | mean length (chars / words) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if len(args.seed) > 1:
        print()
        print("\n".join(per_seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
