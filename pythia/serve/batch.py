"""The batched decoder: one model, many sequences, one forward pass per step over all of them.

A decode step reads every weight of the model once whatever the number of rows it multiplies, so
decoding B sequences together costs little more than decoding one. The decoder runs on its own
thread. Each step it drops the sequences that were cancelled (a client went away, a stop string
was reached), admits waiting sequences up to max_batch (their first step feeds the whole prompt,
the prefill, in the same pass as the others' single tokens), runs model.forward_cached_batch over
every active sequence, and samples one token for each. A sequence leaves the batch as soon as it
ends, so the next waiting one joins at the following step.

Events go back to whoever submitted a sequence through its `emit` callback, on the decoder's
thread (the server forwards them to its event loop):

    ("token", Token)        a generated token, with its log-probability and alternatives when asked
    ("end", reason)         "stop" (an end-of-turn id; not emitted as a token) or "length"
    ("error", message)      the forward pass failed; the sequence is gone

Sizes: B active sequences, V vocabulary, N rows fed this step (prompts and single tokens).
"""
from __future__ import annotations

import collections
import threading
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..sampling import sample_token
from ..system import memory, threads


WAKE = 0.25                 # seconds an idle decoder sleeps before looking at the closing flag again


class QueueFull(Exception):
    """Every slot is busy and max_queue sequences already wait; the client should retry later."""


@dataclass
class Request:
    """What one sequence asks for. max_tokens must leave room in the context (the caller caps it)."""
    prompt: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    stop_ids: frozenset = frozenset()
    top_logprobs: int | None = None     # None: no log-probabilities; k >= 0: the chosen token's and the k likeliest


@dataclass
class Token:
    id: int
    logprob: float | None = None                                   # log p(id) under the model's own softmax
    top: list[tuple[int, float]] = field(default_factory=list)     # (id, log p), likeliest first


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log p (V,) float64 of the model's own distribution: z - log(sum(exp(z))), before any sampling setting."""
    z = np.asarray(logits, np.float64)                             # (V,)
    m = z.max()
    return z - (m + np.log(np.exp(z - m).sum()))                   # (V,)


def token_with_logprobs(logits: np.ndarray, tok: int, k: int | None) -> Token:
    """tok with its log-probability and the k likeliest tokens (ties broken by lower id)."""
    if k is None:
        return Token(tok)
    lp = log_softmax(logits)                                       # (V,)
    top = np.argsort(-lp, kind="stable")[:k]
    return Token(tok, float(lp[tok]), [(int(i), float(lp[i])) for i in top])


class Sequence:
    """One request in the decoder: its cache, its sampler and where it stands."""

    def __init__(self, request: Request, emit: Callable[[tuple], None]):
        self.request, self.emit = request, emit
        self.rng = np.random.default_rng(request.seed)
        self.cache = None                   # made when the sequence joins the batch
        self.last: int | None = None        # the token to feed next step (None: the prompt)
        self.generated = 0
        self.cancelled = False
        self.done = False

    def cancel(self) -> None:
        """Stop generating; the slot is freed at the decoder's next step (safe from any thread)."""
        self.cancelled = True


