"""Training step time of presets, measured side by side: what a preset's run costs on this machine.

    python benchmarks/preset_step_time.py chat seed
    python benchmarks/preset_step_time.py chat chat+d_model=128,block_size=128 seed --rounds 8

A name may carry changed values after a '+' (KEY=VALUE,...), to time a variant of a preset.
Builds each preset's model and optimizer on the bundled corpus, then runs blocks of --block
training steps per preset in turn, --rounds times (interleaved, so a busy spell of the machine
slows every preset alike), and reports each preset's median ms/step with its range, and its
ratio to the last one named (the reference). On a shared machine the ratio is the
figure to trust: a preset's time on an idle machine is its ratio times the reference's idle
time (the seed's config S, bench_train_step.py's CONFIGS, takes 3.1 ms/step on 2 idle cores).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="+", help="preset names (NAME or NAME+KEY=VALUE,...); the last is the reference")
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--block", type=int, default=20, help="steps per preset per round")
    args = ap.parse_args(argv)
    from pythia import kernels
    from pythia.corpus import bundled_corpus_files
    from pythia.training.presets import MODEL_KEYS, get_preset
    from pythia.train import prepare_trainer

    runs = {}
    for name in args.presets:
        base, _, changes = name.partition("+")
        values = get_preset(base)
        for kv in filter(None, changes.split(",")):
            key, _, text = kv.partition("=")
            values[key] = type(values[key])(float(text))
        tr = prepare_trainer(bundled_corpus_files(), model={k: values[k] for k in MODEL_KEYS},
                             train={k: v for k, v in values.items() if k not in MODEL_KEYS})
        runs[name] = (tr, values, [])
    for name, (tr, _, _) in runs.items():                   # warm-up: one block each
        for _ in range(args.block):
            _step(tr)
    for _ in range(args.rounds):
        for name, (tr, _, times) in runs.items():
            for _ in range(args.block):
                t0 = time.perf_counter()
                _step(tr)
                times.append(time.perf_counter() - t0)
    ref = args.presets[-1]
    ref_ms = 1000 * statistics.median(runs[ref][2])
    print(f"kernels {kernels.BACKEND}; {args.rounds} rounds of {args.block} steps per preset, interleaved")
    print("| preset | batch, block, d_model, layers, heads | steps | median ms/step (min-max of round medians) "
          f"| ratio to {ref} |")
    print("|---|---|---|---|---|")
    for name, (tr, v, times) in runs.items():
        med = 1000 * statistics.median(times)
        rounds = [1000 * statistics.median(times[i:i + args.block]) for i in range(0, len(times), args.block)]
        shape = f"{v['batch_size']}, {v['block_size']}, {v['d_model']}, {v['n_layer']}, {v['n_head']}"
        print(f"| {name} | {shape} | {v['steps']} | {med:.1f} ({min(rounds):.1f}-{max(rounds):.1f}) "
              f"| {med / ref_ms:.2f} |")
    return 0


def _step(tr) -> None:
    """One training step as Trainer.run takes it: batch, loss, backward, optimizer update."""
    x, y = tr.dataset.get_batch("train", tr.cfg.batch_size, tr.rng)
    tr.model.loss(x, y)
    tr.model.backward()
    tr.optimizer.step()


if __name__ == "__main__":
    sys.exit(main())
