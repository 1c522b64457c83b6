"""ConsoleUI: what a person sees while Pythia boots, trains and finishes.

Three moments, each one method:
    banner(...)    version, kernel backend, model shape, parameter count, corpus and vocabulary
    progress(p)    the Trainer's on_progress callback: a bar redrawn in place on a terminal,
                   plain periodic lines when stdout is a pipe or a log file
    summary(...)   final losses, wall time, throughput, checkpoint path and a loss curve in text

Colour (ANSI) is used only when the stream is a terminal, TERM is not "dumb" and NO_COLOR is
unset (https://no-color.org). Box-drawing and block characters are used only when the stream's
encoding can write them; otherwise the same layout is drawn in ASCII.
"""
from __future__ import annotations

import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from typing import Any, Sequence, TextIO

from .units import fmt_size

# ANSI SGR codes used by the styles below
_CODES = {"bold": "1", "dim": "2", "red": "31", "green": "32", "yellow": "33", "blue": "34",
          "magenta": "35", "cyan": "36"}
_EIGHTHS = " ▁▂▃▄▅▆▇█"  # a cell filled to k/8 of its height is _EIGHTHS[k]
_REDRAW_S = 0.1           # redraw the in-place bar at most ten times a second
_SGR = re.compile(r"\033\[[0-9;]*m")  # colour/style codes: they take no columns
_OPEN_LINE = [False]      # an in-place bar is on screen without its newline (any ConsoleUI)


def line_open() -> bool:
    """True while a progress bar is drawn in place: a message must start on a new line."""
    return _OPEN_LINE[0]