class BatchDecoder:
    """Decodes submitted sequences together on one background thread (start(), close())."""

    def __init__(self, model, *, max_batch: int = 8, max_queue: int = 64, zeros=memory.lazy_zeros):
        if max_batch < 1 or max_queue < 0:
            raise ValueError(f"max_batch must be >= 1 and max_queue >= 0, got {max_batch} and {max_queue}")
        self.model, self.max_batch, self.max_queue, self.zeros = model, max_batch, max_queue, zeros
        self.active: list[Sequence] = []
        self.waiting: collections.deque[Sequence] = collections.deque()
        self.steps = 0                      # forward passes run so far
        self.widest = 0                     # most sequences decoded in one pass so far
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None
        self._per_token = threads.widest_per_token(model)

    # ---- from the server's side ---------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="pythia-decoder", daemon=True)
        self._thread.start()

    def submit(self, request: Request, emit: Callable[[tuple], None]) -> Sequence:
        """Queue a sequence; QueueFull when every slot is busy and max_queue already wait."""
        seq = Sequence(request, emit)
        with self._cond:
            if self._closing:
                raise QueueFull("the server is shutting down")
            if len(self.active) + len(self.waiting) >= self.max_batch + self.max_queue:
                raise QueueFull(f"{len(self.active)} sequences decoding and {len(self.waiting)} waiting")
            self.waiting.append(seq)
            self._cond.notify()
        return seq

    def load(self) -> tuple[int, int]:
        """(sequences decoding, sequences waiting)."""
        with self._cond:
            return len(self.active), len(self.waiting)

    def request_close(self) -> None:
        """close() without waiting and without the lock: safe inside a signal handler (the thread
        sees the flag within WAKE seconds)."""
        self._closing = True

    def close(self, timeout: float = 5.0) -> None:
        """End every sequence (in flight: reason "length", after the step under way) and stop the thread."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # ---- the decoder's thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._closing and not self.active and not self.waiting:
                    self._cond.wait(WAKE)
                if self._closing:
                    for seq in [*self.active, *self.waiting]:
                        self._end(seq, ("end", "length"))
                    self.active, self.waiting = [], collections.deque()
                    return
                for seq in [s for s in [*self.active, *self.waiting] if s.cancelled]:
                    seq.done, seq.cache = True, None                # nobody listens: no event
                self.active = [s for s in self.active if not s.cancelled]
                self.waiting = collections.deque(s for s in self.waiting if not s.cancelled)
                while self.waiting and len(self.active) < self.max_batch:
                    seq = self.waiting.popleft()
                    seq.cache = self.model.new_kv_cache(zeros=self.zeros)
                    self.active.append(seq)
                batch = list(self.active)
            if batch:
                self._step(batch)

    def _step(self, batch: list[Sequence]) -> None:
        feed = [np.asarray(s.request.prompt if s.last is None else [s.last]) for s in batch]
        rows = sum(len(f) for f in feed)                           # N
        try:
            with threads.for_pass(self._per_token * rows):
                logits = self._forward(feed, [s.cache for s in batch])  # (B, V)
        except Exception as e:                                     # a broken pass ends its sequences, not the server
            with self._cond:
                self.active = [s for s in self.active if s not in batch]
            for seq in batch:
                self._end(seq, ("error", f"the forward pass failed: {e}"))
            return
        self.steps += 1
        self.widest = max(self.widest, len(batch))
        finished = []
        for seq, row in zip(batch, logits):
            if seq.cancelled:
                continue
            r = seq.request
            tok = sample_token(row, r.temperature, r.top_k, r.top_p, seq.rng)
            if tok in r.stop_ids:
                finished.append((seq, ("end", "stop")))
                continue
            seq.generated += 1
            seq.last = tok
            self._emit(seq, ("token", token_with_logprobs(row, tok, r.top_logprobs)))
            if seq.generated >= r.max_tokens or seq.cache.length >= self.model.config.block_size:
                finished.append((seq, ("end", "length")))
        if finished:
            with self._cond:
                gone = {id(s) for s, _ in finished}
                self.active = [s for s in self.active if id(s) not in gone]
            for seq, event in finished:
                self._end(seq, event)

    def _forward(self, feed: list[np.ndarray], caches: list) -> np.ndarray:
        """Logits (B, V): one batched pass when the model offers one, else one pass per sequence."""
        batched = getattr(self.model, "forward_cached_batch", None)
        if batched is not None:
            return batched(feed, caches)
        return np.stack([self.model.forward_cached(f, c) for f, c in zip(feed, caches)])

    def _end(self, seq: Sequence, event: tuple) -> None:
        if not seq.done:
            seq.done = True
            seq.cache = None                                       # its memory goes back now
            self._emit(seq, event)

    @staticmethod
    def _emit(seq: Sequence, event: tuple) -> None:
        try:
            seq.emit(event)
        except Exception:                                          # a listener that is gone (its loop closed)
            seq.cancelled = True
