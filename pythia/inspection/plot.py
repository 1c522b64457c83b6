"""Loss curves as an SVG file, written by hand: no plotting library at run time.

`loss_svg(train, val)` draws the training loss of every step and the validation loss of every
evaluation against the step (a curve of more than MAX_POINTS points is first thinned by
`downsample`, which keeps each stretch's first, lowest, highest and last point), with axes,
ticks, a grid, a legend and, optionally, a logarithmic loss axis. `read_log(path)` reads the same
points from a `--log-file` (JSON lines), streaming it: a log of millions of steps costs 16 bytes a
point in memory (a step and a loss as float64), never the file's text or a Python object per line.

Coordinates: a value v on a linear axis [lo, hi] sits at pixel p0 + (v - lo) / (hi - lo) * (p1 - p0);
on a log axis, log10 replaces v, lo and hi.
"""
from __future__ import annotations

import json
import math
from array import array
from pathlib import Path
from typing import BinaryIO, Iterator, Sequence, Union
from xml.sax.saxutils import escape

import numpy as np

from ..errors import ConfigError, DataError

Points = Union[Sequence[tuple[float, float]], np.ndarray]  # (step, loss) pairs, or an (N, 2) array of them

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50          # margins around the plotting area, pixels
TRAIN_COLOUR, VAL_COLOUR = "#4878d0", "#ee854a"
MAX_POINTS = 4000                                   # per curve: ~5 per pixel column of the plot
CHUNK = 1 << 20                                     # bytes read at a time from a log
MAX_LINE = 1 << 20                                  # a record is ~150 bytes: a longer line is not one
BOM = b"\xef\xbb\xbf"                              # UTF-8's byte-order mark, which some editors write
MAX_STEP = 2 ** 53                                  # steps are kept as float64, exact up to here


