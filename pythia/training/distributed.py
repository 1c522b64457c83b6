"""Data-parallel training on MPI, the process plumbing: session, start-up agreement, signals,
watchdog, core pinning, fault handling. The math (row ranges, sharded batches, reducers) is in
pythia.training.parallel.

Under `mpiexec -n N python -m pythia train ...` every process (rank) holds the whole model and
optimizer. One step on rank r of N, with B the global batch (--batch-size) and b_r its rows:

    x, y = rows [lo_r, hi_r) of the batch one process would draw    (ShardedBatches)
    g_r  = grad of the mean loss over rank r's b_r * T tokens       (the model, unchanged)
    g    = sum_r (b_r / B) g_r                                       (one in-place Allreduce)
         = grad of the mean loss over all B * T tokens                (the single process's g)

then the same optimizer step everywhere (clipping sees the reduced g, so the weights stay equal
without being sent again). Every rank draws the whole batch's offsets from the same generator
and keeps its rows, so the random stream, and what a checkpoint saves of it, are the single
process's whatever N is: a checkpoint written under N processes resumes under M. Rows split as
[r * B // N, (r + 1) * B // N), so B need not divide by N; the weights b_r / B keep the mean exact.

The trainer sees only a batch source and a reducer (`LocalReducer`, a no-op, in one process).
One process, or no MPI launcher in the environment, is exactly the single-process program:
mpi4py is not even imported.

Start-up (`Session.prepare`): rank 0 reads the checkpoint it resumes and sends its bytes (other
hosts need not see the file); every rank builds its trainer; all check that they run the same
Pythia version, model and training settings and corpus (a hash of its tokens), and stop together
with one message naming the first difference; rank 0's weights, optimizer state and generator
state are broadcast. Only rank 0 prints (other ranks' stdout goes to the null device), logs and
writes checkpoints.

Faults. An error every rank meets at the same point (bad data, a mismatch, divergence of the
reduced loss) ends every rank with one message from rank 0. An error in a part one rank does
alone (rank 0's save, log line, report or plot: a full disk, a vanished folder) is held until the
next point where the ranks poll each other (the next step boundary, or the end of the run); then
every rank stops there, that rank printing its one line and the others nothing, and all exit
non-zero without MPI_Abort (whose launcher banner would be a second, misleading line). Anything
else on one rank only (an exception in the step itself, out of memory, a second Ctrl-C) prints
that rank's one-line error and calls MPI_Abort, the last resort that ends the job when the ranks
cannot agree: mpi4py documents that otherwise the other ranks wait forever.
SIGTERM, SIGHUP or Ctrl-C on any rank sets a flag the ranks OR together at each step boundary
(with the signal's number), so all stop after the same step, rank 0 saves and names the signal,
and every rank exits with 128 + its number. A rank that dies is seen by the launcher, which ends
the job; a rank that hangs is caught by a watchdog: a rank that waits in a collective longer
than PYTHIA_MPI_TIMEOUT seconds (default 60) aborts the job. Checkpoints are written atomically
by rank 0 alone, so the last one is never half-written.

Threads: each rank takes its share of the cores of its host (the ranks on one host are pinned
to disjoint cores when they all start with the same ones) and sets NumPy's BLAS and the
kernels' OpenMP threads to that share: with one rank per core, one thread each, and no batch
shards inside a rank (pythia/system/threads.py). A user who fixed OPENBLAS_NUM_THREADS, GOTO_NUM_THREADS
or OMP_NUM_THREADS keeps their choice.
"""
from __future__ import annotations

import hashlib
import os
import signal
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from ..errors import ConfigError, PythiaError
from .parallel import LocalReducer, MPIReducer, PeerFailed, ShardedBatches, check_batch, row_range  # noqa: F401

# what a launcher puts in its processes' environment: PMI (MPICH's Hydra; Slurm's srun --mpi=pmi2),
# Open MPI's mpirun, PMIx (srun --mpi=pmix), which gives a rank but no count
SIZE_ENV = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE")
RANK_ENV = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")
TIMEOUT_ENV = "PYTHIA_MPI_TIMEOUT"
DEFAULT_TIMEOUT_S = 60.0


