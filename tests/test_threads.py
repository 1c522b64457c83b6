"""pythia.system.threads: the BLAS thread count is changed only inside blas_threads(), restored after it,
and never when the user fixed it through the environment. Checked against OpenBLAS's own getter."""
from __future__ import annotations

import numpy as np
import pytest

from pythia.system import threads


@pytest.fixture
def blas():
    n = threads.blas_get()
    if n is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS this module can find")
    return n


def test_blas_threads_sets_and_restores(blas, monkeypatch):
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    with threads.blas_threads(1):
        assert threads.blas_get() == 1
        a = np.ones((300, 300), np.float32)
        np.testing.assert_allclose(a @ a, 300.0)              # products still right on one thread
    assert threads.blas_get() == blas
    with threads.blas_threads(None):                          # None: no change
        assert threads.blas_get() == blas


def test_small_products_get_one_thread_large_ones_the_default(monkeypatch):
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    assert threads.blas_threads_for(threads.SMALL_MNK - 1) == 1
    assert threads.blas_threads_for(threads.SMALL_MNK) is None


@pytest.mark.parametrize("var", threads.USER_ENV)
def test_user_environment_wins(var, monkeypatch):
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv(var, "2")
    assert threads.user_chose()
    assert threads.blas_threads_for(1) is None                     # never overridden, however small


def test_training_step_restores_the_thread_count(blas, monkeypatch):
    from pythia.model import Pythia, PythiaConfig
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    from pythia.system.sharding import ShardedModel
    model = ShardedModel(Pythia(PythiaConfig(vocab_size=7, block_size=4, d_model=8, n_layer=1, n_head=2)))
    model.loss(np.zeros((2, 4), int), np.ones((2, 4), int))
    model.backward()
    assert threads.blas_get() == blas


def test_the_rule_sizes_a_pass_by_its_widest_per_token_product():
    # GPT-2's widest per-token matrix is the MLP's (C, 4C), whatever the vocabulary and block size
    from pythia.model import Pythia, PythiaConfig
    for cfg in (PythiaConfig(vocab_size=7, block_size=4, d_model=8, n_layer=1, n_head=2),
                PythiaConfig(vocab_size=70, block_size=8, d_model=8, n_layer=1, n_head=2)):
        assert threads.widest_per_token(Pythia(cfg, init=False)) == 4 * 8 * 8


# ----------------------------------------------------------------------------- shards of a batch

def test_large_models_split_the_batch_across_cores_unless_the_user_fixed_threads(blas, monkeypatch):
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setattr(threads, "cores", lambda: 2)
    big = threads.SHARD_MIN_MNK
    assert threads.shards_for(12, big) == 2
    assert threads.shards_for(12, big - 1) == 1            # small models: one thread is faster
    assert threads.shards_for(1, big) == 1                 # one sequence cannot be split
    monkeypatch.setattr(threads, "cores", lambda: 1)
    assert threads.shards_for(12, big) == 1
    monkeypatch.setattr(threads, "cores", lambda: 2)
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert threads.shards_for(12, big) == 1


def test_workers_run_every_item_on_one_blas_thread_and_restore_it(blas):
    from pythia import kernels
    import threading
    seen = []

    def work(i):
        seen.append((i, threading.current_thread().name, threads.blas_get(), kernels.set_thread_limit(1)))
        return i * i

    w = threads.Workers(2)
    limit = kernels.set_thread_limit(1)                     # the caller's limit ...
    kernels.set_thread_limit(limit)                         # ... left as it was
    assert w.map(work, [3, 4]) == [9, 16]
    assert sorted(i for i, *_ in seen) == [3, 4]
    assert {b for _, _, b, _ in seen} == {1}                # BLAS on one thread while they ran
    assert {k for *_, k in seen} == {1}                     # and each thread's kernels serial
    assert len({name for _, name, _, _ in seen}) == 2       # on two threads
    assert threads.blas_get() == blas                       # restored afterwards
    assert kernels.set_thread_limit(limit) == limit


