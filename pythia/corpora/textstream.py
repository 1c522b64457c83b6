"""Reading text files of any size in bounded chunks, and showing how far along that is.

Chunk boundaries. A UTF-8 sequence split across two reads is completed by an incremental
decoder. For BPE, a chunk is cut only where a non-whitespace character is followed by a
whitespace one: no GPT-2 word spans such a point and no match before it looks past it, so the
words of the chunks are the words of the whole text (a run of more than 16 chunks without such
a point is cut where it stands). A leading byte-order mark of a file is dropped, as `train
--data FILE` does, so a folder and its files give the same tokens.

Progress: MB done, MB/s and ETA, redrawn in place on a terminal, a plain line every ~10% on a
pipe.
"""
from __future__ import annotations

import codecs
import os
import re
import sys
import time
from pathlib import Path
from typing import Iterator

from ..text.bpe import _WHITESPACE
from ..errors import DataError

MAX_CARRY_CHUNKS = 16          # a run this long without a safe cut point is cut anyway
_W = "".join(f"\\U{ord(c):08x}" for c in _WHITESPACE)
_CUT = re.compile(f"[^{_W}][{_W}]")  # a safe cut lies between the two characters


def last_safe_cut(text: str) -> int:
    """The largest c with text[c - 1] not whitespace and text[c] whitespace; 0 when none."""
    hi, step = len(text), 4096
    while hi > 0:
        lo = max(0, hi - step)
        last = None
        for last in _CUT.finditer(text, lo, hi + 1):
            pass
        if last is not None:
            return last.start() + 1
        hi, step = lo, step * 4
    return 0


def _stamp(f) -> tuple[int, int]:
    st = os.fstat(f.fileno())
    return st.st_size, st.st_mtime_ns


def _changed(path: Path, before: tuple[int, int], after: tuple[int, int], when: str) -> DataError:
    return DataError(f"data file {str(path)!r} changed {when} ({before[0]:,} bytes, then {after[0]:,}); "
                     f"let whatever writes it finish (or prepare a copy of it) and run prepare again")


def read_chunks(path: Path, chunk_bytes: int, *, cut: bool, on_bytes=None,
                stamps: dict | None = None) -> Iterator[str]:
    """The text of path in pieces of about chunk_bytes; cut=True ends pieces at safe cut points.

    on_bytes(raw) sees every raw chunk read (hashing, progress). DataError on bytes that are not
    UTF-8, naming the file and the offset of the first bad byte; on a path that is not a regular
    file (a FIFO, /dev/zero: pythia.system.inputs); and on a file that changed while it was read
    (its size and modification time when opened, at the end, and, through `stamps` shared by
    several passes, what an earlier pass saw), so appended text is never half read.
    """
    from ..system.inputs import open_regular
    decoder = codecs.getincrementaldecoder("utf-8")("strict")
    offset, carry, first = 0, "", True
    f, _ = open_regular(path, "data file", DataError, hint="give a text file")
    with f:
        before = _stamp(f)
        if stamps is not None:
            if path in stamps and stamps[path] != before:
                raise _changed(path, stamps[path], before, "between prepare's two reads of it")
            stamps[path] = before
        while True:
            raw = f.read(chunk_bytes)
            if offset + len(raw) > before[0] or (not raw and (offset != before[0] or _stamp(f) != before)):
                raise _changed(path, before, _stamp(f), "while prepare read it")
            pending = len(decoder.getstate()[0])
            try:
                text = decoder.decode(raw, final=not raw)
            except UnicodeDecodeError as e:
                raise DataError(f"data file {str(path)!r} is not UTF-8 text (bad byte at offset "
                                f"{offset - pending + e.start}); convert it to UTF-8 or leave it out") from None
            offset += len(raw)
            if on_bytes is not None and raw:
                on_bytes(raw)
            if first and text:
                text, first = (text[1:] if text.startswith("\ufeff") else text), False
            if not raw:
                if carry:
                    yield carry
                return
            if not cut:
                if text:
                    yield text
                continue
            carry += text
            c = last_safe_cut(carry)
            if c == 0 and len(carry) > MAX_CARRY_CHUNKS * chunk_bytes:
                c = len(carry)
            if c > 0:
                yield carry[:c]
                carry = carry[c:]


class Progress:
    """MB done, MB/s and ETA: redrawn in place on a terminal, a plain line every ~10% on a pipe."""

    def __init__(self, total_bytes: int, out=None):
        from ..ui import _isatty
        self.out = out or sys.stdout
        self.total = max(1, total_bytes)
        self.live = _isatty(self.out)
        self.phase, self.done, self.t0, self.last_draw, self.next_pct = "", 0, 0.0, 0.0, 0

    def start(self, phase: str) -> None:
        self.phase, self.done, self.t0, self.last_draw, self.next_pct = phase, 0, time.perf_counter(), 0.0, 0
        self.finished = False

    def advance(self, n: int) -> None:
        self.done += n
        now = time.perf_counter()
        final = self.done >= self.total
        if final and self.finished:
            return
        self.finished = final
        if self.live:
            if final or now - self.last_draw >= 0.1:
                self.last_draw = now
                self._write("\r" + self._line(now) + "  ", open_line=not final)
                if final:
                    self._write("\n", open_line=False)
        else:
            pct = 100 * self.done // self.total
            if pct >= self.next_pct or final:
                self.next_pct = (pct // 10 + 1) * 10
                self._write(self._line(now) + "\n", open_line=False)

    def _line(self, now: float) -> str:
        from ..ui import fmt_duration
        mb, total = self.done / 1e6, self.total / 1e6
        rate = mb / max(now - self.t0, 1e-9)
        eta = (total - mb) / rate if rate > 0 else None
        return f"{self.phase:<8} {mb:,.1f}/{total:,.1f} MB  {rate:,.1f} MB/s  ETA {fmt_duration(eta)}"

    def _write(self, text: str, open_line: bool) -> None:
        from .. import ui
        self.out.write(text)
        self.out.flush()
        ui._OPEN_LINE[0] = open_line and self.out is sys.stdout