class Watchdog:
    """Aborts the job when this rank has waited in one collective longer than timeout seconds:
    another rank has then died or hung (a dead one is usually reported sooner by the launcher)."""

    def __init__(self, comm, rank: int, timeout: float):
        self.comm, self.rank, self.timeout = comm, rank, timeout
        self._since: float | None = None
        threading.Thread(target=self._watch, name="pythia-mpi-watchdog", daemon=True).start()

    @contextmanager
    def waiting(self) -> Iterator[None]:
        self._since = time.monotonic()
        try:
            yield
        finally:
            self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            since = self._since
            if since is not None and time.monotonic() - since > self.timeout:
                sys.stderr.write(f"error: rank {self.rank}: no answer from the other processes for "
                                 f"{self.timeout:g} s (one died or hangs); ending the job. The last "
                                 f"checkpoint is kept; raise {TIMEOUT_ENV} if saving takes longer\n")
                _abort(self.comm, 1)


# ---------------------------------------------------------------------------- the session

def launched_size() -> int | None:
    """How many processes the launcher in the environment started: 1 without a launcher, None when
    a launcher gave this process a rank but not the count (then MPI itself is asked)."""
    for key in SIZE_ENV:
        value = os.environ.get(key, "").strip()
        if value.isdigit():
            return int(value)
    return None if any(os.environ.get(k, "").strip() for k in RANK_ENV) else 1


