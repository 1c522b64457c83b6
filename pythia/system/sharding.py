"""Batch sharding across threads: a wrapper the commands put around a model for training.

    model = ShardedModel(Pythia(config))      # the same interface as the model it wraps

A training pass over B sequences runs as n = threads.shards_for(B, mnk) consecutive row ranges,
one per core, each on its own thread with one BLAS thread and serial kernels. For shard s with
rows [lo_s, hi_s) and the batch's N = B * T tokens:

    losses_s = per-token losses of rows lo_s..hi_s          model.loss_rows
    g_s      = d(sum(losses_s) / N) / d(params)             model.backward_rows, into buffers of its own
    loss     = mean of the concatenated losses               (rows in batch order)
    g        = g_0 + g_1 + ... + g_{n-1}                     added in shard order: the same bits every run

so the loss and gradients are the unsplit pass's up to float32 rounding, and a given shard count
gives the same bits every run. A pass that is not split runs under threads.for_pass (BLAS threads
by the size rule), and malloc keeps freed memory for the next step
(system.memory). The wrapped model's other attributes (params, grads, config, ...) are its own.
"""
from __future__ import annotations

import numpy as np

from ..layers import counted
from . import memory, threads


class ShardedModel:
    def __init__(self, model):
        self.model = model
        self._per_token = threads.widest_per_token(model)       # multiply-adds per token of its widest product
        self._workers: threads.Workers | None = None
        self._shard_grads: list[dict[str, np.ndarray]] = []      # gradient buffers of shards 1, 2, ...
        self._acts: list[dict] | None = None                     # activations of the last loss(), per shard
        memory.keep_freed_memory()                               # a step's freed activations serve the next step

    def __getattr__(self, name: str):
        return getattr(self.model, name)

    def _shards(self, B: int, T: int) -> list[tuple[int, int]]:
        n = threads.shards_for(B, B * T * self._per_token)
        if n > 1 and (self._workers is None or self._workers.n != n):
            if self._workers is not None:
                self._workers.close()
            self._workers = threads.Workers(n)
        return [(i * B // n, (i + 1) * B // n) for i in range(n)]

    def forward(self, idx, **kwargs):
        with threads.for_pass(np.size(idx) * self._per_token):
            return self.model.forward(idx, **kwargs)

    def forward_cached(self, tokens, cache):
        with threads.for_pass(len(tokens) * self._per_token):
            return self.model.forward_cached(tokens, cache)

    def loss(self, idx, targets) -> float:
        """Mean cross-entropy over the batch, its shards computed concurrently; keeps their activations."""
        idx, targets = self.model.check_pair(idx, targets)
        self._acts = None                                        # free the last pass's activations first
        shards = self._shards(*idx.shape)
        if len(shards) == 1:
            with threads.for_pass(idx.size * self._per_token):
                parts = [self.model.loss_rows(idx, targets)]
        else:
            parts = self._workers.map(lambda r: self.model.loss_rows(idx[r[0]:r[1]], targets[r[0]:r[1]]), shards)
        self._acts = [acts for _, acts in parts]
        losses = np.concatenate([losses for losses, _ in parts])  # (N,) in batch order, 0 where not scored
        return float(losses.sum(dtype=np.float64) / max(counted(targets), 1))

    def backward(self) -> None:
        """Gradients of the last loss() into the model's grads: each shard's, summed in shard order."""
        if self._acts is None:
            raise RuntimeError("backward() needs activations: call loss(idx, targets) first")
        n = sum(counted(a["targets"]) for a in self._acts)      # scored tokens over all shards
        grads = self.model.grads
        if len(self._acts) == 1:
            with threads.for_pass(n * self._per_token):
                self.model.backward_rows(self._acts[0], grads, n)
            return
        while len(self._shard_grads) < len(self._acts) - 1:
            self._shard_grads.append({k: np.zeros_like(g) for k, g in grads.items()})
        targets = [grads] + self._shard_grads
        self._workers.map(lambda i: self.model.backward_rows(self._acts[i], targets[i], n), range(len(self._acts)))
        for other in targets[1:len(self._acts)]:
            for k, g in grads.items():
                g += other[k]                                    # sum over shards, in shard order