def _isatty(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed or not a real file
        return False


def colour_allowed(stream: TextIO) -> bool:
    """True when `stream` is a terminal that should get ANSI colour."""
    if os.environ.get("NO_COLOR", "") != "":
        return False
    if os.environ.get("TERM", "") == "dumb":
        return False
    return _isatty(stream)


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def fmt_duration(seconds: float | None) -> str:
    """4.2 -> '4.2s', 75 -> '1:15', 3725 -> '1:02:05'; None -> '--'."""
    if seconds is None or seconds != seconds or seconds == float("inf"):
        return "--"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(round(seconds))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def fmt_count(n: float) -> str:
    """31234 -> '31.2k', 1_250_000 -> '1.25M', 812 -> '812'."""
    if n >= 1e6:
        return f"{n / 1e6:.3g}M"
    if n >= 1e4:
        return f"{n / 1e3:.1f}k"
    return f"{n:,.0f}"


def _plural(n: int, word: str) -> str:
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"


def heads_text(config: Any) -> str:
    """The attention heads of a config: "12 heads", or "9 heads / 3 kv" when fewer key/value heads
    serve them (grouped-query attention: the KV cache holds the kv heads only)."""
    h, kv = config.n_head, getattr(config, "n_kv_head", config.n_head)
    return _plural(h, "head") + (f" / {kv:,} kv" if kv != h else "")


@dataclass
class CorpusInfo:
    """What the banner says about the training text."""
    files: Sequence[tuple[str, int]]   # (display name, size in bytes)
    n_tokens: int | None = None          # tokens in the whole corpus
    bundled: bool = False                # True when the corpus shipped with the package


class ConsoleUI:
    """Human-facing output on one text stream (stdout by default)."""

    def __init__(self, out: TextIO | None = None, *, color: bool | None = None,
                 live: bool | None = None, width: int | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        tty = _isatty(self.out)
        self.live = tty if live is None else live            # redraw progress in place
        self.color = colour_allowed(self.out) if color is None else color
        self.unicode = _can_encode(self.out, "█▁·─└┤")
        self.width = width or (shutil.get_terminal_size((80, 24)).columns if tty else 80)
        self.history: list[tuple[int, float, float | None]] = []  # (step, train loss, val loss)
        self.last = None          # the last Progress seen
        self._last_draw = 0.0
        self._every = 1           # plain mode: print every this many steps
        self._bar_len = 0         # visible width of the bar last drawn in place

    # ---- small output helpers -------------------------------------------------------------
    def style(self, text: str, *names: str) -> str:
        if not self.color or not names or not text:
            return text
        codes = ";".join(_CODES[n] for n in names)
        return f"\033[{codes}m{text}\033[0m"

    @property
    def dot(self) -> str:
        return " · " if self.unicode else " | "

    def write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def line(self, text: str = "") -> None:
        """Print one line, first finishing an in-place progress bar if one is open."""
        self.end_live()
        self.write(text + "\n")

    def end_live(self) -> None:
        if _OPEN_LINE[0]:
            _OPEN_LINE[0] = False
            self.write("\n")

    def notice(self, text: str) -> None:
        self.line(self.style(text, "dim"))

    def warn(self, text: str) -> None:
        self.line(self.style("warning: ", "yellow", "bold") + text)

    # ---- boot ------------------------------------------------------------------------------
    def banner(self, *, version: str, backend: str, fallback_reason: str | None, config: Any,
               n_params: int, vocab_size: int, tokenizer: str, corpus: CorpusInfo | None = None,
               source: str | None = None, rows: Sequence[tuple[str, str]] = ()) -> None:
        """The boot sequence: who we are, what computes, what model, what data."""
        d = self.dot
        self.line(self.style(f"Pythia {version}", "bold", "cyan") + self.style(f"{d}a GPT in NumPy", "dim"))
        label = lambda s: "  " + self.style(f"{s:<10}", "dim")  # noqa: E731
        kind = "compiled Cython kernels" if backend == "cython" else "NumPy reference kernels"
        self.line(label("kernels") + self.style(backend, "bold") + self.style(f"  ({kind})", "dim"))
        if fallback_reason:
            self.warn(f"fell back to the NumPy kernels, which are slower: {fallback_reason}")
        c = config
        shape = (f"{_plural(c.n_layer, 'layer')}{d}{heads_text(c)}{d}d_model {c.d_model}{d}"
                 f"context {c.block_size}{d}{n_params:,} parameters")
        self.line(label("model") + shape)
        if source:
            self.line(label("from") + source)
        if corpus is not None:                     # the corpus's size is on its line, the vocabulary's on its own
            files = ", ".join(f"{name} ({fmt_size(size)})" for name, size in corpus.files)
            where = " [bundled]" if corpus.bundled else ""
            size = f"{d}{corpus.n_tokens:,} tokens" if corpus.n_tokens is not None else ""
            self.line(label("corpus") + files + self.style(where, "dim") + size)
        self.line(label("vocab") + f"{_plural(vocab_size, 'token')} ({tokenizer} tokenizer)")
        for name, text in rows:
            self.line(label(name) + text)

    # ---- training ----------------------------------------------------------------------------
    def progress(self, p: Any) -> None:
        """Trainer callback: p has step, steps, train_loss, val_loss, lr, tokens_per_s, elapsed_s, eta_s."""
        first = self.last is None
        self.last = p
        evaluated = bool(getattr(p, "evaluated", p.val_loss is not None))
        val = p.val_loss if evaluated else None
        if not self.history or self.history[-1][0] != p.step:
            self.history.append((p.step, float(p.train_loss), val))
        elif val is not None:  # an evaluation reported for a step already seen
            self.history[-1] = (p.step, self.history[-1][1], val)
        final = p.step >= p.steps
        if self.live:
            now = time.monotonic()
            if first or final or evaluated or now - self._last_draw >= _REDRAW_S:
                self._last_draw = now
                line = self._bar_line(p)
                shown = len(_SGR.sub("", line))
                # pad over what is left of a longer previous bar (no erase code: TERM may be dumb)
                self.write("\r" + line + " " * max(0, self._bar_len - shown))
                self._bar_len = shown
                _OPEN_LINE[0] = True
                if final:
                    self.end_live()
        else:
            if first:
                self._every = max(1, p.steps // 10)
            if first or final or evaluated or p.step % self._every == 0:
                self.line(self._plain_line(p))

    def _plain_line(self, p: Any) -> str:
        width = len(str(p.steps))
        parts = [f"step {p.step:>{width}}/{p.steps}", f"loss {p.train_loss:.4f}"]
        if p.val_loss is not None:
            parts.append(f"val {p.val_loss:.4f}")
        parts += [f"lr {p.lr:.2e}", f"{p.tokens_per_s:,.0f} tok/s",
                  f"elapsed {fmt_duration(p.elapsed_s)}", f"eta {fmt_duration(p.eta_s)}"]
        return "  ".join(parts)

    def _bar_line(self, p: Any) -> str:
        """One line narrower than the terminal (a wrapped line could not be redrawn in place)."""
        val = self._last_val()
        width = len(str(p.steps))
        stats = f" {p.step:>{width}}/{p.steps}  loss {p.train_loss:.3f}"
        if val is not None:
            stats += f"  val {val:.3f}"
        stats += f"  {fmt_count(p.tokens_per_s)} tok/s  ETA {fmt_duration(p.eta_s)}"
        frac = min(1.0, p.step / max(1, p.steps))
        pct = f" {frac * 100:3.0f}%"
        room = self.width - 1 - 2 - len(pct) - len(stats)  # columns left for the bar itself
        if room < 10:
            return ("  " + pct.strip() + stats)[: self.width - 1]
        bar_w = min(30, room)
        fill, empty = ("█", "░") if self.unicode else ("#", "-")
        n = int(round(frac * bar_w))
        bar = self.style(fill * n, "green") + self.style(empty * (bar_w - n), "dim")
        return f"  {bar}{pct}{stats}"

    def _last_val(self) -> float | None:
        for _, _, v in reversed(self.history):
            if v is not None:
                return v
        return None

    # ---- end of run ---------------------------------------------------------------------------
    def summary(self, *, steps_done: int, steps: int, train_loss: float | None,
                val_loss: float | None, wall_s: float, tokens_per_s: float | None,
                checkpoint: str | None, interrupted: bool = False, reason: str = "Ctrl-C") -> None:
        self.end_live()
        d = self.dot
        if interrupted and steps_done < steps:
            head = self.style(f"Stopped early at step {steps_done}/{steps} ({reason})", "yellow", "bold")
        elif interrupted:                       # every step done; stopped in the final evaluation or after
            head = self.style(f"Trained {steps_done} steps, then stopped by {reason}", "yellow", "bold")
        else:
            head = self.style(f"Trained {steps_done} steps", "green", "bold")
        parts = [f"{head} in {fmt_duration(wall_s)}"]
        if tokens_per_s:
            parts.append(f"{tokens_per_s:,.0f} tok/s")
        if train_loss is not None:
            parts.append(f"train loss {train_loss:.4f}")
        if val_loss is not None:
            parts.append(f"val loss {val_loss:.4f}")
        self.line(d.join(parts))
        if checkpoint:
            self.line("  " + self.style("checkpoint ", "dim") + checkpoint)
        curve = loss_curve([loss for _, loss, _ in self.history], width=min(60, self.width - 16),
                           unicode=self.unicode, last_step=self.history[-1][0] if self.history else 0)
        for i, row in enumerate(curve):
            self.line(row if i == len(curve) - 1 else self.style(row, "cyan"))  # the axis stays plain


def loss_curve(losses: Sequence[float], *, width: int = 60, height: int = 6,
               unicode: bool = True, last_step: int | None = None) -> list[str]:
    """A filled area chart of a loss curve, `height` rows of text, at most `width` columns.

    Each column is the mean loss over its share of the steps; a column's height is its loss
    mapped linearly from [min, max] to [1/8 row, height rows], drawn in eighths of a cell
    (ASCII: whole cells, '#'). Returns [] when there is nothing to draw.
    """
    vals = [float(v) for v in losses if v == v]  # drop NaN
    if len(vals) < 2 or width < 4:
        return []
    ncol = min(width, len(vals))
    # column j averages steps [j*n/ncol, (j+1)*n/ncol)
    cols = []
    for j in range(ncol):
        lo_i, hi_i = j * len(vals) // ncol, max(j * len(vals) // ncol + 1, (j + 1) * len(vals) // ncol)
        chunk = vals[lo_i:hi_i]
        cols.append(sum(chunk) / len(chunk))
    lo, hi = min(cols), max(cols)
    span = hi - lo if hi > lo else 1.0
    levels = [1 + int(round((v - lo) / span * (height * 8 - 1))) for v in cols]  # 1..8*height eighths
    rows = []
    label_w = max(len(f"{hi:.2f}"), len(f"{lo:.2f}"))
    axis, corner = ("┤", "└") if unicode else ("|", "+")
    for r in range(height):
        base = (height - 1 - r) * 8   # eighths below this row
        cells = []
        for lev in levels:
            k = max(0, min(8, lev - base))
            if unicode:
                cells.append(_EIGHTHS[k])
            else:
                cells.append("#" if k >= 4 else " ")
        label = f"{hi:.2f}" if r == 0 else (f"{lo:.2f}" if r == height - 1 else "")
        rows.append(f"  {label:>{label_w}} {axis}" + "".join(cells).rstrip())
    tail = f" step {last_step}" if last_step is not None else ""
    rows.append(" " * (3 + label_w) + corner + ("─" if unicode else "-") * ncol + tail)
    rows.insert(0, " " * (3 + label_w) + "train loss")
    return rows