class Session:
    """This process's place in the job. One process: rank 0 of 1, and every method is trivial."""

    def __init__(self, comm=None):
        self.comm = comm
        self.rank, self.size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
        self.hosts, self.local_rank, self.local_size, self.cores = 1, 0, 1, None
        self.agreed_error = False           # the error being raised is every rank's (rank 0 reports it)
        self.failed: str | None = None      # "here" or "elsewhere": one rank's error every rank knows of
        self.stop_requested = False         # SIGTERM arrived here
        self.reducer: MPIReducer | None = None
        self._watchdog: Watchdog | None = None

    @property
    def multi(self) -> bool:
        return self.size > 1

    def describe(self) -> str:
        """For the banner: processes, hosts and cores per process."""
        text = f"{self.size} on {self.hosts} host{'s' if self.hosts != 1 else ''}"
        if self.cores:
            text += f", {self.cores} core{'s' if self.cores != 1 else ''} each"
        return text

    # -- start-up -------------------------------------------------------------------------------

    def _begin(self) -> None:
        """Wire a multi-process run: topology, quiet stdout off rank 0, signals, threads."""
        from mpi4py import MPI
        local = self.comm.Split_type(MPI.COMM_TYPE_SHARED)       # the ranks that share this host
        self.local_rank, self.local_size = local.Get_rank(), local.Get_size()
        self.hosts = self.comm.allreduce(1 if self.local_rank == 0 else 0)
        self.cores = _place_threads(local)
        local.Free()
        if self.rank != 0:                                     # only rank 0 talks to the user on stdout
            devnull = os.open(os.devnull, os.O_WRONLY)
            sys.stdout.flush()
            os.dup2(devnull, sys.stdout.fileno())
            os.close(devnull)

        from ..system.signals import STOP_SIGNALS
        for s in STOP_SIGNALS:                                 # MPI_Init may have put its own C handler under
            handler = signal.getsignal(s)                      # a Python one (SIGHUP went unseen): take it back
            if callable(handler):
                signal.signal(s, handler)

        def on_sigterm(signum, frame):                         # stop at the next step boundary, as Ctrl-C
            self.stop_requested = True
        if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:  # the commands' pythia.system.signals guard owns it
            signal.signal(signal.SIGTERM, on_sigterm)
        previous = sys.excepthook

        def on_exception(kind, value, tb):                     # a bug, or a test's injected fault: end the job
            previous(kind, value, tb)
            abort_after_error(f"{kind.__name__}: {value}", 1)
        sys.excepthook = on_exception
        timeout = _timeout()
        self._watchdog = Watchdog(self.comm, self.rank, timeout)

    def agree(self, fn: Callable[[], Any]) -> Any:
        """fn() on every rank; if it raised PythiaError on any, the same error on all (rank 0 reports
        it, naming the rank it came from). Other exceptions are this rank's alone (they abort)."""
        if not self.multi:
            return fn()
        error, value = None, None
        try:
            value = fn()
        except PythiaError as e:
            error = str(e)
        errors = self.comm.allgather(error)
        failed = [(r, e) for r, e in enumerate(errors) if e is not None]
        if failed:
            r, message = failed[0]
            self.agreed_error = True
            raise PythiaError(message if r == 0 else f"rank {r}: {message}")
        return value

    def together(self, fn: Callable[[], Any]) -> Any:
        """fn() where some ranks do work alone (rank 0 draws the plot): if it raised on any, the
        rank that failed raises its own error and the others PeerFailed, with no MPI_Abort."""
        if not self.multi:
            return fn()
        error, value = None, None
        try:
            value = fn()
        except Exception as e:                                # noqa: BLE001 - raised below, on every rank
            error = e
        if any(self.comm.allgather(error is not None)):
            self._note_failure(error is not None)
            if error is not None:
                raise error
            raise PeerFailed("another process of this run failed and reported why; this one stopped with it")
        return value

    def _note_failure(self, here: bool) -> None:
        self.failed = "here" if here else "elsewhere"

    def prepare(self, build: Callable[..., Any], files: list[Path], *, resume: Path | None = None,
                stop_signal: Callable[[], int | None] = lambda: None, **kwargs) -> Any:
        """build(files, resume=..., **kwargs) -> Trainer on every rank, made one data-parallel run.
        stop_signal: the number of the stop signal this rank received, shared with the others."""
        if not self.multi:
            return build(files, resume=resume, **kwargs)
        blob = self.agree(lambda: _read_bytes(resume) if resume is not None and self.rank == 0 else None)
        blob = self._bcast_bytes(blob)
        local = resume
        if blob is not None and self.rank != 0:                # this host may not see rank 0's file
            fd, name = tempfile.mkstemp(prefix="pythia-resume-", suffix=".npz")
            with os.fdopen(fd, "wb") as f:
                f.write(blob)
            local = Path(name)
        try:
            trainer = self.agree(lambda: build(files, resume=local, **kwargs))
        finally:
            if local is not None and local != resume:
                os.unlink(local)
        self.agree(lambda: check_batch(trainer.cfg.batch_size, self.size))
        self._check_same_run(trainer)
        self._broadcast_state(trainer)
        if self.rank != 0:                                     # rank 0 alone logs, reports and saves
            trainer.out = trainer.log_file = trainer.on_progress = None
        batches = ShardedBatches(trainer.dataset, self.rank, self.size)
        trainer.dataset = batches
        from mpi4py import MPI
        self.reducer = MPIReducer(self.comm, batches.weight(trainer.cfg.batch_size), mpi=MPI,
                                  watchdog=self._watchdog, stop_requested=lambda: self.stop_requested,
                                  stop_signal=lambda: stop_signal() or (signal.SIGTERM if self.stop_requested else None),
                                  on_failure=self._note_failure)
        trainer.reducer = self.reducer
        return trainer

    def _bcast_bytes(self, blob: bytes | None) -> bytes | None:
        n = self.comm.bcast(None if blob is None else len(blob), root=0)
        if n is None:
            return None
        buf = np.frombuffer(blob, np.uint8).copy() if self.rank == 0 else np.empty(n, np.uint8)
        self.comm.Bcast(buf, root=0)
        return buf.tobytes()

    def _check_same_run(self, trainer) -> None:
        """Every rank must run rank 0's Pythia, settings and corpus; else all stop naming the difference."""
        mine = run_fingerprint(trainer)
        everyone = self.comm.allgather(mine)

        def check() -> None:
            for r, theirs in enumerate(everyone):
                difference = first_difference(everyone[0], theirs)
                if difference:
                    raise ConfigError(f"rank {r} does not run the same training as rank 0: {difference}; "
                                      f"start every process with the same command line, data files and "
                                      f"Pythia version")
        self.agree(check)

    def _broadcast_state(self, trainer) -> None:
        """Rank 0's weights, optimizer state and batch generator, everywhere."""
        self.comm.Bcast(trainer.model.params_memory, root=0)
        state = self.comm.bcast(trainer.optimizer.state_arrays() if self.rank == 0 else None, root=0)
        if self.rank != 0:
            trainer.optimizer.load_state_arrays(state)
        rng_state = self.comm.bcast(trainer.rng.bit_generator.state if self.rank == 0 else None, root=0)
        trainer.rng.bit_generator.state = rng_state


def run_fingerprint(trainer) -> dict:
    """What must be equal on every rank: Pythia's version, the settings, the corpus, the start step."""
    from .. import __version__
    dataset = trainer.dataset
    corpus = getattr(dataset, "fingerprint", None)
    if callable(corpus):
        corpus = corpus()
    if corpus is None:
        h = hashlib.sha256()
        for part in (dataset.train, dataset.val):
            h.update(np.ascontiguousarray(part).tobytes())
        corpus = h.hexdigest()[:16]
    return {"Pythia version": __version__, "corpus hash": corpus, "model": trainer.model.config.to_dict(),
            "training": trainer.cfg.to_dict(), "starting step": trainer.start_step}


