"""pythia.system.memory: after keep_freed_memory(), freed arrays' pages are reused instead of faulted in again.

Each case runs in a fresh interpreter (malloc's thresholds are per process and only go one
way). The program allocates ten 1 MB arrays, frees them, and repeats; it prints the minor page
faults of the second ten rounds. Without the call glibc trims and re-maps those 10 MB every
round (~25,000 faults here); with it they stay in the heap (0 faults). The bounds leave wide
margins: below 500 with the call, above 5,000 without.
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROGRAM = """
import resource, sys
import numpy as np
import pythia.system.memory as m
if sys.argv[1] == "keep":
    assert m.keep_freed_memory() is True
def rounds():
    for _ in range(10):
        arrays = [np.ones(1 << 18, np.float32) for _ in range(10)]   # 10 x 1 MB
        del arrays
rounds()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
rounds()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux") or os.environ.get("MALLOC_TRIM_THRESHOLD_")
                                or os.environ.get("MALLOC_MMAP_THRESHOLD_"),
                                reason="glibc malloc with default thresholds only")


def faults(mode: str) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    r = subprocess.run([sys.executable, "-c", PROGRAM, mode], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    return int(r.stdout.strip())


def test_freed_pages_are_reused():
    assert faults("keep") < 500


def test_without_it_pages_fault_again():
    # the control: shows the measurement detects what keep_freed_memory() removes
    assert faults("default") > 5000


def test_user_settings_win(monkeypatch):
    import pythia.system.memory as m
    monkeypatch.setattr(m, "_done", None)
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1000000")
    assert m.keep_freed_memory() is False