def nice_ticks(lo: float, hi: float, n: int = 6) -> list[float]:
    """Round tick values (1, 2 or 5 times a power of ten apart) within [lo, hi], at most about n."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / max(1, n - 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 5, 10) if m * mag >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(round(t, 12))
        t += step
    return ticks


def log_ticks(lo: float, hi: float) -> list[float]:
    """Ticks at 1, 2 and 5 times the powers of ten within [lo, hi] (at least the two ends)."""
    ticks = []
    for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1):
        for m in (1, 2, 5):
            v = m * 10.0 ** e
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                ticks.append(v)
    return ticks if len(ticks) >= 2 else [lo, hi]


def _label(v: float) -> str:
    return f"{v:.6g}" if abs(v) < 1e5 else f"{v:.3g}"


def loss_svg(train: Points, val: Points = (), *, log_y: bool = False, title: str = "Loss") -> str:
    """An SVG document of the train curve (a line) and the val points (a line with dots)."""
    train, val = _as_points(train), _as_points(val)     # (N, 2), (M, 2)
    if not len(train) + len(val):
        raise DataError("there are no losses to plot; train for at least one step")
    if not (np.isfinite(train[:, 1]).all() and np.isfinite(val[:, 1]).all()):
        raise DataError("the losses include a non-finite value, which cannot be plotted")
    # a long run: what 690 pixel columns can show; thinning keeps each curve's ends and extremes,
    # so the axes' ranges below are the whole run's
    train, val = downsample(train), downsample(val)
    pts = train + val
    ys = [y for _, y in pts]
    if log_y and min(ys) <= 0:
        raise ConfigError("a logarithmic axis needs losses above 0; plot without --log-y")
    x_lo, x_hi = min(x for x, _ in pts), max(x for x, _ in pts)
    if x_hi == x_lo:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_lo, y_hi = min(ys), max(ys)
    if log_y:
        y_lo, y_hi = (y_lo / 1.05, y_hi * 1.05) if y_hi > y_lo else (y_lo / 2, y_hi * 2)
        yticks = log_ticks(y_lo, y_hi)
        f, f_lo, f_hi = math.log10, math.log10(y_lo), math.log10(y_hi)
    else:
        pad = (y_hi - y_lo) * 0.05 or 0.5
        yticks = nice_ticks(y_lo - pad, y_hi + pad)
        y_lo, y_hi = min(yticks[0], y_lo), max(yticks[-1], y_hi)
        f, f_lo, f_hi = (lambda v: v), y_lo, y_hi
    xticks = [t for t in nice_ticks(x_lo, x_hi) if x_lo <= t <= x_hi]
    px0, px1, py0, py1 = LEFT, WIDTH - RIGHT, HEIGHT - BOTTOM, TOP    # y grows downwards in SVG

    def sx(x: float) -> float:
        return px0 + (x - x_lo) / (x_hi - x_lo) * (px1 - px0)

    def sy(y: float) -> float:
        return py0 + (f(y) - f_lo) / (f_hi - f_lo) * (py1 - py0)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{WIDTH / 2:.1f}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>']
    for t in yticks:                                   # horizontal grid lines and loss labels
        y = sy(t)
        out.append(f'<line x1="{px0}" y1="{y:.2f}" x2="{px1}" y2="{y:.2f}" stroke="#e4e4e4"/>')
        out.append(f'<text class="ytick" x="{px0 - 6}" y="{y:.2f}" dy="4" text-anchor="end" '
                   f'data-value="{t!r}">{_label(t)}</text>')
    for t in xticks:                                   # vertical tick marks and step labels
        x = sx(t)
        out.append(f'<line x1="{x:.2f}" y1="{py0}" x2="{x:.2f}" y2="{py0 + 5}" stroke="black"/>')
        out.append(f'<text class="xtick" x="{x:.2f}" y="{py0 + 18}" text-anchor="middle" '
                   f'data-value="{t!r}">{_label(t)}</text>')
    out.append(f'<path d="M{px0},{py1} V{py0} H{px1}" fill="none" stroke="black"/>')  # the axes
    out.append(f'<text x="{(px0 + px1) / 2:.1f}" y="{HEIGHT - 12}" text-anchor="middle">step</text>')
    out.append(f'<text transform="translate(18 {(py0 + py1) / 2:.1f}) rotate(-90)" text-anchor="middle">'
               f'loss{" (log scale)" if log_y else ""}</text>')
    for name, series, colour in (("train", train, TRAIN_COLOUR), ("val", val, VAL_COLOUR)):
        if not series:
            continue
        coords = " ".join(f"{sx(x):.2f},{sy(y):.2f}" for x, y in series)
        width = 1.2 if name == "train" else 2
        out.append(f'<polyline class="{name}" points="{coords}" fill="none" stroke="{colour}" '
                   f'stroke-width="{width}" stroke-linejoin="round"/>')
        if name == "val":
            out.extend(f'<circle cx="{sx(x):.2f}" cy="{sy(y):.2f}" r="3" fill="{colour}"/>' for x, y in series)
    entries = [(n, c) for n, s, c in (("train loss", train, TRAIN_COLOUR), ("val loss", val, VAL_COLOUR)) if s]
    lx, ly = px1 - 120, py1 + 8                         # the legend, top right inside the plot
    out.append(f'<rect x="{lx - 8}" y="{ly - 4}" width="118" height="{8 + 18 * len(entries)}" '
               f'fill="white" stroke="#bbbbbb"/>')
    for i, (name, colour) in enumerate(entries):
        y = ly + 8 + 18 * i
        out.append(f'<line x1="{lx}" y1="{y}" x2="{lx + 24}" y2="{y}" stroke="{colour}" stroke-width="3"/>')
        out.append(f'<text x="{lx + 32}" y="{y + 4}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


def read_log(path: str | Path, notice=None) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) points of a --log-file: two (N, 2) float64 arrays of [step, loss] rows, sorted
    by step. A step logged twice (a run resumed from an earlier checkpoint appends to the same
    file) keeps its latest value. A leading UTF-8 byte-order mark is accepted; a last line
    without its newline that is not a record (a run still writing it) is skipped, and
    notice(text) is told so."""
    from ..system.inputs import open_regular
    path = Path(path)
    hint = "give the file train wrote with --log-file"
    raw, _ = open_regular(path, "log file", DataError, hint=hint)   # a folder, FIFO or device: refused
    train, val = array("d"), array("d")                # step, loss, step, loss, ... in file order
    # raw_decode: json.loads without its two Python layers and regex match (a third of the time)
    decode = json.JSONDecoder().raw_decode
    with raw:
        for n, line, ended in _lines(raw):
            line = line.strip()
            if not line:
                continue
            try:
                rec, end = decode(line)
                if end != len(line):                   # more after the record: not one
                    raise ValueError(end)
                step, loss = int(rec["step"]), float(rec["train_loss"])
                val_loss = None if rec.get("val_loss") is None else float(rec["val_loss"])
                if not 0 <= step <= MAX_STEP:
                    raise ValueError(step)
            except (ValueError, KeyError, TypeError):
                if not ended:                          # torn: the writer is mid-line
                    if notice is not None:
                        notice(f"skipped line {n} of {str(path)!r}: it is incomplete (the run may still be "
                               f"writing it)")
                    break
                raise DataError(f"line {n} of {str(path)!r} is not a training log record (JSON with step and "
                                f"train_loss); {hint}") from None
            train.extend((step, loss))
            if val_loss is not None:
                val.extend((step, val_loss))
    if not train:
        raise DataError(f"log file {str(path)!r} holds no steps; train with --log-file first")
    return _latest_per_step(train), _latest_per_step(val)


