"""Stop signals: SIGINT (Ctrl-C), SIGTERM (a scheduler) and SIGHUP (a closed terminal) stop a
command the same way, at a safe point when the command has one.

    with guard_signals() as stop:
        with stop.polled():            # a long loop polls stop.requested() between its steps
            ...
    with held_signals():               # a few lines no signal may cut short (a rename)
        ...

guard_signals() routes the three signals to a SignalGuard for the block. Inside `stop.polled()`
the first one only sets a flag that the loop polls at a safe point (a training step boundary), so
the work stops there and saves; anywhere else, or on a second signal, it raises Interrupted (a
KeyboardInterrupt) at once. stop.exit_status is 128 + the signal's number (130, 143, 129), the
shell's convention. A signal that is ignored when the block starts (nohup, a parent's choice)
stays ignored. Handlers only work in the main thread; elsewhere both blocks run unguarded.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Iterator, Sequence

STOP_SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGHUP") if hasattr(signal, name))


class Interrupted(KeyboardInterrupt):
    """A stop signal that could not wait for a safe point (outside polled(), or the second one)."""

    def __init__(self, signum: int, *, second: bool = False):
        super().__init__(signal_name(signum))
        self.signum, self.second = signum, second

    @property
    def exit_status(self) -> int:
        return 128 + self.signum


def signal_name(signum: int) -> str:
    """How a person knows the signal: Ctrl-C for SIGINT, the usual name otherwise."""
    if signum == signal.SIGINT:
        return "Ctrl-C"
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def interrupted_message(e: Interrupted, saved: Sequence[str | os.PathLike]) -> str:
    """The one line for a stop that could not wait: which signal, and what is on disk (saved: the
    files completed so far, pythia.system.atomic.written_files())."""
    how = f"stopped by {'a second ' if e.second else ''}{signal_name(e.signum)}"
    if saved:
        return f"{how}; the last file saved, {os.fspath(saved[-1])!r}, is complete"
    return f"{how} before anything was saved; existing files are unchanged"


class SignalGuard:
    """What guard_signals() yields: which stop signal came (if any) and how to poll for it."""

    def __init__(self) -> None:
        self.signum: int | None = None   # the first stop signal received
        self.count = 0                   # stop signals received
        self._polled = 0

    def requested(self) -> bool:
        """True once a stop signal arrived: stop at the next safe point."""
        return self.signum is not None

    @contextlib.contextmanager
    def polled(self) -> Iterator["SignalGuard"]:
        """Within this block the caller polls requested(); the first signal waits for it."""
        self._polled += 1
        try:
            yield self
        finally:
            self._polled -= 1

    @property
    def name(self) -> str:
        return signal_name(self.signum) if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        return 128 + self.signum if self.signum is not None else 0

    def adopt(self, signum: int | None) -> None:
        """A stop agreed with other processes (a signal one of them received) counts as if
        signum had come here: name and exit_status follow it. A signal of our own is kept."""
        if self.signum is None and signum:
            self.signum = signum

    def _handle(self, signum: int, frame) -> None:
        self.count += 1
        if self.signum is None:
            self.signum = signum
        if self.count == 1 and self._polled:
            return
        raise Interrupted(signum, second=self.count > 1)


@contextlib.contextmanager
def guard_signals(signals: Sequence[int] = STOP_SIGNALS) -> Iterator[SignalGuard]:
    """Route the stop signals to a SignalGuard for the block; the previous handlers come back after."""
    guard = SignalGuard()
    if threading.current_thread() is not threading.main_thread():
        yield guard
        return
    previous = {}
    for s in signals:
        if signal.getsignal(s) in (signal.SIG_IGN, None):
            continue                            # ignored on purpose (nohup, a parent's choice): keep it so
        previous[s] = signal.signal(s, guard._handle)
    try:
        yield guard
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


@contextlib.contextmanager
def held_signals() -> Iterator[None]:
    """Hold the stop signals until the block ends, then deliver them to the handlers they had."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending: list[int] = []
    previous = {}
    for s in STOP_SIGNALS:
        old = signal.getsignal(s)
        if old is not None:                     # a handler not set from Python cannot be put back
            previous[s] = signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)
        for s in dict.fromkeys(pending):        # each signal once, in arrival order
            signal.raise_signal(s)