def test_workers_raise_a_workers_error_after_all_items_finished(blas):
    done = []

    def work(i):
        if i == 1:
            raise ValueError("shard 1 failed")
        done.append(i)

    with pytest.raises(ValueError, match="shard 1 failed"):
        threads.Workers(2).map(work, [0, 1])
    assert done == [0]
    assert threads.blas_get() == blas


@pytest.mark.parametrize("small_mnk, expect", [(10**12, 1), (0, 2)])
def test_kernels_follow_the_blas_thread_count_of_the_pass(blas, small_mnk, expect, monkeypatch):
    # a pass run on one BLAS thread keeps the kernels' loops on the calling thread too; a pass
    # run on all BLAS threads leaves them the caller's limit; either way the caller gets its own
    # thread limit back afterwards. small_mnk moves the line between the two.
    from pythia import kernels
    from pythia.model import Pythia, PythiaConfig
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    if blas < 2:
        pytest.skip("one BLAS thread only: nothing to choose")
    monkeypatch.setattr(threads, "SMALL_MNK", small_mnk)
    limit = kernels.set_thread_limit(2)
    if kernels.BACKEND != "cython" or kernels.set_thread_limit(2) != 2:
        kernels.set_thread_limit(limit)
        pytest.skip("needs the compiled kernels built with OpenMP")
    seen = []
    gelu = kernels.gelu_forward

    def spy(x):
        now = kernels.set_thread_limit(1)
        kernels.set_thread_limit(now)
        seen.append(now)
        return gelu(x)

    monkeypatch.setattr(kernels, "gelu_forward", spy)
    from pythia.system.sharding import ShardedModel
    model = ShardedModel(Pythia(PythiaConfig(vocab_size=11, block_size=8, d_model=8, n_layer=2, n_head=2)))
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    try:
        model.loss(idx, idx)
        assert seen == [expect, expect]                        # one GELU per layer
        assert kernels.set_thread_limit(2) == 2                # the caller's limit is back
    finally:
        kernels.set_thread_limit(limit)


def test_the_same_pass_runs_on_the_same_thread_counts_every_time(blas, monkeypatch):
    # no run-time timing: every pass of one size gets the thread counts the rule gives it
    from pythia import kernels
    from pythia.model import Pythia, PythiaConfig
    from pythia.system.sharding import ShardedModel
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    seen = []
    gelu = kernels.gelu_forward

    def spy(x):
        seen.append(threads.blas_get())
        return gelu(x)

    monkeypatch.setattr(kernels, "gelu_forward", spy)
    model = ShardedModel(Pythia(PythiaConfig(vocab_size=11, block_size=8, d_model=8, n_layer=1, n_head=2)))
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    for _ in range(6):
        model.loss(idx, idx)
    assert seen == [1] * 6                                     # a small pass: one BLAS thread, always
    assert threads.blas_get() == blas


def test_with_the_users_thread_setting_the_kernels_keep_their_threads(blas, monkeypatch):
    # OPENBLAS_NUM_THREADS set by the user: Pythia chooses nothing, so the kernels keep the
    # caller's thread limit even in a pass too small for two BLAS threads
    from pythia import kernels
    from pythia.model import Pythia, PythiaConfig
    for k in threads.USER_ENV:
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "1")
    monkeypatch.setattr(threads, "blas_get", lambda: 1)       # as if OpenBLAS had started with it
    limit = kernels.set_thread_limit(2)
    if kernels.BACKEND != "cython" or kernels.set_thread_limit(2) != 2:
        kernels.set_thread_limit(limit)
        pytest.skip("needs the compiled kernels built with OpenMP")
    seen = []
    gelu = kernels.gelu_forward

    def spy(x):
        now = kernels.set_thread_limit(1)
        kernels.set_thread_limit(now)
        seen.append(now)
        return gelu(x)

    monkeypatch.setattr(kernels, "gelu_forward", spy)
    from pythia.system.sharding import ShardedModel
    model = ShardedModel(Pythia(PythiaConfig(vocab_size=11, block_size=8, d_model=8, n_layer=1, n_head=2)))
    idx = np.random.default_rng(0).integers(0, 11, (2, 8))
    try:
        model.loss(idx, idx)
        assert seen == [2]
    finally:
        kernels.set_thread_limit(limit)