def _lines(raw: BinaryIO) -> Iterator[tuple[int, str, bool]]:
    """(number from 1, text, ended) of each line of a binary file read CHUNK bytes at a time, a
    leading BOM dropped; ended is False for a last line without its newline. A line longer than
    MAX_LINE is cut there (it cannot be a record): memory stays at a chunk or two."""
    n, rest, first = 0, b"", True
    while True:
        chunk = raw.read(max(CHUNK, len(BOM)) if first else CHUNK)
        if not chunk:
            break
        if first:
            chunk, first = chunk.removeprefix(BOM), False
        data = rest + chunk
        cut = data.rfind(b"\n") + 1
        rest = data[cut:]
        # a UTF-8 sequence never holds the byte 0x0A, so a cut after a newline splits no character
        for line in data[:cut].decode("utf-8", "replace").split("\n")[:-1]:
            n += 1
            yield n, line, True
        if len(rest) > MAX_LINE:
            yield n + 1, rest[:MAX_LINE].decode("utf-8", "replace"), True
            return
    if rest:
        yield n + 1, rest.decode("utf-8", "replace"), False


def _latest_per_step(pairs: array) -> np.ndarray:
    """(N, 2) [step, loss] rows sorted by step, one per step: the one logged last. The rows are
    pairs' own memory (no copy) when the steps only grow, as in a log of one run."""
    rows = np.frombuffer(pairs, np.float64).reshape(-1, 2)   # (n, 2)
    s = rows[:, 0]                                           # (n,)
    if len(s) > 1 and not (s[1:] > s[:-1]).all():      # a resumed run went back: sort, keep the last
        rows = rows[np.argsort(s, kind="stable")]      # equal steps stay in file order
        s = rows[:, 0]
        rows = rows[np.append(s[1:] != s[:-1], True)]  # the last row of each step
    return rows


def _as_points(points: Points) -> np.ndarray:
    return np.asarray(points, np.float64).reshape(-1, 2)   # (N, 2) [step, loss]


def downsample(points: Points, limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most about limit of points (sorted by step), keeping the curve's shape: the points are
    cut into limit // 4 runs of consecutive steps and each run keeps its first, lowest, highest
    and last point, in step order, so every spike and dip the picture could show survives."""
    pts = _as_points(points)                           # (N, 2)
    if len(pts) <= limit:
        return [(float(x), float(y)) for x, y in pts]
    runs = max(1, limit // 4)
    edges = [round(i * len(pts) / runs) for i in range(runs + 1)]
    keep: list[int] = []
    for a, b in zip(edges[:-1], edges[1:]):
        y = pts[a:b, 1]                                # (b - a,)
        keep.extend(a + i for i in sorted({0, int(y.argmin()), int(y.argmax()), b - a - 1}))
    return [(float(x), float(y)) for x, y in pts[keep]]
