"""Memory and speed of prepared corpora: `prepare` on a big synthetic corpus, and training from it.

    python benchmarks/bench_corpus.py [--mb 1024] [--vocab 4096] [--steps 200] [--workers 2]
                                      [--dir PARENT] [--keep]

1. Generates --mb MB of synthetic text (benchmarks/synth_text.py) in 4 files in a temporary
   folder (under --dir, default the system's temporary directory; removed at the end unless
   --keep), and a 1 MB corpus from the same generator.
2. Runs `python -m pythia prepare` on it with the character tokenizer and with a BPE of --vocab
   tokens trained on the default sample (--workers processes encode), each in a child process.
3. Runs `python -m pythia train --data DIR --steps N` at config S (the defaults: batch 8, block
   32, d_model 48, 3 layers, 4 heads) on the big char folder, on the 1 MB one, and on the 1 MB
   text file itself.

Memory, two ways: "RSS" is the peak resident set of the largest single process of the run (its
VmHWM, read every 50 ms while it runs); "PSS" is the peak, sampled
every 50 ms, of the proportional set size summed over the child and all its descendants (pages
shared by forked workers counted once in all). A memory-mapped file's pages count while they are
mapped and touched. Prints one markdown table.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from synth_text import generate  # noqa: E402


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return out


def _field_kb(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def run_measured(cmd: list[str], cwd: Path) -> dict:
    """Run cmd; wall seconds, the largest process's peak RSS (MB) and the tree's peak PSS (MB).

    Peak RSS is each process's VmHWM (its own high-water mark since exec), read while it runs;
    getrusage's ru_maxrss of a child would also count the parent's pages copied at fork.
    """
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    peak, hwm = [0], {}
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            pids, total, seen = [p.pid], 0, set()
            while pids:
                q = pids.pop()
                if q in seen:
                    continue
                seen.add(q)
                total += _field_kb(f"/proc/{q}/smaps_rollup", "Pss:")
                hwm[q] = max(hwm.get(q, 0), _field_kb(f"/proc/{q}/status", "VmHWM:"))
                pids += _children(q)
            peak[0] = max(peak[0], total)
            done.wait(0.05)
    t = threading.Thread(target=sample, daemon=True)
    t.start()
    out = p.stdout.read()
    err = p.stderr.read()
    done.set()                      # stdout closed: the run is ending; take no sample of a zombie
    t.join()
    p.wait()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed ({p.returncode}): {' '.join(cmd)}\n{err.decode()[-2000:]}")
    return {"wall": wall, "rss": max(hwm.values(), default=0) / 1024, "pss": peak[0] / 1024, "stdout": out.decode()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mb", type=float, default=1024, help="size of the synthetic corpus in MB (1e6 bytes)")
    ap.add_argument("--vocab", type=int, default=4096, help="tokens of the trained BPE")
    ap.add_argument("--steps", type=int, default=200, help="training steps at config S")
    ap.add_argument("--workers", type=int, default=2, help="prepare's encoding processes")
    ap.add_argument("--dir", default=None, help="where to make the temporary folder")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    a = ap.parse_args(argv)

    work = Path(tempfile.mkdtemp(prefix="pythia-bench-corpus-", dir=a.dir))
    py = [sys.executable, "-m", "pythia"]
    rows = []
    try:
        t0 = time.perf_counter()
        files = []
        for k in range(4):
            f = work / f"part{k}.txt"
            generate(f, int(a.mb * 1e6 / 4), seed=k)
            files.append(f)
        small = work / "small.txt"
        generate(small, int(1e6), seed=9)
        size = sum(f.stat().st_size for f in files) / 1e6
        print(f"generated {size:,.1f} MB in {time.perf_counter() - t0:.0f}s", flush=True)
        names = [f.name for f in files]

        for label, extra in (("char", []), (f"bpe {a.vocab}", ["--tokenizer", "bpe", "--vocab-size", str(a.vocab)])):
            out = "big-" + label.split()[0] + ".tok"
            r = run_measured([*py, "prepare", "--data", *names, "--out", out, "--workers", str(a.workers), *extra],
                             work)
            how = "" if label == "char" else f", {a.workers} workers"
            rows.append((f"prepare, {label}{how}", size, r, size / r["wall"]))
            print(r["stdout"].strip().splitlines()[-2], flush=True)
            if label != "char":
                shutil.rmtree(work / out)                    # disk: only the char folder is trained on
        run_measured([*py, "prepare", "--data", "small.txt", "--out", "small.tok"], work)

        train = [*py, "train", "--steps", str(a.steps), "--eval-interval", str(max(1, a.steps // 2))]
        for label, data, mb in (("train S, big char folder", "big-char.tok", size),
                                ("train S, 1 MB char folder", "small.tok", 1.0),
                                ("train S, 1 MB text file", "small.txt", 1.0)):
            r = run_measured([*train, "--data", data, "--out", f"{data}.npz"], work)
            rows.append((f"{label}, {a.steps} steps", mb, r, None))
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    print("\n| run | corpus MB | wall s | MB/s | peak RSS MB (largest process) | peak PSS MB (all processes) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, mb, r, rate in rows:
        print(f"| {label} | {mb:,.1f} | {r['wall']:,.1f} | {'' if rate is None else f'{rate:,.1f}'} | "
              f"{r['rss']:,.1f} | {r['pss']:,.1f} |")
    big, small_dir = rows[-3][2], rows[-2][2]
    print(f"\ntraining from the big folder uses {big['rss'] - small_dir['rss']:+,.1f} MB RSS "
          f"({big['pss'] - small_dir['pss']:+,.1f} MB PSS) against the 1 MB folder")
    return 0


if __name__ == "__main__":
    sys.exit(main())
