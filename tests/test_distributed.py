"""Data-parallel training on MPI against the single process as the reference.

Without MPI (pure NumPy): the batch slices tile the single process's batch and leave the random
stream where one process leaves it; the reducer's weighted sum of per-rank mean gradients (run
over ranks simulated by threads) is the full batch's gradient. Under `mpiexec` (subprocesses
with timeouts; skipped when mpi4py or mpiexec is missing): 2 and 3 processes give the single
process's loss at every step and its final weights; checkpoints move between process counts;
faults end the job in bounded time with the right status and leave the last checkpoint
loadable; and a run across two network namespaces joined by a veth pair (two "hosts" whose
traffic crosses a network link) matches too.

Config S (the seed's defaults: batch 8, block 32, d_model 48, 3 layers, 4 heads), 30 steps, all
within the 50 warmup steps, so the learning rate of a step does not depend on --steps and a run
of 15 steps resumed to 30 follows the 30-step run exactly.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from pythia.training import distributed
from pythia.training.distributed import LocalReducer, MPIReducer, PeerFailed, ShardedBatches, check_batch, first_difference, row_range
from pythia.errors import ConfigError

STEPS = 30
FLAGS = ["--steps", str(STEPS), "--warmup-steps", "50", "--eval-interval", "10", "--eval-iters", "4", "--seed", "7"]
LOSS_RTOL = 1e-5       # per-step loss, relative: float32 sums in another order, over 30 Adam steps
WEIGHT_ATOL = 2e-5     # final weights (|w| up to ~1): measured differences are ~1e-6
TIMEOUT = 180          # seconds for any one mpiexec run before the test fails (never hangs)


# ============================================================================ without MPI

@pytest.mark.parametrize("batch, size", [(8, 1), (8, 2), (8, 3), (7, 7), (16, 5), (5, 3)])
def test_row_ranges_tile_the_batch_and_differ_by_at_most_one_row(batch, size):
    ranges = [row_range(batch, r, size) for r in range(size)]
    assert ranges[0][0] == 0 and ranges[-1][1] == batch
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    counts = [hi - lo for lo, hi in ranges]
    assert min(counts) >= 1 and max(counts) - min(counts) <= 1


def test_a_batch_smaller_than_the_processes_is_a_clear_error():
    check_batch(3, 3)
    with pytest.raises(ConfigError, match=r"--batch-size 2 is smaller than the 3 processes.*--batch-size 3"):
        check_batch(2, 3)


class _Source:
    """A batch source drawing like pythia.corpora.data.Dataset: B offsets from rng, windows of T + 1."""
    block_size = 5
    tokens = np.arange(1000) % 97

    def get_batch(self, split, batch_size, rng):
        starts = rng.integers(0, len(self.tokens) - self.block_size, size=batch_size)
        rows = starts[:, None] + np.arange(self.block_size)
        return self.tokens[rows], self.tokens[rows + 1]


@pytest.mark.parametrize("size", [2, 3])
def test_rank_slices_are_the_single_batch_and_the_stream_moves_as_in_one_process(size):
    source, batch = _Source(), 8
    rng_one = np.random.Generator(np.random.PCG64(5))
    rngs = [np.random.Generator(np.random.PCG64(5)) for _ in range(size)]
    for _ in range(3):                                          # three steps: the streams stay together
        x, y = source.get_batch("train", batch, rng_one)
        parts = [ShardedBatches(source, r, size).get_batch("train", batch, rngs[r]) for r in range(size)]
        np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
        np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
        assert all(g.bit_generator.state == rng_one.bit_generator.state for g in rngs)
    assert ShardedBatches(source, 1, size).block_size == 5       # the source's attributes show through
    assert sum(ShardedBatches(source, r, size).weight(batch) for r in range(size)) == pytest.approx(1.0)


class _ThreadWorld:
    """N ranks as threads: Allreduce combines every rank's buffer in rank order (as MPI's result is
    the same on all ranks) and gives each rank the result; a stand-in for mpi4py without MPI."""
    IN_PLACE, SUM, MAX = object(), "sum", "max"

    def __init__(self, n: int):
        self.n, self.bufs, self.barrier = n, [None] * n, threading.Barrier(n)

    def comm(self, rank: int):
        world = self

        class Comm:
            def Get_rank(self):
                return rank

            def Allreduce(self, sendbuf, recvbuf, op):
                assert sendbuf is world.IN_PLACE
                world.bufs[rank] = recvbuf.copy()
                world.barrier.wait()
                total = world.bufs[0].copy()
                for b in world.bufs[1:]:
                    total = total + b if op == world.SUM else np.maximum(total, b)
                world.barrier.wait()
                recvbuf[...] = total
        return Comm()


def _run_ranks(n: int, fn) -> list:
    out: list = [None] * n
    errors: list = []

    def target(r):
        try:
            out[r] = fn(r)
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)
    ts = [threading.Thread(target=target, args=(r,)) for r in range(n)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    return out


@pytest.mark.parametrize("size, batch", [(2, 8), (3, 8), (3, 7)])
def test_reducer_gives_the_full_batch_mean_gradient_and_loss(size, batch):
    """The model's gradient of the full batch's mean loss is the reference; the ranks' reduced
    gradients (weights b_r / B, uneven splits included) must equal it on every rank."""
    from pythia.model import Pythia, PythiaConfig
    cfg = PythiaConfig(vocab_size=97, block_size=5, d_model=16, n_layer=2, n_head=2)
    x, y = _Source().get_batch("train", batch, np.random.default_rng(3))
    ref = Pythia(cfg, seed=1)
    ref_loss = ref.loss(x, y)
    ref.backward()
    world = _ThreadWorld(size)

    def rank(r):
        model = Pythia(cfg, seed=1)
        lo, hi = row_range(batch, r, size)
        reducer = MPIReducer(world.comm(r), (hi - lo) / batch, mpi=world)
        loss = reducer.mean_loss(model.loss(x[lo:hi], y[lo:hi]))
        model.backward()
        reducer.reduce_gradients(model.grads_memory)
        return loss, {k: g.copy() for k, g in model.grads.items()}

    for loss, grads in _run_ranks(size, rank):
        assert loss == pytest.approx(ref_loss, rel=1e-6)
        for k, g in ref.grads.items():
            np.testing.assert_allclose(grads[k], g, rtol=1e-4, atol=1e-7, err_msg=k)


def test_reducer_weights_and_sums_a_flat_gradient_in_place():
    world = _ThreadWorld(2)
    weights = [3 / 8, 5 / 8]
    parts = [np.arange(6, dtype=np.float32) * (r + 1) for r in range(2)]

    def rank(r):
        MPIReducer(world.comm(r), weights[r], mpi=world).reduce_gradients(parts[r])
        return parts[r]
    for grads in _run_ranks(2, rank):
        np.testing.assert_allclose(grads, np.arange(6) * (3 / 8 + 2 * 5 / 8), rtol=1e-7)


def test_reducer_stops_every_rank_when_any_rank_asks():
    world = _ThreadWorld(3)
    asked = {1}
    got = _run_ranks(3, lambda r: MPIReducer(world.comm(r), 1 / 3, mpi=world,
                                             stop_requested=lambda: r in asked).any_stop(False))
    assert got == [True, True, True]
    got = _run_ranks(3, lambda r: MPIReducer(world.comm(r), 1 / 3, mpi=world).any_stop(r == 2))
    assert got == [True, True, True]
    got = _run_ranks(3, lambda r: MPIReducer(world.comm(r), 1 / 3, mpi=world).any_stop(False))
    assert got == [False, False, False]


def test_every_rank_learns_which_signal_stopped_the_run():
    world = _ThreadWorld(3)

    def rank(r):
        reducer = MPIReducer(world.comm(r), 1 / 3, mpi=world, stop_signal=lambda: signal.SIGHUP if r == 2 else None)
        return reducer.any_stop(False), reducer.stop_signum
    assert _run_ranks(3, rank) == [(True, signal.SIGHUP)] * 3


@pytest.mark.parametrize("poll", ["any_stop", "settle"])
def test_an_error_one_rank_held_stops_every_rank_at_the_next_poll_naming_it_once(poll):
    """Rank 0's failed save is held, not raised, until the ranks poll together: then rank 0 raises
    its own error and the others PeerFailed, and each is told whether the error is its own (the
    session then prints one line and calls no MPI_Abort)."""
    world, told = _ThreadWorld(3), {}
    failure = OSError(27, "File too large")

    def rank(r):
        reducer = MPIReducer(world.comm(r), 1 / 3, mpi=world, on_failure=lambda here: told.__setitem__(r, here))
        if r == 0:
            reducer.hold(failure)
            reducer.hold(OSError(28, "a later error"))         # the first one is the one reported
        try:
            reducer.any_stop(False) if poll == "any_stop" else reducer.settle()
        except Exception as e:                                 # noqa: BLE001 - what each rank raised
            return e
        return None
    got = _run_ranks(3, rank)
    assert got[0] is failure
    assert all(isinstance(e, PeerFailed) for e in got[1:]), got
    assert told == {0: True, 1: False, 2: False}
    assert _run_ranks(3, lambda r: MPIReducer(world.comm(r), 1 / 3, mpi=world).any_stop(False)) == [False] * 3


def test_one_process_raises_a_held_error_at_once():
    with pytest.raises(OSError, match="File too large"):
        LocalReducer().hold(OSError(27, "File too large"))
    LocalReducer().settle()


def test_local_reducer_changes_nothing():
    grads = np.arange(4, dtype=np.float32)
    LocalReducer().reduce_gradients(grads)
    np.testing.assert_array_equal(grads, np.arange(4, dtype=np.float32))
    assert LocalReducer().mean_loss(2.5) == 2.5 and LocalReducer().any_stop(True) and not LocalReducer().any_stop(False)


def test_first_difference_names_the_setting_and_both_values():
    a = {"Pythia version": "1", "training": {"lr": 0.003, "steps": 30}, "corpus hash": "ab"}
    assert first_difference(a, dict(a)) is None
    b = {**a, "training": {"lr": 0.001, "steps": 30}}
    assert first_difference(a, b) == "training setting lr is 0.001 there but 0.003 on rank 0"
    assert "corpus hash is 'cd' but rank 0's is 'ab'" in first_difference(a, {**a, "corpus hash": "cd"})


def _python(code: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_one_process_is_the_plain_program_and_mpi4py_is_not_imported():
    clean = {k: "" for k in distributed.SIZE_ENV + distributed.RANK_ENV}
    r = _python("import sys, pythia.training.distributed as d; s = d.session(); print(s.size, s.multi, 'mpi4py' in sys.modules)",
                clean)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["1", "False", "False"]


def test_a_launcher_without_mpi4py_is_a_clear_error_not_n_separate_runs(tmp_path):
    code = ("import sys; sys.modules['mpi4py'] = None\n"
            "from pythia.cli import main\n"
            f"sys.exit(main(['train', '--steps', '1', '--out', {str(tmp_path / 'x.npz')!r}]))")
    r = _python(code, {"PMI_SIZE": "2", "PMI_RANK": "0"})
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: started by an MPI launcher as one of 2 processes, but mpi4py is not installed, so each would "
        "train alone; pip install '.[mpi]', or run without mpiexec"]
    assert not (tmp_path / "x.npz").exists()


# ============================================================================ under mpiexec

def _mpiexec() -> str | None:
    beside = Path(sys.executable).parent / "mpiexec"       # the venv's MPICH, matching its mpi4py
    return str(beside) if beside.exists() else shutil.which("mpiexec")


def _needs_mpi() -> None:
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install '.[mpi]')")
    if _mpiexec() is None:
        pytest.skip("no mpiexec on PATH (pip install '.[mpi]' provides MPICH's)")


def _env(**extra) -> dict:
    from helpers import subprocess_env                        # the code under test first on the path
    env = {k: v for k, v in subprocess_env().items() if k not in distributed.SIZE_ENV + distributed.RANK_ENV}
    env.update(PYTHONUNBUFFERED="1", **extra)
    return env


def _train_cmd(out: Path, *flags: str) -> list[str]:
    return [sys.executable, "-m", "pythia", "train", *FLAGS, "--out", str(out), "--log-file",
            str(out.with_suffix(".jsonl")), "--force", *flags]


def _run(cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(**env))


def _mpi(n: int, cmd: list[str], cwd: Path, **env) -> subprocess.CompletedProcess:
    return _run([_mpiexec(), "-n", str(n), *cmd], cwd, **env)


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["train_loss"] for r in map(json.loads, out.with_suffix(".jsonl").read_text().splitlines())}


def _weights(path: Path) -> dict[str, np.ndarray]:
    with np.load(path) as z:
        return {k: z[k] for k in z.files if k.startswith("param/")}


def _assert_same_run(out: Path, ref: Path, steps=range(1, STEPS + 1)) -> None:
    got, want = _losses(out), _losses(ref)
    assert sorted(got) == list(steps)
    for s in steps:
        assert got[s] == pytest.approx(want[s], rel=LOSS_RTOL), f"step {s}"
    w, wr = _weights(out), _weights(ref)
    assert w.keys() == wr.keys()
    for k in wr:
        np.testing.assert_allclose(w[k], wr[k], rtol=0, atol=WEIGHT_ATOL, err_msg=k)


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    """The reference: today's single process (no launcher), config S, 30 steps."""
    _needs_mpi()
    d = tmp_path_factory.mktemp("single")
    r = _run(_train_cmd(d / "one.npz"), d)
    assert r.returncode == 0, r.stderr
    return d / "one.npz"


