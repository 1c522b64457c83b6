"""Loss curves as an SVG file, written by hand: no plotting library at run time.

`loss_svg(train, val)` draws the training loss of every step and the validation loss of every
evaluation against the step (a curve of more than MAX_POINTS points is first thinned by
`downsample`, which keeps each stretch's first, lowest, highest and last point), with axes, ticks, a grid, a legend and, optionally, a logarithmic
loss axis. `read_log(path)` reads the same points from a `--log-file` (JSON lines), and
`write_plot` writes the picture without ever replacing a file the user did not ask to replace.

Coordinates: a value v on a linear axis [lo, hi] sits at pixel p0 + (v - lo) / (hi - lo) * (p1 - p0);
on a log axis, log10 replaces v, lo and hi.
"""
from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Sequence
from xml.sax.saxutils import escape

from ..errors import ConfigError, DataError

Points = Sequence[tuple[float, float]]  # (step, loss) pairs

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 70, 20, 40, 50          # margins around the plotting area, pixels
TRAIN_COLOUR, VAL_COLOUR = "#4878d0", "#ee854a"
MAX_POINTS = 4000                                   # per curve: ~5 per pixel column of the plot


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
    pts = list(train) + list(val)
    if not pts:
        raise DataError("there are no losses to plot; train for at least one step")
    ys = [y for _, y in pts]
    if not all(math.isfinite(y) for y in ys):
        raise DataError("the losses include a non-finite value, which cannot be plotted")
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
        series = downsample(series)             # a long run: what 690 pixel columns can show
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


def read_log(path: str | Path, notice=None) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(train, val) points of a --log-file. A step logged twice (a run resumed from an earlier
    checkpoint appends to the same file) keeps its latest value. A leading UTF-8 byte-order mark
    is accepted; a last line without its newline that is not a record (a run still writing it)
    is skipped, and notice(text) is told so."""
    from ..system.inputs import open_regular
    path = Path(path)
    hint = "give the file train wrote with --log-file"
    raw, _ = open_regular(path, "log file", DataError, hint=hint)   # a folder, FIFO or device: refused
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    with io.TextIOWrapper(raw, encoding="utf-8-sig", errors="replace") as fh:
        line, n = fh.readline(), 1
        while line:
            following = fh.readline()
            if line.strip():
                try:
                    rec = json.loads(line)
                    step = int(rec["step"])
                    train[step] = float(rec["train_loss"])
                    if rec.get("val_loss") is not None:
                        val[step] = float(rec["val_loss"])
                except (ValueError, KeyError, TypeError):
                    if not following and not line.endswith("\n"):   # torn: the writer is mid-line
                        if notice is not None:
                            notice(f"skipped line {n} of {str(path)!r}: it is incomplete (the run may still be "
                                   f"writing it)")
                        break
                    raise DataError(f"line {n} of {str(path)!r} is not a training log record (JSON with step and "
                                    f"train_loss); {hint}") from None
            line, n = following, n + 1
    if not train:
        raise DataError(f"log file {str(path)!r} holds no steps; train with --log-file first")
    return sorted(train.items()), sorted(val.items())


def downsample(points: Points, limit: int = MAX_POINTS) -> list[tuple[float, float]]:
    """At most about limit of points (sorted by step), keeping the curve's shape: the points are
    cut into limit // 4 runs of consecutive steps and each run keeps its first, lowest, highest
    and last point, in step order, so every spike and dip the picture could show survives."""
    points = list(points)
    if len(points) <= limit:
        return points
    runs = max(1, limit // 4)
    edges = [round(i * len(points) / runs) for i in range(runs + 1)]
    out: list[tuple[float, float]] = []
    for a, b in zip(edges[:-1], edges[1:]):
        run = points[a:b]
        lo = min(range(len(run)), key=lambda i: run[i][1])
        hi = max(range(len(run)), key=lambda i: run[i][1])
        out.extend(run[i] for i in sorted({0, lo, hi, len(run) - 1}))
    return out
