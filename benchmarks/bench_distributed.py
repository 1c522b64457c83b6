"""Data-parallel scaling: tokens/s of one process against two MPI processes, and the allreduce.

    python benchmarks/bench_distributed.py                    # configs M and L, 3 interleaved repeats
    python benchmarks/bench_distributed.py --configs M --repeats 1 --no-hosts

Training throughput of `python -m pythia train` on Tiny Shakespeare (read in place: --data FILE,
else the file $PYTHIA_SHAKESPEARE names; corpus_path.py), three ways, in turn within
each repeat so that a busy period of the machine hits all of them:

  1 process         the plain program: on 2 cores it splits each batch into two shards (threads.py)
  2 x 1 core        mpiexec -n 2: each rank pinned to one core, one BLAS thread, half the batch
  2 across veth     mpiexec over two network namespaces joined by a veth pair (needs root), the
                    ranks' gradients crossing that link by TCP; each "host" pinned to a core of
                    its own, its rank on one thread

tokens/s = (B * T tokens) x (timed steps) / (wall time between the end of the last warm-up step
and the end of the second-to-last step), from the run's --log-file, so start-up, the final
evaluation and the checkpoint write are outside it. Reported: median and range over repeats.

The allreduce: `mpiexec -n 2` of this script in --allreduce mode times the in-place Allreduce of
a float32 buffer of the model's gradient size (after a barrier; median of repeats), on one host
(shared memory) and across the veth. Per step a rank sends and receives about the gradient's
bytes, so on a cluster: allreduce time per step ~ latency + 2 * (N - 1) / N * bytes / bandwidth
(ring), against a step's compute time, which N ranks divide by N.

A benchmark, not a test: it takes minutes. Results with the machine: benchmarks/README.md.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from corpus_path import shakespeare  # beside this script

# batch, block, d_model, layers, heads (bench_train_step.py's CONFIGS); warm-up and timed steps per run
CONFIGS = {"S": (8, 32, 48, 3, 4, 3, 20), "M": (12, 64, 128, 4, 4, 5, 30), "L": (16, 256, 384, 6, 6, 2, 6)}
THREAD_ENV = ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")
NS_A, NS_B, DEV_A, DEV_B, NET = "pybench-a", "pybench-b", "pybva", "pybvb", "10.235.7"
LAUNCHER = f"""#!/bin/sh
# ssh for hydra: `LAUNCHER -x HOST COMMAND...` runs COMMAND in HOST's namespace under its own host name
[ "$1" = "-x" ] && shift
host=$1; shift
# each "host" gets its own core, as a rank per core is pinned on one host
case $host in {NET}.1) ns={NS_A}; core=0;; {NET}.2) ns={NS_B}; core=1;; *) exit 1;; esac
exec taskset -c "$core" ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
"""


def mpiexec() -> str:
    beside = Path(sys.executable).parent / "mpiexec"
    found = str(beside) if beside.exists() else shutil.which("mpiexec")
    if found is None:
        sys.exit("error: no mpiexec; pip install '.[mpi]'")
    return found


def n_params(cfg: str) -> int:
    from pythia.model import Pythia, PythiaConfig
    B, T, C, L, H, _, _ = CONFIGS[cfg]
    return Pythia(PythiaConfig(vocab_size=65, block_size=T, d_model=C, n_layer=L, n_head=H), init=False).num_params()


# ---------------------------------------------------------------------------- two "hosts"

def make_hosts(work: Path) -> tuple[Path, Path] | None:
    """Namespaces A and B over a veth pair; (hostfile, launcher), or None where they cannot be made."""
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        return None
    drop_hosts()
    cmds = [f"ip netns add {NS_A}", f"ip netns add {NS_B}", f"ip link add {DEV_A} type veth peer name {DEV_B}",
            f"ip link set {DEV_A} netns {NS_A}", f"ip link set {DEV_B} netns {NS_B}",
            f"ip -n {NS_A} addr add {NET}.1/24 dev {DEV_A}", f"ip -n {NS_B} addr add {NET}.2/24 dev {DEV_B}"]
    for ns, dev in ((NS_A, DEV_A), (NS_B, DEV_B)):
        cmds += [f"ip -n {ns} link set {dev} up", f"ip -n {ns} link set lo up"]
    for c in cmds:
        if subprocess.run(c.split(), capture_output=True).returncode != 0:
            drop_hosts()
            return None
    launcher, hosts = work / "launch.sh", work / "hosts"
    launcher.write_text(LAUNCHER)
    launcher.chmod(0o755)
    hosts.write_text(f"{NET}.1\n{NET}.2\n")
    return hosts, launcher


def drop_hosts() -> None:
    for ns in (NS_A, NS_B):
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def launch(mode: str, hosts) -> tuple[list[str], dict]:
    """The command prefix and environment of a mode."""
    env = {k: v for k, v in os.environ.items() if k not in THREAD_ENV}
    if mode == "1 process":
        return [], env
    if mode == "2 x 1 core":
        return [mpiexec(), "-n", "2"], env
    hostfile, launcher = hosts
    # one thread per rank (the two namespaces share 2 cores); UCX_TLS: TCP, not shared memory
    env.update(OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", UCX_TLS="tcp,self")
    return ["ip", "netns", "exec", NS_A, mpiexec(), "-f", str(hostfile), "-n", "2", "-ppn", "1",
            "-launcher", "ssh", "-launcher-exec", str(launcher)], env


# ---------------------------------------------------------------------------- measurements

def tokens_per_s(cfg: str, mode: str, hosts, data: Path, work: Path) -> float:
    B, T, C, L, H, warm, timed = CONFIGS[cfg]
    steps = warm + timed + 1
    log, out = work / "run.jsonl", work / "run.npz"
    log.unlink(missing_ok=True)
    prefix, env = launch(mode, hosts)
    cmd = prefix + [sys.executable, "-m", "pythia", "train", "--data", str(data), "--steps", str(steps),
                    "--batch-size", str(B), "--block-size", str(T), "--d-model", str(C), "--n-layer", str(L),
                    "--n-head", str(H), "--eval-interval", str(10 ** 6), "--eval-iters", "1",
                    "--log-file", str(log), "--out", str(out), "--force"]
    r = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=work, timeout=3600)
    if r.returncode != 0:
        sys.exit(f"error: {mode} run failed: {r.stderr.strip()[-500:]}")
    elapsed = {rec["step"]: rec["elapsed_s"] for rec in map(json.loads, log.read_text().splitlines())}
    return timed * B * T / (elapsed[warm + timed] - elapsed[warm])


def allreduce_ms(nbytes: int, hosts, across: bool, reps: int) -> float:
    prefix, env = launch("2 across veth" if across else "2 x 1 core", hosts)
    r = subprocess.run(prefix + [sys.executable, str(Path(__file__).resolve()), "--allreduce", str(nbytes // 4),
                                 "--reps", str(reps)], capture_output=True, text=True, env=env, timeout=1200)
    if r.returncode != 0:
        sys.exit(f"error: allreduce run failed: {r.stderr.strip()[-500:]}")
    return float(r.stdout.split()[-1])


def allreduce_worker(n: int, reps: int) -> None:
    """Under mpiexec: median ms of an in-place float32 Allreduce of n values (rank 0 prints it)."""
    import numpy as np
    from mpi4py import MPI
    comm = MPI.COMM_WORLD
    buf = np.ones(n, np.float32)
    times = []
    for _ in range(reps + 2):
        comm.Barrier()
        t0 = time.perf_counter()
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        times.append(time.perf_counter() - t0)
    if comm.Get_rank() == 0:
        print(f"{1000 * statistics.median(times[2:]):.3f}")


def fmt(xs: list[float]) -> str:
    return f"{statistics.median(xs):,.0f} ({min(xs):,.0f}-{max(xs):,.0f})"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", nargs="+", default=["M", "L"], choices=sorted(CONFIGS))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--data", type=Path, default=None, help="Tiny Shakespeare (default: $PYTHIA_SHAKESPEARE)")
    ap.add_argument("--no-hosts", action="store_true", help="skip the run across two network namespaces")
    ap.add_argument("--allreduce", type=int, help=argparse.SUPPRESS)   # worker mode, under mpiexec
    ap.add_argument("--reps", type=int, default=20, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.allreduce:
        allreduce_worker(args.allreduce, args.reps)
        return 0
    args.data = shakespeare(args.data)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        hosts = None if args.no_hosts else make_hosts(work)
        if hosts is None and not args.no_hosts:
            print("note: no network namespaces (needs root, ip and unshare): the across-veth rows are left out")
        modes = ["1 process", "2 x 1 core"] + (["2 across veth"] if hosts else [])
        try:
            rows = []
            for cfg in args.configs:
                tps: dict[str, list[float]] = {m: [] for m in modes}
                for _ in range(args.repeats):
                    for m in modes:
                        tps[m].append(tokens_per_s(cfg, m, hosts, args.data, work))
                nbytes = 4 * n_params(cfg)
                base = statistics.median(tps["1 process"])
                for m in modes:
                    ms = "" if m == "1 process" else f"{allreduce_ms(nbytes, hosts, m != '2 x 1 core', 20):.2f}"
                    step_ms = 1000 * CONFIGS[cfg][0] * CONFIGS[cfg][1] / statistics.median(tps[m])
                    share = "" if not ms else f"{100 * float(ms) / step_ms:.0f}%"
                    rows.append(f"| {cfg} | {m} | {fmt(tps[m])} | {statistics.median(tps[m]) / base:.2f}x "
                                f"| {nbytes / 1e6:.1f} | {ms} | {share} |")
        finally:
            if hosts:
                drop_hosts()
    print("| config | run | tokens/s median (range) | vs 1 process | gradient MB | allreduce ms | "
          "allreduce / step |")
    print("|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