@pytest.mark.parametrize("n", [2, 3])
def test_n_processes_give_the_single_process_losses_and_weights(single, tmp_path, n):
    r = _mpi(n, _train_cmd(tmp_path / "n.npz"), tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_same_run(tmp_path / "n.npz", single)
    assert f"processes {n} on 1 host" in r.stdout           # the banner, printed once (rank 0)
    if not any(os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "GOTO_NUM_THREADS", "OMP_NUM_THREADS")):
        share = max(1, len(os.sched_getaffinity(0)) // n)       # the host's cores, split between the ranks
        assert f"processes {n} on 1 host, {share} core{'s' if share > 1 else ''} each" in r.stdout
    assert r.stdout.count("Pythia ") == 1 and r.stdout.count(f"step {STEPS}/{STEPS}") == 1


def test_gradient_accumulation_under_two_processes_gives_the_single_process_run(tmp_path):
    """Each rank accumulates its slices of K micro-batches and the reducer sums the result: the same
    losses and weights as one process accumulating the whole micro-batches."""
    _needs_mpi()
    accum = ["--grad-accum", "2", "--steps", "10"]
    r = _run(_train_cmd(tmp_path / "one.npz", *accum), tmp_path)
    assert r.returncode == 0, r.stderr
    r = _mpi(2, _train_cmd(tmp_path / "two.npz", *accum), tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_same_run(tmp_path / "two.npz", tmp_path / "one.npz", steps=range(1, 11))


@pytest.mark.parametrize("first, then", [(2, 1), (1, 2)])
def test_a_checkpoint_resumes_under_another_process_count(single, tmp_path, first, then):
    ck = tmp_path / "ck.npz"
    half = ["--steps", str(STEPS // 2)]                        # the last --steps wins
    r = _mpi(first, _train_cmd(ck, *half), tmp_path) if first > 1 else _run(_train_cmd(ck, *half), tmp_path)
    assert r.returncode == 0, r.stderr
    more = ["--resume", str(ck)]
    r = _mpi(then, _train_cmd(ck, *more), tmp_path) if then > 1 else _run(_train_cmd(ck, *more), tmp_path)
    assert r.returncode == 0, r.stderr
    _assert_same_run(ck, single, steps=range(1, STEPS + 1))   # the log holds both halves, appended


# ---- faults ----------------------------------------------------------------------------------

def _rank_pid(out: Path, rank: int, deadline: float) -> int:
    """The pid of the training process of `rank` whose command line names out."""
    while time.monotonic() < deadline:
        for p in Path("/proc").iterdir():
            if not p.name.isdigit():
                continue
            try:
                cmd = (p / "cmdline").read_bytes().split(b"\0")
                env = (p / "environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if str(out).encode() in cmd and b"pythia" in cmd and f"PMI_RANK={rank}".encode() in env:
                return int(p.name)
        time.sleep(0.1)
    raise AssertionError(f"no process of rank {rank} found")


def _start_long_run(tmp_path: Path, n: int = 2, **env) -> tuple[subprocess.Popen, Path]:
    """A run far longer than the test, started; returns once its first checkpoint is written."""
    out = tmp_path / "long.npz"
    cmd = [_mpiexec(), "-n", str(n), *_train_cmd(out, "--steps", "100000")]
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(**env), start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not out.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill(proc)
            raise AssertionError(f"the run never saved: {proc.communicate()[1]}")
        time.sleep(0.1)
    return proc, out


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def _finish(proc: subprocess.Popen, within: float) -> tuple[int, str, str, float]:
    t0 = time.monotonic()
    try:
        stdout, stderr = proc.communicate(timeout=within)
    except subprocess.TimeoutExpired:
        _kill(proc)
        proc.communicate()
        raise AssertionError(f"the job did not end within {within} s") from None
    return proc.returncode, stdout, stderr, time.monotonic() - t0


def _checkpoint_step(out: Path) -> int:
    from pythia.formats.checkpoint import load_checkpoint
    return load_checkpoint(out).step                           # loads: not half-written


def _no_rank_left(out: Path, within: float = 10.0) -> bool:
    """True once no process naming out runs (killed ones may take a moment to be reaped)."""
    deadline = time.monotonic() + within
    while True:
        alive = []
        for p in Path("/proc").iterdir():
            try:
                if p.name.isdigit() and str(out).encode() in (p / "cmdline").read_bytes():
                    alive.append(p.name)
            except OSError:
                pass
        if not alive or time.monotonic() > deadline:
            return not alive
        time.sleep(0.2)


def test_a_killed_rank_ends_the_job_and_the_last_checkpoint_loads(tmp_path):
    _needs_mpi()
    proc, out = _start_long_run(tmp_path)
    os.kill(_rank_pid(out, 1, time.monotonic() + 30), signal.SIGKILL)
    status, _, _, took = _finish(proc, 60)
    assert status != 0 and took < 60
    assert _checkpoint_step(out) % 10 == 0 and _checkpoint_step(out) > 0   # an evaluation's save, intact
    assert _no_rank_left(out)


# SIGTERM or SIGHUP to one rank (a scheduler's per-process signal, a closed terminal), to mpiexec
# (which passes it on), and Ctrl-C at mpiexec: rank 0 names the signal even when another rank got it
@pytest.mark.parametrize("where, sig", [("rank 1", signal.SIGTERM), ("rank 1", signal.SIGHUP),
                                        ("mpiexec", signal.SIGTERM), ("mpiexec", signal.SIGINT)])
def test_a_signal_stops_every_rank_at_one_step_and_rank_0_saves_it(tmp_path, where, sig):
    _needs_mpi()
    proc, out = _start_long_run(tmp_path)
    target = _rank_pid(out, 1, time.monotonic() + 30) if where == "rank 1" else proc.pid
    os.kill(target, sig)
    status, stdout, stderr, _ = _finish(proc, 60)
    assert status == 128 + sig, stderr                         # the status names the signal, as in one process
    logged = len(_losses(out))
    assert _checkpoint_step(out) == logged                     # saved at the step every rank stopped after
    assert "Traceback" not in stderr and "error" not in stderr
    assert f"--resume {out}" in stdout
    name = "Ctrl-C" if sig == signal.SIGINT else signal.Signals(sig).name
    assert f"({name})" in stdout and ("(Ctrl-C)" in stdout) == (sig == signal.SIGINT), stdout


def test_an_exception_on_one_rank_aborts_the_job_with_its_one_line_error(tmp_path):
    _needs_mpi()
    out = tmp_path / "x.npz"
    cmd = _train_cmd(out, "--steps", "1000")
    cmd = [sys.executable, str(Path(__file__).with_name("faulty_rank.py")), "1:25", *cmd[3:]]  # the test double
    r = _mpi(2, cmd, tmp_path)
    assert r.returncode != 0
    assert "error: rank 1: RuntimeError: injected failure at step 25" in r.stderr.splitlines()
    assert _checkpoint_step(out) == 20                        # the last save before the failure
    assert _no_rank_left(out)


@pytest.mark.skipif(not hasattr(__import__("resource"), "prlimit"), reason="needs Linux's prlimit")
def test_a_failed_save_on_rank_0_stops_every_rank_with_one_line_and_no_abort_banner(tmp_path):
    # a real fault: rank 0's file size limit drops below a checkpoint's size mid-run, so its next
    # save fails (EFBIG; Python ignores SIGXFSZ) while rank 1 trains on: every rank must stop,
    # rank 0 alone saying why, with no MPI_Abort and so no launcher's "Abort(1) on node 0" line
    import resource
    _needs_mpi()
    proc, out = _start_long_run(tmp_path)
    limit = out.stat().st_size // 2
    resource.prlimit(_rank_pid(out, 0, time.monotonic() + 30), resource.RLIMIT_FSIZE, (limit, limit))
    status, _, stderr, took = _finish(proc, 60)
    assert status == 1, (status, stderr)
    assert stderr.strip().splitlines() == [
        f"error: cannot write checkpoint {str(out)!r}: File too large; check free disk space and permissions"], stderr
    assert "Abort(" not in stderr and took < 60
    assert _checkpoint_step(out) % 10 == 0 and _checkpoint_step(out) > 0   # the last good save, intact
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []   # no temporary or lock file
    assert _no_rank_left(out)


def test_a_hung_rank_ends_the_job_after_the_timeout(tmp_path):
    _needs_mpi()
    proc, out = _start_long_run(tmp_path, PYTHIA_MPI_TIMEOUT="3")
    pid = _rank_pid(out, 1, time.monotonic() + 30)
    os.kill(pid, signal.SIGSTOP)
    try:
        status, _, stderr, took = _finish(proc, 60)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert status != 0 and took < 60, (status, took, stderr)
    assert "error: rank 0: no answer from the other processes for 3 s" in stderr, (status, took, stderr)
    assert _checkpoint_step(out) > 0


def test_a_rank_with_other_settings_stops_every_rank_with_one_message(tmp_path):
    _needs_mpi()
    out = tmp_path / "m.npz"
    cmd = _train_cmd(out)
    r = _run([_mpiexec(), "-n", "1", *cmd, ":", "-n", "1", *cmd, "--lr", "0.001"], tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: rank 1 does not run the same training as rank 0: training setting lr is 0.001 there but 0.003 "
        "on rank 0; start every process with the same command line, data files and Pythia version"]
    assert not out.exists()


@pytest.mark.parametrize("case", ["rank 0's --out exists", "a missing data file"])
def test_an_error_at_start_up_is_one_line_without_the_launchers_abort_banner(tmp_path, case):
    # rank 0 alone claims --out; the corpus is every rank's: either way all ranks agree to stop,
    # rank 0 prints its line and the job ends without MPI_Abort ("Abort(1) on node 0 ...")
    _needs_mpi()
    out = tmp_path / "m.npz"
    if case == "rank 0's --out exists":
        out.write_bytes(b"mine")
        cmd = [c for c in _train_cmd(out) if c != "--force"]
        needle = "already exists and would be replaced"
    else:
        cmd = _train_cmd(out, "--data", str(tmp_path / "nowhere.txt"))
        needle = "does not exist"
    r = _mpi(2, cmd, tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], r.stderr
    assert case != "rank 0's --out exists" or out.read_bytes() == b"mine"


def test_a_batch_smaller_than_the_processes_stops_with_one_message(tmp_path):
    _needs_mpi()
    r = _mpi(3, _train_cmd(tmp_path / "b.npz", "--batch-size", "2"), tmp_path)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "error: --batch-size 2 is smaller than the 3 processes, so some would have no sequence to train on; "
        "use --batch-size 3 or more, or start fewer processes"]


def test_a_rank_reading_another_corpus_is_named(tmp_path):
    _needs_mpi()
    (tmp_path / "a.txt").write_text("the cat sat on the mat. " * 200)
    (tmp_path / "b.txt").write_text("the mat sat on the cat. " * 200)  # same characters, other text
    cmd = _train_cmd(tmp_path / "c.npz")
    r = _run([_mpiexec(), "-n", "1", *cmd, "--data", "a.txt", ":", "-n", "1", *cmd, "--data", "b.txt"], tmp_path)
    assert r.returncode == 1
    [line] = r.stderr.strip().splitlines()
    assert line.startswith("error: rank 1 does not run the same training as rank 0: its corpus hash is ")


def test_the_benchmark_script_runs(tmp_path):
    _needs_mpi()
    data = tmp_path / "d.txt"
    data.write_text("".join(f"line {i} of a small corpus for the scaling benchmark\n" for i in range(400)))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve().parent.parent / "benchmarks" / "bench_distributed.py"),
                        "--configs", "S", "--repeats", "1", "--no-hosts", "--data", str(data)],
                       capture_output=True, text=True, timeout=TIMEOUT, env=_env())
    assert r.returncode == 0, r.stderr
    rows = [line.split("|")[1:-1] for line in r.stdout.splitlines() if line.startswith("| S |")]
    assert [c[1].strip() for c in rows] == ["1 process", "2 x 1 core"]
    assert float(rows[1][5]) > 0                                 # the allreduce was timed


# ---- across hosts: two network namespaces joined by a veth pair ------------------------------

LAUNCHER = """#!/bin/sh
# Stands in for ssh: hydra runs `LAUNCHER -x HOST COMMAND...`. HOST is an address; run COMMAND
# in the namespace that holds it, under its own host name (as a second machine would be).
[ "$1" = "-x" ] && shift
host=$1; shift
case $host in
  {ip_a}) ns={ns_a};;
  {ip_b}) ns={ns_b};;
  *) echo "unknown host $host" >&2; exit 1;;
esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
"""


@pytest.fixture
def two_hosts(tmp_path):
    """Namespaces A and B joined by a veth pair (A 10.234.x.1, B 10.234.x.2), a hostfile naming both
    and a launcher script; removed afterwards."""
    _needs_mpi()
    if os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("unshare") is None:
        pytest.skip("network namespaces need root and the ip and unshare tools")
    tag = f"{os.getpid() % 10000}"
    ns_a, ns_b, dev_a, dev_b = f"pyth-a{tag}", f"pyth-b{tag}", f"pyva{tag}", f"pyvb{tag}"
    net = f"10.234.{os.getpid() % 250}"
    ip_a, ip_b = f"{net}.1", f"{net}.2"
    steps = [["ip", "netns", "add", ns_a], ["ip", "netns", "add", ns_b],
             ["ip", "link", "add", dev_a, "type", "veth", "peer", "name", dev_b],
             ["ip", "link", "set", dev_a, "netns", ns_a], ["ip", "link", "set", dev_b, "netns", ns_b],
             ["ip", "-n", ns_a, "addr", "add", f"{ip_a}/24", "dev", dev_a],
             ["ip", "-n", ns_b, "addr", "add", f"{ip_b}/24", "dev", dev_b]]
    for ns, dev in ((ns_a, dev_a), (ns_b, dev_b)):
        steps += [["ip", "-n", ns, "link", "set", dev, "up"], ["ip", "-n", ns, "link", "set", "lo", "up"]]
    try:
        for cmd in steps:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            if r.returncode != 0:
                pytest.skip(f"cannot make network namespaces here: `{' '.join(cmd)}` said {r.stderr.strip()}")
        launcher = tmp_path / "netns-launch.sh"
        launcher.write_text(LAUNCHER.format(ip_a=ip_a, ip_b=ip_b, ns_a=ns_a, ns_b=ns_b))
        launcher.chmod(0o755)
        hosts = tmp_path / "hosts"
        hosts.write_text(f"{ip_a}\n{ip_b}\n")

        def tx_bytes() -> int:
            return int(subprocess.run(["ip", "netns", "exec", ns_a, "cat", f"/sys/class/net/{dev_a}/statistics/tx_bytes"],
                                      capture_output=True, text=True, timeout=30).stdout)
        yield SimpleNamespace(ns_a=ns_a, hosts=hosts, launcher=launcher, tx_bytes=tx_bytes)
    finally:
        for ns in (ns_a, ns_b):                                # deleting a namespace deletes its veth end
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


def test_two_hosts_over_a_network_link_give_the_single_process_losses(single, tmp_path, two_hosts):
    out = tmp_path / "hosts.npz"
    before = two_hosts.tx_bytes()
    # UCX_TLS: both namespaces share one kernel, and UCX would otherwise pass the data through
    # shared memory; two real hosts need nothing of the kind
    r = _run(["ip", "netns", "exec", two_hosts.ns_a, _mpiexec(), "-f", str(two_hosts.hosts), "-n", "2",
              "-ppn", "1", "-launcher", "ssh", "-launcher-exec", str(two_hosts.launcher), *_train_cmd(out)],
             tmp_path, UCX_TLS="tcp,self")
    assert r.returncode == 0, r.stderr
    assert "processes 2 on 2 hosts" in r.stdout
    _assert_same_run(out, single)
    grad_bytes = 4 * sum(w.size for w in _weights(out).values())
    # an allreduce of two ranks sends each of them at least half the buffer every step
    assert two_hosts.tx_bytes() - before >= STEPS * grad_bytes // 2
