"""pytest setup for benchmarks/: collect `bench_*.py`, and print a ratio table after a run.

`python -m pytest` (testpaths = tests) never collects this folder; run a suite explicitly:
    python -m pytest benchmarks/bench_kernels.py --benchmark-only
    python -m pytest benchmarks/ --benchmark-only

Each benchmark puts `impl` (the column: cython, numpy, torch, copy, ...) and `bytes` in its
extra_info (and `ops_per_call` when one timed call runs the op several times); benchmarks
sharing a group are one row of the table. Ratios use the minimum time
of each benchmark (the least disturbed by other processes on a shared machine).
"""
from __future__ import annotations

import pytest


def pytest_collect_file(file_path, parent):
    # bench_*.py do not match pytest's test_*.py pattern; collect them here unless they were
    # named on the command line (pytest collects those itself)
    if (file_path.suffix == ".py" and file_path.name.startswith("bench_")
            and not parent.session.isinitpath(file_path)):
        return pytest.Module.from_parent(parent, path=file_path)
    return None


def _us(t: float | None) -> str:
    return "" if t is None else f"{t * 1e6:,.1f}"


def _ratio(a: float | None, b: float | None) -> str:
    return "" if a is None or b is None else f"{a / b:.2f}"


def ratio_table(benchmarks) -> list[str]:
    """Markdown rows: one per group, times in microseconds (min) and ratios against cython."""
    groups: dict[str, dict[str, float]] = {}
    nbytes: dict[str, int] = {}
    for b in benchmarks:
        info = b.extra_info or {}
        if "impl" not in info or b.stats is None:
            continue
        groups.setdefault(b.group, {})[info["impl"]] = b.stats.min / info.get("ops_per_call", 1)
        if "bytes" in info:
            nbytes[b.group] = info["bytes"]
    if not groups:
        return []
    lines = [
        "| kernel-shape | cython us | numpy us | torch us | copy us | numpy/cython | torch/cython | cython/copy | cython GB/s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for g in sorted(groups, key=lambda g: (g.rsplit("-", 1)[0], "SML".find(g.rsplit("-", 1)[-1]))):
        t = groups[g]
        c = t.get("cython")
        gbs = f"{nbytes[g] / c / 1e9:.1f}" if c and g in nbytes else ""
        lines.append(f"| {g} | {_us(c)} | {_us(t.get('numpy'))} | {_us(t.get('torch'))} | {_us(t.get('copy'))} "
                     f"| {_ratio(t.get('numpy'), c)} | {_ratio(t.get('torch'), c)} | {_ratio(c, t.get('copy'))} | {gbs} |")
    return lines


@pytest.hookimpl(trylast=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    session = getattr(config, "_benchmarksession", None)
    if session is None or not getattr(session, "benchmarks", None):
        return
    lines = ratio_table(session.benchmarks)
    if lines:
        terminalreporter.section("ratios (min times; >1 in numpy/cython and torch/cython means cython is faster)")
        for line in lines:
            terminalreporter.write_line(line)
