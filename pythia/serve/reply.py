"""One reply as it streams: token ids in, text out, ending at a stop string.

Text comes from pythia.chat.stream_text (a token whose bytes do not complete a character yet is
held back; the text of each step is exactly what decoding the whole reply gives), then
pythia.chat.StopFilter (text that could still become a stop string is held until it is decided,
and a stop string is never shown).
"""
from __future__ import annotations

import collections

from ..chat import StopFilter, stream_text


class _Feed:
    """An iterator the caller fills one id at a time; it ends when empty (only asked when not)."""

    def __init__(self) -> None:
        self.items: collections.deque[int] = collections.deque()

    def __iter__(self):
        return self

    def __next__(self) -> int:
        if self.items:
            return self.items.popleft()
        raise StopIteration


class ReplyText:
    def __init__(self, tokenizer, stops: tuple[str, ...], lstrip: bool = False):
        self._feed = _Feed()
        self._pieces = stream_text(tokenizer, self._feed)
        self._stop = StopFilter(tuple(stops))
        self._started = not lstrip            # the leading whitespace is dropped until text starts
        self.text = ""                        # everything shown so far

    def add(self, token: int) -> tuple[str, bool]:
        """(the new text safe to show, whether a stop string was reached) after one more token."""
        self._feed.items.append(int(token))
        return self._show(*self._stop.feed(next(self._pieces)))

    def finish(self) -> str:
        """The text still held back once generation ended without a stop string."""
        tail = "".join(self._pieces)          # the feed is empty: stream_text releases what it held
        out, hit = self._stop.feed(tail)
        return self._show(out if hit else out + self._stop.flush(), hit)[0]

    def _show(self, out: str, hit: bool) -> tuple[str, bool]:
        if not self._started:
            out = out.lstrip()
            self._started = bool(out)
        self.text += out
        return out, hit