def first_difference(ours: dict, theirs: dict) -> str | None:
    """'<what> is B there but A on rank 0' for the first entry where theirs (B) differs from
    ours (rank 0's, A), or None."""
    for key, value in ours.items():
        other = theirs.get(key)
        if isinstance(value, dict) and isinstance(other, dict):
            for k in value:
                if value[k] != other.get(k):
                    return f"{key} setting {k} is {other.get(k)!r} there but {value[k]!r} on rank 0"
        elif value != other:
            return f"its {key} is {other!r} but rank 0's is {value!r}"
    return None


def _read_bytes(path: Path) -> bytes:
    from ..errors import CheckpointError
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist; check the path") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {str(path)!r} is a directory, not a checkpoint file; "
                              f"give the .npz file") from None
    except OSError as e:
        raise CheckpointError(f"cannot read checkpoint {str(path)!r}: {e.strerror or e}") from None


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "").strip()
    if not text:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds above 0; set it to e.g. 120")
    return value


def _place_threads(local) -> int | None:
    """Give this rank its share of the host's cores; returns the share (None when the user fixed
    the threads). Pins to disjoint cores only when the ranks here all start with the same set."""
    from .. import kernels
    from ..system import threads
    if threads.user_chose():
        return None
    mine = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    n, i = local.Get_size(), local.Get_rank()
    same = all(s == mine for s in local.allgather(mine))
    if not same:                                               # the launcher placed us: keep its cores
        share = len(mine)
    elif len(mine) >= n:                                       # split them: threads.cores() sees the share
        share = len(mine) // n
        if hasattr(os, "sched_setaffinity"):
            os.sched_setaffinity(0, mine[i * share:(i + 1) * share])
    else:                                                      # more ranks than cores: one thread, no shards
        share = 1
        os.environ["OPENBLAS_NUM_THREADS"] = "1"
    threads.blas_set(share)
    kernels.set_thread_limit(share)
    kernels.set_pool_threads(share)                            # the decode products' pools too
    return share


# ---------------------------------------------------------------------------- the process's session

_session: Session | None = None


def session() -> Session:
    """This process's Session, started on first use (mpi4py is imported only under a launcher)."""
    global _session
    if _session is not None:
        return _session
    expected = launched_size()
    if expected == 1:
        _session = Session()
        return _session
    try:
        from mpi4py import MPI
    except ImportError:
        raise ConfigError(f"started by an MPI launcher as one of {expected or 'several'} processes, but mpi4py is not "
                          f"installed, so each would train alone; pip install '.[mpi]', or run without "
                          f"mpiexec") from None
    comm = MPI.COMM_WORLD
    _session = Session(comm if comm.Get_size() > 1 else None)
    if _session.multi:
        _session._begin()
    return _session


def error_line(message: str) -> str | None:
    """The error line this process prints: the message itself in one process; in several, None on
    ranks other than 0 for an error every rank shares, else prefixed with this rank. A rank other
    than 0 first waits a second: if rank 0 failed the same way, its abort ends this rank first,
    and the user reads one message, not one per rank."""
    s = _session
    if s is None or not s.multi:
        return message
    if s.failed == "elsewhere":                                # the rank that failed says it
        return None
    if s.failed == "here":                                     # the others stop without a word
        return message if s.rank == 0 else f"rank {s.rank}: {message}"
    if s.agreed_error:
        return message if s.rank == 0 else None
    if s.rank == 0:
        return message
    time.sleep(1.0)
    return f"rank {s.rank}: {message}"


def end_after_error(status: int) -> None:
    """In a multi-process run, an error on this rank alone ends the job (MPI_Abort): the other
    ranks would otherwise wait for it forever. An error every rank shares, or knows of and
    stops with (Session.failed), needs nothing."""
    s = _session
    if s is None or not s.multi or s.agreed_error or s.failed:
        return
    _abort(s.comm, status)


def abort_after_error(message: str, status: int) -> None:
    """Print this rank's one-line error and end the job (for exceptions outside the CLI's handler)."""
    s = _session
    if s is None or not s.multi:
        return
    sys.stderr.write(f"error: {error_line(message)}\n")
    _abort(s.comm, status)


def _abort(comm, status: int) -> None:
    """MPI_Abort after a pause in which the launcher forwards the error just written (it drops
    output still in flight when it kills the job)."""
    sys.stderr.flush()
    time.sleep(0.5)
    comm.Abort(status or 1)
