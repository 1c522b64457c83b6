"""Data-parallel math: which rows of a batch each process computes, and the reducers that
combine the processes' gradients, losses and stop flags. No MPI import here: a reducer is handed
its communicator (pythia.training.distributed does the process plumbing).

On rank r of N, with B the global batch (--batch-size) and b_r its rows:

    x, y = rows [lo_r, hi_r) of the batch one process would draw    (ShardedBatches)
    g_r  = grad of the mean loss over rank r's b_r * T tokens       (the model, unchanged)
    g    = sum_r (b_r / B) g_r                                       (one in-place Allreduce)
         = grad of the mean loss over all B * T tokens                (the single process's g)

Rows split as [r * B // N, (r + 1) * B // N), so B need not divide by N; the weights b_r / B keep
the mean exact. Every rank draws the whole batch from the same generator and keeps its rows, so
the random stream is the single process's whatever N is.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import numpy as np

from ..errors import ConfigError, PythiaError


# ---------------------------------------------------------------------------- the shared batch

def row_range(batch: int, rank: int, size: int) -> tuple[int, int]:
    """Rows [lo, hi) of a global batch of `batch` sequences that `rank` of `size` computes."""
    return rank * batch // size, (rank + 1) * batch // size


def check_batch(batch: int, size: int) -> None:
    """ConfigError unless every one of `size` processes gets at least one sequence."""
    if batch < size:
        raise ConfigError(f"--batch-size {batch} is smaller than the {size} processes, so some would have "
                          f"no sequence to train on; use --batch-size {size} or more, or start fewer processes")


class ShardedBatches:
    """A batch source whose get_batch returns rank's rows of the source's batch.

    The source draws the whole global batch from rng (so every rank's generator moves exactly as
    one process's does) and this keeps rows row_range(B, rank, size). Other attributes (block_size,
    tokenizer, files, train, val, ...) are the source's.
    """

    def __init__(self, source, rank: int, size: int):
        self.source, self.rank, self.size = source, rank, size

    def get_batch(self, split: str, batch_size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        x, y = self.source.get_batch(split, batch_size, rng)   # (B, T), (B, T): the single process's batch
        lo, hi = row_range(batch_size, self.rank, self.size)
        return x[lo:hi], y[lo:hi]                               # (b_r, T), (b_r, T)

    def weight(self, batch_size: int) -> float:
        """b_r / B: this rank's share of a batch's mean."""
        lo, hi = row_range(batch_size, self.rank, self.size)
        return (hi - lo) / batch_size

    def __getattr__(self, name: str):
        return getattr(self.source, name)


# ---------------------------------------------------------------------------- reducers

class PeerFailed(PythiaError):
    """Another process of a data-parallel run failed in a part it did alone (rank 0's save or log)
    and reports it itself; this one stops with it, quietly."""


class LocalReducer:
    """One process: the gradient and loss are already the batch's; stop when asked locally; an
    error is raised where it happens (no other process waits for this one)."""

    def mean_loss(self, local: float) -> float:
        return local

    def reduce_gradients(self, grads: np.ndarray) -> None:
        pass

    def any_stop(self, local: bool) -> bool:
        return bool(local)

    def hold(self, error: BaseException) -> None:
        raise error

    def settle(self) -> None:
        pass


class MPIReducer:
    """Reduces across the ranks of comm: the weighted gradient sum, the mean loss, the stop flag.

    weight is b_r / B. Each call is a collective: every rank makes the same calls in the same order
    (the trainer's loop guarantees it), and a watchdog aborts the job when one waits too long.

    An error in a part one rank does alone (rank 0 saves, logs, reports) is held (hold) instead of
    raised: the other ranks, already waiting in the next collective, would wait for this one
    forever. It travels as a flag with the next stop poll (any_stop, or settle after the last
    step), and then every rank stops at the same point: the failed rank raises its own error
    (one line, from it alone) and the others PeerFailed (no line). No MPI_Abort is needed, so the
    launcher prints no abort banner.
    """

    def __init__(self, comm, weight: float, *, mpi, watchdog=None, stop_requested: Callable[[], bool] = lambda: False,
                 stop_signal: Callable[[], int | None] = lambda: None,
                 on_failure: Callable[[bool], None] = lambda here: None):
        """comm: an MPI communicator; mpi: the module with IN_PLACE, SUM and MAX (mpi4py.MPI, or
        a stand-in in tests); watchdog: a context `waiting()` around each collective; stop_signal:
        the number of the stop signal this rank received, if any; on_failure(here): told, before
        the raise, that a held error stops every rank (here: the error is this rank's)."""
        self._MPI, self.comm, self.weight = mpi, comm, float(weight)
        self.watchdog, self._stop_requested, self._stop_signal = watchdog or _NoWatchdog(), stop_requested, stop_signal
        self._on_failure = on_failure
        self.stop_signum: int | None = None    # the signal the ranks agreed to stop on (the largest number)
        self._held: BaseException | None = None  # this rank's error, raised once every rank knows of it

    def mean_loss(self, local: float) -> float:
        """The mean loss over the whole batch: sum_r (b_r / B) loss_r, in float64."""
        buf = np.array([self.weight * local], np.float64)
        with self.watchdog.waiting():
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.SUM)
        return float(buf[0])

    def reduce_gradients(self, flat: np.ndarray) -> None:
        """flat <- sum_r (b_r / B) flat_r, in place: one Allreduce of the flat float32 gradient (P,)."""
        if self.weight != 1.0:
            flat *= np.float32(self.weight)                     # g_r * b_r / B
        with self.watchdog.waiting():
            self.comm.Allreduce(self._MPI.IN_PLACE, flat, op=self._MPI.SUM)

    def any_stop(self, local: bool) -> bool:
        """True on every rank when any rank has been asked to stop (local: Ctrl-C; or SIGTERM).
        The signal's number travels with the flag, so every rank can name it (stop_signum); so
        does a held error, which is raised here on every rank (see the class)."""
        signum = int(self._stop_signal() or 0)
        buf = np.array([1 if (local or signum or self._stop_requested()) else 0, signum,
                        self._held is not None], np.int32)                                  # (3,)
        with self.watchdog.waiting():
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.MAX)
        if buf[1]:
            self.stop_signum = int(buf[1])
        self._raise_if_failed(bool(buf[2]))
        return bool(buf[0])

    def hold(self, error: BaseException) -> None:
        """Keep this rank's error (the first one) for the next poll instead of raising it now."""
        if self._held is None:
            self._held = error

    def settle(self) -> None:
        """The last poll, after the last step and save: a held error stops every rank here."""
        buf = np.array([self._held is not None], np.int32)     # (1,)
        with self.watchdog.waiting():
            self.comm.Allreduce(self._MPI.IN_PLACE, buf, op=self._MPI.MAX)
        self._raise_if_failed(bool(buf[0]))

    def _raise_if_failed(self, anywhere: bool) -> None:
        if not anywhere:
            return
        held, self._held = self._held, None
        self._on_failure(held is not None)
        if held is not None:
            raise held
        raise PeerFailed("another process of this run failed and reported why; this one stopped with it")


class _NoWatchdog:
    @contextmanager
    def waiting(self) -> Iterator[None]:
        yield
