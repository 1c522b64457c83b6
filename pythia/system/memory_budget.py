"""How much memory a training run will take, estimated before anything is allocated.

A model too big for the machine should be refused at once with a number, not discovered by
the kernel's out-of-memory killer minutes later. The estimate counts float32 arrays (4 bytes),
with P parameters, B batch, T block, C d_model, H heads, L layers, V vocabulary, N = B * T:

    weights        P              the model's parameters
    gradients      P * S          one buffer, plus one per extra shard S - 1 of a split batch
    AdamW state    3 P            first and second moments, and the optimizer's gradient buffer
    activations    L (16 N C + 4 N + B H A)    what each block keeps for backward:
                       x, ln_1, att, x_mid, ln_2 (N C each), qkv (3 N C), fc and gelu (4 N C each),
                       two LayerNorm means and rstds (N each), attention probabilities B H A,
                       where A = T^2 (A = 3/4 T^2 from T = 128 on, layers.query_blocks)
                   + 2 N C + 2 N V             final LayerNorm in and out; the head's logits and
                                               softmax (in backward: softmax and its gradient)
                   + 20 N C + max(4 N C, 2 B H A)  backward's gradients in flight: one block's
                                               (16 N C) held while the next is computed, dx and
                                               dhf, and attention's dprobs and dscores
    data           4 (tokens)     the corpus's token ids, int32

With the NumPy reference kernels (PYTHIA_KERNELS=numpy) the activations grow by 2 N V + 2 L N C:
their softmax cross-entropy and element-wise kernels hold whole-array temporaries that the
compiled kernels do not (tracemalloc peaks of three training steps, NumPy minus compiled kernels:
1.9 N V at V = 20,000 and 50,257; 1.25-2 N C a block at V = 65).

It is compared with the memory the machine has available now: MemAvailable of /proc/meminfo,
lowered to a cgroup's memory limit when the process runs in one (containers), or the free
pages that sysconf reports where there is no /proc. The interpreter and NumPy themselves
(~50 MB, already allocated) are not counted. tests/test_memory_budget.py holds the estimate
to a measured peak.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import ConfigError
from .inputs import fmt_size

if TYPE_CHECKING:
    from ..model import PythiaConfig

FLOAT = 4                              # bytes of a float32
NO_CHECK_FLAG = "--no-memory-check"    # the flag that skips the refusal


@dataclass
class Estimate:
    """Bytes a training run needs, by what holds them."""
    weights: int
    gradients: int
    optimizer: int
    activations: int
    data: int

    @property
    def total(self) -> int:
        return self.weights + self.gradients + self.optimizer + self.activations + self.data

    def parts(self) -> str:
        """'weights 0.1 GB, AdamW 0.3 GB, gradients 0.1 GB, activations 0.8 GB'."""
        parts = [("weights", self.weights), ("AdamW", self.optimizer), ("gradients", self.gradients),
                 ("activations", self.activations)]
        return ", ".join(f"{k} {fmt_size(v)}" for k, v in parts)

    def describe(self) -> str:
        """'~1.3 GB (weights 0.1 GB, AdamW 0.3 GB, gradients 0.1 GB, activations 0.8 GB)'."""
        return f"~{fmt_size(self.total)} ({self.parts()})"


def n_params(config: PythiaConfig) -> int:
    """Parameters of a PythiaConfig (the tied head counts once), without building the model."""
    V, C, L, T = config.vocab_size, config.d_model, config.n_layer, config.block_size
    per_block = 2 * C + (3 * C * C + 3 * C) + (C * C + C) + 2 * C + (4 * C * C + 4 * C) + (4 * C * C + C)
    return V * C + T * C + L * per_block + 2 * C


def attention_area(T: int) -> int:
    """Score entries per (sequence, head) that attention keeps: the query blocks times their keys."""
    from ..layers import query_blocks
    return sum((hi - lo) * hi for lo, hi in query_blocks(T))


def estimate_training(config: PythiaConfig, batch_size: int, n_tokens: int = 0, shards: int | None = None,
                      backend: str | None = None) -> Estimate:
    """The estimate of the module docstring for training config (a PythiaConfig) at batch_size,
    with the kernels of `backend` ("cython" or "numpy"; default: the active one)."""
    B, T, C, L, H, V = batch_size, config.block_size, config.d_model, config.n_layer, config.n_head, config.vocab_size
    N = B * T
    if shards is None:
        from . import threads
        shards = threads.shards_for(B, N * C * 4 * C)
    P = n_params(config)
    A = B * H * attention_area(T)                                # attention probabilities of one block
    per_block = 16 * N * C + 4 * N + A
    acts = L * per_block + 2 * N * C + 2 * N * V + 20 * N * C + max(4 * N * C, 2 * A)
    if backend is None:
        from .. import kernels
        backend = kernels.BACKEND
    if backend == "numpy":
        acts += 2 * N * V + 2 * L * N * C
    return Estimate(weights=P * FLOAT, gradients=P * max(1, shards) * FLOAT, optimizer=3 * P * FLOAT,
                    activations=acts * FLOAT, data=4 * n_tokens)


# ---- what the machine has ----------------------------------------------------------------------

def _meminfo_available(path: str = "/proc/meminfo") -> int | None:
    try:
        with open(path, encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024          # the file says kB (KiB)
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None              # "max" (no limit) -> None


def _rooms(base: Path, rel: str, limit_file: str, used_file: str) -> list[int]:
    """limit - usage of the cgroup at base/rel and of each parent up to base, where set."""
    rooms, d = [], base / rel.strip().lstrip("/")
    while True:
        limit, used = _read_int(d / limit_file), _read_int(d / used_file)
        if limit is not None and used is not None and limit < 1 << 60:   # v1 writes ~2^63 for "no limit"
            rooms.append(max(0, limit - used))
        if d == base or base not in d.parents:
            return rooms
        d = d.parent


def _cgroup_room(root: Path = Path("/sys/fs/cgroup"), own: str | None = None) -> int | None:
    """Room left under this process's memory cgroup limits: the least of limit minus usage over
    its cgroup and every parent, in cgroup v2 (own: its '0::' path) or v1 (the 'memory'
    controller's path); None without a limit. Paths that the container does not show are skipped."""
    lines = []
    if own is None:
        try:
            lines = Path("/proc/self/cgroup").read_text(encoding="ascii").splitlines()
        except OSError:
            pass
        own = next((ln.split(":", 2)[2] for ln in lines if ln.startswith("0::")), "/")
    v1 = next((ln.split(":", 2)[2] for ln in lines if ln.split(":", 2)[1:2] == ["memory"]), "/")
    rooms = _rooms(root, own, "memory.max", "memory.current") or \
        _rooms(root / "memory", v1, "memory.limit_in_bytes", "memory.usage_in_bytes")
    return min(rooms) if rooms else None


def available_memory() -> int | None:
    """Bytes this process can still allocate without swapping, as well as the system says; None
    when it cannot tell."""
    found = [v for v in (_meminfo_available(), _cgroup_room()) if v is not None]
    if not found:
        try:
            found = [os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")]
        except (ValueError, OSError, AttributeError):
            return None
    return min(found)


# Reading a text corpus peaks at about 31 bytes per byte of file: the bytes, the str, its UTF-32
# copy, the code points and ids as int64, and the int32 splits (tracemalloc peak of
# data.build_dataset on a 4 MB ASCII text: 30.0, with non-ASCII letters: 31.0 bytes per byte).
READ_BYTES_PER_BYTE = 31


def check_corpus(n_bytes: int, *, skip: bool = False) -> None:
    """ConfigError when reading n_bytes of corpus text would not fit, unless skip."""
    need, free = n_bytes * READ_BYTES_PER_BYTE, available_memory()
    if free is not None and need > free and not skip:
        raise ConfigError(f"reading the corpus ({fmt_size(n_bytes)} of text) needs about {fmt_size(need)} of memory "
                          f"while it is encoded, but {fmt_size(free)} is available; train on less text, or add "
                          f"{NO_CHECK_FLAG} to try anyway")


def check_training(config: PythiaConfig, batch_size: int, n_tokens: int, *,
                   skip: bool = False) -> tuple[Estimate, int | None]:
    """(estimate, available bytes); ConfigError with both figures when the run will not fit,
    unless skip (the user's --no-memory-check)."""
    est = estimate_training(config, batch_size, n_tokens)
    free = available_memory()
    if free is not None and est.total > free and not skip:
        raise ConfigError(f"training this model needs about {fmt_size(est.total)} of memory "
                          f"({est.parts()}) but {fmt_size(free)} is available; "
                          f"lower --d-model, --n-layer, --block-size or --batch-size, or add {NO_CHECK_FLAG} "
                          f"to try anyway")
    return est, free


def describe_fit(est: Estimate, free: int | None) -> str:
    """The banner's memory line: the estimate, and the share of the available memory it takes."""
    if free is None:
        return f"{est.describe()}; available memory unknown"
    share = est.total / free if free else math.inf
    over = f"; more than is available, trying anyway ({NO_CHECK_FLAG})" if share > 1 else ""
    return f"{est.describe()} of {fmt_size(free)} available ({share:.0%}){over}"
